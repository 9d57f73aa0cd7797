"""Streamed, resumable batches: observation files larger than memory, results written chunk by chunk.

:func:`invert_to_folder` inverts every observation of a file (or an array) into an output folder. A
``.npy`` file is opened memory-mapped and each chunk is read only when it is dispatched; at most a few
chunks per worker are in flight (:func:`onnxinv.inversion.parallel.imap_chunks`), so memory stays
bounded whatever the file's size. Each finished chunk is written at once; a rerun of the same call
skips the chunks already done, so a run survives a crash, SIGTERM or a lost worker; the final files
are assembled from the chunks at the end. The chunks run wherever :func:`onnxinv.invert`'s would (in
process, the local pool, any ``concurrent.futures.Executor``, a Dask cluster) and the results are the
same on each.

The output folder
-----------------
``manifest.json``
    written first: the format (``onnxinv-stream/1``), the run's *identity* (the model's SHA-256, the
    observations' count, shape and dtype, the method, noise, every setting, the mask's SHA-256, the
    chunk size, onnxinv's version), its SHA-256 (``run``), the chunk layout, and ``complete``
    (false until the final files are in place).
``chunks/<start>-<stop>.npz``
    one per chunk, observations ``start`` to ``stop - 1`` (12-digit numbers): ``z`` (m, k) float64,
    ``verdict``, ``reason``, ``method``, ``evidence`` (strings), ``residual_rel_l2``, ``residual_linf``
    (onnxruntime), ``seconds``, the messages of observations without a confirmed fit
    (``failed_index``, ``failed_message``) and ``meta``: the run's SHA-256, the range, and the SHA-256
    of the chunk's input values (and mask rows).
``z.npy``
    (N, ...) latents in the model's input shape and dtype (``flat``: (N, k)), as ``onnxinv invert``
    writes them; ``verdicts.npy`` (N,) strings; ``residuals.npy`` (N,) float64 relative l2 residuals.
``summary.json``
    counts of each verdict, the first observations without a confirmed fit with their messages,
    throughput, what was reused.

Every file is written to a temporary beside it and renamed into place (``os.replace``) once complete
and fsync'd, so no file is ever half-written; a chunk counts as done only if its file loads, names this
run and this range, and its input digest matches the values now in the file (so a changed observation
is recomputed, the others are not). A run with another identity is refused unless ``restart=True``,
which deletes the folder's results first. One run at a time per folder (a lock file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from onnxinv import files
from onnxinv.errors import InvalidArgumentError, ObservationError, OnnxInvError
from onnxinv.inversion import api, parallel
from onnxinv.inversion.framework import NOISE_MODELS, Settings
from onnxinv.inversion.registry import get_method
from onnxinv.inversion.verdict import Verdict
from onnxinv.layers import Generator

__all__ = [
    "DEFAULT_CHUNK",
    "FORMAT",
    "FolderResult",
    "ProgressLine",
    "invert_to_folder",
    "open_rows",
]

FORMAT = "onnxinv-stream/1"
DEFAULT_CHUNK = 256  # observations per chunk: see README, "Many observations", for the trade-off
FAILED_SHOWN = 100  # observations without a confirmed fit listed in summary.json
_VERDICT_WIDTH = max(len(v.value) for v in Verdict)
_CHUNK_NAME = re.compile(r"^(\d{12})-(\d{12})\.npz$")
_FINALS = ("z.npy", "verdicts.npy", "residuals.npy", "summary.json")
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------------
# Reading rows


class _Rows:
    """Observations (or per-observation masks) as (N, n) rows, read a range at a time."""

    def __init__(self, array: np.ndarray, single: bool, where: str, shape: tuple[int, ...]) -> None:
        self.array = array
        self.single = single
        self.where = where
        self.shape = shape

    @property
    def count(self) -> int:
        return int(self.array.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def rows(self, a: int, b: int) -> np.ndarray:
        return np.array(self.array[a:b])  # a copy: pages of a memory-mapped file are read here


def open_rows(path: str | os.PathLike[str], output_dim: int, what: str = "observation") -> np.ndarray:
    """A ``.npy`` file of rows with ``output_dim`` values each, memory-mapped read-only: ``(N, output_dim)``
    (one observation of any shape gives ``(1, output_dim)``).

    Nothing but the header is read now; pages are read when rows are used. The file must be a regular
    file whose header declares a plain numeric array (never pickled objects) in C order, with exactly
    the declared number of bytes after the header. There is no size cap: this is for files larger than
    memory.
    """
    return _open_npy(Path(path), output_dim, what)[0]


def _open_npy(path: Path, output_dim: int, what: str) -> tuple[np.ndarray, bool, tuple[int, ...]]:
    if path.suffix.lower() != ".npy":
        raise ObservationError(
            f"{path}: only .npy files can be memory-mapped; save the {what}s with numpy.save (a .npz or "
            "a PNG is read whole instead)."
        )
    fd, info = files.open_regular(path, f"{what} file")
    with os.fdopen(fd, "rb") as handle:
        shape, fortran, dtype = files._npy_header(handle, str(path), what)
        offset = handle.tell()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        declared = count * dtype.itemsize
        if info.st_size - offset != declared:
            raise ObservationError(
                f"{path}: the header declares shape {shape} {dtype}, {declared:,} bytes of data, but the file "
                f"holds {info.st_size - offset:,} after its header, so it is damaged or not what it claims. "
                "Save it again with numpy.save."
            )
        if fortran and len(shape) > 1:
            raise ObservationError(
                f"{path}: the array is stored in Fortran order, so one observation's values are not "
                "contiguous and each chunk would read the whole file; save it in C order "
                "(numpy.save(path, numpy.ascontiguousarray(x)))."
            )
        if count == 0:
            raise ObservationError(f"{path}: the {what} file is empty (shape {shape}).")
        mapped = np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)
    rows, single = files.split_batch(mapped, output_dim, str(path), what)
    return rows, single, shape


def _source(observations: object, generator: Generator) -> _Rows:
    n = generator.output_dim
    if isinstance(observations, (str, os.PathLike)):
        path = Path(observations)
        if path.suffix.lower() == ".npy":
            rows, single, shape = _open_npy(path, n, "observation")
            if rows.dtype.kind != "f":
                raise ObservationError(
                    f"{path}: the observations have dtype {rows.dtype}; onnxinv needs floating-point values "
                    "on the model's output scale (8-bit images: divide by 255 as the model expects)."
                )
            return _Rows(rows, single, str(path), shape)
        read = files.read_observations(path, generator, require_finite=False)
        return _Rows(read.values, read.single, str(path), read.shape)
    array = observations if isinstance(observations, np.ndarray) else np.asarray(observations)
    if array.dtype.kind != "f":
        raise ObservationError(
            f"the observations have dtype {array.dtype}; onnxinv needs floating-point values (float16, "
            "float32 or float64) on the model's output scale."
        )
    rows, single = files.split_batch(array, n, "the observations")
    return _Rows(rows, single, "the observations", tuple(array.shape))


def _mask_source(mask: object, output_dim: int, count: int) -> tuple[np.ndarray | None, _Rows | None]:
    """``(shared mask or None, per-observation rows or None)``."""
    if mask is None:
        return None, None
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if path.suffix.lower() == ".npy":
            rows = _open_npy(path, output_dim, "mask")[0]
            if rows.shape[0] == 1:
                return np.array(rows[0]), None
            if rows.shape[0] != count:
                raise ObservationError(
                    f"{path}: the mask file holds {rows.shape[0]} masks for {count} observations; give one "
                    f"mask of {output_dim} values, or one per observation."
                )
            return None, _Rows(rows, False, str(path), tuple(rows.shape))
        array = files.read_array(path, "mask")
    else:
        array = np.asarray(mask)
    if array.size == output_dim:
        return np.array(array).reshape(output_dim), None
    rows, _ = files.split_batch(array, output_dim, "the mask", "mask")
    if rows.shape[0] != count:
        raise ObservationError(
            f"the mask holds {rows.shape[0]} masks for {count} observations; give one mask of "
            f"{output_dim} values, or one per observation."
        )
    return None, _Rows(rows, False, "the mask", tuple(array.shape))


# --------------------------------------------------------------------------------------------------
# What a worker returns for a chunk


def solve_compact(generator: Generator, *args: Any) -> dict[str, np.ndarray]:
    """:func:`onnxinv.inversion.api.solve_chunk` on a worker, reduced to the arrays a chunk file keeps
    (a few hundred bytes per observation instead of the full results)."""
    results = api.solve_chunk(generator, *args)
    failed = [i for i, r in enumerate(results) if not r.verdict.success]
    return {
        "z": np.stack([np.asarray(r.z, dtype=np.float64) for r in results]),
        "verdict": np.array([r.verdict.value for r in results], dtype=f"<U{_VERDICT_WIDTH}"),
        "reason": np.array([r.reason.value for r in results]),
        "method": np.array([r.method for r in results]),
        "evidence": np.array([r.evidence.kind.value for r in results]),
        "residual_rel_l2": np.array([r.residual_rel_l2 for r in results], dtype=np.float64),
        "residual_linf": np.array([r.residual_linf for r in results], dtype=np.float64),
        "seconds": np.array([r.seconds for r in results], dtype=np.float64),
        "failed_index": np.array(failed, dtype=np.int64),
        "failed_message": np.array([results[i].message for i in failed], dtype=str),
    }


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class FolderResult:
    """What :func:`invert_to_folder` did.

    Attributes
    ----------
    folder : the output folder
    count : observations
    single : the input held one observation
    counts : how many observations got each verdict
    chunks : chunks in all
    reused : chunks found finished (by an earlier run) and not computed again
    seconds : wall time of this call
    computed_observations : observations computed by this call
    z_shape, z_dtype : of ``z.npy``
    residual_max : largest relative l2 residual (onnxruntime)
    engine : where the chunks ran ("in process", "local pool", "dask", ...)
    failed : the first observations without a confirmed fit, as (index, verdict, message)
    """

    folder: Path
    count: int
    single: bool
    counts: dict[str, int]
    chunks: int
    reused: int
    seconds: float
    computed_observations: int
    z_shape: tuple[int, ...]
    z_dtype: str
    residual_max: float
    engine: str
    failed: tuple[tuple[int, str, str], ...] = field(default=())

    @property
    def success(self) -> bool:
        """True when onnxruntime confirmed a fit for every observation."""
        return sum(self.counts.get(v.value, 0) for v in Verdict if not v.success) == 0

    @property
    def observations_per_second(self) -> float:
        """Observations computed by this call per second of its wall time."""
        return self.computed_observations / self.seconds if self.seconds > 0 else 0.0

    def path(self, name: str) -> Path:
        return self.folder / name

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "count": self.count,
            "single": self.single,
            "success": self.success,
            "verdicts": dict(self.counts),
            "chunks": self.chunks,
            "reused_chunks": self.reused,
            "computed_observations": self.computed_observations,
            "seconds": self.seconds,
            "observations_per_second": self.observations_per_second,
            "engine": self.engine,
            "z": str(self.folder / "z.npy"),
            "z_shape": list(self.z_shape),
            "z_dtype": self.z_dtype,
            "verdicts_file": str(self.folder / "verdicts.npy"),
            "residuals_file": str(self.folder / "residuals.npy"),
            "residual_max": self.residual_max if np.isfinite(self.residual_max) else None,
            "failed": [{"index": i, "verdict": v, "message": m} for i, v, m in self.failed],
        }


# --------------------------------------------------------------------------------------------------
# Progress


class ProgressLine:
    """One line on a terminal, rewritten in place: observations and chunks done, observations per second
    and the time left. Call it with the number of observations just finished (the ``progress``
    callback of :func:`onnxinv.invert` and :func:`invert_to_folder`); ``close()`` ends the line.

    :func:`invert_to_folder` calls :meth:`begin` with what is left once it knows which chunks an earlier
    run finished, so the rate and the time left count only this run's work.
    """

    def __init__(
        self,
        total: int,
        *,
        chunks: int | None = None,
        file: IO[str] | None = None,
        label: str = "inverting",
        interval: float = 0.25,
    ) -> None:
        self.file = file if file is not None else sys.stderr
        self.label = label
        self.interval = interval
        self._reset(total, chunks, 0)
        self.started_line = False

    def begin(self, total: int, chunks: int | None = None, reused_chunks: int = 0) -> None:
        """Start (again) with ``total`` observations in ``chunks`` chunks to do, ``reused_chunks`` done before."""
        self._reset(total, chunks, reused_chunks)
        self._show(force=True)

    def _reset(self, total: int, chunks: int | None, reused_chunks: int) -> None:
        self.total = int(total)
        self.chunks = chunks
        self.reused = reused_chunks
        self.done = 0
        self.chunks_done = 0
        self.started = time.monotonic()
        self.shown = 0.0
        self.width = 0
        self._show(force=True)

    def __call__(self, count: int) -> None:
        self.done += int(count)
        self.chunks_done += 1
        self._show(force=self.done >= self.total)

    def close(self) -> None:
        if not self.started_line:
            return
        self._show(force=True)
        self.started_line = False
        with contextlib.suppress(Exception):
            self.file.write("\n")
            self.file.flush()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"{self.label} {self.done:,}/{self.total:,} observations"]
        if self.chunks is not None:
            parts.append(f"{self.chunks_done:,}/{self.chunks:,} chunks")
        elif self.chunks_done:
            parts.append(f"{self.chunks_done:,} chunks")
        if self.reused:
            parts.append(f"{self.reused:,} chunks done before")
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            parts.append(f"{rate:,.0f} obs/s")
            if self.done < self.total:
                parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
            else:
                parts.append(f"{_clock(elapsed)}")
        return ", ".join(parts)

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < self.interval:
            return
        self.shown = now
        self.started_line = True
        line = self.text()
        pad = max(0, self.width - len(line))
        self.width = len(line)
        with contextlib.suppress(Exception):
            self.file.write("\r" + line + " " * pad)
            self.file.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# --------------------------------------------------------------------------------------------------
# The run


def invert_to_folder(
    generator: Generator,
    observations: object,
    folder: str | os.PathLike[str],
    method: str = "auto",
    noise: float | None = None,
    mask: object = None,
    *,
    noise_model: str | None = None,
    tol: float | None = None,
    time_limit: float | None = None,
    seed: int | None = None,
    settings: Settings | None = None,
    workers: int | None = None,
    executor: object = None,
    chunk_size: int | None = None,
    restart: bool = False,
    flat: bool = False,
    progress: parallel.Progress | None = None,
) -> FolderResult:
    """Invert every observation into ``folder``, chunk by chunk; a rerun resumes (module docstring).

    Parameters
    ----------
    generator : the generator (``onnxinv.load(path)``)
    observations : a ``.npy`` file (memory-mapped, read chunk by chunk), a ``.npz`` / PNG file (read
        whole), or an array (a ``numpy.memmap`` stays on disk)
    folder : the output folder (created if missing; its parent must exist)
    method, noise, mask, noise_model, tol, time_limit, seed, settings : as for :func:`onnxinv.invert`;
        ``mask`` may also be a ``.npy`` file (one mask, or one per observation, memory-mapped)
    workers : processes of the local pool (None: one per core when there is more than one chunk to do)
    executor : where chunks run instead: any ``concurrent.futures.Executor`` or a ``distributed.Client``
        (not with ``workers``)
    chunk_size : observations per chunk (default :data:`DEFAULT_CHUNK`); part of the run's identity
    restart : start over: delete the results found in ``folder`` (of this run or another) first
    flat : write ``z.npy`` as (N, k) instead of in the model's input shape
    progress : called with the number of observations of each chunk this call computes (a
        :class:`ProgressLine` is also told what was done before)

    Returns
    -------
    FolderResult

    Raises
    ------
    InvalidArgumentError : an argument outside its allowed values
    ObservationError : the observations or the mask are malformed (the message names the observation)
    OnnxInvError : the folder holds another run's results (without ``restart``), is not an onnxinv
        results folder, is in use by another run, or cannot be written
    """
    started = time.perf_counter()
    if not isinstance(generator, Generator):
        raise InvalidArgumentError(
            f"invert_to_folder() needs an onnxinv Generator as its first argument, got "
            f"{type(generator).__name__} (a path: load it first with onnxinv.load(path))"
        )
    record = get_method(method)
    cfg = api._settings(settings, tol=tol, time_limit=time_limit, seed=seed)
    api._check_batch_options(workers, executor, chunk_size)
    if noise_model is not None and noise_model not in NOISE_MODELS:
        raise InvalidArgumentError(
            f"noise_model must be one of {', '.join(NOISE_MODELS)}, got {noise_model!r}"
        )
    if progress is not None and not callable(progress):
        raise InvalidArgumentError(f"progress must be callable, got {progress!r}")
    model = noise_model or "bounded"
    source = _source(observations, generator)
    shared_mask, mask_rows = _mask_source(mask, generator.output_dim, source.count)
    size = int(chunk_size) if chunk_size is not None else DEFAULT_CHUNK
    count = source.count
    spans = [(a, min(count, a + size)) for a in range(0, count, size)]
    identity = {
        "format": FORMAT,
        "onnxinv": _version(),
        "model": _model_digest(generator),
        "observations": {
            "count": count,
            "values_per_observation": generator.output_dim,
            "shape": list(source.shape),
            "dtype": source.dtype.str,
            "single": source.single,
        },
        "method": record.name,
        "noise": noise,
        "noise_model": model,
        "settings": dataclasses.asdict(cfg),
        "mask": _mask_identity(shared_mask, mask_rows),
        "chunk_size": size,
    }
    run = _digest(json.dumps(identity, sort_keys=True, default=repr).encode())
    out = Path(folder)
    chunk_dir = out / "chunks"
    with _Lock(out):
        _open_folder(out, identity, run, restart, [p for p in (observations, mask) if _is_path(p)])
        _write_json(out / MANIFEST, {**_manifest(identity, run, spans), "complete": False})

        def inputs(a: int, b: int) -> tuple[np.ndarray, np.ndarray | None, str]:
            rows = source.rows(a, b)
            masks = None if mask_rows is None else mask_rows.rows(a, b)
            return rows, masks, _rows_digest(rows, masks)

        todo: list[int] = []
        for i, (a, b) in enumerate(spans):
            if not _finished(chunk_dir / _chunk_name(a, b), run, a, b, lambda a=a, b=b: inputs(a, b)[2]):
                todo.append(i)
        reused = len(spans) - len(todo)
        remaining = sum(spans[i][1] - spans[i][0] for i in todo)
        if isinstance(progress, ProgressLine):
            progress.begin(remaining, len(todo), reused)
        digests: dict[int, str] = {}

        def tasks() -> Iterator[tuple[Any, ...]]:
            for j, i in enumerate(todo):
                a, b = spans[i]
                rows, masks, digest = inputs(a, b)
                digests[j] = digest
                obs, noises, sources = _prepare(generator, source, rows, shared_mask, masks, noise, a)
                yield (obs.values, obs.mask, noises, sources, record.name, cfg, obs.precision, model)

        if todo:
            procs = workers
            if executor is None and workers is None:
                procs = min(os.cpu_count() or 1, len(todo))
            engine_name = _engine_name(executor, procs)
            chunk_dir.mkdir(exist_ok=True)
            finished = parallel.imap_chunks(
                generator, solve_compact, tasks(), workers=procs, executor=executor
            )
            with contextlib.closing(finished):  # an error here stops the engine at once
                for j, compact in finished:
                    a, b = spans[todo[j]]
                    meta = {"run": run, "start": a, "stop": b, "input": digests.pop(j)}
                    _write_chunk(chunk_dir / _chunk_name(a, b), compact, meta)
                    if progress is not None:
                        progress(b - a)
        else:
            engine_name = "none (every chunk was done before)"
        summary = _assemble(out, chunk_dir, spans, generator, source.single, flat)
        result = FolderResult(
            folder=out,
            count=count,
            single=source.single,
            counts=summary["verdicts"],
            chunks=len(spans),
            reused=reused,
            seconds=time.perf_counter() - started,
            computed_observations=remaining,
            z_shape=tuple(summary["z_shape"]),
            z_dtype=summary["z_dtype"],
            residual_max=summary["residual_max"],
            engine=engine_name,
            failed=tuple((f["index"], f["verdict"], f["message"]) for f in summary["failed"]),
        )
        _write_json(out / "summary.json", {**result.to_dict(), "run": run})
        _write_json(out / MANIFEST, {**_manifest(identity, run, spans), "complete": True})
    return result


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def _version() -> str:
    from onnxinv import __version__

    return __version__


def _engine_name(executor: object, procs: int | None) -> str:
    if executor is not None:
        return "dask" if parallel.is_dask(executor) else type(executor).__name__
    return "local pool" if procs is not None and procs > 1 else "in process"


def _prepare(
    generator: Generator,
    source: _Rows,
    rows: np.ndarray,
    shared_mask: np.ndarray | None,
    masks: np.ndarray | None,
    noise: float | None,
    start: int,
) -> tuple[Any, list[float | None], list[str | None]]:
    """Validate one chunk as :func:`onnxinv.invert` would; errors name the observation by its index in
    the whole file."""
    mask = masks if masks is not None else shared_mask
    observed = np.ones(rows.shape, dtype=bool) if mask is None else np.broadcast_to(mask != 0, rows.shape)
    bad = ~np.isfinite(rows) & observed
    if bad.any():
        obs, entry = (int(v) for v in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(rows[obs, entry]) else "an infinite value"
        raise ObservationError(
            f"{source.where}: observation {start + obs} holds {kind} at entry {entry} (flattened). Inversion "
            "needs finite values; if these entries are missing, give a mask that leaves them out."
        )
    try:
        return api.prepare_inputs(generator, rows, mask, noise, batch=True)
    except ObservationError as exc:
        raise ObservationError(
            f"{source.where}, observations {start} to {start + rows.shape[0] - 1} (numbered from 0 within "
            f"them below): {exc}"
        ) from None


def _model_digest(generator: Generator) -> str:
    if generator.model_bytes is not None:
        return _digest(generator.model_bytes)
    return _digest(pickle.dumps(generator.layers, protocol=4))


def _mask_identity(shared: np.ndarray | None, rows: _Rows | None) -> object:
    if shared is not None:
        return {"shared": _digest(np.ascontiguousarray(shared).tobytes()), "dtype": shared.dtype.str}
    if rows is not None:
        return {"per_observation": rows.where, "dtype": rows.dtype.str}
    return None


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _rows_digest(rows: np.ndarray, masks: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(f"{rows.dtype.str}{rows.shape}".encode())
    h.update(np.ascontiguousarray(rows).data)
    if masks is not None:
        h.update(f"{masks.dtype.str}{masks.shape}".encode())
        h.update(np.ascontiguousarray(masks).data)
    return h.hexdigest()


def _chunk_name(a: int, b: int) -> str:
    return f"{a:012d}-{b:012d}.npz"


def _manifest(identity: dict[str, Any], run: str, spans: Sequence[tuple[int, int]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "run": run,
        "identity": identity,
        "chunks": len(spans),
        "chunk_files": "chunks/<start>-<stop>.npz, 12 digits each, observations start to stop - 1",
        "final_files": list(_FINALS),
    }


# --------------------------------------------------------------------------------------------------
# The folder


class _Lock:
    """An exclusive lock on ``folder/.lock`` for the run (POSIX ``flock``; elsewhere no lock)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        folder = self.folder
        if not folder.exists():
            parent = folder.parent if str(folder.parent) else Path(".")
            if not parent.is_dir():
                raise OnnxInvError(
                    f"the output folder {folder}: its parent '{parent}' does not exist. Create it or choose "
                    "another folder."
                )
            try:
                folder.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise OnnxInvError(
                    f"the output folder {folder} could not be created ({exc.strerror or exc})."
                ) from None
        if not folder.is_dir():
            raise OnnxInvError(
                f"the output folder {folder} exists and is not a folder; choose a folder for the results."
            )
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            self.fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise OnnxInvError(
                f"the output folder {folder} cannot be written ({exc.strerror or exc}); choose another."
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise OnnxInvError(
                f"the output folder {folder} is in use by another onnxinv run; wait for it to finish or "
                "choose another folder."
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (removing it would race a waiting run)
            self.fd = None


def _open_folder(out: Path, identity: dict[str, Any], run: str, restart: bool, inputs: list[Any]) -> None:
    """Refuse a folder that holds something else; clear what a restart discards; drop stale files."""
    manifest = out / MANIFEST
    for given in inputs:
        for name in (*_FINALS, MANIFEST):
            with contextlib.suppress(OSError):
                if os.path.samefile(given, out / name):
                    raise OnnxInvError(
                        f"{given} is the output folder's {name}; the run would overwrite its own input. "
                        "Choose another folder."
                    )
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
            if not isinstance(old, dict) or old.get("format") != FORMAT:
                raise ValueError(f"format {old.get('format') if isinstance(old, dict) else None!r}")
        except (OSError, ValueError) as exc:
            raise OnnxInvError(
                f"the output folder {out} has a {MANIFEST} that onnxinv cannot read ({exc}); choose another "
                "folder."
            ) from None
        if old.get("run") != run or restart:
            if not restart:
                changed = _differences(old.get("identity", {}), identity)
                raise OnnxInvError(
                    f"the output folder {out} holds the results of another run (different "
                    f"{', '.join(changed) or 'identity'}); its chunks cannot be reused. Choose another folder, "
                    "or restart to discard them (--restart, restart=True)."
                )
            _clear(out)
    else:
        foreign = [p.name for p in out.iterdir() if p.name not in (".lock", "chunks")]
        if foreign:
            raise OnnxInvError(
                f"the output folder {out} is not empty and holds no onnxinv run ({', '.join(sorted(foreign)[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder."
            )
        if restart:
            _clear(out)
    _drop_stale(out)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    names = {
        "model": "model",
        "observations": "observations (count, shape or dtype)",
        "method": "method",
        "noise": "noise",
        "noise_model": "noise model",
        "settings": "settings",
        "mask": "mask",
        "chunk_size": "chunk size",
        "onnxinv": "onnxinv version",
        "format": "format",
    }
    return [label for key, label in names.items() if old.get(key) != new.get(key)]


def _clear(out: Path) -> None:
    """Delete this folder's results (only files onnxinv writes there, nothing else)."""
    for name in (*_FINALS, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    chunks = out / "chunks"
    if chunks.is_dir():
        for path in chunks.iterdir():
            if _CHUNK_NAME.match(path.name) or path.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _drop_stale(out: Path) -> None:
    """Remove the final files of an earlier run (they are assembled again at the end, and must not be
    read while this run changes chunks) and temporaries a killed run left."""
    for name in _FINALS:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    names = (*_FINALS, MANIFEST)
    for path in out.iterdir():
        if path.name.endswith(".tmp") and any(path.name.startswith(f".{n}.") for n in names):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    chunks = out / "chunks"
    if chunks.is_dir():
        for path in chunks.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _finished(path: Path, run: str, a: int, b: int, digest: Any) -> bool:
    """Is the chunk file at ``path`` a complete result of this run, range and input?"""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            z = data["z"]
            verdicts = data["verdict"]
    except Exception:  # unreadable: computed again and replaced
        return False
    if meta.get("run") != run or meta.get("start") != a or meta.get("stop") != b:
        return False
    if z.shape[0] != b - a or verdicts.shape != (b - a,):
        return False
    return bool(meta.get("input") == digest())


def _write_chunk(path: Path, compact: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta, sort_keys=True)), **compact)  # type: ignore[arg-type]
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    with files.Outputs() as outputs:
        outputs.add(path, "results file")
        outputs.stage(path, data)
        outputs.commit()


def _write_json(path: Path, document: dict[str, Any]) -> None:
    _write_bytes(path, (json.dumps(document, indent=1, sort_keys=True, default=str) + "\n").encode())


class _NpyWriter:
    """An ``.npy`` file written piece by piece into a temporary beside ``path``, renamed by ``commit``."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        fd, self.temp = files.new_temporary(path)  # registered: a signal's cleanup removes it
        self.handle = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self.handle, header)

    def write(self, array: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())

    def finish(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def commit(self) -> None:
        os.replace(self.temp, self.path)
        files.forget_temporary(self.temp)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)
        files.forget_temporary(self.temp)


def _assemble(
    out: Path,
    chunk_dir: Path,
    spans: Sequence[tuple[int, int]],
    generator: Generator,
    single: bool,
    flat: bool,
) -> dict[str, Any]:
    """``z.npy``, ``verdicts.npy``, ``residuals.npy`` from the chunk files, one chunk in memory at a time."""
    count = spans[-1][1]
    z_first = files.latent_for_model(np.zeros(generator.latent_dim), generator, single=single, flat=flat)
    if single:
        z_shape = tuple(z_first.shape)
    else:
        z_shape = (count, *z_first.shape[1:]) if not flat else (count, generator.latent_dim)
    writers: list[_NpyWriter] = []
    counts = {v.value: 0 for v in Verdict}
    failed: list[dict[str, Any]] = []
    worst = -np.inf
    try:
        z_out = _NpyWriter(out / "z.npy", z_first.dtype, z_shape)
        writers.append(z_out)
        v_out = _NpyWriter(out / "verdicts.npy", np.dtype(f"<U{_VERDICT_WIDTH}"), (count,))
        writers.append(v_out)
        r_out = _NpyWriter(out / "residuals.npy", np.dtype(np.float64), (count,))
        writers.append(r_out)
        for a, b in spans:
            with np.load(chunk_dir / _chunk_name(a, b), allow_pickle=False) as data:
                z = files.latent_for_model(data["z"], generator, single=single, flat=flat)
                verdicts = data["verdict"]
                residuals = data["residual_rel_l2"]
                if len(failed) < FAILED_SHOWN:
                    for i, message in zip(data["failed_index"], data["failed_message"]):
                        failed.append(
                            {"index": a + int(i), "verdict": str(verdicts[i]), "message": str(message)}
                        )
                        if len(failed) >= FAILED_SHOWN:
                            break
            z_out.write(z)
            v_out.write(verdicts)
            r_out.write(residuals)
            for value, n in zip(*np.unique(verdicts, return_counts=True)):
                counts[str(value)] = counts.get(str(value), 0) + int(n)
            if residuals.size:
                worst = max(worst, float(np.nanmax(residuals)) if np.isfinite(residuals).any() else np.inf)
        for writer in writers:
            writer.finish()
        for writer in writers:
            writer.commit()
        writers.clear()
    finally:
        for writer in writers:
            writer.discard()
    return {
        "verdicts": counts,
        "failed": failed,
        "z_shape": z_shape,
        "z_dtype": z_first.dtype.name,
        "residual_max": worst,
    }
