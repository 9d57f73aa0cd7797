"""Exact recovery (Theorem 2) in the regimes the seed paper uses, checked against z* and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from inversion_helpers import latent, make_generator, onnx_residual, rel_err

from onnxinv.inversion import SolverStatus, Verdict, invert
from onnxinv.layers import Activation

# (name, sizes, generator kwargs): expansive ReLU, with biases, LeakyReLU, wider latents, invertible outputs
REGIMES = [
    ("relu-20-100-500", [20, 100, 500], {}),
    ("relu-20-100-500-bias", [20, 100, 500], {"bias_scale": 1.0}),
    ("leaky-20-100-200-500", [20, 100, 200, 500], {"activation": Activation.LEAKY_RELU, "slope": 0.2}),
    ("relu-20-250-600", [20, 250, 600], {}),
    ("relu-60-250-600", [60, 250, 600], {}),
    ("relu-100-250-600", [100, 250, 600], {}),
    ("tanh-out-20-100-500", [20, 100, 500], {"output_activation": Activation.TANH, "bias_scale": 1.0}),
    ("sigmoid-out-20-100-400", [20, 100, 400], {"output_activation": Activation.SIGMOID, "bias_scale": 1.0}),
]


@pytest.mark.parametrize("name,sizes,kwargs", REGIMES, ids=[r[0] for r in REGIMES])
def test_exact_recovery(name: str, sizes: list[int], kwargs: dict) -> None:
    g = make_generator(sizes, seed=3, **kwargs)
    z_true = latent(sizes[0], 3)
    x = g.forward(z_true)
    r = invert(g, x, method="exact")
    assert r.verdict is Verdict.UNIQUE, r.message
    assert r.z.shape == (sizes[0],)
    assert rel_err(r.z, z_true) <= 1e-6
    assert r.residual_rel_l2 <= 1e-6
    assert onnx_residual(g, r.z, x) == pytest.approx(r.residual_rel_l2, rel=1e-6, abs=1e-15)
    assert r.reproduces and r.layer is None
    assert r.evidence.kind.value == "layerwise" and r.witness is None and r.verdict.success
    assert [s.layer for s in r.steps] == list(range(len(sizes) - 1))
    for step in r.steps:
        assert step.status is SolverStatus.OPTIMAL
        assert step.identifiable and step.preimage_dim == 0
        assert step.rank == step.unknowns <= step.active_rows
        assert step.residual <= 1e-8


def test_leaky_every_row_is_an_equality() -> None:
    """eq. (5): a LeakyReLU layer uses all of its rows, negative outputs divided by the slope."""
    g = make_generator([20, 100, 200, 500], seed=4, activation=Activation.LEAKY_RELU, slope=0.1)
    x = g.forward(latent(20, 4))
    r = invert(g, x, method="exact")
    assert [s.active_rows for s in r.steps] == [100, 200, 500]


def test_masked_observation_90_percent() -> None:
    """Only the observed 90% of the outputs enter the last layer; the residual is on those entries."""
    g = make_generator([20, 100, 500], seed=5, bias_scale=1.0)
    z_true = latent(20, 5)
    x = g.forward(z_true)
    mask = np.random.default_rng(5).random(500) < 0.9
    x_seen = np.where(mask, x, np.nan)  # unobserved entries may hold anything, even NaN
    r = invert(g, x_seen, method="exact", mask=mask)
    assert r.verdict is Verdict.UNIQUE, r.message
    assert rel_err(r.z, z_true) <= 1e-6
    assert r.observed == int(mask.sum())
    assert r.steps[-1].observed_rows == int(mask.sum())
    assert r.steps[0].observed_rows == 100  # the mask restricts the last layer only


def test_auto_uses_exact_on_clean_data(relu_20_100_500) -> None:
    x = relu_20_100_500.forward(latent(20, 1))
    r = invert(relu_20_100_500, x)
    assert r.method == "exact" and r.requested == "auto"
    assert [a.method for a in r.attempts] == ["exact"]
    assert r.verdict is Verdict.UNIQUE


def test_float32_observation_from_onnxruntime() -> None:
    """A realistic observation: the float32 model's own output, not exactly realizable in float64."""
    g = make_generator([20, 100, 500], seed=6, dtype="float32")
    z_true = latent(20, 6)
    x = g.run_onnx(z_true)
    r = invert(g, x)
    assert r.verdict is Verdict.UNIQUE, r.message
    assert rel_err(r.z, z_true) <= 1e-5


def test_any_single_observation_shape() -> None:
    g = make_generator([8, 32, 64], seed=7)
    z_true = latent(8, 7)
    x = g.forward(z_true)
    for shape in [(64,), (1, 64), (1, 1, 8, 8)]:
        r = invert(g, x.reshape(shape), method="exact")
        assert rel_err(r.z, z_true) <= 1e-6


def test_per_unit_prelu_is_inverted_unit_by_unit() -> None:
    """PReLU with one slope per unit (nn.PReLU(num_parameters=n)): eq. (5) with a diagonal slope."""
    from contract import assert_contract

    from onnxinv.layers import Generator, Layer

    rng = np.random.default_rng(7)
    g = Generator.from_layers(
        [
            Layer(
                rng.normal(size=(30, 5)),
                rng.normal(size=30),
                Activation.LEAKY_RELU,
                rng.uniform(0.05, 0.3, 30),
            ),
            Layer(
                rng.normal(size=(60, 30)) / 5, np.zeros(60), Activation.LEAKY_RELU, rng.uniform(0.05, 0.3, 60)
            ),
        ],
        dtype="float64",
    )
    z = rng.normal(size=5)
    x = g.forward(z)
    for method in ("exact", "linf", "auto"):
        r = invert(g, x, method=method)
        assert r.verdict is Verdict.UNIQUE and rel_err(r.z, z) <= 1e-8, r.message
        assert_contract(g, x, r, in_range=True, known=[z])
    eps = 1e-3
    noisy = x + rng.uniform(-eps, eps, 60)
    r = invert(g, noisy, noise=eps)
    assert r.verdict is Verdict.UNIQUE and np.max(np.abs(r.z - z)) <= r.radius
