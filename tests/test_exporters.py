"""Models exported live by the real exporters, when they are installed (they are optional extras)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import assert_matches_onnxruntime

import onnxinv
from onnxinv.layers import Activation


def _torch_decoder():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch, torch.nn.Sequential(
        torch.nn.Linear(5, 12),
        torch.nn.BatchNorm1d(12),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(12, 16),
        torch.nn.PReLU(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Unflatten(1, (1, 4, 4)),
    ).eval()


def test_torch_legacy_exporter(tmp_path):
    torch, decoder = _torch_decoder()
    path = tmp_path / "legacy.onnx"
    torch.onnx.export(decoder, torch.zeros(2, 5), path, dynamo=False, opset_version=17, input_names=["z"],
                      output_names=["image"], dynamic_axes={"z": {0: "n"}, "image": {0: "n"}})  # fmt: skip
    generator = onnxinv.load(path)
    acts = [layer.activation for layer in generator.layers]
    assert acts == [Activation.LEAKY_RELU, Activation.LEAKY_RELU, Activation.TANH]
    assert_matches_onnxruntime(generator)
    z = np.random.default_rng(0).standard_normal((3, 5))
    with torch.no_grad():
        expected = decoder(torch.tensor(z, dtype=torch.float32)).numpy().reshape(3, -1)
    np.testing.assert_allclose(generator.forward(z), expected, rtol=1e-4, atol=1e-5)


def test_torch_dynamo_exporter_with_external_data(tmp_path):
    torch, decoder = _torch_decoder()
    pytest.importorskip("onnxscript")
    path = tmp_path / "dynamo.onnx"
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(decoder, (torch.zeros(2, 5),), path, dynamo=True, external_data=True,
                      dynamic_shapes=({0: batch},))  # fmt: skip
    generator = onnxinv.load(path)
    assert len(generator.layers) == 3
    assert_matches_onnxruntime(generator)


def test_skl2onnx_mlp_regressor(tmp_path):
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 3))
    y = np.tanh(z @ rng.standard_normal((3, 10)))
    for act in ("relu", "tanh", "logistic"):
        mlp = MLPRegressor(hidden_layer_sizes=(8,), activation=act, max_iter=50, random_state=0).fit(z, y)
        onx = skl2onnx.convert_sklearn(
            mlp, initial_types=[("z", FloatTensorType([None, 3]))], target_opset=17
        )
        path = tmp_path / f"mlp_{act}.onnx"
        path.write_bytes(onx.SerializeToString())
        generator = onnxinv.load(path)
        assert_matches_onnxruntime(generator)
        np.testing.assert_allclose(generator.forward(z[:5]), mlp.predict(z[:5]), rtol=1e-4, atol=1e-5)
