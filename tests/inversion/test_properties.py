"""Honesty over random generators: "unique" only when z is z*; "not unique" always names a real dimension."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inversion_helpers import make_generator, rel_err

from onnxinv.inversion import Settings, SolverStatus, Verdict, invert
from onnxinv.layers import Activation


@st.composite
def nets(draw):
    k = draw(st.integers(2, 24))
    h = draw(st.integers(k, 4 * k))
    n = draw(st.integers(h, 4 * h))
    act = draw(st.sampled_from([Activation.RELU, Activation.RELU, Activation.LEAKY_RELU]))
    bias = draw(st.floats(0.0, 1.5))
    seed = draw(st.integers(0, 10_000))
    return [k, h, n], act, bias, seed


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.sampled_from(["exact", "auto", "linf", "relaxed"]))
def test_verdicts_are_honest(net, method: str) -> None:
    sizes, act, bias, seed = net
    g = make_generator(sizes, seed=seed, activation=act, bias_scale=bias)
    z_true = np.random.default_rng(seed).normal(size=sizes[0])
    x = g.forward(z_true)
    r = invert(g, x, method=method)
    assert r.verdict is not Verdict.NOT_FOUND, r.message  # x is in the range
    if r.verdict is Verdict.UNIQUE:
        assert rel_err(r.z, z_true) <= 1e-4, r.message
        assert all(s.identifiable for s in r.steps) and r.reproduces
    else:
        assert r.preimage_dim > 0 and 0 <= r.layer < len(sizes) - 1
        assert r.steps[r.layer].preimage_dim == r.preimage_dim
        assert r.preimage_dim <= r.steps[r.layer].unknowns - r.steps[r.layer].rank
        # a miss is only excused by a free choice in a hidden layer (layer 0's choice cannot miss)
        assert r.reproduces or r.layer >= 1


def test_time_limit_is_reported_not_taken_as_success() -> None:
    g = make_generator([20, 100, 500], seed=51)
    x = g.forward(np.random.default_rng(51).normal(size=20))
    r = invert(g, x + 1e-3, method="linf", noise=1e-3, settings=Settings(time_limit=1e-9))
    assert all(s.status is SolverStatus.TIME_LIMIT for s in r.steps)
    assert r.verdict is not Verdict.UNIQUE
    assert "time limit" in r.message
