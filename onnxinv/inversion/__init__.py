"""Layer-wise inversion of dense generators: find ``z`` with ``G(z) = x`` and say whether it is unique.

Entry point: :func:`invert`. Methods (one module each, ``solve(problem, settings, deadline)``):

* ``exact``   Theorem 2 / eq. (4) of Lei et al. 2019 (least squares on the active rows, LP fallback)
* ``sparse``  layered basis pursuit (Aberdam, Simon, Elad) for layers with few active rows
* ``linf``    Algorithm 1 (l_inf LP) for noisy observations
* ``l1``      Algorithm 2 (l_1 LP)
* ``relaxed`` eq. (8), the relaxed LP
* ``gd``      gradient-descent baseline (verdict from the layer-wise analysis at its point)
* ``auto``    exact, then fallbacks in a documented order

Shared pieces: :mod:`~onnxinv.inversion.layerwise` (problem, walk, the exact layer solve and its
tolerances), :mod:`~onnxinv.inversion.targets` (row bounds per activation), :mod:`~onnxinv.inversion.linear`,
:mod:`~onnxinv.inversion.lp` (HiGHS) and :mod:`~onnxinv.inversion.polish` (end-to-end refinement).

Results: :class:`InversionResult` (one observation), :class:`BatchInversionResult` (a batch).
"""

from onnxinv.inversion.api import METHODS, invert
from onnxinv.inversion.layerwise import Settings
from onnxinv.inversion.result import (
    Attempt,
    BatchInversionResult,
    InversionResult,
    LayerStep,
    SolverStatus,
    Verdict,
)

__all__ = [
    "METHODS",
    "Attempt",
    "BatchInversionResult",
    "InversionResult",
    "LayerStep",
    "Settings",
    "SolverStatus",
    "Verdict",
    "invert",
]
