"""onnxruntime as the oracle: the model itself, run exactly as exported.

Settings follow the project's rules: CPU provider only, every graph optimization off (fusions change
rounding), one thread per session, the declared input dtype fed as is. The model reaches onnxruntime
as bytes with all external data already inlined by onnxinv, so onnxruntime never resolves a path.

onnxruntime logs nothing of its own (sessions log at FATAL only, telemetry is off): when it fails, the
exception becomes one :class:`~onnxinv.errors.OracleError` in our words (the node and op that failed,
the reason, without onnxruntime's source paths), and no coloured log line reaches stderr before it.
"""

from __future__ import annotations

import contextlib
import re
import types
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from onnxinv.errors import ObservationError, OracleError

if TYPE_CHECKING:
    from onnxinv.layers import Generator

# Float64 layer list vs float32 onnxruntime differ by up to ~4e-6 on real files.
RTOL = 1e-4
ATOL = 1e-5
_ORT_FATAL = 4  # onnxruntime's severity levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


class Oracle:
    """Runs latents through onnxruntime and returns outputs as (N, n) float64."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        input_name: str,
        input_dtype: str,
        sample_input_shape: tuple[int, ...],
        output_dim: int,
        batch_size: int | None,
        has_batch_dim: bool,
        where: str = "the model",
        fixed: Mapping[str, np.ndarray] | None = None,
        fixed_batched: frozenset[str] = frozenset(),
    ) -> None:
        """``fixed``: values fed beside every latent; those named in ``fixed_batched`` hold one sample
        (batch 1) and are repeated to the batch of each run."""
        import onnxruntime as ort

        _quiet(ort)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # Errors come back as exceptions, which we word ourselves; onnxruntime's own ERROR log lines
        # (coloured, on stderr, ahead of our message) would only repeat them.
        options.log_severity_level = _ORT_FATAL
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = _ORT_FATAL
        try:
            self._session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own, undocumented exception types
            raise OracleError(
                f"onnxruntime could not load {where}: {ort_reason(exc)}. The parsed layer list cannot "
                "be verified without it; check that the file opens in onnxruntime on its own."
            ) from exc
        self._input_name = input_name
        self._dtype = np.dtype(input_dtype)
        self._sample_shape = tuple(sample_input_shape)
        self._latent_dim = int(np.prod(self._sample_shape))
        self._output_dim = output_dim
        self._batch = batch_size
        self._has_batch = has_batch_dim
        self._where = where
        self._fixed = dict(fixed or {})
        self._fixed_batched = frozenset(fixed_batched) & set(self._fixed) if has_batch_dim else frozenset()

    @classmethod
    def for_generator(cls, generator: Generator) -> Oracle:
        model_bytes = generator.model_bytes
        if model_bytes is None:
            from google.protobuf.message import EncodeError

            from onnxinv.building import build_model

            model = build_model(
                generator.layers,
                dtype=generator.input.dtype,
                input_name=generator.input.name,
                output_name=generator.output.name,
            )
            try:
                model_bytes = model.SerializeToString()
            except (EncodeError, ValueError) as exc:  # protobuf cannot write a message over 2 GiB
                weights = sum(layer.nnz for layer in generator.layers)
                raise OracleError(
                    f"the generator's {weights:,} weights do not fit in one ONNX model for onnxruntime "
                    f"({type(exc).__name__}: protobuf writes at most 2 GiB), so it cannot be checked; use "
                    "fewer or smaller layers."
                ) from None
        return cls(
            model_bytes,
            input_name=generator.input.name,
            input_dtype=generator.input.dtype,
            sample_input_shape=generator.sample_input_shape,
            output_dim=generator.output_dim,
            batch_size=generator.batch_size,
            has_batch_dim=generator.has_batch_dim,
            where=generator.path or "the model",
            fixed=generator.fixed,
            fixed_batched=frozenset(
                info.name
                for info in generator.inputs
                if info.name in generator.fixed and info.shape and not isinstance(info.shape[0], int)
            ),
        )

    def run(self, z: np.ndarray) -> np.ndarray:
        """Outputs for latents ``z`` of shape (k,) or (N, k), as (n,) or (N, n) float64."""
        z = np.asarray(z)
        single = z.ndim == 1
        batch = z.reshape(1, -1) if single else z
        if batch.ndim != 2 or batch.shape[1] != self._latent_dim:
            raise ObservationError(
                f"latent has shape {z.shape}; the model takes {self._latent_dim} values per latent"
            )
        if not self._has_batch:
            out = np.stack([self._run_chunk(row.reshape(self._sample_shape))[0] for row in batch])
        elif self._batch is None:
            out = self._run_chunk(batch.reshape((batch.shape[0], *self._sample_shape)), batch.shape[0])
        else:
            chunks = []
            for start in range(0, batch.shape[0], self._batch):
                part = batch[start : start + self._batch]
                count = part.shape[0]
                if count < self._batch:  # a fixed-batch export only accepts exactly its batch size
                    part = np.concatenate([part, np.repeat(part[-1:], self._batch - count, axis=0)])
                feed = part.reshape((self._batch, *self._sample_shape))
                chunks.append(self._run_chunk(feed, self._batch)[:count])
            out = np.concatenate(chunks)
        return out[0] if single else out

    def _feeds(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {self._input_name: feed.astype(self._dtype)}
        rows = feed.shape[0] if self._has_batch else 1
        for name, value in self._fixed.items():
            feeds[name] = np.repeat(value, rows, axis=0) if name in self._fixed_batched else value
        return feeds

    def _run_chunk(self, feed: np.ndarray, count: int = 1) -> np.ndarray:
        try:
            (result,) = self._session.run(None, self._feeds(feed), self._run_options)
        except Exception as exc:
            raise OracleError(
                f"onnxruntime failed to run {self._where} on an input of shape {feed.shape} "
                f"({self._dtype}): {ort_reason(exc)}. The model itself fails there, so its outputs cannot "
                "be compared; check that it runs in onnxruntime on its own with this input shape (a "
                "model that declares a free batch size may still work only for one)."
            ) from exc
        result = np.asarray(result, dtype=np.float64)
        if result.size != count * self._output_dim:
            raise OracleError(
                f"onnxruntime returned {result.size} values for {count} latent(s) from {self._where}; "
                f"the layer list gives {self._output_dim} per latent"
            )
        # Batch outermost in memory order; this also undoes skl2onnx's (N*n, 1) multi-target output.
        return result.reshape(count, self._output_dim)


_SESSIONS: weakref.WeakKeyDictionary[Generator, Oracle] = weakref.WeakKeyDictionary()


def oracle_for(generator: Generator) -> Oracle:
    """The onnxruntime oracle of ``generator``, built once per generator object and process."""
    oracle = _SESSIONS.get(generator)
    if oracle is None:
        oracle = Oracle.for_generator(generator)
        _SESSIONS[generator] = oracle
    return oracle


def _quiet(ort: types.ModuleType) -> None:
    """Turn off onnxruntime's telemetry (a no-op where it has none); done once per process."""
    if not _QUIET:
        _QUIET.append(True)
        with contextlib.suppress(Exception):  # older or minimal builds without the call
            ort.disable_telemetry_events()


_QUIET: list[bool] = []
_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_NODE_FAILED = re.compile(
    r"Non-zero status code returned while running (?P<op>\S+) node\.\s*Name:'(?P<name>[^']*)'\s*"
    r"Status Message:\s*"
)
_SOURCE = re.compile(r"(?:/[^\s:]+|[\w.\-]+)\.(?:h|hpp|cc|cpp|cxx):\d+\s+")
_ASSERTION = re.compile(r"\S+ (?:==|!=|<=|>=|<|>) \S+ was false\.\s*")


def ort_reason(exc: BaseException) -> str:
    """onnxruntime's exception text as one sentence of ours: the node and op when it names them, the
    reason, without the status prefix, onnxruntime's source paths, C++ signatures and assertion text."""
    text = " ".join((str(exc).strip() or type(exc).__name__).split())
    text = _STATUS_PREFIX.sub("", text)
    node = ""
    found = _NODE_FAILED.search(text)
    if found:
        node = f"node '{found['name']}' ({found['op']}) failed: "
        text = text[: found.start()] + text[found.end() :]
    while True:
        source = _SOURCE.search(text)
        if not source:
            break
        text = text[: source.start()] + _drop_signature(text[source.end() :])
    text = _ASSERTION.sub("", text).strip()
    return (node + text)[:600].rstrip(". ")


def _drop_signature(text: str) -> str:
    """``text`` without a leading C++ function signature such as ``void a::b(const T&, int) const``."""
    head = re.match(r"[\w:<>,~*&\s]*?\w\(", text)
    if not head or ". " in head.group(0):
        return text
    depth = 0
    for i in range(head.end() - 1, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                rest = text[i + 1 :]
                return re.sub(r"^\s*(?:const\s*)?", "", rest)
    return text
