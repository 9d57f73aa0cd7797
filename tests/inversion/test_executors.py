"""Where a batch runs: in process, the local pool, a thread pool, a foreign process pool, any chunk size.

The results are the same bit for bit on each (z, verdicts, methods, reconstructions): every observation
is solved on its own, seeded by the settings alone. Interrupts stop the local pool at once.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from scale_helpers import assert_same_results, observations_784

import onnxinv
from onnxinv.errors import InvalidArgumentError
from onnxinv.inversion import parallel


@pytest.fixture(scope="module")
def batch():
    generator, z, x = observations_784(120, seed=11)
    reference = onnxinv.invert(generator, x, workers=1)
    return generator, x, reference


def test_local_pool_and_chunk_sizes_give_the_same_results(batch):
    generator, x, reference = batch
    assert reference.counts["unique"] >= 100  # the sample generator recovers most latents uniquely
    assert_same_results(onnxinv.invert(generator, x, workers=2), reference)
    assert_same_results(onnxinv.invert(generator, x, workers=2, chunk_size=7), reference)
    assert_same_results(onnxinv.invert(generator, x, workers=1, chunk_size=1), reference)


def test_thread_pool_gives_the_same_results(batch):
    generator, x, reference = batch
    with ThreadPoolExecutor(max_workers=3) as pool:
        result = onnxinv.invert(generator, x, executor=pool, chunk_size=9)
    assert result.workers == 3
    assert_same_results(result, reference)


def test_a_foreign_process_pool_gives_the_same_results(batch):
    generator, x, reference = batch
    for method in ("fork", "spawn") if "fork" in multiprocessing.get_all_start_methods() else ("spawn",):
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            result = onnxinv.invert(generator, x, executor=pool)
            # each worker unpickled the generator once, whatever the number of chunks it ran
            tokens = list(pool.map(_tokens_here, range(4)))
        assert_same_results(result, reference)
        assert all(len(t) == 1 for t in tokens if t), tokens


def _tokens_here(_: int) -> list[str]:
    return sorted(k for k in parallel._WORKER if k != "pool")


def test_bad_batch_options_are_refused(batch):
    generator, x, _ = batch
    with ThreadPoolExecutor(1) as pool, pytest.raises(InvalidArgumentError, match="not both"):
        onnxinv.invert(generator, x[:3], workers=2, executor=pool)
    with pytest.raises(InvalidArgumentError, match="executor must be a concurrent.futures.Executor"):
        onnxinv.invert(generator, x[:3], executor="tcp://localhost:8786")
    with pytest.raises(InvalidArgumentError, match="chunk_size must be a positive integer"):
        onnxinv.invert(generator, x[:3], chunk_size=0)


def test_an_interrupt_kills_the_local_pool_at_once(batch):
    generator, x, _ = batch
    seen: list[int] = []

    def interrupt(count: int) -> None:
        seen.append(count)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        onnxinv.invert(generator, np.concatenate([x] * 4), workers=2, chunk_size=4, progress=interrupt)
    assert seen == [4]
    assert multiprocessing.active_children() == []  # killed and reaped, not left to finish their chunks


def _blas_threads() -> int:
    import threadpoolctl

    blas = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
    return max(c.num_threads for c in blas)


def _threads_while_solving(generator, count: int) -> list[int]:
    with parallel.blas_single_thread():  # as solve_chunk does
        return [_blas_threads()] * count


def test_a_thread_pool_solves_with_one_blas_thread(batch):
    """threadpoolctl lets only the thread that first set OpenBLAS's limit change it; the pool's threads
    must still solve with one BLAS thread, and the caller's limit comes back afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController()
    if not controller.select(user_api="blas").lib_controllers:
        pytest.skip("no BLAS library that threadpoolctl can limit")
    generator = batch[0]
    with controller.limit(limits=2, user_api="blas"), ThreadPoolExecutor(max_workers=2) as pool:
        assert _blas_threads() == 2
        seen = parallel.map_chunks(generator, _threads_while_solving, [(3,)] * 8, executor=pool)
        assert seen == [1] * 24
        assert _blas_threads() == 2


FORK_PROBE = textwrap.dedent(
    """
    import gc, sys
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    import numpy as np
    import onnxruntime as ort
    from onnxinv.building import build_model, random_generator_layers
    from onnxinv.inversion import parallel
    from onnxinv.layers import Generator

    layers = random_generator_layers([5, 40, 120], rng=1)
    data = build_model(layers).SerializeToString()
    keep = []
    for _ in range(3):  # sessions with onnxruntime's own thread pool, as tests and users make them
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: np.zeros((64, 5), np.float32)})
        cycle = [session]
        cycle.append(cycle)
        keep.append(cycle)
    del session, cycle
    gc.collect()
    gc.collect()  # they sit in the oldest generation now
    keep.clear()  # garbage that only a full collection frees

    def collect(generator, n):
        gc.collect()
        return [n]

    generator = Generator.from_layers(layers)
    if sys.argv[1] == "pool":
        print(parallel.map_chunks(generator, collect, [(i,) for i in range(4)], workers=2))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            print(parallel.map_chunks(generator, collect, [(i,) for i in range(4)], executor=pool))
    """
)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="fork only")
@pytest.mark.parametrize("where", ["pool", "foreign"])
def test_forked_workers_never_free_the_parent_s_onnxruntime_sessions(where):
    """A forked worker whose collector freed the parent's garbage session blocked forever (the session's
    thread pool threads exist only in the parent)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", FORK_PROBE, where], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a forked worker hung while collecting the parent's onnxruntime session")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[0,", "1,", "2,", "3]"]
