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
