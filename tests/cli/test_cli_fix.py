"""``--fix NAME=FILE.npy`` and ``--latent NAME`` on every command, run as the installed program would be."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from builders import conditional_embedding, conditional_onehot, save
from cli_helpers import run

import onnxinv


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxinv", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def conditional(tmp_path):
    """A torch-dynamo-style generator with an int64 class label ``y``, the label file and observations."""
    path = save(conditional_embedding(), tmp_path, "cond.onnx")
    np.save(tmp_path / "y.npy", np.array(3))
    np.save(tmp_path / "y_other.npy", np.array([1]))
    generator = onnxinv.load(path, fixed={"y": 3})
    z = np.random.default_rng(7).standard_normal((2, 3))
    np.save(tmp_path / "obs.npy", generator.run_onnx(z).astype(np.float32))
    return path, tmp_path, z


def test_missing_fix_is_an_error_naming_the_input(conditional):
    path, _, _ = conditional
    proc = _cli("inspect", path)
    assert proc.returncode == 1
    assert "needs a fixed value for 'y'" in proc.stderr and "--fix y=Y.npy" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_inspect_invert_verify_audit_with_fix(conditional):
    path, folder, z_true = conditional
    fix = f"y={folder / 'y.npy'}"
    shown = _cli("inspect", path, "--fix", fix, "--latent", "z")
    assert shown.returncode == 0, shown.stderr
    assert "z [s17, 3] float32  (latent: 3 values)" in shown.stdout
    assert "y [s17] int64  (fixed to [3] (shape (1,)))" in shown.stdout
    assert "self-check  passed" in shown.stdout

    out = folder / "z.npy"
    inverted = _cli(
        "invert", path, folder / "obs.npy", "--fix", fix, "-o", out, "--json", "--method", "exact"
    )
    assert inverted.returncode == 0, inverted.stderr
    assert json.loads(inverted.stdout)["verdicts"]["unique"] == 2
    np.testing.assert_allclose(np.load(out), z_true, atol=1e-3)

    assert _cli("verify", path, out, folder / "obs.npy", "--fix", fix).returncode == 0
    wrong = _cli("verify", path, out, folder / "obs.npy", "--fix", f"y={folder / 'y_other.npy'}")
    assert wrong.returncode == 3  # another class label does not reproduce the observations

    audited = _cli("audit", path, "--fix", fix, "--samples", "4", "--json")
    assert audited.returncode in (0, 3), audited.stderr
    report = json.loads(audited.stdout[audited.stdout.index("{") :])
    assert report["latent_dim"] == 3 and len(report["layers"]) == 2


def test_latent_option_resolves_two_float_inputs(tmp_path):
    path = save(conditional_onehot(), tmp_path)
    np.save(tmp_path / "label.npy", np.eye(5, dtype=np.float32)[4])
    ambiguous = _cli("inspect", path)
    assert ambiguous.returncode == 1 and "--latent z --fix onehot=ONEHOT.npy" in ambiguous.stderr
    ok = _cli("inspect", path, "--latent", "z", "--fix", f"onehot={tmp_path / 'label.npy'}", "--json")
    assert ok.returncode == 0, ok.stderr
    roles = {i["name"]: i["role"] for i in json.loads(ok.stdout)["inputs"]}
    assert roles == {"z": "latent", "onehot": "fixed"}


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--fix", "y"], 2, ["is not NAME=FILE.npy"]),
        (["--fix", "y=missing.npy"], 2, ["file 'missing.npy' for input 'y' does not exist"]),
        (["--fix", "y=y.npy", "--fix", "y=y.npy"], 2, ["input 'y' is fixed twice"]),
        (["--fix", "y=y.npy", "--latent", "q"], 1, ["latent 'q' is not an input", "'z' [s17, 3] float32"]),
        (["--fix", "y=objects.npy"], 1, ["never unpickles"]),
        (["--fix", "y=pair.npy"], 1, ["holds 2 samples along the batch axis"]),
    ],
)
def test_bad_fix_options(conditional, monkeypatch, args, code, words):
    path, folder, _ = conditional
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "pair.npy", np.array([1, 2]))
    monkeypatch.chdir(folder)
    result = run("inspect", path, *args)  # in-process: the option parsing is what is tested here
    assert result.exit_code == code, result.stderr
    for word in words:
        assert word in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
