"""``onnxinv invert --out-dir`` (streamed, resumable runs) and the options for many observations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import run
from scale_helpers import MODEL_784, kill_all, observations_784, start, tagged_pids, wait_for

import onnxinv


@pytest.fixture(scope="module")
def obs_file(tmp_path_factory):
    generator, z, x = observations_784(60, seed=8)
    folder = tmp_path_factory.mktemp("cli-stream")
    np.save(folder / "obs.npy", x)
    return folder / "obs.npy", onnxinv.invert(generator, x, workers=1)


def test_out_dir_writes_the_folder_and_a_rerun_resumes(obs_file, tmp_path):
    obs, reference = obs_file
    out = tmp_path / "out"
    first = run("invert", MODEL_784, obs, "--out-dir", out, "--chunk-size", 20, "--workers", 1)
    assert first.exit_code == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"60 observations: {', '.join(f'{n} {v}' for v, n in reference.counts.items())}"
    assert lines[1].startswith("chunks    3 (0 done before, 3 computed, in process); ")
    assert np.array_equal(np.load(out / "z.npy"), reference.model_z())
    again = run("invert", MODEL_784, obs, "--out-dir", out, "--chunk-size", 20, "--json")
    assert again.exit_code == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["reused_chunks"] == 3 and document["computed_observations"] == 0
    assert document["verdicts"] == reference.counts and document["z_shape"] == [60, 20]
    other = run("invert", MODEL_784, obs, "--out-dir", out, "--chunk-size", 20, "--method", "exact")
    assert other.exit_code == 1 and "holds the results of another run (different method)" in other.stderr
    restarted = run(
        "invert", MODEL_784, obs, "--out-dir", out, "--chunk-size", 20, "--method", "exact", "--restart"
    )
    assert restarted.exit_code == 0, restarted.stderr
    assert "(0 done before, 3 computed" in restarted.stdout


def test_out_dir_exit_code_3_when_some_observation_has_no_fit(obs_file, tmp_path):
    obs, _ = obs_file
    x = np.load(obs)[:4].copy()
    x[2] = np.random.default_rng(0).random(784).astype(np.float32)  # not an output of the model
    np.save(tmp_path / "mixed.npy", x)
    done = run("invert", MODEL_784, tmp_path / "mixed.npy", "--out-dir", tmp_path / "out", "--noise", "0")
    assert done.exit_code == 3, done.stderr
    assert "#2 " in done.stdout
    assert np.load(tmp_path / "out" / "verdicts.npy")[2] in ("not found", "no preimage")


def test_options_that_do_not_go_together_are_usage_errors(obs_file, tmp_path):
    obs, _ = obs_file
    for extra in (["-o", tmp_path / "z.npy"], ["--png", tmp_path / "x.png"], ["--recon", tmp_path / "r.npy"]):
        done = run("invert", MODEL_784, obs, "--out-dir", tmp_path / "out", *extra)
        assert done.exit_code == 2 and "cannot be used with --out-dir" in done.stderr
    done = run("invert", MODEL_784, obs, "--restart", "-o", tmp_path / "z.npy")
    assert done.exit_code == 2 and "--restart only applies to --out-dir" in done.stderr
    done = run("invert", MODEL_784, obs, "--scheduler", "tcp://127.0.0.1:1", "--workers", "2")
    assert done.exit_code == 2 and "exclude each other" in done.stderr
    assert not os.listdir(tmp_path)


def test_scheduler_without_dask_names_the_extra(obs_file, tmp_path, monkeypatch):
    obs, _ = obs_file
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    done = run("invert", MODEL_784, obs, "-o", tmp_path / "z.npy", "--scheduler", "tcp://127.0.0.1:1")
    assert done.exit_code == 1
    assert "distributed package is not installed" in done.stderr and "onnxinv[dask]" in done.stderr
    monkeypatch.setenv("ONNXINV_SCHEDULER", "tcp://127.0.0.1:1")
    done = run("audit", MODEL_784, "--samples", 3)
    assert done.exit_code == 1 and "onnxinv[dask]" in done.stderr


def test_scheduler_that_cannot_be_reached_is_one_paragraph(obs_file, tmp_path):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    obs, _ = obs_file
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        done = run("invert", MODEL_784, obs, "-o", tmp_path / "z.npy", "--scheduler", "tcp://127.0.0.1:1")
    assert done.exit_code == 1
    assert done.stderr.startswith(
        "Error: --scheduler tcp://127.0.0.1:1: could not connect to a Dask scheduler"
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "z.npy").exists()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds processes through /proc")
def test_sigterm_keeps_the_finished_chunks_and_the_same_command_resumes(tmp_path):
    generator, _, x = observations_784(600, seed=9)
    np.save(tmp_path / "obs.npy", x)
    argv = ["invert", MODEL_784, tmp_path / "obs.npy", "--out-dir", tmp_path / "out", "--chunk-size", 20]
    process, tag = start([*argv, "--workers", 2], tmp_path)
    chunks = tmp_path / "out" / "chunks"
    try:
        assert wait_for(
            lambda: chunks.is_dir() and len(os.listdir(chunks)) >= 2 or process.poll() is not None
        )
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("onnxinv did not stop after SIGTERM")
        assert process.returncode == 143, err
        assert "interrupted by SIGTERM; the chunks finished so far are kept in" in err
        assert "run the same command again to resume" in err
        assert wait_for(lambda: not tagged_pids(tag), timeout=15)
    finally:
        kill_all(tagged_pids(tag))
        process.kill()
        process.communicate()
    kept = sorted(os.listdir(chunks))
    assert kept and all(name.endswith(".npz") and not name.startswith(".") for name in kept)
    assert not (tmp_path / "out" / "z.npy").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"] is False
    resumed = run(*argv, "--json")
    assert resumed.exit_code in (0, 3), resumed.stderr
    document = json.loads(resumed.stdout)
    assert document["reused_chunks"] >= len(kept) and document["count"] == 600
    z = np.load(tmp_path / "out" / "z.npy")
    for a in (0, 300, 580):  # chunks from before and after the interrupt, as invert finds them
        assert np.array_equal(z[a : a + 20], onnxinv.invert(generator, x[a : a + 20], workers=1).model_z())
