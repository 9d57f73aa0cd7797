"""Exact layer-wise inversion of a realizable observation (Theorem 2 and eq. (4) of [1]_).

Problem
-------
Given ``x = G(z*)`` exactly, find ``z``, one layer at a time from the output. For a layer
``y = act(W u + b)``:

.. math::

    I = \\{j : y_j > \\tau\\}, \\qquad W_I u = y_I - b_I, \\qquad W_{I^c} u + b_{I^c} \\le 0,
    \\qquad u \\ge 0 \\text{ if } u \\text{ is a ReLU output}

with ``τ = 1e-9 · max|y|`` (never 0: round-off returns true zeros as 1e-16) raised to 10× the
estimated error of ``y`` when ``y`` was itself estimated from inconsistent (e.g. float32) data.

Notes
-----
* **Theorem 2 of [1]_**: if ``W_I`` has full column rank, ``u`` is the unique solution of the active
  system, found by least squares (Cholesky of ``W_IᵀW_I`` with its conditioning checked, pivoted QR
  when ill-conditioned); the inactive inequalities and input bounds are then confirmed. If they fail,
  the eq. (4) LP decides (infeasible: the observation is outside the generator's range).
* **Not identifiable**: ``|I| < n_in`` or ``rank(W_I) < n_in``. The eq. (4) LP returns a point of the
  layer's preimage polytope and its dimension is computed (``n_in - rank`` less the implicit
  equalities, see :mod:`onnxinv.inversion.linear`). The verdict then says *not unique*.
* **LeakyReLU**, eq. (5) of [1]_: every row is an equality (``y / slope`` where ``y < 0``): unique iff
  ``rank(W) = n_in``. **Identity**: plain least squares. **Tanh / Sigmoid**: ``atanh`` / ``logit``
  first, rows weighted by the derivative; saturated entries are inequalities
  (:mod:`onnxinv.inversion.targets`).
* Only the last layer's rows are restricted by a mask.
* Checks are made on each layer's output, with tolerances that allow for the data's dtype (float32
  outputs are accurate to about 1e-7 relative; see :mod:`onnxinv.inversion.layerwise`). If every
  layer is identifiable but rounding, amplified from layer to layer, leaves the latent just outside
  ``tol``, it is refined on the whole network (:func:`onnxinv.inversion.polish.refine`).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

from onnxinv.inversion import polish
from onnxinv.inversion.layerwise import (
    Draft,
    LayerContext,
    LayerOutcome,
    Problem,
    Settings,
    clean_layer,
    clean_targets,
    walk,
)

__all__ = ["solve"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Exact layer-wise inversion of ``problem`` (see module docstring)."""
    return polish.refine(problem, settings, walk(problem, settings, _layer, "exact", deadline), deadline)


def _layer(ctx: LayerContext) -> LayerOutcome:
    targets = clean_targets(ctx)
    return clean_layer(ctx, targets)
