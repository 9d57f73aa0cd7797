"""The MILP engine's proved box ``[min z_i, max z_i]`` (``MilpEngine.bound``) against an independent
oracle: every activation pattern of a small leaky-ReLU net enumerated, one LP per pattern and side
(scipy's HiGHS, nothing shared with the engine), in the default box and in a trust region; the row
generation LP the engine uses against the full LP; soundness by sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from onnxinv.building import random_generator_layers
from onnxinv.inversion import milp
from onnxinv.inversion.milp import _full_vector, _LazyLP, _Pieces
from onnxinv.inversion.result import SolverStatus
from onnxinv.layers import Activation, Layer

F64 = float(np.finfo(np.float64).eps)
SLOPE = 0.1


def _problem(sizes, seed: int, level: float) -> tuple[list[Layer], np.ndarray, np.ndarray, float]:
    layers = random_generator_layers(sizes, activation=Activation.LEAKY_RELU, slope=SLOPE, rng=seed)
    z_star = np.random.default_rng(500 + seed).normal(size=sizes[0])
    clean = z_star
    for layer in layers:
        clean = layer.forward(clean)
    eps = level * float(np.max(np.abs(clean)))
    noisy = clean + np.random.default_rng(seed).uniform(-eps, eps, size=clean.shape)
    return layers, z_star, noisy, eps


def _leaky_inverse(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0.0, v, v / SLOPE)


def _enumerated_box(layers, spec: milp.PreimageSpec) -> tuple[np.ndarray, np.ndarray]:
    """``[min z_i, max z_i]`` over the preimage set in the spec's box, by enumerating the hidden
    layer's activation pattern (2-layer nets only): on each pattern the net is affine and the set a
    polytope."""
    first, second = layers
    w1, b1 = first.dense_weight(), first.bias
    w2, b2 = second.dense_weight(), second.bias
    y, s = spec.observed, spec.slack
    # the output map is increasing: |leaky(a) - y| <= s  <=>  a in [inv(y - s), inv(y + s)]
    a_lo, a_hi = _leaky_inverse(y - s), _leaky_inverse(y + s)
    k = w1.shape[1]
    bounds = list(zip(spec.box_lower, spec.box_upper))
    lower, upper = np.full(k, np.inf), np.full(k, -np.inf)
    for pattern in itertools.product((False, True), repeat=w1.shape[0]):
        active = np.array(pattern)
        slope = np.where(active, 1.0, SLOPE)
        sign = np.where(active, -1.0, 1.0)  # active: -a <= 0, inactive: a <= 0
        m = (w2 * slope[None, :]) @ w1
        off = (w2 * slope[None, :]) @ b1 + b2
        a_ub = np.vstack([sign[:, None] * w1, m, -m])
        b_ub = np.concatenate([-sign * b1, a_hi - off, off - a_lo])
        feasible = linprog(np.zeros(k), A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if feasible.status != 0:
            continue
        for i in range(k):
            for direction in (1.0, -1.0):
                c = np.zeros(k)
                c[i] = direction
                res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
                assert res.status == 0
                if direction > 0:
                    lower[i] = min(lower[i], res.x[i])
                else:
                    upper[i] = max(upper[i], res.x[i])
    return lower, upper


def _sampled(
    layers, spec: milp.PreimageSpec, centre: np.ndarray, spread: np.ndarray, n: int, seed: int
) -> np.ndarray:
    """Latents near ``centre`` inside the spec's box that reproduce the observation within the band
    (a batched forward pass of the layer list)."""
    rng = np.random.default_rng(seed)
    pts = centre + spread * rng.uniform(-1.0, 1.0, size=(n, centre.size))
    pts = np.clip(pts, spec.box_lower, spec.box_upper)
    h = pts
    for layer in layers:
        a = h @ layer.dense_weight().T + layer.bias
        h = np.where(a >= 0.0, a, SLOPE * a)
    fits = np.all(np.abs(h - spec.observed) <= spec.slack, axis=1)
    return pts[fits]


@pytest.mark.parametrize("seed", [0, 1, 3])
@pytest.mark.parametrize("trust", [False, True])
def test_bound_equals_the_enumerated_box_and_is_sound(seed: int, trust: bool) -> None:
    layers, z_star, noisy, eps = _problem([3, 8, 12], seed, 2e-2)
    box = (z_star - 0.3, z_star + 0.25) if trust else None
    spec = milp.PreimageSpec.create(layers, noisy, noise=eps, precision=F64, box=box)
    engine = milp.build(spec)
    found = engine.find()
    assert found.finding is milp.Finding.FOUND
    result = engine.bound(start=found.z)
    assert result.finding is milp.Finding.BOUNDED
    assert np.all(result.lower <= z_star) and np.all(z_star <= result.upper)
    # a trust region is never reported as a claim about every latent
    assert not (trust and result.global_claim)
    truth_lo, truth_hi = _enumerated_box(layers, spec)
    width = float(np.max(truth_hi - truth_lo))
    # sound: the proved box holds the exact one; tight where a side was solved
    assert np.all(result.lower <= truth_lo + 1e-9 * (1 + np.abs(truth_lo)))
    assert np.all(truth_hi <= result.upper + 1e-9 * (1 + np.abs(truth_hi)))
    # every side solved: to the MILP's gap, or the LP bound within CLOSE_RTOL of the width of a latent
    # reached (the engine's stated precision)
    assert result.exact.all()
    np.testing.assert_allclose(result.lower, truth_lo, rtol=0.0, atol=milp.CLOSE_RTOL * width + 1e-9)
    np.testing.assert_allclose(result.upper, truth_hi, rtol=0.0, atol=milp.CLOSE_RTOL * width + 1e-9)
    # values reached are latents of the set, inside the proved bounds
    for z in (result.lower_reached, result.upper_reached):
        assert np.all(np.isfinite(z))
    assert np.all(result.lower <= result.lower_reached + 1e-12)
    assert np.all(result.upper_reached <= result.upper + 1e-12)
    # sampled latents that fit lie inside the box
    centre, half = 0.5 * (result.lower + result.upper), 0.5 * (result.upper - result.lower)
    pts = _sampled(layers, spec, centre, 1.2 * half, 50_000, seed)
    assert pts.shape[0] > 10
    assert np.all(pts >= result.lower - 1e-12) and np.all(pts <= result.upper + 1e-12)


def test_row_generation_lp_equals_the_full_lp() -> None:
    # the LP relaxation the engine tightens and bounds with, solved by row generation and whole
    layers, z_star, noisy, eps = _problem([6, 12, 20], 3, 1e-2)
    spec = milp.PreimageSpec.create(layers, noisy, noise=eps, precision=F64)
    engine = milp.build(spec, obbt=False)
    work = engine._work
    assert work is not None and not work.exact_relaxation
    session, layout = work.relaxation()
    lazy = _LazyLP.of(session.program(), _full_vector(work.stages, layout, z_star))
    rng = np.random.default_rng(3)
    objectives = [np.eye(layout.num_cols)[i] * sign for i in range(spec.latent_dim) for sign in (1, -1)]
    objectives += [rng.normal(size=layout.num_cols) for _ in range(5)]
    for c in objectives:
        session.set_objective(c)
        full = session.solve()
        part = lazy.minimize(c, 30.0)
        assert full.status is SolverStatus.OPTIMAL and part.status is SolverStatus.OPTIMAL
        assert abs(full.objective - part.objective) <= 1e-7 * (1.0 + abs(full.objective))
    # it works on a subset of the rows
    assert lazy.work.sum() < lazy.work.size


@pytest.mark.parametrize("seed", [0, 3])
def test_pattern_lps_equal_the_milp(seed: int) -> None:
    # with a few binaries, bound() solves the MILP as one LP per sign pattern: the same optima
    layers, z_star, noisy, eps = _problem([3, 8, 12], seed, 2e-2)
    spec = milp.PreimageSpec.create(layers, noisy, noise=eps, precision=F64)
    engine = milp.build(spec)
    work = engine._work
    assert work is not None and 0 < engine.binaries <= milp.ENUMERATE_BINARIES
    relax, layout = work.relaxation()
    lazy = _LazyLP.of(relax.program(), _full_vector(work.stages, layout, z_star))
    pieces = _Pieces(work, lazy, layout, _full_vector(work.stages, layout, z_star))
    session, milp_layout = engine._model()
    for i in range(spec.latent_dim):
        for sign in (1.0, -1.0):
            c = np.zeros(layout.num_cols)
            c[i] = sign
            status, value, x = pieces.minimize(c, 30.0)
            assert status is SolverStatus.OPTIMAL and x is not None
            session.set_objective({i: sign})
            res = session.solve(mip_rel_gap=1e-9, mip_abs_gap=1e-12)
            assert res.status is SolverStatus.OPTIMAL
            assert abs(value - res.objective) <= 1e-6 * (1.0 + abs(value))
            # the pattern LP's point lies on a real piece: its latent fits up to the LP's tolerances
            assert spec.misfit(x[: spec.latent_dim]) <= 1.0 + 1e-3
