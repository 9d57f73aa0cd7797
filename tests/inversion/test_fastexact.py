"""The exact method's fast path (onnxinv.inversion.fastexact) gives the generic pipeline's answers.

Every comparison runs the same call twice: as shipped, and with the fast path switched off
(``api.FAST_METHODS = ()``), on models saved the way exporters write a linear layer (MatMul by the
transposed weight, Add of the bias, Relu; float32) and loaded back with ``onnxinv.load``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from builders import init, model, node, save

import onnxinv
from onnxinv.building import random_generator_layers
from onnxinv.inversion import api, exact, fastexact
from onnxinv.inversion.framework import Problem, Settings


def _exported(tmp_path, sizes: list[int], seed: int = 0) -> onnxinv.Generator:
    """A ReLU MLP as torch.onnx writes nn.Linear + nn.ReLU: MatMul(h, Wᵀ) + b, Relu after each."""
    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "z"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(0.0, 1.0 / np.sqrt(n_out), size=(n_out, n_in))
        inits += [init(f"w{i}", w.T), init(f"b{i}", np.zeros(n_out))]
        nodes += [
            node("MatMul", [h, f"w{i}"], [f"m{i}"], name=f"/fc{i}/MatMul"),
            node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"/fc{i}/Add"),
        ]
        out = "x" if i == len(sizes) - 2 else f"h{i + 1}"
        nodes.append(node("Relu", [f"a{i}"], [out], name=f"/act{i}/Relu"))
        h = out
    m = model(nodes, inits, input_shape=("N", sizes[0]), output_shape=("N", sizes[-1]))
    return onnxinv.load(save(m, tmp_path, f"mlp_{'_'.join(map(str, sizes))}.onnx"))


@pytest.fixture
def generic(monkeypatch):
    """``invert`` with the fast path switched off."""

    def run(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(api, "FAST_METHODS", ())
            return onnxinv.invert(*args, **kwargs)

    return run


def _assert_same(fast, slow, bitwise: bool = True) -> None:
    assert (fast.verdict, fast.reason, fast.method, fast.refined) == (
        slow.verdict,
        slow.reason,
        slow.method,
        slow.refined,
    )
    assert fast.message == slow.message
    assert fast.evidence.kind is slow.evidence.kind
    assert fast.evidence.summary == slow.evidence.summary
    assert fast.evidence.numbers == slow.evidence.numbers
    assert [e.kind for e in fast.considered] == [e.kind for e in slow.considered]
    assert fast.attempts == slow.attempts
    assert fast.fit == slow.fit
    if bitwise:
        assert np.array_equal(fast.z, slow.z)
    else:
        np.testing.assert_allclose(fast.z, slow.z, rtol=1e-9, atol=1e-12)
    assert len(fast.steps) == len(slow.steps)
    for a, b in zip(fast.steps, slow.steps):
        assert (a.layer, a.active_rows, a.rank, a.unknowns, a.preimage_dim, a.status, a.identifiable) == (
            b.layer,
            b.active_rows,
            b.rank,
            b.unknowns,
            b.preimage_dim,
            b.status,
            b.identifiable,
        )
        assert (a.message, a.certificate, a.observed_rows, a.epsilon) == (
            b.message,
            b.certificate,
            b.observed_rows,
            b.epsilon,
        )
        assert a.residual == pytest.approx(b.residual, rel=1e-6, abs=1e-15)
    assert [s.to_dict() | {"seconds": 0} for s in fast.analysis] == [
        s.to_dict() | {"seconds": 0} for s in slow.analysis
    ]


@pytest.mark.parametrize("method", ["exact", "auto"])
@pytest.mark.parametrize("sizes", [[20, 100, 500], [8, 30, 100, 300]], ids=["expansive", "three-layer"])
def test_clean_observations_get_the_generic_answer(tmp_path, generic, method, sizes):
    g = _exported(tmp_path, sizes)
    z = np.random.default_rng(1).standard_normal((4, sizes[0]))
    x = g.run_onnx(z)  # float32 outputs, as the model gives them
    for row in x:
        problem = Problem(g, row.astype(np.float64), None, None, float(np.finfo(np.float32).eps))
        assert fastexact.solve(problem, Settings(), float("inf")) is not None  # the fast path is taken
        fast = onnxinv.invert(g, row, method=method)
        _assert_same(fast, generic(g, row, method=method))
        assert fast.verdict.value == "unique" and fast.verdict.success


def test_the_fast_draft_is_the_exact_walk(tmp_path):
    g = _exported(tmp_path, [20, 100, 500], seed=3)
    x = g.forward(np.random.default_rng(2).standard_normal(20))
    problem = Problem(g, x, None, None, 0.0)
    quick = fastexact.solve(problem, Settings(), float("inf"))
    walked = exact.solve(problem, Settings(), float("inf"))
    assert quick is not None
    assert np.array_equal(quick.draft.z, walked.z)
    assert quick.draft.fit == walked.fit
    assert [s.message for s in quick.draft.steps] == [s.message for s in walked.steps]
    for got, want in zip(quick.hidden, g.hidden_values(quick.draft.z)):
        assert np.array_equal(got, want)


def test_a_batch_gets_the_generic_answers_whatever_the_chunks(tmp_path, generic):
    g = _exported(tmp_path, [20, 60, 784], seed=4)
    x = g.run_onnx(np.random.default_rng(5).standard_normal((25, 20)))
    whole = onnxinv.invert(g, x, workers=1)
    slow = generic(g, x, workers=1)
    chunks = onnxinv.invert(g, x, workers=1, chunk_size=3)
    assert whole.counts["unique"] == 25
    for a, b, c in zip(whole.results, slow.results, chunks.results):
        _assert_same(a, b)
        _assert_same(a, c)
    # one observation alone gets the numbers it gets in a batch
    _assert_same(whole.results[7], onnxinv.invert(g, x[7]))


def test_the_stacked_route_equals_one_by_one(tmp_path):
    g = _exported(tmp_path, [10, 50, 200], seed=6)
    x = g.forward(np.random.default_rng(7).standard_normal((12, 10)))
    problems = [Problem(g, row, None, None, 0.0) for row in x]
    many = fastexact.solve_many(problems, Settings(), [float("inf")] * len(problems))
    for p, got in zip(problems, many):
        alone = fastexact.solve(p, Settings(), float("inf"))
        assert got is not None and alone is not None
        assert np.array_equal(got.draft.z, alone.draft.z)
        assert got.draft.fit == alone.draft.fit
        assert [s.message for s in got.draft.steps] == [s.message for s in alone.draft.steps]


def test_noisy_and_masked_observations_take_the_generic_route(tmp_path, generic):
    g = _exported(tmp_path, [10, 40, 120], seed=8)
    z = np.random.default_rng(9).standard_normal(10)
    x = g.forward(z)
    mask = np.ones(120, dtype=bool)
    mask[::3] = False
    assert not fastexact.applies(Problem(g, x, None, 1e-3, 0.0))
    assert not fastexact.applies(Problem(g, np.where(mask, x, 0.0), mask, None, 0.0))
    assert fastexact.applies(Problem(g, x, None, None, 0.0))
    _assert_same(onnxinv.invert(g, x, noise=1e-3), generic(g, x, noise=1e-3))
    _assert_same(onnxinv.invert(g, x, mask=mask), generic(g, x, mask=mask))
    masked = onnxinv.invert(g, np.stack([x, x]), mask=mask, workers=1)
    for a, b in zip(masked.results, generic(g, np.stack([x, x]), mask=mask, workers=1).results):
        _assert_same(a, b)


def test_non_identifiable_layers_fall_back(tmp_path, generic):
    # a contracting hidden layer: 30 outputs cannot pin 40 inputs
    g = _exported(tmp_path, [10, 40, 30], seed=10)
    x = g.forward(np.random.default_rng(11).standard_normal(10))
    assert fastexact.solve(Problem(g, x, None, None, 0.0), Settings(), float("inf")) is None
    fast = onnxinv.invert(g, x, method="exact")
    _assert_same(fast, generic(g, x, method="exact"))
    assert fast.verdict.value != "unique"


def test_an_observation_off_the_range_falls_back(tmp_path, generic):
    g = _exported(tmp_path, [10, 50, 200], seed=12)
    x = g.forward(np.random.default_rng(13).standard_normal(10))
    x = x + 1e-2 * np.abs(x).max() * np.random.default_rng(14).standard_normal(200)
    x = np.maximum(x, 0.0)
    assert fastexact.solve(Problem(g, x, None, None, 0.0), Settings(), float("inf")) is None
    _assert_same(onnxinv.invert(g, x, noise=0, method="exact"), generic(g, x, noise=0, method="exact"))
    # in a batch, the fallback observation sits between fast ones
    batch = np.stack([g.forward(np.zeros(10) + 0.3), x, g.forward(np.ones(10))])
    for a, b in zip(
        onnxinv.invert(g, batch, noise=0, workers=1, method="exact").results,
        generic(g, batch, noise=0, workers=1, method="exact").results,
    ):
        _assert_same(a, b)


def test_rows_near_zero_go_to_the_margin_check(tmp_path, generic):
    """An observation with a ReLU row inside the certificate's margin is judged by
    evidence.margin_failure itself, as in the generic pipeline."""
    g = _exported(tmp_path, [20, 100, 500], seed=15)
    settings = Settings()
    x = g.forward(np.random.default_rng(16).standard_normal((200, 20)))
    problems = [Problem(g, row, None, None, 0.0) for row in x]
    drafts = fastexact.solve_many(problems, settings, [float("inf")] * len(problems))
    kept = [(p, d) for p, d in zip(problems, drafts) if d is not None]
    clear = fastexact.margin_clear([p for p, _ in kept], settings, [d.hidden for _, d in kept])
    near = [i for i, c in enumerate(clear) if not c]
    assert near, "some observation has a row within the margin"
    row = kept[near[0]][0].x
    _assert_same(onnxinv.invert(g, row, method="exact"), generic(g, row, method="exact"))


def test_a_past_deadline_leaves_the_walk_to_record_it(tmp_path):
    g = _exported(tmp_path, [10, 50, 200], seed=17)
    x = g.forward(np.random.default_rng(18).standard_normal(10))
    problem = Problem(g, x, None, None, 0.0)
    assert fastexact.solve(problem, Settings(), 0.0) is None
    assert fastexact.solve_many([problem, problem], Settings(), [0.0, 0.0]) == [None, None]


def test_the_margin_check_reuses_the_solve_s_factor_only_where_it_proves_the_rank():
    """linear.full_rank_without: the rows left after removing some have full column rank whenever it
    says so (checked by SVD), and it says so in the plain cases; removing every row that touches a
    column, or keeping a row the factor does not cover, is never "shown"."""
    from onnxinv.inversion import linear

    rng = np.random.default_rng(3)
    w = rng.standard_normal((60, 20))
    w[:, 0] = 0.0
    w[:3, 0] = 1.0  # only rows 0, 1, 2 see the first input
    rows = np.arange(60)
    ls = linear.solve_rows(w, rows, np.zeros(60))
    known = linear.RowsFactor(rows, ls.factor, ls.cond)
    assert linear.full_rank_without(known, w, rows)
    assert linear.full_rank_without(known, w, np.arange(1, 60))
    assert np.linalg.matrix_rank(w[3:]) == 19
    assert not linear.full_rank_without(known, w, np.arange(3, 60))
    part = linear.solve_rows(w, np.arange(40), np.zeros(40))
    assert not linear.full_rank_without(linear.RowsFactor(np.arange(40), part.factor, part.cond), w, rows)
    shown = 0
    for _ in range(200):
        keep = np.sort(rng.choice(60, size=int(rng.integers(18, 60)), replace=False))
        if linear.full_rank_without(known, w, keep):
            shown += 1
            assert np.linalg.matrix_rank(w[keep]) == 20
    assert shown > 20


def test_a_large_layer_s_margin_check_reuses_the_factor(tmp_path, generic, monkeypatch):
    """On a layer large enough for the blocked Gram route (more than BLOCK_ENTRIES entries), an
    observation with rows in the margin gets the generic answer with the solve's factor reused."""
    from onnxinv.inversion import linear

    monkeypatch.setattr(linear, "BLOCK_ENTRIES", 2000)  # the blocked route on a small model
    g = _exported(tmp_path, [20, 100, 500], seed=15)
    used: list[bool] = []
    real = linear.full_rank_without

    def spy(known, w, keep):
        used.append(real(known, w, keep))
        return used[-1]

    monkeypatch.setattr(linear, "full_rank_without", spy)
    x = g.forward(np.random.default_rng(16).standard_normal((200, 20)))
    for row in x:
        before = len(used)
        fast = onnxinv.invert(g, row, method="exact")
        if len(used) > before and used[-1]:
            _assert_same(fast, generic(g, row, method="exact"), bitwise=False)
            return
    pytest.fail("no observation had rows in the margin that the factor covered")


def test_a_batch_s_rows_near_zero_reuse_the_solve_s_factor(tmp_path, generic, monkeypatch):
    """In a batch (the stacked route), an observation with rows near the certificate's margin keeps
    the factors of its solves, so the margin check needs no second Gram matrix, and its answer is the
    generic pipeline's and the one it gets alone; observations far from the margin keep none."""
    from onnxinv.inversion import evidence, linear

    g = _exported(tmp_path, [20, 100, 500], seed=15)
    settings = Settings()
    x = g.forward(np.random.default_rng(16).standard_normal((60, 20)))
    problems = [Problem(g, row, None, None, 0.0) for row in x]
    drafts = fastexact.solve_many(problems, settings, [float("inf")] * len(problems))
    kept = [(i, p, d) for i, (p, d) in enumerate(zip(problems, drafts)) if d is not None]
    clear = fastexact.margin_clear([p for _, p, _ in kept], settings, [d.hidden for _, _, d in kept])
    near = [(i, p, d) for (i, p, d), c in zip(kept, clear) if not c]
    assert near and len(near) < len(kept), "some observations have rows within the margin, some not"
    # factors are kept only near the margin (a band a little wider than the check's), not everywhere
    assert sum(d.draft.factors is not None for _, _, d in kept) < len(kept)
    for _, p, d in near:
        assert d.draft.factors, "the factor of a layer with rows near the margin is kept"
        with_factor = evidence.margin_failure(p, settings, d.draft.z, d.hidden, d.draft.factors)
        without = evidence.margin_failure(p, settings, d.draft.z, d.hidden, None)
        assert (with_factor is None) == (without is None)
        if with_factor is not None and without is not None:
            assert with_factor.summary == without.summary
    grams: list[int] = []
    real = linear.solve_rows
    monkeypatch.setattr(linear, "solve_rows", lambda *a, **k: grams.append(1) or real(*a, **k))
    batch = onnxinv.invert(g, x, method="exact", workers=1)
    assert not grams, "the margin checks of the batch reused the solves' factors"
    monkeypatch.setattr(linear, "solve_rows", real)
    slow = generic(g, x, method="exact", workers=1)
    for i, _, _ in near:
        _assert_same(batch.results[i], slow.results[i])
        _assert_same(batch.results[i], onnxinv.invert(g, x[i], method="exact"))


def test_one_observation_s_fit_and_margin_equal_the_stacked_ones(tmp_path):
    """The single-observation helpers (fit check, margin test, relative l2) give the numbers of the
    stacked versions and of framework.fit_check."""
    from onnxinv.inversion.framework import fit_check

    g = _exported(tmp_path, [20, 100, 500], seed=15)
    settings = Settings()
    x = g.forward(np.random.default_rng(16).standard_normal((40, 20)))
    problems = [Problem(g, row, None, None, 0.0) for row in x]
    drafts = fastexact.solve_many(problems, settings, [float("inf")] * len(problems))
    kept = [(p, d) for p, d in zip(problems, drafts) if d is not None]
    ps, hs = [p for p, _ in kept], [d.hidden for _, d in kept]
    outputs = g.run_onnx(np.stack([d.draft.z for _, d in kept]))
    stacked_fits = fastexact.clean_fits(ps, settings, outputs)
    stacked_clear = fastexact.margin_clear(ps, settings, hs)
    assert not stacked_clear.all() and stacked_clear.any()
    for k, (p, h) in enumerate(zip(ps, hs)):
        (one,) = fastexact.clean_fits([p], settings, outputs[k : k + 1])
        assert one == stacked_fits[k] == fit_check(p, settings, outputs[k])
        assert fastexact.margin_clear([p], settings, [h])[0] == stacked_clear[k]
        assert fastexact._relative_l2_one(h[-1], p.x) == fastexact._relative_l2(h[-1][None], p.x[None])[0]


def _bounds_misfit(pre: np.ndarray, y: np.ndarray, active: np.ndarray) -> float:
    """The largest violation of the clean ReLU row bounds, row by row in Python floats: ``pre_j = y_j``
    on the active rows, ``pre_j <= max(y_j, 0)`` on the others."""
    worst = 0.0
    for p, v, on in zip(pre.tolist(), y.tolist(), active.tolist()):
        if math.isnan(p):
            return math.nan
        upper = v if on else max(v, 0.0)
        lower = v if on else -math.inf
        worst = max(worst, lower - p, p - upper)
    return 0.0 if worst == 0.0 else worst


def test_the_largest_misfit_is_the_row_bounds_violation():
    """The fast path's largest misfit, for one observation and stacked, is the largest violation of
    the clean ReLU row bounds, bit for bit (exact fits, zeros of either sign, rows that hold, NaN)."""
    rng = np.random.default_rng(21)
    for trial in range(300):
        n = int(rng.integers(1, 30))
        y = rng.standard_normal(n)
        y[rng.random(n) < 0.2] = 0.0
        y[rng.random(n) < 0.1] = -0.0
        active = y > 0.05
        pre = y + rng.choice([0.0, 1e-9, -1e-9, 0.3, -0.3], size=n) * rng.random(n)
        pre[rng.random(n) < 0.2] = -0.0
        if trial % 50 == 0:
            pre[rng.integers(n)] = np.nan
        got = fastexact._largest_misfit(pre, y, active)
        want = _bounds_misfit(pre, y, active)
        stacked = fastexact._largest_misfits(pre[None], y[None], active[None])[0]
        if math.isnan(want):
            assert math.isnan(got) and math.isnan(stacked)
        else:
            assert got == want == stacked
            assert math.copysign(1.0, got) == math.copysign(1.0, want) == math.copysign(1.0, stacked)


def test_one_observation_s_fit_check_on_non_finite_outputs():
    """The single-observation fit check gives framework.fit_check's numbers for outputs holding inf
    or NaN and for a residual whose norm overflows."""
    from onnxinv.inversion.framework import fit_check

    g = onnxinv.Generator.from_layers(random_generator_layers([3, 6, 10], rng=2))
    settings = Settings()
    x = g.forward(np.random.default_rng(3).standard_normal(3))
    problem = Problem(g, x, None, None, 0.0)
    huge = np.full(10, 1e300)
    for output in (x + 1e-7, x.copy(), np.where(np.arange(10) == 4, np.inf, x), np.full(10, np.nan), huge):
        (one,) = fastexact.clean_fits([problem], settings, output[None])
        assert one == fit_check(problem, settings, output)


def test_the_chunk_s_stacked_observations_give_the_same_answers(tmp_path):
    """solve_many, clean_fits and margin_clear given the observations already stacked (a chunk's values,
    as solve_chunk passes them) answer exactly as when they stack the problems' x themselves."""
    g = _exported(tmp_path, [20, 100, 500], seed=15)
    settings = Settings()
    values = g.forward(np.random.default_rng(16).standard_normal((40, 20)))
    problems = [Problem(g, values[k], None, None, 0.0) for k in range(len(values))]
    deadlines = [float("inf")] * len(problems)
    own = fastexact.solve_many(problems, settings, deadlines)
    given = fastexact.solve_many(problems, settings, deadlines, None, values)
    assert sum(d is not None for d in own) > 30
    for a, b in zip(own, given):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a.draft.z.tobytes() == b.draft.z.tobytes() and a.draft.fit == b.draft.fit
            # every field but the wall time
            assert [replace(s, seconds=0.0) for s in a.draft.steps] == [
                replace(s, seconds=0.0) for s in b.draft.steps
            ]
    keep = [k for k, d in enumerate(own) if d is not None]
    ps, hs = [problems[k] for k in keep], [own[k].hidden for k in keep]
    outputs = g.run_onnx(np.stack([own[k].draft.z for k in keep]))
    xs = values[keep]
    assert fastexact.clean_fits(ps, settings, outputs) == fastexact.clean_fits(ps, settings, outputs, xs)
    assert np.array_equal(
        fastexact.margin_clear(ps, settings, hs), fastexact.margin_clear(ps, settings, hs, xs)
    )
