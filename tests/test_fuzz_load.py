"""Mutated model bytes: ``load`` either succeeds or raises onnxinv's own error, nothing else."""

from __future__ import annotations

import numpy as np
from builders import init, model, node, rng_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxinv
from onnxinv.errors import OnnxInvError

_NODES = [
    node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1),
    node("Relu", ["a1"], ["h1"]),
    node("MatMul", ["h1", "W2"], ["m2"]),
    node("Add", ["m2", "b2"], ["a2"]),
    node("Reshape", ["a2", "shape"], ["x"]),
]
_INITS = [init("W1", rng_weights(1, 6, 3)), init("b1", rng_weights(2, 6)), init("W2", rng_weights(3, 6, 8)),
          init("b2", rng_weights(4, 8)), init("shape", np.array([-1, 2, 4]), np.int64)]  # fmt: skip
VALID = model(_NODES, _INITS, input_shape=("N", 3)).SerializeToString()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:pos]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated())
def test_load_of_mutated_bytes_raises_only_our_errors(tmp_path, data):
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    try:
        generator = onnxinv.load(path)
    except OnnxInvError as exc:
        assert str(exc).strip()
    else:
        assert generator.latent_dim >= 1 and generator.output_dim >= 1
