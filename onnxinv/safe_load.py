"""Read an ONNX file safely and inline its external data.

What we trust and what we do not:

* the model file is read once, after a size check, and parsed from bytes; nothing is unpickled;
* the model file is opened non-blocking from a descriptor of its folder, and must be a regular file
  (a FIFO or a device is refused before anything is read);
* external data (PyTorch's default export writes a ``.onnx.data`` sidecar) is resolved by us, never by
  onnx or onnxruntime: the location must be relative and free of ``..``; it is opened one component
  at a time from the descriptor of the model's folder, each folder with ``O_DIRECTORY | O_NOFOLLOW``
  and the file with ``O_NOFOLLOW | O_NONBLOCK``, so no symbolic link is followed and nothing outside
  the folder can be reached even if a folder is swapped for a link while we load (there is no gap
  between a check and the open); the file must be regular with one hard link, and ``offset +
  length`` must lie within it; the total is capped, and the inlined model must fit protobuf's 2 GiB
  limit, both checked before any external byte is read;
* every tensor is looked at: initializers, sparse initializers, Constant attributes, and tensors
  inside subgraph attributes;
* onnxruntime then receives the fully inlined model as bytes, so it never resolves a path itself.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import onnx
from google.protobuf.message import DecodeError, Message
from google.protobuf.message import Error as ProtobufError
from onnx import TensorProto

from onnxinv.errors import ModelLoadError

MAX_MODEL_BYTES = 1 << 30  # the model file itself
MAX_EXTERNAL_BYTES = 4 << 30  # all external data together
_PROTOBUF_LIMIT = (2 << 30) - 1  # a serialized ModelProto cannot exceed 2 GiB
_PER_TENSOR_OVERHEAD = 16  # protobuf field tags and lengths an inlined raw_data adds, at most
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_HAS_DIR_FD = os.open in os.supports_dir_fd  # Linux, macOS, the BSDs; not Windows

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
    # The path the user gives may go through links; the model's folder is where the file really is.
    real = Path(os.path.realpath(path))
    try:
        folder_fd = _open_folder(real.parent)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file. Check the path to the .onnx model.") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        data = _read_model(path, real.name, folder_fd, max_model_bytes)
        model = _parse(data, path)
        _check_is_model(model, path)
        external = _inline_all(model, path, folder_fd, max_external_bytes, len(data))
    finally:
        if folder_fd >= 0:
            os.close(folder_fd)
    if external:
        try:
            model_bytes = model.SerializeToString()
        except (ValueError, ProtobufError) as exc:
            raise ModelLoadError(
                f"{path}: the model with its external data inlined cannot be encoded ({type(exc).__name__}: "
                f"{exc}); onnxinv hands onnxruntime the inlined model, so it cannot load this one."
            ) from None
        if len(model_bytes) > _PROTOBUF_LIMIT:
            raise ModelLoadError(
                f"{path}: the model with its external data inlined exceeds protobuf's 2 GiB limit."
            )
    else:
        model_bytes = data
    return LoadedModel(model, model_bytes, path, external)


def _open_in(folder_fd: int, name: str) -> int:
    """Open ``name`` in the folder ``folder_fd`` for reading: no link followed, never blocking."""
    flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
    if _HAS_DIR_FD:
        return os.open(name, flags, dir_fd=folder_fd)
    raise OSError(errno.ENOSYS, "opening relative to a folder descriptor is not supported here")


def _open_folder(folder: Path) -> int:
    """A descriptor of the model's folder, or -1 where folders cannot be opened (Windows)."""
    if not _HAS_DIR_FD:
        return -1
    return os.open(folder, os.O_RDONLY | _DIRECTORY | _CLOEXEC)


def _read_model(path: Path, name: str, folder_fd: int, max_model_bytes: int) -> bytes:
    try:
        # without folder descriptors (Windows) the model opens by path; its external data is then refused
        fd = (
            _open_in(folder_fd, name)
            if folder_fd >= 0
            else os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        )
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file. Check the path to the .onnx model.") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror}).") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = _kind(info.st_mode)
        raise ModelLoadError(
            f"{path}: not a regular file (it is {kind}). Give the path of an .onnx model file."
        )
    with os.fdopen(fd, "rb", closefd=True) as handle:
        if info.st_size == 0:
            raise ModelLoadError(f"{path}: the file is empty, so it holds no model; {_HINT_REEXPORT}.")
        if info.st_size > max_model_bytes:
            raise ModelLoadError(
                f"{path}: the file is {info.st_size:,} bytes, over the {max_model_bytes:,}-byte limit for a "
                "model file. Dense generators are far smaller; store large weights as external data."
            )
        try:
            data = handle.read(info.st_size + 1)
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot be read ({exc.strerror}).") from None
    if len(data) > max_model_bytes:  # the file grew while we read it
        raise ModelLoadError(f"{path}: the file is over the {max_model_bytes:,}-byte limit for a model file.")
    return data


def _parse(data: bytes, path: Path) -> onnx.ModelProto:
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path}: not an ONNX model (the protobuf does not parse: {exc}). The file may be truncated, "
            f"or not an .onnx file at all; {_HINT_REEXPORT}."
        ) from None
    return model


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


def _invalid_text_field(message: Message, where: str) -> str | None:
    """The first string field that protobuf could not decode as UTF-8 (it then returns bytes)."""
    for field, value in message.ListFields():
        here = f"{where}.{field.name}"
        # protobuf >= 5 has is_repeated; older releases only label (which the current stubs no longer list)
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED  # type: ignore[attr-defined]
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


class _Fail(Protocol):
    """Raises the ModelLoadError of one external tensor (never returns)."""

    def __call__(self, why: str, hint: str = ...) -> None: ...


@dataclass
class _Pending:
    """One external tensor, checked and ready to be read."""

    tensor: TensorProto
    fd: int
    offset: int
    length: int
    fail: _Fail


def _inline_all(model: onnx.ModelProto, path: Path, folder_fd: int, cap: int, model_size: int) -> int:
    """Check every external tensor, then read them all; returns the number of bytes inlined.

    Sizes are all checked (file bounds, shapes, the total cap and protobuf's limit) before one byte of
    external data is read. Each data file is opened once, from the folder's descriptor.
    """
    opened: dict[tuple[str, ...], tuple[int, os.stat_result]] = {}
    pending: list[_Pending] = []
    try:
        budget = cap
        for tensor, where in _all_tensors(model.graph):
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            item = _check_external(tensor, where, path, folder_fd, opened)
            if item.length > budget:
                item.fail(f"external data would exceed the {cap:,}-byte total limit", _HINT_REEXPORT)
            budget -= item.length
            pending.append(item)
        total = sum(p.length for p in pending)
        inlined = model_size + total + _PER_TENSOR_OVERHEAD * len(pending)
        if pending and inlined > _PROTOBUF_LIMIT:
            raise ModelLoadError(
                f"{path}: with its {total:,} bytes of external data inlined the model would be about "
                f"{inlined:,} bytes, over protobuf's 2 GiB limit for one model; onnxinv hands onnxruntime "
                "the inlined model, so it cannot load this one (refused before reading the data)."
            )
        for item in pending:
            data = _pread_all(item.fd, item.length, item.offset)
            if len(data) != item.length:
                item.fail("the file ended early")
            item.tensor.raw_data = data
            del item.tensor.external_data[:]
            item.tensor.data_location = TensorProto.DEFAULT
        return total
    finally:
        for fd, _ in opened.values():
            os.close(fd)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks, done = [], 0
    while done < length:
        chunk = os.pread(fd, min(length - done, 1 << 30), offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _check_external(
    tensor: TensorProto,
    where: str,
    path: Path,
    folder_fd: int,
    opened: dict[tuple[str, ...], tuple[int, os.stat_result]],
) -> _Pending:
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
    if not parts:
        fail("the location names no file")
    try:
        offset = int(fields.get("offset", "0"))
        length = int(fields["length"]) if "length" in fields else None
    except ValueError:
        fail("offset or length is not an integer")
    if offset < 0 or (length is not None and length < 0):
        fail("offset or length is negative")
    if parts not in opened:
        opened[parts] = _open_beneath(folder_fd, parts, fail)
    fd, info = opened[parts]
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
    return _Pending(tensor, fd, offset, length, fail)


def _open_beneath(folder_fd: int, parts: tuple[str, ...], fail: _Fail) -> tuple[int, os.stat_result]:
    """Open ``parts`` below the folder ``folder_fd``, one component at a time, following no link.

    Each intermediate folder is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to the previous one,
    so a component that is (or has just been swapped for) a symbolic link fails to open instead of
    leading elsewhere; the file itself is opened ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block) and
    checked with ``fstat`` on the descriptor: a regular file with one hard link.
    """
    if not _HAS_DIR_FD:
        fail("this platform cannot open files relative to a folder descriptor, so the path cannot be "
             "opened safely", "inline the external data into the model file")  # fmt: skip
    current = folder_fd
    folders: list[int] = []
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | (_NONBLOCK if last else _DIRECTORY)
            try:
                fd = os.open(part, flags, dir_fd=current)
            except OSError as exc:
                _explain_open_error(exc, current, part, last, fail)
                raise  # not reached: _explain_open_error always raises
            if last:
                return fd, _check_data_file(fd, fail)
            folders.append(fd)
            current = fd
    finally:
        for fd in folders:
            os.close(fd)
    raise AssertionError("unreachable")


def _explain_open_error(exc: OSError, folder_fd: int, part: str, last: bool, fail: _Fail) -> None:
    try:
        is_link = stat.S_ISLNK(os.lstat(part, dir_fd=folder_fd).st_mode)
    except OSError:
        is_link = False
    if exc.errno == errno.ELOOP or is_link:
        fail("the path goes through a symbolic link")
    if exc.errno == errno.ENOENT:
        fail("the file does not exist", "put the data file the exporter wrote next to the model")
    if exc.errno == errno.ENOTDIR:
        fail(f"'{part}' on the way is not a folder")
    fail(f"the {'file' if last else 'folder ' + repr(part)} cannot be opened ({exc.strerror})")


def _check_data_file(fd: int, fail: _Fail) -> os.stat_result:
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind:
            fail(f"it is not a regular file (it is {kind})")
        if info.st_nlink != 1:
            fail(f"the file has {info.st_nlink} hard links; a hard link can point anywhere on the disk")
    except BaseException:
        os.close(fd)
        raise
    return info


def _kind(mode: int) -> str:
    """What a non-regular file is, or "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


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
