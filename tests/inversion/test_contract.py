"""The verdict contract over random dense nets built the way users make them: non-expanding hidden
layers, equal input and output sizes, contracting classifiers, every activation.

For every result (tests/contract.py): exit-0 verdicts have an onnxruntime residual within tolerance;
every "not unique" carries a witness that reproduces x; no "unique" where the test can construct a
second preimage; no "no preimage" for an x made from a latent; a noisy "unique" holds z* in its radius.
"""

from __future__ import annotations

import numpy as np
from contract import assert_contract
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxinv.building import random_generator_layers
from onnxinv.inversion import Settings, SolverStatus, Verdict, invert
from onnxinv.layers import Activation, Generator, Layer

HIDDEN = [Activation.RELU, Activation.RELU, Activation.LEAKY_RELU, Activation.TANH, Activation.IDENTITY]
OUTPUT = [Activation.RELU, Activation.IDENTITY, Activation.LEAKY_RELU, Activation.SIGMOID, Activation.TANH]


@st.composite
def nets(draw):
    k = draw(st.integers(2, 10))
    depth = draw(st.integers(1, 3))
    sizes = [k]
    for i in range(depth):
        last = i == depth - 1
        # hidden layers may contract; the output may be smaller than, equal to or larger than k
        low = 1 if last else max(1, k // 2)
        sizes.append(draw(st.sampled_from([k, draw(st.integers(low, 5 * k))])))
    acts = [draw(st.sampled_from(HIDDEN)) for _ in range(depth - 1)] + [draw(st.sampled_from(OUTPUT))]
    bias = draw(st.sampled_from([0.0, 0.5, 1.5]))
    seed = draw(st.integers(0, 10_000))
    return sizes, acts, bias, seed


def build(sizes: list[int], acts: list[Activation], bias: float, seed: int) -> Generator:
    base = random_generator_layers(sizes, rng=seed, bias_scale=bias)
    layers = [
        Layer(lay.weight, lay.bias, act, 0.2 if act is Activation.LEAKY_RELU else 0.0, lay.source_nodes)
        for lay, act in zip(base, acts)
    ]
    return Generator.from_layers(layers, dtype="float64")


def second_preimage(g: Generator, z: np.ndarray) -> np.ndarray | None:
    """A latent with the same output as ``z`` that the test can build by hand: a step along the null
    space of layer 0 when its activation is injective and its weight has a null space."""
    layer = g.layers[0]
    if layer.activation is Activation.RELU or layer.out_features >= layer.in_features:
        return None
    _, _, vt = np.linalg.svd(layer.dense_weight())
    v = vt[-1]
    return z + v / np.max(np.abs(v))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.sampled_from(["exact", "auto", "linf", "sparse", "gd"]))
def test_clean_verdicts_keep_the_contract(net, method: str) -> None:
    sizes, acts, bias, seed = net
    g = build(sizes, acts, bias, seed)
    z_true = np.random.default_rng(seed).normal(size=sizes[0])
    x = g.forward(z_true)
    known = [z_true]
    other = second_preimage(g, z_true)
    if other is not None:
        np.testing.assert_allclose(g.forward(other), x, rtol=1e-9, atol=1e-9)
        known.append(other)
    r = invert(g, x, method=method, time_limit=20)
    assert_contract(g, x, r, in_range=True, known=known)
    if other is not None:
        assert r.verdict is not Verdict.UNIQUE


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.sampled_from(["auto", "linf"]))
def test_noisy_verdicts_keep_the_contract(net, method: str) -> None:
    sizes, acts, bias, seed = net
    g = build(sizes, acts, bias, seed)
    rng = np.random.default_rng(seed)
    z_true = rng.normal(size=sizes[0])
    clean = g.forward(z_true)
    eps = 1e-3 * max(float(np.max(np.abs(clean))), 1e-3)
    x = clean + rng.uniform(-eps, eps, size=clean.shape)
    r = invert(g, x, method=method, noise=eps, time_limit=20)
    # z_true fits within the noise, so a radius must hold it
    assert_contract(g, x, r, in_range=True, known=[z_true])


def test_time_limit_is_reported_not_taken_as_success() -> None:
    rng = np.random.default_rng(51)
    g = build([20, 100, 500], [Activation.RELU, Activation.RELU], 0.0, 51)
    x = g.forward(rng.normal(size=20)) + rng.uniform(-1e-3, 1e-3, 500)
    r = invert(g, x, method="linf", noise=1e-3, settings=Settings(time_limit=1e-9))
    assert all(s.status is SolverStatus.TIME_LIMIT for s in r.steps)
    assert all("time limit" in s.message for s in r.steps)
    assert_contract(g, x, r, in_range=True)
