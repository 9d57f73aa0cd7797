"""Tiny ONNX models built in code, and the oracle comparison every parser test makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxinv
from onnxinv.oracle import ATOL, RTOL

IR_VERSION = 10  # onnx 1.23 writes 14 by default, which onnxruntime 1.31 refuses
F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def init(name: str, value, dtype=np.float32) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def const_node(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=init(name, value, dtype))


def node(op: str, inputs, outputs, name: str | None = None, domain: str = "", **attrs) -> onnx.NodeProto:
    return helper.make_node(
        op, list(inputs), list(outputs), name=name or f"{op.lower()}_{outputs[0]}", domain=domain, **attrs
    )


def model(
    nodes,
    initializers=(),
    *,
    input_shape=("N", 4),
    output_shape=None,
    opset: int = 17,
    elem=F32,
    input_name="z",
    output_names=("x",),
    extra_inputs=(),
    extra_opsets=(),
) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(o, elem, output_shape) for o in output_names]
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(input_name, elem, list(input_shape)), *extra_inputs],
        outputs,
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="tests")


def save(m: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = Path(folder) / name
    onnx.save(m, path)
    return path


def rng_weights(seed: int, *shape) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, size=shape).astype(np.float32)


def assert_matches_onnxruntime(generator: onnxinv.Generator, batch: int = 6, seed: int = 1) -> None:
    """The layer list's forward pass equals onnxruntime's on random latents (rtol 1e-4, atol 1e-5)."""
    z = np.random.default_rng(seed).standard_normal((batch, generator.latent_dim))
    ours = generator.forward(z)
    theirs = generator.run_onnx(z)
    assert ours.shape == theirs.shape == (batch, generator.output_dim)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)
    # a single latent round-trips too
    np.testing.assert_allclose(generator.forward(z[0]), generator.run_onnx(z[0]), rtol=RTOL, atol=ATOL)
