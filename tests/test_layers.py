"""The normalized layer record: dense and sparse weights, one slope or one per unit."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from onnxinv.layers import Activation, Generator, Layer


def test_sparse_weight_forward_matches_dense():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((30, 12)) * (rng.random((30, 12)) < 0.2)
    bias = rng.standard_normal(30)
    a = Layer(dense, bias, Activation.RELU)
    b = Layer(sp.csr_array(dense), bias, Activation.RELU)
    assert b.sparse and not a.sparse
    assert b.nnz == int(np.count_nonzero(dense))
    z = rng.standard_normal((5, 12))
    np.testing.assert_allclose(b.forward(z), a.forward(z), rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.forward(z[0]), a.forward(z[0]), rtol=0, atol=1e-12)
    assert isinstance(b.weight_rows(np.array([0, 3])), sp.csr_array)
    np.testing.assert_array_equal(b.dense_weight(), dense)


def test_sparse_weight_is_read_only():
    layer = Layer(sp.csr_array(np.eye(3)), np.zeros(3))
    with pytest.raises(ValueError):
        layer.weight.data[0] = 5.0


def test_per_unit_slopes():
    w = np.eye(3)
    shared = Layer(w, np.zeros(3), Activation.LEAKY_RELU, [0.2, 0.2, 0.2])
    assert shared.slope == 0.2 and not shared.per_unit_slope
    per = Layer(w, np.zeros(3), Activation.LEAKY_RELU, [0.1, 0.2, 0.3])
    assert per.per_unit_slope
    np.testing.assert_allclose(per.forward(np.array([-1.0, -1.0, 1.0])), [-0.1, -0.2, 1.0])
    np.testing.assert_allclose(per.slopes(np.array([2, 0])), [0.3, 0.1])
    assert "per unit" in per.describe_activation()
    with pytest.raises(ValueError):
        Layer(w, np.zeros(3), Activation.LEAKY_RELU, [0.1, 0.2])


def test_generator_pickles_as_plain_data_and_checks_against_onnxruntime():
    rng = np.random.default_rng(1)
    layers = [
        Layer(rng.standard_normal((8, 4)), np.zeros(8), Activation.LEAKY_RELU, rng.uniform(0.1, 0.3, 8)),
        Layer(sp.csr_array(np.diag(rng.uniform(1, 2, 8))), rng.standard_normal(8)),
    ]
    g = Generator.from_layers(layers)
    z = rng.standard_normal((3, 4))
    first = g.run_onnx(z)  # builds and caches a session outside the record
    copy = pickle.loads(pickle.dumps(g))
    np.testing.assert_allclose(copy.run_onnx(z), first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.forward(z), first, rtol=1e-4, atol=1e-5)
