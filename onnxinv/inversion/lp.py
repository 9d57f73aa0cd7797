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
  that stalls (degenerate optimum; more than ``5 (variables + rows)`` iterations, or in a session
  more than ``max(ROUND_MINIMUM, ROUND_FACTOR k + variables)`` after adding ``k`` rows) is abandoned
  for one cold solve of the full problem. A session given a guess of the optimum (``start``) takes
  its first working set from the rows nearest to binding at the guess (and every row it violates)
  and its first basis from the guess (:func:`_crash_basis`): one run of about one iteration on the
  output layer LP of 20-100-500 where the plain start takes about 275.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
# Simplex iterations of an LPSession round after adding k violated rows: max(ROUND_MINIMUM,
# ROUND_FACTOR * k + variables); beyond, the round counts as stalled (see LPSession.solve).
ROUND_MINIMUM = 300
ROUND_FACTOR = 4
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
        return max(worst, _bound_violation(x, self.lower, self.upper))

    def recheck(
        self, x: np.ndarray | None, status: SolverStatus, tol: float = RECHECK_TOL
    ) -> tuple[SolverStatus, float, str]:
        """Re-check a reported solution in numpy: an ``OPTIMAL`` ``x`` violating a constraint by more
        than ``tol`` (scaled) becomes ``NUMERICAL``. Returns (status, violation, message)."""
        return _recheck(self.violation, x, status, tol)


def _recheck(
    violation: Callable[[np.ndarray], float], x: np.ndarray | None, status: SolverStatus, tol: float
) -> tuple[SolverStatus, float, str]:
    if status is not SolverStatus.OPTIMAL:
        return status, float("nan"), ""
    if x is None:
        return SolverStatus.NUMERICAL, float("inf"), "the solver reported optimal but gave no solution"
    viol = violation(x)
    if viol > tol:
        return (
            SolverStatus.NUMERICAL,
            viol,
            f"the solver reported optimal but its solution violates a constraint by {viol:.3g} "
            f"(scaled; tolerance {tol:.1g}), so it is not accepted",
        )
    return status, viol, ""


def _bound_violation(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Largest violation of ``lower <= x <= upper``, each scaled by ``1 + |bound|`` (0 when none)."""
    if not x.size:
        return 0.0
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(lower), (lower - x) / (1.0 + np.abs(lower)), 0.0)
        hi = np.where(np.isfinite(upper), (x - upper) / (1.0 + np.abs(upper)), 0.0)
    return max(float(np.max(lo)), float(np.max(hi)), 0.0)


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
    numpy); the working set is kept from one solve to the next. ``start``, a guess of the optimum
    (e.g. a rough interior point iterate), gives the first dual simplex solve its starting basis
    (:func:`_crash_basis`) instead of the slack basis and, with row generation, its first working set
    (the rows near binding at the guess, instead of ``initial_rows``); it changes the path to the
    optimum only.
    ``basis`` gives that first basis directly, as codes per column and per row (``-1`` / ``0`` /
    ``1``: nonbasic at the lower bound, basic, nonbasic at the upper bound; without row generation).

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
        start: np.ndarray | None = None,
        basis: tuple[np.ndarray, np.ndarray] | None = None,
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
        self._start = None if start is None else np.asarray(start, dtype=np.float64).reshape(-1)
        if self._start is not None and self._start.shape != self._c.shape:
            raise ValueError(f"start must have {self._c.size} entries, one per variable")
        self._basis = None
        if basis is not None:
            cols, rows = (np.asarray(v, dtype=np.int8).reshape(-1) for v in basis)
            if cols.shape != self._c.shape or rows.shape != b.shape:
                raise ValueError(f"basis must give {self._c.size} column and {b.size} row statuses")
            self._basis = (cols, rows)
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
        added = 0  # rows added before this round
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
                if rounds > 1:
                    # after adding k violated rows the dual simplex needs about k pivots; on degenerate
                    # layer LPs it can instead stall for thousands (measured: 2500+ where the cold
                    # solve of all rows takes 650), so the cold solve takes over much sooner
                    limit = max(ROUND_MINIMUM, ROUND_FACTOR * added + self.num_vars)
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
                # one product with all rows: cheaper than slicing the CSR matrix to the missing ones
                viol = (self._a @ x)[missing] - self._b[missing]
                hit = viol > 1e-9 * (1.0 + np.abs(self._b[missing]))
                bad = missing[hit]
                if bad.size:
                    batch = max(10, self.num_vars // 2)
                    order = np.argsort(-viol[hit])[:batch]
                    self._add(bad[order])
                    added = int(order.size)
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
            work = np.zeros_like(on)
            if self._start is not None:
                work[self._rows_near(self._start, on)] = True
            else:
                first = self._initial
                if first is None:
                    first = np.flatnonzero(on)[: 2 * self.num_vars + 2]
                work[first] = True
            work &= on
        rows = np.flatnonzero(work)
        block = self._a[rows]  # gathered once: a CSR row gather costs about as much as a warm solve here
        self._cold = (
            self._algorithm if self._algorithm is not None else by_size(int(block.nnz), self.num_vars)
        )
        highs = _new_highs(cap, self._cold)
        _pass_arrays(
            highs,
            self.num_vars,
            block,
            self._c,
            self._lower,
            self._upper,
            self._lb[rows],
            self._b[rows],
        )
        if self._start is not None and self._cold is None:
            # unscaled: the guess's basis then needs no cleanup after unscaling (measured on
            # 20-100-500's output layer: 2.5 instead of 4.5 iterations, 1-3 ms less, the same optimum)
            highs.setOptionValue("simplex_scale_strategy", 0)
            _crash_basis(highs, self._start, block, self._b[rows], self._lb[rows], self._lower, self._upper)
            self._start = None  # the first solve only; later ones start from the last basis
        elif self._basis is not None and self._cold is None and rows.size == self._b.size:
            _set_basis(highs, self._basis[0], self._basis[1])
        self._basis = None
        self._highs, self._order, self._work = highs, rows, work

    def _rows_near(self, x: np.ndarray, on: np.ndarray) -> np.ndarray:
        """The first working set from a guess ``x`` of the optimum: every row taking part that ``x``
        violates and, at least, the ``START_ROWS·n`` with the least scaled slack at ``x`` (those that
        bind at the optimum are among them when the guess is close). Smaller than the
        ``2 (n + 1)`` most violated rows of a start without guess, and it already holds the rows row
        generation would add first: on 20-100-500's output layer one HiGHS run of ~126 rows instead
        of two of ~205, 5.5-5.8 instead of 7.4 ms."""
        ax = self._a @ x
        with np.errstate(invalid="ignore"):
            slack = np.where(on, (self._b - ax) / (1.0 + np.abs(self._b)), np.inf)
        near = np.argsort(slack, kind="stable")[: math.ceil(START_ROWS * self.num_vars)]
        return np.union1d(near, np.flatnonzero(slack < -1e-9))

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
        return _finish(self, status, x, objective, iterations, start, text, self._tol)

    def recheck(
        self, x: np.ndarray | None, status: SolverStatus, tol: float = RECHECK_TOL
    ) -> tuple[SolverStatus, float, str]:
        """:meth:`LinearProgram.recheck` on :meth:`problem`."""
        return _recheck(self.violation, x, status, tol)

    def violation(self, x: np.ndarray) -> float:
        """:meth:`LinearProgram.violation` of :meth:`problem`, from one product with all rows (the
        rows taking part change with every right-hand side, and slicing them cost more than the
        product; each row's value is the one the sliced matrix gives)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != self._c.shape or not np.all(np.isfinite(x)):
            return float("inf")
        on, low = np.isfinite(self._b), np.isfinite(self._lb)
        worst = 0.0
        if on.any() or low.any():
            ax = self._a @ x
            if on.any():
                b = self._b[on]
                worst = float(np.max((ax[on] - b) / (1.0 + np.abs(b))))
            if low.any():
                lb = -self._lb[low]  # a lower bound is the row -a x <= -lb (problem())
                worst = max(worst, float(np.max((-ax[low] - lb) / (1.0 + np.abs(lb)))))
        return max(worst, _bound_violation(x, self._lower, self._upper))


# A start point's coordinate lies at its bound, or a row binds, within this (scaled) distance.
CRASH_TOL = 1e-6
# The first working set from a start point holds at least START_ROWS·n rows (LPSession._rows_near).
START_ROWS = 1.25


def _crash_basis(
    highs: highspy.Highs,
    x: np.ndarray,
    a: sp.csr_matrix,
    row_upper: np.ndarray,
    row_lower: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> None:
    """A starting basis for the simplex from a guess ``x`` of the optimum (e.g. an interior point
    iterate): the coordinates at a bound are nonbasic there, the others basic, and as many rows as
    there are basic coordinates are nonbasic, those with the smallest slack (at the side they are
    nearest), the rest basic. The simplex then only corrects the guess: on the ~126 working rows x 101
    columns of 20-100-500's output layer, about one iteration from an iterate at accuracy 3e-4 instead
    of about 275 from the slack basis. A basis HiGHS cannot take (singular) it repairs or replaces;
    nothing of the answer depends on the guess beyond the path to it.
    """
    n = x.size
    with np.errstate(invalid="ignore"):
        at_lower = np.isfinite(lower) & (x - lower <= CRASH_TOL * (1.0 + np.abs(lower)))
        at_upper = ~at_lower & np.isfinite(upper) & (upper - x <= CRASH_TOL * (1.0 + np.abs(upper)))
    basic = ~(at_lower | at_upper)
    k = int(basic.sum())
    m = row_upper.size
    if k > m:
        return  # more free coordinates than rows: no square basis from this guess
    ax = a @ x
    with np.errstate(invalid="ignore"):
        up = np.where(np.isfinite(row_upper), (row_upper - ax) / (1.0 + np.abs(row_upper)), np.inf)
        low = np.where(np.isfinite(row_lower), (ax - row_lower) / (1.0 + np.abs(row_lower)), np.inf)
    nearest = np.minimum(up, low)
    tight = np.argsort(nearest, kind="stable")[:k]
    status = highspy.HighsBasisStatus
    col_status = [status.kBasic] * n
    for j in np.flatnonzero(at_lower):
        col_status[j] = status.kLower
    for j in np.flatnonzero(at_upper):
        col_status[j] = status.kUpper
    row_status = [status.kBasic] * m
    for r in tight:
        row_status[r] = status.kUpper if up[r] <= low[r] else status.kLower
    basis = highs.getBasis()
    basis.col_status = col_status
    basis.row_status = row_status
    basis.valid = True
    # square by construction (k basic coordinates, k nonbasic rows), so not "alien": HiGHS then does
    # not factor it on setBasis only to factor it again in run (~1 ms on 20-100-500's output layer);
    # a singular one it still repairs when it factors it
    basis.alien = False
    highs.setBasis(basis)


def _set_basis(highs: highspy.Highs, cols: np.ndarray, rows: np.ndarray) -> None:
    """A starting basis given by codes per column and row: ``-1`` nonbasic at the lower bound, ``0``
    basic, ``1`` nonbasic at the upper bound (HiGHS repairs a singular one)."""
    status = highspy.HighsBasisStatus
    table = {-1: status.kLower, 0: status.kBasic, 1: status.kUpper}
    basis = highs.getBasis()
    basis.col_status = [table[int(v)] for v in cols]
    basis.row_status = [table[int(v)] for v in rows]
    basis.valid = True
    highs.setBasis(basis)


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
    problem: LinearProgram | LPSession,
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


_BANNER: dict[str, Any] = {
    "silenced": False
}  # per process: has the first Highs() been built with stdout muted?


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
            csc.indptr[:-1].astype(np.int32, copy=False),
            csc.indices.astype(np.int32, copy=False),
            csc.data.astype(np.float64, copy=False),
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
    index = np.int32 if dense.size < 2**31 else np.int64
    if mask.all():  # a dense layer's rows (no exact zeros): every entry, row by row
        rows, cols = dense.shape
        indptr = np.arange(rows + 1, dtype=index) * cols
        columns = np.tile(np.arange(cols, dtype=index), rows)
        return sp.csr_matrix((dense.ravel().copy(), columns, indptr), shape=dense.shape)
    indptr = np.zeros(dense.shape[0] + 1, dtype=index)
    np.cumsum(np.count_nonzero(mask, axis=1), out=indptr[1:])
    columns = (np.flatnonzero(mask) % max(dense.shape[1], 1)).astype(indptr.dtype)
    return sp.csr_matrix((dense[mask], columns, indptr), shape=dense.shape)


# ----------------------------------------------------------------------------------------------------
# Mixed-integer programs, and sessions that re-solve one model many times
# ----------------------------------------------------------------------------------------------------

MILP_RECHECK_TOL = 1e-5
"""Scaled constraint violation accepted by the numpy re-check of a MILP point (HiGHS's MIP feasibility
tolerance is ``1e-6`` absolute, ``primal_feasibility_tolerance`` ``1e-7``)."""
INTEGRALITY_TOL = 1e-5
"""Largest distance of an integer column's value from an integer accepted by the re-check."""
SESSION_STALL_MINIMUM = 1000
SESSION_STALL_FACTOR = 5
"""A :class:`MilpSession` LP stops after ``max(SESSION_STALL_MINIMUM, SESSION_STALL_FACTOR·(variables +
rows))`` simplex iterations and is retried from scratch (``SESSION_RETRIES``)."""
SESSION_RETRIES = ("interior point", "primal simplex")
"""Algorithms an unconverged session LP is retried with, in order (narrow two-sided rows make both
simplex variants cycle; the interior point method with crossover does not)."""
MIP_REL_GAP = 1e-4
MIP_ABS_GAP = 1e-6


@dataclass(frozen=True, eq=False)
class MixedIntegerProgram:
    """``min cᵀx + offset`` s.t. ``row_lower <= A x <= row_upper``, ``lower <= x <= upper``, ``x_j``
    integer where ``integer[j]`` (validated, float64; ``±inf`` for a missing side).

    With no integer column this is an LP, solved by simplex; :class:`MilpSession` handles both.
    """

    c: np.ndarray
    a: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    integer: np.ndarray
    offset: float = 0.0

    @property
    def num_vars(self) -> int:
        return int(self.c.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.row_lower.shape[0])

    @property
    def num_integer(self) -> int:
        return int(np.count_nonzero(self.integer))

    @classmethod
    def build(
        cls,
        c: np.ndarray,
        A: np.ndarray | sp.spmatrix | sp.sparray | None = None,
        row_lower: np.ndarray | None = None,
        row_upper: np.ndarray | None = None,
        lower: np.ndarray | float | None = None,
        upper: np.ndarray | float | None = None,
        integer: np.ndarray | None = None,
        offset: float = 0.0,
    ) -> MixedIntegerProgram:
        """Validate and convert; ``lower``/``upper`` None means free, ``integer`` None means none."""
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        n = c.shape[0]
        if A is None:
            a = sp.csr_matrix((0, n))
        else:
            a = sp.csr_matrix(A, dtype=np.float64)
            if a.shape[1] != n:
                raise ValueError(f"A has shape {a.shape}; expected (rows, {n})")
        m = a.shape[0]
        rl = np.full(m, -np.inf) if row_lower is None else np.asarray(row_lower, dtype=np.float64).reshape(-1)
        ru = np.full(m, np.inf) if row_upper is None else np.asarray(row_upper, dtype=np.float64).reshape(-1)
        if rl.shape != (m,) or ru.shape != (m,):
            raise ValueError(f"row_lower and row_upper must have {m} entries, one per row of A")
        lo = np.broadcast_to(np.asarray(-np.inf if lower is None else lower, dtype=np.float64), (n,)).copy()
        hi = np.broadcast_to(np.asarray(np.inf if upper is None else upper, dtype=np.float64), (n,)).copy()
        ints = np.zeros(n, dtype=bool) if integer is None else np.asarray(integer, dtype=bool).reshape(-1)
        if ints.shape != (n,):
            raise ValueError(f"integer must have {n} entries, one per variable")
        if not np.all(np.isfinite(c)) or (a.nnz and not np.all(np.isfinite(a.data))):
            raise ValueError("MILP data must be finite (c, A)")
        if np.any(np.isnan(rl)) or np.any(np.isnan(ru)) or np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError("MILP bounds must not be NaN")
        return cls(c, a, rl, ru, lo, hi, ints, float(offset))

    def violation(self, x: np.ndarray) -> float:
        """Largest violation of a row or column bound by ``x``, each scaled by ``1 + |bound|``."""
        return _violation(self.a, self.row_lower, self.row_upper, self.lower, self.upper, x)

    def integrality_violation(self, x: np.ndarray) -> float:
        """Largest distance of an integer column of ``x`` from the nearest integer."""
        return _integrality(self.integer, x)


@dataclass(frozen=True, eq=False)
class MilpResult:
    """Outcome of one MILP (or LP) solve.

    Attributes
    ----------
    status : ``OPTIMAL`` only if HiGHS proved optimality (within the gap) and the numpy re-check of
        ``x`` passed; ``INFEASIBLE`` means no point satisfies the constraints (HiGHS's proof, within its
        feasibility tolerance); ``TIME_LIMIT`` decides nothing (``x`` may hold the incumbent)
    x : the best point found, re-checked in numpy (None when there is none or it failed the re-check)
    objective : ``cᵀx + offset`` of ``x`` (nan without ``x``)
    bound : the proved lower bound on the optimum (HiGHS's dual bound; the objective of an optimal
        LP; ``+inf`` when infeasible; ``-inf`` when nothing was proved)
    gap : relative MIP gap as HiGHS reports it (0 for an optimal LP, inf without a point)
    nodes : branch-and-bound nodes (0 for an LP)
    iterations : simplex iterations
    seconds : wall time of the solve
    violation : scaled constraint violation of ``x`` (:meth:`MixedIntegerProgram.violation`)
    integrality : largest distance of an integer column of ``x`` from an integer
    message : one sentence for people
    highs_status : HiGHS's own name for the model status
    """

    status: SolverStatus
    x: np.ndarray | None
    objective: float
    bound: float
    gap: float
    nodes: int
    iterations: int
    seconds: float
    violation: float
    integrality: float
    message: str
    highs_status: str

    @property
    def ok(self) -> bool:
        return self.status is SolverStatus.OPTIMAL


class MilpSession:
    """One HiGHS object holding one model, changed in place and re-solved.

    Build once from a :class:`MixedIntegerProgram`; then change the objective, column bounds, row
    bounds or single coefficients, add rows, and solve again. HiGHS keeps its simplex basis between
    LP solves (presolve is off for models without integer columns, so the basis survives), which
    makes a sequence of LPs that differ only in their objective (bound tightening) cheap. The
    session keeps a numpy copy of the current model for the re-check of every returned point.

    Parameters
    ----------
    program : the initial model
    presolve : HiGHS presolve for MILPs (default on); LPs always run without it, from the last basis
    feasibility_tolerance : HiGHS's ``primal_feasibility_tolerance`` (None: HiGHS's default, 1e-7)
    mip_feasibility_tolerance : HiGHS's ``mip_feasibility_tolerance`` (None: HiGHS's default, 1e-6)
    """

    def __init__(
        self,
        program: MixedIntegerProgram,
        *,
        presolve: bool = True,
        feasibility_tolerance: float | None = None,
        mip_feasibility_tolerance: float | None = None,
    ) -> None:
        self._c = program.c.copy()
        self._offset = program.offset
        self._a = sp.csr_matrix(program.a, copy=True)
        self._row_lower = program.row_lower.copy()
        self._row_upper = program.row_upper.copy()
        self._lower = program.lower.copy()
        self._upper = program.upper.copy()
        self._integer = program.integer.copy()
        self._presolve = presolve
        self._options: dict[str, bool | float | str] = {}
        self._highs = _new_highs(None)
        if feasibility_tolerance is not None:
            self._highs.setOptionValue("primal_feasibility_tolerance", float(feasibility_tolerance))
        if mip_feasibility_tolerance is not None:
            self._highs.setOptionValue("mip_feasibility_tolerance", float(mip_feasibility_tolerance))
        self._pass_model()
        self.solves = 0

    # -- the current model ------------------------------------------------------------------------
    @property
    def num_vars(self) -> int:
        return int(self._c.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self._row_lower.shape[0])

    @property
    def num_integer(self) -> int:
        return int(np.count_nonzero(self._integer))

    def program(self) -> MixedIntegerProgram:
        """A copy of the model as it is now."""
        return MixedIntegerProgram(
            self._c.copy(),
            self._a.copy(),
            self._row_lower.copy(),
            self._row_upper.copy(),
            self._lower.copy(),
            self._upper.copy(),
            self._integer.copy(),
            self._offset,
        )

    def col_bounds(self, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Current ``(lower, upper)`` of the columns ``cols`` (all by default), copies."""
        if cols is None:
            return self._lower.copy(), self._upper.copy()
        idx = np.asarray(cols, dtype=np.intp)
        return self._lower[idx].copy(), self._upper[idx].copy()

    # -- changes ----------------------------------------------------------------------------------
    def set_objective(self, c: np.ndarray | sp.sparray | dict[int, float], offset: float = 0.0) -> None:
        """Replace the objective by ``cᵀx + offset`` (``c`` dense of length ``num_vars``, or a
        ``{column: cost}`` dict with every other cost 0)."""
        if isinstance(c, dict):
            new = np.zeros(self.num_vars)
            for col, value in c.items():
                new[int(col)] = float(value)
        else:
            new = np.asarray(c, dtype=np.float64).reshape(-1)
        if new.shape != (self.num_vars,) or not np.all(np.isfinite(new)):
            raise ValueError(f"objective must be {self.num_vars} finite values")
        changed = np.flatnonzero(new != self._c)
        if changed.size:
            self._highs.changeColsCost(int(changed.size), changed.astype(np.int32), new[changed])
            self._c = new
        if float(offset) != self._offset:
            self._highs.changeObjectiveOffset(float(offset))
            self._offset = float(offset)

    def set_col_bounds(
        self, cols: np.ndarray | Sequence[int], lower: np.ndarray | float, upper: np.ndarray | float
    ) -> None:
        """Set the bounds of the columns ``cols`` (``±inf`` for none)."""
        idx = np.atleast_1d(np.asarray(cols, dtype=np.intp))
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), idx.shape).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), idx.shape).copy()
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError("column bounds must not be NaN")
        if idx.size:
            self._highs.changeColsBounds(
                int(idx.size), idx.astype(np.int32), _to_highs_inf(lo), _to_highs_inf(hi)
            )
            self._lower[idx] = lo
            self._upper[idx] = hi

    def set_row_bounds(self, rows: np.ndarray, lower: np.ndarray | float, upper: np.ndarray | float) -> None:
        """Set the bounds of the rows ``rows`` (``±inf`` for none)."""
        idx = np.atleast_1d(np.asarray(rows, dtype=np.intp))
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), idx.shape).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), idx.shape).copy()
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError("row bounds must not be NaN")
        if idx.size:
            # in the compiled module, though highspy's stubs omit it
            self._highs.changeRowsBounds(  # type: ignore[attr-defined]
                int(idx.size), idx.astype(np.int32), _to_highs_inf(lo), _to_highs_inf(hi)
            )
            self._row_lower[idx] = lo
            self._row_upper[idx] = hi

    def change_coefficients(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Set ``A[rows[t], cols[t]] = values[t]`` (entries may be new)."""
        r = np.atleast_1d(np.asarray(rows, dtype=np.intp))
        c = np.atleast_1d(np.asarray(cols, dtype=np.intp))
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), r.shape)
        if r.shape != c.shape:
            raise ValueError("rows and cols must have the same length")
        if not np.all(np.isfinite(v)):
            raise ValueError("coefficients must be finite")
        missing = []
        a = self._a
        for row, col, value in zip(r.tolist(), c.tolist(), v.tolist()):
            self._highs.changeCoeff(int(row), int(col), float(value))
            start, end = a.indptr[row], a.indptr[row + 1]
            hit = np.flatnonzero(a.indices[start:end] == col)
            if hit.size:
                a.data[start + hit[0]] = value
            else:
                missing.append((row, col, value))
        if missing:
            mr, mc, mv = (np.array(t) for t in zip(*missing))
            self._a = (a + sp.csr_matrix((mv, (mr, mc)), shape=a.shape)).tocsr()

    def add_rows(
        self, a: np.ndarray | sp.spmatrix | sp.sparray, lower: np.ndarray | float, upper: np.ndarray | float
    ) -> np.ndarray:
        """Append rows ``lower <= a x <= upper``; returns their indices."""
        block = sp.csr_matrix(a, dtype=np.float64)
        if block.shape[1] != self.num_vars:
            raise ValueError(f"new rows have {block.shape[1]} columns; the model has {self.num_vars}")
        m = block.shape[0]
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (m,)).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (m,)).copy()
        first = self.num_rows
        if m:
            self._highs.addRows(
                int(m),
                _to_highs_inf(lo),
                _to_highs_inf(hi),
                int(block.nnz),
                block.indptr[:-1].astype(np.int32),
                block.indices.astype(np.int32),
                block.data.astype(np.float64),
            )
            self._a = sp.vstack([self._a, block], format="csr")
            self._row_lower = np.concatenate([self._row_lower, lo])
            self._row_upper = np.concatenate([self._row_upper, hi])
        return np.arange(first, first + m)

    def set_integer(self, cols: np.ndarray, integer: bool | np.ndarray) -> None:
        """Mark the columns ``cols`` integer (True) or continuous (False)."""
        idx = np.atleast_1d(np.asarray(cols, dtype=np.intp))
        flags = np.broadcast_to(np.asarray(integer, dtype=bool), idx.shape)
        if idx.size:
            kinds = np.where(flags, int(highspy.HighsVarType.kInteger), int(highspy.HighsVarType.kContinuous))
            self._highs.changeColsIntegrality(int(idx.size), idx.astype(np.int32), kinds.astype(np.uint8))
            self._integer[idx] = flags
            self._apply_presolve()

    # -- solving ----------------------------------------------------------------------------------
    def violation(self, x: np.ndarray) -> float:
        """Scaled constraint violation of ``x`` against the current model."""
        return _violation(self._a, self._row_lower, self._row_upper, self._lower, self._upper, x)

    def solve(
        self,
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
        mip_rel_gap: float = MIP_REL_GAP,
        mip_abs_gap: float = MIP_ABS_GAP,
        node_limit: int | None = None,
        iteration_limit: int | None = None,
        tol: float = MILP_RECHECK_TOL,
    ) -> MilpResult:
        """Solve the current model.

        Parameters
        ----------
        time_limit : seconds for this solve (None: no limit); a MILP stopped by it decides nothing
        start : a full point handed to HiGHS as a starting solution (``setSolution``); HiGHS uses it
            as its first incumbent when it is feasible and ignores it otherwise
        mip_rel_gap, mip_abs_gap : HiGHS stops when the incumbent is within these of the dual bound
        node_limit : branch-and-bound node limit (None: none); stopping there ends ``UNKNOWN``
        iteration_limit : simplex iteration limit of an LP (None: a stall cap,
            ``max(SESSION_STALL_MINIMUM, SESSION_STALL_FACTOR·(variables + rows))``; an LP that reaches the
            cap, or ends unconverged, is solved again from scratch with ``SESSION_RETRIES`` in turn, within
            the same time limit)
        tol : tolerance of the numpy re-check (scaled violation; integrality uses ``INTEGRALITY_TOL``)
        """
        begin = time.perf_counter()
        lp_model = self.num_integer == 0
        cap = iteration_limit
        if cap is None and lp_model:
            # warm re-solves of small degenerate LPs can cycle: stop early and retry from scratch
            cap = max(SESSION_STALL_MINIMUM, SESSION_STALL_FACTOR * (self.num_vars + self.num_rows))
        res = self._solve_once(time_limit, start, mip_rel_gap, mip_abs_gap, node_limit, cap, tol)
        if not lp_model or iteration_limit is not None:
            return res
        notes = []
        for strategy in SESSION_RETRIES:
            if res.status not in (*_UNCONVERGED, SolverStatus.ITERATION_LIMIT):
                break
            left = None if time_limit is None else time_limit - (time.perf_counter() - begin)
            if left is not None and left <= 0:
                break
            notes.append(f"'{res.status.value}', retried from scratch with {strategy}")
            if strategy == "primal simplex":
                self._option("simplex_strategy", 4)
            else:
                self._option("solver", "ipm")
                self._option("run_crossover", "on")
            self._highs.clearSolver()
            res = self._solve_once(left, None, mip_rel_gap, mip_abs_gap, node_limit, cap, tol)
            self._option("simplex_strategy", 1)
            self._option("solver", "choose")
        if notes:
            res = dataclasses.replace(
                res,
                seconds=time.perf_counter() - begin,
                message=f"{res.message}; earlier: {'; '.join(notes)}",
            )
        return res

    def _solve_once(
        self,
        time_limit: float | None,
        start: np.ndarray | None,
        mip_rel_gap: float,
        mip_abs_gap: float,
        node_limit: int | None,
        iteration_limit: int | None,
        tol: float,
    ) -> MilpResult:
        begin = time.perf_counter()
        h = self._highs
        self.solves += 1
        if time_limit is not None and time_limit <= 0:
            return self._result(SolverStatus.TIME_LIMIT, None, float("-inf"), float("inf"), 0, 0, begin, "")
        self._option(
            "simplex_iteration_limit", int(iteration_limit) if iteration_limit is not None else 2**31 - 1
        )
        # HiGHS's time limit counts the object's total run time over all runs.
        self._option("time_limit", _INF if time_limit is None else float(h.getRunTime()) + float(time_limit))
        if self.num_integer:
            self._option("mip_rel_gap", float(mip_rel_gap))
            self._option("mip_abs_gap", float(mip_abs_gap))
            self._option("mip_max_nodes", int(node_limit) if node_limit is not None else 2**31 - 1)
        if start is not None:
            x0 = np.asarray(start, dtype=np.float64).reshape(-1)
            if x0.shape != (self.num_vars,):
                raise ValueError(f"start must have {self.num_vars} entries, got {x0.shape}")
            if np.all(np.isfinite(x0)):
                sol = highspy.HighsSolution()
                sol.col_value = x0
                sol.value_valid = True
                h.setSolution(sol)
        retried = False
        while True:
            run_status = h.run()
            model_status = h.getModelStatus()
            if model_status in (_MS.kModelError, _MS.kLoadError) or (
                run_status == highspy.HighsStatus.kError and model_status == _MS.kNotset
            ):
                raise SolverError(
                    f"HiGHS could not take the model ({self.num_vars} variables, {self.num_integer} "
                    f"integer, {self.num_rows} rows): {h.modelStatusToString(model_status)}. This is a "
                    "bug in onnxinv's MILP assembly; please report it with the model."
                )
            status = map_status(model_status)
            if status is SolverStatus.INFEASIBLE_OR_UNBOUNDED and not retried:
                if np.all(np.isfinite(self._lower)) and np.all(np.isfinite(self._upper)):
                    # every column is bounded, so the model cannot be unbounded
                    status = SolverStatus.INFEASIBLE
                    break
                # settle it from scratch without presolve, with primal simplex, which tells the two apart
                retried = True
                self._option("presolve", "off")
                self._option("simplex_strategy", 4)
                h.clearSolver()
                continue
            break
        if retried:
            self._option("simplex_strategy", 1)
        self._apply_presolve()
        info = h.getInfo()
        text = h.modelStatusToString(model_status)
        x = None
        sol = h.getSolution()
        if sol.value_valid and int(info.primal_solution_status) == int(highspy.kSolutionStatusFeasible):
            x = np.asarray(sol.col_value, dtype=np.float64)
        mip = self.num_integer > 0
        iterations = int(info.simplex_iteration_count)
        nodes = max(int(info.mip_node_count), 0) if mip else 0
        if status is SolverStatus.INFEASIBLE:
            bound, gap, x = float("inf"), float("inf"), None
        elif mip:
            bound = float(info.mip_dual_bound)
            gap = float(info.mip_gap) if x is not None else float("inf")
        elif status is SolverStatus.OPTIMAL:
            bound, gap = float(info.objective_function_value), 0.0
        else:
            bound, gap = float("-inf"), float("inf")
        if not math.isfinite(bound) and status is not SolverStatus.INFEASIBLE:
            bound = float("-inf")
        if status is SolverStatus.UNKNOWN and model_status == _MS.kSolutionLimit:
            text = "node limit reached"
        return self._result(status, x, bound, gap, nodes, iterations, begin, text, tol)

    def _result(
        self,
        status: SolverStatus,
        x: np.ndarray | None,
        bound: float,
        gap: float,
        nodes: int,
        iterations: int,
        begin: float,
        highs_text: str,
        tol: float = MILP_RECHECK_TOL,
    ) -> MilpResult:
        viol, integ, note = float("nan"), float("nan"), ""
        if x is not None:
            viol = self.violation(x)
            integ = _integrality(self._integer, x)
            if viol > tol or integ > INTEGRALITY_TOL:
                note = (
                    f"HiGHS's point violates a constraint by {viol:.3g} (scaled; tolerance {tol:.1g}) or "
                    f"integrality by {integ:.3g} (tolerance {INTEGRALITY_TOL:.1g}), so it is not accepted"
                )
                x = None
                if status is SolverStatus.OPTIMAL:
                    status = SolverStatus.NUMERICAL
        elif status is SolverStatus.OPTIMAL:
            status, note = SolverStatus.NUMERICAL, "HiGHS reported optimal but gave no point"
        objective = float(self._c @ x + self._offset) if x is not None else float("nan")
        what = "MILP" if self.num_integer else "LP"
        message = note or {
            SolverStatus.OPTIMAL: f"{what} solved to optimality",
            SolverStatus.INFEASIBLE: f"the {what} is infeasible",
            SolverStatus.UNBOUNDED: f"the {what} is unbounded",
            SolverStatus.INFEASIBLE_OR_UNBOUNDED: f"the {what} is infeasible or unbounded",
            SolverStatus.TIME_LIMIT: f"HiGHS stopped the {what} at the time limit"
            + (" with an incumbent" if x is not None else " without a point"),
            SolverStatus.ITERATION_LIMIT: f"HiGHS stopped the {what} at the iteration limit",
        }.get(status, f"HiGHS ended the {what} with status {highs_text!r}")
        return MilpResult(
            status=status,
            x=x,
            objective=objective,
            bound=bound,
            gap=gap,
            nodes=nodes,
            iterations=iterations,
            seconds=time.perf_counter() - begin,
            violation=viol,
            integrality=integ,
            message=message,
            highs_status=highs_text,
        )

    def _option(self, name: str, value: bool | float | str) -> None:
        # each option costs a call into HiGHS; skip the ones that did not change
        if self._options.get(name) != value:
            self._highs.setOptionValue(name, value)
            self._options[name] = value

    def _apply_presolve(self) -> None:
        on = self._presolve and self.num_integer > 0
        self._option("presolve", "choose" if on else "off")

    def _pass_model(self) -> None:
        n = self.num_vars
        a = self._a.tocsc()
        model = highspy.HighsLp()
        model.num_col_ = n
        model.num_row_ = a.shape[0]
        model.col_cost_ = self._c
        model.offset_ = self._offset
        model.col_lower_ = _to_highs_inf(self._lower)
        model.col_upper_ = _to_highs_inf(self._upper)
        model.row_lower_ = _to_highs_inf(self._row_lower)
        model.row_upper_ = _to_highs_inf(self._row_upper)
        model.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        model.a_matrix_.num_col_ = n
        model.a_matrix_.num_row_ = a.shape[0]
        model.a_matrix_.start_ = a.indptr.astype(np.int32)
        model.a_matrix_.index_ = a.indices.astype(np.int32)
        model.a_matrix_.value_ = a.data.astype(np.float64)
        if self.num_integer:
            model.integrality_ = [
                highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
                for flag in self._integer
            ]
        if self._highs.passModel(model) == highspy.HighsStatus.kError:
            raise SolverError(
                f"HiGHS refused a model with {n} variables and {a.shape[0]} rows; this is a bug in "
                "onnxinv's MILP assembly, please report it"
            )
        self._apply_presolve()


def solve_milp(
    c: np.ndarray,
    A: np.ndarray | sp.spmatrix | sp.sparray | None = None,
    row_lower: np.ndarray | None = None,
    row_upper: np.ndarray | None = None,
    lower: np.ndarray | float | None = None,
    upper: np.ndarray | float | None = None,
    integer: np.ndarray | None = None,
    *,
    time_limit: float | None = None,
    start: np.ndarray | None = None,
    mip_rel_gap: float = MIP_REL_GAP,
    mip_abs_gap: float = MIP_ABS_GAP,
    tol: float = MILP_RECHECK_TOL,
) -> MilpResult:
    """Solve ``min cᵀx`` s.t. ``row_lower <= A x <= row_upper``, ``lower <= x <= upper``, ``x_j``
    integer where ``integer[j]``, once (a :class:`MilpSession` for re-solves).

    Variables are free unless bounded (like :func:`solve_lp`). Returns a :class:`MilpResult`.

    Raises
    ------
    SolverError
        HiGHS refused the model.
    ValueError
        Inconsistent shapes or non-finite data.
    """
    program = MixedIntegerProgram.build(c, A, row_lower, row_upper, lower, upper, integer)
    return MilpSession(program).solve(
        time_limit=time_limit, start=start, mip_rel_gap=mip_rel_gap, mip_abs_gap=mip_abs_gap, tol=tol
    )


def _violation(
    a: sp.csr_matrix,
    row_lower: np.ndarray,
    row_upper: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x: np.ndarray,
) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (a.shape[1],) or not np.all(np.isfinite(x)):
        return float("inf")
    worst = 0.0
    with np.errstate(invalid="ignore"):
        if a.shape[0]:
            ax = a @ x
            below = np.where(np.isfinite(row_lower), (row_lower - ax) / (1.0 + np.abs(row_lower)), 0.0)
            above = np.where(np.isfinite(row_upper), (ax - row_upper) / (1.0 + np.abs(row_upper)), 0.0)
            worst = max(worst, float(np.max(below)), float(np.max(above)))
        if x.size:
            lo = np.where(np.isfinite(lower), (lower - x) / (1.0 + np.abs(lower)), 0.0)
            hi = np.where(np.isfinite(upper), (x - upper) / (1.0 + np.abs(upper)), 0.0)
            worst = max(worst, float(np.max(lo)), float(np.max(hi)))
    return max(worst, 0.0)


def _integrality(integer: np.ndarray, x: np.ndarray) -> float:
    if not np.any(integer):
        return 0.0
    v = np.asarray(x, dtype=np.float64)[integer]
    return float(np.max(np.abs(v - np.round(v)))) if v.size else 0.0
