"""The dense interior point method: optima against HiGHS's, row generation, fallbacks, and the l_inf
method routed through it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from contract import assert_contract
from inversion_helpers import make_generator, rel_err

from onnxinv.inversion import Settings, SolverStatus, invert, ipm, lp


def _linf_lp(rng: np.random.Generator, m: int, n: int, noise: float = 1e-3, one_sided: float = 0.3):
    """``min δ`` s.t. ``|W u - y| <= δ`` on two-sided rows, ``W u - y <= δ`` on one-sided rows, ``u >= 0``:
    the layer LP of the l_inf method (columns ``[u, δ]``)."""
    w = rng.normal(size=(m, n)) / np.sqrt(m)
    u = np.abs(rng.normal(size=n))
    y = w @ u + rng.uniform(-noise, noise, size=m)
    two = rng.random(m) >= one_sided
    a = np.vstack([np.hstack([w, -np.ones((m, 1))]), np.hstack([-w[two], -np.ones((int(two.sum()), 1))])])
    b = np.concatenate([y, -y[two]])
    c = np.zeros(n + 1)
    c[-1] = 1.0
    bounds = (np.zeros(n + 1), np.full(n + 1, np.inf))
    return c, a, b, bounds


def _highs(c, a, b, bounds):
    res = lp.solve_lp(c, a, b, bounds=bounds)
    assert res.ok, res.message
    return res


def _assert_same_optimum(res: lp.LPResult, ref: lp.LPResult, c, a, b, bounds) -> None:
    assert res.ok, res.message
    assert res.x is not None
    assert res.objective == pytest.approx(ref.objective, rel=1e-7, abs=1e-9)
    assert float(c @ res.x) == pytest.approx(res.objective)
    assert lp.LinearProgram.build(c, a, b, bounds=bounds).violation(res.x) <= 1e-9


@pytest.mark.parametrize("m,n", [(300, 40), (800, 120), (120, 100)])  # expansive, wider, nearly square
def test_linf_layer_lp_matches_highs(m: int, n: int) -> None:
    rng = np.random.default_rng(m + n)
    c, a, b, bounds = _linf_lp(rng, m, n)
    ref = _highs(c, a, b, bounds)
    res = ipm.solve_dense(c, a, b, bounds)
    _assert_same_optimum(res, ref, c, a, b, bounds)
    assert "interior point" in res.message


def test_interior_point_without_row_generation_reports_converged() -> None:
    rng = np.random.default_rng(5)
    c, a, b, (lower, upper) = _linf_lp(rng, 200, 30)
    out = ipm.interior_point(c, a, b, lower, upper)
    assert out.converged, out.message
    ref = _highs(c, a, b, (lower, upper))
    assert out.primal == pytest.approx(ref.objective, rel=1e-7)
    assert out.dual <= out.primal + 1e-12 and out.dual == pytest.approx(out.primal, rel=1e-7)
    assert np.all(out.z >= 0)
    # the duals certify the optimum: c + Aᵀz is (up to the tolerance) the duals of the bounds, >= 0
    reduced = c + a.T @ out.z
    assert np.min(reduced) >= -1e-7


def test_general_bounded_lp_with_two_sided_bounds() -> None:
    rng = np.random.default_rng(7)
    n, m = 25, 60
    a = rng.normal(size=(m, n))
    b = rng.uniform(0.5, 2.0, size=m)
    c = rng.normal(size=n)
    bounds = (np.full(n, -1.0), np.full(n, 1.5))
    ref = _highs(c, a, b, bounds)
    _assert_same_optimum(ipm.solve_dense(c, a, b, bounds, row_generation=False), ref, c, a, b, bounds)
    _assert_same_optimum(ipm.solve_dense(c, a, b, bounds), ref, c, a, b, bounds)


def test_free_variables() -> None:
    """No bounds at all: many random rows around the origin make the LP bounded."""
    rng = np.random.default_rng(8)
    n, m = 20, 400
    a = rng.normal(size=(m, n))
    b = rng.uniform(1.0, 2.0, size=m)
    c = rng.normal(size=n)
    ref = _highs(c, a, b, None)
    _assert_same_optimum(ipm.solve_dense(c, a, b, None), ref, c, a, b, None)
    # mixed: some variables bounded below, the others free
    lower = np.where(np.arange(n) % 2 == 0, -0.1, -np.inf)
    bounds = (lower, np.full(n, np.inf))
    ref = _highs(c, a, b, bounds)
    _assert_same_optimum(ipm.solve_dense(c, a, b, bounds), ref, c, a, b, bounds)


def test_degenerate_lp() -> None:
    """Duplicated rows and many rows through the optimal vertex (primal degenerate), and an optimal face
    (dual degenerate: the objective is parallel to a facet)."""
    rng = np.random.default_rng(9)
    n = 12
    vertex = rng.uniform(-1, 1, size=n)
    cone = np.abs(rng.normal(size=(3 * n, n)))  # rows a with a·x <= a·vertex: all tight at the vertex
    a = np.vstack([cone, cone[:5], -np.eye(n), -np.eye(n)])
    b = np.concatenate([cone @ vertex, cone[:5] @ vertex, np.full(n, 5.0), np.full(n, 5.0)])
    c = -cone[:n].sum(axis=0)
    ref = _highs(c, a, b, None)
    _assert_same_optimum(ipm.solve_dense(c, a, b, None), ref, c, a, b, None)
    # a face of optima: minimise -x_0 over a box with a redundant copy of its face
    a2 = np.vstack([np.eye(n), -np.eye(n), np.eye(n)[:1]])
    b2 = np.concatenate([np.ones(n), np.ones(n), [1.0]])
    c2 = np.zeros(n)
    c2[0] = -1.0
    ref2 = _highs(c2, a2, b2, None)
    _assert_same_optimum(ipm.solve_dense(c2, a2, b2, None), ref2, c2, a2, b2, None)


def test_row_generation_adds_many_rounds() -> None:
    """Starting from the rows that matter least, row generation needs several rounds and still ends at
    the full LP's optimum."""
    rng = np.random.default_rng(10)
    c, a, b, bounds = _linf_lp(rng, 1500, 30)
    ref = _highs(c, a, b, bounds)
    x_ls = np.linalg.lstsq(a[:1500, :30], b[:1500], rcond=None)[0]
    slack = b - a[:, :30] @ x_ls
    worst_first = np.argsort(-slack)[:40]  # the rows farthest from binding
    session = ipm.DenseSession(c, a, b, bounds, initial_rows=worst_first)
    res = session.solve()
    _assert_same_optimum(res, ref, c, a, b, bounds)
    assert session.rounds >= 3, session.rounds
    assert "interior point" in res.message


def test_session_right_hand_sides_change_like_lp_session() -> None:
    rng = np.random.default_rng(11)
    c, a, b, bounds = _linf_lp(rng, 400, 25, one_sided=0.0)
    m = 400
    session = ipm.DenseSession(c, a, b, bounds, initial_rows=np.arange(60))
    highs = lp.LPSession(c, a, b, bounds)
    for off in (0, 50, 150):
        rhs = b.copy()
        rhs[m : m + off] = np.inf  # switch lower rows off, as growing ε does
        session.set_rhs(rhs)
        highs.set_rhs(rhs)
        ours, ref = session.solve(), highs.solve()
        assert ours.ok and ref.ok
        assert ours.objective == pytest.approx(ref.objective, rel=1e-7, abs=1e-12)


def test_infeasible_and_unbounded_fall_back_to_highs() -> None:
    n = 5
    # x_0 <= -1 and -x_0 <= -1: infeasible
    a = np.vstack([np.eye(n), -np.eye(n)])
    b = np.concatenate([[-1.0], np.ones(n - 1), [-1.0], np.ones(n - 1)])
    res = ipm.solve_dense(np.ones(n), a, b, None, row_generation=False)
    assert res.status is SolverStatus.INFEASIBLE and res.x is None
    assert "by HiGHS" in res.message
    # min -x_0 with x_0 only bounded below: unbounded
    a2 = -np.eye(n)
    c2 = np.zeros(n)
    c2[0] = -1.0
    res2 = ipm.solve_dense(c2, a2, np.ones(n), None, row_generation=False)
    assert res2.status in (SolverStatus.UNBOUNDED, SolverStatus.INFEASIBLE_OR_UNBOUNDED)
    assert "by HiGHS" in res2.message


def test_no_convergence_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    c, a, b, bounds = _linf_lp(rng, 300, 20)
    ref = _highs(c, a, b, bounds)
    monkeypatch.setattr(ipm, "MAX_ITERATIONS", 3)
    res = ipm.solve_dense(c, a, b, bounds)
    _assert_same_optimum(res, ref, c, a, b, bounds)
    assert "by HiGHS" in res.message and "no convergence" in res.message
    out = ipm.interior_point(c, a, b, *bounds, max_iterations=3)
    assert not out.converged and "no convergence" in out.message


def test_a_threshold_within_the_accuracy_goes_to_highs() -> None:
    rng = np.random.default_rng(13)
    c, a, b, bounds = _linf_lp(rng, 300, 20)
    ref = _highs(c, a, b, bounds)
    session = ipm.DenseSession(c, a, b, bounds)
    near = session.solve(threshold=ref.objective * (1 + 1e-12))
    assert near.ok and "by HiGHS" in near.message and "threshold" in near.message
    far = session.solve(threshold=2 * ref.objective)
    assert far.ok and "by HiGHS" not in far.message
    assert session.last is not None and session.last.converged


def test_time_limit() -> None:
    rng = np.random.default_rng(14)
    c, a, b, bounds = _linf_lp(rng, 300, 20)
    res = ipm.solve_dense(c, a, b, bounds, time_limit=0.0)
    assert res.status is SolverStatus.TIME_LIMIT and res.x is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="b_ub"):
        ipm.DenseSession(np.ones(2), np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="finite or \\+inf"):
        ipm.DenseSession(np.ones(2), np.ones((2, 2)), np.array([1.0, -np.inf]))


def test_linf_routed_through_the_interior_point_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mid-size model's layer LPs through the dense interior point method: the same verdict, a latent
    within tolerance of the HiGHS route's, and the result holds under onnxruntime."""
    g = make_generator([12, 80, 400], seed=21)
    rng = np.random.default_rng(3)
    z_true = rng.normal(size=g.latent_dim)
    x0 = g.forward(z_true)
    level = 1e-3 * float(np.max(np.abs(x0)))
    x = x0 + rng.uniform(-level, level, size=x0.shape)
    settings = Settings(refine=False)  # the method's own latent
    highs = invert(g, x, method="linf", noise=level, settings=settings)
    highs_full = invert(g, x, method="linf", noise=level)

    calls = []
    original = ipm.DenseSession.solve

    def counted(self, *args, **kwargs):
        res = original(self, *args, **kwargs)
        calls.append(res.message)
        return res

    monkeypatch.setattr(ipm, "DENSE_NONZEROS", 1)
    monkeypatch.setattr(ipm, "DENSE_COLUMNS", 1)
    monkeypatch.setattr(ipm.DenseSession, "solve", counted)
    ours = invert(g, x, method="linf", noise=level, settings=settings)
    assert len(calls) >= 2 and all("interior point" in m for m in calls), calls
    assert ours.verdict is highs.verdict
    assert [s.epsilon for s in ours.steps] == pytest.approx([s.epsilon for s in highs.steps], rel=1e-6)
    assert rel_err(ours.z, highs.z) <= 1e-5
    assert rel_err(ours.z, z_true) <= 1e-2
    assert_contract(g, x, ours, in_range=True, known=[z_true])
    # and with the pipeline's refinement, as users run it
    full = invert(g, x, method="linf", noise=level)
    assert full.verdict is highs_full.verdict
    assert rel_err(full.z, highs_full.z) <= 1e-5
    assert_contract(g, x, full, in_range=True, known=[z_true])


def test_a_failed_working_set_is_retried_on_all_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A working-set solve that does not converge is repeated on all rows before HiGHS is asked."""
    rng = np.random.default_rng(15)
    c, a, b, bounds = _linf_lp(rng, 400, 20)
    ref = _highs(c, a, b, bounds)
    original = ipm.interior_point
    sizes = []

    def failing_on_subsets(c_, a_, b_, *args, **kwargs):
        sizes.append(b_.size)
        if b_.size < b.size:
            return dataclasses.replace(original(c_, a_, b_, *args, max_iterations=1), converged=False)
        return original(c_, a_, b_, *args, **kwargs)

    monkeypatch.setattr(ipm, "interior_point", failing_on_subsets)
    res = ipm.solve_dense(c, a, b, bounds, initial_rows=np.arange(60))
    _assert_same_optimum(res, ref, c, a, b, bounds)
    assert "by HiGHS" not in res.message and sizes[-1] == b.size


def test_linf_passes_every_epsilon_as_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer LP of the l_inf method is decided against its ε: with a band so wide that no interior
    point optimum is clear of it, every one is settled by HiGHS, and the answer is the HiGHS route's."""
    g = make_generator([12, 80, 400], seed=22)
    rng = np.random.default_rng(4)
    z_true = rng.normal(size=g.latent_dim)
    x0 = g.forward(z_true)
    level = 1e-3 * float(np.max(np.abs(x0)))
    x = x0 + rng.uniform(-level, level, size=x0.shape)
    settings = Settings(refine=False)
    highs = invert(g, x, method="linf", noise=level, settings=settings)
    thresholds = []
    original = ipm.DenseSession.solve

    def recorded(self, time_limit=None, threshold=None):
        res = original(self, time_limit, threshold)
        thresholds.append((threshold, res.message))
        return res

    monkeypatch.setattr(ipm, "DENSE_NONZEROS", 1)
    monkeypatch.setattr(ipm, "DENSE_COLUMNS", 1)
    monkeypatch.setattr(ipm, "DECIDE_BAND", 1e30)
    monkeypatch.setattr(ipm.DenseSession, "solve", recorded)
    ours = invert(g, x, method="linf", noise=level, settings=settings)
    # the method's own solves (the evidence stage's LP for a "no preimage" proof passes none)
    decided = [(t, m) for t, m in thresholds if t is not None]
    assert len(decided) >= 2
    assert all("by HiGHS" in m and "threshold" in m for t, m in decided), decided
    assert ours.verdict is highs.verdict
    assert [s.epsilon for s in ours.steps] == pytest.approx([s.epsilon for s in highs.steps], rel=1e-6)
    assert rel_err(ours.z, highs.z) <= 1e-5
    assert_contract(g, x, ours, in_range=True, known=[z_true])


@pytest.mark.parametrize("far", [1e10, 1e14])
def test_a_far_bound_or_a_tiny_row_does_not_loosen_the_optimum(far: float) -> None:
    # a bound that never binds, or a row of tiny coefficients (unit length after scaling: a huge
    # right-hand side), once set the scale of every residual and of the gap: the method stopped at
    # 60% above the optimum and claimed it
    rng = np.random.default_rng(0)
    c, a, b, (lower, upper) = _linf_lp(rng, 400, 60, one_sided=0.0)
    upper = upper.copy()
    upper[:-1] = far
    ref = _highs(c, a, b, (lower, upper))
    _assert_same_optimum(ipm.solve_dense(c, a, b, (lower, upper)), ref, c, a, b, (lower, upper))
    tiny = np.zeros((1, a.shape[1]))
    tiny[0, 0] = 1e-12
    a2, b2 = np.vstack([a, tiny]), np.append(b, 1.0)
    ref2 = _highs(c, a2, b2, (lower, upper))
    _assert_same_optimum(ipm.solve_dense(c, a2, b2, (lower, upper)), ref2, c, a2, b2, (lower, upper))


def test_an_lp_without_rows_or_bounds_goes_to_highs() -> None:
    out = ipm.interior_point(
        np.array([1.0, -1.0]), np.zeros((0, 2)), np.zeros(0), np.full(2, -np.inf), np.full(2, np.inf)
    )
    assert not out.converged
    res = ipm.solve_dense(
        np.array([1.0, -1.0]), np.zeros((0, 2)), np.zeros(0), (np.full(2, -np.inf), np.full(2, np.inf))
    )
    assert res.status is SolverStatus.UNBOUNDED
    assert "by HiGHS" in res.message
