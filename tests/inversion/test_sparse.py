"""A last hidden layer wider than its active outputs: not identifiable by rank, recovered by basis pursuit.

4-20-100-60: the second hidden layer (100 units, biased to ~20-30 active) feeds 60 outputs that are all
active, so the last layer has 60 equations for 100 unknowns, but its input is a sparse ReLU code.
"""

from __future__ import annotations

import pytest
from inversion_helpers import latent, make_generator, onnx_residual, rel_err

from onnxinv.inversion import Verdict, invert

SIZES = [4, 20, 100, 60]
SHIFT = [0.1, -0.15, 1.0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_not_unique_sparse_recovers(seed: int) -> None:
    g = make_generator(SIZES, seed=seed, bias_shift=SHIFT)
    z_true = latent(4, 100 + seed - 1000)
    hidden = g.hidden_values(z_true)
    x = hidden[-1]
    assert (hidden[2] > 0).sum() < 60 < 100  # sparse code, fewer active outputs than inputs

    ex = invert(g, x, method="exact")
    assert ex.verdict is Verdict.NOT_UNIQUE, ex.message
    assert ex.layer == 2 and ex.preimage_dim > 0
    assert ex.steps[2].active_rows == 60 < ex.steps[2].unknowns

    sp = invert(g, x, method="sparse")
    assert rel_err(sp.z, z_true) <= 1e-6
    assert sp.reproduces and onnx_residual(g, sp.z, x) <= 1e-6
    # honest: the preimage of layer 2 is still a polytope; what is certified is the unique l1 minimiser
    assert sp.verdict is Verdict.NOT_UNIQUE and sp.layer == 2
    assert "unique minimum-l1" in sp.steps[2].certificate

    auto = invert(g, x)
    assert auto.method == "sparse" and [a.method for a in auto.attempts] == ["exact", "sparse"]
    assert rel_err(auto.z, z_true) <= 1e-6


def test_sparse_equals_exact_when_identifiable(relu_20_100_500) -> None:
    z_true = latent(20, 9)
    x = relu_20_100_500.forward(z_true)
    r = invert(relu_20_100_500, x, method="sparse")
    assert r.verdict is Verdict.UNIQUE and rel_err(r.z, z_true) <= 1e-6
