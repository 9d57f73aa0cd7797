"""The command line as scripts use it: stdout holds only the document asked for, stderr only our own
paragraph, z comes back in the model's own shape and dtype, and options are checked before any work.

The stdout and stderr tests run the installed console script in a real subprocess: native libraries
(HiGHS, onnxruntime) write to the file descriptors directly, which ``CliRunner`` never sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from builders import init, model, node, rng_weights, save
from cli_helpers import observations, run

import onnxinv

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
GAUSSIAN = SAMPLES / "gaussian_20_100_500_relu.onnx"


def console(*args, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``onnxinv`` console script (``python -m onnxinv`` if it is not on disk)."""
    script = Path(sys.executable).with_name("onnxinv")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "onnxinv"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "PYTHONWARNINGS"))}
    return subprocess.run(
        [*argv, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


# --------------------------------------------------------------------------------------------------
# stdout: the JSON document and nothing else


def test_json_stdout_is_one_document_when_an_lp_runs(tmp_path):
    x = np.load(SAMPLES / "gaussian_20_100_500_relu.batch_noisy.npy")[0]
    np.save(tmp_path / "obs.npy", x)
    done = console(
        "invert", GAUSSIAN, "obs.npy", "--method", "linf", "--noise", "1e-3", "--json", "-o", "z.npy",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # HiGHS's banner before the document would make this fail
    assert document["results"][0]["method"] == "linf"
    assert document["verdicts"]["unique"] == 1
    assert done.stderr == ""


def test_json_stdout_of_a_batch_and_of_audit_is_one_document(tmp_path):
    np.save(tmp_path / "batch.npy", np.load(SAMPLES / "gaussian_20_100_500_relu.batch_noisy.npy")[:4])
    done = console(
        "invert", GAUSSIAN, "batch.npy", "--method", "linf", "--noise", "1e-3", "--json", "-o", "z.npy",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 4
    audit = console("audit", GAUSSIAN, "--samples", "2", "--json", cwd=tmp_path)
    assert audit.returncode in (0, 3), audit.stderr
    assert json.loads(audit.stdout)["samples"] == 2


# --------------------------------------------------------------------------------------------------
# stderr: our paragraph only, no onnxruntime log lines, no Python warnings


def _runtime_failure_model(folder: Path) -> Path:
    """Declares a free batch dim but reshapes to a fixed batch of 1: onnxruntime fails on batches."""
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a"], transB=1), node("Reshape", ["a", "s"], ["x"], name="fix")]
    inits = [
        init("W1", rng_weights(1, 8, 4)),
        init("b1", rng_weights(2, 8)),
        init("s", np.array([1, 8]), np.int64),
    ]
    return save(model(nodes, inits, input_shape=("N", 4)), folder, "fixed.onnx")


def _assert_one_paragraph(stderr: str) -> None:
    assert stderr.startswith("Error: "), stderr
    assert "\x1b" not in stderr, stderr  # onnxruntime colours its log lines
    assert "[E:onnxruntime" not in stderr and "[W:onnxruntime" not in stderr, stderr
    assert "Warning" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1, stderr


def test_onnxruntime_log_lines_do_not_reach_stderr(tmp_path):
    path = _runtime_failure_model(tmp_path)
    np.save(tmp_path / "obs.npy", np.ones(8, np.float32))
    for args in (["inspect", path], ["invert", path, "obs.npy", "-o", "z.npy"]):
        done = console(*args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        _assert_one_paragraph(done.stderr)
        # in our words: which node failed, without onnxruntime's source paths
        if "onnxruntime" in done.stderr:
            assert "'fix'" in done.stderr and "onnxruntime_src" not in done.stderr, done.stderr
    assert not (tmp_path / "z.npy").exists()


def test_numpy_warnings_do_not_reach_stderr(tmp_path):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a"], transB=1), node("Relu", ["a"], ["x"])]
    weights = np.full((8, 4), np.inf, np.float32)
    path = save(model(nodes, [init("W1", weights), init("b1", rng_weights(2, 8))]), tmp_path, "inf.onnx")
    done = console("inspect", path, cwd=tmp_path)
    assert done.returncode in (1, 3)
    assert "RuntimeWarning" not in done.stderr and "Warning" not in done.stderr, done.stderr
    if done.returncode == 1:
        _assert_one_paragraph(done.stderr)


# --------------------------------------------------------------------------------------------------
# Options checked before any work


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**70)])
def test_bad_seed_is_a_usage_error(relu_model, seed):
    result = run("audit", relu_model, "--samples", "1", "--seed", seed)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "--seed" in result.stderr and "Traceback" not in result.stderr


def test_largest_seed_is_accepted(relu_model):
    result = run("audit", relu_model, "--samples", "1", "--seed", str(2**63 - 1), "--json")
    assert result.exit_code in (0, 3), result.stderr
    assert json.loads(result.stdout)["seed"] == 2**63 - 1


def test_time_limit_reaches_the_api(tmp_path, relu_model, monkeypatch):
    import onnxinv.inversion as inversion

    real = inversion.invert
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("time_limit"))
        return real(*args, **kwargs)

    _, x = observations(relu_model)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr("onnxinv.inversion.invert", spy)
    result = run("invert", relu_model, tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--time-limit", "7.5")
    assert result.exit_code == 0, result.stderr
    assert seen == [7.5]


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "soon"])
def test_bad_time_limit_is_a_usage_error(tmp_path, relu_model, value):
    np.save(tmp_path / "x.npy", np.zeros(120, np.float32))
    result = run("invert", relu_model, tmp_path / "x.npy", "--time-limit", value)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "--time-limit" in result.stderr


# --------------------------------------------------------------------------------------------------
# z in the model's own input shape and dtype


def _model_with_input(folder: Path, shape, elem=onnx.TensorProto.FLOAT, dtype=np.float32) -> Path:
    """A 4-latent ReLU generator whose input is declared with ``shape`` (flattened before the Gemm)."""
    nodes = [
        node("Flatten", ["z"], ["flat"], axis=1),
        node("Gemm", ["flat", "W1", "b1"], ["a"], transB=1),
        node("Relu", ["a"], ["h"]),
        node("Gemm", ["h", "W2", "b2"], ["x"], transB=1),
    ]
    inits = [
        init("W1", rng_weights(1, 30, 4), dtype),
        init("b1", rng_weights(2, 30), dtype),
        init("W2", rng_weights(3, 60, 30), dtype),
        init("b2", rng_weights(4, 60), dtype),
    ]
    return save(model(nodes, inits, input_shape=shape, elem=elem), folder, "shaped.onnx")


@pytest.mark.parametrize(
    ("shape", "elem", "dtype", "one", "many"),
    [
        (("N", 4), onnx.TensorProto.FLOAT, np.float32, (1, 4), (3, 4)),
        (("N", 1, 2, 2), onnx.TensorProto.FLOAT, np.float32, (1, 1, 2, 2), (3, 1, 2, 2)),
        (("N", 4), onnx.TensorProto.DOUBLE, np.float64, (1, 4), (3, 4)),
    ],
)
def test_z_is_written_in_the_models_input_shape_and_dtype(tmp_path, shape, elem, dtype, one, many):
    path = _model_with_input(tmp_path, shape, elem, dtype)
    z_true, x = observations(path, count=3)
    session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    for rows, expected in ((x[:1].reshape(-1), one), (x, many)):
        np.save(tmp_path / "x.npy", rows.astype(dtype))
        result = run("invert", path, tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--method", "exact")
        assert result.exit_code == 0, result.stderr
        z = np.load(tmp_path / "z.npy")
        assert z.shape == expected and z.dtype == dtype, (z.shape, z.dtype)
        assert f"{expected} {np.dtype(dtype).name}" in result.stdout
        # the file feeds the model as it is, and onnxinv verify reads it back
        assert session.run(None, {"z": z})[0].size == 60 * expected[0]
        np.testing.assert_allclose(z.reshape(-1, 4), z_true[: expected[0]], rtol=1e-3, atol=1e-4)
        check = run("verify", path, tmp_path / "z.npy", tmp_path / "x.npy")
        assert check.exit_code == 0, check.stdout + check.stderr


def test_flat_writes_k_or_n_by_k(tmp_path):
    path = _model_with_input(tmp_path, ("N", 1, 2, 2))
    _, x = observations(path, count=2)
    for rows, expected in ((x[0], (4,)), (x, (2, 4))):
        np.save(tmp_path / "x.npy", rows)
        result = run("invert", path, tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--flat")
        assert result.exit_code == 0, result.stderr
        z = np.load(tmp_path / "z.npy")
        assert z.shape == expected and z.dtype == np.float32
        json_run = run("invert", path, tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--flat", "--json")
        assert json.loads(json_run.stdout)["z_shape"] == list(expected)


# --------------------------------------------------------------------------------------------------
# One precision rule for the CLI and the API


def test_float16_observation_gets_the_apis_verdict(tmp_path, relu_model):
    _, x = observations(relu_model)
    x16 = x.astype(np.float16)
    api = onnxinv.invert(onnxinv.load(relu_model), x16, method="exact")
    assert api.verdict.value == "unique"  # the API judges float16 data at float16 precision
    np.save(tmp_path / "x16.npy", x16)
    result = run(
        "invert", relu_model, tmp_path / "x16.npy", "-o", tmp_path / "z.npy", "--method", "exact", "--json"
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["results"][0]["verdict"] == api.verdict.value
