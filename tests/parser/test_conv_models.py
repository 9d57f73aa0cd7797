"""Convolutional generators built node by node the way exporters write them, loaded and compared with
onnxruntime (the self-check at load, plus a batch comparison), with the layer structure they must get."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from builders import F64, assert_matches_onnxruntime, init, model, node, rng_weights, save

import onnxinv
from onnxinv.errors import UnsupportedModelError
from onnxinv.layers import Activation

K = 6  # latent size


def bn_inits(prefix: str, channels: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [
        init(f"{prefix}_s", rng.uniform(0.5, 1.5, channels)),
        init(f"{prefix}_b", rng.normal(0, 0.2, channels)),
        init(f"{prefix}_m", rng.normal(0, 0.2, channels)),
        init(f"{prefix}_v", rng.uniform(0.5, 1.5, channels)),
    ]


def bn(src: str, dst: str, prefix: str):
    return node(
        "BatchNormalization", [src, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [dst]
    )


def dcgan_nodes(latent_4d: bool = True):
    """z (N, K, 1, 1) -> ConvT 4x4 -> BN -> ReLU -> ConvT s2 -> BN -> ReLU -> ConvT s2 -> Tanh: (N, 1, 16, 16)."""
    nodes = [
        node("ConvTranspose", ["z", "w1"], ["c1"], kernel_shape=[4, 4], strides=[1, 1], pads=[0, 0, 0, 0]),
        bn("c1", "n1", "bn1"),
        node("Relu", ["n1"], ["h1"]),
        node("ConvTranspose", ["h1", "w2"], ["c2"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
        bn("c2", "n2", "bn2"),
        node("Relu", ["n2"], ["h2"]),
        node("ConvTranspose", ["h2", "w3", "b3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Tanh", ["c3"], ["x"]),
    ]
    inits = [
        init("w1", rng_weights(1, K, 8, 4, 4)),
        init("w2", rng_weights(2, 8, 4, 4, 4)),
        init("w3", rng_weights(3, 4, 1, 4, 4)),
        init("b3", rng_weights(4, 1)),
        *bn_inits("bn1", 8, 5),
        *bn_inits("bn2", 4, 6),
    ]
    return nodes, inits


def test_dcgan_style_generator(tmp_path):
    nodes, inits = dcgan_nodes()
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1)), tmp_path))
    assert_matches_onnxruntime(generator)
    assert [la.activation for la in generator.layers] == [Activation.RELU, Activation.RELU, Activation.TANH]
    assert [(la.in_features, la.out_features) for la in generator.layers] == [
        (6, 128),
        (128, 256),
        (256, 256),
    ]
    first, second, third = generator.layers
    assert not first.sparse  # a ConvTranspose of a 1x1 latent reads every input: stored dense
    assert second.sparse and third.sparse
    # stride 2, kernel 4: every output pixel reads 2 x 2 taps inside the image (fewer at the border)
    assert second.nnz == 4 * 8 * (2 * 8 - 2) ** 2 and third.nnz == 1 * 4 * (2 * 16 - 2) ** 2
    assert first.source_nodes == ("convtranspose_c1", "batchnormalization_n1", "relu_h1")


def test_dense_latent_then_reshape_then_conv_transpose_compose(tmp_path):
    # (N, K) -> Gemm -> Reshape (N, 8, 4, 4) -> ConvTranspose: one dense (out x K) matrix
    nodes = [
        node("Gemm", ["z", "W", "b"], ["g"], transB=1),
        node("Reshape", ["g", "shape"], ["r"]),
        node("ConvTranspose", ["r", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4]),
        bn("c", "n", "bn"),
        node("Relu", ["n"], ["x"]),
    ]
    inits = [
        init("W", rng_weights(1, 128, K)),
        init("b", rng_weights(2, 128)),
        init("shape", np.array([-1, 8, 4, 4]), np.int64),
        init("w", rng_weights(3, 8, 3, 4, 4)),
        *bn_inits("bn", 3, 4),
    ]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K)), tmp_path))
    assert_matches_onnxruntime(generator)
    (layer,) = generator.layers
    assert (layer.in_features, layer.out_features) == (K, 3 * 8 * 8) and not layer.sparse
    # the Reshape is a no-op and is not listed
    assert layer.source_nodes == ("gemm_g", "convtranspose_c", "batchnormalization_n", "relu_x")


@pytest.mark.parametrize(
    ("coordinate", "rounding"),
    [
        ("asymmetric", "floor"),
        ("half_pixel", "round_prefer_floor"),
        ("pytorch_half_pixel", "round_prefer_ceil"),
    ],
)
def test_upsample_then_conv(tmp_path, coordinate, rounding):
    # torch nn.Upsample(scale_factor=2) + Conv2d(3, padding=1): the selection folds into the conv
    nodes = [
        node("Gemm", ["z", "W", "b"], ["g"], transB=1),
        node("Relu", ["g"], ["h"]),
        node("Reshape", ["h", "shape"], ["r"]),
        node(
            "Resize",
            ["r", "", "scales"],
            ["u"],
            mode="nearest",
            coordinate_transformation_mode=coordinate,
            nearest_mode=rounding,
        ),
        node("Conv", ["u", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("LeakyRelu", ["c1"], ["a1"], alpha=0.2),
        node("Resize", ["a1", "", "scales"], ["u2"], mode="nearest"),
        node("Conv", ["u2", "w2"], ["c2"], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        node("Sigmoid", ["c2"], ["x"]),
    ]
    inits = [
        init("W", rng_weights(1, 4 * 3 * 3, K)),
        init("b", rng_weights(2, 4 * 3 * 3)),
        init("shape", np.array([0, 4, 3, 3]), np.int64),
        init("scales", np.array([1, 1, 2, 2], np.float32)),
        init("w1", rng_weights(3, 5, 4, 3, 3)),
        init("b1", rng_weights(4, 5)),
        init("w2", rng_weights(5, 2, 5, 3, 3)),
    ]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K), opset=13), tmp_path))
    assert_matches_onnxruntime(generator)
    sizes = [(la.in_features, la.out_features) for la in generator.layers]
    assert sizes == [(K, 36), (36, 5 * 36), (5 * 36, 2 * 144)]
    assert generator.layers[2].sparse
    assert "resize_u2" in generator.layers[2].source_nodes


def test_pad_slice_and_per_channel_affine_ops(tmp_path):
    # reflection padding, a constant pad with a value (an offset), a crop by Slice, per-channel Mul/Add
    nodes = [
        node("ConvTranspose", ["z", "w1"], ["c1"], kernel_shape=[3, 3]),  # (N, 4, 3, 3)
        node("Relu", ["c1"], ["h1"]),
        node("Pad", ["h1", "pads_reflect"], ["p1"], mode="reflect"),  # (N, 4, 5, 5)
        node("Pad", ["p1", "pads_const", "value"], ["p2"]),  # (N, 4, 6, 7)
        node("Conv", ["p2", "w2"], ["c2"]),  # (N, 3, 4, 5)
        node("Mul", ["c2", "gain"], ["m2"]),
        node("Add", ["bias", "m2"], ["a2"]),
        node("Slice", ["a2", "starts", "ends", "axes"], ["s2"]),  # (N, 3, 3, 3)
        node("Relu", ["s2"], ["x"]),
    ]
    rng = np.random.default_rng(0)
    inits = [
        init("w1", rng_weights(1, K, 4, 3, 3)),
        init("pads_reflect", np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.int64),
        init("pads_const", np.array([0, 0, 1, 0, 0, 0, 0, 2]), np.int64),
        init("value", np.array(0.75, np.float32)),
        init("w2", rng_weights(2, 3, 4, 3, 3)),
        init("gain", rng.uniform(0.5, 2.0, (3, 1, 1))),
        init("bias", rng.normal(0, 0.5, (1, 3, 1, 1))),
        init("starts", np.array([1, 0]), np.int64),
        init("ends", np.array([4, 100]), np.int64),
        init("axes", np.array([2, -1]), np.int64),
    ]
    m = model(nodes, inits, input_shape=("N", K, 1, 1), opset=13)
    m.graph.node[7].input.append("steps")
    m.graph.initializer.append(init("steps", np.array([1, 2]), np.int64))
    generator = onnxinv.load(save(m, tmp_path))
    assert_matches_onnxruntime(generator)
    assert [la.out_features for la in generator.layers] == [36, 27]


def test_tf2onnx_nhwc_transposes_around_conv_transpose(tmp_path):
    # what tf2onnx writes for Keras Dense -> Reshape -> Conv2DTranspose (channels last): the latent
    # MatMul, an NHWC Reshape, Transpose to NCHW, ConvTranspose, Transpose back, a bias Add on the last axis
    nodes = [
        node("MatMul", ["z", "W"], ["m"]),
        node("Add", ["m", "b"], ["d"]),
        node("Relu", ["d"], ["h"]),
        node("Reshape", ["h", "shape"], ["nhwc"]),
        node("Transpose", ["nhwc"], ["nchw"], perm=[0, 3, 1, 2]),
        node("ConvTranspose", ["nchw", "w"], ["c"], strides=[2, 2], kernel_shape=[3, 3], pads=[1, 1, 0, 0]),
        node("Transpose", ["c"], ["c_nhwc"], perm=[0, 2, 3, 1]),
        node("Add", ["c_nhwc", "bias"], ["a"]),
        node("Tanh", ["a"], ["x"]),
    ]
    inits = [
        init("W", rng_weights(1, K, 4 * 4 * 5)),
        init("b", rng_weights(2, 4 * 4 * 5)),
        init("shape", np.array([-1, 4, 4, 5]), np.int64),
        init("w", rng_weights(3, 5, 2, 3, 3)),
        init("bias", rng_weights(4, 2)),
    ]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K)), tmp_path))
    assert_matches_onnxruntime(generator)
    last = generator.layers[-1]
    assert last.sparse and last.out_features == 8 * 8 * 2  # (4-1)*2 + 3 - 1 = 8 per axis, 2 channels
    assert last.nnz <= 5 * 2 * 9 * 16  # the two permutations compose into the conv without fill-in


def test_two_full_convolutions_without_activation_compose(tmp_path):
    # 3x3 after 3x3 is one 5x5 convolution: fewer than twice the factors' entries, so one layer
    nodes = [
        node("ConvTranspose", ["z", "w0"], ["c0"], kernel_shape=[6, 6]),  # (N, 8, 6, 6)
        node("Relu", ["c0"], ["h0"]),
        node("Conv", ["h0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["x"]),
    ]
    inits = [
        init("w0", rng_weights(1, K, 8, 6, 6)),
        init("w1", rng_weights(2, 8, 8, 3, 3)),
        init("w2", rng_weights(3, 8, 8, 3, 3)),
    ]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1)), tmp_path))
    assert_matches_onnxruntime(generator)
    assert len(generator.layers) == 2
    assert generator.layers[1].source_nodes == ("conv_c1", "conv_c2", "relu_x")


def test_separable_convolution_stays_two_layers(tmp_path):
    # Keras SeparableConv2D: a depthwise 3x3 conv (group = channels) then a pointwise 1x1 conv, no
    # activation between. Their product reads 9 x 8 inputs per output, against 9 + 8 for the factors:
    # kept as two layers, the first with the identity activation, and said so in the notes
    nodes = [
        node("ConvTranspose", ["z", "w0"], ["c0"], kernel_shape=[6, 6]),  # (N, 8, 6, 6)
        node("Relu", ["c0"], ["h0"]),
        node("Conv", ["h0", "wd"], ["dw"], pads=[1, 1, 1, 1], group=8),
        node("Conv", ["dw", "wp", "bp"], ["pw"]),
        node("Relu", ["pw"], ["x"]),
    ]
    inits = [
        init("w0", rng_weights(1, K, 8, 6, 6)),
        init("wd", rng_weights(2, 8, 1, 3, 3)),
        init("wp", rng_weights(3, 8, 8, 1, 1)),
        init("bp", rng_weights(4, 8)),
    ]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1)), tmp_path))
    assert_matches_onnxruntime(generator)
    layers = generator.layers
    assert [la.activation for la in layers] == [Activation.RELU, Activation.IDENTITY, Activation.RELU]
    assert layers[1].source_nodes == ("conv_dw",) and layers[2].source_nodes == ("conv_pw", "relu_x")
    assert not np.any(layers[1].bias) and np.any(layers[2].bias)
    assert any("kept as 2 linear layers" in note for note in generator.notes)


def test_wide_dense_decoder_loads_and_inverts(tmp_path):
    # 20-256-12288 Tanh decoder of 64x64 RGB images, then x * 0.5 + 0.5: the elementwise ops after the
    # last layer become a diagonal, not a 12288 x 12288 matrix
    from onnxinv.building import build_model, random_generator_layers

    layers = random_generator_layers([20, 256, 12288], output_activation=Activation.TANH, rng=7)
    m = build_model(layers)
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = "tanh_out"
    m.graph.node.extend(
        [node("Mul", ["tanh_out", "half"], ["scaled"]), node("Add", ["scaled", "half"], [out])]
    )
    m.graph.initializer.append(init("half", np.float32(0.5)))
    generator = onnxinv.load(save(m, tmp_path))
    assert_matches_onnxruntime(generator, batch=3)
    first, second, scale = generator.layers
    assert not first.sparse and not second.sparse and second.weight.shape == (12288, 256)
    assert scale.sparse and scale.nnz == 12288 and scale.activation is Activation.IDENTITY
    np.testing.assert_allclose(scale.bias, 0.5)
    # the diagonal's orthogonal columns give its rank exactly, so Theorem 2 holds at every layer
    z = np.random.default_rng(1).standard_normal(20)
    x = generator.run_onnx(z).reshape(-1)
    result = onnxinv.invert(generator, x)
    assert result.verdict is onnxinv.Verdict.UNIQUE, result.message
    assert result.evidence.kind.value == "layerwise"
    np.testing.assert_allclose(result.z, z, atol=1e-5)


def test_float64_conv_model_parses_without_onnxruntime_kernels(tmp_path):
    # onnxruntime has no float64 ConvTranspose: the shape probe falls back to the reference evaluator
    from onnx.reference import ReferenceEvaluator

    nodes, inits = dcgan_nodes()
    inits = [init(t.name, np.frombuffer(t.raw_data, np.float32).reshape(t.dims), np.float64) for t in inits]
    m = model(nodes, inits, input_shape=("N", K, 1, 1), elem=F64)
    generator = onnxinv.load(save(m, tmp_path), self_check=False)
    z = np.random.default_rng(0).standard_normal((2, K))
    expected = ReferenceEvaluator(m).run(None, {"z": z.reshape(2, K, 1, 1)})[0].reshape(2, -1)
    np.testing.assert_allclose(generator.forward(z), expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# refusals


def _error(tmp_path, m) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        onnxinv.load(save(m, tmp_path))
    return str(info.value)


def test_bilinear_resize_refused(tmp_path):
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[2, 2]),
        node("Resize", ["c", "", "scales"], ["x"], name="up", mode="linear"),
    ]
    inits = [init("w", rng_weights(1, K, 2, 2, 2)), init("scales", np.array([1, 1, 2, 2], np.float32))]
    text = _error(tmp_path, model(nodes, inits, input_shape=("N", K, 1, 1), opset=13))
    assert "node 'up' (Resize, opset 13)" in text and "mode 'linear' interpolates" in text


def test_fractional_upsampling_refused(tmp_path):
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[2, 2]),
        node("Resize", ["c", "", "scales"], ["x"], name="up", mode="nearest"),
    ]
    inits = [init("w", rng_weights(1, K, 2, 2, 2)), init("scales", np.array([1, 1, 1.5, 2], np.float32))]
    text = _error(tmp_path, model(nodes, inits, input_shape=("N", K, 1, 1), opset=13))
    assert "scale 1.5 is not a positive integer" in text


def test_tie_breaking_combination_refused(tmp_path):
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[2, 2]),
        node(
            "Resize",
            ["c", "", "scales"],
            ["x"],
            name="up",
            mode="nearest",
            coordinate_transformation_mode="tf_half_pixel_for_nn",
            nearest_mode="ceil",
        ),
    ]
    inits = [init("w", rng_weights(1, K, 2, 2, 2)), init("scales", np.array([1, 1, 2, 2], np.float32))]
    text = _error(tmp_path, model(nodes, inits, input_shape=("N", K, 1, 1), opset=13))
    assert "tf_half_pixel_for_nn" in text and "ambiguous" in text


def test_padding_the_batch_axis_refused(tmp_path):
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[2, 2]),
        node("Pad", ["c", "pads"], ["x"], name="padb"),
    ]
    inits = [
        init("w", rng_weights(1, K, 2, 2, 2)),
        init("pads", np.array([1, 0, 0, 0, 0, 0, 0, 0]), np.int64),
    ]
    text = _error(tmp_path, model(nodes, inits, input_shape=("N", K, 1, 1)))
    assert "node 'padb' (Pad" in text and "pads the batch axis" in text


def test_layer_over_the_entry_cap_refused(tmp_path, monkeypatch):
    from onnxinv.parser import conv_handlers

    monkeypatch.setattr(conv_handlers, "MAX_LAYER_ELEMENTS", 1000)
    nodes, inits = dcgan_nodes()
    text = _error(tmp_path, model(nodes, inits, input_shape=("N", K, 1, 1)))
    assert "(ConvTranspose, opset 17)" in text and "over the limit of 1,000" in text


def test_conv_weight_computed_from_the_input_refused(tmp_path):
    nodes = [
        node("Reshape", ["z", "shape"], ["img"]),
        node("Conv", ["img", "img"], ["x"], name="selfconv"),
    ]
    inits = [init("shape", np.array([1, 1, 2, 3]), np.int64)]
    text = _error(tmp_path, model(nodes, inits, input_shape=(K,)))
    assert "node 'selfconv' (Conv" in text and "several tensors computed from the input" in text


def test_sparse_weights_are_csr_arrays(tmp_path):
    nodes, inits = dcgan_nodes()
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1)), tmp_path))
    for layer in generator.layers[1:]:
        assert isinstance(layer.weight, sp.csr_array) and layer.weight.has_canonical_format


@pytest.mark.parametrize(
    ("op", "opset", "use_attr"),
    [("Upsample", 7, True), ("Upsample", 9, False), ("Resize", 10, False)],
    ids=["upsample7", "upsample9", "resize10"],
)
def test_old_upsampling_ops(tmp_path, op, opset, use_attr):
    # opsets before 11: nearest upsampling is asymmetric with floor rounding
    scales = [1.0, 1.0, 2.0, 3.0]
    inputs = ["c"] if use_attr else ["c", "scales"]
    attrs = {"mode": "nearest", **({"scales": scales} if use_attr else {})}
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[2, 2]),
        node(op, inputs, ["u"], **attrs),
        node("Conv", ["u", "w2"], ["x"], pads=[1, 1, 1, 1]),
    ]
    inits = [init("w", rng_weights(1, K, 3, 2, 2)), init("w2", rng_weights(2, 2, 3, 3, 3))]
    if not use_attr:
        inits.append(init("scales", np.array(scales, np.float32)))
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1), opset=opset), tmp_path))
    assert_matches_onnxruntime(generator)
    assert generator.output_dim == 2 * 4 * 6


def test_resize_to_sizes_computed_at_run_time(tmp_path):
    # F.interpolate(x, size=(8, 8)) then a conv: sizes = Concat(Shape(x)[:2], [8, 8]), computed from
    # the variable; the scales are the probed size ratios
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[4, 4]),  # (N, 3, 4, 4)
        node("Relu", ["c"], ["h"]),
        node("Shape", ["h"], ["shape"]),
        node("Slice", ["shape", "zero", "two"], ["nc"]),
        node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        node("Resize", ["h", "", "", "sizes"], ["u"], mode="nearest", nearest_mode="floor"),
        node("Conv", ["u", "w2"], ["x"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        init("w", rng_weights(1, K, 3, 4, 4)),
        init("zero", np.array([0]), np.int64),
        init("two", np.array([2]), np.int64),
        init("hw", np.array([8, 8]), np.int64),
        init("w2", rng_weights(2, 2, 3, 3, 3)),
    ]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1), opset=13), tmp_path))
    assert_matches_onnxruntime(generator)
    assert [(la.in_features, la.out_features) for la in generator.layers] == [(K, 48), (48, 128)]
    assert generator.layers[1].source_nodes == ("resize_u", "conv_x")


def test_dense_then_upsampling_stays_two_layers(tmp_path):
    # the dense product would repeat every row 4 times: 4x the entries, so the selection is its own
    # (identity) layer
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[4, 4]),  # dense: a 1x1 latent
        node("Resize", ["c", "", "scales"], ["x"], mode="nearest"),
    ]
    inits = [init("w", rng_weights(1, K, 3, 4, 4)), init("scales", np.array([1, 1, 2, 2], np.float32))]
    generator = onnxinv.load(save(model(nodes, inits, input_shape=("N", K, 1, 1), opset=13), tmp_path))
    assert_matches_onnxruntime(generator)
    first, second = generator.layers
    assert not first.sparse and second.sparse and second.nnz == 3 * 8 * 8
    assert any("kept as 2 linear layers" in note for note in generator.notes)


def test_pad_with_attributes_before_opset_11(tmp_path):
    nodes = [
        node("ConvTranspose", ["z", "w"], ["c"], kernel_shape=[3, 3]),
        node("Pad", ["c"], ["p"], pads=[0, 0, 1, 2, 0, 0, 0, 1], value=-0.5),
        node("Relu", ["p"], ["x"]),
    ]
    generator = onnxinv.load(
        save(
            model(nodes, [init("w", rng_weights(1, K, 2, 3, 3))], input_shape=("N", K, 1, 1), opset=9),
            tmp_path,
        )
    )
    assert_matches_onnxruntime(generator)
    assert generator.output_dim == 2 * 4 * 6
    # the constant border is an offset: -0.5 where the pad reads no input
    assert np.count_nonzero(generator.layers[-1].bias == -0.5) == 2 * 4 * 6 - 2 * 3 * 3
