"""The shortcuts taken for speed give the answers of the slow routes they replace (no timing here).

* an LP session re-solved warm after changing right-hand sides, bounds or the objective ends where
  a fresh LP does; ``+inf`` switches a row off;
* the block-wise Gram route of ``solve_rows`` equals the gathered one;
* the infeasibility proof before the widened eq. (4) LP never contradicts the LP;
* the preimage dimension without its LP equals the LP's answer;
* the l_1 LP's dual gives the primal optimum;
* the audit's Cholesky rank test agrees with the SVD rank.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxinv.inversion import exact, identifiability, l1, linear, linf, lp
from onnxinv.inversion.framework import LayerContext, Settings, clean_targets
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import build_targets, input_bounds
from onnxinv.layers import Activation, Layer


def _chebyshev(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``min t`` s.t. ``|W u - y| <= t`` as ``A [u; t] <= b``: a tall l_inf fit."""
    w = rng.standard_normal((m, n))
    y = rng.standard_normal(m)
    a = np.vstack([np.hstack([w, -np.ones((m, 1))]), np.hstack([-w, -np.ones((m, 1))])])
    c = np.zeros(n + 1)
    c[-1] = 1.0
    return c, a, np.concatenate([y, -y])


@pytest.mark.parametrize("row_generation", [False, True])
def test_session_warm_resolves_match_fresh_lps(row_generation: bool) -> None:
    rng = np.random.default_rng(3)
    c, a, b = _chebyshev(rng, 80, 6)
    session = lp.LPSession(c, a, b, row_generation=row_generation, initial_rows=np.arange(14))
    first = session.solve()
    fresh = lp.solve_lp(c, a, b)
    assert first.ok and first.objective == pytest.approx(fresh.objective, rel=1e-9)
    # switch the lower half of 30 two-sided rows off, then move some right-hand sides
    off = b.copy()
    off[80:110] = np.inf
    session.set_rhs(off)
    warm = session.solve()
    keep = np.isfinite(off)
    cold = lp.solve_lp(c, a[keep], off[keep])
    assert warm.ok and warm.objective == pytest.approx(cold.objective, rel=1e-9)
    assert warm.objective <= first.objective + 1e-12  # fewer rows, smaller optimum
    moved = off.copy()
    moved[:10] += 0.5
    session.set_rhs(moved)
    again = session.solve()
    keep = np.isfinite(moved)
    assert again.objective == pytest.approx(lp.solve_lp(c, a[keep], moved[keep]).objective, rel=1e-9)
    assert session.solves == 3


def test_session_objective_and_bounds_changes() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((30, 5))
    b = rng.random(30) + 0.1
    box = (np.full(5, -2.0), np.full(5, 2.0))
    session = lp.LPSession(np.zeros(5), a, b, box)
    for m in range(5):
        for sign in (1.0, -1.0):
            c = np.zeros(5)
            c[m] = -sign
            session.set_objective(c)
            got = session.solve()
            want = lp.solve_lp(c, a, b, bounds=box)
            assert got.ok and got.objective == pytest.approx(want.objective, rel=1e-9, abs=1e-12)
    session.set_bounds(np.full(5, -0.5), np.full(5, 0.5))
    got = session.solve()
    assert got.objective == pytest.approx(lp.solve_lp(c, a, b, bounds=(-0.5, 0.5)).objective, rel=1e-9)


def test_session_row_lower_bounds_and_duals() -> None:
    """``b_lb <= A x <= b_ub`` with equality rows; the row duals are the dual LP's solution."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((4, 9))
    c = rng.random(9)
    session = lp.LPSession(c, a, np.zeros(4), (np.zeros(9), np.ones(9)), b_lb=np.zeros(4))
    res = session.solve()
    want = lp.solve_lp(c, None, None, a, np.zeros(4), (0.0, 1.0))
    assert res.ok and res.objective == pytest.approx(want.objective, abs=1e-9)
    assert session.row_dual is not None and session.row_dual.shape == (4,)
    with pytest.raises(ValueError, match="row generation"):
        lp.LPSession(c, a, np.zeros(4), b_lb=np.zeros(4), row_generation=True)


def test_session_infeasible_and_unbounded() -> None:
    infeasible = lp.LPSession(np.zeros(1), np.array([[1.0], [-1.0]]), np.array([-1.0, -1.0]))
    assert infeasible.solve().status is SolverStatus.INFEASIBLE
    unbounded = lp.LPSession(np.array([-1.0]), np.array([[-1.0]]), np.array([0.0]))
    assert unbounded.solve().status in (SolverStatus.UNBOUNDED, SolverStatus.INFEASIBLE_OR_UNBOUNDED)


def test_block_gram_equals_gathered(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((300, 40))
    rows = rng.random(300) < 0.6
    t = rng.standard_normal(int(rows.sum()))
    weights = rng.random(int(rows.sum())) + 0.5
    gathered = linear.solve_active(w[rows], t, weights)
    monkeypatch.setattr(linear, "BLOCK_ENTRIES", 500)
    blocked = linear.solve_rows(w, rows, t, weights)
    np.testing.assert_allclose(blocked.u, gathered.u, rtol=1e-10, atol=1e-12)
    assert blocked.rank == gathered.rank == 40
    assert blocked.residual == pytest.approx(gathered.residual, rel=1e-9)
    assert blocked.rms == pytest.approx(gathered.rms, rel=1e-9)
    assert blocked.spread == pytest.approx(gathered.spread, rel=1e-9)


def test_cholesky_condition_estimate_tracks_the_true_condition() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((120, 30)) @ np.diag(np.logspace(0, 3, 30))
    ls = linear.solve_active(a, rng.standard_normal(120))
    true = np.linalg.cond(a)
    assert ls.method == "cholesky" and true / 10 <= ls.cond <= 10 * true
    bad = a.copy()
    bad[:, 1] = bad[:, 0] * (1 + 1e-12)
    assert linear.solve_active(bad, rng.standard_normal(120)).method == "qr"
    assert linear.gram_full_rank(a.T @ a) and not linear.gram_full_rank(bad.T @ bad)


def _ctx(layer: Layer, y: np.ndarray, bounds=None) -> LayerContext:
    return LayerContext(1, layer, y, None, bounds, 0.0, None, float("inf"), Settings(), 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_misfit_proof_never_contradicts_the_lp(seed: int) -> None:
    """Break active rows of an identifiable layer by a little and by a lot: wherever the proof says
    "no point", the widened eq. (4) LP has none either."""
    rng = np.random.default_rng(seed)
    layer = Layer(rng.standard_normal((60, 8)) / np.sqrt(60), np.zeros(60), Activation.RELU)
    u0 = np.abs(rng.standard_normal(8))
    y = layer.forward(u0)
    on = np.flatnonzero(y > 0)
    proved = []
    for size in (1e-7, 1e-4, 1e-2, 1.0):
        broken = y.copy()
        broken[on[:2]] = 0.0
        broken[on[2]] += size
        ctx = _ctx(layer, broken, (np.zeros(8), np.full(8, np.inf)))
        targets = clean_targets(ctx)
        w, b = targets.matrices(layer)
        eq = targets.equality
        ls = linear.solve_rows(w, eq, targets.lower[eq] - b[eq], 1.0 / targets.lower_scale[eq])
        delta = ctx.tolerance()
        proof = exact._misfit_proof(w, b, targets, ls, int(eq.sum()), delta)
        res = linear.layer_lp(layer, targets, ctx.bounds, slack=delta)
        if proof is not None:
            assert res.status is SolverStatus.INFEASIBLE, (size, proof, res.status)
            proved.append(size)
    assert proved  # two active units reported as off: proved without the LP
    # consistent data: nothing to prove
    ctx = _ctx(layer, y, (np.zeros(8), np.full(8, np.inf)))
    targets = clean_targets(ctx)
    w, b = targets.matrices(layer)
    eq = targets.equality
    ls = linear.solve_rows(w, eq, targets.lower[eq] - b[eq], 1.0 / targets.lower_scale[eq])
    assert exact._misfit_proof(w, b, targets, ls, int(eq.sum()), ctx.tolerance()) is None


@pytest.mark.parametrize("seed", range(5))
def test_dimension_without_the_lp_equals_the_lp(seed: int, monkeypatch) -> None:
    rng = np.random.default_rng(seed)
    shortcut = []
    real = identifiability._leaves_every_constraint

    def spy(*args):
        shortcut.append(real(*args))
        return shortcut[-1]

    # a contracting layer (few tight constraints) and an expanding one (as many as unknowns)
    for n_out, n_in in ((12, 30), (40, 10)):
        layer = Layer(rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out) * 0.1, Activation.RELU)
        u = np.maximum(rng.standard_normal(n_in), 0.0)
        y = layer.forward(u)
        bounds = (np.zeros(n_in), np.full(n_in, np.inf))
        targets = build_targets(layer, y, None, 1e-9 * float(np.max(np.abs(y))), noisy=False)
        monkeypatch.setattr(identifiability, "_leaves_every_constraint", spy)
        fast = identifiability._preimage_dimension(layer, targets, bounds, u, 1e-9, None, None)
        monkeypatch.setattr(identifiability, "_leaves_every_constraint", lambda *args: False)
        slow = identifiability._preimage_dimension(layer, targets, bounds, u, 1e-9, None, None)
        monkeypatch.undo()
        assert (fast.dim, fast.rank, fast.implicit) == (slow.dim, slow.rank, slow.implicit)
        for name in ("upper_rows", "lower_rows", "at_lower", "at_upper"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    assert shortcut and shortcut[0]  # the contracting layer's answer came without the LP


@pytest.mark.parametrize("hidden", [False, True])
def test_l1_dual_gives_the_primal_optimum(hidden: bool) -> None:
    rng = np.random.default_rng(4)
    layer = Layer(rng.standard_normal((50, 12)) / np.sqrt(50), np.zeros(50), Activation.RELU)
    u0 = np.abs(rng.standard_normal(12)) if hidden else rng.standard_normal(12)
    y = layer.forward(u0) + rng.uniform(-1e-3, 1e-3, 50)
    layers = (Layer(np.eye(12), np.zeros(12), Activation.RELU), layer) if hidden else (layer,)
    ctx = LayerContext(len(layers) - 1, layer, y, None, input_bounds(layers, len(layers) - 1), 1e-3, 1e-3,
                       float("inf"), Settings(), 0.0)  # fmt: skip
    dual = l1._Dual(ctx)
    for eps in (1e-3, 3e-3, 1e-2):
        targets = build_targets(layer, y, None, eps, noisy=True)
        via_dual = dual.solve(targets)
        primal = l1._min_l1(ctx, targets)
        assert via_dual is not None and via_dual.ok and primal.ok
        assert via_dual.objective == pytest.approx(primal.objective, rel=1e-7, abs=1e-10)
    assert dual.session is not None and dual.session.solves == 3


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("hidden", [False, True])
def test_linf_layer_lp_by_row_generation_matches_the_full_lp(seed: int, hidden: bool) -> None:
    """Algorithm 1's layer LP on random ReLU layers, solved on a working set of rows grown by the
    violated ones (alone and as the warm ε family of one session), has the optimum of the full LP."""
    rng = np.random.default_rng(seed)
    m, n = (120 + 40 * seed, 10 + 3 * seed)
    layer = Layer(rng.standard_normal((m, n)) / np.sqrt(m), rng.normal(0.0, 0.1, m), Activation.RELU)
    u0 = np.abs(rng.standard_normal(n)) if hidden else rng.standard_normal(n)
    clean = layer.forward(u0)
    y = clean + rng.uniform(-1e-3, 1e-3, m) * np.max(np.abs(clean))
    layers = (Layer(np.eye(n), np.zeros(n), Activation.RELU), layer) if hidden else (layer,)
    bounds = input_bounds(layers, len(layers) - 1)
    ctx = LayerContext(len(layers) - 1, layer, y, None, bounds, 0.0, 1e-3, float("inf"), Settings(), 0.0)
    family = linf._Family(ctx)
    scale = float(np.max(np.abs(y)))
    for eps in (1e-4 * scale, 1e-3 * scale, 3e-3 * scale):  # infeasible at first, then feasible
        targets = build_targets(layer, y, None, eps, noisy=True)
        c, a_ub, b_ub, box = linear.widening_lp(layer, targets, bounds)
        full = lp.solve_lp(c, a_ub, b_ub, bounds=box)
        alone = linf.min_delta(ctx, targets)
        warm = family.min_delta(targets)
        assert full.ok and alone.ok and warm.ok
        for res in (alone, warm):
            assert res.objective == pytest.approx(full.objective, rel=1e-7, abs=1e-12)
            assert float(np.max(a_ub @ res.x - b_ub)) <= 1e-9 * (1.0 + float(np.max(np.abs(b_ub))))
    assert family.session is not None and family.session.solves == 3


def test_row_generation_proves_infeasibility_like_the_full_lp() -> None:
    """Two contradicting rows (x_0 <= -1 and x_0 >= 1) among many slack ones, outside the first
    working set: the grown relaxation ends infeasible, as the full LP does."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((300, 8))
    b = rng.uniform(1.0, 2.0, 300)
    a[250], b[250] = np.eye(8)[0], -1.0
    a[280], b[280] = -np.eye(8)[0], -1.0
    c = rng.standard_normal(8)
    full = lp.solve_lp(c, a, b, bounds=(-3.0, 3.0))
    gen = lp.solve_lp(c, a, b, bounds=(-3.0, 3.0), row_generation=True, initial_rows=np.arange(20))
    session = lp.LPSession(c, a, b, (-3.0, 3.0), row_generation=True, initial_rows=np.arange(20))
    assert full.status is SolverStatus.INFEASIBLE
    assert gen.status is SolverStatus.INFEASIBLE
    assert session.solve().status is SolverStatus.INFEASIBLE


def test_row_generation_on_a_degenerate_fit() -> None:
    """An exact fit (every two-sided row tight at δ = 0) with duplicated rows: the most degenerate
    l_inf LP; row generation and the full LP both end at δ = 0 at a point that meets every row."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((100, 6))
    w = np.vstack([w, w[:40]])  # duplicated rows
    y = w @ rng.standard_normal(6)
    c = np.zeros(7)
    c[-1] = 1.0
    a = np.vstack([np.hstack([w, -np.ones((140, 1))]), np.hstack([-w, -np.ones((140, 1))])])
    b = np.concatenate([y, -y])
    box = (np.append(np.full(6, -np.inf), 0.0), np.full(7, np.inf))
    full = lp.solve_lp(c, a, b, bounds=box)
    gen = lp.solve_lp(c, a, b, bounds=box, row_generation=True, initial_rows=np.arange(5))
    session = lp.LPSession(c, a, b, box, row_generation=True, initial_rows=np.arange(5))
    for res in (full, gen, session.solve()):
        assert res.ok and res.x is not None
        assert res.objective == pytest.approx(0.0, abs=1e-9)
        assert float(np.max(a @ res.x - b)) <= 1e-8


@pytest.mark.parametrize("guess", ["optimum", "rough", "wrong"])
def test_session_start_basis_gives_the_same_optimum(guess: str) -> None:
    """A start point only picks the first basis: good, rough or bad, the optimum is the fresh LP's, and
    a good guess saves simplex iterations."""
    rng = np.random.default_rng(11)
    c, a, b = _chebyshev(rng, 300, 60)
    bounds = (np.append(np.full(60, -np.inf), 0.0), np.full(61, np.inf))
    fresh = lp.solve_lp(c, a, b, bounds=bounds)
    assert fresh.ok and fresh.x is not None
    start = {
        "optimum": fresh.x,
        "rough": fresh.x + 1e-3 * rng.standard_normal(61),
        "wrong": rng.standard_normal(61),
    }[guess]
    cold = lp.LPSession(c, a, b, bounds).solve()
    warm = lp.LPSession(c, a, b, bounds, start=start).solve()
    assert warm.ok and warm.objective == pytest.approx(fresh.objective, rel=1e-9)
    assert warm.x is not None and np.allclose(warm.x, fresh.x, atol=1e-7)
    if guess == "optimum":
        assert warm.iterations < cold.iterations / 5
    with pytest.raises(ValueError, match="start must have 61 entries"):
        lp.LPSession(c, a, b, bounds, start=np.zeros(3))


@pytest.mark.parametrize("row_generation", [False, True])
def test_session_start_with_a_singular_crash_basis(row_generation: bool) -> None:
    """Every row twice: the crash basis from a point makes both copies of its tightest rows nonbasic,
    a singular basis handed to HiGHS as square (not alien); HiGHS repairs it and the optimum is the
    fresh LP's."""
    rng = np.random.default_rng(15)
    c, a, b = _chebyshev(rng, 40, 6)
    a, b = np.vstack([a, a]), np.concatenate([b, b])
    fresh = lp.solve_lp(c, a, b)
    assert fresh.ok and fresh.x is not None
    for start in (fresh.x, fresh.x + 1e-3 * rng.standard_normal(7)):
        res = lp.LPSession(c, a, b, row_generation=row_generation, start=start).solve()
        assert res.ok and res.objective == pytest.approx(fresh.objective, rel=1e-9, abs=1e-12)
        assert res.x is not None and float(np.max(a @ res.x - b)) <= 1e-8


def test_session_start_with_row_generation_matches_fresh_lp() -> None:
    rng = np.random.default_rng(12)
    c, a, b = _chebyshev(rng, 400, 50)
    fresh = lp.solve_lp(c, a, b)
    initial = np.arange(0, 800, 4)
    guess = linf._guess(c, a[initial], b[initial], (np.full(51, -np.inf), np.full(51, np.inf)))
    assert guess is not None
    session = lp.LPSession(c, a, b, row_generation=True, initial_rows=initial, start=guess)
    res = session.solve()
    assert res.ok and res.objective == pytest.approx(fresh.objective, rel=1e-9)


@pytest.mark.parametrize("exact_start", [True, False])
def test_session_start_gives_the_first_working_set(exact_start: bool) -> None:
    """With row generation a start point picks the first working rows: every row taking part that it
    violates and the START_ROWS·n nearest to binding, never a row switched off. From the optimum
    itself no row is added later; from a rough guess the optimum is still the fresh LP's."""
    rng = np.random.default_rng(13)
    c, a, b = _chebyshev(rng, 400, 50)
    off = rng.choice(b.size, 40, replace=False)
    b[off] = np.inf
    fresh = lp.solve_lp(c, a[np.isfinite(b)], b[np.isfinite(b)])
    assert fresh.ok and fresh.x is not None
    start = fresh.x if exact_start else fresh.x + 1e-3 * rng.standard_normal(51)
    session = lp.LPSession(c, a, b, row_generation=True, initial_rows=np.arange(8), start=start)
    on = np.isfinite(b)
    first = session._rows_near(start, on)
    on_rows = np.flatnonzero(on)
    scaled = (b[on] - a[on] @ start) / (1.0 + np.abs(b[on]))
    assert set(on_rows[scaled < -1e-9]) <= set(first.tolist())
    assert not set(off.tolist()) & set(first.tolist())
    assert first.size >= np.ceil(lp.START_ROWS * 51) and first.size < 2 * 52
    res = session.solve()
    assert res.ok and res.objective == pytest.approx(fresh.objective, rel=1e-9)
    assert res.x is not None and np.allclose(res.x, fresh.x, atol=1e-7)
    if exact_start:
        assert session._order.size == first.size  # nothing added after the first run


def test_session_recheck_equals_the_sliced_problems() -> None:
    """The session re-checks a point from one product with all rows: the same violation, bit for bit,
    as the LP of the rows taking part (rows off, lower bounds as negated rows, variable bounds)."""
    rng = np.random.default_rng(14)
    a = rng.standard_normal((30, 6))
    b = rng.standard_normal(30)
    b[[2, 7, 11]] = np.inf
    low = np.full(30, -np.inf)
    low[[0, 5, 7, 20]] = b[[0, 5, 7, 20]] - 0.5
    low[7] = -1.0  # a row kept only for its lower bound
    bounds = (np.full(6, -2.0), np.full(6, 3.0))
    session = lp.LPSession(np.ones(6), a, b, bounds, b_lb=low)
    problem = session.problem()
    points = [scale * rng.standard_normal(6) for scale in (0.0, 0.5, 4.0)]
    for x in points:
        assert session.violation(x) == problem.violation(x)
        assert session.recheck(x, SolverStatus.OPTIMAL, 1e-3) == problem.recheck(
            x, SolverStatus.OPTIMAL, 1e-3
        )
    # a point that only breaks lower bounds: the largest violation is a negated row's
    x = points[1]
    ax = a @ x
    tight = lp.LPSession(np.ones(6), a, ax + 1.0, bounds, b_lb=np.where(np.isfinite(low), ax + 0.25, -np.inf))
    assert tight.violation(x) == tight.problem().violation(x) > 0.0
    assert tight.violation(x) == pytest.approx(
        float(np.max(0.25 / (1.0 + np.abs(ax[np.isfinite(low)] + 0.25))))
    )
    assert session.violation(np.full(6, np.nan)) == np.inf and session.violation(np.zeros(3)) == np.inf


@pytest.mark.parametrize("shape", [(40, 7), (0, 5), (3, 0), (1, 1)])
def test_dense_rows_to_csr_equals_scipy(shape: tuple[int, int]) -> None:
    dense = np.random.default_rng(5).standard_normal(shape)
    ours = lp._as_csr(dense)
    ours.check_format(full_check=True)
    assert ours.shape == dense.shape and ours.has_sorted_indices
    assert np.array_equal(ours.toarray(), dense)
    dense[:] = 0.0  # a copy, not a view of the caller's array
    assert ours.nnz == dense.size and (shape[0] * shape[1] == 0 or np.any(ours.data != 0))


def _noisy_layer_ctx(seed: int, m: int, n: int, noise: float = 1e-3, told: float = 1e-3) -> LayerContext:
    """A ReLU layer fed by a ReLU layer, its output with uniform noise of ``noise·max|y|``; the method
    is told ``told`` (a smaller value makes ε grow)."""
    rng = np.random.default_rng(seed)
    layer = Layer(rng.standard_normal((m, n)) / np.sqrt(m), np.zeros(m), Activation.RELU)
    clean = layer.forward(np.abs(rng.standard_normal(n)))
    y = clean + rng.uniform(-noise, noise, m) * np.max(np.abs(clean))
    layers = (Layer(np.eye(n), np.zeros(n), Activation.RELU), layer)
    return LayerContext(1, layer, y, None, input_bounds(layers, 1), 0.0, told, float("inf"), Settings(), 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_linf_layer_from_a_guess_matches_the_plain_simplex(seed: int) -> None:
    """The interior point guess only shortens the simplex's path: the same u, ε and steps."""
    ctx = _noisy_layer_ctx(seed, 400, 80)
    family = linf._Family(ctx, guess=True)
    guessed = linf._solve_layer(ctx, family)
    plain = linf._solve_layer(ctx, linf._Family(ctx, guess=False))
    assert family.guessed and guessed.preimage_dim == 0
    assert guessed.epsilon == plain.epsilon and guessed.message == plain.message
    assert np.allclose(guessed.u, plain.u, rtol=1e-9, atol=1e-9)
    assert np.array_equal(linf.solve_layer(ctx).u, guessed.u)


def test_linf_layer_not_identifiable_is_solved_without_the_guess() -> None:
    """Where the optimum is a face the simplex's path picks the point: the layer comes back exactly as
    the plain simplex returns it."""
    ctx = _noisy_layer_ctx(1, 150, 70, noise=0.05, told=1e-5)  # ε grows until few rows are sign-certain
    family = linf._Family(ctx, guess=True)
    assert linf._solve_layer(ctx, family).preimage_dim > 0 and family.guessed
    plain = linf._solve_layer(ctx, linf._Family(ctx, guess=False))
    chosen = linf.solve_layer(ctx)
    assert chosen.preimage_dim == plain.preimage_dim > 0
    assert np.array_equal(chosen.u, plain.u) and chosen.message == plain.message


@pytest.mark.parametrize("hidden", [False, True])
def test_l1_dual_from_a_least_squares_basis_matches_the_slack_start(hidden: bool) -> None:
    """The starting basis of the l_1 dual (LPSession ``basis=``) changes the iterations, not the answer."""
    rng = np.random.default_rng(8)
    layer = Layer(rng.standard_normal((300, 40)) / np.sqrt(300), np.zeros(300), Activation.RELU)
    u0 = np.abs(rng.standard_normal(40)) if hidden else rng.standard_normal(40)
    y = layer.forward(u0) + rng.uniform(-1e-3, 1e-3, 300)
    layers = (Layer(np.eye(40), np.zeros(40), Activation.RELU), layer) if hidden else (layer,)
    ctx = LayerContext(len(layers) - 1, layer, y, None, input_bounds(layers, len(layers) - 1), 0.0, 1e-3,
                       float("inf"), Settings(), 0.0)  # fmt: skip
    targets = build_targets(layer, y, None, 1e-3 * float(np.max(np.abs(y))), noisy=True)
    guessed, plain = l1._Dual(ctx, guess=True), l1._Dual(ctx, guess=False)
    a, b = guessed.solve(targets), plain.solve(targets)
    assert guessed.guessed and not plain.guessed
    assert a is not None and b is not None and a.ok and b.ok
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    assert np.allclose(a.x, b.x, atol=1e-7) and a.iterations < b.iterations
    with pytest.raises(ValueError, match="basis must give"):
        lp.LPSession(np.zeros(3), np.eye(3), np.ones(3), basis=(np.zeros(3), np.zeros(2)))
