"""The refine stage: whole-network least squares (and l_inf LP steps under bounded noise), applied by
the pipeline to an estimate that misses; never worse than the estimate, never applied to a fit."""

from __future__ import annotations

import numpy as np
from inversion_helpers import make_generator

from onnxinv.inversion import refine
from onnxinv.inversion.framework import Draft, Problem, Settings, fit_check


def _draft(problem: Problem, z: np.ndarray) -> Draft:
    return Draft(z=z, method="test", steps=()).with_fit(problem)


def test_a_fitting_estimate_is_left_alone(relu_20_100_500) -> None:
    z = np.random.default_rng(0).normal(size=20)
    problem = Problem(relu_20_100_500, relu_20_100_500.forward(z), None, None)
    draft = _draft(problem, z)
    assert refine.refine(problem, Settings(), draft, 1e300) is draft


def test_a_nearby_estimate_is_refined_to_the_latent(relu_20_100_500) -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=20)
    problem = Problem(relu_20_100_500, relu_20_100_500.forward(z), None, None)
    draft = _draft(problem, z + 1e-2 * rng.normal(size=20))
    out = refine.refine(problem, Settings(), draft, 1e300)
    assert out.refined and out.fit < draft.fit and out.fit <= 1e-10
    np.testing.assert_allclose(out.z, z, atol=1e-8)
    assert "least squares on the whole network" in out.message
    assert refine.refine(problem, Settings(refine=False), draft, 1e300) is draft


def test_bounded_noise_is_met_in_max_abs_by_lp_steps() -> None:
    """Least squares alone can end above the bound on some entry; the l_inf steps bring it below."""
    g = make_generator([20, 100, 500], seed=11)
    rng = np.random.default_rng(2)
    z = rng.normal(size=20)
    x0 = g.forward(z)
    eps = 1e-3 * float(np.max(np.abs(x0)))
    x = x0 + rng.uniform(-eps, eps, size=x0.shape)
    problem = Problem(g, x, None, eps)
    start = z + 0.05 * rng.normal(size=20)
    z_lm = refine.least_squares(problem, Settings(), start, 1e300)
    z_inf, steps = refine.linf_steps(problem, z_lm, 1e300)
    linf = lambda v: float(np.max(np.abs(g.forward(v) - x)))  # noqa: E731
    assert steps >= 1 and linf(z_inf) < linf(z_lm) and linf(z_inf) <= eps
    out = refine.refine(problem, Settings(), _draft(problem, start), 1e300)
    assert fit_check(problem, Settings(), g.forward(out.z)).reproduces


def test_masked_entries_do_not_count(relu_20_100_500) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=20)
    x = relu_20_100_500.forward(z)
    mask = rng.random(500) < 0.5
    garbage = np.where(mask, x, 1e3)
    problem = Problem(relu_20_100_500, np.where(mask, garbage, 0.0), mask, None)
    out = refine.refine(problem, Settings(), _draft(problem, z + 1e-2), 1e300)
    assert out.fit <= 1e-10
