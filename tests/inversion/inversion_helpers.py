"""Helpers for the inversion tests: small generators built in code, and the oracles (z*, onnxruntime)."""

from __future__ import annotations

import numpy as np

from onnxinv.building import random_generator_layers
from onnxinv.layers import Activation, Generator, Layer


def make_generator(
    sizes: list[int],
    seed: int = 0,
    *,
    dtype: str = "float64",
    bias_shift: list[float] | None = None,
    **kwargs,
) -> Generator:
    """``Generator.from_layers(random_generator_layers(...))``; ``bias_shift`` adds a constant per layer.

    float64 models by default so that onnxruntime can verify residuals far below 1e-6.
    """
    layers = random_generator_layers(sizes, rng=seed, **kwargs)
    if bias_shift is not None:
        layers = [
            Layer(lay.weight, lay.bias + shift, lay.activation, lay.slope, lay.source_nodes)
            for lay, shift in zip(layers, bias_shift)
        ]
    return Generator.from_layers(layers, dtype=dtype)


def latent(k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(size=k)


def rel_err(z: np.ndarray, z_true: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(z) - z_true) / np.linalg.norm(z_true))


def onnx_residual(generator: Generator, z: np.ndarray, x: np.ndarray) -> float:
    """Relative l2 residual with the forward pass done by onnxruntime (the oracle)."""
    out = generator.run_onnx(np.asarray(z))
    return float(np.linalg.norm(out - x) / np.linalg.norm(x))


__all__ = ["Activation", "latent", "make_generator", "onnx_residual", "rel_err"]
