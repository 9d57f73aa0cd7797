"""Every spelling of a dense layer an exporter writes, parsed and compared with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from builders import F64, assert_matches_onnxruntime, const_node, init, model, node, rng_weights, save

import onnxinv
from onnxinv.layers import Activation

K, H, N = 4, 7, 9  # latent, hidden, output sizes of the tiny models
OPSETS = [9, 13, 17, 21]


def w(seed, *shape):
    return rng_weights(seed, *shape)


def gemm_relu_gemm(opset: int):
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1),
        node("Relu", ["a1"], ["h1"]),
        node("Gemm", ["h1", "W2", "b2"], ["x"], transB=1),
    ]
    inits = [init("W1", w(1, H, K)), init("b1", w(2, H)), init("W2", w(3, N, H)), init("b2", w(4, N))]
    return model(nodes, inits, opset=opset)


def gemm_in_out_layout_alpha_beta(opset: int):
    # MATLAB-style Gemm without transB, alpha/beta applied, bias [1, out]
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], alpha=0.25, beta=0.5),
        node("LeakyRelu", ["a1"], ["h1"], alpha=0.2),
        node("Gemm", ["h1", "W2", "b2"], ["x"]),
    ]
    inits = [init("W1", w(1, K, H)), init("b1", w(2, 1, H)), init("W2", w(3, H, N)), init("b2", w(4, 1, N))]
    return model(nodes, inits, opset=opset)


def matmul_add_both_orders(opset: int):
    # skl2onnx / tf2onnx: MatMul + Add(x, b); torch rank-3: Add(b, y) with the bias first; scalar bias
    nodes = [
        node("MatMul", ["z", "W1"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["h1"]),
        node("MatMul", ["h1", "W2"], ["m2"]),
        node("Add", ["b2", "m2"], ["a2"]),
        node("Add", ["a2", "s"], ["x"]),
    ]
    inits = [
        init("W1", w(1, K, H)),
        init("b1", w(2, 1, H)),
        init("W2", w(3, H, N)),
        init("b2", w(4, N)),
        init("s", np.float32(0.3)),
    ]
    return model(nodes, inits, opset=opset)


def matmul_alone(opset: int):
    # tf2onnx drops a zero bias
    nodes = [
        node("MatMul", ["z", "W1"], ["m1"]),
        node("Relu", ["m1"], ["h1"]),
        node("MatMul", ["h1", "W2"], ["x"]),
    ]
    return model(nodes, [init("W1", w(1, K, H)), init("W2", w(3, H, N))], opset=opset)


def constants_from_nodes(opset: int):
    # weights from Constant nodes and through Identity chains (torch deduplicates this way)
    nodes = [
        const_node("Wc", w(1, H, K)),
        node("Identity", ["Wc"], ["Wi"]),
        node("Identity", ["Wi"], ["Wii"]),
        node("Gemm", ["z", "Wii", "b1"], ["a1"], transB=1),
        node("Sigmoid", ["a1"], ["h1"]),
        const_node("W2c", w(3, N, H)),
        node("Gemm", ["h1", "W2c", "b1_id"], ["x"], transB=1),
        node("Identity", ["b2"], ["b1_id"]),
    ]
    return model(nodes, [init("b1", w(2, H)), init("b2", w(4, N))], opset=opset)


def folding_sub_div_bn_mul_add(opset: int):
    # input normalisation (Sub/Div from Constant nodes), BatchNormalization, BN written as Mul+Add
    nodes = [
        const_node("mu", w(5, K)),
        const_node("sd", np.abs(w(6, K)) + 0.5),
        node("Sub", ["z", "mu"], ["zc"]),
        node("Div", ["zc", "sd"], ["zn"]),
        node("Gemm", ["zn", "W1", "b1"], ["a1"], transB=1),
        node("BatchNormalization", ["a1", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        node("Relu", ["bn"], ["h1"]),
        node("Gemm", ["h1", "W2", "b2"], ["g2"], transB=1),
        node("Mul", ["g2", "scale"], ["m2"]),
        node("Add", ["m2", "shift"], ["t2"]),
        node("Tanh", ["t2"], ["x"]),
    ]
    inits = [
        init("W1", w(1, H, K)),
        init("b1", w(2, H)),
        init("g", np.abs(w(7, H)) + 0.2),
        init("beta", w(8, H)),
        init("mean", w(9, H)),
        init("var", np.abs(w(10, H)) + 0.1),
        init("W2", w(3, N, H)),
        init("b2", w(4, N)),
        init("scale", np.abs(w(11, N)) + 0.5),
        init("shift", w(12, N)),
    ]
    return model(nodes, inits, opset=opset)


def consecutive_affine_merge(opset: int):
    # two Gemms without an activation between them fold into one layer
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1),
        node("Gemm", ["a1", "W2", "b2"], ["a2"], transB=1),
        node("Relu", ["a2"], ["x"]),
    ]
    return model(
        nodes,
        [init("W1", w(1, H, K)), init("b1", w(2, H)), init("W2", w(3, N, H)), init("b2", w(4, N))],
        opset=opset,
    )


CASES = {
    "gemm_transB": (gemm_relu_gemm, [Activation.RELU, Activation.IDENTITY]),
    "gemm_in_out_alpha_beta": (gemm_in_out_layout_alpha_beta, [Activation.LEAKY_RELU, Activation.IDENTITY]),
    "matmul_add_orders": (matmul_add_both_orders, [Activation.RELU, Activation.IDENTITY]),
    "matmul_alone": (matmul_alone, [Activation.RELU, Activation.IDENTITY]),
    "constant_nodes_identity": (constants_from_nodes, [Activation.SIGMOID, Activation.IDENTITY]),
    "folding": (folding_sub_div_bn_mul_add, [Activation.RELU, Activation.TANH]),
    "merge_affine": (consecutive_affine_merge, [Activation.RELU]),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_spellings_match_onnxruntime(tmp_path, case, opset):
    build, activations = CASES[case]
    generator = onnxinv.load(save(build(opset), tmp_path))
    assert [layer.activation for layer in generator.layers] == activations
    assert generator.latent_dim == K and generator.output_dim == N
    assert generator.opset == opset
    assert_matches_onnxruntime(generator)


def test_layers_keep_their_source_nodes_and_slope(tmp_path):
    generator = onnxinv.load(save(gemm_in_out_layout_alpha_beta(17), tmp_path))
    first, second = generator.layers
    assert first.source_nodes == ("gemm_a1", "leakyrelu_h1")
    assert first.slope == pytest.approx(0.2)
    assert second.source_nodes == ("gemm_x",)
    merged = onnxinv.load(save(consecutive_affine_merge(17), tmp_path, "m.onnx")).layers[0]
    assert merged.source_nodes == ("gemm_a1", "gemm_a2", "relu_x") and merged.weight.shape == (N, K)


def test_weight_on_the_left_with_1d_input(tmp_path):
    # ERAN / MATLAB style: MatMul(W, x) with x 1-D, Add bias, Relu after the output layer
    nodes = [
        node("MatMul", ["W1", "z"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["h1"]),
        node("MatMul", ["W2", "h1"], ["m2"]),
        node("Add", ["m2", "b2"], ["a2"]),
        node("Relu", ["a2"], ["x"]),
    ]
    inits = [init("W1", w(1, H, K)), init("b1", w(2, H)), init("W2", w(3, N, H)), init("b2", w(4, N))]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=(K,)), tmp_path))
    assert not generator.has_batch_dim
    assert [layer.activation for layer in generator.layers] == [Activation.RELU, Activation.RELU]
    assert_matches_onnxruntime(generator)


@pytest.mark.parametrize("slope_shape", [(), (1,)])
def test_prelu_constant_slope_folds_to_leaky(tmp_path, slope_shape):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1), node("PRelu", ["a1", "s"], ["x"])]
    inits = [init("W1", w(1, H, K)), init("b1", w(2, H)), init("s", np.full(slope_shape, 0.15))]
    generator = onnxinv.load(save(model(nodes, inits), tmp_path))
    assert generator.layers[0].activation is Activation.LEAKY_RELU
    assert generator.layers[0].slope == pytest.approx(0.15)
    assert_matches_onnxruntime(generator)


def test_clip_at_zero_is_relu(tmp_path):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1), node("Clip", ["a1", "lo"], ["x"])]
    inits = [init("W1", w(1, H, K)), init("b1", w(2, H)), init("lo", np.float32(0.0))]
    generator = onnxinv.load(save(model(nodes, inits), tmp_path))
    assert generator.layers[0].activation is Activation.RELU
    assert_matches_onnxruntime(generator)


def test_float64_model(tmp_path):
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a1"], transB=1), node("Relu", ["a1"], ["x"])]
    inits = [init("W1", w(1, H, K), np.float64), init("b1", w(2, H), np.float64)]
    generator = onnxinv.load(save(model(nodes, inits, elem=F64), tmp_path))
    assert generator.input.dtype == "float64"
    z = np.random.default_rng(0).standard_normal((3, K))
    np.testing.assert_allclose(generator.forward(z), generator.run_onnx(z), rtol=1e-12, atol=1e-12)


def test_dead_nodes_and_shuffled_order(tmp_path):
    m = gemm_relu_gemm(17)
    dead = [node("Softplus", ["z"], ["unused"]), node("Mul", ["unused", "unused"], ["unused2"])]
    shuffled = list(reversed(list(m.graph.node))) + dead
    del m.graph.node[:]
    m.graph.node.extend(shuffled)
    generator = onnxinv.load(save(m, tmp_path))
    assert len(generator.layers) == 2
    assert any("checker" in note for note in generator.notes)
    assert_matches_onnxruntime(generator)


def test_fused_gemm_from_onnxruntime_domain(tmp_path):
    nodes = [
        node(
            "FusedGemm",
            ["z", "W1", "b1"],
            ["h1"],
            domain="com.microsoft",
            transB=1,
            activation="LeakyRelu",
            activation_alpha=0.1,
        ),
        node("Gemm", ["h1", "W2", "b2"], ["x"], transB=1),
    ]
    inits = [init("W1", w(1, H, K)), init("b1", w(2, H)), init("W2", w(3, N, H)), init("b2", w(4, N))]
    generator = onnxinv.load(save(model(nodes, inits, extra_opsets=[("com.microsoft", 1)]), tmp_path))
    assert generator.layers[0].activation is Activation.LEAKY_RELU
    assert generator.layers[0].slope == pytest.approx(0.1)
    assert_matches_onnxruntime(generator)


def test_initializers_listed_as_graph_inputs(tmp_path):
    from onnx import helper

    m = gemm_relu_gemm(9)
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    generator = onnxinv.load(save(m, tmp_path))
    assert any("also listed as graph inputs" in note for note in generator.notes)
    assert_matches_onnxruntime(generator)


def test_jax_gemm_with_zero_c_then_add(tmp_path):
    # jax2onnx: Gemm(x, W[in,out], C=0.0, beta=0.0) followed by an Add with the real bias
    nodes = [
        node("Gemm", ["z", "W1", "zero"], ["g1"], beta=0.0),
        node("Add", ["g1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["x"]),
    ]
    inits = [init("W1", w(1, K, H)), init("zero", np.float32(0.0)), init("b1", w(2, H))]
    generator = onnxinv.load(save(model(nodes, inits), tmp_path))
    assert len(generator.layers) == 1
    np.testing.assert_allclose(generator.layers[0].bias, w(2, H), rtol=1e-6)
    assert_matches_onnxruntime(generator)


def test_tf2onnx_shared_bias_and_transposed_constant_weight(tmp_path):
    # one bias initializer shared by two layers; a weight stored transposed behind a Transpose node
    nodes = [
        node("Transpose", ["W1t"], ["W1"], perm=[1, 0]),
        node("MatMul", ["z", "W1"], ["m1"]),
        node("Add", ["m1", "b"], ["a1"]),
        node("Relu", ["a1"], ["h1"]),
        node("MatMul", ["h1", "W2"], ["m2"]),
        node("Add", ["m2", "b"], ["x"]),
    ]
    inits = [init("W1t", w(1, H, K)), init("W2", w(3, H, H)), init("b", w(2, H))]
    generator = onnxinv.load(save(model(nodes, inits), tmp_path))
    assert [layer.weight.shape for layer in generator.layers] == [(H, K), (H, H)]
    assert_matches_onnxruntime(generator)
