"""A dense primal-dual interior point method for LPs with many dense inequality rows.

Problem
-------
.. math::

    \\min_x\\; c^\\top x \\quad\\text{s.t.}\\quad A x \\le b,\\quad l \\le x \\le u

(``x_i`` free where both bounds are infinite; ``A`` dense). With the finite bounds as rows,
``G = [A; -E_L; E_U]``, ``h = [b; -l_L; u_U]``, the primal is ``G x + s = h, s >= 0`` and the dual
``max -hᵀz`` s.t. ``Gᵀz + c = 0, z >= 0``. Newton's method on the perturbed KKT conditions
``Gᵀz + c = 0``, ``Gx + s - h = 0``, ``s ∘ z = σμ`` reduces to the normal equations

.. math::

    (G^\\top D G)\\, \\Delta x = -r_d - G^\\top (D r_p - S^{-1} r_c), \\qquad D = Z S^{-1},

where ``GᵀDG = AᵀD_A A + diag(D_L + D_U)``: per iteration one ``syrk`` of the (scaled) working rows
and one Cholesky factorisation of an ``n x n`` matrix (LAPACK ``potrf``). Directions come from
Mehrotra's predictor-corrector [1]_ (affine step, centring ``σ = (μ_aff/μ)^3``, second-order
correction), the starting point from the least-squares heuristic of [2]_ (Ch. 14.2) adapted to the
inequality form.

Notes
-----
* Row generation: the LP is solved on a working set of rows; the rows the solution violates (checked
  in numpy on all rows) are added and the LP re-solved, until every row holds. The working-set LP is
  a relaxation, so its optimum is the full LP's once it is feasible there; its duals, extended by
  zeros, are dual feasible for the full LP with the same dual objective. Each round is a whole solve
  (interior point methods warm-start poorly: measured, a start from the last round's iterate took
  five times the iterations of a cold one), so the rounds are made few: a scouting solve of the
  caller's rows to ``SCOUT_TOL`` comes first, and the working set becomes the ``SCOUT_KEEP · n`` rows
  most violated at its point (with the rows it found binding), a far better guess than one from a
  least-squares start. What carries across the solves of a :class:`DenseSession` is that working set.
* Rows are scaled to unit length inside the solver (residuals are reported in the caller's units).
* The accuracy of an iterate is the largest of the relative primal residual, the relative dual
  residual and the relative duality gap. The method stops at ``IPM_TARGET``, or when it has reached
  ``IPM_TOL`` and makes no more progress (the end game of a degenerate LP can lose digits again; the
  best iterate is returned).
* ``OPTIMAL`` is claimed only when the iterate reached ``IPM_TOL`` on the working rows (``z >= 0``
  throughout, so that is dual feasibility and the gap for the full LP too), no other row is violated
  by more than ``1e-9 (1 + |b_i|)``, and the numpy re-check of
  :meth:`onnxinv.inversion.lp.LinearProgram.recheck` passes on all rows and bounds (the same test as
  for HiGHS's answers). Anything else (iteration cap, a stalled step, a Cholesky failure, iterates
  that grow without bound, i.e. a suspected infeasible or unbounded LP) is not an answer: a working
  set that failed is solved once more on all rows, and if that fails too :class:`DenseSession` solves
  the LP with HiGHS (:mod:`onnxinv.inversion.lp`) and says so in the message.
* A caller that compares the optimum with a threshold (the l_inf method's ``δ* <= ε``) passes it; an
  optimum within ``DECIDE_BAND`` times its accuracy of the threshold goes to HiGHS as well.
* The solver is pure numpy / scipy BLAS and LAPACK and runs with whatever BLAS thread limit the
  caller set (the inversion runs single-threaded, :func:`onnxinv.inversion.parallel.blas_single_thread`);
  ``time_limit`` is checked every iteration, and HiGHS gets what is left of it.

References
----------
.. [1] S. Mehrotra, "On the implementation of a primal-dual interior point method", SIAM J. Optim.
   2(4), 575-601, 1992.
.. [2] J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006, Ch. 14.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas, lapack

from onnxinv.inversion import lp
from onnxinv.inversion.result import SolverStatus

__all__ = [
    "DENSE_COLUMNS",
    "DENSE_NONZEROS",
    "IPM_TOL",
    "DenseSession",
    "IPMOutcome",
    "interior_point",
    "solve_dense",
    "use_ipm",
]

IPM_TOL = 1e-8
"""Relative primal residual, dual residual and duality gap an optimum must reach (the largest of them)."""
IPM_TARGET = 1e-11
"""The method goes on to this accuracy while it makes progress (``PATIENCE`` iterations)."""
PATIENCE = 3
# Iterations without a better iterate after which the method stops (the end game of a degenerate LP
# can wander at the accuracy the normal equations allow).
STALL = 8
MAX_ITERATIONS = 200
STEP_FRACTION = 0.995
# Iterates beyond this (relative to the data) mean an LP with no optimum, or numerical trouble.
DIVERGENCE = 1e12
# LPs routed here by :func:`use_ipm`: at least DENSE_NONZEROS entries and DENSE_COLUMNS variables.
# Measured on 2 busy cores, the l_inf LPs of 128-1024-4096: the first layer's (1025 columns, 6121
# rows) HiGHS 42-117 s (IPM + crossover), this method 3.6-4.9 s; the second layer's five (129 columns,
# 2048 rows) HiGHS 2.9-4.9 s (a warm dual simplex that stalls and restarts), this method 0.2-0.4 s;
# 20-250-600's (251 columns, 1200 rows) 0.16 s of CPU per inversion instead of 0.61 s. Smaller LPs stay
# with HiGHS's warm simplex (20-100-500's output layer, 101 x 1000 counted here, gains about 10%).
DENSE_NONZEROS = 200_000
DENSE_COLUMNS = 100
# An optimum within DECIDE_BAND times the method's accuracy of the caller's threshold goes to HiGHS.
DECIDE_BAND = 10.0
# Rows added per row generation round at most (a round is a whole interior point solve).
ROUND_ROWS_MINIMUM = 50
# Accuracy of the scouting solve that picks the working rows (see DenseSession.solve).
SCOUT_TOL = 1e-3
# Rows kept after scouting: SCOUT_KEEP per variable (an optimum binds about one per variable).
SCOUT_KEEP = 1.5


def use_ipm(nonzeros: int, columns: int) -> bool:
    """True when an LP of this size goes to this dense interior point method instead of HiGHS."""
    return nonzeros >= DENSE_NONZEROS and columns >= DENSE_COLUMNS


@dataclass(frozen=True, eq=False)
class IPMOutcome:
    """One interior point solve of ``min cᵀx`` s.t. ``A x <= b``, ``l <= x <= u``.

    ``converged`` says whether the residuals and the gap reached the tolerance; ``x``, ``primal`` and
    ``dual`` are the best iterate and its objective values (``dual`` a lower bound on the optimum up
    to the tolerance when converged); ``z`` the duals of the rows of ``A``; ``time_limit`` whether the
    deadline ended the solve.
    """

    converged: bool
    x: np.ndarray
    z: np.ndarray
    primal: float
    dual: float
    iterations: int
    message: str
    time_limit: bool = False


def interior_point(
    c: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    tol: float = IPM_TOL,
    target: float = IPM_TARGET,
    max_iterations: int | None = None,
    deadline: float | None = None,
) -> IPMOutcome:
    """Mehrotra's predictor-corrector method on ``min cᵀx`` s.t. ``a x <= b``, ``lower <= x <= upper``
    (module docstring); ``a`` dense ``(m, n)``, no row generation.

    Parameters
    ----------
    c, a, b, lower, upper : the LP (bounds ``±inf`` where absent)
    tol : the accuracy an optimum must reach (largest of the relative residuals and gap)
    target : the accuracy the method goes on to while it makes progress
    max_iterations : iteration cap (None: ``MAX_ITERATIONS``)
    deadline : a ``time.perf_counter()`` value; reaching it ends the solve unconverged

    Never raises on numerical trouble: the outcome then has ``converged=False`` and says why.
    """
    c = np.asarray(c, dtype=np.float64)
    n = c.size
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = b.size
    low_idx = np.flatnonzero(np.isfinite(lower))
    up_idx = np.flatnonzero(np.isfinite(upper))
    # rows scaled to unit length: the normal matrix and the residuals are then in comparable units
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    norms[norms == 0] = 1.0
    a_s = a / norms[:, None]
    b_s = b / norms
    h = np.concatenate([b_s, -lower[low_idx], upper[up_idx]])
    n_low, total = low_idx.size, m + low_idx.size + up_idx.size
    a_t = a_s.T  # Fortran-ordered view for syrk (the transpose of a C-ordered array)
    if total == 0:  # nothing bounds x: not an LP this method settles (HiGHS says unbounded or not)
        return IPMOutcome(False, np.zeros(n), np.zeros(0), np.nan, np.nan, 0, "no rows and no finite bounds")
    scale_h = 1.0 + float(np.max(np.abs(h)))
    # per-row scales of the primal residual: one huge right-hand side or bound (a bound that never
    # binds, a row of tiny coefficients scaled to unit length) must not loosen the test of the others
    row_scale = 1.0 + np.abs(h)
    scale_c = 1.0 + float(np.max(np.abs(c)))

    def g_mul(x: np.ndarray) -> np.ndarray:
        return np.concatenate([a_s @ x, -x[low_idx], x[up_idx]])

    def gt_mul(z: np.ndarray) -> np.ndarray:
        out = a_t @ z[:m]
        # the indices are distinct (np.flatnonzero): plain fancy updates, the same sums as ufunc.at
        out[low_idx] -= z[m : m + n_low]
        out[up_idx] += z[m + n_low :]
        return out

    def factor(d: np.ndarray) -> np.ndarray | None:
        """Cholesky factor (upper, in LAPACK's layout) of ``GᵀDG``, None when it is not positive definite."""
        root = np.sqrt(d[:m])
        normal = blas.dsyrk(1.0, a_t * root, trans=0, lower=0)  # a_t * root stays Fortran-ordered
        diagonal = np.zeros(n)
        diagonal[low_idx] += d[m : m + n_low]
        diagonal[up_idx] += d[m + n_low :]
        normal[np.diag_indices(n)] += diagonal
        ridge = 0.0
        for _ in range(3):
            trial = normal if ridge == 0.0 else normal + ridge * np.eye(n)
            chol, info = lapack.dpotrf(trial, lower=0, clean=0, overwrite_a=0)
            if info == 0:
                return np.asarray(chol)
            # a nearly singular normal matrix (rank-deficient working rows, or the end game's
            # extreme D): a tiny ridge, whose effect the residual test still sees
            ridge = max(ridge * 1e3, 1e-13 * max(float(np.max(np.abs(np.diag(normal)))), 1.0))
        return None

    def solve_normal(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        sol, _ = lapack.dpotrs(chol, rhs, lower=0)
        return np.asarray(sol)

    # starting point ([2], 14.2, for the inequality form): least squares for x and least norm for z,
    # both shifted into the positive orthant and balanced
    target = min(target, tol)
    if max_iterations is None:
        max_iterations = MAX_ITERATIONS
    ones = np.ones(total)
    chol = factor(ones)
    if chol is None:
        return IPMOutcome(
            False, np.zeros(n), np.zeros(m), np.nan, np.nan, 0, "the rows do not have full rank"
        )
    x = solve_normal(chol, gt_mul(h))
    s = h - g_mul(x)
    z = g_mul(solve_normal(chol, -c))
    s += max(-1.5 * float(np.min(s)), 0.0) if s.size else 0.0
    z += max(-1.5 * float(np.min(z)), 0.0) if z.size else 0.0
    s = np.maximum(s, 1e-8 * scale_h)
    z = np.maximum(z, 1e-8 * scale_c)
    product = float(s @ z)
    s += 0.5 * product / float(np.sum(z))
    z += 0.5 * product / float(np.sum(s))

    def direction(
        chol: np.ndarray, d: np.ndarray, r_p: np.ndarray, r_d: np.ndarray, r_c_over_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The Newton direction ``(Δx, Δs, Δz)`` for the complementarity residual ``r_c`` (as ``S⁻¹ r_c``)."""
        dx = solve_normal(chol, -r_d - gt_mul(d * r_p - r_c_over_s))
        gdx = g_mul(dx)
        return dx, -r_p - gdx, d * (gdx + r_p) - r_c_over_s

    best: tuple[float, np.ndarray, np.ndarray, float, float, int] | None = None

    def outcome(message: str, iteration: int, timed_out: bool = False) -> IPMOutcome:
        """The best iterate seen (the end game of a degenerate LP can lose accuracy again)."""
        if best is None:
            return IPMOutcome(False, x, z[:m] / norms, np.nan, np.nan, iteration, message, timed_out)
        merit, bx, bz, primal, dual, _ = best
        converged = merit <= tol and not timed_out
        text = "converged" if converged else message
        return IPMOutcome(converged, bx, bz[:m] / norms, primal, dual, iteration, text, timed_out)

    for iteration in range(max_iterations + 1):
        r_d = c + gt_mul(z)
        r_p = g_mul(x) + s - h
        mu = float(s @ z) / max(total, 1)
        primal, dual = float(c @ x), float(-(h @ z))
        res_p = float(np.max(np.abs(r_p) / row_scale))
        res_d = float(np.max(np.abs(r_d))) / scale_c
        # the duality gap relative to the objective, with a floor in the units of cᵀx (an objective
        # that is 0 at the optimum, such as δ on data without noise, still ends); not in those of h,
        # whose largest entry may be a bound far from the optimum
        gap_floor = 1e-6 * scale_c * (1.0 + float(np.max(np.abs(x))))
        gap = abs(primal - dual) / (gap_floor + abs(primal))
        merit = max(res_p, res_d, gap)
        if not np.isfinite(merit):
            return outcome("the iterates are no longer finite (numerical trouble)", iteration)
        if best is None or merit < best[0]:
            best = (merit, x.copy(), z.copy(), primal, dual, iteration)
        if merit <= target:
            return outcome("converged", iteration)
        if best[0] <= tol and iteration - best[5] >= PATIENCE:
            return outcome("converged", iteration)  # within the tolerance, and no more progress
        if merit > 1e4 * best[0] and best[0] <= tol:
            return outcome("converged", iteration)  # the end game lost accuracy; the best iterate holds
        if iteration - best[5] >= STALL:
            return outcome(f"no progress in {STALL} iterations (best accuracy {best[0]:.1e})", iteration)
        size = max(float(np.max(np.abs(x))), float(np.max(z)) if z.size else 0.0)
        if size > DIVERGENCE * max(scale_h, scale_c):
            return outcome(
                "the iterates grow without bound (the LP may be infeasible or unbounded)", iteration
            )
        if iteration == max_iterations:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            return outcome("time limit", iteration, timed_out=True)
        d = z / s
        chol = factor(d)
        if chol is None:
            return outcome("the normal equations lost positive definiteness", iteration)
        # predictor (affine scaling): r_c = s∘z, so S⁻¹ r_c = z
        dx, ds, dz = direction(chol, d, r_p, r_d, z)
        alpha_p, alpha_d = _step(s, ds), _step(z, dz)
        mu_aff = float((s + alpha_p * ds) @ (z + alpha_d * dz)) / max(total, 1)
        sigma = (mu_aff / mu) ** 3 if mu > 0 else 0.0
        # corrector: r_c = s∘z + Δs_aff∘Δz_aff - σμ
        dx, ds, dz = direction(chol, d, r_p, r_d, z + (ds * dz - sigma * mu) / s)
        alpha_p = min(1.0, STEP_FRACTION * _step(s, ds, 1.0 / STEP_FRACTION))
        alpha_d = min(1.0, STEP_FRACTION * _step(z, dz, 1.0 / STEP_FRACTION))
        if alpha_p < 1e-10 and alpha_d < 1e-10:
            return outcome("the step length vanished (stalled)", iteration)
        x = x + alpha_p * dx
        s = s + alpha_p * ds
        z = z + alpha_d * dz
    return outcome(f"no convergence in {max_iterations} iterations", max_iterations)


def _step(v: np.ndarray, dv: np.ndarray, cap: float = 1.0) -> float:
    """The largest ``α <= cap`` with ``v + α dv >= 0``."""
    neg = dv < 0
    if not neg.any():  # array methods: this runs four times per iteration, on small vectors
        return cap
    return min(cap, float((-v[neg] / dv[neg]).min()))


# ----------------------------------------------------------------------------- row generation


class DenseSession:
    """The interior point method with row generation for a family of LPs that differ only in the
    right-hand sides ``b_ub`` (``+inf`` switches a row off), like :class:`onnxinv.inversion.lp.LPSession`.

    ``min cᵀx`` s.t. ``A_ub x <= b_ub``, ``lower <= x <= upper``, ``A_ub`` dense. The working set of
    rows is kept from one solve to the next. An LP the interior point method does not settle is solved
    by HiGHS (:func:`onnxinv.inversion.lp.solve`, with row generation from the working set) within the
    same time limit; the message says so.
    """

    def __init__(
        self,
        c: np.ndarray,
        A_ub: np.ndarray,
        b_ub: np.ndarray,
        bounds: tuple[object, object] | None = None,
        *,
        row_generation: bool = True,
        initial_rows: np.ndarray | None = None,
        tol: float = lp.RECHECK_TOL,
    ) -> None:
        self._a = np.ascontiguousarray(A_ub, dtype=np.float64)
        b = np.asarray(b_ub, dtype=np.float64).reshape(-1)
        if self._a.ndim != 2 or b.shape != (self._a.shape[0],):
            raise ValueError(f"b_ub must have one entry per row of A_ub ({self._a.shape[0]})")
        if np.any(np.isnan(b)) or np.any(b == -np.inf):
            raise ValueError("b_ub must be finite or +inf (a row switched off)")
        base = lp.LinearProgram.build(c, np.zeros((0, self._a.shape[1])), np.zeros(0), bounds=bounds)
        if self._a.shape[1] != base.num_vars:
            raise ValueError(f"A_ub has {self._a.shape[1]} columns for {base.num_vars} variables")
        if not np.all(np.isfinite(self._a)):
            raise ValueError("A_ub must be finite")
        self._c, self._lower, self._upper = base.c, base.lower, base.upper
        self._b = b
        self._tol = tol
        self._work = np.zeros(b.size, dtype=bool)
        if not row_generation:
            self._work[:] = True
        elif initial_rows is not None:
            self._work[np.asarray(initial_rows, dtype=np.intp)] = True
        else:
            self._work[: 2 * base.num_vars + 2] = True
        self._norms: np.ndarray | None = None  # the rows' lengths, computed when first needed
        self.solves = 0
        self.rounds = 0  # interior point solves of the last solve (a scouting solve included)
        self.last: IPMOutcome | None = None  # the last interior point outcome (None: HiGHS answered)

    @property
    def num_vars(self) -> int:
        return int(self._c.size)

    def set_rhs(self, b_ub: np.ndarray) -> None:
        """New right-hand sides (``+inf``: the row is off)."""
        b = np.asarray(b_ub, dtype=np.float64).reshape(-1)
        if b.shape != self._b.shape or np.any(np.isnan(b)) or np.any(b == -np.inf):
            raise ValueError(f"b_ub must have {self._b.size} entries, each finite or +inf")
        self._b = b

    def problem(self) -> lp.LinearProgram:
        """The current LP with the switched-off rows left out."""
        on = np.isfinite(self._b)
        return lp.LinearProgram.build(self._c, self._a[on], self._b[on], bounds=(self._lower, self._upper))

    def solve(self, time_limit: float | None = None, threshold: float | None = None) -> lp.LPResult:
        """Solve the current LP: the interior point method with row generation, HiGHS if it fails.

        ``threshold``: a value the caller compares the optimum with. An interior point optimum whose
        objective is within ``DECIDE_BAND`` times the method's accuracy of it (``max(|primal - dual|,
        IPM_TOL |primal|)`` plus the largest violation of a row) is solved again by HiGHS, so the
        comparison never rests on the last digits of an interior point iterate.
        """
        start = time.perf_counter()
        deadline = None if time_limit is None else start + max(float(time_limit), 0.0)
        self.solves += 1
        self.last = None
        on = np.isfinite(self._b)
        work = self._work & on
        if not work.any():
            work = on.copy()
        iterations, self.rounds = 0, 0
        failure = ""
        if np.any(on & ~work):
            # a scouting solve of the working rows to SCOUT_TOL: the rows most violated at its point
            # are a far better guess of the binding rows than the caller's (a whole solve per round
            # of row generation is the cost, and interior point methods do not warm-start well)
            out = interior_point(
                self._c,
                self._a[work],
                self._b[work],
                self._lower,
                self._upper,
                tol=SCOUT_TOL,
                target=SCOUT_TOL,
                deadline=deadline,
            )
            iterations += out.iterations
            self.rounds += 1
            if out.time_limit:
                return self._result(SolverStatus.TIME_LIMIT, None, iterations, start, "time limit")
            if out.converged:
                work = self._scouted(out, work, on)
        while True:
            self.rounds += 1
            rows = np.flatnonzero(work)
            out = interior_point(
                self._c, self._a[rows], self._b[rows], self._lower, self._upper, deadline=deadline
            )
            iterations += out.iterations
            if out.time_limit:
                return self._result(SolverStatus.TIME_LIMIT, None, iterations, start, "time limit")
            if not out.converged:
                if not work[on].all():
                    # a working set can make a degenerate LP the full one is not (measured: the end
                    # game stalling at 1e-7 on 800 of 2048 rows, converging on all of them): once more
                    # on all rows before HiGHS
                    failure = out.message
                    work = on.copy()
                    continue
                failure = f"{failure}; on all rows: {out.message}" if failure else out.message
                break
            missing = np.flatnonzero(on & ~work)
            if missing.size:
                viol = (self._a @ out.x)[missing] - self._b[missing]  # cheaper than slicing the rows
                hit = viol > self._tol * 1e-3 * (1.0 + np.abs(self._b[missing]))
                if hit.any():
                    batch = max(ROUND_ROWS_MINIMUM, self.num_vars // 2)
                    order = np.argsort(-viol[hit])[:batch]
                    work[missing[hit][order]] = True
                    continue
            result = self._result(SolverStatus.OPTIMAL, out.x, iterations, start, "", out)
            if result.ok:
                self._work = work
                # the gap, and the largest violation of a row (which, in the l_inf LP, where δ enters
                # every row with coefficient -1, moves the optimum by as much)
                worst = float(np.max((self._a @ out.x)[on] - self._b[on], initial=0.0))
                accuracy = max(abs(out.primal - out.dual), IPM_TOL * abs(out.primal)) + max(worst, 0.0)
                if threshold is None or abs(result.objective - threshold) > DECIDE_BAND * accuracy:
                    self.last = out
                    return result
                failure = (
                    f"ended at {result.objective:.10g}, within its accuracy ({accuracy:.2g}) of the "
                    f"threshold {threshold:.10g}"
                )
                break
            failure = result.message
            break
        # not settled by the interior point method: HiGHS on the current LP, warm from the working rows
        self._work |= work
        left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
        problem = self.problem()
        initial = np.flatnonzero(work[on])
        fresh = lp.solve(problem, time_limit=left, tol=self._tol, row_generation=True, initial_rows=initial)
        return dataclasses.replace(
            fresh,
            iterations=fresh.iterations + iterations,
            seconds=time.perf_counter() - start,
            message=f"{fresh.message} (by HiGHS: the interior point method {failure})",
        )

    def _scouted(self, out: IPMOutcome, work: np.ndarray, on: np.ndarray) -> np.ndarray:
        """The working rows after a scouting solve: the ``SCOUT_KEEP · n`` rows (at most as many as
        before) most violated at its point (violation over the row's length), with every row it
        violates and every row it found binding (a dual above ``1e-3`` of the largest)."""
        rows = np.flatnonzero(work)
        candidates = np.flatnonzero(on)
        if self._norms is None:
            self._norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", self._a, self._a)), 1e-300)
        viol = ((self._a @ out.x) - np.where(on, self._b, 0.0))[candidates] / self._norms[candidates]
        keep = np.zeros_like(work)
        count = min(rows.size, int(np.ceil(SCOUT_KEEP * self.num_vars)))
        keep[candidates[np.argsort(-viol)[:count]]] = True
        keep[candidates[viol > 0]] = True
        if out.z.size and np.max(out.z) > 0:
            keep[rows[out.z >= 1e-3 * np.max(out.z)]] = True
        return keep

    def _result(
        self,
        status: SolverStatus,
        x: np.ndarray | None,
        iterations: int,
        start: float,
        text: str,
        out: IPMOutcome | None = None,
    ) -> lp.LPResult:
        on = np.isfinite(self._b)
        # the re-check needs only products A x: the dense rows as they are (problem() converts them to
        # CSR for HiGHS, a third of a second for a 6000 x 1000 layer LP)
        dense = typing.cast(sp.csr_matrix, self._a[on])
        problem = lp.LinearProgram(
            self._c,
            dense,
            self._b[on],
            sp.csr_matrix((0, self.num_vars)),
            np.zeros(0),
            self._lower,
            self._upper,
        )
        status, viol, message = problem.recheck(x, status, self._tol)
        objective = float(self._c @ x) if x is not None and status is SolverStatus.OPTIMAL else float("nan")
        if not message:
            message = "optimal (interior point method)" if status is SolverStatus.OPTIMAL else text
        return lp.LPResult(
            status=status,
            x=x,
            objective=objective,
            violation=viol,
            iterations=iterations,
            seconds=time.perf_counter() - start,
            message=message,
            highs_status="",
        )


def solve_dense(
    c: np.ndarray,
    A_ub: np.ndarray,
    b_ub: np.ndarray,
    bounds: tuple[object, object] | None = None,
    *,
    time_limit: float | None = None,
    row_generation: bool = True,
    initial_rows: np.ndarray | None = None,
    tol: float = lp.RECHECK_TOL,
) -> lp.LPResult:
    """``min cᵀx`` s.t. ``A_ub x <= b_ub``, bounds (free by default), by the interior point method with
    row generation (HiGHS when it does not converge); see :class:`DenseSession`."""
    session = DenseSession(
        c, A_ub, b_ub, bounds, row_generation=row_generation, initial_rows=initial_rows, tol=tol
    )
    return session.solve(time_limit=time_limit)
