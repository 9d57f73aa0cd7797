"""Past the information limit: k-250-600 with k >= 140 has fewer active hidden units than latents."""

from __future__ import annotations

import pytest
from inversion_helpers import latent, make_generator, onnx_residual, rel_err

from onnxinv.inversion import Verdict, invert


@pytest.mark.parametrize("k", [140, 170])
def test_k_250_600_is_not_unique_at_layer0(k: int) -> None:
    g = make_generator([k, 250, 600], seed=k)
    z_true = latent(k, k)
    x = g.forward(z_true)
    r = invert(g, x, method="exact")
    assert r.verdict is Verdict.NOT_UNIQUE, r.message
    assert r.layer == 0  # the layer fed by z
    step0 = r.steps[0]
    assert step0.active_rows < k
    assert r.preimage_dim == step0.preimage_dim == k - step0.rank > 0
    assert not step0.identifiable and r.steps[1].identifiable
    # a point of the preimage is still returned, and it reproduces x through onnxruntime
    assert r.reproduces
    assert r.residual_rel_l2 <= 1e-6
    assert onnx_residual(g, r.z, x) <= 1e-6
    assert rel_err(r.z, z_true) > 1e-3  # not the answer: just one of many
    assert "Not unique" in r.message and "layer 0" in r.message.lower()


def test_auto_also_says_not_unique() -> None:
    g = make_generator([150, 250, 600], seed=2)
    x = g.forward(latent(150, 2))
    r = invert(g, x)
    assert r.verdict is Verdict.NOT_UNIQUE and r.layer == 0
    assert r.reproduces
