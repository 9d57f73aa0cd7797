"""Reshape forms, batch dims (value, name, missing, fixed > 1) and image-shaped inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest
from builders import assert_matches_onnxruntime, const_node, init, model, node, rng_weights, save

import onnxinv

K, H = 4, 6


def _dense_to_16(last_input: str, nodes: list, inits: list, out: str = "flat") -> None:
    nodes += [
        node("Gemm", [last_input, "W1", "b1"], ["a1"], transB=1),
        node("Relu", ["a1"], ["h1"]),
        node("Gemm", ["h1", "W2", "b2"], [out], transB=1),
    ]
    inits += [
        init("W1", rng_weights(1, H, K)),
        init("b1", rng_weights(2, H)),
        init("W2", rng_weights(3, 16, H)),
        init("b2", rng_weights(4, 16)),
    ]


def test_reshape_with_constant_shape_from_initializer_and_constant_node(tmp_path):
    nodes, inits = [], [init("shape1", np.array([-1, 1, 4, 4]), np.int64)]
    _dense_to_16("z", nodes, inits)
    nodes += [
        node("Reshape", ["flat", "shape1"], ["img"]),
        const_node("shape2", np.array([0, 16]), np.int64),
        node("Reshape", ["img", "shape2"], ["x"]),
    ]
    generator = onnxinv.load(save(model(nodes, inits), tmp_path))
    assert len(generator.layers) == 2
    assert_matches_onnxruntime(generator)


def test_reshape_shape_computed_at_run_time(tmp_path):
    # torch's nn.Unflatten: Shape -> Gather -> Unsqueeze -> Concat feeding Reshape
    nodes, inits = (
        [],
        [
            init("idx0", np.array(0), np.int64),
            init("axes0", np.array([0]), np.int64),
            init("rest", np.array([1, 4, 4]), np.int64),
        ],
    )
    _dense_to_16("z", nodes, inits)
    nodes += [
        node("Shape", ["flat"], ["s"]),
        node("Gather", ["s", "idx0"], ["n"], axis=0),
        node("Unsqueeze", ["n", "axes0"], ["n1"]),
        node("Concat", ["n1", "rest"], ["target"], axis=0),
        node("Reshape", ["flat", "target"], ["x"]),
    ]
    generator = onnxinv.load(save(model(nodes, inits, output_shape=["N", 1, 4, 4]), tmp_path))
    assert generator.output_dim == 16
    assert_matches_onnxruntime(generator)


def test_flatten_squeeze_unsqueeze_dropout_cast_on_image_input(tmp_path):
    # input [1, 1, 2, 2] image-shaped latent, output [N, 16, 1]
    nodes, inits = [node("Flatten", ["z"], ["zf"], axis=1), node("Dropout", ["zf"], ["zd"])], []
    _dense_to_16("zd", nodes, inits)
    nodes += [
        node("Cast", ["flat"], ["c"], to=1),
        node("Unsqueeze", ["c", "ax"], ["u"]),
        node("Squeeze", ["u", "ax"], ["s"]),
        node("Unsqueeze", ["s", "ax"], ["x"]),
    ]
    inits.append(init("ax", np.array([2]), np.int64))
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", 1, 2, 2)), tmp_path))
    assert generator.sample_input_shape == (1, 2, 2)
    assert_matches_onnxruntime(generator)


@pytest.mark.parametrize("batch_dim", ["batch", None, 1, 3])
def test_batch_dim_as_name_missing_or_fixed(tmp_path, batch_dim):
    nodes, inits = [], []
    _dense_to_16("z", nodes, inits, out="x")
    generator = onnxinv.load(save(model(nodes, inits, input_shape=(batch_dim, K)), tmp_path))
    assert generator.batch_size == (batch_dim if isinstance(batch_dim, int) else None)
    assert_matches_onnxruntime(generator, batch=7)  # 7 is not a multiple of a fixed batch of 3


def test_fixed_batch_baked_into_reshape(tmp_path):
    # a static dynamo export bakes the example batch size into the Reshape shapes
    nodes, inits = [], [init("shape", np.array([2, 1, 4, 4]), np.int64)]
    _dense_to_16("z", nodes, inits)
    nodes.append(node("Reshape", ["flat", "shape"], ["x"]))
    generator = onnxinv.load(save(model(nodes, inits, input_shape=(2, K)), tmp_path))
    assert generator.batch_size == 2
    assert_matches_onnxruntime(generator, batch=5)


def test_rank3_input_with_matmul_and_bias_first(tmp_path):
    # torch legacy export of a rank-3 input [1, 1, k]: MatMul + Add(bias, y)
    nodes = [
        node("MatMul", ["z", "W1t"], ["m1"]),
        node("Add", ["b1", "m1"], ["a1"]),
        node("Relu", ["a1"], ["x"]),
    ]
    inits = [init("W1t", rng_weights(1, K, H)), init("b1", rng_weights(2, H))]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", 1, K)), tmp_path))
    assert (generator.latent_dim, generator.output_dim) == (K, H)
    assert_matches_onnxruntime(generator)


def test_multi_target_output_reshaped_to_a_column(tmp_path):
    # skl2onnx MLPRegressor: Cast, MatMul + Add, final Reshape(-1, 1) gives (N*n, 1)
    nodes = [node("Cast", ["z"], ["zc"], to=1)]
    inits = [init("col", np.array([-1, 1]), np.int64)]
    _dense_to_16("zc", nodes, inits)
    nodes.append(node("Reshape", ["flat", "col"], ["x"]))
    generator = onnxinv.load(
        save(model(nodes, inits, input_shape=(None, K), output_shape=[None, 1]), tmp_path)
    )
    assert generator.output_dim == 16
    assert_matches_onnxruntime(generator)
