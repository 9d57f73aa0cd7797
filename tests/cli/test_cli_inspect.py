"""``onnxinv inspect``, the global options, and how every command reports errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from cli_helpers import run

import onnxinv


def test_inspect_lists_layers_interface_and_self_check(relu_model):
    result = run("inspect", relu_model)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert str(relu_model) in out
    assert "z [N, 5] float32" in out and "x [N, 120] float32" in out
    assert "producer    onnxinv, opset 17" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["0", "5", "->", "40", "8.00x", "relu", "dense0,", "act0"] in lines
    assert ["1", "40", "->", "120", "3.00x", "relu", "dense1,", "act1"] in lines
    assert "self-check  passed" in out


def test_inspect_json(relu_model):
    result = run("inspect", relu_model, "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["latent_dim"] == 5 and doc["output_dim"] == 120
    assert doc["input"] == {"name": "z", "shape": ["N", 5], "dtype": "float32"}
    assert [(la["in_features"], la["out_features"], la["activation"]) for la in doc["layers"]] == [
        (5, 40, "relu"),
        (40, 120, "relu"),
    ]
    assert doc["layers"][0]["source_nodes"] == ["dense0", "act0"]
    assert doc["self_check"]["passed"] is True


def test_inspect_no_self_check(relu_model):
    result = run("inspect", relu_model, "--no-self-check")
    assert result.exit_code == 0
    assert "self-check  skipped" in result.stdout
    assert json.loads(run("inspect", relu_model, "--json", "--no-self-check").stdout)["self_check"] is None


def test_inspect_exit_3_when_the_self_check_fails(relu_model, monkeypatch):
    from onnxinv.loader import SelfCheck

    failed = SelfCheck(False, 5, 0.5, 1.0, 1e-4, 1e-5)
    monkeypatch.setattr("onnxinv.loader.check_generator", lambda generator: failed)
    result = run("inspect", relu_model)
    assert result.exit_code == 3
    assert "self-check  FAILED" in result.stdout


def test_unsupported_model_is_exit_1_one_paragraph_naming_file_and_nodes(unsupported_model):
    result = run("inspect", unsupported_model)
    assert result.exit_code == 1
    err = result.stderr
    assert err.startswith("Error: ")
    assert str(unsupported_model) in err
    assert "'soft' (Softplus" in err and "'elu' (Elu" in err
    assert "Traceback" not in err
    assert result.stdout == ""


def test_debug_adds_the_traceback(unsupported_model):
    result = run("--debug", "inspect", unsupported_model)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "UnsupportedModelError" in result.stderr


def test_corrupt_model_file_is_exit_1_naming_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x01garbage that is not a protobuf" * 3)
    result = run("inspect", path)
    assert result.exit_code == 1
    assert "broken.onnx" in result.stderr and "Traceback" not in result.stderr


def test_missing_file_and_bad_option_are_usage_errors(tmp_path, relu_model):
    result = run("inspect", tmp_path / "nope.onnx")
    assert result.exit_code == 2
    assert "nope.onnx" in result.stderr and "does not exist" in result.stderr
    assert run("inspect", relu_model, "--frobnicate").exit_code == 2
    assert run("inspect").exit_code == 2


def test_unexpected_exception_is_an_internal_error_paragraph(relu_model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something impossible")

    monkeypatch.setattr("onnxinv.loader.load", broken)
    result = run("inspect", relu_model)
    assert result.exit_code == 1
    assert "internal error" in result.stderr and "RuntimeError: something impossible" in result.stderr
    assert "--debug" in result.stderr and "Traceback" not in result.stderr
    assert "Traceback" in run("--debug", "inspect", relu_model).stderr


def test_version_and_help_document_exit_codes():
    result = run("--version")
    assert result.exit_code == 0 and onnxinv.__version__ in result.stdout
    help_text = run("--help").stdout
    for command in ("inspect", "invert", "verify", "audit"):
        assert command in help_text
    assert "Exit codes:" in help_text and "3  the command ran but the answer is negative" in help_text
    assert "Exit codes:" in run("invert", "--help").stdout


def test_python_dash_m_runs_the_same_cli(relu_model):
    proc = subprocess.run(
        [sys.executable, "-m", "onnxinv", "inspect", str(relu_model), "--json", "--no-self-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["latent_dim"] == 5


def test_installed_console_script(unsupported_model, relu_model):
    exe = shutil.which("onnxinv")
    if exe is None:
        pytest.fail("the console script `onnxinv` is not on PATH: run `pip install -e .`")
    env = {**os.environ, "COLUMNS": "100"}
    ok = subprocess.run(
        [exe, "inspect", str(relu_model)], capture_output=True, text=True, env=env, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert "self-check  passed" in ok.stdout
    bad = subprocess.run(
        [exe, "inspect", str(unsupported_model)], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "unsupported.onnx" in bad.stderr and "Traceback" not in bad.stderr
