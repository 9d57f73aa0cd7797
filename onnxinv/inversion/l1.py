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
* ReLU and identity layers whose two-sided rows are at least as many as the inputs are solved
  through the LP's dual (``n`` rows instead of one slack column per row), one warm-started HiGHS
  model for all ε (:class:`_Dual`); the optimal values are checked to agree. Its first simplex
  solve starts from the basis a least-squares fit suggests (:meth:`_Dual.start_basis`; about 125
  instead of 345 iterations on 20-100-500's output layer), except below an undetermined layer; a
  layer that then comes out not identifiable or failed is solved again from the slack basis.
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
import scipy.linalg as sla
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
    """One layer of Algorithm 2. The dual's first simplex solve may start from the basis of a
    least-squares guess (:meth:`_Dual.start_basis`), which only changes the path to the optimum; a
    layer that comes out not identifiable (the optimum may be a face, and the path picks the point)
    or failed is solved again without it, and a layer below an undetermined one never takes it, so
    the point returned stays the plain dual simplex's."""
    dual = _Dual(ctx, guess=True)
    outcome = _layer_with(ctx, dual)
    if dual.guessed and (outcome.preimage_dim > 0 or outcome.status is not SolverStatus.OPTIMAL):
        outcome = _layer_with(ctx, _Dual(ctx, guess=False))
    return outcome


def _layer_with(ctx: LayerContext, dual: _Dual) -> LayerOutcome:
    n = ctx.layer.in_features
    settings = ctx.settings
    eps = ctx.initial_eps()
    best: tuple[float, float, Targets, np.ndarray] | None = None  # (error, eps, targets, u)
    solves = 0
    last_status = None
    last_message = ""
    for _ in range(settings.max_growth + 1):
        targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
        res = dual.solve(targets)
        if res is None:
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
    return lp.solve_lp(c, a_ub, b_ub, bounds=bounds, time_limit=ctx.lp_time)


class _Dual:
    r"""The l_1 LP of one layer solved through its dual, one :class:`~onnxinv.inversion.lp.LPSession`
    for every ε (module Notes).

    For rows with ``ℓ_j = h_j = c_j`` (two-sided) or ``ℓ_j = -inf`` (one-sided), all of scale 1 (ReLU
    and identity layers), the LP ``min Σ_j e_j`` of the module docstring has the dual

    .. math::

        \min_v\; \sum_j v_j (h_j - b_j) \quad\text{s.t.}\quad W^\top v = 0 \;(u \text{ free}),
        \quad W^\top v \ge 0 \;(u \ge 0), \qquad
        v_j \in [-1, 1] \;(\text{two-sided}), \quad v_j \in [0, 1] \;(\text{one-sided}),

    with ``n`` rows instead of one per output row and no slack columns; ``u`` is the dual of its rows
    (strong duality: the optimal values agree, which is checked, and a basic optimum of the dual
    gives a basic optimum of the primal). Growing ε only turns two-sided rows one-sided, i.e. raises
    lower bounds of ``v`` from ``-1`` to ``0``: each solve after the first is a warm start. Any other
    case (other activations, other input bounds, fewer two-sided rows than unknowns, where the
    optimum is a whole face and the two forms may pick different points of it) or any doubt returns
    None, and the caller solves the primal LP.
    """

    def __init__(self, ctx: LayerContext, guess: bool = False) -> None:
        self.ctx = ctx
        self.guess = guess  # may the first solve start from a least-squares guess's basis?
        self.guessed = False  # did it?
        self.session: lp.LPSession | None = None
        self.rows: np.ndarray | None = None
        bounds = ctx.bounds
        relu_input = bounds is not None and bool(np.all(bounds[0] == 0.0) and np.all(np.isinf(bounds[1])))
        self.usable = ctx.layer.activation in (Activation.RELU, Activation.IDENTITY) and (
            bounds is None or relu_input
        )

    def solve(self, targets: Targets) -> lp.LPResult | None:
        if not self.usable:
            return None
        two = targets.equality
        one = ~np.isfinite(targets.lower) & np.isfinite(targets.upper)
        if not (
            np.all(two | one)
            and np.all(targets.upper_scale == 1.0)
            and np.all(targets.lower_scale[two] == 1.0)
        ):
            return None
        ctx = self.ctx
        n = ctx.layer.in_features
        if int(two.sum()) < n:
            # fewer two-sided rows than unknowns: the optimum is a face, and the primal's vertex is
            # the documented choice
            return None
        w, b = targets.matrices(ctx.layer)
        cost = targets.upper - b
        low = np.where(two, -1.0, 0.0)
        if self.session is None or self.rows is None or not np.array_equal(self.rows, targets.rows):
            free = ctx.bounds is None
            # not below a layer left undetermined (ctx.guessed): an l_1 fit to an arbitrary point of
            # a preimage often has a whole face of optima, where the path picks the point
            use = self.guess and not ctx.guessed and not sp.issparse(w)
            basis = self.start_basis(w, cost, two, low, free) if use else None
            self.guessed = basis is not None
            self.session = lp.LPSession(
                cost,
                sp.csr_array(w.T) if sp.issparse(w) else np.ascontiguousarray(w.T),
                np.zeros(n) if free else np.full(n, np.inf),
                (low, np.ones(targets.count)),
                b_lb=np.zeros(n),
                basis=basis,
            )
            self.rows = targets.rows.copy()
        else:
            self.session.set_objective(cost)
            self.session.set_bounds(low, np.ones(targets.count))
        res = self.session.solve(time_limit=ctx.lp_time)
        u = self.session.row_dual
        if not res.ok or res.x is None or u is None or not np.all(np.isfinite(u)):
            return None
        u = u[:n]
        # strong duality, checked: the primal value at u must equal the dual optimum
        a = w @ u - cost
        primal = float(np.sum(np.abs(a[two])) + np.sum(np.maximum(a[one], 0.0)))
        dual_value = -float(res.objective)
        if ctx.bounds is not None:
            u = np.maximum(u, 0.0)
            a = w @ u - cost
            primal = float(np.sum(np.abs(a[two])) + np.sum(np.maximum(a[one], 0.0)))
        if not abs(primal - dual_value) <= 1e-7 * (1.0 + abs(dual_value)):
            return None
        return lp.LPResult(
            res.status, u, primal, res.violation, res.iterations, res.seconds, res.message, res.highs_status
        )

    @staticmethod
    def start_basis(
        w: np.ndarray, cost: np.ndarray, two: np.ndarray, low: np.ndarray, free: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The dual's starting basis from the least-squares fit ``ũ`` of the two-sided rows (projected
        on ``u >= 0`` unless ``free``), as :class:`~onnxinv.inversion.lp.LPSession` codes.

        At the optimum, ``v_j`` sits at ``1`` where ``w_jᵀu - c_j > 0`` and at its lower bound where it
        is negative; the rows ``u`` interpolates carry the basic ``v_j``, one per positive ``u_i``,
        whose dual rows bind. So: the rows of the smallest ``|w_jᵀũ - c_j|`` basic, as many as ``ũ``
        has positive coordinates, the other ``v_j`` at the bound the sign of the residual says, and the
        rows of ``Wᵀv`` of positive ``ũ_i`` at their bound. Measured on 20-100-500's output layer:
        about 125 dual simplex iterations instead of about 345 from the slack basis, the same optimum.
        None when the least-squares fit fails.
        """
        n = w.shape[1]
        rows = w[two]
        gram = rows.T @ rows
        try:
            factor = sla.cho_factor(gram, check_finite=False)
            u = sla.cho_solve(factor, rows.T @ cost[two], check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            return None
        if not np.all(np.isfinite(u)):
            return None
        if not free:
            u = np.maximum(u, 0.0)
        positive = np.ones(n, dtype=bool) if free else u > 1e-9 * max(1.0, float(np.max(np.abs(u))))
        residual = w @ u - cost
        cols = np.where(residual > 0, 1, -1).astype(np.int8)
        cols[np.argsort(np.abs(residual), kind="stable")[: int(positive.sum())]] = 0
        return cols, np.where(positive, -1, 0).astype(np.int8)


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
