"""Model files that are damaged or hostile: a clear ModelLoadError, nothing read outside the folder."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from builders import assert_matches_onnxruntime, init, model, node, rng_weights, save
from hostile import unblocking
from onnx import TensorProto, helper

import onnxinv
from onnxinv.errors import ModelLoadError
from onnxinv.safe_load import load_model_file

K, H = 4, 300  # H*K*4 bytes > the 1 KiB external-data threshold used below


def _external_model(folder, location="model.onnx.data"):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1), node("Relu", ["a1"], ["x"])]
    m = model(nodes, [init("W1", rng_weights(1, H, K)), init("b1", rng_weights(2, H))])
    path = folder / "model.onnx"
    onnx.save(m, path, save_as_external_data=True, location=location, size_threshold=1024)
    return path


def _set_location(path, **fields):
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            entries.update({k: str(v) for k, v in fields.items()})
            del t.external_data[:]
            for k, v in entries.items():
                t.external_data.add(key=k, value=v)
    onnx.save(m, path)


def test_external_data_sidecar_loads(tmp_path):
    path = _external_model(tmp_path)
    assert (tmp_path / "model.onnx.data").exists()
    loaded = load_model_file(path)
    assert loaded.external_bytes == (H * K + H) * 4  # weight and bias are both over the threshold
    generator = onnxinv.load(path)
    assert_matches_onnxruntime(generator)


def test_external_data_in_a_subfolder_loads(tmp_path):
    (tmp_path / "weights").mkdir()
    path = _external_model(tmp_path, "weights/w.bin")
    assert load_model_file(path).external_bytes == (H * K + H) * 4


@pytest.mark.parametrize(
    ("location", "words"),
    [
        ("../outside.bin", "'..'"),
        ("/etc/passwd", "absolute"),
        ("missing.bin", "does not exist"),
        ("", "no location"),
    ],
)
def test_refused_locations(tmp_path, location, words):
    folder = tmp_path / "m"
    folder.mkdir()
    path = _external_model(folder)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 8000)
    _set_location(path, location=location)
    with pytest.raises(ModelLoadError, match=words) as info:
        load_model_file(path)
    assert "initializer 'W1'" in str(info.value) and str(path) in str(info.value)


def test_symlinked_data_file_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    path = _external_model(folder)
    secret = tmp_path / "secret.bin"
    os.replace(folder / "model.onnx.data", secret)
    os.symlink(secret, folder / "model.onnx.data")
    with pytest.raises(ModelLoadError, match="symbolic link|outside the model's folder"):
        load_model_file(path)


def test_symlinked_folder_on_the_way_refused(tmp_path):
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    path = _external_model(folder, "sub/model.onnx.data")
    (tmp_path / "elsewhere").mkdir()
    os.replace(folder / "sub" / "model.onnx.data", tmp_path / "elsewhere" / "model.onnx.data")
    os.rmdir(folder / "sub")
    os.symlink(tmp_path / "elsewhere", folder / "sub")
    with pytest.raises(ModelLoadError, match="outside the model's folder|symbolic link"):
        load_model_file(path)


def test_hard_linked_data_file_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    path = _external_model(folder)
    os.link(folder / "model.onnx.data", tmp_path / "other_name")
    with pytest.raises(ModelLoadError, match="2 hard links"):
        load_model_file(path)


def test_offset_or_length_past_the_end(tmp_path):
    path = _external_model(tmp_path)
    _set_location(path, offset=10**6)
    with pytest.raises(ModelLoadError, match="past the end"):
        load_model_file(path)


def test_length_not_matching_shape(tmp_path):
    path = _external_model(tmp_path)
    _set_location(path, length=16)
    with pytest.raises(ModelLoadError, match="needs 4800 bytes"):
        load_model_file(path)


def test_total_external_size_cap(tmp_path):
    path = _external_model(tmp_path)
    with pytest.raises(ModelLoadError, match="total limit"):
        load_model_file(path, max_external_bytes=1000)


def test_constant_attribute_with_external_data_is_checked(tmp_path):
    value = helper.make_tensor("Wc", TensorProto.FLOAT, [H, K], vals=[0.0] * (H * K))
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../escape.bin")
    nodes = [
        helper.make_node("Constant", [], ["W1"], name="c", value=value),
        node("Gemm", ["z", "W1"], ["x"], transB=1),
    ]
    path = save(model(nodes, []), tmp_path)
    with pytest.raises(ModelLoadError, match="node 'c' \\(Constant\\) attribute 'value'.*'\\.\\.'"):
        load_model_file(path)


def test_sparse_initializer_with_external_data_is_checked(tmp_path):
    m = model([node("Gemm", ["z", "W1"], ["x"], transB=1)], [])
    values = helper.make_tensor("W1", TensorProto.FLOAT, [2], vals=[1.0, 2.0])
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value="/abs/path.bin")
    indices = helper.make_tensor("idx", TensorProto.INT64, [2], vals=[0, 5])
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [H, K]))
    path = save(m, tmp_path)
    with pytest.raises(ModelLoadError, match="sparse initializer 'W1'.*absolute"):
        load_model_file(path)


def test_sparse_initializer_weights_load(tmp_path):
    dense = np.zeros((3, K), dtype=np.float32)
    dense[0, 1], dense[2, 3] = 1.5, -2.0
    m = model([node("Gemm", ["z", "W1"], ["x"], transB=1)], [])
    values = helper.make_tensor("W1", TensorProto.FLOAT, [2], vals=[1.5, -2.0])
    indices = helper.make_tensor("idx", TensorProto.INT64, [2], vals=[1, 11])
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [3, K]))
    generator = onnxinv.load(save(m, tmp_path))
    np.testing.assert_array_equal(generator.layers[0].weight, dense)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (b"this is a text file, not a model\n", "not an ONNX model"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not an ONNX model"),
        (
            helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString(),
            "not an ONNX model",
        ),
    ],
)
def test_files_that_are_not_models(tmp_path, content, words):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=words):
        onnxinv.load(path)


def test_truncated_model(tmp_path):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["x"], transB=1)]
    data = model(nodes, [init("W1", rng_weights(1, H, K)), init("b1", rng_weights(2, H))]).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not an ONNX model|truncated"):
        onnxinv.load(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        onnxinv.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="not a regular file"):
        onnxinv.load(tmp_path)


def test_model_file_size_cap(tmp_path):
    path = save(model([node("Relu", ["z"], ["x"])], []), tmp_path)
    with pytest.raises(ModelLoadError, match="over the 10-byte limit"):
        load_model_file(path, max_model_bytes=10)


def test_initializer_data_not_matching_its_shape(tmp_path):
    bad = init("W1", rng_weights(1, H, K))
    bad.dims[0] = H + 5  # declares more values than it holds
    nodes = [node("Gemm", ["z", "W1"], ["x"], transB=1)]
    with pytest.raises(ModelLoadError, match="initializer 'W1' declares shape"):
        onnxinv.load(save(model(nodes, [bad]), tmp_path))


def test_huge_declared_shape_refused_before_allocating(tmp_path):
    huge = TensorProto(name="W1", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"")
    nodes = [node("Gemm", ["z", "W1"], ["x"], transB=1)]
    with pytest.raises(ModelLoadError, match="refusing before allocating"):
        onnxinv.load(save(model(nodes, [huge]), tmp_path))


# --------------------------------------------------------------------------------------------------
# Races and file types: the folder swapped for a symlink while loading, FIFOs, folders, devices


def _swappable(tmp_path):
    """model.onnx with its data in sub/w.bin, and an outside folder holding a different w.bin."""
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1), node("Relu", ["a1"], ["x"])]
    m = model(nodes, [init("W1", rng_weights(1, H, K)), init("b1", rng_weights(2, H))])
    path = folder / "model.onnx"
    # only W1 (4800 bytes) goes to the sidecar, so one open decides what is inlined
    onnx.save(m, path, save_as_external_data=True, location="sub/w.bin", size_threshold=2000)
    inside = (folder / "sub" / "w.bin").read_bytes()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(b"\x7f" * len(inside))  # "secret" bytes, same size
    return folder, path, inside


def _swap(folder, tmp_path):
    """Replace m/sub by a symlink to ../outside (the attacker's move)."""
    os.rename(folder / "sub", tmp_path / "parked")
    os.symlink(tmp_path / "outside", folder / "sub")


def _weights(loaded) -> bytes:
    return b"".join(t.raw_data for t in loaded.model.graph.initializer)


def test_folder_swapped_for_a_symlink_after_the_checks_is_not_followed(tmp_path, monkeypatch):
    """The swap happens right before the data file is opened: after any check made by path."""
    folder, path, inside = _swappable(tmp_path)
    real_open = os.open
    swapped = []

    def open_then_swap(file, flags, *args, **kwargs):
        name = os.fsdecode(file)
        if not swapped and (name.endswith("w.bin") or name == "sub"):
            _swap(folder, tmp_path)
            swapped.append(name)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_then_swap)
    try:
        loaded = load_model_file(path)
    except ModelLoadError as exc:
        assert "symbolic link" in str(exc), exc
    else:
        assert b"\x7f" * 16 not in _weights(loaded), "data from outside the model's folder was inlined"
    assert swapped


def test_folder_swapped_back_and_forth_never_leaks(tmp_path):
    """A thread flips m/sub between the real folder and a symlink to the outside while we load."""
    import threading

    folder, path, inside = _swappable(tmp_path)
    stop = threading.Event()

    def flip():
        real, parked, link = folder / "sub", tmp_path / "parked", folder / "sub"
        while not stop.is_set():
            os.rename(real, parked)
            os.symlink(tmp_path / "outside", link)
            os.unlink(link)
            os.rename(parked, real)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    leaked = loaded_ok = 0
    try:
        for _ in range(400):
            try:
                loaded = load_model_file(path)
            except ModelLoadError:
                continue
            loaded_ok += 1
            leaked += b"\x7f" * 16 in _weights(loaded)
    finally:
        stop.set()
        thread.join()
    assert leaked == 0, f"{leaked} of {loaded_ok} loads inlined data from outside the model's folder"


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_sidecar_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    path = _external_model(tmp_path)
    os.unlink(tmp_path / "model.onnx.data")
    if kind == "folder":
        (tmp_path / "model.onnx.data").mkdir()
        with pytest.raises(ModelLoadError, match="not a regular file") as info:
            load_model_file(path)
    else:
        with unblocking(tmp_path / "model.onnx.data") as released, pytest.raises(ModelLoadError) as info:
            load_model_file(path)
        assert not released, "the loader blocked on the FIFO"
    assert "not a regular file" in str(info.value) and "model.onnx.data" in str(info.value)


def test_model_file_that_is_a_fifo_is_refused(tmp_path):
    with unblocking(tmp_path / "pipe.onnx") as released, pytest.raises(ModelLoadError, match="not a regular"):
        load_model_file(tmp_path / "pipe.onnx")
    assert not released


def test_inlined_model_over_2_gib_is_refused_before_reading(tmp_path):
    """Two 1.2 GB sidecars (sparse files: no disk used) would inline to more than protobuf can encode."""
    import tracemalloc

    count = 300_000_000  # float32 values per tensor: 1.2e9 bytes each
    inits = []
    for i in range(2):
        t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[count])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", f"w{i}.bin"), ("offset", "0"), ("length", str(4 * count))):
            t.external_data.add(key=key, value=value)
        with open(tmp_path / f"w{i}.bin", "wb") as handle:
            handle.truncate(4 * count)
        inits.append(t)
    nodes = [node("Add", ["z", "W0"], ["a"]), node("Add", ["a", "W1"], ["x"])]
    path = save(model(nodes, inits, input_shape=("N", count)), tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match="2 GiB") as info:
            load_model_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "model.onnx" in str(info.value)
    assert peak < 100 << 20, f"{peak:,} bytes allocated before refusing"
