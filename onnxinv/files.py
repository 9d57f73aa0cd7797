"""Reading observations, masks and latents from files, and writing results atomically.

Arrays come from ``.npy`` (always ``allow_pickle=False``: observations are never unpickled), from ``.npz``
archives holding exactly one array, or, for observations of image-shaped models, from 8/16-bit
non-interlaced PNG files (grayscale, grayscale + alpha, RGB, RGBA; alpha is dropped). The PNG codec is
a small one of our own on ``zlib`` + ``struct``, because no dependency of onnxinv reads PNG.

Every file this module writes goes to a temporary file in the destination's folder first and is moved
into place with :func:`os.replace`, so a run that fails leaves no file behind and never truncates an
existing one.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from onnxinv.errors import ObservationError, OnnxInvError
from onnxinv.layers import Activation, Generator

__all__ = [
    "ImageLayout",
    "Observations",
    "atomic_write",
    "check_observed_finite",
    "comparison_pixels",
    "decode_png",
    "encode_png",
    "image_layout",
    "read_array",
    "read_fixed_inputs",
    "read_latents",
    "read_mask",
    "read_observations",
    "read_png",
    "save_npy",
    "split_batch",
    "to_display",
    "write_png",
    "write_comparison_png",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_PIXELS = 1 << 26  # refuse larger images before decompressing them
MAX_ARRAY_BYTES = 1 << 32  # refuse larger .npy payloads before reading them
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


# --------------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for binary writing; move it onto ``path`` on success.

    If the body raises, the temporary file is removed and ``path`` is left exactly as it was.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OnnxInvError(
            f"{path}: cannot create a file in '{folder}' ({exc.strerror}). Choose another output path."
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file atomically (never pickled)."""
    with atomic_write(path) as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


# --------------------------------------------------------------------------------------------------
# Arrays


def read_array(path: str | os.PathLike[str], what: str = "array") -> np.ndarray:
    """A numeric array from a ``.npy`` file or a ``.npz`` archive holding exactly one array.

    ``what`` names the array in error messages ("observation", "mask", "latent").
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ObservationError(
            f"{path}: cannot read a {what} from a '{suffix or 'suffix-less'}' file; onnxinv reads .npy, "
            ".npz (one array) and, for image-shaped models, .png observations."
        )
    try:
        if path.stat().st_size > MAX_ARRAY_BYTES:
            raise ObservationError(f"{path}: the {what} file is larger than {MAX_ARRAY_BYTES} bytes.")
        loaded = np.load(path, allow_pickle=False)
    except ObservationError:
        raise
    except FileNotFoundError:
        raise ObservationError(f"{path}: no such file. Check the path to the {what}.") from None
    except OSError as exc:
        raise ObservationError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    except ValueError as exc:
        # Object arrays need pickle, which is never allowed; anything else is a malformed file.
        reason = "it holds Python objects, which onnxinv never unpickles" if "pickle" in str(exc) else exc
        raise ObservationError(
            f"{path}: not a readable {what} ({reason}). Save a plain numeric array with numpy.save."
        ) from None
    except Exception as exc:  # zipfile / format errors of a damaged file
        raise ObservationError(
            f"{path}: not a valid {suffix} file ({type(exc).__name__}: {exc}). Save it with numpy.save."
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if len(names) != 1:
                raise ObservationError(
                    f"{path}: the archive holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                    f"a {what} file must hold exactly one. Save the one you mean with numpy.save."
                )
            try:
                array = loaded[names[0]]
            except ValueError:
                raise ObservationError(
                    f"{path}: array '{names[0]}' holds Python objects, which onnxinv never unpickles."
                ) from None
    else:
        array = loaded
    if array.dtype.kind not in "fiub":
        raise ObservationError(
            f"{path}: the {what} has dtype {array.dtype}; onnxinv needs a numeric array (float, int or bool)."
        )
    return array


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
    values : (N, n) float64, n = the generator's output size
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
    path: str | os.PathLike[str], generator: Generator, *, require_finite: bool = True
) -> Observations:
    """Observations for ``generator`` from ``.npy`` / ``.npz`` / ``.png``, as (N, n) float64 rows.

    With ``require_finite=False`` NaN and infinite values are let through, to be checked against a mask
    with :func:`check_observed_finite`.
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        rows = _png_observation(path, generator).reshape(1, -1)
        return Observations(rows, True, tuple(rows.shape[1:]), str(path))
    array = read_array(path, "observation")
    if array.dtype.kind != "f":
        raise ObservationError(
            f"{path}: the observation has dtype {array.dtype}; onnxinv needs floating-point values on the "
            "model's output scale (8-bit images: divide by 255 as the model expects, or pass the .png)."
        )
    rows, single = split_batch(array, generator.output_dim, str(path))
    rows = rows.astype(np.float64)
    if require_finite:
        _check_finite(rows, path, "observation")
    return Observations(rows, single, tuple(array.shape), str(path))


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
    return masks[0] if array.size == output_dim else masks


def check_observed_finite(observations: Observations, mask: np.ndarray) -> None:
    """Refuse NaN or infinite values at entries ``mask`` ((n,) or (N, n), True = observed) marks observed."""
    _check_finite(np.where(mask, observations.values, 0.0), Path(observations.path), "observation")


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
    dims = list(generator.output.shape)
    if dims and generator.has_batch_dim and len(dims) >= 2:
        dims = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims) or int(np.prod(dims or [0])) != n:
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
    raw, max_value = read_png(path)
    if raw.shape[-1] in (2, 4):  # drop alpha
        raw = raw[..., :-1]
    if raw.shape[:2] != (layout.height, layout.width):
        raise ObservationError(
            f"{path}: the image is {raw.shape[1]}x{raw.shape[0]} pixels; the model produces "
            f"{layout.width}x{layout.height} images."
        )
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
# PNG codec


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grayscale (H, W) / (H, W, 1) or RGB (H, W, 3) uint8 pixels as PNG bytes."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"write_png needs (H, W), (H, W, 1) or (H, W, 3) uint8 pixels, got {pixels.shape}")
    height, width, channels = pixels.shape
    color_type = 0 if channels == 1 else 2
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, width * channels)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write uint8 grayscale or RGB pixels as a PNG file, atomically."""
    data = encode_png(pixels)
    with atomic_write(path) as handle:
        handle.write(data)


def read_png(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Pixels of a non-interlaced 8- or 16-bit PNG as ``((H, W, C) uint8/uint16, max value)``.

    C is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA). Palette, sub-byte and interlaced images are
    refused with an :class:`~onnxinv.errors.ObservationError` that says how to re-save them.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ObservationError(f"{path}: no such file. Check the path to the image.") from None
    except OSError as exc:
        raise ObservationError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    return decode_png(data, str(path))


def decode_png(data: bytes, where: str = "PNG") -> tuple[np.ndarray, int]:
    """Decode PNG bytes; see :func:`read_png`."""

    def fail(reason: str) -> ObservationError:
        return ObservationError(
            f"{where}: {reason}. onnxinv reads 8- or 16-bit non-interlaced grayscale or RGB PNG files "
            "(with or without alpha); re-save the image in one of those formats or as .npy."
        )

    if not data.startswith(PNG_SIGNATURE):
        raise fail("not a PNG file (bad signature)")
    pos, header, idat = len(PNG_SIGNATURE), None, []
    while True:
        if pos + 8 > len(data):
            raise fail("the file ends before its IEND chunk")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise fail(f"chunk {kind!r} is truncated")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise fail(f"chunk {kind!r} fails its CRC check (damaged file)")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise fail("malformed IHDR chunk")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise fail("no IHDR chunk")
    width, height, depth, color_type, compression, filter_method, interlace = header
    if color_type not in _CHANNELS:
        kind_name = "a palette image" if color_type == 3 else f"colour type {color_type}"
        raise fail(f"it is {kind_name}")
    if depth not in (8, 16):
        raise fail(f"it has {depth}-bit samples")
    if interlace:
        raise fail("it is interlaced")
    if compression or filter_method:
        raise fail("it uses an unknown compression or filter method")
    if width == 0 or height == 0 or width * height > MAX_PNG_PIXELS:
        raise fail(f"its size {width}x{height} is empty or too large")
    channels = _CHANNELS[color_type]
    bpp = channels * depth // 8  # bytes per pixel
    stride = width * bpp
    expected = height * (stride + 1)
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise fail(f"its image data cannot be decompressed ({exc})") from None
    if len(raw) != expected:
        raise fail(f"its image data holds {len(raw)} bytes, {expected} expected")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    pixels = _unfilter(rows, bpp, fail)
    if depth == 16:
        values = pixels.reshape(height, width * channels, 2).astype(np.uint16)
        image = (values[..., 0] << 8) | values[..., 1]
        return image.reshape(height, width, channels), 65535
    return pixels.reshape(height, width, channels), 255


def _unfilter(rows: np.ndarray, bpp: int, fail: Callable[[str], Exception]) -> np.ndarray:
    """Undo the per-scanline PNG filters (None, Sub, Up, Average, Paeth)."""
    height, stride = rows.shape[0], rows.shape[1] - 1
    out = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.int64)
    for y in range(height):
        kind = int(rows[y, 0])
        line = rows[y, 1:].astype(np.int64)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: cumulative sum per byte position within a pixel
            padded = np.zeros(((stride + bpp - 1) // bpp) * bpp, np.int64)
            padded[:stride] = line
            current = (np.cumsum(padded.reshape(-1, bpp), axis=0) % 256).reshape(-1)[:stride]
        elif kind == 2:  # Up
            current = (line + previous) % 256
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            current = np.zeros(stride, np.int64)
            for i in range(stride):
                left = int(current[i - bpp]) if i >= bpp else 0
                up = int(previous[i])
                if kind == 3:
                    predictor = (left + up) // 2
                else:
                    upper_left = int(previous[i - bpp]) if i >= bpp else 0
                    p = left + up - upper_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                    predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
                current[i] = (int(line[i]) + predictor) % 256
        else:
            raise fail(f"scanline {y} uses unknown filter type {kind}")
        out[y] = current
        previous = current
    return out
