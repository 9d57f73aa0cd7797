"""Fixtures of the command-line tests: tiny generators saved to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import init, model, node, save
from cli_helpers import save_generator

from onnxinv.layers import Activation


@pytest.fixture
def relu_model(tmp_path) -> Path:
    """An expansive 5-40-120 ReLU generator: clean observations invert uniquely."""
    return save_generator(tmp_path, "relu.onnx", [5, 40, 120], rng=3)


@pytest.fixture
def image_model(tmp_path) -> Path:
    """A 4-32-64 generator with a sigmoid output: its 64 outputs read as an 8x8 image."""
    return save_generator(tmp_path, "image.onnx", [4, 32, 64], output_activation=Activation.SIGMOID, rng=5)


@pytest.fixture
def unsupported_model(tmp_path) -> Path:
    """Gemm -> Softplus -> Gemm -> Elu: two refused nodes on the chain."""
    rng = np.random.default_rng(0)
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a1"], name="dense1", transB=1),
        node("Softplus", ["a1"], ["h1"], name="soft"),
        node("Gemm", ["h1", "W2", "b2"], ["a2"], name="dense2", transB=1),
        node("Elu", ["a2"], ["x"], name="elu"),
    ]
    inits = [
        init("W1", rng.normal(size=(8, 4))),
        init("b1", np.zeros(8)),
        init("W2", rng.normal(size=(12, 8))),
        init("b2", np.zeros(12)),
    ]
    return save(
        model(nodes, inits, input_shape=("N", 4), output_shape=("N", 12)), tmp_path, "unsupported.onnx"
    )
