"""onnxinv.files: arrays and PNG images in, atomic writes out."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from builders import init, model, node, save
from cli_helpers import save_generator

import onnxinv
from onnxinv import files
from onnxinv.building import random_generator_layers
from onnxinv.errors import ObservationError, OnnxInvError
from onnxinv.layers import Activation, Generator, TensorInfo

# --------------------------------------------------------------------------------------------------
# A reference PNG encoder that applies a chosen filter to every scanline, to exercise all five filters.


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_row(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray()
    for i, value in enumerate(row):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        upper_left = prev[i - bpp] if i >= bpp else 0
        predictor = [0, left, up, (left + up) // 2, _paeth(left, up, upper_left)][kind]
        out.append((value - predictor) % 256)
    return bytes([kind]) + bytes(out)


def _png_bytes(
    pixels: np.ndarray, color_type: int, depth: int = 8, filters=(0, 1, 2, 3, 4), interlace=0
) -> bytes:
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    sample = ">u2" if depth == 16 else "u1"
    raw = pixels.astype(sample).reshape(height, width * channels)
    bpp = channels * depth // 8
    prev = bytes(raw.shape[1] * raw.itemsize)
    data = b""
    for y in range(height):
        row = raw[y].tobytes()
        data += _filter_row(filters[y % len(filters)], row, prev, bpp)
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    return (
        files.PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("color_type", "channels", "depth"), [(0, 1, 8), (2, 3, 8), (4, 2, 8), (6, 4, 8), (0, 1, 16)]
)
def test_png_decoder_undoes_every_filter(color_type, channels, depth):
    rng = np.random.default_rng(color_type + depth)
    top = 65536 if depth == 16 else 256
    pixels = rng.integers(0, top, size=(11, 7, channels))
    image, max_value = files.decode_png(_png_bytes(pixels, color_type, depth))
    assert max_value == top - 1
    assert image.shape == (11, 7, channels)
    np.testing.assert_array_equal(image, pixels)


@pytest.mark.parametrize("color_type", [2, 4, 6])
def test_16_bit_colour_png_is_refused_rather_than_truncated(color_type):
    """Pillow keeps 8 bits per channel of 16-bit colour images; onnxinv says so instead of guessing."""
    pixels = np.zeros((3, 3, {2: 3, 4: 2, 6: 4}[color_type]), np.uint16)
    with pytest.raises(ObservationError, match="x.png: it is a 16-bit colour.*re-save"):
        files.decode_png(_png_bytes(pixels, color_type, 16), "x.png")


@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 1), (5, 6, 3)])
def test_png_writer_round_trips_through_the_reader(tmp_path, shape):
    pixels = np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8)
    path = tmp_path / "p.png"
    files.write_png(path, pixels)
    image, max_value = files.read_png(path)
    assert max_value == 255
    np.testing.assert_array_equal(image.reshape(pixels.shape), pixels)


def test_png_written_by_us_reads_in_pillow(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(2).integers(0, 256, size=(6, 10, 3)).astype(np.uint8)
    files.write_png(tmp_path / "p.png", pixels)
    np.testing.assert_array_equal(np.asarray(image_module.open(tmp_path / "p.png")), pixels)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b"GIF89a" + b[6:],  # another format's signature
        lambda b: b[:45],  # cut inside the image data
        lambda b: b[:33],  # nothing after the header
        lambda b: b[:45] + bytes([b[45] ^ 0xFF]) + b[46:],  # damaged image data (its CRC fails too)
        lambda b: b[:8] + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 17 + b[33:],  # nonsense header
    ],
)
def test_damaged_png_is_refused_with_the_reason(mutate):
    good = _png_bytes(np.zeros((4, 4), np.uint8), 0)
    with pytest.raises(ObservationError, match="bad.png: .*(not a PNG|cannot be decoded|too large)"):
        files.decode_png(mutate(good), "bad.png")


def test_palette_png_is_read_as_rgb():
    palette_png = _png_bytes(np.array([[0, 1], [1, 0]], np.uint8), 3)
    # a palette image needs a PLTE chunk: entry 0 black, entry 1 white
    plte = b"\x00\x00\x00\xff\xff\xff"
    chunk = struct.pack(">I", 6) + b"PLTE" + plte + struct.pack(">I", zlib.crc32(b"PLTE" + plte))
    palette_png = palette_png[:33] + chunk + palette_png[33:]
    image, top = files.decode_png(palette_png)
    assert top == 255 and image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image[..., 0], [[0, 255], [255, 0]])


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of width x height zeros: a few KB that decode to width*height bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_png_larger_than_the_model_is_refused_before_decoding(tmp_path):
    import tracemalloc

    path = save_generator(tmp_path, "g.onnx", [3, 16, 64], output_activation=Activation.SIGMOID)
    (tmp_path / "big.png").write_bytes(_bomb_png(8000, 8000))  # 64 MB of pixels, ~70 KB on disk
    generator = onnxinv.load(path)
    tracemalloc.start()
    try:
        with pytest.raises(ObservationError, match="big.png: the image is 8000x8000 pixels.*8x8"):
            files.read_observations(tmp_path / "big.png", generator)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes allocated before refusing"


def test_png_bomb_is_refused_even_without_a_model(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_bomb_png(20000, 20000))
    with pytest.raises(ObservationError, match="bomb.png.*20000x20000.*too large"):
        files.read_png(tmp_path / "bomb.png")


def test_png_without_pillow_names_the_extra_to_install(tmp_path, monkeypatch):
    import sys

    (tmp_path / "x.png").write_bytes(_png_bytes(np.zeros((8, 8), np.uint8), 0))
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ObservationError, match=r"x.png.*Pillow.*pip install 'onnxinv\[images\]'"):
        files.read_png(tmp_path / "x.png")
    with pytest.raises(OnnxInvError, match=r"Pillow.*pip install 'onnxinv\[images\]'"):
        files.encode_png(np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------------------------------
# Arrays


def test_read_array_npy_and_single_array_npz(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "a.npz", obs=a)
    np.testing.assert_array_equal(files.read_array(tmp_path / "a.npy"), a)
    np.testing.assert_array_equal(files.read_array(tmp_path / "a.npz"), a)


def _npz_of_zeros(path, count: int) -> None:
    """An .npz holding one float64 array of ``count`` zeros, written without ever holding it in memory:
    the deflate stream of 1 MiB of zeros after a full flush is the same block every time."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (count,)})
    head = header.getvalue()
    mib = 1 << 20
    assert (count * 8) % mib == 0
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(b"\0" * mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(b"\0" * mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    last = compressor.flush()
    blocks = count * 8 // mib
    crc = zlib.crc32(head)
    zeros = b"\0" * mib
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    size = len(head) + count * 8
    compressed = len(first) + blocks * len(block) + len(last)
    name = b"x.npy"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, compressed, size, len(name), 0)
    with open(path, "wb") as handle:
        handle.write(local + name + first)
        for _ in range(blocks):
            handle.write(block)
        handle.write(last)
        offset = handle.tell()
        central = struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, compressed, size, len(name),
            0, 0, 0, 0, 0, 0,
        )  # fmt: skip
        handle.write(central + name)
        end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), offset, 0)
        handle.write(end)


def test_npz_that_inflates_to_2_gib_is_refused_before_inflating(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    _npz_of_zeros(path, 1 << 28)  # 2 GiB of float64 zeros
    assert path.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ObservationError, match=r"bomb.npz: .*2,147,483,\d+ bytes.*limit") as info:
            files.read_array(path, "observation")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "x.npy" in str(info.value)
    assert peak < 64 << 20, f"{peak:,} bytes allocated before refusing"


def test_small_npz_of_zeros_is_read(tmp_path):
    _npz_of_zeros(tmp_path / "ok.npz", 1 << 17)  # the same writer, 1 MiB: a valid archive
    array = files.read_array(tmp_path / "ok.npz")
    assert array.shape == (1 << 17,) and not array.any()


def test_npy_whose_header_declares_more_than_the_file_holds(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)}
    )
    (tmp_path / "liar.npy").write_bytes(header.getvalue() + b"\0" * 64)
    with pytest.raises(ObservationError, match=r"liar.npy: .*declares .* bytes.*holds 64"):
        files.read_array(tmp_path / "liar.npy")


def test_npz_with_two_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.ones(3))
    with pytest.raises(ObservationError, match=r"two.npz.*2 arrays \(a, b\)"):
        files.read_array(tmp_path / "two.npz", "observation")


def test_object_arrays_are_never_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ObservationError, match="obj.npy.*never unpickles"):
        files.read_array(tmp_path / "obj.npy")


def test_non_numeric_and_unknown_suffix_are_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(ObservationError, match="dtype <U1"):
        files.read_array(tmp_path / "s.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ObservationError, match="x.csv.*.npy"):
        files.read_array(tmp_path / "x.csv")


def test_split_batch_single_any_shape_and_batches():
    rows, single = files.split_batch(np.zeros((1, 1, 8, 8)), 64, "x")
    assert single and rows.shape == (1, 64)
    rows, single = files.split_batch(np.zeros((5, 1, 8, 8)), 64, "x")
    assert not single and rows.shape == (5, 64)
    rows, single = files.split_batch(np.zeros((3, 64)), 64, "x")
    assert not single and rows.shape == (3, 64)
    with pytest.raises(ObservationError, match=r"shape \(3, 10\).*64 values"):
        files.split_batch(np.zeros((3, 10)), 64, "x")


def test_read_mask_accepts_booleans_and_0_1_only(tmp_path):
    np.save(tmp_path / "m.npy", np.array([1, 0, 1, 1]))
    np.testing.assert_array_equal(files.read_mask(tmp_path / "m.npy", 4), [True, False, True, True])
    np.save(tmp_path / "bad.npy", np.array([2, 0, 1, 1]))
    with pytest.raises(ObservationError, match="bad.npy.*neither 0 nor 1"):
        files.read_mask(tmp_path / "bad.npy", 4)
    with pytest.raises(ObservationError, match=r"m.npy.*4 entries.*5 entries"):
        files.read_mask(tmp_path / "m.npy", 5)
    np.save(tmp_path / "per_obs.npy", np.ones((3, 4), bool))
    assert files.read_mask(tmp_path / "per_obs.npy", 4, count=3).shape == (3, 4)


def test_integer_observations_are_refused_with_advice(tmp_path):
    path = save_generator(tmp_path, "g.onnx", [3, 10, 16])
    np.save(tmp_path / "u8.npy", np.zeros(16, np.uint8))
    with pytest.raises(ObservationError, match="u8.npy.*uint8.*divide by 255"):
        files.read_observations(tmp_path / "u8.npy", onnxinv.load(path))


def test_observations_with_nan_are_refused_naming_the_entry(tmp_path):
    path = save_generator(tmp_path, "g.onnx", [3, 10, 20])
    x = np.zeros(20)
    x[7] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ObservationError, match="nan.npy.*entry 7"):
        files.read_observations(tmp_path / "nan.npy", onnxinv.load(path))


# --------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_leaves_the_old_file_whole_when_the_body_fails(tmp_path):
    target = tmp_path / "z.npy"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError), files.atomic_write(target) as handle:
        handle.write(b"new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npy"]  # no temporary file left


def test_save_npy_replaces_the_file(tmp_path):
    target = tmp_path / "z.npy"
    files.save_npy(target, np.ones(3, np.float32))
    files.save_npy(target, np.zeros((2, 3), np.float32))
    assert np.load(target).shape == (2, 3)


# --------------------------------------------------------------------------------------------------
# Image layout and PNG observations


def test_image_layout_of_a_flat_square_output(tmp_path):
    path = save_generator(tmp_path, "g.onnx", [3, 16, 64], output_activation=Activation.TANH)
    layout = files.image_layout(onnxinv.load(path))
    assert (layout.height, layout.width, layout.channels) == (8, 8, 1)
    assert (layout.low, layout.high) == (-1.0, 1.0)
    assert files.image_layout(onnxinv.load(save_generator(tmp_path, "h.onnx", [3, 16, 50]))) is None


def test_image_layout_from_a_declared_chw_output(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        node("Gemm", ["z", "W", "b"], ["a"], name="dense", transB=1),
        node("Sigmoid", ["a"], ["s"], name="act"),
        node("Reshape", ["s", "shape"], ["x"], name="to_image"),
    ]
    inits = [
        init("W", rng.normal(size=(48, 4))),
        init("b", np.zeros(48)),
        init("shape", [-1, 3, 4, 4], np.int64),
    ]
    path = save(model(nodes, inits, output_shape=("N", 3, 4, 4)), tmp_path)
    generator = onnxinv.load(path)
    layout = files.image_layout(generator)
    assert (layout.height, layout.width, layout.channels, layout.channels_first) == (4, 4, 3, True)
    # an RGB PNG comes back in the model's (C, H, W) order
    pixels = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    files.write_png(tmp_path / "rgb.png", pixels)
    obs = files.read_observations(tmp_path / "rgb.png", generator)
    assert obs.single and obs.values.shape == (1, 48)
    np.testing.assert_allclose(obs.values[0], (pixels / 255.0).transpose(2, 0, 1).ravel())


def test_png_observation_maps_pixels_onto_the_output_range(tmp_path):
    path = save_generator(tmp_path, "g.onnx", [3, 16, 64], output_activation=Activation.TANH)
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    files.write_png(tmp_path / "x.png", pixels)
    obs = files.read_observations(tmp_path / "x.png", onnxinv.load(path))
    np.testing.assert_allclose(obs.values[0], 2 * (pixels.ravel() / 255.0) - 1)
    files.write_png(tmp_path / "small.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ObservationError, match="small.png.*4x4.*8x8"):
        files.read_observations(tmp_path / "small.png", onnxinv.load(path))


def test_png_observation_needs_an_image_shaped_model(tmp_path):
    path = save_generator(tmp_path, "g.onnx", [3, 16, 50])
    files.write_png(tmp_path / "x.png", np.zeros((5, 10), np.uint8))
    with pytest.raises(ObservationError, match="not image-shaped|image-shaped model output"):
        files.read_observations(tmp_path / "x.png", onnxinv.load(path))


def test_comparison_pixels_scale_small_images_up(tmp_path):
    layout = files.ImageLayout(8, 8, 1, True, 0.0, 1.0)
    obs = np.linspace(0, 1, 64)
    pixels = files.comparison_pixels(layout, obs[None], obs[None])
    assert pixels.shape[0] == 64  # 8 x 8 scaled by 8
    assert pixels.shape[1] == 3 * 64 + 2 * 4  # three panels and two gaps
    diff_panel = pixels[:, -64:, 0]
    assert diff_panel.max() == 0  # identical images: black difference


# --------------------------------------------------------------------------------------------------
# Latents in the model's own shape and dtype


def _generator(k: int, **fields):
    import dataclasses

    base = Generator.from_layers(random_generator_layers([k, 10, 20], rng=0))
    return dataclasses.replace(base, **fields) if fields else base


def test_latent_for_model_shapes_and_casts():
    z = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    chw = _generator(4, sample_input_shape=(1, 2, 2), input=TensorInfo("z", ("N", 1, 2, 2), "float64"))
    assert files.latent_for_model(z, chw, single=False).shape == (3, 1, 2, 2)
    one = files.latent_for_model(z[:1], chw, single=True)
    assert one.shape == (1, 1, 2, 2) and one.dtype == np.float64
    np.testing.assert_array_equal(one.reshape(-1), z[0])
    bare = _generator(4, has_batch_dim=False, input=TensorInfo("z", (4,), "float32"))
    assert files.latent_for_model(z[:1], bare, single=True).shape == (4,)
    assert files.latent_for_model(z, bare, single=False).shape == (3, 4)
    flat = files.latent_for_model(z, chw, single=False, flat=True)
    assert flat.shape == (3, 4) and flat.dtype == np.float64
    assert files.latent_for_model(z[:1], chw, single=True, flat=True).shape == (4,)


def test_latent_beyond_the_input_dtype_is_refused():
    half = _generator(4, input=TensorInfo("z", ("N", 4), "float16"))
    assert files.latent_for_model(np.ones(4), half, single=True).dtype == np.float16
    with pytest.raises(ObservationError, match="beyond the range of the model's input dtype float16"):
        files.latent_for_model(np.full(4, 1e6), half, single=True)


def _interrupt_after_creating(monkeypatch):
    """``os.open`` that creates its file and then is interrupted, as a signal handler that raises right
    after the system call returns would do."""
    real = os.open

    def interrupted_open(*args, **kwargs):
        os.close(real(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", interrupted_open)


def test_an_interrupted_stage_leaves_no_temporary(tmp_path, monkeypatch):
    """A signal that lands between a temporary's creation and its registration must not leave it
    behind: its name is registered first, so the signal's cleanup removes it."""
    outputs = files.Outputs()
    outputs.add(tmp_path / "a.npy")
    with monkeypatch.context() as patch:
        _interrupt_after_creating(patch)
        with pytest.raises(KeyboardInterrupt):
            outputs.stage(tmp_path / "a.npy", b"data")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # created, then interrupted
    files.remove_pending()
    assert list(tmp_path.iterdir()) == []


def test_temporaries_are_new_files_beside_their_target(tmp_path):
    """Each temporary is a new file (never an existing one reused), hidden, beside its target, its name
    short whatever the target's; a folder that cannot be written to raises OSError and registers
    nothing."""
    long = tmp_path / ("x" * 200 + ".npy")
    fd, name = files.new_temporary(long)
    os.close(fd)
    other_fd, other = files.new_temporary(long)
    os.close(other_fd)
    assert name != other and os.path.dirname(name) == str(tmp_path)
    assert all(os.path.basename(n).startswith(".x") and n.endswith(".tmp") for n in (name, other))
    assert len(os.path.basename(name)) < 120
    files.remove_pending()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        files.new_temporary(tmp_path / "missing" / "a.npy")
    assert not files._PENDING  # nothing of the failed call is left registered


def test_remove_pending_deletes_staged_temporaries(tmp_path):
    """What a signal handler calls: every temporary not yet renamed disappears, targets are untouched."""
    (tmp_path / "b.png").write_bytes(b"old")
    outputs = files.Outputs()
    outputs.add(tmp_path / "a.npy")
    outputs.add(tmp_path / "b.png")
    outputs.stage(tmp_path / "a.npy", files.npy_bytes(np.zeros(3)))
    outputs.stage(tmp_path / "b.png", b"new")
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 2
    files.remove_pending()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png"]
    assert (tmp_path / "b.png").read_bytes() == b"old"
    outputs.discard()  # and cleaning up again is harmless
