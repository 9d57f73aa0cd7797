"""Hostile paths through the command line: FIFOs and devices as inputs or outputs, outputs that name an
input, writes that fail half way (disk full, ``ulimit -f``), long names. Every refusal is exit 1 with one
paragraph naming the file; nothing is written unless every output is ready."""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import observations, run
from hostile import unblocking

PREVIOUS = b"previous contents"


def _inputs(tmp_path, relu_model):
    _, x = observations(relu_model)
    obs, mask = tmp_path / "obs.npy", tmp_path / "mask.npy"
    np.save(obs, x)
    np.save(mask, np.ones(120, bool))
    return obs, mask


def _no_temporaries(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------------------------
# FIFOs and devices as inputs


@pytest.mark.parametrize("role", ["obs", "mask", "z", "png"])
def test_fifo_input_is_refused_without_blocking(tmp_path, relu_model, image_model, role):
    obs, mask = _inputs(tmp_path, relu_model)
    fifo = tmp_path / ("pipe.png" if role == "png" else "pipe.npy")
    with unblocking(fifo) as released:
        if role == "obs":
            result = run("invert", relu_model, fifo, "-o", tmp_path / "z.npy")
        elif role == "png":
            result = run("invert", image_model, fifo, "-o", tmp_path / "z.npy")
        elif role == "mask":
            result = run("invert", relu_model, obs, "--mask", fifo, "-o", tmp_path / "z.npy")
        else:
            result = run("verify", relu_model, fifo, obs)
    assert not released, "the reader blocked on the FIFO"
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert "pipe." in result.stderr and "not a regular file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "z.npy").exists()


def test_png_from_dev_zero_is_refused_before_reading(tmp_path, image_model):
    """A symlink named .png to /dev/zero; run in a child with a memory cap, since an unbounded read
    would otherwise eat the machine's memory."""
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        "from onnxinv.cli import main\n"
        "sys.argv = ['onnxinv'] + sys.argv[1:]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "invert", str(image_model), "zero.png", "-o", "z.npy"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "zero.png" in done.stderr and "not a regular file" in done.stderr, done.stderr
    assert not (tmp_path / "z.npy").exists()


# --------------------------------------------------------------------------------------------------
# Outputs that are not regular files, or that name an input


def test_fifo_output_is_refused_and_left_alone(tmp_path, relu_model):
    obs, _ = _inputs(tmp_path, relu_model)
    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    result = run("invert", relu_model, obs, "-o", fifo)
    assert result.exit_code == 1, result.stderr
    assert "out.npy" in result.stderr and "not a regular file" in result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    _no_temporaries(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_device_output_is_refused_and_left_alone(tmp_path, relu_model):
    """As root, ``-o /dev/null`` used to replace the device node; here a null device made in tmp_path."""
    obs, _ = _inputs(tmp_path, relu_model)
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    result = run("invert", relu_model, obs, "-o", device)
    assert result.exit_code == 1, result.stderr
    assert "not a regular file" in result.stderr and "character device" in result.stderr
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_symlink_output_is_refused(tmp_path, relu_model):
    obs, _ = _inputs(tmp_path, relu_model)
    target = tmp_path / "target.npy"
    target.write_bytes(PREVIOUS)
    (tmp_path / "link.npy").symlink_to(target)
    result = run("invert", relu_model, obs, "-o", tmp_path / "link.npy")
    assert result.exit_code == 1 and "symbolic link" in result.stderr, result.stderr
    assert target.read_bytes() == PREVIOUS and (tmp_path / "link.npy").is_symlink()


@pytest.mark.parametrize("target", ["model", "obs", "mask", "hard_link_to_obs"])
def test_output_that_names_an_input_is_refused(tmp_path, relu_model, target):
    obs, mask = _inputs(tmp_path, relu_model)
    if target == "hard_link_to_obs":
        os.link(obs, tmp_path / "alias.npy")
    path = {"model": relu_model, "obs": obs, "mask": mask, "hard_link_to_obs": tmp_path / "alias.npy"}[target]
    before = path.read_bytes()
    result = run("invert", relu_model, obs, "--mask", mask, "-o", path)
    assert result.exit_code == 1, result.stderr
    assert "is also an input" in result.stderr and path.name in result.stderr, result.stderr
    assert path.read_bytes() == before
    _no_temporaries(tmp_path)


def test_png_and_z_on_the_same_path_are_refused(tmp_path, image_model):
    _, x = observations(image_model)
    np.save(tmp_path / "x.npy", x)
    same = tmp_path / "out.bin"
    result = run("invert", image_model, tmp_path / "x.npy", "-o", same, "--png", same)
    assert result.exit_code == 1, result.stderr
    assert "--png" in result.stderr and "out.bin" in result.stderr
    assert not same.exists()


def test_a_250_character_output_name_is_written(tmp_path, relu_model):
    obs, _ = _inputs(tmp_path, relu_model)
    long_name = tmp_path / ("z" * 246 + ".npy")
    result = run("invert", relu_model, obs, "-o", long_name)
    assert result.exit_code == 0, result.stderr
    assert np.load(long_name).size == 5
    _no_temporaries(tmp_path)


# --------------------------------------------------------------------------------------------------
# Writes that fail half way


@contextlib.contextmanager
def _tiny_filesystem(folder: Path, size: str = "64k"):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)


def test_disk_full_is_a_clear_error(tmp_path, relu_model):
    obs, _ = _inputs(tmp_path, relu_model)
    with _tiny_filesystem(tmp_path / "small") as small:
        _fill(small)
        result = run("invert", relu_model, obs, "-o", small / "z.npy")
        assert result.exit_code == 1, result.stderr
        assert "internal error" not in result.stderr and "bug" not in result.stderr, result.stderr
        assert "z.npy" in result.stderr and "No space left on device" in result.stderr, result.stderr
        assert sorted(p.name for p in small.iterdir()) == ["filler"]


def test_failing_png_leaves_no_z(tmp_path, image_model):
    _, x = observations(image_model, count=33)
    np.save(tmp_path / "x.npy", x)
    with _tiny_filesystem(tmp_path / "small") as small:
        _fill(small)
        result = run(
            "invert", image_model, tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--png", small / "c.png"
        )
        assert result.exit_code == 1, result.stderr
        assert "c.png" in result.stderr and "No space left on device" in result.stderr, result.stderr
        assert not (tmp_path / "z.npy").exists()
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
    _no_temporaries(tmp_path)


def test_file_size_limit_is_a_clear_error(tmp_path, relu_model):
    obs, _ = _inputs(tmp_path, relu_model)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    code = "import sys\nfrom onnxinv.cli import main\nsys.argv = ['onnxinv'] + sys.argv[1:]\nmain()\n"
    done = subprocess.run(
        [sys.executable, "-c", code, "invert", str(relu_model), str(obs), "-o", "z.npy"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "internal error" not in done.stderr and "File too large" in done.stderr, done.stderr
    assert not (tmp_path / "z.npy").exists()
    _no_temporaries(tmp_path)
