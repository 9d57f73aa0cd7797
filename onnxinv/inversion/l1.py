"""Noisy inversion with the l_1 LP, Algorithm 2 of [1]_.

Problem
-------
Per layer (output first), with one slack per row and the row split by ``ε``:

.. math::

    \\min_{u, e}\\; \\sum_j e_j \\quad\\text{s.t.}\\quad
    |w_j^\\top u + b_j - y_j| \\le e_j \\;\\; (y_j > \\varepsilon), \\qquad
    w_j^\\top u + b_j \\le y_j + e_j \\;\\; (y_j \\le \\varepsilon), \\qquad e \\ge 0,

plus ``u >= 0`` when ``u`` is a ReLU output. Then ``ε ← α ε`` and re-solve while the re-forwarded
error ``||act(W u + b) - y||_1`` keeps falling; the best ``u`` is returned.

Notes
-----
* ε starts at the layer's own initial value (noise level relative to ``max|y|``, else ``1e-6·max|y|``).
  Values of ε that do not move any row between the two groups give the same LP, so each growth step
  jumps to the first value on the grid ``ε α^m`` that moves at least one row; the comparison of
  errors is then between different LPs, as intended.
* LeakyReLU, Tanh and Sigmoid rows are those of :mod:`onnxinv.inversion.targets`; layers without a
  split (identity, tanh, sigmoid) take one LP.
* Only ``OPTIMAL`` LP statuses count; a failed LP after a successful one keeps the earlier result.
* Identifiability is reported as for the l_inf LP: rank of the two-sided rows at the returned ε.
* The pipeline refines a latent that misses the observation by more than the noise on the whole
  network (:mod:`onnxinv.inversion.refine`).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from onnxinv.inversion import lp
from onnxinv.inversion.framework import Draft, LayerContext, LayerOutcome, Method, Problem, Settings, walk
from onnxinv.inversion.identifiability import noisy_outcome
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import Targets, build_targets, project
from onnxinv.layers import Activation

__all__ = ["METHOD", "solve"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Algorithm 2 of [1]_, layer by layer from the output (see module docstring)."""
    return walk(problem, settings, _layer, "l1", deadline)


def _layer(ctx: LayerContext) -> LayerOutcome:
    n = ctx.layer.in_features
    settings = ctx.settings
    eps = ctx.initial_eps()
    best: tuple[float, float, Targets, np.ndarray] | None = None  # (error, eps, targets, u)
    solves = 0
    last_status = None
    last_message = ""
    for _ in range(settings.max_growth + 1):
        targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
        res = _min_l1(ctx, targets)
        solves += 1
        if not res.ok or res.x is None:
            last_status, last_message = res.status, res.message
            break
        u = project(res.x[:n], ctx.bounds)
        err = _l1_error(ctx, u)
        if best is not None and err >= best[0]:
            break
        best = (err, eps, targets, u)
        nxt = _next_eps(ctx, eps)
        if nxt is None:
            break
        eps = nxt
    if best is None:
        targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
        status = last_status if last_status is not None else SolverStatus.UNKNOWN
        return noisy_outcome(
            ctx,
            targets,
            project(np.zeros(n), ctx.bounds),
            eps,
            status,
            f"l_1 LP at ε = {eps:.3g} ended '{status.value}': {last_message}",
        )
    err, eps, targets, u = best
    msg = f"l_1 LP: re-forwarded l_1 error {err:.3g} at ε = {eps:.3g} ({solves} LP solve(s))"
    return noisy_outcome(ctx, targets, u, eps, SolverStatus.OPTIMAL, msg)


def _min_l1(ctx: LayerContext, targets: Targets) -> lp.LPResult:
    w, b = targets.matrices(ctx.layer)
    n, r = ctx.layer.in_features, targets.count
    up = np.flatnonzero(np.isfinite(targets.upper))
    lo = np.flatnonzero(np.isfinite(targets.lower))
    slack_up = sp.csr_matrix((-targets.upper_scale[up], (np.arange(up.size), up)), shape=(up.size, r))
    slack_lo = sp.csr_matrix((-targets.lower_scale[lo], (np.arange(lo.size), lo)), shape=(lo.size, r))
    a_ub = sp.vstack(
        [
            sp.hstack([sp.csr_matrix(w[up]), slack_up]),
            sp.hstack([sp.csr_matrix(-w[lo]), slack_lo]),
        ],
        format="csr",
    )
    b_ub = np.concatenate([targets.upper[up] - b[up], -(targets.lower[lo] - b[lo])])
    c = np.concatenate([np.zeros(n), np.ones(r)])
    lower, upper = (np.full(n, -np.inf), np.full(n, np.inf)) if ctx.bounds is None else ctx.bounds
    bounds = (np.concatenate([lower, np.zeros(r)]), np.concatenate([upper, np.full(r, np.inf)]))
    return lp.solve_lp(c, a_ub, b_ub, bounds=bounds, time_limit=ctx.remaining)


def _l1_error(ctx: LayerContext, u: np.ndarray) -> float:
    out = ctx.layer.forward(u)
    y = ctx.y
    if ctx.rows is not None:
        out, y = out[ctx.rows], y[ctx.rows]
    return float(np.sum(np.abs(out - y)))


def _next_eps(ctx: LayerContext, eps: float) -> float | None:
    """The first ε on the grid ``eps·α^m`` (m >= 1) that moves a row between the two groups."""
    act = ctx.layer.activation
    if act not in (Activation.RELU, Activation.LEAKY_RELU):
        return None
    y = ctx.y if ctx.rows is None else ctx.y[ctx.rows]
    values = y if act is Activation.RELU else np.abs(y)
    above = values[values > eps]
    if above.size == 0:
        return None
    alpha = ctx.settings.alpha
    m = max(1, math.ceil(math.log(float(above.min()) / eps) / math.log(alpha)))
    return eps * alpha**m


METHOD = Method(
    name="l1",
    solve=solve,
    summary="noisy: l_1 LP per layer, one slack per row (Algorithm 2 of Lei et al.)",
    noise="noisy",
)
