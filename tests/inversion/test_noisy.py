"""Noisy observations: Algorithm 1 (l_inf LP), Algorithm 2 (l_1 LP) and the relaxed LP of eq. (8)."""

from __future__ import annotations

import numpy as np
import pytest
from contract import assert_contract
from inversion_helpers import make_generator, rel_err

from onnxinv.inversion import EvidenceKind, Settings, SolverStatus, Verdict, invert


def _noisy(g, seed: int, level: float = 1e-3):
    rng = np.random.default_rng(seed)
    z_true = rng.normal(size=g.latent_dim)
    x0 = g.forward(z_true)
    a = level * float(np.max(np.abs(x0)))
    return z_true, x0 + rng.uniform(-a, a, size=x0.shape), a


def test_linf_median_error_20_seeds() -> None:
    """Uniform noise of 1e-3 max|x| on 20-100-500: the paper reports a median relative error of 2.4e-3."""
    g = make_generator([20, 100, 500], seed=11)
    errors = []
    for seed in range(20):
        z_true, x, a = _noisy(g, seed)
        r = invert(g, x, method="linf", noise=a)
        assert all(s.status is SolverStatus.OPTIMAL for s in r.steps), r.message
        assert r.reproduces and r.fit.criterion == "max abs" and r.residual_linf <= r.tolerance
        assert_contract(g, x, r, in_range=True, known=[z_true])
        errors.append(rel_err(r.z, z_true))
    assert np.median(errors) <= 2.4e-3


def test_noisy_unique_carries_a_radius_that_holds_z_true() -> None:
    g = make_generator([20, 100, 500], seed=11)
    z_true, x, a = _noisy(g, 3)
    r = invert(g, x, method="linf", noise=a)
    assert r.verdict is Verdict.UNIQUE and r.evidence.kind is EvidenceKind.STABILITY
    assert np.max(np.abs(r.z - z_true)) <= r.radius
    assert r.evidence.numbers["eps"] == pytest.approx(r.tolerance)


def test_linf_epsilon_starts_per_layer_and_is_positive() -> None:
    g = make_generator([20, 100, 500], seed=12)
    z_true, x, a = _noisy(g, 0)
    r = invert(g, x, method="linf", noise=a, settings=Settings(refine=False))  # the method's own steps
    last, first = r.steps[1], r.steps[0]
    assert last.epsilon == pytest.approx(a)  # the output layer starts at the given noise level
    assert first.epsilon is not None and first.epsilon > 0
    # without a noise level, epsilon starts at a positive default and still finds the answer
    r0 = invert(g, g.forward(z_true), method="linf", settings=Settings(refine=False))
    assert all(s.epsilon > 0 for s in r0.steps)
    assert rel_err(r0.z, z_true) <= 1e-6
    # and the epsilon the output layer needed is reported as the noise estimate
    assert r0.noise_estimate == pytest.approx(r0.steps[-1].epsilon) and r0.noise_estimate > 0


@pytest.mark.parametrize("method,bound", [("l1", 5e-3), ("relaxed", 1e-2), ("auto", 2.4e-3)])
def test_other_noisy_methods(method: str, bound: float) -> None:
    g = make_generator([20, 100, 500], seed=13)
    errors = []
    for seed in range(3):
        z_true, x, a = _noisy(g, seed)
        r = invert(g, x, method=method, noise=a)
        assert r.verdict.success, r.message
        assert_contract(g, x, r, in_range=True, known=[z_true])
        errors.append(rel_err(r.z, z_true))
    assert max(errors) <= bound


def test_noisy_past_the_limit_fits_without_a_radius() -> None:
    """Noise does not make a non-identifiable layer look identifiable: z fits, but no radius exists."""
    g = make_generator([150, 250, 600], seed=14)
    z_true, x, a = _noisy(g, 0, 1e-4)
    r = invert(g, x, method="linf", noise=a)
    assert r.verdict is Verdict.FITS and r.radius is None, r.message
    assert any("no stability radius" in e.summary for e in r.considered)
    assert_contract(g, x, r, in_range=True, known=[z_true])
