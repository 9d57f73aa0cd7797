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


# --- conditional generators, written the way the torch exporters write them -------------------------


def conditional_onehot(k: int = 3, classes: int = 5, hidden: int = 12, out: int = 20) -> onnx.ModelProto:
    """torch legacy: ``Concat(z, onehot)`` feeding ``Gemm``, ReLU, a second Gemm; inputs z, onehot."""
    nodes = [
        node("Concat", ["z", "onehot"], ["cat"], name="/Concat", axis=1),
        node("Gemm", ["cat", "l1.weight", "l1.bias"], ["a1"], name="/l1/Gemm", transB=1),
        node("Relu", ["a1"], ["h1"], name="/Relu"),
        node("Gemm", ["h1", "l2.weight", "l2.bias"], ["x"], name="/l2/Gemm", transB=1),
    ]
    inits = [
        init("l1.weight", rng_weights(11, hidden, k + classes)),
        init("l1.bias", rng_weights(12, hidden)),
        init("l2.weight", rng_weights(13, out, hidden)),
        init("l2.bias", rng_weights(14, out)),
    ]
    onehot = helper.make_tensor_value_info("onehot", F32, ["n", classes])
    return model(nodes, inits, input_shape=("n", k), extra_inputs=[onehot])


def conditional_embedding(
    k: int = 3, classes: int = 5, embed: int = 2, hidden: int = 12, out: int = 20, batch="s17"
) -> onnx.ModelProto:
    """torch dynamo: an int64 class index ``y`` through ``Gather`` of an embedding table, concatenated
    to the latent before the first layer and to the hidden layer before the second (a condition used
    by two layers)."""
    nodes = [
        node("Gather", ["e.weight", "y"], ["embedding"], name="node_embedding", axis=0),
        node("Concat", ["z", "embedding"], ["cat"], name="node_cat", axis=1),
        node("Gemm", ["cat", "l.weight", "l.bias"], ["linear"], name="node_linear", transB=1),
        node("Relu", ["linear"], ["relu"], name="node_relu"),
        node("Concat", ["relu", "embedding"], ["cat_1"], name="node_cat_1", axis=1),
        node("Gemm", ["cat_1", "l2.weight", "l2.bias"], ["x"], name="node_linear_1", transB=1),
    ]
    inits = [
        init("e.weight", rng_weights(21, classes, embed)),
        init("l.weight", rng_weights(22, hidden, k + embed)),
        init("l.bias", rng_weights(23, hidden)),
        init("l2.weight", rng_weights(24, out, hidden + embed)),
        init("l2.bias", rng_weights(25, out)),
    ]
    label = helper.make_tensor_value_info("y", TensorProto.INT64, [batch])
    return model(nodes, inits, input_shape=(batch, k), extra_inputs=[label], opset=20)


def conditional_add(k: int = 3, hidden: int = 12, out: int = 20) -> onnx.ModelProto:
    """``Add(h, c)`` and ``Mul(h, s)`` of conditioning vectors (tf2onnx / hand-written FiLM style)."""
    nodes = [
        node("MatMul", ["z", "W1"], ["m1"]),
        node("Add", ["m1", "c"], ["a1"]),
        node("Mul", ["a1", "s"], ["a1s"]),
        node("Relu", ["a1s"], ["h1"]),
        node("MatMul", ["h1", "W2"], ["m2"]),
        node("Add", ["c2", "m2"], ["x"]),
    ]
    inits = [init("W1", rng_weights(31, k, hidden)), init("W2", rng_weights(32, hidden, out))]
    extra = [
        helper.make_tensor_value_info("c", F32, ["N", hidden]),
        helper.make_tensor_value_info("s", F32, [hidden]),
        helper.make_tensor_value_info("c2", F32, [1, out]),
    ]
    return model(nodes, inits, input_shape=("N", k), extra_inputs=extra)


def run_file(path, feeds: dict) -> np.ndarray:
    """onnxruntime on the model file itself with the given feeds (no onnxinv involved), as float64."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feeds)
    return np.asarray(out, dtype=np.float64)
