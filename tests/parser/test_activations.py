"""Activations as exporters really write them: PRelu per unit and per channel, and piecewise-linear
activations spelled with elementwise ops (JAX, TF, hand-written graphs), each compared with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from builders import assert_matches_onnxruntime, const_node, init, model, node, rng_weights, save

import onnxinv
from onnxinv.errors import UnsupportedModelError
from onnxinv.layers import Activation

K, H, N = 4, 7, 9


def _around(pattern_nodes, extra_inits=(), last="act", **model_kwargs):
    """Gemm -> pattern (reading 'a1', writing ``last``) -> Gemm."""
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], name="dense1", transB=1),
        *pattern_nodes,
        node("Gemm", [last, "W2", "b2"], ["x"], name="dense2", transB=1),
    ]
    inits = [
        init("W1", rng_weights(1, H, K)),
        init("b1", rng_weights(2, H)),
        init("W2", rng_weights(3, N, H)),
        init("b2", rng_weights(4, N)),
        *extra_inits,
    ]
    return model(nodes, inits, **model_kwargs)


def _load(tmp_path, m):
    generator = onnxinv.load(save(m, tmp_path))
    assert_matches_onnxruntime(generator, batch=40)  # enough latents to hit both sides of every unit
    return generator


def _refusal(tmp_path, m) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        onnxinv.load(save(m, tmp_path))
    return str(info.value)


# --- PRelu --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(H,), (1, H)], ids=["legacy [n]", "dynamo [1, n]"])
def test_prelu_one_slope_per_unit(tmp_path, shape):
    slopes = np.linspace(0.05, 0.6, H).astype(np.float32)
    m = _around([node("PRelu", ["a1", "s"], ["act"], name="prelu")], [init("s", slopes.reshape(shape))])
    generator = _load(tmp_path, m)
    layer = generator.layers[0]
    assert layer.activation is Activation.LEAKY_RELU and layer.per_unit_slope
    np.testing.assert_allclose(layer.slopes(), slopes, rtol=1e-6)
    assert layer.source_nodes == ("dense1", "prelu")


@pytest.mark.parametrize("slope_shape", [(2, 1, 1), (1, 2, 1, 1)], ids=["legacy [C,1,1]", "dynamo [1,C,1,1]"])
def test_prelu_per_channel_on_an_image_tensor(tmp_path, slope_shape):
    # torch: Linear(k, 8) -> view(-1, 2, 2, 2) -> PReLU(num_parameters=2) -> flatten -> Linear
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], name="dense1", transB=1),
        node("Reshape", ["a1", "img"], ["a1img"]),
        node("PRelu", ["a1img", "s"], ["act_img"], name="prelu"),
        node("Flatten", ["act_img"], ["act"], axis=1),
        node("Gemm", ["act", "W2", "b2"], ["x"], name="dense2", transB=1),
    ]
    inits = [
        init("W1", rng_weights(1, 8, K)),
        init("b1", rng_weights(2, 8)),
        init("img", np.array([-1, 2, 2, 2]), np.int64),
        init("s", np.array([0.1, 0.3], dtype=np.float32).reshape(slope_shape)),
        init("W2", rng_weights(3, N, 8)),
        init("b2", rng_weights(4, N)),
    ]
    generator = _load(tmp_path, model(nodes, inits))
    np.testing.assert_allclose(generator.layers[0].slopes(), [0.1] * 4 + [0.3] * 4, rtol=1e-6)


# --- Where / Max / Clip spellings ---------------------------------------------------------------


def _where(cmp="Greater", swap=False, threshold=0.0, then="a1", other="act_neg", mul_first=False):
    operands = ["zero", "a1"] if swap else ["a1", "zero"]
    mul_inputs = ["a", "a1"] if mul_first else ["a1", "a"]
    return (
        [
            node(cmp, operands, ["cond"], name="cmp"),
            node("Mul", mul_inputs, ["act_neg"], name="scaled"),
            node("Where", ["cond", then, other], ["act"], name="where"),
        ],
        [init("zero", np.float32(threshold)), init("a", np.float32(0.2))],
    )


@pytest.mark.parametrize(
    ("cmp", "swap", "branches"),
    [
        ("Greater", False, ("a1", "act_neg")),  # jnp.where(x > 0, x, a * x)
        ("GreaterOrEqual", False, ("a1", "act_neg")),  # jax.nn.leaky_relu
        ("Less", False, ("act_neg", "a1")),  # where(x < 0, a * x, x)
        ("Less", True, ("a1", "act_neg")),  # where(0 < x, x, a * x)
        ("LessOrEqual", False, ("act_neg", "a1")),
    ],
)
def test_leaky_relu_written_with_where(tmp_path, cmp, swap, branches):
    nodes, inits = _where(cmp, swap, then=branches[0], other=branches[1])
    generator = _load(tmp_path, _around(nodes, inits))
    layer = generator.layers[0]
    assert layer.activation is Activation.LEAKY_RELU and layer.slope == pytest.approx(0.2)
    assert layer.source_nodes == ("dense1", "where")
    assert len(generator.layers) == 2


def test_relu_written_with_where_and_a_zero_branch(tmp_path):
    nodes = [
        node("Greater", ["a1", "zero"], ["cond"]),
        node("Where", ["cond", "a1", "zero"], ["act"], name="where"),
    ]
    generator = _load(tmp_path, _around(nodes, [init("zero", np.float32(0.0))]))
    assert generator.layers[0].activation is Activation.RELU


def test_where_with_per_unit_slopes_and_a_scaled_positive_branch(tmp_path):
    # where(x > 0, 2 x, a_j x): 2 * leaky(a_j / 2), the 2 folds into the next layer
    slopes = np.linspace(0.1, 0.5, H).astype(np.float32)
    nodes = [
        node("Greater", ["a1", "zero"], ["cond"]),
        node("Mul", ["a1", "two"], ["pos"]),
        node("Mul", ["slopes", "a1"], ["neg"]),
        node("Where", ["cond", "pos", "neg"], ["act"], name="where"),
    ]
    inits = [init("zero", np.float32(0.0)), init("two", np.float32(2.0)), init("slopes", slopes)]
    generator = _load(tmp_path, _around(nodes, inits))
    np.testing.assert_allclose(generator.layers[0].slopes(), slopes / 2, rtol=1e-6)


def test_max_of_x_and_a_times_x_is_a_leaky_relu(tmp_path):
    # tf.nn.leaky_relu as tf2onnx may write it: Max(x, Mul(x, alpha))
    nodes = [node("Mul", ["a1", "a"], ["ax"]), node("Max", ["a1", "ax"], ["act"], name="max")]
    generator = _load(tmp_path, _around(nodes, [init("a", np.float32(0.3))]))
    assert generator.layers[0].activation is Activation.LEAKY_RELU
    assert generator.layers[0].slope == pytest.approx(0.3)


@pytest.mark.parametrize("c", [0.0, 0.5, -1.0])
def test_max_with_a_constant_is_a_shifted_relu(tmp_path, c):
    nodes = [const_node("c", np.float32(c)), node("Max", ["a1", "c"], ["act"], name="max")]
    generator = _load(tmp_path, _around(nodes))
    assert [layer.activation for layer in generator.layers] == [Activation.RELU, Activation.IDENTITY]


def test_max_with_a_slope_above_one(tmp_path):
    # max(x, 3x) = 3x above 0, x below: 3 * leaky(1/3)
    nodes = [node("Mul", ["three", "a1"], ["ax"]), node("Max", ["ax", "a1"], ["act"], name="max")]
    generator = _load(tmp_path, _around(nodes, [init("three", np.float32(3.0))]))
    assert generator.layers[0].slope == pytest.approx(1 / 3)


@pytest.mark.parametrize("low", [0.0, 0.25, -0.5])
def test_clip_with_only_a_lower_bound(tmp_path, low):
    nodes = [node("Clip", ["a1", "lo"], ["act"], name="clip")]
    generator = _load(tmp_path, _around(nodes, [init("lo", np.float32(low))]))
    assert generator.layers[0].activation is Activation.RELU


def test_constants_around_the_pattern_fold_into_the_layers(tmp_path):
    # Mul and Add of constants before and after a Where leaky ReLU, as hand-written graphs do
    nodes, inits = _where()
    nodes = [
        node("Mul", ["a1", "pre"], ["a1s"]),
        node("Add", ["a1s", "shift"], ["a1t"]),
        *[_rename(n, "a1", "a1t") for n in nodes],
        node("Mul", ["act0", "post"], ["act"]),
    ]
    nodes[-2].output[0] = "act0"
    inits += [init("pre", np.float32(1.5)), init("shift", rng_weights(8, H)), init("post", np.float32(0.5))]
    generator = _load(tmp_path, _around(nodes, inits))
    assert len(generator.layers) == 2 and generator.layers[0].slope == pytest.approx(0.2)


def _rename(n, old, new):
    for i, name in enumerate(n.input):
        if name == old:
            n.input[i] = new
    return n


# --- refusals of elementwise spellings ----------------------------------------------------------


def test_where_with_opposite_slopes_is_not_injective(tmp_path):
    nodes, inits = _where()
    inits[1] = init("a", np.float32(-0.5))  # |x|-like: x above 0, -0.5 x below
    text = _refusal(tmp_path, _around(nodes, inits))
    assert "node 'where' (Where" in text and "opposite signs" in text and "not injective" in text


def test_where_jumping_at_its_threshold(tmp_path):
    nodes, inits = _where(threshold=1.0)
    text = _refusal(tmp_path, _around(nodes, inits))
    assert "node 'where' (Where" in text and "jumps at its threshold 1" in text


def test_where_with_a_branch_that_is_not_linear(tmp_path):
    nodes = [
        node("Greater", ["a1", "zero"], ["cond"]),
        node("Tanh", ["a1"], ["t"], name="tanh"),
        node("Where", ["cond", "a1", "t"], ["act"], name="where"),
    ]
    text = _refusal(tmp_path, _around(nodes, [init("zero", np.float32(0.0))]))
    assert "node 'where' (Where" in text and "combines several tensors" in text
    assert "'t' (Tanh) is neither the input 'a1', a constant, nor the input times a constant" in text


def test_max_of_x_and_minus_x_is_not_injective(tmp_path):
    nodes = [node("Neg", ["a1"], ["na"]), node("Max", ["a1", "na"], ["act"], name="max")]
    text = _refusal(tmp_path, _around(nodes))
    assert "node 'max' (Max" in text and "opposite signs" in text


def test_intermediate_read_elsewhere_is_not_a_pattern(tmp_path):
    # the Mul of the leaky branch is also read elsewhere (here: as a Reshape's shape), so the Where
    # subgraph is not self-contained
    nodes, inits = _where()
    nodes += [node("Shape", ["act_neg"], ["s"], name="shape"), node("Reshape", ["act", "s"], ["act2"])]
    text = _refusal(tmp_path, _around(nodes, inits, last="act2"))
    assert "node 'where' (Where" in text and "intermediate tensor 'act_neg' is also read by shape" in text


def test_default_domain_spelled_ai_onnx(tmp_path):
    nodes, inits = _where()
    m = _around(nodes, [*inits, init("shape", np.array([-1, N]), np.int64)], last="act")
    m.graph.node.append(node("Reshape", ["x", "shape"], ["y"]))
    m.graph.output[0].name = "y"
    for n in m.graph.node:
        n.domain = "ai.onnx"
    m.opset_import[0].domain = "ai.onnx"
    generator = _load(tmp_path, m)
    assert generator.layers[0].activation is Activation.LEAKY_RELU


@pytest.mark.parametrize(
    ("cmp", "then", "other"),
    [("Greater", "a1", "t"), ("Less", "a1", "t"), ("Less", "t", "a1")],
    ids=["max(x, t)", "min(x, t)", "max(x, t) swapped"],
)
def test_where_with_a_constant_branch_meeting_the_threshold(tmp_path, cmp, then, other):
    nodes = [node(cmp, ["a1", "t"], ["cond"]), node("Where", ["cond", then, other], ["act"], name="where")]
    generator = _load(tmp_path, _around(nodes, [init("t", np.float32(0.4))]))
    assert [layer.activation for layer in generator.layers] == [Activation.RELU, Activation.IDENTITY]
