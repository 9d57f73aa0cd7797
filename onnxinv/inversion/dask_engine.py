"""The Dask engine of :mod:`~onnxinv.inversion.parallel`: chunks on a ``distributed`` cluster.

Imported only when a ``distributed.Client`` (or its ``get_executor()``) is passed as ``executor``, so
the rest of onnxinv never pays Dask's import time; ``distributed`` is the optional ``dask`` extra
(``pip install 'onnxinv[dask]'``).

The generator reaches each worker once: a worker plugin (:class:`GeneratorPlugin`) carries it pickled;
the scheduler runs its ``setup`` on every worker connected now and on every worker that joins later
(the replacement of a lost worker included), which unpickles it into this module's registry. Tasks
carry only its token. A chunk that was running on a lost worker is run again elsewhere by Dask; since
each observation is solved deterministically, the result is the same.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from onnxinv.errors import OnnxInvError
from onnxinv.inversion.parallel import Engine, generator_token
from onnxinv.layers import Generator

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - this module is only used with a Client, i.e. with distributed
    WorkerPlugin = object  # type: ignore[assignment,misc]

__all__ = ["DaskEngine", "GeneratorPlugin", "cluster_threads", "run_chunk"]

_GENERATORS: dict[str, Generator] = {}  # in a worker: token -> generator
_USERS: dict[tuple[int, str], int] = {}  # in the client: (client id, plugin name) -> runs using it
_USERS_LOCK = threading.Lock()
_REFRESH_SECONDS = 2.0


class GeneratorPlugin(WorkerPlugin):
    """Installs one pickled generator on each worker (``setup``) and removes it (``teardown``)."""

    def __init__(self, token: str, payload: bytes) -> None:
        self.token = token
        self.payload = payload
        self.name = f"onnxinv-generator-{token}"

    def setup(self, worker: object = None) -> None:
        _GENERATORS[self.token] = pickle.loads(self.payload)

    def teardown(self, worker: object = None) -> None:
        _GENERATORS.pop(self.token, None)


def run_chunk(token: str, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """The task run on a worker: ``function(generator, *args)`` with the plugin's generator."""
    generator = _GENERATORS.get(token)
    if generator is None:
        raise OnnxInvError(
            f"the generator {token} is not installed on this Dask worker (its plugin did not run here). "
            "Check the worker's log for an error while unpickling it, e.g. a different onnxinv version."
        )
    return function(generator, *args)


def _client_of(executor: object) -> Any:
    from distributed import Client

    if isinstance(executor, Client):
        return executor
    client = getattr(executor, "_client", None)  # distributed's ClientExecutor keeps its client there
    if client is None:  # pragma: no cover - every ClientExecutor has one
        raise OnnxInvError("this Dask executor has no client; pass the distributed.Client itself")
    return client


def cluster_threads(executor: object) -> int:
    """Worker threads connected to the scheduler now (at least 1)."""
    try:
        return max(1, sum(_client_of(executor).nthreads().values()))
    except OnnxInvError:
        raise
    except Exception:  # a scheduler that is still starting: count one
        return 1


class DaskEngine(Engine):
    """Chunks as Dask tasks; the generator installed once per worker by :class:`GeneratorPlugin`."""

    name = "dask"

    def __init__(self, generator: Generator, executor: object) -> None:
        from distributed import Client

        self.client = _client_of(executor)
        # Our own tasks are impure (each chunk is a new task); a given executor keeps its options.
        self.submitter: Any = (
            self.client.get_executor(pure=False) if isinstance(executor, Client) else executor
        )
        payload = pickle.dumps(generator)
        self.plugin = GeneratorPlugin(generator_token(payload), payload)
        self._key = (id(self.client), self.plugin.name)
        self._futures: list[Future[Any]] = []
        self._released = False
        self._slots = 1
        self._checked = 0.0
        try:
            with _USERS_LOCK:
                if _USERS.get(self._key, 0) == 0:
                    self.client.register_plugin(self.plugin, name=self.plugin.name)
                _USERS[self._key] = _USERS.get(self._key, 0) + 1
        except Exception as exc:
            raise OnnxInvError(
                f"could not install the generator on the Dask workers ({type(exc).__name__}: {exc}). "
                "Check that the scheduler is reachable and that the workers have onnxinv installed."
            ) from exc

    @property
    def slots(self) -> int:  # type: ignore[override]
        now = time.monotonic()
        if now - self._checked > _REFRESH_SECONDS:  # workers may join or leave during a run
            self._slots = cluster_threads(self.client)
            self._checked = now
        return self._slots

    @property
    def window(self) -> int:  # type: ignore[override]
        return 2 * self.slots

    def submit(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        future = self.submitter.submit(run_chunk, self.plugin.token, function, args)
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(future)
        return future

    def stop(self) -> None:
        for future in self._futures:
            future.cancel()  # cancels the Dask task too
        self._release()

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        with _USERS_LOCK:
            left = _USERS.get(self._key, 1) - 1
            if left > 0:
                _USERS[self._key] = left
                return
            _USERS.pop(self._key, None)
        try:
            self.client.unregister_worker_plugin(self.plugin.name)
        except Exception:  # a closed client or a gone scheduler: the workers go with them
            return
