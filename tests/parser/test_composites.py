"""Functions exporters write with several elementwise ops, recognised and refused with the real reason.

Graphs are written by hand the way torch's legacy and dynamo exporters write them (observed with torch
2.13: SiLU as Sigmoid + Mul, GELU with Erf, the tanh GELU, Mish, dynamo's thresholded Softplus, a LayerNorm
decomposed at opset 16).
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import const_node, init, model, node, rng_weights, save

import onnxinv
from onnxinv.errors import UnsupportedModelError
from onnxinv.parser import SUPPORTED_OPS

K, H = 4, 6


def _refusal(tmp_path, pattern, inits=(), opset=17) -> UnsupportedModelError:
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a1"], name="dense1", transB=1), *pattern]
    base = [init("W1", rng_weights(1, H, K)), init("b1", rng_weights(2, H))]
    with pytest.raises(UnsupportedModelError) as info:
        onnxinv.load(save(model(nodes, [*base, *inits], opset=opset), tmp_path))
    return info.value


def _c(name, value):
    return const_node(name, np.float32(value))


SILU = [node("Sigmoid", ["a1"], ["s"], name="sig"), node("Mul", ["a1", "s"], ["x"], name="silu")]
SWISH = [
    _c("beta", 1.7),
    node("Mul", ["a1", "beta"], ["ab"], name="scale"),
    node("Sigmoid", ["ab"], ["s"], name="sig"),
    node("Mul", ["s", "a1"], ["x"], name="silu"),
]
MISH = [
    node("Softplus", ["a1"], ["sp"], name="sp"),
    node("Tanh", ["sp"], ["t"], name="tanh"),
    node("Mul", ["a1", "t"], ["x"], name="mish"),
]
GELU_ERF = [  # torch legacy, opset 17
    _c("sqrt2", 1.4142135),
    node("Div", ["a1", "sqrt2"], ["d"], name="div"),
    node("Erf", ["d"], ["e"], name="erf"),
    _c("one", 1.0),
    node("Add", ["e", "one"], ["f"], name="add"),
    node("Mul", ["a1", "f"], ["g"], name="gelu"),
    _c("half", 0.5),
    node("Mul", ["g", "half"], ["x"], name="half_mul"),
]
GELU_TANH = [  # torch legacy, GELU(approximate="tanh")
    node("Mul", ["a1", "a1"], ["sq"], name="sq"),
    node("Mul", ["a1", "sq"], ["cube"], name="cube"),
    _c("k", 0.044715),
    node("Mul", ["k", "cube"], ["kc"], name="kc"),
    node("Add", ["a1", "kc"], ["inner"], name="inner"),
    _c("r", 0.7978846),
    node("Mul", ["r", "inner"], ["arg"], name="arg"),
    node("Tanh", ["arg"], ["t"], name="tanh"),
    _c("one", 1.0),
    node("Add", ["one", "t"], ["f"], name="plus1"),
    node("Mul", ["a1", "f"], ["g"], name="gelu"),
    _c("half", 0.5),
    node("Mul", ["half", "g"], ["x"], name="half_mul"),
]
HARDSWISH = [
    node("HardSigmoid", ["a1"], ["hs"], name="hs", alpha=1 / 6),
    node("Mul", ["a1", "hs"], ["x"], name="hsw"),
]
SOFTPLUS_DYNAMO = [
    node("Softplus", ["a1"], ["tmp"], name="softplus"),
    node("Greater", ["a1", "threshold_cast"], ["tmp_1"], name="greater"),
    node("Where", ["tmp_1", "a1", "tmp"], ["x"], name="where"),
]
SOFTPLUS_DYNAMO_BETA = [
    node("Mul", ["a1", "beta_cast"], ["self_scaled"], name="scaled"),
    node("Softplus", ["self_scaled"], ["tmp"], name="softplus"),
    node("Div", ["tmp", "beta_cast"], ["softplus_2"], name="div"),
    node("Greater", ["self_scaled", "threshold_cast"], ["tmp_1"], name="greater"),
    node("Where", ["tmp_1", "a1", "softplus_2"], ["x"], name="where"),
]
THRESHOLDS = [init("threshold_cast", np.float32(20.0)), init("beta_cast", np.float32(2.0))]
LAYERNORM_16 = [  # torch legacy LayerNorm below opset 17
    node("ReduceMean", ["a1"], ["mean"], name="mean", axes=[-1]),
    node("Sub", ["a1", "mean"], ["centred"], name="centre"),
    _c("two", 2.0),
    node("Pow", ["centred", "two"], ["sq"], name="pow"),
    node("ReduceMean", ["sq"], ["var"], name="var", axes=[-1]),
    _c("eps", 1e-5),
    node("Add", ["var", "eps"], ["ve"], name="add_eps"),
    node("Sqrt", ["ve"], ["std"], name="sqrt"),
    node("Div", ["centred", "std"], ["normed"], name="div"),
    node("Mul", ["normed", "gamma"], ["scaled"], name="gamma_mul"),
    node("Add", ["scaled", "beta"], ["x"], name="beta_add"),
]


@pytest.mark.parametrize(
    ("pattern", "root", "name", "words"),
    [
        (SILU, "silu", "SiLU / Swish", ["not monotone", "Sigmoid 'sig'"]),
        (SWISH, "silu", "SiLU / Swish", ["not monotone", "Mul 'scale'"]),
        (MISH, "mish", "Mish", ["not monotone", "Softplus 'sp'", "Tanh 'tanh'"]),
        (GELU_ERF, "gelu", "GELU", ["not monotone", "Erf 'erf'"]),
        (GELU_TANH, "gelu", "GELU", ["not monotone", "Tanh 'tanh'", "Mul 'cube'"]),
        (HARDSWISH, "hsw", "HardSwish", ["not monotone", "HardSigmoid 'hs'"]),
        (
            SOFTPLUS_DYNAMO,
            "where",
            "Softplus (torch dynamo's",
            ["invertible elementwise", "not piecewise linear"],
        ),
        (SOFTPLUS_DYNAMO_BETA, "where", "Softplus (torch dynamo's", ["not supported", "Div 'div'"]),
    ],
    ids=["silu", "swish", "mish", "gelu-erf", "gelu-tanh", "hardswish", "softplus-dynamo", "softplus-beta"],
)
def test_composite_named_with_its_reason(tmp_path, pattern, root, name, words):
    error = _refusal(tmp_path, pattern, THRESHOLDS, opset=20)
    text = str(error)
    assert [p.node for p in error.problems] == [root]
    assert f"node '{root}'" in text and name in text
    for word in words:
        assert word in text
    assert "combines several tensors" not in text and "initializers" not in text


def test_decomposed_layernorm_is_one_refusal(tmp_path):
    inits = [init("gamma", rng_weights(5, H)), init("beta", rng_weights(6, H))]
    error = _refusal(tmp_path, LAYERNORM_16, inits, opset=16)
    text = str(error)
    assert [p.node for p in error.problems] == ["div"]
    assert "LayerNorm written as ReduceMean" in text and "not injective" in text
    assert "ReduceMean 'mean'" in text and "Sub 'centre'" in text and "Sqrt 'sqrt'" in text


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "words"),
    [
        (
            "LayerNormalization",
            ["a1", "gamma", "beta"],
            {"axis": -1},
            ["LayerNorm", "not injective", "shift"],
        ),
        ("Softplus", ["a1"], {}, ["Softplus", "not supported", "invertible elementwise", "ReLU"]),
        ("Elu", ["a1"], {}, ["ELU", "not supported"]),
        ("Gelu", ["a1"], {}, ["GELU", "not monotone"]),
        ("Mish", ["a1"], {}, ["Mish", "not monotone"]),
    ],
)
def test_single_ops_refused_with_their_reason(tmp_path, op, inputs, attrs, words):
    inits = [init("gamma", rng_weights(5, H)), init("beta", rng_weights(6, H))]
    error = _refusal(tmp_path, [node(op, inputs, ["x"], name="the_op", **attrs)], inits, opset=20)
    text = str(error)
    assert f"node 'the_op' ({op}, opset 20)" in text
    for word in words:
        assert word in text


def test_refused_ops_are_not_listed_as_supported():
    assert "Softplus" not in SUPPORTED_OPS and "LayerNormalization" not in SUPPORTED_OPS
    assert {"Where", "Max", "PRelu", "Concat"} <= set(SUPPORTED_OPS)


def test_a_gate_with_a_dense_layer_inside_is_not_named_gelu(tmp_path):
    # x * tanh(W x): a gated unit, not GELU; it is reported as a node combining two tensors
    pattern = [
        node("Gemm", ["a1", "Wg", "bg"], ["g"], name="gate_dense", transB=1),
        node("Tanh", ["g"], ["t"], name="tanh"),
        node("Mul", ["a1", "t"], ["x"], name="gated"),
    ]
    inits = [init("Wg", rng_weights(7, H, H)), init("bg", rng_weights(8, H))]
    text = str(_refusal(tmp_path, pattern, inits))
    assert "node 'gated' (Mul" in text and "combines several tensors" in text and "GELU" not in text
