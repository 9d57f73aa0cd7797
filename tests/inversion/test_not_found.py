"""Observations no latent explains: "no preimage" with a proof, else "not found"; never exit-0 verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from contract import assert_contract
from inversion_helpers import latent, make_generator, onnx_residual

from onnxinv.inversion import EvidenceKind, Reason, Settings, Verdict, invert
from onnxinv.layers import Activation


@pytest.mark.parametrize("method", ["exact", "auto", "linf"])
def test_inconsistent_last_layer_is_no_preimage(method: str) -> None:
    """Every output active but off the range of the last layer: its l_inf LP proves no input fits."""
    g = make_generator([20, 100, 500], seed=31)
    x = g.forward(latent(20, 31))
    x = x + np.abs(np.random.default_rng(0).normal(size=x.shape))
    r = invert(g, x, method=method)
    assert r.verdict is Verdict.NO_PREIMAGE, r.message
    assert r.reason is Reason.INFEASIBLE_LAYER and r.evidence.kind is EvidenceKind.LAYER_LP
    assert r.evidence.layer == 1 and r.evidence.numbers["t_star"] > r.evidence.numbers["bound"]
    assert not r.reproduces and not r.verdict.success
    assert r.best_residual == r.residual_rel_l2 > r.tolerance
    assert onnx_residual(g, r.z, x) == pytest.approx(r.residual_rel_l2, rel=1e-6)
    assert r.message.startswith("No preimage")


def test_negative_relu_output_is_no_preimage() -> None:
    g = make_generator([20, 100, 500], seed=33)
    x = g.forward(latent(20, 33))
    x[:3] = -0.5
    r = invert(g, x, method="exact")
    assert r.verdict is Verdict.NO_PREIMAGE and r.evidence.numbers["entries"] == 3


def test_sigmoid_output_above_one_is_no_preimage() -> None:
    g = make_generator([10, 40, 64], seed=34, output_activation=Activation.SIGMOID)
    x = g.forward(latent(10, 34))
    x[5] = 1.2
    r = invert(g, x)
    assert r.verdict is Verdict.NO_PREIMAGE


def test_unreachable_hidden_value_is_refuted_by_the_whole_network_program() -> None:
    """x = relu(W_1 u) for a hidden u no latent produces: the last layer alone fits it exactly, so the
    layer-wise refutation proves nothing; the whole-network program proves that no latent does."""
    g = make_generator([20, 100, 500], seed=35)
    u = np.abs(np.random.default_rng(35).normal(size=100))
    x = g.layers[1].forward(u)
    r = invert(g, x, method="exact")
    assert r.verdict is Verdict.NO_PREIMAGE and r.reason is Reason.INFEASIBLE_MILP, r.message
    assert r.evidence.kind is EvidenceKind.MILP_INFEASIBLE and "every latent" in r.evidence.summary
    assert_contract(g, x, r)


def test_unreachable_hidden_value_is_not_found_without_proof() -> None:
    """The same observation without the whole-network program: nothing proves it, nothing fits: "not
    found", with the best z."""
    g = make_generator([20, 100, 500], seed=35)
    u = np.abs(np.random.default_rng(35).normal(size=100))
    x = g.layers[1].forward(u)
    r = invert(g, x, method="exact", settings=Settings(milp=False))
    assert r.verdict is Verdict.NOT_FOUND, r.message
    assert r.reason is Reason.NO_FIT and not r.verdict.success
    assert r.z.shape == (20,) and np.all(np.isfinite(r.z))  # a best-effort latent is still returned
    assert any(
        e.kind is EvidenceKind.NONE and "does not rule a preimage out" in e.summary for e in r.considered
    )
    assert r.message.startswith("Not found")
