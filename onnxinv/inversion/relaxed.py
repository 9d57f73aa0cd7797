"""Noisy inversion with the relaxed LP, eq. (8) of [1]_: no sign pattern has to be guessed.

Problem
-------
Per ReLU layer (output first):

.. math::

    \\max_u\\; \\sum_j \\max(0, y_j)\\,(w_j^\\top u + b_j) \\quad\\text{s.t.}\\quad
    w_j^\\top u + b_j \\le y_j + \\varepsilon \\;\\;\\forall j,

plus ``u >= 0`` when ``u`` is a ReLU output. Only upper bounds appear, which hold whether a unit is
on or off; the lower bounds of the active rows are pushed for by the objective. With ``ε = 0`` and
exact data the solution set is exactly the layer's preimage.

Notes
-----
* **Boundedness.** The objective is bounded above on the feasible set: each term is at most
  ``max(0, y_j)(y_j + ε)``. Equivalently, along any recession direction ``d`` (``W d <= 0``) the
  objective ``Σ_j max(0,y_j) w_jᵀd`` is ``<= 0``. So the LP is never unbounded; no box is needed.
  Its *optimal face* can be unbounded when the active rows do not have full column rank, which is
  exactly when the layer is not identifiable, and that is what the step record reports
  (``preimage_dim = n_in - rank`` of the rows with ``y_j > ε``). If HiGHS still reports
  unbounded (numerically), the layer fails with that status.
* **ε.** The layer's own initial value (noise level relative to ``max|y|``, else ``1e-6·max|y|``),
  multiplied by α while the LP is infeasible.
* The pipeline refines a latent that misses the observation by more than the noise on the whole
  network (:mod:`onnxinv.inversion.refine`).
* Non-ReLU layers (identity, LeakyReLU, Tanh, Sigmoid) have no sign pattern to guess; they use the
  l_inf LP of Algorithm 1 (:mod:`onnxinv.inversion.linf`).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019 (eq. (8) and its appendix).
"""

from __future__ import annotations

import numpy as np

from onnxinv.inversion import linf, lp
from onnxinv.inversion.framework import Draft, LayerContext, LayerOutcome, Method, Problem, Settings, walk
from onnxinv.inversion.identifiability import noisy_outcome
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import build_targets
from onnxinv.layers import Activation

__all__ = ["METHOD", "solve"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """The relaxed LP of eq. (8), layer by layer from the output (see module docstring)."""
    return walk(problem, settings, _layer, "relaxed", deadline)


def _layer(ctx: LayerContext) -> LayerOutcome:
    if ctx.layer.activation is not Activation.RELU:
        return linf.solve_layer(ctx)
    n = ctx.layer.in_features
    rows = np.arange(ctx.layer.out_features) if ctx.rows is None else ctx.rows
    w, b, y = ctx.layer.weight[rows], ctx.layer.bias[rows], ctx.y[rows]
    c = -(np.maximum(y, 0.0) @ w)
    eps = ctx.initial_eps()
    res = None
    growth = 0
    for growth in range(ctx.settings.max_growth + 1):  # noqa: B007 - reported below
        res = lp.solve_lp(c, w, y + eps - b, bounds=ctx.bounds, time_limit=ctx.lp_time)
        if res.status is not SolverStatus.INFEASIBLE:
            break
        eps *= ctx.settings.alpha
    assert res is not None
    targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
    if not res.ok or res.x is None:
        return noisy_outcome(
            ctx,
            targets,
            np.zeros(n),
            eps,
            res.status,
            f"relaxed LP (eq. 8) at ε = {eps:.3g} ended '{res.status.value}': {res.message}",
        )
    msg = f"relaxed LP (eq. 8) at ε = {eps:.3g} after {growth} growth step(s)"
    return noisy_outcome(ctx, targets, res.x, eps, SolverStatus.OPTIMAL, msg)


METHOD = Method(
    name="relaxed",
    solve=solve,
    summary="noisy: the relaxed LP of eq. (8) of Lei et al., no sign pattern to guess",
    noise="noisy",
)
