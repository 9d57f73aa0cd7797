"""``onnxinv.audit.audit`` and ``onnxinv audit``: which models are invertible, and which layer is to blame.

Regimes: an expansive ReLU net (invertible), a contracting classifier-like net (never identifiable,
layer 0 blamed), k-250-600 with k = 140 (the hidden layer is too narrow for the latent: layer 0
blamed), a graph with two unsupported ops (both listed). Few samples keep the tests fast.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import init, model, node, save
from click.testing import CliRunner

import onnxinv
from onnxinv.audit import AuditStatus, Severity, audit
from onnxinv.building import build_model, random_generator_layers
from onnxinv.cli import main
from onnxinv.layers import Activation, Generator, Layer

_RUNNER_ARGS = (
    {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
)


def run(*args):
    return CliRunner(**_RUNNER_ARGS).invoke(main, [str(a) for a in args])


def saved(folder: Path, name: str, sizes, **kwargs) -> Path:
    path = Path(folder) / name
    onnx.save(build_model(random_generator_layers(sizes, **kwargs)), path)
    return path


@pytest.fixture
def expansive(tmp_path) -> Path:
    return saved(tmp_path, "expansive.onnx", [10, 100, 400], rng=0)


@pytest.fixture
def contracting(tmp_path) -> Path:
    return saved(tmp_path, "classifier.onnx", [50, 30, 10], rng=1)


def test_expansive_relu_net_is_invertible(expansive):
    report = audit(expansive, samples=4, seed=0)
    assert report.status is AuditStatus.INVERTIBLE and report.invertible
    assert report.failing_layer is None
    assert report.inversion_verdicts == {
        "unique": 4,
        "not unique": 0,
        "fits": 0,
        "no preimage": 0,
        "not found": 0,
    }
    assert report.evidence_kinds == {"layerwise": 4} and report.witness is None
    assert report.unique_share == 1.0
    assert [(la.in_features, la.out_features, la.rank) for la in report.layers] == [
        (10, 100, 10),
        (100, 400, 100),
    ]
    assert all(la.identifiable_share == 1.0 for la in report.layers)
    assert all(la.active_min >= la.in_features for la in report.layers)
    assert [f.layer for f in report.findings_with("identifiable")] == [0, 1]
    assert not [f for f in report.findings if f.severity is Severity.ERROR]
    assert report.verdict.startswith("invertible at all 4 sampled points")


def test_contracting_classifier_is_not_invertible_and_layer_0_is_blamed(contracting):
    report = audit(contracting, samples=3, seed=0)
    assert report.status is AuditStatus.NOT_INVERTIBLE and not report.invertible
    # "not invertible" only with a concrete pair: two latents, same output through onnxruntime
    assert report.witness is not None
    generator = onnxinv.load(contracting)
    z, z2 = report.witness
    assert np.max(np.abs(z - z2)) > 1e-3
    out, out2 = generator.run_onnx(np.stack([z, z2]))
    assert np.linalg.norm(out - out2) <= 1e-4 * max(np.linalg.norm(out), 1e-12)
    assert report.failing_layer == 0
    assert report.unique_share == 0.0
    assert [f.layer for f in report.findings_with("relu-contracting")] == [0, 1]
    first = report.findings_with("relu-contracting")[0]
    assert first.severity is Severity.ERROR and first.source_nodes == ("dense0", "act0")
    assert report.layers[0].identifiable_share == 0.0
    assert "layer 0" in report.verdict and "fewer outputs than inputs" in report.verdict


def test_k140_250_600_is_flagged_at_its_first_layer(tmp_path):
    path = saved(tmp_path, "k140.onnx", [140, 250, 600], rng=2)
    report = audit(path, samples=2, seed=0)
    assert not report.invertible and report.status is AuditStatus.NOT_INVERTIBLE
    assert report.inversion_verdicts["not unique"] == 2
    assert report.failing_layer == 0
    hidden = report.layers[0]
    assert hidden.identifiable_share == 0.0
    assert hidden.active_median < 140  # about half of the 250 hidden units are active
    assert report.layers[1].identifiable_share == 1.0  # ~300 of 600 active rows for 250 unknowns
    not_identifiable = report.findings_with("not-identifiable")
    assert [f.layer for f in not_identifiable] == [0]
    assert "layer 0" in report.verdict


def test_two_unsupported_ops_are_both_listed(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], name="dense1", transB=1),
        node("Softplus", ["a1"], ["h1"], name="soft"),
        node("Gemm", ["h1", "W2", "b2"], ["a2"], name="dense2", transB=1),
        node("Elu", ["a2"], ["x"], name="elu"),
    ]
    inits = [init("W1", rng.normal(size=(8, 4))), init("b1", np.zeros(8))]
    inits += [init("W2", rng.normal(size=(12, 8))), init("b2", np.zeros(12))]
    path = save(model(nodes, inits, output_shape=("N", 12)), tmp_path, "two_ops.onnx")
    report = audit(path, samples=3)
    assert report.status is AuditStatus.UNSUPPORTED and not report.invertible
    problems = report.findings_with("unsupported-node")
    assert len(problems) == 2
    nodes_named = " ".join(p.source_nodes[0] for p in problems)
    assert "soft (Softplus" in nodes_named and "elu (Elu" in nodes_named
    assert all(p.severity is Severity.ERROR and p.message for p in problems)
    assert report.verdict.startswith("not invertible: unsupported graph (2 nodes")

    result = run("audit", path)
    assert result.exit_code == 3
    assert "soft (Softplus" in result.stdout and "elu (Elu" in result.stdout
    doc = json.loads(run("audit", path, "--json").stdout)
    assert doc["status"] == "unsupported graph" and len(doc["findings"]) == 2


def test_facts_that_hold_everywhere():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(8, 3)) @ rng.normal(size=(3, 5))  # identity layer 5 -> 8 of rank 3
    generator = Generator.from_layers(
        [
            Layer(rng.normal(size=(12, 6)), np.zeros(12), Activation.LEAKY_RELU, 0.2, ("leaky",)),
            Layer(rng.normal(size=(5, 12)), np.zeros(5), Activation.RELU, 0.0, ("contract",)),
            Layer(low_rank, np.zeros(8), Activation.IDENTITY, 0.0, ("lowrank",)),
        ]
    )
    report = audit(generator, samples=2)
    assert [f.layer for f in report.findings_with("injective")] == [0]
    assert [f.layer for f in report.findings_with("relu-contracting")] == [1]
    (deficient,) = report.findings_with("rank-deficient")
    assert deficient.layer == 2 and "rank(W) = 3 < 5" in deficient.message
    assert report.layers[0].identifiable_share == 1.0 and report.layers[2].identifiable_share == 0.0
    assert report.failing_layer == 1
    assert report.model is None


def test_undecided_without_a_witness_or_a_proof():
    """A hidden layer that contracts: samples may be reproduced without a proof either way; the audit
    then says "undecided", never "not invertible" without a pair or "invertible" without proofs."""
    rng = np.random.default_rng(3)
    layers = [
        Layer(rng.normal(size=(20, 4)), rng.normal(size=20) * 0.3, Activation.RELU, 0.0, ("d0",)),
        Layer(rng.normal(size=(100, 20)) / 5, np.full(100, -0.15), Activation.RELU, 0.0, ("d1",)),
        Layer(rng.normal(size=(60, 100)) / 8, np.full(60, 1.0), Activation.RELU, 0.0, ("d2",)),
    ]
    report = audit(Generator.from_layers(layers, dtype="float64"), samples=3)
    assert report.status is AuditStatus.UNDECIDED and not report.invertible
    assert report.inversion_verdicts["fits"] == 3 and report.witness is None
    assert report.verdict.startswith("undecided") and "layer 2" in report.verdict
    assert [f.code for f in report.findings if f.code.startswith("inversion-")] == ["inversion-fits"]
    assert run("audit", "--help").exit_code == 0


def test_audit_at_real_observations(tmp_path, expansive):
    generator = onnxinv.load(expansive)
    x = generator.run_onnx(np.random.default_rng(5).standard_normal((3, 10))).astype(np.float32)
    np.save(tmp_path / "obs.npy", x)
    report = audit(generator, observations=tmp_path / "obs.npy")
    assert report.samples == 3 and "obs.npy" in report.source and report.seed is None
    assert report.invertible
    result = run("audit", expansive, "--obs", tmp_path / "obs.npy", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["samples"] == 3


def test_cli_audit_text_json_and_exit_codes(expansive, contracting):
    ok = run("audit", expansive, "--samples", "3", "--seed", "1")
    assert ok.exit_code == 0, ok.stdout
    assert "verdict: invertible at all 3 sampled points" in ok.stdout
    assert "seed 1" in ok.stdout and "identifiable" in ok.stdout

    bad = run("audit", contracting, "--samples", "2")
    assert bad.exit_code == 3
    assert "[error] relu-contracting (layer 0: dense0, act0)" in bad.stdout

    doc = json.loads(run("audit", contracting, "--samples", "2", "--json").stdout)
    assert doc["status"] == "not invertible" and doc["invertible"] is False
    assert doc["failing_layer"] == 0 and doc["samples"] == 2
    assert {"code", "severity", "layer", "source_nodes", "message"} <= set(doc["findings"][0])
    assert doc["layers"][0]["source_nodes"] == ["dense0", "act0"]

    assert run("audit", contracting, "--samples", "0").exit_code == 2


def test_report_round_trips_to_json(expansive):
    report = audit(expansive, samples=2)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["inversion_verdicts"]["unique"] == 2
    assert doc["layers"][1]["expansion"] == 4.0
    assert "findings" in report.describe()


@pytest.mark.parametrize("samples", [1, 3])  # one observation and a batch go through different calls
def test_time_limit_reaches_every_inversion(expansive, monkeypatch, samples):
    from onnxinv.inversion import Settings, api

    real = api.solve_chunk
    seen = []

    def recording(generator, values, masks, noises, sources, method, settings, *args, **kwargs):
        seen.extend([settings.time_limit] * values.shape[0])  # one limit per inverted observation
        return real(generator, values, masks, noises, sources, method, settings, *args, **kwargs)

    monkeypatch.setattr(api, "solve_chunk", recording)
    report = audit(expansive, samples=samples, seed=0, time_limit=25)
    assert seen == [25.0] * samples
    assert report.status is AuditStatus.INVERTIBLE and report.samples == samples
    seen.clear()
    audit(expansive, samples=samples, seed=0)
    assert seen == [Settings().time_limit] * samples  # no time_limit given: invert's own default applies


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "10", True, [5]])
def test_bad_time_limit_is_refused_before_the_model_is_read(tmp_path, bad):
    with pytest.raises(onnxinv.InvalidArgumentError, match="time_limit must be a positive") as info:
        audit(tmp_path / "missing.onnx", samples=2, time_limit=bad)
    assert isinstance(info.value, onnxinv.OnnxInvError)
    assert "seconds per observation" in str(info.value)
