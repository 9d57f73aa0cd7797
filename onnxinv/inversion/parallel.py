"""Executors, BLAS thread limits, interrupts and progress for batches of observations.

Batches are split into chunks; each chunk is solved and verified (one onnxruntime call per chunk) by
``function(generator, *chunk)`` somewhere. Where, is an *engine*:

* **in process** (``workers=1``): chunk after chunk, in the caller's process;
* **the local pool** (``workers=N``): N processes of our own. Each unpickles the generator once (the
  pool's initializer), dies with its parent (``PR_SET_PDEATHSIG`` on Linux, so a ``kill -9`` of the
  parent, as ``subprocess.run(timeout=...)`` does, leaves no orphan holding the caller's pipes) and
  ignores SIGINT (the parent decides; it stops the workers itself);
* **a Dask cluster** (a ``distributed.Client`` or its ``get_executor()``): the generator is shipped to
  every worker once, by a worker plugin (:mod:`~onnxinv.inversion.dask_engine`), which the scheduler
  also installs on workers that join later (a lost worker's replacement);
* **a thread pool** (``ThreadPoolExecutor``): the threads share the caller's generator;
* **any other** ``concurrent.futures.Executor``: each task carries the pickled generator with a token,
  and each worker process unpickles it once (later tasks find it by the token).

At most a few chunks per worker are in flight (:func:`imap_chunks`), so chunks can be read from a file
as they are dispatched and memory stays bounded. On any exception, including
:class:`Interrupted` (SIGTERM) and ``KeyboardInterrupt``, the engine stops at once: the local pool's
workers are killed, pending tasks of an executor are cancelled.

Results do not depend on the engine, the number of workers or the chunking: each observation is
solved on its own, seeded by the settings alone, and onnxruntime's output for a row does not depend
on the other rows of its call. BLAS runs one thread per solve (:func:`blas_single_thread`), so workers
do not oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Generator as Stream
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from contextlib import contextmanager
from typing import Any

from onnxinv.errors import InvalidArgumentError
from onnxinv.layers import Generator

__all__ = [
    "Engine",
    "Interrupted",
    "Progress",
    "blas_single_thread",
    "check_executor",
    "engine",
    "imap_chunks",
    "is_dask",
    "map_chunks",
    "start_method",
]

Progress = Callable[[int], object]
"""Called with the number of observations just finished (a click progress bar's ``update`` fits)."""

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_CONTROLLER: list[Any] = []  # the cached threadpoolctl controller (building one scans the loaded libraries)
_LIMIT_LOCK = threading.Lock()
_LIMIT: dict[str, Any] = {"depth": 0, "limiter": None}
_GETTERS: list[Any] = []  # [controller, its BLAS libraries' get_num_threads, ...] (_single_threaded)


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error of the computation
    """A signal asked the run to stop (raised by the CLI's SIGTERM handler); ``signum`` says which.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)


# --------------------------------------------------------------------------------------------------
# BLAS threads


def _controller() -> Any:
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def _single_threaded(controller: Any) -> bool:
    """True when every BLAS library the controller sees runs one thread now (each asked every time: a
    limit may have been set since; the list of their getters is made once per controller)."""
    if not _GETTERS or _GETTERS[0] is not controller:
        _GETTERS[:] = [
            controller,
            *(lib.get_num_threads for lib in controller.lib_controllers if lib.user_api == "blas"),
        ]
    return all(get() == 1 for get in _GETTERS[1:])


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """One BLAS thread while solving (threadpoolctl; its controller is built once per process).

    The matrices are small (a layer's active rows), where threading costs more than it gains and, on
    a busy machine or with several worker processes, oversubscription makes BLAS calls orders of
    magnitude slower. Parallelism comes from processes instead.

    The limit is process-wide, so it is counted: the first of several overlapping uses (threads of a
    thread pool, or of a Dask worker) sets it and the last one restores the original, so no thread
    lifts it while another still solves. (threadpoolctl lets only the first thread that sets
    OpenBLAS's limit change it; a thread pool's engine therefore sets it from the calling thread.)
    """
    controller = _controller()
    if controller is None:  # pragma: no cover
        yield
        return
    with _LIMIT_LOCK:
        # already one thread and no limit of ours in force (e.g. OPENBLAS_NUM_THREADS=1): a limit
        # would change nothing and costs more than a small solve; a use that overlaps this one then
        # sets its own
        if _LIMIT["depth"] == 0 and _single_threaded(controller):
            unlimited = True
        else:
            unlimited = False
            if _LIMIT["depth"] == 0:
                _LIMIT["limiter"] = controller.limit(limits=1, user_api="blas")
            _LIMIT["depth"] += 1
    if unlimited:
        yield
        return
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT["depth"] -= 1
            if _LIMIT["depth"] == 0 and _LIMIT["limiter"] is not None:
                _LIMIT["limiter"].restore_original_limits()
                _LIMIT["limiter"] = None


def start_method() -> str:
    """``fork`` on Linux (starts in milliseconds, and does not re-run the caller's script, so scripts
    without an ``if __name__ == "__main__"`` guard work); ``spawn`` elsewhere. Workers never use the
    parent's onnxruntime session or HiGHS scheduler: they unpickle their own generator and reset
    HiGHS's scheduler."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


# --------------------------------------------------------------------------------------------------
# Worker-side state

_WORKER: dict[str, Generator] = {}  # token -> generator, in a worker process
_RESET: list[int] = []  # pids in which HiGHS's scheduler was reset after a fork


def _die_with_parent(parent: int) -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies (for any reason, even
    SIGKILL), so no worker outlives the run holding its pipes; exit now if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _forget_parent_state() -> None:
    """A forked process starts with the parent's HiGHS scheduler and threadpoolctl state, neither valid,
    and with the parent's objects, which its garbage collector must never free: destroying an
    onnxruntime session whose thread pool's threads exist only in the parent blocks forever (in
    ``pthread_cond_destroy``)."""
    gc.freeze()
    from onnxinv.inversion import lp

    lp.reset_after_fork()
    _CONTROLLER.clear()
    _GETTERS.clear()
    _LIMIT["depth"] = 0
    _LIMIT["limiter"] = None
    _RESET.append(os.getpid())


def _init_worker(payload: bytes, forked: bool, parent: int) -> None:
    _die_with_parent(parent)
    # The parent handles Ctrl-C (it stops the workers itself); a worker would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if forked:
        _forget_parent_state()
    # A fresh copy: its own onnxruntime session is built on first use in this process.
    _WORKER["pool"] = pickle.loads(payload)


def _run_task(function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return function(_WORKER["pool"], *args)


def _run_with_payload(
    token: str, payload: bytes, parent: int, function: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    """A task of a foreign executor: unpickle the generator the first time this process sees
    ``token``, reuse it afterwards."""
    generator = _WORKER.get(token)
    if generator is None:
        pid = os.getpid()
        if pid != parent and pid not in _RESET:
            _forget_parent_state()
        generator = pickle.loads(payload)
        _WORKER[token] = generator
    return function(generator, *args)


def generator_token(payload: bytes) -> str:
    """A short name for a pickled generator: the same generator gets the same token everywhere."""
    return hashlib.sha256(payload).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------
# Engines


class Engine:
    """Where chunks run: ``submit(function, args)`` returns a Future of ``function(generator, *args)``.

    ``slots`` is how many chunks it runs at once, ``window`` how many may be in flight; ``stop()``
    ends everything at once, ``close()`` after the work is done.
    """

    slots: int = 1
    window: int = 1
    name: str = "in process"

    def submit(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop at once: nothing more runs (used on errors and interrupts)."""

    def close(self) -> None:
        """Release the engine after the work is done."""


class _InProcess(Engine):
    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    def submit(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(function(self.generator, *args))  # exceptions propagate at once
        return future


class _LocalPool(Engine):
    name = "local pool"

    def __init__(self, generator: Generator, workers: int) -> None:
        payload = pickle.dumps(generator)
        method = start_method()
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(payload, method == "fork", os.getpid()),
        )
        self.slots = workers
        self.window = 2 * workers
        self.forks = method == "fork"
        self.started = False

    def submit(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        with _single_threaded_env():  # spawned workers read these at start-up
            if self.started or not self.forks:
                self.started = True
                return self.pool.submit(_run_task, function, args)
            with _frozen_for_fork():  # the first submit forks every worker
                self.started = True
                return self.pool.submit(_run_task, function, args)

    def stop(self) -> None:
        # Kill the workers first: shutdown() alone would wait for the chunks they are running.
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(5)
        if not any(p.is_alive() for p in processes):
            # A worker killed while it sent a result leaves half a message in the result pipe, and the
            # pool's manager thread would wait for the rest forever. With every worker's end closed by
            # its death, closing ours turns that wait into end-of-file, which the pool treats as a
            # broken worker and cleans up after.
            writer = getattr(getattr(self.pool, "_result_queue", None), "_writer", None)
            with contextlib.suppress(Exception):
                if writer is not None:
                    writer.close()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class _Foreign(Engine):
    """An executor we did not create: we never shut it down; ``stop`` cancels what has not started."""

    def __init__(self, generator: Generator, executor: Executor) -> None:
        self.executor = executor
        self.futures: list[Future[Any]] = []
        workers = getattr(executor, "_max_workers", None)
        self.slots = workers if isinstance(workers, int) and workers > 0 else (os.cpu_count() or 1)
        self.window = 2 * self.slots
        self._hold: contextlib.ExitStack | None = None
        if isinstance(executor, ThreadPoolExecutor):
            self.name = "thread pool"
            self.generator: Generator | None = generator
            # threadpoolctl lets only one thread set OpenBLAS's process-wide limit (the first to do so,
            # usually this one), so the limit is set here, for the whole map, not in the pool's threads.
            self._hold = contextlib.ExitStack()
            self._hold.enter_context(blas_single_thread())
        else:
            self.name = type(executor).__name__
            self.generator = None
            self.payload = pickle.dumps(generator)
            self.token = generator_token(self.payload)
            self.parent = os.getpid()

    def submit(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        if self.generator is not None:
            future = self.executor.submit(function, self.generator, *args)
        elif isinstance(self.executor, ProcessPoolExecutor) and not getattr(self.executor, "_processes", 1):
            with _frozen_for_fork():  # this submit starts its processes (forked, perhaps)
                future = self.executor.submit(
                    _run_with_payload, self.token, self.payload, self.parent, function, args
                )
        else:
            future = self.executor.submit(
                _run_with_payload, self.token, self.payload, self.parent, function, args
            )
        self.futures = [f for f in self.futures if not f.done()]
        self.futures.append(future)
        return future

    def stop(self) -> None:
        for future in self.futures:
            future.cancel()
        self.close()

    def close(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None


def is_dask(executor: object) -> bool:
    """Is ``executor`` a ``distributed.Client`` or the executor of one? (without importing Dask)"""
    if "distributed" not in sys.modules:
        return False
    from distributed import Client
    from distributed.cfexecutor import ClientExecutor

    return isinstance(executor, (Client, ClientExecutor))


def check_executor(executor: object) -> None:
    """Raise :class:`InvalidArgumentError` unless ``executor`` is None, a ``concurrent.futures.Executor``
    or a ``distributed.Client``."""
    if executor is None or isinstance(executor, Executor) or is_dask(executor):
        return
    raise InvalidArgumentError(
        "executor must be a concurrent.futures.Executor (a ProcessPoolExecutor, a ThreadPoolExecutor, "
        f"a distributed.Client's get_executor()) or a distributed.Client, got {type(executor).__name__}"
    )


@contextmanager
def engine(generator: Generator, *, workers: int | None = None, executor: object = None) -> Iterator[Engine]:
    """The engine for ``executor`` (see the module docstring), or for ``workers`` local processes
    (1 or None: in process). On an exception (an interrupt included) it is stopped at once, else
    closed."""
    check_executor(executor)
    chosen: Engine
    if executor is not None:
        if is_dask(executor):
            from onnxinv.inversion.dask_engine import DaskEngine

            chosen = DaskEngine(generator, executor)
        else:
            chosen = _Foreign(generator, executor)  # type: ignore[arg-type]
    elif workers is not None and workers > 1:
        chosen = _LocalPool(generator, workers)
    else:
        chosen = _InProcess(generator)
    try:
        yield chosen
    except BaseException:
        chosen.stop()
        raise
    chosen.close()


def imap_chunks(
    generator: Generator,
    function: Callable[..., Any],
    chunks: Iterable[tuple[Any, ...]],
    *,
    workers: int | None = None,
    executor: object = None,
    window: int | None = None,
) -> Stream[tuple[int, Any], None, None]:
    """``(i, function(generator, *chunk_i))`` as chunks finish (not in order), with at most ``window``
    chunks in flight (default: the engine's, two per worker). ``chunks`` is consumed lazily, one more
    each time one finishes, so it may read them from a file as they are dispatched. Closing the
    iterator early, or any exception, stops the engine at once."""
    with engine(generator, workers=workers, executor=executor) as eng:
        source = iter(enumerate(chunks))
        pending: dict[Future[Any], int] = {}
        exhausted = False
        while True:
            limit = max(1, window or eng.window)  # re-read: a cluster's workers come and go
            while not exhausted and len(pending) < limit:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                i, args = item
                pending[eng.submit(function, args)] = i
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                i = pending.pop(future)
                yield i, future.result()


def map_chunks(
    generator: Generator,
    function: Callable[..., list[Any]],
    chunks: Sequence[tuple[Any, ...]],
    *,
    workers: int | None = None,
    executor: object = None,
    progress: Progress | None = None,
    sizes: Sequence[int] | None = None,
) -> list[Any]:
    """``function(generator, *chunk)`` for every chunk (on ``workers`` local processes, or on
    ``executor``), results concatenated in chunk order; ``progress`` gets each chunk's size
    (``sizes``) as it finishes."""
    out: list[list[Any]] = [[] for _ in chunks]
    # closing(): an exception here (in progress, say) stops the engine now, not when the iterator is
    # garbage-collected
    with (
        _kept_from_collector() as keep,
        contextlib.closing(
            imap_chunks(generator, function, chunks, workers=workers, executor=executor)
        ) as finished,
    ):
        for i, part in finished:
            out[i] = part
            keep()
            if progress is not None:
                progress(sizes[i] if sizes is not None else len(part))
    return [item for part in out for item in part]


@contextmanager
def _kept_from_collector() -> Iterator[Callable[[], None]]:
    """``keep()`` moves every object alive now (the results collected so far) out of the cyclic
    garbage collector's view until the block ends: a batch's results are many small objects, which
    each later collection would otherwise scan again while more arrive (a third of the time spent
    receiving them). Only when nothing else is frozen (a forked worker freezes its parent's objects
    for good, see :func:`_forget_parent_state`): ending the block unfreezes everything. The collector
    is also off during the block (back on at its end, if it was on): the results arrive as pickles
    whose tens of thousands of new objects each would otherwise set off many collections while they
    are unpickled (a quarter of the time spent unpickling them); cycles made meanwhile are collected
    once it is back on."""
    own = gc.get_freeze_count() == 0
    enabled = gc.isenabled()

    def keep() -> None:
        if own:
            gc.freeze()

    if enabled:
        gc.disable()
    try:
        yield keep
    finally:
        if own:
            gc.unfreeze()
        if enabled:
            gc.enable()


def executor_slots(executor: object) -> int:
    """How many chunks ``executor`` runs at once (Dask: the worker threads now connected)."""
    if is_dask(executor):
        from onnxinv.inversion.dask_engine import cluster_threads

        return cluster_threads(executor)
    workers = getattr(executor, "_max_workers", None)
    return workers if isinstance(workers, int) and workers > 0 else (os.cpu_count() or 1)


@contextmanager
def _frozen_for_fork() -> Iterator[None]:
    """Around a fork: freeze every object of ours, garbage included, so no child's collector ever frees
    one (see :func:`_forget_parent_state`); this process collects as before afterwards, and its own
    garbage onnxruntime sessions are destroyed here then. (No full collection first: it is not needed
    for that, and cost 30-75 ms per pool start in a process with scipy, onnx and HiGHS loaded.)"""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
