"""Observations outside the generator's range: verdict "not found", with the best residual."""

from __future__ import annotations

import numpy as np
import pytest
from inversion_helpers import latent, make_generator

from onnxinv.inversion import SolverStatus, Verdict, invert


@pytest.mark.parametrize("method", ["exact", "auto", "linf"])
def test_outside_range_is_not_found(method: str) -> None:
    g = make_generator([20, 100, 500], seed=31)
    x = g.forward(latent(20, 31))
    x = x + np.abs(np.random.default_rng(0).normal(size=x.shape))  # every output active, inconsistent
    r = invert(g, x, method=method)
    assert r.verdict is Verdict.NOT_FOUND, r.message
    assert not r.reproduces
    assert r.best_residual == r.residual_rel_l2 > r.tolerance
    assert r.residual_linf > 0
    assert r.message.startswith("Not found")
    assert f"{r.residual_rel_l2:.3g}" in r.message


def test_failed_layer_is_reported_with_its_status() -> None:
    """The only candidate for the hidden layer has negative entries: the eq. (4) LP is infeasible."""
    g = make_generator([20, 100, 500], seed=32)
    x = g.forward(latent(20, 32)) + 0.5
    r = invert(g, x, method="exact")
    assert r.verdict is Verdict.NOT_FOUND
    failed = [s for s in r.steps if not s.status.ok]
    assert [s.layer for s in failed] == [1]
    assert failed[0].status is SolverStatus.INFEASIBLE
    assert "layer 1 ended 'infeasible'" in r.message
    assert r.z.shape == (20,) and np.all(np.isfinite(r.z))  # a best-effort latent is still returned
