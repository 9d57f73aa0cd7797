"""Batches: N observations give N results equal to one-at-a-time, verified in one onnxruntime call."""

from __future__ import annotations

import numpy as np
import pytest
from inversion_helpers import make_generator

from onnxinv.inversion import BatchInversionResult, InversionResult, Verdict, invert
from onnxinv.layers import Generator


@pytest.fixture(scope="module")
def batch():
    g = make_generator([10, 60, 200], seed=41)
    z = np.random.default_rng(41).normal(size=(6, 10))
    x = g.forward(z)
    return g, z, x


def _same(a: InversionResult, b: InversionResult) -> None:
    np.testing.assert_allclose(a.z, b.z, rtol=1e-9, atol=1e-12)
    assert a.verdict is b.verdict and a.method == b.method and a.layer == b.layer


def test_batch_in_process_equals_one_at_a_time(batch, monkeypatch) -> None:
    g, z, x = batch
    calls = []
    original = Generator.run_onnx

    def counting(self, latents):
        calls.append(np.asarray(latents).shape)
        return original(self, latents)

    monkeypatch.setattr(Generator, "run_onnx", counting)
    res = invert(g, x, workers=1)
    assert calls == [(6, 10)]  # the whole chunk verified in one onnxruntime call
    assert isinstance(res, BatchInversionResult)
    assert len(res) == 6 and res.z.shape == (6, 10) and res.workers == 1
    assert res.verdicts == [Verdict.UNIQUE] * 6
    assert res.counts == {"unique": 6, "not unique": 0, "fits": 0, "no preimage": 0, "not found": 0}
    np.testing.assert_allclose(res.z, z, rtol=1e-9)
    for i, r in enumerate(res):
        _same(r, invert(g, x[i]))
    assert res[2] is res.results[2]


def test_batch_on_two_processes_equals_in_process(batch) -> None:
    g, z, x = batch
    pooled = invert(g, x.reshape(6, 1, 200), workers=2)
    assert pooled.workers == 2 and len(pooled) == 6
    for a, b in zip(pooled, invert(g, x, workers=1)):
        _same(a, b)


def test_batch_with_one_mask_per_observation_and_noise(batch) -> None:
    g, z, x = batch
    masks = np.random.default_rng(0).random((6, 200)) < 0.9
    res = invert(g, x, mask=masks, workers=1)
    for i, r in enumerate(res):
        assert r.observed == int(masks[i].sum())
        _same(r, invert(g, x[i], mask=masks[i]))
    noisy = invert(g, x + 1e-4, noise=1e-4, method="linf", workers=1)
    assert all(r.method == "linf" and r.noise == 1e-4 for r in noisy)


def test_auto_workers_on_a_small_batch_stays_in_process(batch) -> None:
    g, z, x = batch
    res = invert(g, x)  # workers=None: fast observations do not pay for a pool
    assert res.workers == 1 and len(res) == 6


def test_guided_chunks_cover_the_batch_large_first() -> None:
    from onnxinv.inversion.api import GUIDED_MIN, MAX_CHUNK, guided_spans

    for start, stop, slots in [(0, 10_000, 2), (2, 1000, 4), (0, 5, 2), (0, GUIDED_MIN + 1, 8), (7, 8, 2)]:
        spans = guided_spans(start, stop, slots)
        assert spans[0][0] == start and spans[-1][1] == stop
        assert all(a < b for a, b in spans) and all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
        sizes = [b - a for a, b in spans]
        assert sizes == sorted(sizes, reverse=True)
        assert all(MAX_CHUNK >= s >= GUIDED_MIN for s in sizes[:-1]) and sizes[-1] <= MAX_CHUNK
        share = -(-(stop - start) // (2 * slots))
        assert sizes[0] == min(MAX_CHUNK, max(GUIDED_MIN, share)) or len(sizes) == 1
    assert len(guided_spans(0, 10_000, 2)) < 40  # few chunks: each costs one task and one onnxruntime call


def test_pooled_guided_chunks_give_the_in_process_numbers(batch, monkeypatch) -> None:
    """A pooled batch (guided chunks of different sizes) gets the in-process results bit for bit."""
    from onnxinv.inversion import api

    g, _, _ = batch
    x = g.forward(np.random.default_rng(5).normal(size=(70, 10)))
    monkeypatch.setattr(api, "GUIDED_MIN", 4)
    pooled = invert(g, x, workers=2)
    alone = invert(g, x, workers=1)
    assert np.array_equal(pooled.z, alone.z)
    for a, b in zip(pooled, alone):
        assert a.verdict is b.verdict and a.message == b.message and a.fit == b.fit
        assert [s.message for s in a.steps] == [s.message for s in b.steps]
        assert np.array_equal(a.reconstruction, b.reconstruction)


def test_results_are_kept_from_the_collector_only_while_a_batch_arrives(batch) -> None:
    """map_chunks freezes the results collected so far (gc.freeze) while more arrive, and unfreezes at
    the end; where something else froze objects already (a forked worker) it leaves gc alone."""
    import gc

    from onnxinv.inversion import parallel

    g, _, _ = batch
    seen: list[int] = []
    assert gc.get_freeze_count() == 0
    parallel.map_chunks(
        g, lambda gen, i: [i], [(i,) for i in range(3)], progress=lambda n: seen.append(gc.get_freeze_count())
    )
    assert all(count > 0 for count in seen) and gc.get_freeze_count() == 0
    holder = [object()]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen.clear()
        parallel.map_chunks(
            g,
            lambda gen, i: [i],
            [(i,) for i in range(3)],
            progress=lambda n: seen.append(gc.get_freeze_count()),
        )
        assert seen == [frozen] * 3 and gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    assert holder


def test_the_collector_is_off_while_a_batch_arrives_and_back_as_it_was(batch) -> None:
    """map_chunks turns the cyclic collector off while results arrive (their unpickling would set it off
    again and again) and restores it at the end, also after an error; a collector that was off stays off."""
    import gc

    from onnxinv.inversion import parallel

    g, _, _ = batch
    assert gc.isenabled()
    seen: list[bool] = []
    parallel.map_chunks(
        g, lambda gen, i: [i], [(i,) for i in range(3)], progress=lambda n: seen.append(gc.isenabled())
    )
    assert seen == [False] * 3 and gc.isenabled()

    def fail(gen: object, i: int) -> list[int]:
        raise ValueError("chunk failed")

    with pytest.raises(ValueError, match="chunk failed"):
        parallel.map_chunks(g, fail, [(i,) for i in range(2)])
    assert gc.isenabled()
    gc.disable()
    try:
        parallel.map_chunks(g, lambda gen, i: [i], [(i,) for i in range(2)])
        assert not gc.isenabled()
    finally:
        gc.enable()
