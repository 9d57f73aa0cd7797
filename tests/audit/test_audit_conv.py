"""``onnxinv audit`` on convolutional generators (sparse layers), run as a user runs it: in a subprocess.

Regimes: an expanding ConvTranspose + ReLU generator (every layer expands; invertible, proved layer by
layer) and a generator whose last Conv contracts 512 values onto 16 (the report names that layer,
says layer-wise inversion cannot recover its input, and claims no invertibility).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import save
from conv_builders import contracting_model, expanding_model


def run_audit(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxinv", "audit", str(path), "--samples", "2", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def expanding_path(tmp_path_factory) -> Path:
    return save(expanding_model(), tmp_path_factory.mktemp("audit_expanding"))


@pytest.fixture(scope="module")
def contracting_path(tmp_path_factory) -> Path:
    return save(contracting_model(), tmp_path_factory.mktemp("audit_contracting"))


def test_audit_of_an_expanding_conv_generator_proves_it_invertible(expanding_path):
    done = run_audit(expanding_path, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "invertible" and doc["inversion_verdicts"]["unique"] == 2
    assert [la["expansion"] for la in doc["layers"]] == [32.0, 4.0, 1.0]
    assert [la["identifiable_share"] for la in doc["layers"]] == [1.0, 1.0, 1.0]
    assert doc["layers"][1]["source_nodes"] == ["convtranspose_c2", "relu_h2"]
    assert not any(f["code"] == "contracting" for f in doc["findings"])


def test_audit_of_a_contracting_last_conv_names_the_layer_and_claims_nothing(contracting_path):
    done = run_audit(contracting_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    text = done.stdout
    assert "[warning] contracting (layer 2: conv_c3, tanh_x)" in text
    assert "layer-wise inversion cannot recover its input" in text
    assert "0.03x" in text  # 512 -> 16
    doc = json.loads(run_audit(contracting_path, "--json").stdout)
    assert doc["status"] != "invertible"
    (finding,) = [f for f in doc["findings"] if f["code"] == "contracting"]
    assert finding["layer"] == 2
    assert doc["layers"][2]["identifiable_share"] == 0.0


def test_audit_makes_no_rank_claim_where_a_sparse_rank_was_only_bounded(expanding_path, monkeypatch):
    from onnxinv.audit import audit
    from onnxinv.inversion import linear

    # as if every sparse block were too large for a dense copy or a Gram matrix
    monkeypatch.setattr(linear, "DENSE_COPY_FLOOR", 0)
    monkeypatch.setattr(linear, "SPARSE_GRAM_COLUMNS", 0)
    monkeypatch.setattr(linear, "SPARSE_GRAM_FACTOR", 0.0)
    report = audit(expanding_path, samples=2, workers=1)
    last = report.layers[2]
    assert not last.rank_known and report.layers[0].rank_known
    assert not [f for f in report.findings if f.layer == 2 and f.code in ("rank-deficient", "injective")]
    assert report.status.value != "invertible"  # nothing proved without a rank test
    assert " ? " in report.describe()
