"""Streamed runs into a folder (:mod:`onnxinv.stream`): the same results as ``invert``, the folder's
format, resuming after an interrupt, nothing half-written or stale taken as done, and bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scale_helpers import observations_784

import onnxinv
from onnxinv.errors import ObservationError, OnnxInvError
from onnxinv.stream import FORMAT, ProgressLine, invert_to_folder, open_rows

CHUNK = 25


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """120 observations of the sample 20-60-784 generator in a .npy file, and their in-memory inversion."""
    generator, z, x = observations_784(120, seed=3)
    folder = tmp_path_factory.mktemp("stream")
    np.save(folder / "obs.npy", x)
    return generator, x, folder / "obs.npy", onnxinv.invert(generator, x, workers=1)


def _chunks(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "chunks").iterdir())


def _assert_folder_matches(out: Path, reference) -> None:
    assert np.array_equal(np.load(out / "z.npy"), reference.model_z())
    assert list(np.load(out / "verdicts.npy")) == [v.value for v in reference.verdicts]
    assert np.array_equal(np.load(out / "residuals.npy"), reference.residuals)


def test_a_streamed_run_writes_the_documented_folder_with_invert_s_results(data, tmp_path):
    generator, x, obs, reference = data
    out = tmp_path / "out"
    result = invert_to_folder(generator, obs, out, chunk_size=CHUNK, workers=1)
    assert result.count == 120 and result.chunks == 5 and result.reused == 0 and result.success
    assert result.counts == reference.counts
    assert result.engine == "in process"
    _assert_folder_matches(out, reference)
    names = {p.name for p in out.iterdir()}
    assert names == {
        ".lock",
        "chunks",
        "manifest.json",
        "summary.json",
        "z.npy",
        "verdicts.npy",
        "residuals.npy",
    }
    assert _chunks(out) == [f"{a:012d}-{min(a + CHUNK, 120):012d}.npz" for a in range(0, 120, CHUNK)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["complete"] is True and manifest["chunks"] == 5
    identity = manifest["identity"]
    assert identity["observations"] == {
        "count": 120, "values_per_observation": 784, "shape": [120, 784], "dtype": "<f4", "single": False,
    }  # fmt: skip
    assert identity["chunk_size"] == CHUNK and identity["method"] == "auto" and "tol" in identity["settings"]
    with np.load(out / "chunks" / _chunks(out)[1]) as chunk:
        assert np.array_equal(chunk["z"], reference.z[CHUNK : 2 * CHUNK])
        assert json.loads(str(chunk["meta"][()]))["start"] == CHUNK
        assert list(chunk["method"]) == [r.method for r in reference.results[CHUNK : 2 * CHUNK]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"] == reference.counts and summary["run"] == manifest["run"]


def test_local_pool_thread_pool_and_arrays_give_the_same_folder(data, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    generator, x, obs, reference = data
    invert_to_folder(generator, obs, tmp_path / "pool", chunk_size=CHUNK, workers=2)
    _assert_folder_matches(tmp_path / "pool", reference)
    with ThreadPoolExecutor(2) as pool:
        invert_to_folder(generator, x, tmp_path / "threads", chunk_size=7, executor=pool)
    _assert_folder_matches(tmp_path / "threads", reference)


def test_an_interrupted_run_resumes_from_its_finished_chunks(data, tmp_path):
    generator, x, obs, reference = data
    out = tmp_path / "out"
    done: list[int] = []

    def interrupt_after_two(count: int) -> None:
        done.append(count)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invert_to_folder(generator, obs, out, chunk_size=CHUNK, workers=1, progress=interrupt_after_two)
    assert len(_chunks(out)) == 2  # the two finished chunks, and no temporary
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    assert not (out / "z.npy").exists()
    result = invert_to_folder(generator, obs, out, chunk_size=CHUNK, workers=2)
    assert result.reused == 2 and result.computed_observations == 120 - 2 * CHUNK
    _assert_folder_matches(out, reference)
    again = invert_to_folder(generator, obs, out, chunk_size=CHUNK)
    assert again.reused == 5 and again.computed_observations == 0 and again.engine.startswith("none")
    _assert_folder_matches(out, reference)


def test_half_written_and_foreign_chunk_files_are_not_taken_as_done(data, tmp_path):
    generator, x, obs, reference = data
    out = tmp_path / "out"
    invert_to_folder(generator, obs, out, chunk_size=CHUNK, workers=1)
    names = _chunks(out)
    (out / "chunks" / names[0]).write_bytes(b"PK\x03\x04 truncated")  # a damaged file
    with np.load(out / "chunks" / names[2]) as chunk:  # a chunk of another run, under this name
        fields = dict(chunk)
    meta = json.loads(str(fields["meta"][()]))
    fields["meta"] = np.array(json.dumps({**meta, "run": "0" * 64}))
    fields["z"] = fields["z"] + 1.0
    np.savez(out / "chunks" / names[2], **fields)
    (out / "chunks" / f".{names[3]}.x1y2.tmp").write_bytes(b"left by a killed run")
    (out / ".z.npy.a1b2.tmp").write_bytes(b"left by a killed run")
    result = invert_to_folder(generator, obs, out, chunk_size=CHUNK, workers=1)
    assert result.reused == 3
    assert _chunks(out) == names and not (out / ".z.npy.a1b2.tmp").exists()
    _assert_folder_matches(out, reference)


def test_a_changed_observation_recomputes_only_its_chunk(data, tmp_path):
    generator, x, obs, reference = data
    path = tmp_path / "obs.npy"
    np.save(path, x)
    out = tmp_path / "out"
    invert_to_folder(generator, path, out, chunk_size=CHUNK, workers=1)
    z_new = np.random.default_rng(99).standard_normal(20)
    changed = x.copy()
    changed[60] = generator.run_onnx(z_new).astype(np.float32)
    np.save(path, changed)
    result = invert_to_folder(generator, path, out, chunk_size=CHUNK, workers=1)
    assert result.reused == 4
    expected = onnxinv.invert(generator, changed[60])
    assert np.array_equal(np.load(out / "z.npy")[60], expected.model_z())
    assert np.array_equal(np.load(out / "z.npy")[:50], reference.model_z()[:50])


def test_other_settings_are_refused_unless_restarted(data, tmp_path):
    generator, x, obs, reference = data
    out = tmp_path / "out"
    invert_to_folder(generator, obs, out, chunk_size=CHUNK, workers=1)
    with pytest.raises(OnnxInvError, match=r"another run \(different method, settings\).*--restart"):
        invert_to_folder(generator, obs, out, method="exact", tol=1e-4, chunk_size=CHUNK)
    with pytest.raises(OnnxInvError, match="different chunk size"):
        invert_to_folder(generator, obs, out, chunk_size=CHUNK + 1)
    assert np.array_equal(np.load(out / "z.npy"), reference.model_z())  # refused before touching it
    result = invert_to_folder(generator, obs, out, method="exact", chunk_size=40, restart=True, workers=1)
    assert result.reused == 0 and result.chunks == 3 and _chunks(out)[0] == "000000000000-000000000040.npz"
    assert len(_chunks(out)) == 3  # the old layout's chunks were deleted


def test_folders_that_are_not_ours_or_in_use_are_refused(data, tmp_path):
    generator, x, obs, _ = data
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OnnxInvError, match="not empty and holds no onnxinv run"):
        invert_to_folder(generator, obs, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(OnnxInvError, match="not a folder"):
        invert_to_folder(generator, obs, tmp_path / "file")
    with pytest.raises(OnnxInvError, match="its parent"):
        invert_to_folder(generator, obs, tmp_path / "missing" / "out")
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "locked").mkdir()
    fd = os.open(tmp_path / "locked" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OnnxInvError, match="in use by another onnxinv run"):
            invert_to_folder(generator, obs, tmp_path / "locked")
    finally:
        os.close(fd)


def test_bad_observations_are_named_by_their_index_in_the_file(data, tmp_path):
    generator, x, _, _ = data
    bad = x.copy()
    bad[57, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ObservationError, match=r"observation 57 holds NaN at entry 3"):
        invert_to_folder(generator, tmp_path / "bad.npy", tmp_path / "out", chunk_size=CHUNK, workers=1)
    assert len(_chunks(tmp_path / "out")) == 2  # the chunks before it are kept
    np.save(tmp_path / "ints.npy", np.zeros((3, 784), dtype=np.int32))
    with pytest.raises(ObservationError, match="floating-point"):
        invert_to_folder(generator, tmp_path / "ints.npy", tmp_path / "out2")
    np.save(tmp_path / "short.npy", x[:2])
    (tmp_path / "short.npy").write_bytes((tmp_path / "short.npy").read_bytes()[:-8])
    with pytest.raises(ObservationError, match="damaged"):
        open_rows(tmp_path / "short.npy", 784)
    np.save(tmp_path / "wrong.npy", x[:2, :700])
    with pytest.raises(ObservationError, match="784 values per observation"):
        open_rows(tmp_path / "wrong.npy", 784)


def test_masks_single_observations_and_npz_files(data, tmp_path):
    generator, x, _, _ = data
    rows = x[:30]
    masks = np.random.default_rng(1).random((30, 784)) < 0.9
    np.save(tmp_path / "obs.npy", rows)
    np.save(tmp_path / "masks.npy", masks)
    expected = onnxinv.invert(generator, rows, mask=masks, workers=1)
    invert_to_folder(
        generator, tmp_path / "obs.npy", tmp_path / "m", mask=tmp_path / "masks.npy", chunk_size=8
    )
    _assert_folder_matches(tmp_path / "m", expected)
    shared = onnxinv.invert(generator, rows, mask=masks[0], workers=1)
    invert_to_folder(generator, rows, tmp_path / "s", mask=masks[0], chunk_size=8, workers=1)
    _assert_folder_matches(tmp_path / "s", shared)
    np.save(tmp_path / "one.npy", x[4].reshape(1, 1, 28, 28))
    single = invert_to_folder(generator, tmp_path / "one.npy", tmp_path / "one")
    assert single.single and single.count == 1
    assert np.array_equal(
        np.load(tmp_path / "one" / "z.npy"), onnxinv.invert(generator, x[4]).model_z()[None]
    )
    np.savez(tmp_path / "obs.npz", rows)
    invert_to_folder(generator, tmp_path / "obs.npz", tmp_path / "npz", chunk_size=8, workers=1, flat=True)
    assert np.array_equal(np.load(tmp_path / "npz" / "z.npy"), data[3].model_z()[:30].reshape(30, 20))


def test_progress_line_reports_chunks_rate_and_time_left():
    import io

    stream = io.StringIO()
    line = ProgressLine(0, file=stream, interval=0.0)
    line.begin(100, 4, reused_chunks=2)
    line(25)
    text = line.text()
    assert text.startswith("inverting 25/100 observations, 1/4 chunks, 2 chunks done before, ")
    assert " obs/s, ETA " in text
    for _ in range(3):
        line(25)
    line.close()
    assert "100/100 observations, 4/4 chunks" in stream.getvalue() and stream.getvalue().endswith("\n")


MEMORY_PROBE = textwrap.dedent(
    """
    import sys, tracemalloc
    import numpy as np
    from onnxinv.building import random_generator_layers
    from onnxinv.layers import Generator
    from onnxinv.stream import invert_to_folder

    generator = Generator.from_layers(random_generator_layers([4, 24, 2000], rng=7), dtype="float64")
    count, chunk = int(sys.argv[3]), int(sys.argv[4])
    z = np.random.default_rng(0).standard_normal((count, 4))
    rows = np.lib.format.open_memmap(sys.argv[1], mode="w+", dtype=np.float64, shape=(count, 2000))
    for a in range(0, count, 100):
        rows[a : a + 100] = generator.run_onnx(z[a : a + 100])
    rows.flush()
    del rows
    # every module the run uses is imported, and onnxruntime's session built, before we measure
    invert_to_folder(generator, generator.run_onnx(z[:2]), sys.argv[2] + "-warm")
    tracemalloc.start()
    result = invert_to_folder(generator, sys.argv[1], sys.argv[2], chunk_size=chunk, workers=1)
    print(tracemalloc.get_traced_memory()[1], result.count, result.counts["unique"])
    """
)


def test_memory_stays_bounded_on_a_file_many_times_the_chunk_budget(tmp_path):
    count, chunk = 800, 10
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, tmp_path / "obs.npy", tmp_path / "out", str(count), str(chunk)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peak, inverted, unique = (int(v) for v in done.stdout.split())
    file_bytes = (tmp_path / "obs.npy").stat().st_size
    chunk_bytes = chunk * 2000 * 8
    assert file_bytes > 60 * chunk_bytes  # the file is many times the chunk budget
    assert inverted == count and unique == count
    # Reading the file whole, or keeping every observation's result (each holds G(z), 16 kB here),
    # would each trace more than the whole file; the run traces about ten chunks' worth.
    assert peak < file_bytes / 5, f"peak {peak:,} bytes traced for a {file_bytes:,}-byte file"


def test_an_interrupted_final_file_writer_leaves_no_temporary(tmp_path, monkeypatch):
    """The final .npy files are written into temporaries too: one interrupted right after its creation
    is registered, and the signal's cleanup removes it."""
    from onnxinv import files
    from onnxinv.stream import _NpyWriter

    real = os.open

    def interrupted_open(*args, **kwargs):
        os.close(real(*args, **kwargs))
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", interrupted_open)
        with pytest.raises(KeyboardInterrupt):
            _NpyWriter(tmp_path / "z.npy", np.dtype(np.float64), (3,))
    assert [p.name for p in tmp_path.iterdir()]  # the temporary exists ...
    files.remove_pending()
    assert list(tmp_path.iterdir()) == []  # ... and the cleanup knows it
    writer = _NpyWriter(tmp_path / "z.npy", np.dtype(np.float64), (3,))
    writer.write(np.arange(3.0))
    writer.finish()
    writer.commit()
    files.remove_pending()  # a committed file is not a temporary any more
    assert np.array_equal(np.load(tmp_path / "z.npy"), np.arange(3.0))
