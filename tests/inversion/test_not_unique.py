"""Past the information limit: k-250-600 with k >= 140 has fewer active hidden units than latents.

"Not unique" needs a witness: a second latent, checked through onnxruntime, that reproduces x.
"""

from __future__ import annotations

import numpy as np
import pytest
from inversion_helpers import latent, make_generator, onnx_residual, rel_err

from onnxinv.inversion import EvidenceKind, Reason, Verdict, invert


@pytest.mark.parametrize("k", [140, 170])
def test_k_250_600_is_not_unique_with_a_witness(k: int) -> None:
    g = make_generator([k, 250, 600], seed=k)
    z_true = latent(k, k)
    x = g.forward(z_true)
    r = invert(g, x, method="exact")
    assert r.verdict is Verdict.NOT_UNIQUE, r.message
    assert r.reason is Reason.NULL_DIRECTION and r.evidence.kind is EvidenceKind.NULL_DIRECTION
    step0 = r.steps[0]
    assert step0.active_rows < k and step0.preimage_dim == k - step0.rank > 0
    assert r.reproduces and onnx_residual(g, r.z, x) <= 1e-6
    assert rel_err(r.z, z_true) > 1e-3  # not the answer: just one of many
    # the witness: another latent, far from z, with the same output (the oracle decides)
    w = r.witness
    assert w is not None and w.shape == (k,)
    assert np.max(np.abs(w - r.z)) >= 1e-3 * max(1.0, np.max(np.abs(r.z)))
    assert onnx_residual(g, w, x) <= 1e-5
    # z + t v along the reported direction is that witness
    np.testing.assert_allclose(r.z + r.evidence.step * r.evidence.direction, w)
    assert "Not unique" in r.message


def test_auto_also_says_not_unique() -> None:
    g = make_generator([150, 250, 600], seed=2)
    x = g.forward(latent(150, 2))
    r = invert(g, x)
    assert r.verdict is Verdict.NOT_UNIQUE
    assert r.reproduces and onnx_residual(g, r.witness, x) <= 1e-5


def test_no_witness_search_means_fits_not_not_unique() -> None:
    """Without the witness search nothing shows a second latent: the answer is "fits", never "not unique"."""
    from onnxinv.inversion import Settings

    g = make_generator([150, 250, 600], seed=2)
    x = g.forward(latent(150, 2))
    r = invert(g, x, method="exact", settings=Settings(witness_search=False))
    assert r.verdict is Verdict.FITS and r.reason is Reason.UNDECIDED
    assert r.witness is None and r.verdict.success


@pytest.mark.parametrize(("k", "net"), [(120, 1), (130, 9)])
def test_a_row_at_round_off_is_no_certificate(k: int, net: int) -> None:
    """Theorem 2 read off values known only to the tolerance. On these float32 k-250-600 nets the
    latent found has layer-0 units at 1e-7 where z* has exact zeros: their rows look active and layer
    0 looks identifiable, which once gave "unique" 0.07-0.32 away from z*. Within the tolerance those
    units cannot be told from inactive ones, so there is no certificate; turning them off gives a
    second latent (checked through onnxruntime), and the answer is "not unique"."""
    from onnxinv.building import random_generator_layers
    from onnxinv.layers import Generator

    g = Generator.from_layers(random_generator_layers([k, 250, 600], rng=net), dtype="float32")
    z_true = np.random.default_rng(10_000 + net).normal(size=k)
    x = g.run_onnx(z_true).reshape(-1)
    r = invert(g, x, method="auto", seed=net)
    assert r.verdict is Verdict.NOT_UNIQUE, r.message
    near = [e for e in r.considered if "of zero" in e.summary]
    assert near and near[0].numbers["layer"] == 0 and near[0].numbers["rows_near_zero"] >= 1
    w = r.witness
    assert w is not None and onnx_residual(g, w, x) <= 1e-5
    assert np.max(np.abs(w - r.z)) >= 1e-2 * max(1.0, float(np.max(np.abs(r.z))))


def test_one_row_short_at_layer_0_is_shown_by_its_null_direction() -> None:
    """Layer 0 of a 20-40-400 float32 net with 19 active rows at z*: its preimage of the hidden values
    is a segment, and the latent found lies at one end of it (a vertex of the layer LP). The witness
    search's two null-direction LPs must reach the other end, so no observation of this kind needs the
    whole-network MILP for its witness."""
    g = make_generator([20, 40, 400], seed=0, dtype="float32")
    layer0 = g.layers[0]
    zs = np.random.default_rng(4).normal(size=(200, 20))
    short = zs[np.sum(layer0.preactivation(zs) > 0, axis=1) == 19][:8]
    assert len(short) == 8
    for z_true in short:
        x = g.run_onnx(z_true)
        r = invert(g, x)
        assert r.verdict is Verdict.NOT_UNIQUE, r.message
        assert r.evidence.kind is EvidenceKind.NULL_DIRECTION, r.message
        assert onnx_residual(g, r.witness, x) <= 1e-5
