"""Noisy inversion with the l_inf LP, Algorithm 1 of [1]_.

Problem
-------
Given ``x = G(z*) + e`` with ``|e_j| <= ε``, per layer (output first), with the row split by ``ε``:

.. math::

    \\min_{u,\\delta}\\; \\delta \\quad\\text{s.t.}\\quad
    |w_j^\\top u + b_j - y_j| \\le \\delta \\;\\; (y_j > \\varepsilon), \\qquad
    w_j^\\top u + b_j \\le y_j + \\delta \\;\\; (y_j \\le \\varepsilon), \\qquad
    \\delta \\le \\varepsilon,

plus ``u >= 0`` when ``u`` is a ReLU output. If infeasible, ``ε ← α ε`` (α = 1.2) and re-solve.
LeakyReLU layers use the rows of Remark 1 of [1]_, Tanh / Sigmoid outputs the derivative-scaled rows
of :mod:`onnxinv.inversion.targets`; the set ``{u : |act(Wu+b) - y| <= ε}`` is exactly eq. (6).

Notes
-----
* The LP is solved without the cap ``δ <= ε``; "feasible" means ``δ* <= ε``. This is the same test as
  Algorithm 1's and also gives ``δ*``. Growing ε only relaxes rows (two-sided rows become one-sided),
  so ``δ*(ε)`` is non-increasing while ``ε`` grows: the first feasible ``ε`` on Algorithm 1's grid
  ``ε_0 α^m`` lies at or below ``m = ⌈log_α(δ*(ε_0)/ε_0)⌉`` and is found by a galloping search on
  ``m`` (``1, 2, 4, ...`` steps up from the last infeasible ``m``, then bisection), with the same answer
  as the sequential loop in a few LP solves; galloping because ``δ*(ε_0)`` can exceed ``ε_0`` by far
  more than the first feasible step (measured: a guess of ``m = 24`` for an answer of 2 on the first
  layer of 128-1024-4096). (The rows of a tanh / sigmoid output are
  exact at ``δ = ε`` and change with ``ε``; feasibility still only grows with ``ε``, and a guess that
  falls short is repeated from ``δ*`` at that guess.)
* The defects of the authors' code are avoided: ε starts positive (the given noise level, else
  ``1e-6 · max|y|``), every layer starts from its own initial ε (the relative noise level times
  that layer's ``max|y|``), and only ``OPTIMAL`` LP statuses count; anything else fails the layer
  with its status in the step record.
* Identifiability is reported for the linearisation: the two-sided rows at the final ε must have
  full column rank (then the error of ``u`` is bounded by ``δ*/σ_min``, Theorem 3 of [1]_); otherwise
  ``preimage_dim = n_in - rank`` is the number of directions the data does not constrain at all.
* Layer-wise errors grow with depth (Theorems 3-4 of [1]_); the pipeline refines a latent that misses
  the observation by more than the noise on the whole network (:mod:`onnxinv.inversion.refine`), and
  the radius of a noisy "unique" comes from the stability argument at the returned latent
  (:func:`onnxinv.inversion.identifiability.stability_radius`), not from these steps.
* Without a noise level, ε starts at ``1e-6·max|y|`` and the ε the last layer ends at is reported as
  the noise estimate (``noise_estimate``).
* Few rows bind at an l_inf optimum, so the LP is solved by row generation (:mod:`onnxinv.inversion.lp`)
  from the rows a least-squares start violates most. For ReLU and identity layers the LPs of all ε
  are one HiGHS model whose right-hand sides change (:class:`_Family`): every solve after the
  first is a warm start from the previous basis. Layer LPs of at least ``GUESS_COLUMNS`` variables
  start that first simplex from a rough interior point iterate (:func:`_guess`): its basis, and the
  rows nearest to binding at it as the first working set; on 20-100-500's output layer about one
  dual simplex iteration in one run instead of about 275. The guess changes the path, not the
  optimum, where the optimum is one point; a layer that comes out not identifiable (its optimum
  may be a face, and the path picks the point) or failed is solved again without it.
* Large dense layer LPs (:func:`onnxinv.inversion.ipm.use_ipm` of the LP with both sides of every row)
  go to the dense interior point method of :mod:`onnxinv.inversion.ipm` instead (HiGHS's simplex and
  interior point method take minutes on thousands of dense rows); the working rows carry over from
  one ε to the next. Its δ* is compared with ε only when it lies farther from ``ε (1 + 1e-9)`` than
  ``DECIDE_BAND`` times its accuracy (the gap between its primal and dual objectives); otherwise that
  LP is solved by HiGHS and HiGHS's δ* decides, so the test never rests on the last digits of an
  interior point iterate (a tighter tolerance would only move the band, and a vertex polish cannot
  be trusted on the degenerate optima these LPs have).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from onnxinv.inversion import ipm, linear, lp
from onnxinv.inversion.framework import Draft, LayerContext, LayerOutcome, Method, Problem, Settings, walk
from onnxinv.inversion.identifiability import noisy_outcome
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import Targets, build_targets, project
from onnxinv.layers import Activation, Layer

__all__ = ["METHOD", "min_delta", "solve", "solve_layer"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Algorithm 1 of [1]_, layer by layer from the output (see module docstring).

    Without a noise level, the ε the last layer needed is reported as the noise estimate.
    """
    draft = walk(problem, settings, solve_layer, "linf", deadline)
    if problem.noise is None and draft.steps and draft.steps[-1].epsilon is not None:
        draft.noise_estimate = float(draft.steps[-1].epsilon)
    return draft


def solve_layer(ctx: LayerContext) -> LayerOutcome:
    """One layer of Algorithm 1: the smallest ε on the grid ``ε_0 α^m`` with ``δ*(ε) <= ε``.

    The first simplex solve may start from an interior point guess (:func:`_guess`), which only
    changes the path to the optimum. Where the optimum may be a whole face (the layer comes out not
    identifiable: the two-sided rows do not determine ``u``) or a solve failed, the path decides which
    point comes back, so the layer is solved again without the guess: the documented choice stays
    the vertex the plain dual simplex reaches.
    """
    family = _Family(ctx, guess=True)
    outcome = _solve_layer(ctx, family)
    if family.guessed and (outcome.preimage_dim > 0 or outcome.status is not SolverStatus.OPTIMAL):
        outcome = _solve_layer(ctx, _Family(ctx, guess=False))
    return outcome


def _solve_layer(ctx: LayerContext, family: _Family) -> LayerOutcome:
    settings = ctx.settings
    eps0, alpha = ctx.initial_eps(), settings.alpha
    cache: dict[int, tuple[float, Targets, lp.LPResult]] = {}

    def attempt(m: int) -> tuple[float, Targets, lp.LPResult]:
        if m not in cache:
            eps = eps0 * alpha**m
            targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
            cache[m] = (eps, targets, family.min_delta(targets, _threshold(eps)))
        return cache[m]

    def feasible(m: int) -> bool | None:
        eps, _, res = attempt(m)
        if not res.ok or res.x is None:
            return None
        return res.x[-1] <= _threshold(eps)

    first = feasible(0)
    if first is None:
        return _failed(ctx, *attempt(0))
    hi = 0
    if not first:
        lo = 0
        while True:
            # the step that would make the last δ* feasible; the rows of invertible output maps
            # change with ε, so the guess is checked and repeated from there if it falls short
            delta = _delta(attempt(lo)[2])
            guess = math.ceil(math.log(delta / eps0) / math.log(alpha)) if delta > 0 else lo + 1
            hi = min(max(lo + 1, guess), settings.max_growth)
            ok_hi = feasible(hi)
            if ok_hi is None:
                return _failed(ctx, *attempt(hi))
            if ok_hi:
                break
            if hi >= settings.max_growth:
                eps, targets, res = attempt(hi)
                return _outcome(
                    ctx,
                    eps,
                    targets,
                    res,
                    SolverStatus.ITERATION_LIMIT,
                    f"δ* = {_delta(res):.3g} still exceeds ε = {eps:.3g} after {hi} growth steps (max_growth)",
                )
            lo = hi
        # galloping search up from lo (steps 1, 2, 4, ... never past the midpoint): the guess from
        # δ* at a far too small ε can overshoot by many steps, and each step is an LP solve
        step = 1
        while hi - lo > 1:
            mid = min(lo + step, (lo + hi) // 2)
            ok = feasible(mid)
            if ok is None:
                return _failed(ctx, *attempt(mid))
            if ok:
                hi = mid
            else:
                lo = mid
                step *= 2
    eps, targets, res = attempt(hi)
    return _outcome(
        ctx,
        eps,
        targets,
        res,
        SolverStatus.OPTIMAL,
        f"l_inf LP: δ* = {_delta(res):.3g} <= ε = {eps:.3g} after {hi} growth step(s), {len(cache)} LP solve(s)",
    )


def _threshold(eps: float) -> float:
    """The largest δ* that counts as feasible at ε (a relative 1e-9 for the LP's rounding)."""
    return eps * (1 + 1e-9)


def min_delta(ctx: LayerContext, targets: Targets, threshold: float | None = None) -> lp.LPResult:
    """``min δ`` over ``(u, δ)`` subject to the row bounds widened by ``δ`` (module docstring); ``x`` of
    the result is ``[u, δ]``.

    Large dense LPs (:func:`onnxinv.inversion.ipm.use_ipm`) go to the dense interior point method, whose
    δ* is decided against ``threshold`` by HiGHS when it lies within the method's accuracy of it.
    """
    c, a_ub, b_ub, bounds = linear.widening_lp(ctx.layer, targets, ctx.bounds)
    w, b = targets.matrices(ctx.layer)
    n = ctx.layer.in_features
    start = _start_point(ctx, targets, w, b)
    dense = not sp.issparse(a_ub) and _large(targets.count, n)
    if start is None:  # the two-sided rows do not determine u: no good guess of the binding rows
        if dense:
            session = ipm.DenseSession(c, np.asarray(a_ub), b_ub, bounds, row_generation=False)
            return session.solve(time_limit=ctx.lp_time, threshold=threshold)
        return lp.solve_lp(c, a_ub, b_ub, bounds=bounds, time_limit=ctx.lp_time)
    viol = a_ub[:, :n] @ start - b_ub
    count = min(b_ub.size, 2 * (n + 1))
    initial = np.argsort(-viol)[:count]
    if dense:
        session = ipm.DenseSession(c, np.asarray(a_ub), b_ub, bounds, initial_rows=initial)
        return session.solve(time_limit=ctx.lp_time, threshold=threshold)
    return lp.solve_lp(
        c,
        a_ub,
        b_ub,
        bounds=bounds,
        time_limit=ctx.lp_time,
        row_generation=True,
        initial_rows=initial,
    )


def _start_point(ctx: LayerContext, targets: Targets, w: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Least squares on the two-sided rows (a guess of which rows bind), None if they are rank deficient."""
    two = targets.equality
    n = ctx.layer.in_features
    if two.sum() >= n:
        ls = linear.solve_rows(w, two, targets.upper[two] - b[two], 1.0 / targets.upper_scale[two])
        if ls.rank == n:
            return project(ls.u, ctx.bounds)
    return None


class _Family:
    """The l_inf LPs of one layer at growing ε, as one :class:`~onnxinv.inversion.lp.LPSession`.

    For ReLU and identity layers every row keeps its coefficients (the scales are 1) whatever ε:
    growing ε only turns two-sided rows one-sided, i.e. switches their lower row off. So the LP of
    every ε is the same model with other right-hand sides: rows ``[W, -1] [u; δ] <= h - b`` and
    ``[-W, -1] [u; δ] <= -(ℓ - b)`` (``+inf``: off), and each solve after the first is a warm start
    from the last basis. The first solve is the one :func:`min_delta` makes (same rows, same row
    generation start); other activations (whose row scales change with ε) get :func:`min_delta`
    each time. A large dense family is one :class:`~onnxinv.inversion.ipm.DenseSession` instead.
    """

    def __init__(self, ctx: LayerContext, guess: bool = False) -> None:
        self.ctx = ctx
        self.guess = guess  # may the first solve start from an interior point guess?
        self.guessed = False  # did it?
        self.session: lp.LPSession | ipm.DenseSession | None = None
        self.rows: np.ndarray | None = None
        self.threshold: float | None = None
        self.usable = ctx.layer.activation in (Activation.RELU, Activation.IDENTITY)

    def min_delta(self, targets: Targets, threshold: float | None = None) -> lp.LPResult:
        if not self.usable or not _unit_scales(targets):
            return min_delta(self.ctx, targets, threshold)
        rhs = _family_rhs(self.ctx.layer, targets)
        if self.session is not None and self.rows is not None and np.array_equal(self.rows, targets.rows):
            self.session.set_rhs(rhs)
            self.threshold = threshold
            return self._solve()
        ctx = self.ctx
        n = ctx.layer.in_features
        w, b = targets.matrices(ctx.layer)
        m = targets.count
        if sp.issparse(w):  # the rows [W, -1; -W, -1] stay sparse (HiGHS takes them so)
            minus = sp.csr_array(np.full((m, 1), -1.0))
            a = sp.csr_array(sp.vstack([sp.hstack([w, minus]), sp.hstack([-w, minus])], format="csr"))
        else:
            a = np.empty((2 * m, n + 1))
            a[:m, :n] = w
            a[m:, :n] = -w
            a[:, n] = -1.0
        lower, upper = (np.full(n, -np.inf), np.full(n, np.inf)) if ctx.bounds is None else ctx.bounds
        bounds = (np.append(lower, 0.0), np.append(upper, np.inf))
        c = np.zeros(n + 1)
        c[-1] = 1.0
        start = _start_point(ctx, targets, w, b)
        initial = ranked = None
        if start is not None:
            on = np.isfinite(rhs)
            viol = np.full(rhs.size, -np.inf)
            viol[on] = a[on, :n] @ start - rhs[on]
            # the rows min_delta starts from: the 2 (n + 1) most violated of the rows that take part,
            # in the order of the reduced LP
            reduced = np.flatnonzero(on)
            ranked = reduced[np.argsort(-viol[reduced])]
            initial = ranked[: 2 * (n + 1)]
        if isinstance(a, np.ndarray) and _large(m, n):
            self.session = ipm.DenseSession(
                c, a, rhs, bounds, row_generation=start is not None, initial_rows=initial
            )
        else:
            guess = None
            if self.guess and ranked is not None and isinstance(a, np.ndarray) and n + 1 >= GUESS_COLUMNS:
                few = ranked[: GUESS_ROWS * (n + 1)]
                guess = _guess(c, a[few], rhs[few], bounds)
                if guess is not None:
                    self.guessed = True
            self.session = lp.LPSession(
                c, a, rhs, bounds, row_generation=start is not None, initial_rows=initial, start=guess
            )
        self.rows = targets.rows.copy()
        self.threshold = threshold
        return self._solve()

    def _solve(self) -> lp.LPResult:
        assert self.session is not None
        if isinstance(self.session, ipm.DenseSession):
            return self.session.solve(time_limit=self.ctx.lp_time, threshold=self.threshold)
        return self.session.solve(time_limit=self.ctx.lp_time)


# LPs of at least GUESS_COLUMNS variables start the simplex from an interior point iterate at accuracy
# GUESS_TOL on the GUESS_ROWS (n + 1) rows the least-squares start violates most (see _guess).
GUESS_COLUMNS = 50
GUESS_TOL = 3e-4
GUESS_ROWS = 3


def _guess(
    c: np.ndarray, a: np.ndarray, b: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]
) -> np.ndarray | None:
    """A rough optimum of the layer LP on the rows given (those the least-squares start violates
    most), for the simplex's starting basis and first working set
    (:class:`~onnxinv.inversion.lp.LPSession`'s ``start``): a few interior point iterations to accuracy
    ``GUESS_TOL``. From the slack basis HiGHS's dual simplex needs about 250 iterations on the 202 x 101
    working set of 20-100-500's output layer; from this guess (on 303 rows) about one on ~126 rows, in
    one run, and the guess costs less than the difference. The simplex still decides the optimum;
    None when the iterate is not finite."""
    out = ipm.interior_point(c, a, b, bounds[0], bounds[1], tol=GUESS_TOL, target=GUESS_TOL)
    return out.x if np.all(np.isfinite(out.x)) else None


def _large(rows: int, n: int) -> bool:
    """Does the layer LP of ``rows`` rows and ``n`` inputs go to the dense interior point method? Its
    size counts both sides of every row (the same for every ε of the layer)."""
    return ipm.use_ipm(2 * rows * (n + 1), n + 1)


def _unit_scales(targets: Targets) -> bool:
    return bool(
        np.all(targets.upper_scale == 1.0)
        and np.all(targets.lower_scale == 1.0)
        and np.all(np.isfinite(targets.upper))
    )


def _family_rhs(layer: Layer, targets: Targets) -> np.ndarray:
    b = layer.bias[targets.rows]
    with np.errstate(invalid="ignore"):
        lower = np.where(np.isfinite(targets.lower), -(targets.lower - b), np.inf)
    return np.concatenate([targets.upper - b, lower])


def _delta(res: lp.LPResult) -> float:
    """δ*, the last variable of a solved LP (only results with a solution reach here)."""
    assert res.x is not None
    return float(res.x[-1])


def _outcome(
    ctx: LayerContext, eps: float, targets: Targets, res: lp.LPResult, status: SolverStatus, message: str
) -> LayerOutcome:
    assert res.x is not None  # only solved LPs are reported as outcomes
    return noisy_outcome(ctx, targets, res.x[: ctx.layer.in_features], eps, status, message)


def _failed(ctx: LayerContext, eps: float, targets: Targets, res: lp.LPResult) -> LayerOutcome:
    n = ctx.layer.in_features
    u = res.x[:n] if res.x is not None else np.zeros(n)
    return noisy_outcome(
        ctx,
        targets,
        project(u, ctx.bounds),
        eps,
        res.status,
        f"l_inf LP at ε = {eps:.3g} ended '{res.status.value}': {res.message}",
    )


METHOD = Method(
    name="linf",
    solve=solve,
    summary="noisy: l_inf LP per layer with a growing error bound (Algorithm 1 of Lei et al.)",
    noise="noisy",
)
