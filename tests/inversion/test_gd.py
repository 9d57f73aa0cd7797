"""The gradient-descent baseline: converges on an easy case, batches vectorised with the same answers
as one by one; its verdict comes from the pipeline's evidence like every method's."""

from __future__ import annotations

import numpy as np
from contract import assert_contract
from inversion_helpers import latent, make_generator, rel_err

from onnxinv.inversion import Settings, Verdict, invert


def test_gd_converges_on_easy_case() -> None:
    g = make_generator([5, 50, 200], seed=21)
    z_true = latent(5, 21)
    x = g.forward(z_true)
    r = invert(g, x, method="gd", seed=0)
    assert r.method == "gd" and not r.refined  # converged by itself, to the verdict's tolerance
    assert rel_err(r.z, z_true) <= 1e-4
    assert r.reproduces and r.residual_rel_l2 <= 1e-6
    assert r.verdict is Verdict.UNIQUE  # certified by the layer-wise analysis at GD's point
    assert "gradient descent" in r.message
    assert all(s.identifiable for s in r.steps)
    assert_contract(g, x, r, in_range=True, known=[z_true])


def test_gd_is_deterministic_and_masked() -> None:
    g = make_generator([5, 50, 200], seed=22)
    x = g.forward(latent(5, 22))
    mask = np.random.default_rng(0).random(200) < 0.9
    a = invert(g, x, method="gd", mask=mask, seed=3)
    b = invert(g, x, method="gd", mask=mask, seed=3)
    assert np.array_equal(a.z, b.z)


def test_gd_batch_is_vectorised_and_equals_one_by_one() -> None:
    g = make_generator([5, 50, 200], seed=24)
    z = np.random.default_rng(24).normal(size=(4, 5))
    x = g.forward(z)
    batch = invert(g, x, method="gd", workers=1)
    for i, r in enumerate(batch):
        one = invert(g, x[i], method="gd")
        np.testing.assert_allclose(r.z, one.z, rtol=1e-9, atol=1e-12)
        assert r.verdict is one.verdict


def test_paper_variant_plain_gradient_descent() -> None:
    g = make_generator([5, 50, 200], seed=25)
    x = g.forward(latent(5, 25))
    r = invert(g, x, method="gd", settings=Settings(gd_optimizer="gd", restarts=1, lr=1.0))
    assert "plain gradient descent" in r.message


def test_gd_never_claims_unique_when_layer0_is_not_identifiable() -> None:
    g = make_generator([150, 250, 600], seed=23)
    z_true = latent(150, 23)
    x = g.forward(z_true)
    r = invert(g, x, method="gd", settings=Settings(iterations=200, restarts=2))
    assert r.verdict is not Verdict.UNIQUE
    assert_contract(g, x, r, in_range=True, known=[z_true])
