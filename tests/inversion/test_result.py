"""Result records: JSON-ready to_dict (used by the CLI's --json), verdict strings, read-only latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inversion_helpers import latent, make_generator

from onnxinv.inversion import InversionResult, SolverStatus, Verdict, invert


def test_to_dict_is_json_ready(relu_20_100_500) -> None:
    r = invert(relu_20_100_500, relu_20_100_500.forward(latent(20, 1)))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["verdict"] == "unique" and d["method"] == "exact" and d["requested"] == "auto"
    assert d["reason"] == "certified-layerwise" and d["success"] is True
    assert d["evidence"]["kind"] == "layerwise" and d["evidence"]["witness"] is None
    assert len(d["z"]) == 20 and d["reproduces"] is True
    assert d["fit"]["criterion"] == "relative l2" and d["fit"]["residual_rel_l2"] == d["residual_rel_l2"]
    assert [s["layer"] for s in d["steps"]] == [0, 1]
    assert d["steps"][1]["status"] == "optimal" and d["steps"][1]["identifiable"] is True
    assert d["attempts"][0]["method"] == "exact"


def test_not_unique_dict_and_batch_dict() -> None:
    g = make_generator([140, 250, 600], seed=5)
    r = invert(g, g.forward(latent(140, 5)), method="exact")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["verdict"] == "not unique" and d["reason"] == "null-direction"
    assert len(d["evidence"]["witness"]) == 140 and d["evidence"]["step"] > 0
    assert d["steps"][0]["preimage_dim"] > 0
    res = invert(g, np.stack([g.forward(latent(140, s)) for s in (6, 7)]), method="exact", workers=1)
    bd = json.loads(json.dumps(res.to_dict()))
    assert bd["count"] == 2 and bd["verdicts"]["not unique"] == 2


def test_result_is_frozen(relu_20_100_500) -> None:
    r = invert(relu_20_100_500, relu_20_100_500.forward(latent(20, 2)))
    assert isinstance(r, InversionResult)
    with pytest.raises(AttributeError):
        r.verdict = Verdict.NOT_FOUND  # type: ignore[misc]
    with pytest.raises(ValueError):
        r.z[0] = 1.0


def test_enums_are_strings() -> None:
    assert Verdict("not unique") is Verdict.NOT_UNIQUE
    assert SolverStatus.OPTIMAL.ok and not SolverStatus.TIME_LIMIT.ok
    assert {v.value for v in Verdict} == {"unique", "not unique", "fits", "no preimage", "not found"}
    assert [v for v in Verdict if v.success] == [Verdict.UNIQUE, Verdict.NOT_UNIQUE, Verdict.FITS]


def test_model_z_has_the_model_input_shape(relu_20_100_500) -> None:
    r = invert(relu_20_100_500, relu_20_100_500.forward(latent(20, 3)))
    assert r.model_z().shape == (20,) and r.model_z().dtype == np.float64
    np.testing.assert_array_equal(r.model_z(), r.z)


def test_reconstruction_is_the_onnxruntime_output(relu_20_100_500) -> None:
    x = relu_20_100_500.forward(latent(20, 4))
    r = invert(relu_20_100_500, x)
    np.testing.assert_allclose(r.reconstruction, relu_20_100_500.run_onnx(r.z), rtol=0, atol=0)
