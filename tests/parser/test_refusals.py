"""Graphs onnxinv refuses: one clear error that names the node, its op and opset, and why."""

from __future__ import annotations

import numpy as np
import pytest
from builders import F32, init, model, node, rng_weights, save
from onnx import helper

import onnxinv
from onnxinv.errors import UnsupportedModelError

K, H = 4, 6


def _load_error(tmp_path, m) -> UnsupportedModelError:
    with pytest.raises(UnsupportedModelError) as info:
        onnxinv.load(save(m, tmp_path))
    return info.value


def _gemm(src="z", dst="a1", **attrs):
    return node("Gemm", [src, "W1", "b1"], [dst], transB=attrs.pop("transB", 1), **attrs)


INITS = [init("W1", rng_weights(1, H, K)), init("b1", rng_weights(2, H))]


@pytest.mark.parametrize(
    ("op", "extra", "words"),
    [
        ("Softplus", {}, ["Softplus", "not supported", "ReLU"]),
        ("Elu", {}, ["Elu", "not supported"]),
        ("Softmax", {}, ["Softmax", "not injective"]),
    ],
)
def test_unsupported_activation_named(tmp_path, op, extra, words):
    m = model([_gemm(), node(op, ["a1"], ["x"], name="the_act", **extra)], INITS, opset=13)
    error = _load_error(tmp_path, m)
    text = str(error)
    assert "node 'the_act'" in text and "opset 13" in text
    for word in words:
        assert word in text
    assert [p.node for p in error.problems] == ["the_act"]


def test_ambiguous_conv_transpose_named(tmp_path):
    # output_shape 6 from a natural size of 7 needs one padding element, which onnxruntime and the ONNX
    # specification put on opposite sides
    nodes = [node("ConvTranspose", ["z", "Wc"], ["x"], name="deconv1", strides=[2, 2], output_shape=[6, 6])]
    m = model(nodes, [init("Wc", rng_weights(1, 1, 2, 3, 3))], input_shape=("N", 1, 3, 3))
    text = str(_load_error(tmp_path, m))
    assert "node 'deconv1' (ConvTranspose, opset 17)" in text
    assert "total padding of [1, 1]" in text and "opposite sides" in text and "explicit pads" in text


def test_matmul_of_two_variables(tmp_path):
    nodes = [_gemm(), node("MatMul", ["a1", "a1t"], ["x"], name="mm"), node("Transpose", ["a1"], ["a1t"])]
    text = str(_load_error(tmp_path, model(nodes, INITS)))
    assert "node 'mm' (MatMul" in text and "several tensors computed from the input" in text


def test_two_outputs(tmp_path):
    m = model([_gemm(dst="x"), node("Relu", ["x"], ["y"])], INITS, output_names=("x", "y"))
    text = str(_load_error(tmp_path, m))
    assert "2" in text and "'x'" in text and "'y'" in text and "extract_model" in text


def test_gemm_transA_refused(tmp_path):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["x"], name="g", transA=1, transB=1)]
    text = str(_load_error(tmp_path, model(nodes, INITS, input_shape=(K, 3))))
    assert "node 'g' (Gemm" in text and "transA=1" in text


def test_weights_fed_as_graph_inputs(tmp_path):
    extra = [helper.make_tensor_value_info("W1", F32, [H, K])]
    m = model([_gemm(dst="x")], [init("b1", rng_weights(2, H))], extra_inputs=extra)
    text = str(_load_error(tmp_path, m))
    assert "'W1'" in text and "initializers" in text


def test_every_unsupported_node_is_listed(tmp_path):
    nodes = [
        _gemm(),
        node("Softplus", ["a1"], ["h"], name="sp"),
        node("Gemm", ["h", "W2", "b2"], ["a2"], transB=1),
        node("Elu", ["a2"], ["x"], name="elu"),
    ]
    inits = [*INITS, init("W2", rng_weights(3, 5, H)), init("b2", rng_weights(4, 5))]
    error = _load_error(tmp_path, model(nodes, inits))
    assert [p.node for p in error.problems] == ["sp", "elu"]
    assert "2 nodes" in str(error)


@pytest.mark.parametrize(("low", "bad"), [(0.0, 1), (-0.2, 3)])
def test_prelu_per_unit_slopes_must_be_positive(tmp_path, low, bad):
    nodes = [_gemm(), node("PRelu", ["a1", "s"], ["x"], name="pr")]
    error = _load_error(tmp_path, model(nodes, [*INITS, init("s", np.linspace(low, 0.3, H))]))
    text = str(error)
    assert "node 'pr' (PRelu" in text and f"{bad} of 6 are not positive" in text and "every slope > 0" in text


def test_relu6_clip_refused(tmp_path):
    nodes = [_gemm(), node("Clip", ["a1", "lo", "hi"], ["x"], name="relu6")]
    inits = [*INITS, init("lo", np.float32(0)), init("hi", np.float32(6))]
    text = str(_load_error(tmp_path, model(nodes, inits)))
    assert "node 'relu6' (Clip" in text and "saturates" in text


def test_non_standard_domain_refused(tmp_path):
    nodes = [_gemm(), node("Swish", ["a1"], ["x"], name="sw", domain="custom.ops")]
    text = str(_load_error(tmp_path, model(nodes, INITS, extra_opsets=[("custom.ops", 1)])))
    assert "node 'sw'" in text and "custom.ops.Swish" in text and "non-standard domain" in text


def test_unnamed_node_gets_a_position_label(tmp_path):
    m = model([_gemm(), helper.make_node("Softplus", ["a1"], ["x"])], INITS)
    assert "node 'Softplus#1'" in str(_load_error(tmp_path, m))


def test_integer_input_refused(tmp_path):
    from onnx import TensorProto

    m = model([node("Cast", ["z"], ["zf"], to=1), _gemm("zf", "x")], INITS, elem=TensorProto.INT64)
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    text = str(_load_error(tmp_path, m))
    assert "INT64" in text and "float32" in text


def test_an_element_type_outside_onnx_s_enum_is_refused_by_number(tmp_path):
    m = model([_gemm()], INITS)
    m.graph.output[0].type.tensor_type.elem_type = 33  # no such TensorProto.DataType
    text = str(_load_error(tmp_path, m))
    assert "number 33 (not an ONNX type)" in text and "float32" in text
