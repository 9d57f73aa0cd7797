"""Read an ONNX file safely and inline its external data.

What we trust and what we do not:

* the model file is read once, after a size check, and parsed from bytes; nothing is unpickled;
* external data (PyTorch's default export writes a ``.onnx.data`` sidecar) is resolved by us, never by
  onnx or onnxruntime: the location must be relative, stay inside the model's folder after
  normalisation, name a regular file that is not a symlink and has one hard link, and
  ``offset + length`` must lie within it; the total is capped;
* every tensor is looked at: initializers, sparse initializers, Constant attributes, and tensors
  inside subgraph attributes;
* onnxruntime then receives the fully inlined model as bytes, so it never resolves a path itself.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import TensorProto

from onnxinv.errors import ModelLoadError

MAX_MODEL_BYTES = 1 << 30  # the model file itself
MAX_EXTERNAL_BYTES = 4 << 30  # all external data together
_PROTOBUF_LIMIT = (2 << 30) - 1  # a serialized ModelProto cannot exceed 2 GiB

_HINT_REEXPORT = "re-export the model, or check that the file is the generator you meant"


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model whose tensors all carry their data inline."""

    model: onnx.ModelProto
    model_bytes: bytes
    path: Path
    external_bytes: int


def load_model_file(
    path: str | os.PathLike[str],
    *,
    max_model_bytes: int = MAX_MODEL_BYTES,
    max_external_bytes: int = MAX_EXTERNAL_BYTES,
) -> LoadedModel:
    """Read ``path`` into a ModelProto with external data inlined, or raise ModelLoadError."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file. Check the path to the .onnx model.") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path}: not a regular file. Give the path of an .onnx model file.")
    if info.st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty, so it holds no model; {_HINT_REEXPORT}.")
    if info.st_size > max_model_bytes:
        raise ModelLoadError(
            f"{path}: the file is {info.st_size:,} bytes, over the {max_model_bytes:,}-byte limit for a "
            "model file. Dense generators are far smaller; store large weights as external data."
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path}: not an ONNX model (the protobuf does not parse: {exc}). The file may be truncated, "
            f"or not an .onnx file at all; {_HINT_REEXPORT}."
        ) from None
    _check_is_model(model, path)
    folder = path.resolve().parent
    budget = [max_external_bytes]
    external = 0
    for tensor, where in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            external += _inline_external(tensor, where, folder, path, budget, max_external_bytes)
    if external:
        try:
            model_bytes = model.SerializeToString()
        except (ValueError, EncodeError) as exc:  # upb raises EncodeError over protobuf's 2 GiB
            raise ModelLoadError(
                f"{path}: the model with its external data inlined is too large ({exc})."
            ) from None
        if len(model_bytes) > _PROTOBUF_LIMIT:
            raise ModelLoadError(
                f"{path}: the model with its external data inlined exceeds protobuf's 2 GiB limit."
            )
    else:
        model_bytes = data
    return LoadedModel(model, model_bytes, path, external)


def _check_is_model(model: onnx.ModelProto, path: Path) -> None:
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{path}: the file parses as protobuf but is not an ONNX model (no IR version or no graph). "
            f"It may be another kind of protobuf file; {_HINT_REEXPORT}."
        )
    if not model.graph.node:
        raise ModelLoadError(f"{path}: the model's graph has no nodes; {_HINT_REEXPORT}.")
    if not model.graph.output:
        raise ModelLoadError(f"{path}: the model's graph declares no output; {_HINT_REEXPORT}.")
    bad = _invalid_text_field(model, "model")
    if bad:
        raise ModelLoadError(
            f"{path}: the field {bad} holds bytes that are not valid UTF-8 text, so the file is damaged; "
            f"{_HINT_REEXPORT}."
        )


def _invalid_text_field(message, where: str) -> str | None:
    """The first string field that protobuf could not decode as UTF-8 (it then returns bytes)."""
    for field, value in message.ListFields():
        here = f"{where}.{field.name}"
        # protobuf >= 5 has is_repeated; older releases only label
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        values = value if repeated else [value]
        if field.type == field.TYPE_STRING:
            if any(not isinstance(v, str) for v in values):
                return here
        elif field.type == field.TYPE_MESSAGE:
            for v in values:
                found = _invalid_text_field(v, here)
                if found:
                    return found
    return None


def _all_tensors(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[TensorProto, str]]:
    """Every TensorProto in the graph, with a description of where it sits."""
    for t in graph.initializer:
        yield t, f"{prefix}initializer '{t.name}'"
    for s in graph.sparse_initializer:
        yield s.values, f"{prefix}sparse initializer '{s.values.name}' (values)"
        yield s.indices, f"{prefix}sparse initializer '{s.values.name}' (indices)"
    for node in graph.node:
        label = f"{prefix}node '{node.name}' ({node.op_type}) attribute"
        for attr in node.attribute:
            here = f"{label} '{attr.name}'"
            if attr.HasField("t"):
                yield attr.t, here
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, here
                yield attr.sparse_tensor.indices, here
            for t in attr.tensors:
                yield t, here
            for s in attr.sparse_tensors:
                yield s.values, here
                yield s.indices, here
            if attr.HasField("g"):
                yield from _all_tensors(attr.g, f"{here} > ")
            for g in attr.graphs:
                yield from _all_tensors(g, f"{here} > ")


def _inline_external(
    tensor: TensorProto, where: str, folder: Path, path: Path, budget: list[int], cap: int
) -> int:
    fields = {entry.key: entry.value for entry in tensor.external_data}
    location = fields.get("location", "")
    prefix = f"{path}: {where} stores its data externally"

    def fail(why: str, hint: str = "keep the data file next to the model, as the exporter wrote it") -> None:
        raise ModelLoadError(f"{prefix} in '{location}', which is refused: {why}. {hint.capitalize()}.")

    if not location:
        fail("no location is given")
    if "\x00" in location:
        fail("the location contains a NUL byte")
    if (
        os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or (len(location) > 1 and location[1] == ":")
    ):
        fail("the location is an absolute path; external data must sit in the model's folder")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        fail("the location climbs out of the model's folder with '..'")
    candidate = folder / Path(*parts)
    resolved = Path(os.path.realpath(candidate))
    if resolved.parent != folder and folder not in resolved.parents:
        fail("the location resolves outside the model's folder")
    try:
        offset = int(fields.get("offset", "0"))
        length = int(fields["length"]) if "length" in fields else None
    except ValueError:
        fail("offset or length is not an integer")
    if offset < 0 or (length is not None and length < 0):
        fail("offset or length is negative")
    step = folder
    for part in parts:
        step = step / part
        if os.path.islink(step):
            fail("the path goes through a symbolic link")
    # O_NOFOLLOW closes the gap between the check above and the open; fstat then checks the file opened.
    try:
        fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        fail("the file does not exist", "put the data file the exporter wrote next to the model")
    except OSError as exc:
        fail(f"the file cannot be opened ({exc.strerror})")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            fail("it is not a regular file")
        if info.st_nlink != 1:
            fail(f"the file has {info.st_nlink} hard links; a hard link can point anywhere on the disk")
        size = info.st_size
        if length is None:
            length = size - offset
        if offset + length > size:
            fail(f"offset {offset} + length {length} runs past the end of the {size}-byte file")
        expected = _expected_bytes(tensor)
        if expected is not None and expected != length:
            fail(
                f"the tensor's shape {list(tensor.dims)} needs {expected} bytes but the entry gives {length}",
                _HINT_REEXPORT,
            )
        if length > budget[0]:
            fail(f"external data would exceed the {cap:,}-byte total limit", _HINT_REEXPORT)
        budget[0] -= length
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        fail("the file ended early")
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT
    return length


def _expected_bytes(tensor: TensorProto) -> int | None:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    count = 1
    for d in tensor.dims:
        if d < 0:
            return None
        count *= d
    return count * itemsize
