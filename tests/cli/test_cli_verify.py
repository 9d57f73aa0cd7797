"""``onnxinv verify`` and the ``onnxinv.verify.verify`` API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import observations, run

import onnxinv
from onnxinv.errors import ObservationError
from onnxinv.verify import verify


def test_api_single_pair_passes_with_float32_rounding(relu_model):
    z, x = observations(relu_model)
    result = verify(onnxinv.load(relu_model), z, x)
    assert result.passed and result.single and result.count == 1
    assert result.max_rel_l2 < 1e-6
    assert result.to_dict()["residual_rel_l2"] == [pytest.approx(result.max_rel_l2)]


def test_api_batch_reports_each_row_and_counts_failures(relu_model):
    z, x = observations(relu_model, count=4)
    x[2] *= 1.5  # 50% off: relative l2 error 1/3
    result = verify(onnxinv.load(relu_model), z, x, tol=1e-3)
    assert not result.passed and result.failures == 1
    assert result.residual_rel_l2.shape == (4,)
    assert result.residual_rel_l2[2] == pytest.approx(1 / 3, rel=1e-4)
    assert "3/4 within tolerance" in result.describe()


def test_api_refuses_mismatched_counts(relu_model):
    z, x = observations(relu_model, count=3)
    with pytest.raises(ObservationError, match="3 latent.*2 observation"):
        verify(onnxinv.load(relu_model), z, x[:2])


def test_cli_verify_pass_fail_and_json(tmp_path, relu_model):
    z, x = observations(relu_model, count=3)
    np.save(tmp_path / "z.npy", z.astype(np.float32))
    np.save(tmp_path / "x.npy", x)
    ok = run("verify", relu_model, tmp_path / "z.npy", tmp_path / "x.npy")
    assert ok.exit_code == 0, ok.stdout
    assert ok.stdout.startswith("passed: 3/3 within tolerance 0.001")

    np.save(tmp_path / "x_off.npy", x + 1.0)
    bad = run("verify", relu_model, tmp_path / "z.npy", tmp_path / "x_off.npy")
    assert bad.exit_code == 3
    assert bad.stdout.startswith("FAILED: 0/3")

    doc = json.loads(run("verify", relu_model, tmp_path / "z.npy", tmp_path / "x_off.npy", "--json").stdout)
    assert doc["passed"] is False and doc["count"] == 3 and doc["failures"] == 3
    assert len(doc["residual_linf"]) == 3 and doc["tol"] == 1e-3


def test_cli_verify_tolerance_decides(tmp_path, relu_model):
    z, x = observations(relu_model)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "x.npy", x * 1.01)  # relative error 1e-2
    assert run("verify", relu_model, tmp_path / "z.npy", tmp_path / "x.npy").exit_code == 3
    single = run("verify", relu_model, tmp_path / "z.npy", tmp_path / "x.npy", "--tol", "0.02")
    assert single.exit_code == 0
    assert single.stdout.startswith("passed: relative l2 residual 9.90")
    assert run("verify", relu_model, tmp_path / "z.npy", tmp_path / "x.npy", "--tol", "-1").exit_code == 2


def test_cli_verify_wrong_latent_size_is_exit_1_naming_the_file(tmp_path, relu_model):
    _, x = observations(relu_model)
    np.save(tmp_path / "z7.npy", np.zeros(7))
    np.save(tmp_path / "x.npy", x)
    result = run("verify", relu_model, tmp_path / "z7.npy", tmp_path / "x.npy")
    assert result.exit_code == 1
    assert "z7.npy" in result.stderr and "latent" in result.stderr and "Traceback" not in result.stderr
