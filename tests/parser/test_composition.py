"""The composition rule for affine steps between activations: what is multiplied, what stays apart."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from onnxinv.layers import Activation
from onnxinv.parser import composition, lowering
from onnxinv.parser.composition import PendingAffine


def dense_equivalent(layers) -> tuple[np.ndarray, np.ndarray]:
    """The affine map of consecutive identity layers, multiplied out densely (small cases only)."""
    weight, bias = None, None
    for layer in layers:
        w = layer.dense_weight()
        weight = w if weight is None else w @ weight
        bias = layer.bias if bias is None else w @ bias + layer.bias
    return weight, bias


def test_elementwise_steps_on_the_identity_stay_diagonal():
    n = 12288  # a 64x64 RGB image: a dense n x n diagonal would take 1.2 GB
    pending = PendingAffine(n)
    pending.push("mul", n, scale=np.full(n, 0.5))
    pending.push("add", n, offset=np.full(n, 0.5))
    pending.push("neg", n, scale=-np.ones(n))
    (layer,), note = pending.close(Activation.IDENTITY, 0.0, None)
    assert note is None and layer.sparse and layer.nnz == n
    np.testing.assert_array_equal(layer.weight.diagonal(), -0.5)
    np.testing.assert_array_equal(layer.bias, -0.5)
    assert layer.source_nodes == ("mul", "add", "neg")


def test_scale_after_a_matrix_scales_its_rows_in_place_of_storage():
    rng = np.random.default_rng(0)
    conv, out = lowering.conv_matrix((2, 5, 5), rng.standard_normal((3, 2, 3, 3)), pads=[1, 1, 1, 1])
    scale = np.repeat(rng.uniform(0.5, 2.0, 3), 25)
    pending = PendingAffine(50)
    pending.push("conv", 75, matrix=conv, offset=np.ones(75))
    pending.push("bn", 75, scale=scale, offset=np.full(75, 0.25))
    (layer,), _ = pending.close(Activation.RELU, 0.0, "relu")
    assert layer.sparse and layer.nnz == conv.nnz
    np.testing.assert_allclose(layer.dense_weight(), scale[:, None] * conv.toarray(), rtol=1e-15)
    np.testing.assert_allclose(layer.bias, scale + 0.25, rtol=1e-15)


def test_selection_then_conv_is_one_matrix_no_larger_than_the_conv():
    rng = np.random.default_rng(1)
    up, shape = lowering.nearest_resize_matrix((4, 6, 6), (1, 2, 2), "asymmetric", "floor")
    conv, out = lowering.conv_matrix(shape, rng.standard_normal((5, 4, 3, 3)), pads=[1, 1, 1, 1])
    pending = PendingAffine(up.shape[1])
    pending.push("up", up.shape[0], matrix=up)
    pending.push("conv", conv.shape[0], matrix=conv)
    (layer,), note = pending.close(Activation.RELU, 0.0, None)
    assert note is None and layer.nnz <= conv.nnz
    np.testing.assert_allclose(layer.dense_weight(), (conv @ up).toarray(), rtol=1e-14)


def test_dense_factors_always_multiply():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 500)), rng.standard_normal((500, 5))  # a bottleneck: 500 -> 5 -> 500
    pending = PendingAffine(500)
    pending.push("g1", 5, matrix=a)
    pending.push("g2", 500, matrix=b)
    (layer,), note = pending.close(Activation.IDENTITY, 0.0, None)
    assert note is None and layer.weight.shape == (500, 500) and not layer.sparse


def test_growing_products_stay_apart_with_their_offsets_right():
    # a depthwise then a pointwise convolution: their product is ~4x their entries
    rng = np.random.default_rng(3)
    depthwise, shape = lowering.conv_matrix(
        (8, 10, 10), rng.standard_normal((8, 1, 3, 3)), pads=[1] * 4, group=8
    )
    pointwise, _ = lowering.conv_matrix(shape, rng.standard_normal((8, 8, 1, 1)))
    n = depthwise.shape[0]
    c1, c2 = rng.standard_normal(n), rng.standard_normal(n)
    pending = PendingAffine(n)
    pending.push("dw", n, matrix=depthwise, offset=c1)
    pending.push("pw", n, matrix=pointwise, offset=c2)
    layers, note = pending.close(Activation.RELU, 0.0, "act")
    assert len(layers) == 2 and "kept as 2 linear layers" in note
    assert layers[0].activation is Activation.IDENTITY and layers[1].activation is Activation.RELU
    weight, bias = dense_equivalent(layers)
    np.testing.assert_allclose(weight, (pointwise @ depthwise).toarray(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(bias, pointwise @ c1 + c2, rtol=1e-13, atol=1e-13)


def test_full_sparse_products_are_stored_dense():
    # a ConvTranspose of a 1x1 latent: every output reads every input
    w = np.random.default_rng(4).standard_normal((6, 4, 4, 4))
    matrix, _ = lowering.conv_transpose_matrix((6, 1, 1), w)
    assert matrix.nnz == matrix.shape[0] * matrix.shape[1]
    assert not sp.issparse(composition.finish(matrix))
    assert sp.issparse(composition.finish(lowering.permutation_matrix((3, 4), (1, 0))))


def test_product_bound_is_an_upper_bound():
    rng = np.random.default_rng(5)
    for _ in range(10):
        a = sp.random_array((30, 20), density=0.2, rng=rng, format="csr")
        b = sp.random_array((25, 30), density=0.2, rng=rng, format="csr")
        assert composition.product_entries_bound(b, a) >= (b @ a).nnz


def test_weights_contradicting_the_probed_shapes_are_refused(tmp_path):
    # a damaged transB attribute (no type): shape inference still says 6 outputs, the weight used as
    # stored maps 6 values to 3; found by the load fuzzer
    import pytest
    from builders import init, model, node, rng_weights, save

    import onnxinv
    from onnxinv.errors import UnsupportedModelError

    gemm = node("Gemm", ["z", "W1", "b1"], ["x"], name="g", transB=1)
    gemm.attribute[0].type = 0
    m = model([gemm], [init("W1", rng_weights(1, 6, 3)), init("b1", rng_weights(2, 6))], input_shape=("N", 3))
    with pytest.raises(UnsupportedModelError) as info:
        onnxinv.load(save(m, tmp_path))
    assert "node 'g' (Gemm" in str(info.value) and "its weights map 6 values to 3" in str(info.value)
