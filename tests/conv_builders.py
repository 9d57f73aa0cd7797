"""Tiny convolutional generators built node by node as exporters write them (shared by the inversion
and audit tests of sparse layers)."""

from __future__ import annotations

from builders import init, model, node, rng_weights

K = 4  # latent channels (z is (N, K, 1, 1))


def expanding_model():
    """z (N, 4, 1, 1) -> ConvT 4x4 (8, 4, 4) -> ReLU -> ConvT s2 (8, 8, 8) -> ReLU -> ConvT s2 (2, 16, 16)."""
    nodes = [
        node("ConvTranspose", ["z", "w1", "b1"], ["c1"], kernel_shape=[4, 4]),
        node("Relu", ["c1"], ["h1"]),
        node(
            "ConvTranspose",
            ["h1", "w2", "b2"],
            ["c2"],
            kernel_shape=[4, 4],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        node("Relu", ["c2"], ["h2"]),
        node(
            "ConvTranspose", ["h2", "w3", "b3"], ["x"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
    ]
    inits = [
        init("w1", rng_weights(11, K, 8, 4, 4)),
        init("b1", rng_weights(12, 8)),
        init("w2", rng_weights(13, 8, 8, 4, 4)),
        init("b2", rng_weights(14, 8)),
        init("w3", rng_weights(15, 8, 2, 4, 4)),
        init("b3", rng_weights(16, 2)),
    ]
    return model(nodes, inits, input_shape=("N", K, 1, 1))


def contracting_model():
    """z (N, 4, 1, 1) -> ConvT 4x4 (8, 4, 4) -> ReLU -> ConvT s2 (8, 8, 8) -> ReLU -> Conv 3x3 s2 (1, 4, 4)
    -> Tanh: the last layer maps 512 values onto 16."""
    nodes = [
        node("ConvTranspose", ["z", "w1", "b1"], ["c1"], kernel_shape=[4, 4]),
        node("Relu", ["c1"], ["h1"]),
        node(
            "ConvTranspose",
            ["h1", "w2", "b2"],
            ["c2"],
            kernel_shape=[4, 4],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        node("Relu", ["c2"], ["h2"]),
        node("Conv", ["h2", "w3", "b3"], ["c3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Tanh", ["c3"], ["x"]),
    ]
    inits = [
        init("w1", rng_weights(21, K, 8, 4, 4)),
        init("b1", rng_weights(22, 8)),
        init("w2", rng_weights(23, 8, 8, 4, 4)),
        init("b2", rng_weights(24, 8)),
        init("w3", 0.3 * rng_weights(25, 1, 8, 3, 3)),
        init("b3", rng_weights(26, 1)),
    ]
    return model(nodes, inits, input_shape=("N", K, 1, 1))
