"""The shipped convolutional generators: layer structure, exporter agreement, conditioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import assert_matches_onnxruntime

import onnxinv
from onnxinv.layers import Activation

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
GANS = ["digits_dcgan", "digits_dcgan_linear", "digits_upconv", "digits_cdcgan"]
LABEL = np.load(SAMPLES / "digits_cdcgan_legacy.fix.label.npy", allow_pickle=False)


def load(stem: str, **kwargs) -> onnxinv.Generator:
    if stem.startswith("digits_cdcgan") and "fixed" not in kwargs:
        kwargs["fixed"] = {"label": LABEL}
    return onnxinv.load(SAMPLES / f"{stem}.onnx", **kwargs)


@pytest.mark.parametrize(
    "stem", [f"{g}_{e}" for g in GANS for e in ("legacy", "dynamo")] + ["digits_keras_tf2onnx"]
)
def test_conv_generator_layers(stem):
    generator = load(stem)
    assert_matches_onnxruntime(generator, batch=8)
    first, second, third = generator.layers
    assert [la.activation for la in generator.layers] == [Activation.RELU, Activation.RELU, Activation.TANH]
    # the latent (or Linear) stem reads every latent value: dense; the convolutions: sparse
    assert not first.sparse and second.sparse and third.sparse
    assert generator.latent_dim == 16 and generator.output_dim == 256
    # the last layer contracts (feature maps of 2048 or 1024 values onto 256 pixels): layer-wise
    # inversion cannot recover its input, which the integrator's audit reports
    assert first.expansion > 1 and second.expansion > 1 and third.expansion < 1


@pytest.mark.parametrize("gan", GANS)
def test_both_torch_exporters_agree(gan):
    # the dynamo export folds BatchNormalization into the convolutions; the legacy one keeps it
    legacy, dynamo = load(f"{gan}_legacy"), load(f"{gan}_dynamo")
    assert any("BatchNormalization" in n for la in legacy.layers for n in la.source_nodes)
    z = np.random.default_rng(0).standard_normal((6, 16))
    np.testing.assert_allclose(legacy.forward(z), dynamo.forward(z), rtol=1e-5, atol=1e-5)


def test_conditional_generator_depends_on_its_label():
    z = np.random.default_rng(1).standard_normal((4, 16))
    three = load("digits_cdcgan_legacy")
    seven = load("digits_cdcgan_legacy", fixed={"label": np.eye(10, dtype=np.float32)[7][None]})
    assert_matches_onnxruntime(seven)
    assert np.abs(three.forward(z) - seven.forward(z)).max() > 0.5
    # the label enters only through the first layer's bias
    np.testing.assert_array_equal(three.layers[0].weight, seven.layers[0].weight)
    assert not np.allclose(three.layers[0].bias, seven.layers[0].bias)


def test_conditional_generator_without_its_label_is_refused():
    with pytest.raises(onnxinv.OnnxInvError, match="label"):
        onnxinv.load(SAMPLES / "digits_cdcgan_legacy.onnx")


def test_shape_probe_fallback_does_not_run_convolutions(monkeypatch):
    # the legacy export's Unflatten subgraph (Shape, Slice, Mod, Concat) defeats shape inference, so the
    # probe evaluates node by node; the convolutions, whose shapes are inferred by then, are skipped
    from onnxinv.parser import probe

    evaluated = []
    original = probe._one_node_model

    def recording(view, node, feeds):
        evaluated.append(node.op_type)
        return original(view, node, feeds)

    monkeypatch.setattr(probe, "_one_node_model", recording)
    generator = load("digits_dcgan_linear_legacy")
    assert "Reshape" in evaluated and "ConvTranspose" not in evaluated
    assert_matches_onnxruntime(generator)
