"""Reading observations, masks and latents from files, and writing results atomically.

Arrays come from ``.npy`` (never unpickled) or ``.npz`` archives holding exactly one array; for
image-shaped models observations may also be PNG files, read and written with Pillow (the ``images``
extra: ``pip install 'onnxinv[images]'``).

What a hostile file cannot do
-----------------------------
* Block or exhaust the reader: every input is opened non-blocking and must be a regular file (a FIFO,
  a device such as ``/dev/zero``, a socket or a folder is refused before anything is read).
* Make us allocate more than it declares, or more than a cap: ``.npy`` headers are parsed first, and the
  declared data size must match the bytes present and stay under :data:`MAX_ARRAY_BYTES`; an ``.npz``
  member's declared *uncompressed* size is checked against the same cap before it is inflated; a PNG's
  declared dimensions are compared with the model's image size (and :data:`MAX_PNG_PIXELS`) before it
  is decoded.

Outputs
-------
:class:`Outputs` gathers the files one command writes. Each path is checked before any work (a regular
file or nothing, not a symbolic link, not one of the command's inputs, not named twice); each output is
then written to a temporary file in its destination folder and fsync'd, and only when all are written
are they renamed into place (``os.replace``), so a failed run leaves no file behind and never truncates
an existing one. Temporary names stay short (within NAME_MAX for any output name);
:func:`remove_pending` deletes every temporary not yet renamed (for signal handlers).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import stat
import struct
import threading
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from onnxinv.errors import ObservationError, OnnxInvError
from onnxinv.layers import Activation, Generator

__all__ = [
    "ImageLayout",
    "Observations",
    "Outputs",
    "atomic_write",
    "check_observed_finite",
    "comparison_pixels",
    "decode_png",
    "encode_png",
    "image_layout",
    "latent_for_model",
    "npy_bytes",
    "open_regular",
    "read_array",
    "read_fixed_inputs",
    "read_latents",
    "read_mask",
    "read_observations",
    "read_png",
    "remove_pending",
    "save_npy",
    "split_batch",
    "to_display",
    "write_png",
    "write_comparison_png",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_PIXELS = 1 << 26  # refuse larger images before decoding them
MAX_PNG_BYTES = 1 << 28  # refuse larger PNG files before reading them
MAX_ARRAY_BYTES = 1 << 30  # refuse arrays whose data (uncompressed) is larger, before reading them
PILLOW_HINT = "pip install 'onnxinv[images]' (from a checkout: pip install '.[images]')"
_NPY_HEADER_SLACK = 1 << 16  # bytes an .npy header may add to its data inside an .npz member


# --------------------------------------------------------------------------------------------------
# Opening inputs


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], what: str = "file") -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking and return ``(fd, fstat)`` if it is a regular file.

    Opening is non-blocking, so a FIFO without a writer cannot hang us; the file type is checked on the
    opened descriptor (no gap between check and use). Symbolic links are followed (users link their
    data), but what they lead to must be a regular file. Raises :class:`ObservationError` otherwise.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ObservationError(f"{path}: no such file. Check the path to the {what}.") from None
    except OSError as exc:
        raise ObservationError(f"{path}: cannot be opened ({exc.strerror or exc}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ObservationError(
                f"{path}: not a regular file (it is {_file_kind(info.st_mode)}); onnxinv reads the {what} "
                "only from a regular file. Save it to a file and pass that path."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _read_exactly(handle: IO[bytes], array: np.ndarray) -> int:
    """Fill ``array``'s buffer from ``handle``; the number of bytes read."""
    # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12
    view = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")  # type: ignore[arg-type]
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return done


# --------------------------------------------------------------------------------------------------
# Arrays


def _npy_header(handle: IO[bytes], where: str, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except ValueError as exc:
        raise ObservationError(
            f"{where}: not a readable {what} ({exc}). Save a plain numeric array with numpy.save."
        ) from None
    if dtype.hasobject:
        raise ObservationError(
            f"{where}: not a readable {what} (it holds Python objects, which onnxinv never unpickles). "
            "Save a plain numeric array with numpy.save."
        )
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise ObservationError(
            f"{where}: the {what} has dtype {dtype}; onnxinv needs a numeric array (float, int or bool)."
        )
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _read_npy(handle: IO[bytes], where: str, what: str, available: int | None, cap: int) -> np.ndarray:
    """An array from an .npy stream whose data may hold ``available`` bytes after the header (None:
    unknown), read into a buffer of the declared size only after that size has been checked."""
    start = handle.tell()
    shape, fortran, dtype = _npy_header(handle, where, what)
    count = 1
    for d in shape:
        count *= d
    declared = count * dtype.itemsize
    described = f"the header declares shape {shape} {dtype}, {declared:,} bytes of data"
    if available is not None:
        present = available - (handle.tell() - start)
        if declared != present:
            raise ObservationError(
                f"{where}: {described}, but the file holds {present:,} after its header, so it is "
                f"damaged or not what it claims. Save the {what} again with numpy.save."
            )
    if declared > cap:
        raise ObservationError(
            f"{where}: {described}, over the {cap:,}-byte limit for {_a(what)} file; refusing before "
            "reading it. Split a large batch into several files."
        )
    array = np.empty(count, dtype=dtype)
    if _read_exactly(handle, array) != declared:
        raise ObservationError(f"{where}: the file ends before the {declared:,} bytes its header declares.")
    return array.reshape(shape, order="F" if fortran else "C")


def _read_npz(handle: IO[bytes], path: Path, what: str, cap: int) -> np.ndarray:
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise ObservationError(
            f"{path}: not a valid .npz file ({type(exc).__name__}: {exc}). Save it with numpy.savez."
        ) from None
    with archive:
        members = archive.infolist()
        names = [m.filename.removesuffix(".npy") for m in members]  # as numpy.savez's keywords
        if len(members) != 1:
            raise ObservationError(
                f"{path}: the archive holds {len(members)} arrays ({', '.join(names) or 'none'}); "
                f"{_a(what)} file must hold exactly one. Save the one you mean with numpy.save."
            )
        (member,) = members
        where = f"{path}: array '{member.filename}'"
        if member.flag_bits & 0x1:
            raise ObservationError(f"{where} is encrypted; save the {what} with numpy.savez.")
        if member.file_size > cap + _NPY_HEADER_SLACK:
            raise ObservationError(
                f"{where} inflates to {member.file_size:,} bytes ({member.compress_size:,} stored), over the "
                f"{cap:,}-byte limit for {_a(what)} file; refusing before inflating it. Split a large "
                "batch into several files."
            )
        try:
            with archive.open(member) as stream:
                array = _read_npy(stream, where, what, member.file_size, cap)
                if stream.read(1):  # also makes zipfile check the CRC at the end of the member
                    raise ObservationError(f"{where} holds more bytes than its header declares.")
        except ObservationError:
            raise
        except Exception as exc:  # BadZipFile (CRC), zlib.error, unsupported compression of a damaged file
            raise ObservationError(
                f"{where} cannot be read ({type(exc).__name__}: {exc}). Save it with numpy.savez."
            ) from None
    return array


def read_array(
    path: str | os.PathLike[str], what: str = "array", *, max_bytes: int = MAX_ARRAY_BYTES
) -> np.ndarray:
    """A numeric array from a ``.npy`` file or a ``.npz`` archive holding exactly one array.

    ``what`` names the array in error messages ("observation", "mask", "latent"). The file must be a
    regular file; its declared data size (uncompressed, for ``.npz``) must stay under ``max_bytes``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ObservationError(
            f"{path}: cannot read a {what} from a '{suffix or 'suffix-less'}' file; onnxinv reads .npy, "
            ".npz (one array) and, for image-shaped models, .png observations."
        )
    fd, info = open_regular(path, what)
    with os.fdopen(fd, "rb") as handle:
        try:
            if suffix == ".npz":
                return _read_npz(handle, path, what, max_bytes)
            return _read_npy(handle, str(path), what, info.st_size, max_bytes)
        except OSError as exc:
            raise ObservationError(f"{path}: cannot be read ({exc.strerror or exc}).") from None


def read_fixed_inputs(files: Mapping[str, str | os.PathLike[str]]) -> dict[str, np.ndarray]:
    """The values of fixed graph inputs, ``name -> array``, each read from its ``.npy`` / ``.npz`` file.

    Shapes and dtypes are checked against the model's inputs by :func:`onnxinv.load`.
    """
    return {name: read_array(path, f"fixed input '{name}'") for name, path in files.items()}


@dataclass(frozen=True)
class Observations:
    """Observations read from a file, flattened to one row per observation.

    Attributes
    ----------
    values : (N, n), n = the generator's output size, in the file's own float dtype (float16, float32 or
        float64; PNG pixels as float64), so that :func:`onnxinv.invert` judges them at the precision
        they were stored with, exactly as when the same array is passed to the API
    single : True when the file held one observation (results are then reported for one, not a batch)
    shape : the array's shape as stored in the file
    path : where they came from
    """

    values: np.ndarray
    single: bool
    shape: tuple[int, ...]
    path: str

    @property
    def count(self) -> int:
        return self.values.shape[0]


def split_batch(
    array: np.ndarray, output_dim: int, where: str, what: str = "observation"
) -> tuple[np.ndarray, bool]:
    """``(rows (N, n), single)`` for one observation of any shape or a batch ``(N, ...)``.

    An array with exactly ``output_dim`` values is one observation, whatever its shape (with or without
    batch and channel dims); an array whose trailing dims hold ``output_dim`` values is a batch.
    """
    array = np.asarray(array)
    if array.size == output_dim:
        return array.reshape(1, output_dim), True
    if array.ndim >= 2 and array.shape[0] > 0 and int(np.prod(array.shape[1:])) == output_dim:
        return array.reshape(array.shape[0], output_dim), False
    size_of = "takes" if what == "latent" else "produces"
    raise ObservationError(
        f"{where}: the {what} has shape {array.shape} ({array.size} values); the model {size_of} "
        f"{output_dim} values per {what}, so give one {what} of {output_dim} values (any shape) "
        f"or a batch of shape (N, {output_dim})."
    )


def read_observations(
    path: str | os.PathLike[str],
    generator: Generator,
    *,
    require_finite: bool = True,
    size: int | None = None,
) -> Observations:
    """Observations for ``generator`` from ``.npy`` / ``.npz`` / ``.png``, as (N, n) rows in their dtype.

    With ``require_finite=False`` NaN and infinite values are let through, to be checked against a mask
    with :func:`check_observed_finite`. ``size`` is the number of values per observation when it is not
    the model's output size (measurements ``y = A·G(z)`` with ``m`` rows); PNG images need the output.
    """
    path = Path(path)
    if size is not None and size != generator.output_dim and path.suffix.lower() == ".png":
        raise ObservationError(
            f"{path}: a PNG holds an image of the model's output, but with a measurement matrix each "
            f"observation has {size} values; give the measurements as .npy."
        )
    if path.suffix.lower() == ".png":
        rows = _png_observation(path, generator).reshape(1, -1)
        return Observations(rows, True, tuple(rows.shape[1:]), str(path))
    array = read_array(path, "observation")
    if array.dtype.kind != "f":
        raise ObservationError(
            f"{path}: the observation has dtype {array.dtype}; onnxinv needs floating-point values on the "
            "model's output scale (8-bit images: divide by 255 as the model expects, or pass the .png)."
        )
    rows, single = split_batch(array, generator.output_dim if size is None else size, str(path))
    if require_finite:
        _check_finite(rows, path, "observation")
    return Observations(np.ascontiguousarray(rows), single, tuple(array.shape), str(path))


def read_latents(path: str | os.PathLike[str], latent_dim: int) -> tuple[np.ndarray, bool]:
    """Latents from a ``.npy`` / ``.npz`` file: ``((N, k) float64, single)``."""
    path = Path(path)
    array = read_array(path, "latent")
    rows, single = split_batch(array, latent_dim, str(path), "latent")
    rows = rows.astype(np.float64)
    _check_finite(rows, path, "latent")
    return rows, single


def read_mask(path: str | os.PathLike[str], output_dim: int, count: int = 1) -> np.ndarray:
    """A mask of observed output entries, True where the entry is observed.

    The file holds booleans or 0/1 values: one per output entry (``n`` values, any shape), returned as
    ``(n,)``, or one mask per observation of a batch of ``count`` (``count * n`` values), returned as
    ``(count, n)``. The rules are those of :func:`onnxinv.observations.prepare_mask`.
    """
    from onnxinv.observations import prepare_mask

    path = Path(path)
    array = read_array(path, "mask")
    try:
        masks = prepare_mask(array, output_dim, count)
    except ObservationError as exc:
        raise ObservationError(f"{path}: {exc}") from None
    assert masks is not None  # None only for no mask
    return masks[0] if array.size == output_dim else masks


def check_observed_finite(observations: Observations, mask: np.ndarray) -> None:
    """Refuse NaN or infinite values at entries ``mask`` ((n,) or (N, n), True = observed) marks observed."""
    _check_finite(np.where(mask, observations.values, 0), Path(observations.path), "observation")


def _check_finite(rows: np.ndarray, path: Path, what: str) -> None:
    bad = np.argwhere(~np.isfinite(rows))
    if bad.size:
        row, col = (int(v) for v in bad[0])
        where = f"entry {col}" if rows.shape[0] == 1 else f"row {row}, entry {col}"
        raise ObservationError(
            f"{path}: the {what} holds {len(bad)} NaN or infinite value(s), the first at {where}; "
            "onnxinv needs finite values (use --mask to leave entries out)."
        )


# --------------------------------------------------------------------------------------------------
# Image layout of a model's output


@dataclass(frozen=True)
class ImageLayout:
    """How one model output maps onto an image.

    ``channels_first`` says whether the flattened output is ordered (C, H, W) or (H, W, C).
    ``low, high`` is the value range a PNG pixel's [0, 1] maps onto (from the output activation), or
    None when the activation does not bound the output.
    """

    height: int
    width: int
    channels: int
    channels_first: bool
    low: float | None
    high: float | None

    @property
    def size(self) -> int:
        return self.height * self.width * self.channels

    def to_hwc(self, flat: np.ndarray) -> np.ndarray:
        """One flattened output (n,) as an (H, W, C) array."""
        if self.channels_first:
            return flat.reshape(self.channels, self.height, self.width).transpose(1, 2, 0)
        return flat.reshape(self.height, self.width, self.channels)

    def from_hwc(self, image: np.ndarray) -> np.ndarray:
        """An (H, W, C) array as one flattened output (n,)."""
        if self.channels_first:
            return image.transpose(2, 0, 1).reshape(-1)
        return image.reshape(-1)


def image_layout(generator: Generator) -> ImageLayout | None:
    """The image shape of the generator's output, or None when it is not image-shaped.

    Uses the declared output shape when it is (C, H, W), (H, W, C) with C in {1, 3}, or (H, W); a flat
    output whose size is a perfect square is read as a square grayscale image.
    """
    n = generator.output_dim
    shape = list(generator.output.shape)
    if shape and generator.has_batch_dim and len(shape) >= 2:
        shape = shape[1:]
    dims = [d for d in shape if isinstance(d, int)]
    if len(dims) != len(shape) or not all(d > 0 for d in dims) or int(np.prod(dims or [0])) != n:
        dims = [n]
    while len(dims) > 3 and dims[0] == 1:
        dims = dims[1:]
    last = generator.layers[-1].activation
    low, high = {Activation.SIGMOID: (0.0, 1.0), Activation.TANH: (-1.0, 1.0)}.get(last, (None, None))
    if len(dims) == 3 and dims[0] in (1, 3):
        return ImageLayout(dims[1], dims[2], dims[0], True, low, high)
    if len(dims) == 3 and dims[2] in (1, 3):
        return ImageLayout(dims[0], dims[1], dims[2], False, low, high)
    if len(dims) == 2 and min(dims) > 1:
        return ImageLayout(dims[0], dims[1], 1, True, low, high)
    side = int(round(np.sqrt(n)))
    if len(dims) == 1 and side > 1 and side * side == n:
        return ImageLayout(side, side, 1, True, low, high)
    return None


def _png_observation(path: Path, generator: Generator) -> np.ndarray:
    layout = image_layout(generator)
    if layout is None:
        raise ObservationError(
            f"{path}: a PNG observation needs an image-shaped model output, but this model's output is "
            f"{generator.output.describe()} ({generator.output_dim} values). Save the observation as .npy."
        )
    # the declared size is compared with the model's before a single pixel is decoded
    raw, max_value = read_png(path, expect=(layout.height, layout.width))
    if raw.shape[-1] in (2, 4):  # drop alpha
        raw = raw[..., :-1]
    if layout.channels == 1 and raw.shape[-1] == 3:
        if not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])):
            raise ObservationError(
                f"{path}: the image is in colour but the model produces grayscale images; save it as "
                "a grayscale PNG."
            )
        raw = raw[..., :1]
    if layout.channels == 3 and raw.shape[-1] == 1:
        raw = np.repeat(raw, 3, axis=-1)
    pixels = raw.astype(np.float64) / max_value
    if layout.low is not None and layout.high is not None:
        pixels = layout.low + (layout.high - layout.low) * pixels
    return layout.from_hwc(pixels)


def to_display(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values mapped linearly from [low, high] onto 0..255 uint8 (clipped)."""
    span = high - low if high > low else 1.0
    return np.clip(np.round((np.asarray(values) - low) / span * 255.0), 0, 255).astype(np.uint8)


def comparison_pixels(
    layout: ImageLayout,
    observations: np.ndarray,
    reconstructions: np.ndarray,
    *,
    min_side: int = 64,
) -> np.ndarray:
    """Observation | reconstruction | |difference| side by side, one row per observation, as uint8 pixels.

    Observation and reconstruction share one value scale (the output activation's range, else their joint
    min..max); the difference is drawn on that same scale, so a faint difference is a small one. Small
    images are scaled up by an integer factor (nearest neighbour) to at least ``min_side`` pixels; panels
    are separated by mid-gray gaps.
    """
    observations = np.atleast_2d(np.asarray(observations, dtype=np.float64))
    reconstructions = np.atleast_2d(np.asarray(reconstructions, dtype=np.float64))
    if layout.low is not None and layout.high is not None:
        low, high = layout.low, layout.high
    else:
        both = np.concatenate([observations.ravel(), reconstructions.ravel()])
        both = both[np.isfinite(both)]
        low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    # unobserved (masked-out) entries may hold NaN: draw them at the bottom of the scale
    observations = np.where(np.isfinite(observations), observations, low)
    reconstructions = np.where(np.isfinite(reconstructions), reconstructions, low)
    scale = max(1, -(-min_side // max(layout.height, layout.width)))
    gap = max(1, scale // 2)
    tiles = []
    for obs, rec in zip(observations, reconstructions):
        panels = [obs, rec, np.abs(obs - rec) + low]
        row = []
        for k, panel in enumerate(panels):
            image = to_display(layout.to_hwc(panel), low, high)
            row.append(np.repeat(np.repeat(image, scale, axis=0), scale, axis=1))
            if k < 2:
                row.append(np.full((layout.height * scale, gap, layout.channels), 128, np.uint8))
        tiles.append(np.concatenate(row, axis=1))
        tiles.append(np.full((gap, tiles[-1].shape[1], layout.channels), 128, np.uint8))
    return np.concatenate(tiles[:-1], axis=0)


def write_comparison_png(
    path: str | os.PathLike[str], layout: ImageLayout, observations: np.ndarray, reconstructions: np.ndarray
) -> None:
    """Write :func:`comparison_pixels` as a PNG file, atomically."""
    write_png(path, comparison_pixels(layout, observations, reconstructions))


# --------------------------------------------------------------------------------------------------
# PNG through Pillow


def _pillow(where: str, error: type[OnnxInvError] = ObservationError) -> Any:
    try:
        from PIL import Image, PngImagePlugin  # noqa: F401  (registers the PNG plugin)
    except ImportError:
        raise error(
            f"{where}: reading and writing PNG images needs Pillow, which is not installed; "
            f"{PILLOW_HINT} (or pip install Pillow), or use .npy files instead."
        ) from None
    return Image


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grayscale (H, W) / (H, W, 1) or RGB (H, W, 3) uint8 pixels as PNG bytes."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"write_png needs (H, W), (H, W, 1) or (H, W, 3) uint8 pixels, got {pixels.shape}")
    image_module = _pillow("PNG output", OnnxInvError)
    # uint8 (H, W) arrays become mode "L", (H, W, 3) "RGB" (the mode argument is deprecated in Pillow 11.3)
    plane = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    image = image_module.fromarray(np.ascontiguousarray(plane))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def write_png(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write uint8 grayscale or RGB pixels as a PNG file, atomically."""
    with Outputs() as outputs:
        outputs.add(path, "PNG")
        outputs.stage(path, encode_png(pixels))
        outputs.commit()


def read_png(
    path: str | os.PathLike[str], *, expect: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """Pixels of a PNG file as ``((H, W, C) uint8/uint16, max value)``; see :func:`decode_png`."""
    path = Path(path)
    fd, info = open_regular(path, "image")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > MAX_PNG_BYTES:
            raise ObservationError(
                f"{path}: the file is {info.st_size:,} bytes, over the {MAX_PNG_BYTES:,}-byte limit for a "
                "PNG observation."
            )
        try:
            data = handle.read()  # the size was checked above
        except OSError as exc:
            raise ObservationError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    return decode_png(data, str(path), expect=expect)


def decode_png(
    data: bytes, where: str = "PNG", *, expect: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """Decode PNG bytes with Pillow into ``((H, W, C) uint8 or uint16 pixels, max value)``.

    C is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); palette images come back as RGB(A), 16-bit
    grayscale as uint16 (max 65535). ``expect = (height, width)``, when given, is checked against the
    declared size before anything is decoded; without it the size must stay under
    :data:`MAX_PNG_PIXELS`. Damaged files are refused with an :class:`~onnxinv.errors.ObservationError`
    that says how to re-save them.
    """
    resave = "re-save the image as an 8-bit grayscale or RGB PNG (16-bit for grayscale), or as .npy"
    if not data.startswith(PNG_SIGNATURE):
        raise ObservationError(f"{where}: not a PNG file (bad signature); {resave}.")
    # The IHDR chunk must come first (PNG spec 5.6): its declared size is checked before Pillow decodes.
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ObservationError(f"{where}: not a PNG file (no IHDR chunk at its start); {resave}.")
    width, height = struct.unpack(">II", data[16:24])
    depth, color_type = data[24], data[25]
    if expect is not None and (height, width) != tuple(expect):
        raise ObservationError(
            f"{where}: the image is {width}x{height} pixels; the model produces {expect[1]}x{expect[0]} images."
        )
    if width * height == 0 or width * height > MAX_PNG_PIXELS:
        raise ObservationError(
            f"{where}: its size {width}x{height} is empty or too large (the limit is {MAX_PNG_PIXELS:,} "
            "pixels); refusing before decoding it."
        )
    if depth == 16 and color_type in (2, 4, 6):
        # Pillow keeps 8 bits per channel of these: refuse rather than silently lose precision
        raise ObservationError(
            f"{where}: it is a 16-bit colour (or gray + alpha) PNG, which Pillow reads with 8 bits per "
            f"channel only; {resave}."
        )
    image_module = _pillow(where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            image = image_module.open(io.BytesIO(data), formats=["PNG"])
            if image.size != (width, height):
                raise ValueError(f"Pillow reads the size as {image.size}, the header says {width}x{height}")
            image.load()
            pixels, top = _pixels(image)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors on damaged files
        if isinstance(exc, image_module.UnidentifiedImageError):
            reason = "Pillow cannot identify it as a PNG image"
        else:
            reason = f"Pillow: {type(exc).__name__}: {exc}"
        raise ObservationError(f"{where}: cannot be decoded as PNG ({reason}); {resave}.") from None
    return pixels, top


def _pixels(image: Any) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode == "1":
        image = image.convert("L")
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        array = np.asarray(image, dtype=np.uint8)
        top = 255
    elif mode.startswith("I"):  # 16-bit grayscale: "I;16", "I;16B", or "I" holding 0..65535
        array = np.asarray(image)
        if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
            raise ValueError(f"{mode} pixels outside 0..65535")
        array = array.astype(np.uint16)
        top = 65535
    else:
        raise ValueError(f"unsupported pixel mode {mode}")
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array), top


# --------------------------------------------------------------------------------------------------
# Latents in the model's own shape


def latent_for_model(z: np.ndarray, generator: Generator, *, single: bool, flat: bool = False) -> np.ndarray:
    """Latents ``z`` ((k,) or (N, k)) shaped and typed as the model's input takes them.

    One latent of a model with a batch dim becomes ``(1, *sample_input_shape)``, a batch
    ``(N, *sample_input_shape)``; one latent of a model without a batch dim ``sample_input_shape``.
    The dtype is the model input's (the values onnxruntime verified: the oracle casts the same way).
    ``flat=True`` keeps ``(k,)`` / ``(N, k)`` in that dtype.
    """
    rows = np.asarray(z, dtype=np.float64).reshape(-1, generator.latent_dim)
    if flat:
        shaped = rows[0] if single else rows
    elif single and not generator.has_batch_dim:
        shaped = rows[0].reshape(generator.sample_input_shape)
    else:
        shaped = rows.reshape((rows.shape[0], *generator.sample_input_shape))
    dtype = np.dtype(generator.input.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = shaped.astype(dtype)
    if dtype.kind == "f" and np.isfinite(shaped).all() and not np.isfinite(cast).all():
        raise ObservationError(
            f"the latent holds values up to {np.abs(shaped).max():.3g}, beyond the range of the model's "
            f"input dtype {dtype}, so the model cannot take it and it is not written; the Python API "
            "returns it in float64."
        )
    return cast


# --------------------------------------------------------------------------------------------------
# Outputs: checked first, written to temporaries, committed together

_PENDING: set[str] = set()
_PENDING_LOCK = threading.Lock()
_TEMP_NAME_BYTES = 100  # bytes of the output's name kept in its temporary's name (NAME_MAX is 255)
_TEMP_ATTEMPTS = 100  # random names tried before giving up (each collision is 1 in 2**32)


def remove_pending() -> None:
    """Delete every temporary output file not yet renamed into place (safe to call from a signal
    handler's cleanup, or twice)."""
    with _PENDING_LOCK:
        names = list(_PENDING)
        _PENDING.clear()
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(name)


def new_temporary(path: Path) -> tuple[int, str]:
    """A new temporary file ``.<name>.<random>.tmp`` beside ``path`` (the name kept short whatever the
    length of ``path``'s): ``(descriptor, absolute name)``. The name is registered for
    :func:`remove_pending` *before* the file is created, so a signal that interrupts this call at any
    point (its handler raises between two bytecodes) cannot leave a file the cleanup does not know
    of; :func:`forget_temporary` once it is renamed into place or removed. Raises ``OSError`` as
    ``os.open`` does."""
    folder = os.path.abspath(path.parent if str(path.parent) else ".")
    stem = os.fsdecode(os.fsencode(path.name)[:_TEMP_NAME_BYTES])
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        name = os.path.join(folder, f".{stem}.{secrets.token_hex(4)}.tmp")
        with _PENDING_LOCK:
            _PENDING.add(name)
        try:
            return os.open(name, flags, 0o600), name
        except OSError as exc:  # nothing was created under this name
            forget_temporary(name)
            if not isinstance(exc, FileExistsError):
                raise
    raise FileExistsError(
        errno.EEXIST, f"no unused temporary file name beside {path} after {_TEMP_ATTEMPTS} tries"
    )


def forget_temporary(name: str) -> None:
    """``name`` (from :func:`new_temporary`) is no longer a temporary to remove on a signal."""
    with _PENDING_LOCK:
        _PENDING.discard(name)


def _write_error(label: str, path: Path, exc: OSError) -> OnnxInvError:
    why = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "the disk is full; free some space or write elsewhere",
        errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
        errno.EFBIG: "the file size limit (ulimit -f) is too small for it; raise the limit",
        errno.EROFS: "the file system is read-only; choose another output path",
        errno.EACCES: "choose a folder you may write to",
        errno.EPERM: "choose a folder you may write to",
    }.get(exc.errno or 0, "choose another output path")
    return OnnxInvError(f"{label} {path}: could not be written ({why}); nothing was written. Hint: {hint}.")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Outputs:
    """The files one command writes, committed together only when every one of them is ready.

    ``inputs`` maps a description ("the model MODEL") to each path the command reads; an output that is
    the same file as one of them is refused. Use as a context manager: anything staged but not
    committed is removed on exit.
    """

    def __init__(self, inputs: Mapping[str, str | os.PathLike[str]] | None = None) -> None:
        self._inputs: list[tuple[str, os.stat_result]] = []
        for label, path in (inputs or {}).items():
            with contextlib.suppress(OSError):
                self._inputs.append((label, os.stat(path)))
        self._targets: dict[str, tuple[str, Path]] = {}  # real path -> (label, path as given)
        self._staged: list[tuple[str, Path, str]] = []  # (label, path, temporary)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def add(self, path: str | os.PathLike[str], label: str = "output") -> Path:
        """Check that ``path`` may be written (before any work) and reserve it; returns it as a Path."""
        path = Path(path)
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise OnnxInvError(
                f"{label} {path}: the folder '{folder}' does not exist, so the result could not be written "
                "there. Create it or choose another output path."
            )
        real = os.path.join(os.path.realpath(folder), path.name)
        if real in self._targets:
            other = self._targets[real][0]
            raise OnnxInvError(
                f"{label} {path}: is the same file as {other}; one would overwrite the other. Give each "
                "output its own path."
            )
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise OnnxInvError(f"{label} {path}: cannot be checked ({exc.strerror or exc}).") from None
        if info is not None:
            self._check_existing(label, path, info)
        self._targets[real] = (label, path)
        return path

    def _check_existing(self, label: str, path: Path, info: os.stat_result) -> None:
        if stat.S_ISLNK(info.st_mode):
            raise OnnxInvError(
                f"{label} {path}: is a symbolic link; onnxinv replaces output files whole, which would "
                "replace the link rather than the file it points to. Give the path of the file itself."
            )
        if not stat.S_ISREG(info.st_mode):
            raise OnnxInvError(
                f"{label} {path}: not a regular file (it is {_file_kind(info.st_mode)}); onnxinv writes "
                "results only to regular files, replacing them whole. Choose a file path."
            )
        for what, seen in self._inputs:
            if _same_file(info, seen):
                raise OnnxInvError(
                    f"{label} {path}: is also an input ({what}); writing there would destroy it. Choose "
                    "another output path."
                )

    def stage(self, path: str | os.PathLike[str], data: bytes) -> None:
        """Write ``data`` to a temporary file beside the reserved ``path`` and fsync it."""
        path = Path(path)
        real = os.path.join(os.path.realpath(path.parent if str(path.parent) else "."), path.name)
        if real not in self._targets:
            raise ValueError(f"{path} was not added to these outputs")
        label = self._targets[real][0]
        try:
            fd, name = new_temporary(path)
        except OSError as exc:
            raise _write_error(label, path, exc) from None
        self._staged.append((label, path, name))
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            raise _write_error(label, path, exc) from None
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Rename every staged file into place (each checked again just before), then sync the folders."""
        for label, path, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                self._check_existing(label, path, os.lstat(path))
        folders = set()
        for label, path, name in self._staged:
            try:
                os.replace(name, path)
            except OSError as exc:
                raise _write_error(label, path, exc) from None
            forget_temporary(name)
            folders.add(path.parent if str(path.parent) else Path("."))
        self._staged.clear()
        for folder in folders:  # make the renames durable; not every platform can open a folder
            with contextlib.suppress(OSError):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def discard(self) -> None:
        """Remove every staged temporary that was not committed."""
        for _, _, name in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(name)
            forget_temporary(name)
        self._staged.clear()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary handle whose contents replace ``path`` when the body succeeds.

    If the body raises, nothing is written and ``path`` is left exactly as it was.
    """
    buffer = io.BytesIO()
    yield buffer
    with Outputs() as outputs:
        outputs.add(path)
        outputs.stage(path, buffer.getvalue())
        outputs.commit()


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the ``.npy`` format (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file atomically (never pickled)."""
    with atomic_write(path) as handle:
        handle.write(npy_bytes(array))
