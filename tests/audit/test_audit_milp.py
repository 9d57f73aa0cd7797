"""``audit`` on the whole network: MILP certificates, checked non-injective pairs, and the reason the
MILP does not apply.

Regimes: an injective expanding ReLU net (layer-wise identifiable, no MILP needed), a small net with
a contracting hidden layer that the MILP certifies (inside a stated latent box), a 3-32-32-3 net
(input size = output size: not injective, a pair found and re-checked through onnxruntime), a net
whose first layer has a zero column (not injective along that coordinate), and a net with a tanh
hidden layer (MILP not applicable). Few samples keep the tests short.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxinv.audit import AuditStatus, Severity, audit
from onnxinv.building import build_model, random_generator_layers
from onnxinv.layers import Activation, Generator


def generator(layers) -> Generator:
    return Generator.from_layers(layers, dtype="float32")


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


def assert_pair_checked(g: Generator, finding) -> None:
    """The finding's pair: two different latents whose outputs onnxruntime finds equal."""
    z, z2 = np.array(finding.data["z"]), np.array(finding.data["z_prime"])
    assert z.shape == z2.shape == (g.latent_dim,)
    assert np.max(np.abs(z - z2)) == pytest.approx(finding.data["latent_max_abs_diff"])
    assert finding.data["latent_max_abs_diff"] >= 1e-3
    out, out2 = g.run_onnx(z).reshape(-1), g.run_onnx(z2).reshape(-1)
    assert np.linalg.norm(out - out2) <= 1e-4 * np.linalg.norm(out)
    assert finding.data["output_max_abs_diff"] == pytest.approx(float(np.max(np.abs(out - out2))), abs=1e-6)


def test_injective_expanding_net_is_layerwise_identifiable() -> None:
    report = audit(generator(random_generator_layers([5, 40, 80], rng=1)), samples=4)
    assert report.status is AuditStatus.INVERTIBLE
    assert "layerwise-identifiable" in codes(report) and "milp-certified" not in codes(report)
    assert "layer-wise identifiable at each" in report.verdict
    (finding,) = report.findings_with("layerwise-identifiable")
    assert finding.severity is Severity.INFO and finding.data == {"samples": 4, "layerwise": 4}


def test_contracting_hidden_layer_is_certified_by_the_milp() -> None:
    g = generator(random_generator_layers([2, 10, 10, 20], rng=3))
    report = audit(g, samples=3)
    assert report.status is AuditStatus.INVERTIBLE
    assert report.evidence_kinds.get("milp", 0) >= 1
    (finding,) = report.findings_with("milp-certified")
    assert finding.message.startswith("Certified invertible at the 3 sampled points (MILP)")
    assert finding.data["milp"] + finding.data["layerwise"] == 3 and finding.data["milp"] >= 1
    assert "certified invertible at the sampled points" in report.verdict
    assert "layerwise-identifiable" not in codes(report)


def test_milp_claims_inside_its_search_box_only_count_with_a_stated_box() -> None:
    g = generator(random_generator_layers([2, 8, 8, 16], rng=2))
    plain = audit(g, samples=2, milp_time=60.0)  # generous: the machine may be busy
    assert plain.status is AuditStatus.UNDECIDED
    (undecided,) = plain.findings_with("milp-undecided")
    assert undecided.data["inside_box_only"] >= 1 and "--latent-box" in undecided.message
    boxed = audit(g, samples=2, latent_box=10.0, milp_time=60.0)
    assert boxed.evidence_kinds.get("milp", 0) >= undecided.data["inside_box_only"]


def test_non_injective_net_gets_a_pair_checked_through_onnxruntime() -> None:
    g = generator(random_generator_layers([3, 32, 32, 3], rng=1))
    report = audit(g, samples=2)
    assert report.status is AuditStatus.NOT_INVERTIBLE
    (finding,) = report.findings_with("not-injective")
    assert finding.severity is Severity.ERROR and finding.message.startswith("Not injective: z = ")
    assert_pair_checked(g, finding)
    z, z2 = report.witness
    assert np.allclose(z, finding.data["z"]) and np.allclose(z2, finding.data["z_prime"])


def test_zero_column_makes_the_net_not_injective() -> None:
    layers = random_generator_layers([4, 30, 60], rng=2)
    w = layers[0].weight.copy()
    w[:, 2] = 0.0  # z_2 never reaches the output
    layers[0] = dataclasses.replace(layers[0], weight=w)
    g = generator(layers)
    report = audit(g, samples=2)
    assert report.status is AuditStatus.NOT_INVERTIBLE
    (finding,) = report.findings_with("not-injective")
    assert_pair_checked(g, finding)
    z, z2 = np.array(finding.data["z"]), np.array(finding.data["z_prime"])
    assert abs(z[2] - z2[2]) >= 1e-3


def test_milp_not_applicable_says_why() -> None:
    layers = random_generator_layers([3, 20, 20, 40], rng=2)
    layers[1] = dataclasses.replace(layers[1], activation=Activation.TANH)
    report = audit(generator(layers), samples=3)
    assert report.status is not AuditStatus.INVERTIBLE
    (finding,) = report.findings_with("milp-not-applicable")
    assert finding.message.startswith("MILP not applicable: hidden layer 1 has a tanh activation")
    assert "tanh" in finding.data["reason"] and finding.data["undecided"] >= 1


def test_cli_audit_json_is_one_document_with_the_pair(tmp_path: Path) -> None:
    path = tmp_path / "square.onnx"
    onnx.save(build_model(random_generator_layers([3, 32, 32, 3], rng=1)), path)
    exe = Path(sys.executable).with_name("onnxinv")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxinv"]
    done = subprocess.run(
        [*cmd, "audit", str(path), "--samples", "2", "--milp-time", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)  # exactly one document: json.loads refuses trailing text
    assert doc["status"] == "not invertible"
    (finding,) = [f for f in doc["findings"] if f["code"] == "not-injective"]
    g = onnxinv_load(path)
    z, z2 = np.array(finding["data"]["z"]), np.array(finding["data"]["z_prime"])
    assert np.max(np.abs(z - z2)) >= 1e-3
    out, out2 = g.run_onnx(z).reshape(-1), g.run_onnx(z2).reshape(-1)
    assert np.linalg.norm(out - out2) <= 1e-4 * np.linalg.norm(out)
    assert doc["witness"]["z"] == finding["data"]["z"]


def onnxinv_load(path: Path) -> Generator:
    import onnxinv

    return onnxinv.load(path)
