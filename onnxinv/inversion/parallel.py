"""Process pools, BLAS thread limits and progress for batches of observations.

Batches are split into chunks, each solved and verified (one onnxruntime call per chunk) in a worker
process. Every worker unpickles the generator once (pool initializer) and builds its own onnxruntime
session and HiGHS objects; BLAS runs one thread per worker, so workers do not oversubscribe the cores.
Results do not depend on the number of workers: each observation is solved on its own, seeded by the
settings alone.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from onnxinv.layers import Generator

__all__ = ["Progress", "blas_single_thread", "map_chunks", "start_method"]

Progress = Callable[[int], object]
"""Called with the number of observations just finished (a click progress bar's ``update`` fits)."""

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_CONTROLLER: list[Any] = []  # the cached threadpoolctl controller (building one scans the loaded libraries)


def blas_single_thread() -> AbstractContextManager[object]:
    """One BLAS thread while solving (threadpoolctl; its controller is built once per process).

    The matrices are small (a layer's active rows), where threading costs more than it gains and, on
    a busy machine or with several worker processes, oversubscription makes BLAS calls orders of
    magnitude slower. Parallelism comes from processes instead.
    """
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    controller = _CONTROLLER[0]
    if controller is None:  # pragma: no cover
        return nullcontext()
    return controller.limit(limits=1, user_api="blas")


def start_method() -> str:
    """``fork`` on Linux (starts in milliseconds, and does not re-run the caller's script, so scripts
    without an ``if __name__ == "__main__"`` guard work); ``spawn`` elsewhere. Workers never use the
    parent's onnxruntime session or HiGHS scheduler: they unpickle their own generator and reset
    HiGHS's scheduler."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


_WORKER: dict[str, Generator] = {}


def _init_worker(payload: bytes, forked: bool) -> None:
    if forked:
        from onnxinv.inversion import lp

        lp.reset_after_fork()
        _CONTROLLER.clear()
    # A fresh copy: its own onnxruntime session is built on first use in this process.
    _WORKER["generator"] = pickle.loads(payload)


def _run_task(function: Callable[..., list[Any]], args: tuple[Any, ...]) -> list[Any]:
    return function(_WORKER["generator"], *args)


def map_chunks(
    generator: Generator,
    function: Callable[..., list[Any]],
    chunks: Sequence[tuple[Any, ...]],
    *,
    workers: int,
    progress: Progress | None = None,
    sizes: Sequence[int] | None = None,
) -> list[Any]:
    """``function(generator, *chunk)`` for every chunk on ``workers`` processes, results concatenated
    in chunk order; ``progress`` gets each chunk's size (``sizes``) as it finishes."""
    payload = pickle.dumps(generator)
    method = start_method()
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(payload, method == "fork"),
    )
    out: list[list[Any]] = [[] for _ in chunks]
    with _single_threaded_env(), pool:
        futures: dict[Future[list[Any]], int] = {
            pool.submit(_run_task, function, args): i for i, args in enumerate(chunks)
        }
        try:
            for fut in _as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if progress is not None:
                    progress(sizes[i] if sizes is not None else len(out[i]))
        except BaseException:
            for fut in futures:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [item for part in out for item in part]


def _as_completed(futures: dict[Future[list[Any]], int]) -> Iterator[Future[list[Any]]]:
    from concurrent.futures import as_completed

    return as_completed(futures)


@contextmanager
def _single_threaded_env() -> Iterator[None]:
    """Spawned workers read these at start-up: one BLAS thread each, so workers do not oversubscribe."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    for k in _THREAD_VARS:
        os.environ.setdefault(k, "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
