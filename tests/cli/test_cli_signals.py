"""Signals, in a real subprocess: SIGTERM and Ctrl-C stop the pool's workers at once, remove temporary
files, write nothing and exit 143 / 130; a run killed outright (``subprocess.run(timeout=...)`` sends
SIGKILL) leaves no process behind.

Each test waits until the local pool's workers are running (a long gradient-descent batch) before it
signals; the old behaviour fails each of them: orphaned workers kept the caller's stdout open (so
``communicate`` hung) or kept running forever, and Ctrl-C printed "Aborted!" with exit code 1.
"""

from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest
from scale_helpers import MODEL_784, kill_all, observations_784, start, tagged_pids, wait_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds processes through /proc")


@pytest.fixture
def slow_batch(tmp_path):
    """400 observations inverted with gradient descent: far longer than any of these tests waits."""
    _, _, x = observations_784(400, seed=5)
    np.save(tmp_path / "obs.npy", x)
    return tmp_path / "obs.npy"


def _start_pool_run(tmp_path, obs, **popen):
    process, tag = start(["invert", MODEL_784, obs, "--method", "gd", "-o", "z.npy"], tmp_path, **popen)
    started = wait_for(lambda: len(tagged_pids(tag)) >= 3 or process.poll() is not None)
    if not started or process.poll() is not None:
        kill_all(tagged_pids(tag))
        out, err = process.communicate(timeout=60)
        pytest.fail(f"the local pool never started (exit {process.returncode}): {err[-2000:]}")
    return process, tag


def _left_behind(tmp_path) -> list[str]:
    return sorted(name for name in os.listdir(tmp_path) if name != "obs.npy")


def test_sigterm_stops_the_workers_writes_nothing_and_exits_143(tmp_path, slow_batch):
    process, tag = _start_pool_run(tmp_path, slow_batch)
    try:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("onnxinv's stdout stayed open after SIGTERM: orphaned workers still hold it")
        assert process.returncode == 143, err
        assert out == ""
        assert "interrupted by SIGTERM; nothing was written" in err and "Traceback" not in err
        assert wait_for(lambda: not tagged_pids(tag), timeout=15), "workers outlived the run"
        assert _left_behind(tmp_path) == []  # no z.npy, no temporary
    finally:
        kill_all(tagged_pids(tag))
        process.kill()
        process.communicate()


def test_ctrl_c_stops_the_workers_at_once_and_exits_130(tmp_path, slow_batch):
    # A terminal's Ctrl-C signals the whole foreground process group, workers included.
    process, tag = _start_pool_run(tmp_path, slow_batch, start_new_session=True)
    try:
        os.killpg(process.pid, signal.SIGINT)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("onnxinv kept running after Ctrl-C")
        assert process.returncode == 130, err
        assert "Aborted!" not in err and "Traceback" not in err and "KeyboardInterrupt" not in err
        assert "interrupted by SIGINT; nothing was written" in err
        assert out == ""
        assert wait_for(lambda: not tagged_pids(tag), timeout=15), "workers kept computing after Ctrl-C"
        assert _left_behind(tmp_path) == []
    finally:
        kill_all(tagged_pids(tag))
        process.kill()
        process.communicate()


def test_a_run_killed_by_subprocess_timeout_leaves_no_process_behind(tmp_path, slow_batch):
    # What subprocess.run(timeout=...) does when the time is up, on POSIX: SIGKILL, then wait.
    process, tag = _start_pool_run(tmp_path, slow_batch)
    workers = [pid for pid in tagged_pids(tag) if pid != process.pid]
    assert workers
    try:
        process.kill()
        process.wait(timeout=60)
        assert wait_for(lambda: not tagged_pids(tag), timeout=15), (
            f"workers {tagged_pids(tag)} outlived their parent"
        )
        assert not os.path.exists(tmp_path / "z.npy")
    finally:
        kill_all(tagged_pids(tag))
        process.communicate()
