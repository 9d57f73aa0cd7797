"""Identifiability against hand-built polytopes: preimage dimension, analysis at a point, stability
radius and null directions, where the answer is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

from onnxinv.inversion import identifiability as ident
from onnxinv.inversion.framework import LayerContext, Problem, Settings
from onnxinv.inversion.targets import build_targets
from onnxinv.layers import Activation, Generator, Layer

NONNEG = (np.zeros(2), np.full(2, np.inf))  # the input of a layer fed by a ReLU


def _dim(weight, y, u, bounds=NONNEG, act=Activation.RELU):
    layer = Layer(np.array(weight, float), np.zeros(len(y)), act)
    targets = build_targets(layer, np.array(y, float), None, 1e-12, noisy=False)
    return ident.preimage_dimension(layer, targets, bounds, np.array(u, float), tight_tol=1e-9)


@pytest.mark.parametrize(
    "weight,y,u,dim",
    [
        # three active rows of rank 2: a single point
        ([[1, 0], [0, 1], [1, 1]], [1, 2, 3], [1, 2], 0),
        # one active row: the segment u1 + u2 = 2, u >= 0
        ([[1, 1]], [2], [1, 1], 1),
        # an inactive row that cuts nothing (u1 >= 0 already): still the segment
        ([[1, 1], [-1, 0]], [2, 0], [1, 1], 1),
        # an inactive row u1 <= 0 with u1 >= 0: an implicit equality pins the point (0, 1)
        ([[1, 1], [1, 0]], [1, 0], [0, 1], 0),
        # an inactive row u1 <= u2 keeps half of the segment: dimension 1
        ([[1, 1], [1, -1]], [1, 0], [0.25, 0.75], 1),
        # nothing active: the whole cone {u >= 0, u1 + u2 <= 0} = {0}
        ([[1, 1]], [0], [0, 0], 0),
    ],
)
def test_preimage_dimension_of_hand_built_polytopes(weight, y, u, dim) -> None:
    assert _dim(weight, y, u).dim == dim


def test_rank_deficient_identity_layer_has_a_line_of_preimages() -> None:
    d = _dim([[1, 1], [2, 2]], [1, 2], [0.5, 0.5], bounds=None, act=Activation.IDENTITY)
    assert d.dim == 1 and d.rank == 1


def _ctx(layer: Layer, y: np.ndarray, bounds=None) -> LayerContext:
    return LayerContext(0, layer, y, None, bounds, 0.0, None, 1e300, Settings(), 2.2e-16)


def test_analysis_at_a_point_uses_the_active_rows() -> None:
    layer = Layer(np.array([[1.0, 0], [0, 1], [1, 1], [-1, -1]]), np.zeros(4), Activation.RELU)
    u = np.array([1.0, 2.0])
    out = ident.analyse_at(_ctx(layer, layer.forward(u)), u, last=False)
    assert out.active_rows == 3 and out.rank == 2 and out.preimage_dim == 0
    u0 = np.array([1.0, 0.0])  # only rows 0 and 2 active, both parallel to e1 + ...: rank 2 still
    out = ident.analyse_at(_ctx(layer, layer.forward(u0)), u0, last=False)
    assert out.active_rows == 2 and out.rank == 2


def test_stability_radius_of_a_linear_map_is_exact() -> None:
    """G(z) = diag(2, 0.5) z: every z' with |G(z') - x| <= eps has |z' - z| <= 2 eps / 0.5 when z fits."""
    g = Generator.from_layers([Layer(np.diag([2.0, 0.5]), np.zeros(2))], dtype="float64")
    z = np.array([0.3, -0.7])
    x = g.forward(z)
    eps = 1e-3
    radius, why = ident.stability_radius(g, z, x, None, eps)
    assert why == "" and radius is not None
    assert radius.radius == pytest.approx(2 * eps / 0.5)
    np.testing.assert_allclose(radius.bounds, [2 * eps / 2.0, 2 * eps / 0.5])


def test_stability_radius_holds_every_fitting_latent_of_a_relu_net() -> None:
    rng = np.random.default_rng(0)
    layers = [
        Layer(rng.normal(size=(30, 3)), rng.normal(size=30) * 0.1, Activation.RELU),
        Layer(rng.normal(size=(80, 30)) / 5, np.zeros(80), Activation.RELU),
    ]
    g = Generator.from_layers(layers, dtype="float64")
    z = rng.normal(size=3)
    x = g.forward(z)
    eps = 1e-3
    radius, why = ident.stability_radius(g, z, x, None, eps)
    assert radius is not None, why
    # sample latents around z; every one that fits within eps must lie inside the radius
    others = z + rng.uniform(-3e-3, 3e-3, size=(20000, 3))
    fitting = others[np.max(np.abs(g.forward(others) - x), axis=1) <= eps]
    assert len(fitting) > 10
    assert np.max(np.abs(fitting - z)) <= radius.radius


def test_no_radius_when_the_certain_rows_lose_rank() -> None:
    g = Generator.from_layers([Layer(np.array([[1.0, 1.0], [2.0, 2.0]]), np.zeros(2))], dtype="float64")
    radius, why = ident.stability_radius(g, np.zeros(2), np.zeros(2), None, 1e-3)
    assert radius is None and "rank" in why


def test_null_direction_keeps_layer_0_output() -> None:
    rng = np.random.default_rng(1)
    layer = Layer(rng.normal(size=(4, 6)), rng.normal(size=4), Activation.RELU)  # 6 latents, 4 rows
    z = rng.normal(size=6)
    nd = ident.null_direction(layer, z, reach=1.0, objective=rng.normal(size=6), tau=1e-12)
    assert nd is not None and nd.step > 0 and np.max(np.abs(nd.direction)) == pytest.approx(1.0)
    np.testing.assert_allclose(layer.forward(z + nd.step * nd.direction), layer.forward(z), atol=1e-9)
    full = Layer(rng.normal(size=(10, 3)), np.zeros(10), Activation.LEAKY_RELU, 0.1)
    assert (
        ident.null_direction(full, rng.normal(size=3), reach=1.0, objective=rng.normal(size=3), tau=1e-12)
        is None
    )


def test_null_direction_at_the_end_of_a_segment_moves_one_way_only() -> None:
    """Two latents, one active row: the preimage is the line z + s (1, -1), cut by the inactive row
    ``z_0 <= 0``, which is tight at z (a vertex, as a layer LP returns it). Towards that row the LP
    moves nowhere (step 0: there is a null space, so not None); the opposite objective reaches out."""
    layer = Layer(np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([0.0, 0.0]), Activation.RELU)
    z = np.array([0.0, 2.0])  # row 0 active (2), row 1 at exactly zero
    towards = ident.null_direction(layer, z, reach=5.0, objective=np.array([-1.0, 1.0]), tau=1e-9)
    assert towards is not None and towards.step == 0.0 and towards.failure is None
    away = ident.null_direction(layer, z, reach=5.0, objective=np.array([1.0, -1.0]), tau=1e-9)
    assert away is not None and away.step == pytest.approx(5.0)
    np.testing.assert_allclose(away.direction, [-1.0, 1.0])
    np.testing.assert_allclose(layer.forward(z + away.step * away.direction), layer.forward(z), atol=1e-12)


def test_problem_fit_rule_per_noise_model() -> None:
    g = Generator.from_layers([Layer(np.eye(2), np.zeros(2))], dtype="float64")
    x = np.array([1.0, 2.0])
    from onnxinv.inversion.framework import fit_check

    bounded = Problem(g, x, None, 0.1)
    assert fit_check(bounded, Settings(), x + 0.099).reproduces
    assert not fit_check(bounded, Settings(), x + np.array([0.0, 0.2])).reproduces
    gauss = Problem(g, x, None, 0.1, noise_model="gaussian")
    assert fit_check(gauss, Settings(), x + np.array([0.0, 0.2])).reproduces  # RMS 0.14 <= 2 sigma
    clean = Problem(g, x, None, None)
    assert fit_check(clean, Settings(), x * (1 + 1e-7)).reproduces
    assert not fit_check(clean, Settings(), x * (1 + 1e-3)).reproduces


@pytest.mark.parametrize("case", ["tall", "small", "square", "wide", "rank deficient", "ill conditioned"])
def test_pseudo_inverse_shortcut_matches_the_svd(case: str) -> None:
    """The Cholesky route of the stability radius gives scipy's SVD pseudo-inverse and rank."""
    rng = np.random.default_rng(4)
    shape = {"tall": (250, 100), "small": (50, 20), "square": (40, 40), "wide": (20, 30)}.get(case, (60, 20))
    a = rng.standard_normal(shape) / np.sqrt(shape[0])
    if case == "rank deficient":
        a[:, 5] = a[:, 4]
    if case == "ill conditioned":
        a[:, 5] = a[:, 4] + 1e-9 * a[:, 6]
    ours, rank = ident._pseudo_inverse(a)
    ref, ref_rank = sla.pinv(a, return_rank=True)
    assert rank == ref_rank
    assert np.allclose(ours, ref, rtol=1e-10, atol=1e-10 * float(np.max(np.abs(ref))))
