"""Helpers of the scale-out tests (executors, streamed runs, signals): the sample 20-60-784 generator, its
observations, processes found by a tag in their environment, and bit-for-bit comparisons."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import onnxinv

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODEL_784 = SAMPLES / "gaussian_20_60_784_relu.onnx"
TAG = "ONNXINV_TEST_TAG"


def observations_784(count: int, seed: int = 0) -> tuple[onnxinv.Generator, np.ndarray, np.ndarray]:
    """``(generator, z, x)``: ``count`` latents of the sample 20-60-784 generator and their float32
    observations computed by onnxruntime."""
    generator = onnxinv.load(MODEL_784)
    z = np.random.default_rng(seed).standard_normal((count, generator.latent_dim))
    return generator, z, generator.run_onnx(z).astype(np.float32)


def assert_same_results(a, b) -> None:
    """z bit for bit, verdicts, methods and reconstructions of two batch results are identical."""
    assert len(a) == len(b)
    assert np.array_equal(a.z, b.z), "z differs"
    assert a.verdicts == b.verdicts
    assert [r.method for r in a] == [r.method for r in b]
    assert np.array_equal(a.reconstructions, b.reconstructions)


def console_argv() -> list[str]:
    """The ``onnxinv`` console script of this interpreter (``python -m onnxinv`` if not on disk)."""
    script = Path(sys.executable).with_name("onnxinv")
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnxinv"]


def tagged_env() -> tuple[dict[str, str], str]:
    """A copy of the environment with a fresh tag: every process the run starts inherits it."""
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "PYTHONWARNINGS"))}
    env[TAG] = tag
    return env, tag


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("State:"):
                    return line.split()[1]
    except OSError:
        return None
    return None


def tagged_pids(tag: str) -> list[int]:
    """Live processes (zombies excluded: they are dead, waiting to be reaped) carrying ``tag``."""
    found = []
    needle = f"{TAG}={tag}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if _state(int(name)) not in (None, "Z", "X"):
            found.append(int(name))
    return found


def wait_for(condition, timeout: float = 120.0, step: float = 0.1) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass (a guard against hangs, not
    a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def kill_all(pids: Sequence[int]) -> None:
    """SIGKILL the given processes (the leftovers of a failed test, by pid only)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def start(args: Sequence[object], cwd: Path, **popen: object) -> tuple[subprocess.Popen[str], str]:
    """Start ``onnxinv ARGS`` with its output on pipes; returns the process and its tag."""
    env, tag = tagged_env()
    process = subprocess.Popen(
        [*console_argv(), *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )
    return process, tag


def run_cli(*args: object):
    """``onnxinv ARGS`` in-process with stdout and stderr kept apart (as ``tests/cli/cli_helpers.run``)."""
    import inspect

    from click.testing import CliRunner

    from onnxinv.cli import main

    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    return CliRunner(**kwargs).invoke(main, [str(a) for a in args])
