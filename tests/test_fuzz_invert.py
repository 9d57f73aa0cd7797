"""Mutated observation arrays and masks: ``invert`` either succeeds or raises onnxinv's own error."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxinv.building import random_generator_layers
from onnxinv.errors import OnnxInvError
from onnxinv.inversion import invert
from onnxinv.layers import Generator

GENERATOR = Generator.from_layers(random_generator_layers([3, 10, 16], bias_scale=0.5, rng=7))
N = GENERATOR.output_dim
_CLEAN = GENERATOR.forward(np.random.default_rng(0).standard_normal(3))

_dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_,
                           np.complex64])  # fmt: skip
_shapes = st.sampled_from([(N,), (1, N), (2, N), (4, 4), (1, 1, 4, 4), (3, 4, 4), (N - 1,), (N + 1,), (), (0,),
                           (0, N), (2, 2, 4)])  # fmt: skip
_values = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, -1.0, 1e300, 1e-300]
)


@st.composite
def observation(draw):
    kind = draw(st.sampled_from(["near_clean", "random", "nonnumeric"]))
    if kind == "near_clean":
        x = _CLEAN.copy()
        for _ in range(draw(st.integers(0, 4))):
            x[draw(st.integers(0, N - 1))] = draw(_values)
        return x.reshape(draw(st.sampled_from([(N,), (1, N), (4, 4)])))
    if kind == "nonnumeric":
        return draw(
            st.sampled_from([np.array(["a"] * N), np.array([None] * N, dtype=object), [1, "x"], "text"])
        )
    dtype = draw(_dtypes)
    return draw(hnp.arrays(dtype, draw(_shapes)))


@st.composite
def mask(draw):
    choice = draw(st.sampled_from(["none", "bool", "float01", "bad"]))
    if choice == "none":
        return None
    if choice == "bool":
        return draw(hnp.arrays(np.bool_, draw(st.sampled_from([(N,), (1, N), (N - 2,)]))))
    if choice == "float01":
        return draw(hnp.arrays(np.float64, (N,), elements=st.sampled_from([0.0, 1.0, 0.5])))
    return draw(st.sampled_from([np.array([]), np.ones((2, 2)), "mask", np.full(N, np.nan)]))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=observation(), m=mask(), method=st.sampled_from(["auto", "exact", "linf", "sparse"]),
       noise=st.sampled_from([None, 0.0, 1e-3, -1.0, float("nan")]))  # fmt: skip
def test_invert_raises_only_our_errors(x, m, method, noise):
    try:
        result = invert(GENERATOR, x, method=method, noise=noise, mask=m, workers=1, time_limit=5.0)
    except OnnxInvError as exc:
        assert str(exc).strip()
    else:
        z = np.asarray(result.z)
        assert z.shape[-1] == GENERATOR.latent_dim
