"""The HiGHS module: known answers, infeasible / unbounded / limits mapped to our statuses, re-checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from onnxinv.inversion import SolverStatus, lp


def test_known_answer_inequalities() -> None:
    # max x + y  s.t.  x + 2y <= 4, 3x + y <= 6, x, y >= 0   ->  (1.6, 1.2), value 2.8
    res = lp.solve_lp([-1.0, -1.0], [[1.0, 2.0], [3.0, 1.0]], [4.0, 6.0], bounds=(0.0, None))
    assert res.status is SolverStatus.OPTIMAL and res.ok
    np.testing.assert_allclose(res.x, [1.6, 1.2], atol=1e-9)
    assert res.objective == pytest.approx(-2.8)
    assert res.violation <= 1e-9


def test_known_answer_equalities_sparse_and_free_default() -> None:
    # min x0 + 2 x1 + 3 x2  s.t.  x0 + x1 + x2 = 1 (sparse), x >= 0  ->  x = e0
    res = lp.solve_lp(
        np.array([1.0, 2.0, 3.0]), A_eq=sp.csr_matrix([[1.0, 1.0, 1.0]]), b_eq=[1.0], bounds=(0, None)
    )
    np.testing.assert_allclose(res.x, [1.0, 0.0, 0.0], atol=1e-9)
    # bounds=None means free variables (unlike scipy's linprog): min x s.t. x >= -3 written as -x <= 3
    res = lp.solve_lp([1.0], [[-1.0]], [3.0])
    assert res.ok and res.x[0] == pytest.approx(-3.0)


def test_infeasible() -> None:
    res = lp.solve_lp([1.0, 1.0], [[1.0, 1.0], [-1.0, -1.0]], [1.0, -2.0], bounds=(0.0, None))
    assert res.status is SolverStatus.INFEASIBLE and not res.ok
    assert "infeasible" in res.message


def test_unbounded() -> None:
    res = lp.solve_lp([-1.0, 0.0], [[0.0, 1.0]], [1.0], bounds=(0.0, None))
    assert res.status is SolverStatus.UNBOUNDED and not res.ok


def _largish_lp(seed: int = 0):
    rng = np.random.default_rng(seed)
    m, n = 1500, 600
    a = rng.normal(size=(m, n))
    b = rng.uniform(1.0, 2.0, size=m)
    return rng.normal(size=n), a, b


def test_iteration_limit() -> None:
    c, a, b = _largish_lp()
    res = lp.solve_lp(c, a, b, bounds=(-1.0, 1.0), iteration_limit=5)
    assert res.status is SolverStatus.ITERATION_LIMIT and not res.ok


def test_time_limit() -> None:
    c, a, b = _largish_lp(1)
    res = lp.solve_lp(c, a, b, bounds=(-1.0, 1.0), time_limit=1e-3)
    assert res.status is SolverStatus.TIME_LIMIT and not res.ok
    assert "time limit" in res.message


def test_every_highs_status_is_mapped() -> None:
    table = lp.status_table()
    assert table["kOptimal"] is SolverStatus.OPTIMAL
    assert table["kInfeasible"] is SolverStatus.INFEASIBLE
    assert table["kUnbounded"] is SolverStatus.UNBOUNDED
    assert table["kTimeLimit"] is SolverStatus.TIME_LIMIT
    assert table["kIterationLimit"] is SolverStatus.ITERATION_LIMIT
    assert table["kSolveError"] is SolverStatus.NUMERICAL
    assert all(isinstance(v, SolverStatus) for v in table.values())
    assert set(table) >= {"kOptimal", "kInfeasible", "kUnboundedOrInfeasible", "kUnknown", "kModelEmpty"}


def test_recheck_downgrades_a_bad_optimal() -> None:
    problem = lp.LinearProgram.build([1.0, 1.0], [[1.0, 1.0]], [1.0], [[1.0, -1.0]], [0.0], (0.0, None))
    good = np.array([0.5, 0.5])
    status, viol, msg = problem.recheck(good, SolverStatus.OPTIMAL)
    assert status is SolverStatus.OPTIMAL and viol <= 1e-12 and msg == ""
    for fake in ([0.9, 0.9], [0.7, 0.3], [-0.1, 0.0]):  # breaks A_ub, A_eq, bounds in turn
        status, viol, msg = problem.recheck(np.array(fake), SolverStatus.OPTIMAL)
        assert status is SolverStatus.NUMERICAL and viol > 1e-6
        assert "violates" in msg
    # non-optimal statuses pass through untouched
    assert problem.recheck(None, SolverStatus.INFEASIBLE)[0] is SolverStatus.INFEASIBLE
    assert problem.recheck(None, SolverStatus.OPTIMAL)[0] is SolverStatus.NUMERICAL


def test_row_generation_matches_full_solve() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(400, 30))
    b = rng.uniform(0.5, 1.0, size=400)
    c = rng.normal(size=30)
    full = lp.solve_lp(c, a, b, bounds=(-5.0, 5.0))
    gen = lp.solve_lp(c, a, b, bounds=(-5.0, 5.0), row_generation=True, initial_rows=np.arange(10))
    assert full.ok and gen.ok
    assert gen.objective == pytest.approx(full.objective, rel=1e-9)
    assert gen.violation <= 1e-6


def test_row_generation_recovers_from_an_unbounded_relaxation() -> None:
    # min -x s.t. x <= 1 (row 1); the first working set only holds the useless row 0
    res = lp.solve_lp([-1.0], [[-1.0], [1.0]], [5.0, 1.0], row_generation=True, initial_rows=[0])
    assert res.ok and res.x[0] == pytest.approx(1.0)


def test_bad_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="A_ub has shape"):
        lp.solve_lp([1.0, 2.0], [[1.0, 2.0, 3.0]], [1.0])
    with pytest.raises(ValueError, match="finite"):
        lp.solve_lp([np.nan], [[1.0]], [1.0])


def _flaky_first_solve(monkeypatch, status: SolverStatus) -> list[str | None]:
    """Make the first solve of every LP end with ``status`` (as HiGHS does now and then); record the
    algorithm of every solve."""
    real = lp._solve_once
    calls: list[str | None] = []

    def solve_once(problem, deadline, iteration_limit, row_generation, initial_rows, tol, strategy):
        calls.append(strategy)
        if len(calls) == 1:
            if status is SolverStatus.ITERATION_LIMIT:  # a stalled simplex: one iteration allowed
                return real(problem, deadline, 1, row_generation, initial_rows, tol, strategy)
            return lp.LPResult(status, None, float("nan"), float("nan"), 0, 0.0, "HiGHS gave up", "Unknown")
        return real(problem, deadline, iteration_limit, row_generation, initial_rows, tol, strategy)

    monkeypatch.setattr(lp, "_solve_once", solve_once)
    return calls


@pytest.mark.parametrize(
    "status", [SolverStatus.UNKNOWN, SolverStatus.NUMERICAL, SolverStatus.ITERATION_LIMIT]
)
def test_an_unconverged_end_is_retried_from_scratch(monkeypatch, status: SolverStatus) -> None:
    calls = _flaky_first_solve(monkeypatch, status)
    c, a, b = _largish_lp(2)
    res = lp.solve_lp(c[:40], a[:200, :40], b[:200], bounds=(-1.0, 1.0))
    assert res.status is SolverStatus.OPTIMAL and res.violation <= 1e-6
    assert calls == [None, "primal simplex"]
    assert (
        f"earlier: '{status.value}'" in res.message
        and "retried from scratch with primal simplex" in res.message
    )


def test_a_limit_set_by_the_caller_is_not_retried() -> None:
    c, a, b = _largish_lp()
    res = lp.solve_lp(c, a, b, bounds=(-1.0, 1.0), iteration_limit=5)
    assert res.status is SolverStatus.ITERATION_LIMIT and "earlier" not in res.message


def test_algorithm_choice() -> None:
    c, a, b = _largish_lp(3)
    ref = lp.solve_lp(c[:50], a[:300, :50], b[:300], bounds=(-1.0, 1.0))
    for algorithm in lp.RETRY_STRATEGIES:
        res = lp.solve_lp(c[:50], a[:300, :50], b[:300], bounds=(-1.0, 1.0), algorithm=algorithm)
        assert res.ok and res.objective == pytest.approx(ref.objective, rel=1e-7)
    with pytest.raises(ValueError, match="unknown LP algorithm"):
        lp.solve_lp([1.0], [[1.0]], [1.0], algorithm="barrier")


def test_unknown_status_at_an_identifiable_layer_is_not_taken_as_success(monkeypatch) -> None:
    """A full-rank layer whose only candidate breaks an inactive row needs the eq. (4) LP; if that LP
    never converges, the layer reports the solver's status instead of claiming the point."""
    from inversion_helpers import latent, make_generator

    from onnxinv.inversion import Settings, Verdict, exact, invert, linear

    g = make_generator([10, 60], seed=4)
    x = g.forward(latent(10, 4))
    active = np.flatnonzero(x > 0.05 * x.max())
    x[active[0]] = 0.0  # an active unit reported as off: the active rows still pin u, which breaks it
    plain = Settings(refine=False)  # the layer's own record, not the whole-network refinement's
    r = invert(g, x, method="exact", settings=plain)
    assert r.steps[0].status is SolverStatus.INFEASIBLE
    # proved without the LP: the active rows pin u too tightly for the broken row to hold
    assert "still misses row" in r.steps[0].message
    # the observation is off the range of the only layer: its l_inf LP proves it
    assert r.verdict is Verdict.NO_PREIMAGE and r.evidence.kind.value == "layer-lp"

    # where that bound proves nothing, the eq. (4) LP decides, and its status is what the layer reports
    monkeypatch.setattr(exact, "_misfit_proof", lambda *args, **kwargs: None)
    called = []

    def original_lp(*args, **kwargs):
        called.append(1)
        return real_layer_lp(*args, **kwargs)

    real_layer_lp = linear.layer_lp
    monkeypatch.setattr(linear, "layer_lp", original_lp)
    r = invert(g, x, method="exact", settings=plain)
    assert called and r.steps[0].status is SolverStatus.INFEASIBLE

    unconverged = lp.LPResult(
        SolverStatus.UNKNOWN, None, float("nan"), float("nan"), 0, 0.0, "gave up", "Unknown"
    )
    monkeypatch.setattr(linear, "layer_lp", lambda *args, **kwargs: unconverged)
    r = invert(g, x, method="exact", settings=plain)
    assert r.steps[0].status is SolverStatus.UNKNOWN and not r.steps[0].identifiable
    assert not r.verdict.success and "ended 'unknown'" in r.message


# -- mixed-integer programs and sessions ----------------------------------------------------------------


def _knapsack():
    # max 5a + 4b + 3c  s.t.  2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8, integers in [0, 3]
    c = -np.array([5.0, 4.0, 3.0])
    a = np.array([[2.0, 3.0, 1.0], [4.0, 1.0, 2.0], [3.0, 4.0, 2.0]])
    return c, a, np.array([5.0, 11.0, 8.0])


def test_milp_known_answer_and_integrality() -> None:
    c, a, b = _knapsack()
    res = lp.solve_milp(c, a, None, b, 0.0, 3.0, [True, True, True])
    assert res.status is SolverStatus.OPTIMAL and res.ok
    np.testing.assert_allclose(res.x, [2.0, 0.0, 1.0], atol=1e-9)
    assert res.objective == pytest.approx(-13.0) and res.bound == pytest.approx(-13.0)
    assert res.integrality <= 1e-9 and res.violation <= 1e-9 and res.gap == pytest.approx(0.0)
    # the LP relaxation is better than the integer optimum
    relaxed = lp.solve_milp(c, a, None, b, 0.0, 3.0)
    assert relaxed.ok and relaxed.objective < -13.0 + 1e-9 and relaxed.nodes == 0


def test_milp_infeasible_and_sparse_rows() -> None:
    # x + y = 1.5 with x, y integer in [0, 1]: no integer point
    res = lp.solve_milp([0.0, 0.0], sp.csr_array([[1.0, 1.0]]), [1.5], [1.5], 0.0, 1.0, [True, True])
    assert res.status is SolverStatus.INFEASIBLE and res.x is None and res.bound == float("inf")


def test_session_changes_and_resolves() -> None:
    c, a, b = _knapsack()
    session = lp.MilpSession(lp.MixedIntegerProgram.build(c, a, None, b, 0.0, 3.0, [True, True, True]))
    assert session.solve().objective == pytest.approx(-13.0)
    # a new objective: maximise b only -> b = 1 (row 3: 4b <= 8, row 1: 3b <= 5)
    session.set_objective({1: -1.0})
    res = session.solve()
    assert res.ok and res.x[1] == pytest.approx(1.0)
    # column bounds, then a new row, then a coefficient
    session.set_col_bounds([1], 0.0, 0.0)
    assert session.solve().objective == pytest.approx(0.0)
    session.set_col_bounds([1], 0.0, 3.0)
    rows = session.add_rows(np.array([[0.0, 1.0, 0.0]]), -np.inf, 0.0)
    assert rows.tolist() == [3] and session.num_rows == 4
    assert session.solve().objective == pytest.approx(0.0)
    session.change_coefficients([3], [1], [0.0])
    session.set_row_bounds([3], -np.inf, 5.0)
    assert session.solve().x[1] == pytest.approx(1.0)
    # the numpy copy of the model follows every change
    program = session.program()
    assert program.a.toarray()[3, 1] == 0.0 and program.row_upper[3] == 5.0


def test_session_start_point_and_lp_basis_reuse() -> None:
    c, a, b = _knapsack()
    session = lp.MilpSession(lp.MixedIntegerProgram.build(c, a, None, b, 0.0, 3.0, [True, True, True]))
    res = session.solve(start=np.array([2.0, 0.0, 1.0]))
    assert res.ok and res.objective == pytest.approx(-13.0)
    with pytest.raises(ValueError, match="start must have 3 entries"):
        session.solve(start=np.zeros(2))
    # an LP re-solved with a new objective goes on from its basis: few iterations
    lp_session = lp.MilpSession(lp.MixedIntegerProgram.build(c, a, None, b, 0.0, 3.0))
    first = lp_session.solve()
    lp_session.set_objective(-np.array([5.0, 4.0, 3.01]))
    again = lp_session.solve()
    assert first.ok and again.ok and again.iterations <= first.iterations


def test_session_time_limit_decides_nothing() -> None:
    c, a, b = _largish_lp(2)
    program = lp.MixedIntegerProgram.build(c, a, None, b, -1.0, 1.0, np.ones(c.size, dtype=bool))
    res = lp.MilpSession(program).solve(time_limit=0.0)
    assert res.status is SolverStatus.TIME_LIMIT and not res.ok and res.x is None


def test_milp_recheck_rejects_a_bad_point() -> None:
    program = lp.MixedIntegerProgram.build([1.0, 1.0], [[1.0, 1.0]], [1.0], [1.0], 0.0, 1.0, [True, False])
    assert program.violation(np.array([0.5, 0.5])) == 0.0
    assert program.integrality_violation(np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert program.violation(np.array([1.0, 1.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="integer must have 2 entries"):
        lp.MixedIntegerProgram.build([1.0, 1.0], integer=[True])
