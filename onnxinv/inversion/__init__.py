"""Inversion of generators: find ``z`` with ``G(z) = x`` and say, with evidence, whether it is unique.

Entry point: :func:`invert`, a pipeline **solve → refine → verify → evidence → decide**
(:mod:`~onnxinv.inversion.api`). The verdict contract — what may be claimed and what each claim needs —
is :mod:`~onnxinv.inversion.verdict`.

Layout (calls go down this list):

* :mod:`~onnxinv.inversion.verdict`, :mod:`~onnxinv.inversion.result` — the contract and plain result data
* :mod:`~onnxinv.inversion.framework` — Problem, Settings, the Method record, the fit rule, the layer walk
* :mod:`~onnxinv.inversion.identifiability` — active rows, ranks, preimage dimension, stability radius,
  null directions: the one definition
* methods, one module each, exporting a ``METHOD`` record: :mod:`~onnxinv.inversion.exact`,
  :mod:`~onnxinv.inversion.sparse`, :mod:`~onnxinv.inversion.linf`, :mod:`~onnxinv.inversion.l1`,
  :mod:`~onnxinv.inversion.relaxed`, :mod:`~onnxinv.inversion.gd`, :mod:`~onnxinv.inversion.auto`;
  listed in :mod:`~onnxinv.inversion.registry`
* :mod:`~onnxinv.inversion.refine` — whole-network least squares, applied by the pipeline
* :mod:`~onnxinv.inversion.evidence` — certificates, witnesses, radii, refutations
* :mod:`~onnxinv.inversion.parallel` — process pools, BLAS thread limits, progress
* :mod:`~onnxinv.inversion.api` — ``invert``
* shared numerics: :mod:`~onnxinv.inversion.targets` (row bounds per activation),
  :mod:`~onnxinv.inversion.linear` (least squares, layer LPs), :mod:`~onnxinv.inversion.lp` (the only
  module that imports HiGHS)
"""

from onnxinv.inversion.api import invert
from onnxinv.inversion.framework import Method, Settings
from onnxinv.inversion.registry import METHODS, get_method
from onnxinv.inversion.result import (
    Attempt,
    BatchInversionResult,
    InversionResult,
    LayerStep,
    SolverStatus,
)
from onnxinv.inversion.verdict import Evidence, EvidenceKind, FitCheck, Reason, Verdict

__all__ = [
    "METHODS",
    "Attempt",
    "BatchInversionResult",
    "Evidence",
    "EvidenceKind",
    "FitCheck",
    "InversionResult",
    "LayerStep",
    "Method",
    "Reason",
    "Settings",
    "SolverStatus",
    "Verdict",
    "get_method",
    "invert",
]
