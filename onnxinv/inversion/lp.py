"""Linear programs through HiGHS: the only module in onnxinv that imports ``highspy``.

A problem goes in as arrays, a :class:`LPResult` with onnxinv's own :class:`SolverStatus` comes out.

Problem
-------
.. math::

    \\min_x\\; c^\\top x \\quad \\text{s.t.}\\quad A_{ub} x \\le b_{ub},\\quad A_{eq} x = b_{eq},\\quad
    l \\le x \\le u

``bounds`` is ``None`` (every variable free: **unlike** ``scipy.optimize.linprog``, whose default is
``x >= 0``), a pair of scalars, or a pair of arrays; use ``±inf`` for a missing side.

Notes
-----
* Every HiGHS model status maps to a :class:`SolverStatus` (``_STATUS_MAP``); a status HiGHS adds
  later maps to ``UNKNOWN``. HiGHS's "infeasible or unbounded" is settled by re-solving once from
  scratch with primal simplex.
* After an "optimal" solve the solution is re-checked in numpy (:meth:`LinearProgram.violation`,
  scaled by ``1 + |rhs|``); beyond ``tol`` the status is downgraded to ``NUMERICAL``. Only
  ``OPTIMAL`` is success.
* An unconverged end (``UNKNOWN``, ``NUMERICAL``, or the iteration cap when the caller set no limit)
  is not final: the full problem is solved again from scratch with primal simplex, then with the
  interior point method (``RETRY_STRATEGIES``), within the same time limit. The message says so.
  Without a caller's limit, simplex runs are capped at ``max(STALL_MINIMUM, STALL_FACTOR·(variables
  + rows))`` iterations: HiGHS's dual simplex can cycle on degenerate LPs (e.g. the smallest widening
  of a layer LP, :func:`onnxinv.inversion.linear.min_widening`), and the cap turns that into a retry
  instead of a wait for the time limit.
* HiGHS runs with one thread, no output and no presolve (it finds nothing to remove in dense layer
  LPs and costs time). ``time_limit`` bounds the wall time of the whole call. Models go to HiGHS as
  numpy arrays (rows' bounds, then the columns in CSC form), one copy each.
* Large wide LPs (``IPM_NONZEROS`` nonzeros and ``IPM_COLUMNS`` variables, :func:`by_size`) are
  solved cold by the interior point method with crossover, others by dual simplex, unless the
  caller names an algorithm; later rounds (row generation, warm re-solves) use the simplex.
* :class:`LPSession` keeps one HiGHS model for a family of LPs that differ only in right-hand
  sides, the objective or variable bounds, and re-solves warm from the last basis.
* ``row_generation=True`` solves with a working subset of the ``A_ub`` rows, adds the rows the
  current solution violates (checked in numpy) and re-solves from the previous basis until none is
  violated. The answer is that of the full problem: the subset problem is a relaxation, so its
  optimum is optimal for the full problem once it satisfies every row. It pays off when few of many
  inequality rows bind at the optimum, as in the l_inf fits of Algorithm 1 of [1]_. A warm re-solve
  that stalls (degenerate optimum; more than ``5 (variables + rows)`` iterations) is abandoned for
  one cold solve of the full problem.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from onnxinv.errors import SolverError
from onnxinv.inversion.result import SolverStatus

_MS = highspy.HighsModelStatus
_INF = float(highspy.kHighsInf)

_STATUS_MAP: dict[object, SolverStatus] = {
    _MS.kNotset: SolverStatus.UNKNOWN,
    _MS.kLoadError: SolverStatus.UNKNOWN,
    _MS.kModelError: SolverStatus.UNKNOWN,
    _MS.kPresolveError: SolverStatus.NUMERICAL,
    _MS.kSolveError: SolverStatus.NUMERICAL,
    _MS.kPostsolveError: SolverStatus.NUMERICAL,
    _MS.kModelEmpty: SolverStatus.OPTIMAL,  # nothing to solve; the numpy re-check decides
    _MS.kOptimal: SolverStatus.OPTIMAL,
    _MS.kInfeasible: SolverStatus.INFEASIBLE,
    _MS.kUnboundedOrInfeasible: SolverStatus.INFEASIBLE_OR_UNBOUNDED,
    _MS.kUnbounded: SolverStatus.UNBOUNDED,
    _MS.kObjectiveBound: SolverStatus.UNKNOWN,
    _MS.kObjectiveTarget: SolverStatus.UNKNOWN,
    _MS.kTimeLimit: SolverStatus.TIME_LIMIT,
    _MS.kIterationLimit: SolverStatus.ITERATION_LIMIT,
    _MS.kUnknown: SolverStatus.UNKNOWN,
    _MS.kSolutionLimit: SolverStatus.UNKNOWN,
    _MS.kInterrupt: SolverStatus.UNKNOWN,
    _MS.kMemoryLimit: SolverStatus.UNKNOWN,
}
# Members added by newer HiGHS releases (kHighsInterrupt, ...) fall through to UNKNOWN.

RECHECK_TOL = 1e-6
# Simplex iteration cap when the caller gives none: max(STALL_MINIMUM, STALL_FACTOR * (variables + rows)).
STALL_FACTOR = 20
STALL_MINIMUM = 10_000
# Algorithms tried, in order, after an unconverged end (see solve()).
RETRY_STRATEGIES = ("primal simplex", "interior point")
_UNCONVERGED = (SolverStatus.UNKNOWN, SolverStatus.NUMERICAL)


def reset_after_fork() -> None:
    """Give a forked worker process a fresh HiGHS task scheduler (the parent's threads do not exist there)."""
    highspy.Highs.resetGlobalScheduler(True)


def status_table() -> dict[str, SolverStatus]:
    """onnxinv's status for every model status this HiGHS build defines, by HiGHS's name."""
    return {name: map_status(member) for name, member in _MS.__members__.items()}


def map_status(model_status: object) -> SolverStatus:
    """onnxinv's status for a ``highspy.HighsModelStatus`` (``UNKNOWN`` for anything unmapped)."""
    return _STATUS_MAP.get(model_status, SolverStatus.UNKNOWN)


@dataclass(frozen=True, eq=False)
class LinearProgram:
    """``min cᵀx`` s.t. ``A_ub x <= b_ub``, ``A_eq x = b_eq``, ``lower <= x <= upper`` (validated, float64)."""

    c: np.ndarray
    a_ub: sp.csr_matrix
    b_ub: np.ndarray
    a_eq: sp.csr_matrix
    b_eq: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @property
    def num_vars(self) -> int:
        return self.c.shape[0]

    @classmethod
    def build(
        cls,
        c: np.ndarray,
        A_ub: np.ndarray | sp.spmatrix | sp.sparray | None = None,
        b_ub: np.ndarray | None = None,
        A_eq: np.ndarray | sp.spmatrix | sp.sparray | None = None,
        b_eq: np.ndarray | None = None,
        bounds: tuple[object, object] | None = None,
    ) -> LinearProgram:
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        n = c.shape[0]
        a_ub, b_ub = _rows(A_ub, b_ub, n, "A_ub", "b_ub")
        a_eq, b_eq = _rows(A_eq, b_eq, n, "A_eq", "b_eq")
        if bounds is None:
            lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        else:
            lo, hi = bounds
            lower = np.broadcast_to(np.asarray(-np.inf if lo is None else lo, dtype=np.float64), (n,)).copy()
            upper = np.broadcast_to(np.asarray(np.inf if hi is None else hi, dtype=np.float64), (n,)).copy()
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(b_ub)) and np.all(np.isfinite(b_eq))):
            raise ValueError("LP data must be finite (c, b_ub, b_eq)")
        if np.any(np.isnan(lower)) or np.any(np.isnan(upper)):
            raise ValueError("LP bounds must not be NaN")
        return cls(c, a_ub, b_ub, a_eq, b_eq, lower, upper)

    def violation(self, x: np.ndarray) -> float:
        """Largest constraint violation of ``x``, each scaled by ``1 + |right-hand side|``."""
        x = np.asarray(x, dtype=np.float64)
        worst = 0.0
        if x.shape != (self.num_vars,) or not np.all(np.isfinite(x)):
            return float("inf")
        if self.b_ub.size:
            worst = max(worst, float(np.max((self.a_ub @ x - self.b_ub) / (1.0 + np.abs(self.b_ub)))))
        if self.b_eq.size:
            worst = max(worst, float(np.max(np.abs(self.a_eq @ x - self.b_eq) / (1.0 + np.abs(self.b_eq)))))
        with np.errstate(invalid="ignore"):
            lo = np.where(np.isfinite(self.lower), (self.lower - x) / (1.0 + np.abs(self.lower)), 0.0)
            hi = np.where(np.isfinite(self.upper), (x - self.upper) / (1.0 + np.abs(self.upper)), 0.0)
        if x.size:
            worst = max(worst, float(np.max(lo)), float(np.max(hi)))
        return max(worst, 0.0)

    def recheck(
        self, x: np.ndarray | None, status: SolverStatus, tol: float = RECHECK_TOL
    ) -> tuple[SolverStatus, float, str]:
        """Re-check a reported solution in numpy: an ``OPTIMAL`` ``x`` violating a constraint by more
        than ``tol`` (scaled) becomes ``NUMERICAL``. Returns (status, violation, message)."""
        if status is not SolverStatus.OPTIMAL:
            return status, float("nan"), ""
        if x is None:
            return SolverStatus.NUMERICAL, float("inf"), "the solver reported optimal but gave no solution"
        viol = self.violation(x)
        if viol > tol:
            return (
                SolverStatus.NUMERICAL,
                viol,
                f"the solver reported optimal but its solution violates a constraint by {viol:.3g} "
                f"(scaled; tolerance {tol:.1g}), so it is not accepted",
            )
        return status, viol, ""


@dataclass(frozen=True, eq=False)
class LPResult:
    """Outcome of :func:`solve_lp`. ``x`` is None when the solver produced no usable point."""

    status: SolverStatus
    x: np.ndarray | None
    objective: float
    violation: float
    iterations: int
    seconds: float
    message: str
    highs_status: str

    @property
    def ok(self) -> bool:
        return self.status is SolverStatus.OPTIMAL


def solve_lp(
    c: np.ndarray,
    A_ub: np.ndarray | sp.spmatrix | sp.sparray | None = None,
    b_ub: np.ndarray | None = None,
    A_eq: np.ndarray | sp.spmatrix | sp.sparray | None = None,
    b_eq: np.ndarray | None = None,
    bounds: tuple[object, object] | None = None,
    *,
    time_limit: float | None = None,
    iteration_limit: int | None = None,
    row_generation: bool = False,
    initial_rows: np.ndarray | None = None,
    tol: float = RECHECK_TOL,
    algorithm: str | None = None,
) -> LPResult:
    """Solve ``min cᵀx`` s.t. ``A_ub x <= b_ub``, ``A_eq x = b_eq``, bounds (free by default).

    Parameters
    ----------
    c, A_ub, b_ub, A_eq, b_eq : objective and constraints; matrices dense or scipy.sparse
    bounds : None (all free), ``(lo, hi)`` scalars or arrays, ``±inf`` (or None) for no bound
    time_limit : seconds for the whole call (None: no limit)
    iteration_limit : HiGHS simplex iteration limit per solve (None: HiGHS's default)
    row_generation : solve with a working set of ``A_ub`` rows grown on demand (see module Notes)
    initial_rows : indices of the first working set (default: the first ``2 n + 2`` rows)
    tol : tolerance of the numpy re-check of an optimal solution
    algorithm : None (HiGHS's default, dual simplex), ``"primal simplex"`` or ``"interior point"`` for
        the first solve; the others are the retries after an unconverged end

    Returns
    -------
    LPResult
        ``status`` is OPTIMAL only if HiGHS reported optimal and the re-check passed.

    Raises
    ------
    SolverError
        HiGHS refused the model or could not run at all.
    ValueError
        Inconsistent shapes or non-finite data.
    """
    problem = LinearProgram.build(c, A_ub, b_ub, A_eq, b_eq, bounds)
    return solve(
        problem,
        time_limit=time_limit,
        iteration_limit=iteration_limit,
        row_generation=row_generation,
        initial_rows=initial_rows,
        tol=tol,
        algorithm=algorithm,
    )


def solve(
    problem: LinearProgram,
    *,
    time_limit: float | None = None,
    iteration_limit: int | None = None,
    row_generation: bool = False,
    initial_rows: np.ndarray | None = None,
    tol: float = RECHECK_TOL,
    algorithm: str | None = None,
) -> LPResult:
    """:func:`solve_lp` for an already built :class:`LinearProgram`.

    An unconverged end (``UNKNOWN`` or ``NUMERICAL``, including an optimum that fails the numpy
    re-check) is retried from scratch on the full problem, first with primal simplex, then with the
    interior point method; the first converged answer is returned, else the last one.
    """
    start = time.perf_counter()
    deadline = None if time_limit is None else start + max(float(time_limit), 0.0)
    if algorithm is not None and algorithm not in RETRY_STRATEGIES:
        raise ValueError(f"unknown LP algorithm {algorithm!r}; choose one of {', '.join(RETRY_STRATEGIES)}")
    result = _solve_once(problem, deadline, iteration_limit, row_generation, initial_rows, tol, algorithm)
    unconverged = (
        _UNCONVERGED if iteration_limit is not None else (*_UNCONVERGED, SolverStatus.ITERATION_LIMIT)
    )
    notes = []
    for strategy in (alt for alt in RETRY_STRATEGIES if alt != algorithm):
        if result.status not in unconverged:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        notes.append(f"'{result.status.value}' ({result.message}), retried from scratch with {strategy}")
        result = _solve_once(problem, deadline, iteration_limit, False, None, tol, strategy)
    if notes:
        result = dataclasses.replace(
            result,
            seconds=time.perf_counter() - start,
            message=f"{result.message}; earlier: {'; '.join(notes)}",
        )
    return result


# ----------------------------------------------------------------------------- LP sessions


class LPSession:
    """One HiGHS model kept across solves that change only the right-hand sides of the inequality
    rows, the objective or the variable bounds: each solve after the first starts from the previous
    basis (a warm dual / primal simplex), instead of building and solving a new LP.

    ``min cᵀx`` s.t. ``A_ub x <= b_ub``, ``lower <= x <= upper``. A right-hand side of ``+inf``
    switches its row off (it is then left out of the problem, as if absent), so a family of LPs that
    differ by which rows take part shares one session. ``row_generation`` works as in
    :func:`solve_lp` (a working set of rows, grown by the rows the solution violates, checked in
    numpy); the working set is kept from one solve to the next.

    Every answer is re-checked in numpy like :func:`solve`'s. An end that is not final (unconverged,
    a stalled warm start, infeasible-or-unbounded) is settled by :func:`solve` on the current problem
    from scratch, with its retries. Used for the ε steps of Algorithm 1 (row bounds change), the
    per-coordinate bounds of a stability radius (the objective changes) and the l_1 LP's dual.
    """

    def __init__(
        self,
        c: np.ndarray,
        A_ub: np.ndarray | sp.spmatrix | sp.sparray,
        b_ub: np.ndarray,
        bounds: tuple[object, object] | None = None,
        *,
        row_generation: bool = False,
        initial_rows: np.ndarray | None = None,
        tol: float = RECHECK_TOL,
        algorithm: str | None = None,
        b_lb: np.ndarray | None = None,
    ) -> None:
        if algorithm is not None and algorithm not in RETRY_STRATEGIES:
            raise ValueError(
                f"unknown LP algorithm {algorithm!r}; choose one of {', '.join(RETRY_STRATEGIES)}"
            )
        b = np.asarray(b_ub, dtype=np.float64).reshape(-1)
        if np.any(np.isnan(b)) or np.any(b == -np.inf):
            raise ValueError("b_ub must be finite or +inf (a row switched off)")
        finite = np.where(np.isfinite(b), b, 0.0)
        base = LinearProgram.build(c, A_ub, finite, bounds=bounds)
        self._a = base.a_ub
        self._c, self._lower, self._upper = base.c, base.lower, base.upper
        self._b = b
        self._lb = (
            np.full(b.size, -np.inf) if b_lb is None else np.asarray(b_lb, dtype=np.float64).reshape(-1)
        )
        if self._lb.shape != b.shape or np.any(np.isnan(self._lb)) or np.any(self._lb == np.inf):
            raise ValueError(f"b_lb must have {b.size} entries, each finite or -inf")
        if row_generation and np.any(np.isfinite(self._lb)):
            raise ValueError("row generation works with upper row bounds only")
        self.row_dual: np.ndarray | None = None  # HiGHS's row duals of the last optimum (None: none)
        self._sliced: tuple[tuple[bytes, bytes], sp.csr_matrix] | None = None
        self._cold: str | None = None  # the algorithm of the model's first solve
        self._tol = tol
        self._algorithm = algorithm
        self._row_generation = row_generation
        self._initial = None if initial_rows is None else np.asarray(initial_rows, dtype=np.intp)
        self._highs: highspy.Highs | None = None
        self._order = np.zeros(0, dtype=np.intp)  # original row of each HiGHS row
        self._work = np.zeros(b.size, dtype=bool)
        self.solves = 0

    @property
    def num_vars(self) -> int:
        return int(self._c.shape[0])

    def problem(self) -> LinearProgram:
        """The current LP, with the rows that are switched off left out (a row's lower bound as a
        second, negated row)."""
        on = np.isfinite(self._b)
        low = np.isfinite(self._lb)
        key = (on.tobytes(), low.tobytes())
        if self._sliced is None or self._sliced[0] != key:
            a = self._a if on.all() else self._a[on]
            if low.any():
                a = _stack_rows(a, _as_csr(-self._a[low]))
            self._sliced = (key, a)  # the rows taking part change rarely; slicing is the cost
        a = self._sliced[1]
        b = self._b[on]
        if low.any():
            b = np.concatenate([b, -self._lb[low]])
        return LinearProgram(
            self._c,
            a,
            b,
            sp.csr_matrix((0, self.num_vars)),
            np.zeros(0),
            self._lower,
            self._upper,
        )

    def set_rhs(self, b_ub: np.ndarray) -> None:
        """New right-hand sides (``+inf``: the row is off)."""
        b = np.asarray(b_ub, dtype=np.float64).reshape(-1)
        if b.shape != self._b.shape or np.any(np.isnan(b)) or np.any(b == -np.inf):
            raise ValueError(f"b_ub must have {self._b.size} entries, each finite or +inf")
        if self._highs is not None and self._order.size:
            changed = np.flatnonzero(b[self._order] != self._b[self._order])
            if changed.size:
                self._highs.changeRowsBounds(  # type: ignore[attr-defined]
                    int(changed.size),
                    changed.astype(np.int32),
                    _to_highs_inf(self._lb[self._order[changed]]),
                    _to_highs_inf(b[self._order[changed]]),
                )
        self._b = b

    def set_objective(self, c: np.ndarray) -> None:
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if c.shape != self._c.shape or not np.all(np.isfinite(c)):
            raise ValueError(f"c must have {self._c.size} finite entries")
        if self._highs is not None:
            idx = np.flatnonzero(c != self._c)
            if idx.size:
                self._highs.changeColsCost(int(idx.size), idx.astype(np.int32), c[idx])
        self._c = c

    def set_bounds(self, lower: np.ndarray, upper: np.ndarray) -> None:
        lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), self._c.shape).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), self._c.shape).copy()
        if np.any(np.isnan(lower)) or np.any(np.isnan(upper)):
            raise ValueError("LP bounds must not be NaN")
        if self._highs is not None:
            idx = np.flatnonzero((lower != self._lower) | (upper != self._upper))
            if idx.size:
                self._highs.changeColsBounds(
                    int(idx.size), idx.astype(np.int32), _to_highs_inf(lower[idx]), _to_highs_inf(upper[idx])
                )
        self._lower, self._upper = lower, upper

    def solve(self, time_limit: float | None = None) -> LPResult:
        """Solve the current LP (warm from the previous basis when there is one)."""
        start = time.perf_counter()
        deadline = None if time_limit is None else start + max(float(time_limit), 0.0)
        self.solves += 1
        self.row_dual = None
        on = np.isfinite(self._b) | np.isfinite(self._lb)
        n_on = int(on.sum())
        cap = max(STALL_MINIMUM, STALL_FACTOR * (self.num_vars + n_on))
        warm = self._highs is not None
        if self._highs is None:
            self._build(on, cap)
        highs = self._highs
        assert highs is not None
        iterations = 0
        rounds = 0
        while True:
            rounds += 1
            if deadline is not None:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return self._result(
                        SolverStatus.TIME_LIMIT, None, float("nan"), iterations, start, "time limit"
                    )
                highs.setOptionValue("time_limit", float(highs.getRunTime()) + remaining)
            if warm or rounds > 1:
                # a warm re-solve that stalls (degenerate optimum) is abandoned for a cold solve
                limit = max(1000, 5 * (self.num_vars + int(self._order.size)))
                highs.setOptionValue("simplex_iteration_limit", min(limit, cap))
            highs.run()
            if self._cold == "interior point":
                # the interior point method (with crossover) for the cold solve only: every later
                # solve of the session starts from its basis with the simplex method
                highs.setOptionValue("solver", "simplex")
                self._cold = None
            model_status = highs.getModelStatus()
            info = highs.getInfo()
            iterations += int(info.simplex_iteration_count) + int(info.ipm_iteration_count)
            if model_status in (_MS.kModelError, _MS.kLoadError):
                raise SolverError(
                    f"HiGHS could not take the LP ({self.num_vars} variables, {n_on} inequality rows): "
                    f"{highs.modelStatusToString(model_status)}. This is a bug in onnxinv's LP assembly; "
                    "please report it with the model."
                )
            status = map_status(model_status)
            text = highs.modelStatusToString(model_status)
            missing = np.flatnonzero(on & ~self._work)
            if status in (SolverStatus.UNBOUNDED, SolverStatus.INFEASIBLE_OR_UNBOUNDED) and missing.size:
                # a relaxation may be unbounded where the full problem is not
                self._add(missing)
                continue
            x = None
            if status is SolverStatus.OPTIMAL:
                sol = highs.getSolution()
                if sol.value_valid:
                    x = np.asarray(sol.col_value, dtype=np.float64)
            if status is SolverStatus.OPTIMAL and x is not None and missing.size:
                viol = self._a[missing] @ x - self._b[missing]
                bad = missing[viol > 1e-9 * (1.0 + np.abs(self._b[missing]))]
                if bad.size:
                    batch = max(10, self.num_vars // 2)
                    order = np.argsort(-(self._a[bad] @ x - self._b[bad]))[:batch]
                    self._add(bad[order])
                    continue
            if (
                status is SolverStatus.OPTIMAL
                or status is SolverStatus.INFEASIBLE
                or status is SolverStatus.UNBOUNDED
            ):
                if status is SolverStatus.INFEASIBLE and missing.size:
                    pass  # a relaxation that is infeasible proves the full problem infeasible
                objective = (
                    float(info.objective_function_value) if status is SolverStatus.OPTIMAL else float("nan")
                )
                result = self._result(status, x, objective, iterations, start, text)
                if result.status is SolverStatus.OPTIMAL or status is not SolverStatus.OPTIMAL:
                    if result.status is SolverStatus.OPTIMAL:
                        dual = np.full(self._b.size, np.nan)
                        dual[self._order] = np.asarray(highs.getSolution().row_dual, dtype=np.float64)
                        self.row_dual = dual
                    return result
            # not final (unconverged, stalled warm start, infeasible-or-unbounded, or an optimum that
            # fails the re-check): the current problem from scratch, with solve()'s retries
            self._highs = None
            self._order = np.zeros(0, dtype=np.intp)
            self._work[:] = False
            left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
            fresh = solve(self.problem(), time_limit=left, tol=self._tol, algorithm=self._algorithm)
            return dataclasses.replace(
                fresh, iterations=fresh.iterations + iterations, seconds=time.perf_counter() - start
            )

    def _build(self, on: np.ndarray, cap: int) -> None:
        work = on.copy()
        if self._row_generation and on.any():
            first = self._initial
            if first is None:
                first = np.flatnonzero(on)[: 2 * self.num_vars + 2]
            work = np.zeros_like(on)
            work[first] = True
            work &= on
        rows = np.flatnonzero(work)
        self._cold = (
            self._algorithm if self._algorithm is not None else by_size(int(self._a[rows].nnz), self.num_vars)
        )
        highs = _new_highs(cap, self._cold)
        _pass_arrays(
            highs,
            self.num_vars,
            self._a[rows],
            self._c,
            self._lower,
            self._upper,
            self._lb[rows],
            self._b[rows],
        )
        self._highs, self._order, self._work = highs, rows, work

    def _add(self, rows: np.ndarray) -> None:
        assert self._highs is not None
        block = self._a[rows]
        self._highs.addRows(
            int(rows.size),
            np.full(rows.size, -_INF),
            _to_highs_inf(self._b[rows]),
            int(block.nnz),
            block.indptr[:-1].astype(np.int32),
            block.indices.astype(np.int32),
            block.data.astype(np.float64),
        )
        self._order = np.concatenate([self._order, rows])
        self._work[rows] = True

    def _result(
        self,
        status: SolverStatus,
        x: np.ndarray | None,
        objective: float,
        iterations: int,
        start: float,
        text: str,
    ) -> LPResult:
        return _finish(self.problem(), status, x, objective, iterations, start, text, self._tol)


def _solve_once(
    problem: LinearProgram,
    deadline: float | None,
    iteration_limit: int | None,
    row_generation: bool,
    initial_rows: np.ndarray | None,
    tol: float,
    strategy: str | None,
) -> LPResult:
    """One solve (with row generation if asked); ``strategy`` None (HiGHS's default), ``"primal
    simplex"`` or ``"interior point"``."""
    start = time.perf_counter()
    n_ub = problem.b_ub.shape[0]
    if row_generation and n_ub > 0:
        if initial_rows is None:
            initial_rows = np.arange(min(n_ub, 2 * problem.num_vars + 2))
        work = np.zeros(n_ub, dtype=bool)
        work[np.asarray(initial_rows, dtype=np.intp)] = True
    else:
        work = np.ones(n_ub, dtype=bool)

    cap = iteration_limit if iteration_limit is not None else _default_cap(problem)
    nonzeros = int(problem.a_ub[work].nnz) + int(problem.a_eq.nnz) if not work.all() else _nonzeros(problem)
    first = strategy if strategy is not None else by_size(nonzeros, problem.num_vars)
    highs = _new_highs(cap, first)
    _pass(highs, problem, work)
    iterations = 0
    retry = True
    generating = not work.all()
    rounds = 0
    while True:
        rounds += 1
        if deadline is not None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return _finish(
                    problem, SolverStatus.TIME_LIMIT, None, float("nan"), iterations, start, "time limit"
                )
            # HiGHS's time limit counts the object's total run time over all runs.
            highs.setOptionValue("time_limit", float(highs.getRunTime()) + remaining)
        run_status = highs.run()
        if first != strategy and rounds == 1:
            highs.setOptionValue("solver", "simplex")  # later rounds start from its basis
        model_status = highs.getModelStatus()
        info = highs.getInfo()
        iterations += int(info.simplex_iteration_count) + int(info.ipm_iteration_count)
        if model_status in (_MS.kModelError, _MS.kLoadError) or (
            run_status == highspy.HighsStatus.kError and model_status == _MS.kNotset
        ):
            raise SolverError(
                f"HiGHS could not take the LP ({problem.num_vars} variables, {n_ub} inequality and "
                f"{problem.b_eq.shape[0]} equality rows): {highs.modelStatusToString(model_status)}. "
                "This is a bug in onnxinv's LP assembly; please report it with the model."
            )
        status = map_status(model_status)
        text = highs.modelStatusToString(model_status)
        if status is SolverStatus.INFEASIBLE_OR_UNBOUNDED and retry:
            # Settle it with primal simplex from scratch, which tells the two apart.
            retry = False
            highs.setOptionValue("simplex_strategy", 4)
            highs.clearSolver()
            continue
        if status in (SolverStatus.UNBOUNDED, SolverStatus.INFEASIBLE_OR_UNBOUNDED) and not work.all():
            # A relaxation may be unbounded where the full problem is not: solve the full problem.
            missing = np.flatnonzero(~work)
            _add_rows(highs, problem, missing)
            work[:] = True
            continue
        x = None
        if status is SolverStatus.OPTIMAL or model_status in (_MS.kTimeLimit, _MS.kIterationLimit):
            sol = highs.getSolution()
            if sol.value_valid:
                x = np.asarray(sol.col_value, dtype=np.float64)
        if generating and iteration_limit is None and status is SolverStatus.ITERATION_LIMIT and rounds > 1:
            # A warm re-solve stalled (degenerate optimum): solve the full problem from scratch.
            highs = _new_highs(
                cap, strategy if strategy is not None else by_size(_nonzeros(problem), problem.num_vars)
            )
            work[:] = True
            _pass(highs, problem, work)
            generating = False
            continue
        if status is SolverStatus.OPTIMAL and x is not None and not work.all():
            viol = problem.a_ub @ x - problem.b_ub
            bad = np.flatnonzero((viol > 1e-9 * (1.0 + np.abs(problem.b_ub))) & ~work)
            if bad.size:
                batch = max(10, problem.num_vars // 2)
                bad = bad[np.argsort(-viol[bad])[:batch]]
                _add_rows(highs, problem, bad)
                work[bad] = True
                if iteration_limit is None:
                    limit = max(1000, 5 * (problem.num_vars + int(work.sum())))
                    highs.setOptionValue("simplex_iteration_limit", min(limit, cap))
                continue
        objective = float(info.objective_function_value) if status is SolverStatus.OPTIMAL else float("nan")
        return _finish(problem, status, x, objective, iterations, start, text, tol)


def _finish(
    problem: LinearProgram,
    status: SolverStatus,
    x: np.ndarray | None,
    objective: float,
    iterations: int,
    start: float,
    highs_text: str,
    tol: float = RECHECK_TOL,
) -> LPResult:
    status, viol, message = problem.recheck(x, status, tol)
    if not message:
        message = {
            SolverStatus.OPTIMAL: "optimal",
            SolverStatus.INFEASIBLE: "the LP is infeasible",
            SolverStatus.UNBOUNDED: "the LP is unbounded",
            SolverStatus.INFEASIBLE_OR_UNBOUNDED: "the LP is infeasible or unbounded",
            SolverStatus.TIME_LIMIT: "HiGHS stopped at the time limit",
            SolverStatus.ITERATION_LIMIT: "HiGHS stopped at the iteration limit",
            SolverStatus.NUMERICAL: f"HiGHS ran into numerical trouble ({highs_text})",
        }.get(status, f"HiGHS ended with status {highs_text!r}")
    return LPResult(
        status=status,
        x=x,
        objective=objective,
        violation=viol,
        iterations=iterations,
        seconds=time.perf_counter() - start,
        message=message,
        highs_status=highs_text,
    )


# LPs with at least IPM_NONZEROS nonzeros and IPM_COLUMNS variables are solved cold by the interior
# point method (with crossover): on wide dense layer LPs HiGHS's simplex needs about one iteration per
# column at a cost that grows with the whole matrix (measured on 2 cores: the 4096 x 1025 l_inf LP of
# 128-1024-4096, 146-203 s by dual simplex, 48-75 s by IPM). Narrow ones stay with the simplex (the
# 8192 x 129 whole-network l_inf LP of the same net: 21 s by simplex, 34 s by IPM), and so do small
# ones (20-250-600's l_inf LP with row generation: 0.38 s against 0.56 s).
IPM_NONZEROS = 1_000_000
IPM_COLUMNS = 500


def by_size(nonzeros: int, columns: int) -> str | None:
    """The algorithm of a cold solve when the caller named none: ``"interior point"`` for LPs with at
    least ``IPM_NONZEROS`` nonzeros and ``IPM_COLUMNS`` variables, else None (HiGHS's dual simplex)."""
    return "interior point" if nonzeros >= IPM_NONZEROS and columns >= IPM_COLUMNS else None


def _nonzeros(problem: LinearProgram) -> int:
    return int(problem.a_ub.nnz) + int(problem.a_eq.nnz)


def _default_cap(problem: LinearProgram) -> int:
    """Simplex iterations allowed when the caller sets no limit (``STALL_FACTOR`` per variable and
    row): far more than a dense layer LP needs, and a stop for a simplex that cycles on a degenerate
    problem (the other algorithms then take over, see :func:`solve`)."""
    rows = problem.b_ub.shape[0] + problem.b_eq.shape[0]
    return max(STALL_MINIMUM, STALL_FACTOR * (problem.num_vars + rows))


_BANNER = {"silenced": False}  # per process: has the first Highs() been built with stdout muted?


def _silent_first_highs() -> highspy.Highs:
    """The first ``Highs()`` of a process, built with file descriptor 1 pointed at /dev/null.

    HiGHS (1.16) prints its banner from C++ onto stdout when the first instance is constructed, before
    ``output_flag`` can be set; that would corrupt stdout documents such as ``onnxinv invert --json``.
    Later instances print nothing. Python's ``sys.stdout`` is flushed first so nothing of ours is lost.
    """
    import contextlib
    import ctypes
    import os
    import sys
    import threading

    lock = _BANNER.setdefault("lock", threading.Lock())
    with lock:
        if _BANNER["silenced"]:
            return highspy.Highs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        try:
            saved = os.dup(1)
        except OSError:  # no stdout at all: nothing to protect
            _BANNER["silenced"] = True
            return highspy.Highs()
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
            finally:
                os.close(devnull)
            highs = highspy.Highs()
            with contextlib.suppress(Exception):  # HiGHS flushes its lines; C stdio's buffer too, to be sure
                ctypes.CDLL(None).fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER["silenced"] = True
        return highs


def _new_highs(iteration_limit: int | None, strategy: str | None = None) -> highspy.Highs:
    highs = _silent_first_highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", 1)
    # The dense layer LPs solve fastest without presolve (it finds nothing to remove).
    highs.setOptionValue("presolve", "off")
    if strategy == "primal simplex":
        highs.setOptionValue("simplex_strategy", 4)
    elif strategy == "interior point":
        highs.setOptionValue("solver", "ipm")
        highs.setOptionValue("run_crossover", "on")
    if iteration_limit is not None:
        highs.setOptionValue("simplex_iteration_limit", int(iteration_limit))
        highs.setOptionValue("ipm_iteration_limit", int(iteration_limit))
    return highs


def _pass(highs: highspy.Highs, problem: LinearProgram, work: np.ndarray) -> None:
    a = problem.a_ub if work.all() else problem.a_ub[work]
    if problem.a_eq.shape[0]:
        a = _stack_rows(a, problem.a_eq)
    n = problem.num_vars
    _pass_arrays(
        highs,
        n,
        a,
        problem.c,
        problem.lower,
        problem.upper,
        np.concatenate([np.full(int(work.sum()), -_INF), problem.b_eq]),
        np.concatenate([problem.b_ub[work], problem.b_eq]),
    )


def _pass_arrays(
    highs: highspy.Highs,
    n: int,
    a: sp.csr_matrix,
    c: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    row_lower: np.ndarray,
    row_upper: np.ndarray,
) -> None:
    """Give HiGHS an LP as numpy arrays: the rows' bounds, then the columns with their entries (CSC),
    each one call that copies the arrays. (A ``HighsLp`` converts its vectors element by element,
    and adding CSR rows makes HiGHS rebuild its column-wise matrix: milliseconds for a dense layer LP.)"""
    csc = a.tocsc()
    csc.sort_indices()
    empty = np.zeros(0, dtype=np.int32)
    status = highspy.HighsStatus.kOk
    if a.shape[0]:
        status = highs.addRows(
            int(a.shape[0]),
            _to_highs_inf(np.asarray(row_lower, dtype=np.float64)),
            _to_highs_inf(np.asarray(row_upper, dtype=np.float64)),
            0,
            empty,
            empty,
            np.zeros(0),
        )
    if status != highspy.HighsStatus.kError:
        status = highs.addCols(
            n,
            np.ascontiguousarray(c, dtype=np.float64),
            _to_highs_inf(lower),
            _to_highs_inf(upper),
            int(csc.nnz),
            csc.indptr[:-1].astype(np.int32),
            csc.indices.astype(np.int32),
            csc.data.astype(np.float64),
        )
    if status == highspy.HighsStatus.kError:
        raise SolverError(
            f"HiGHS refused an LP with {n} variables and {a.shape[0]} rows; this is a bug in onnxinv's "
            "LP assembly, please report it"
        )


def _stack_rows(top: sp.csr_matrix, bottom: sp.csr_matrix) -> sp.csr_matrix:
    """``vstack([top, bottom])`` of two CSR matrices by concatenating their arrays."""
    indptr = np.concatenate([top.indptr, bottom.indptr[1:] + top.indptr[-1]])
    return sp.csr_matrix(
        (np.concatenate([top.data, bottom.data]), np.concatenate([top.indices, bottom.indices]), indptr),
        shape=(top.shape[0] + bottom.shape[0], top.shape[1]),
    )


def _add_rows(highs: highspy.Highs, problem: LinearProgram, rows: np.ndarray) -> None:
    block = problem.a_ub[rows].tocsr()
    highs.addRows(
        int(rows.size),
        np.full(rows.size, -_INF),
        problem.b_ub[rows],
        int(block.nnz),
        block.indptr[:-1].astype(np.int32),
        block.indices.astype(np.int32),
        block.data.astype(np.float64),
    )


def _to_highs_inf(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -_INF, _INF)


def _rows(
    a: np.ndarray | sp.spmatrix | sp.sparray | None, b: np.ndarray | None, n: int, a_name: str, b_name: str
) -> tuple[sp.csr_matrix, np.ndarray]:
    if a is None:
        if b is not None and np.asarray(b).size:
            raise ValueError(f"{b_name} given without {a_name}")
        return sp.csr_matrix((0, n)), np.zeros(0)
    mat = _as_csr(a)
    if mat.ndim != 2 or mat.shape[1] != n:
        raise ValueError(f"{a_name} has shape {mat.shape}; expected (rows, {n})")
    rhs = np.asarray(b, dtype=np.float64).reshape(-1) if b is not None else None
    if rhs is None or rhs.shape[0] != mat.shape[0]:
        raise ValueError(f"{b_name} must have {mat.shape[0]} entries, one per row of {a_name}")
    if mat.nnz and not np.all(np.isfinite(mat.data)):
        raise ValueError(f"{a_name} must be finite")
    return mat, rhs


def _as_csr(a: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """``sp.csr_matrix(a, dtype=float64)``; a dense 2-D array is converted in one pass (the same
    matrix: exact zeros left out, column indices sorted)."""
    if sp.issparse(a):
        return sp.csr_matrix(a, dtype=np.float64)
    dense = np.asarray(a, dtype=np.float64)
    if dense.ndim != 2:
        return sp.csr_matrix(dense)
    mask = dense != 0
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int32 if dense.size < 2**31 else np.int64)
    np.cumsum(np.count_nonzero(mask, axis=1), out=indptr[1:])
    columns = (np.flatnonzero(mask) % max(dense.shape[1], 1)).astype(indptr.dtype)
    return sp.csr_matrix((dense[mask], columns, indptr), shape=dense.shape)
