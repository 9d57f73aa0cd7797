"""Write a layer list as an ONNX model: the inverse of the parser.

Used for generators built in code (their oracle needs a model) and by tests and scripts that need
small models with known weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinv.layers import Activation, Layer

# onnxruntime 1.31 refuses the IR version onnx 1.23 writes by default.
IR_VERSION = 10
_ELEM_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


def build_model(
    layers: Sequence[Layer],
    *,
    dtype: str = "float32",
    opset: int = 17,
    input_name: str = "z",
    output_name: str = "x",
    batch_dim: int | str | None = "N",
) -> onnx.ModelProto:
    """A model of Gemm(transB=1) + activation nodes computing the layers' forward pass."""
    if dtype not in _ELEM_TYPES:
        raise ValueError(f"dtype must be one of {sorted(_ELEM_TYPES)}, got {dtype!r}")
    np_dtype = np.dtype(dtype)
    elem = _ELEM_TYPES[dtype]
    nodes, inits = [], []
    current = input_name
    for i, layer in enumerate(layers):
        w_name, b_name, gemm_out = f"W{i}", f"b{i}", f"gemm{i}"
        # a sparse weight is written dense: generators built in code are small
        inits.append(numpy_helper.from_array(layer.dense_weight().astype(np_dtype), w_name))
        inits.append(numpy_helper.from_array(layer.bias.astype(np_dtype), b_name))
        last = i == len(layers) - 1
        has_act = layer.activation is not Activation.IDENTITY
        out = output_name if last and not has_act else gemm_out
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], [out], name=f"dense{i}", transB=1))
        if has_act:
            act_out = output_name if last else f"h{i + 1}"
            if layer.activation is Activation.LEAKY_RELU and layer.per_unit_slope:
                slope_name = f"slope{i}"
                inits.append(numpy_helper.from_array(layer.slopes().astype(np_dtype), slope_name))
                nodes.append(helper.make_node("PRelu", [out, slope_name], [act_out], name=f"act{i}"))
            else:
                nodes.append(_activation_node(layer, out, act_out, f"act{i}"))
            out = act_out
        current = out
    k, n = layers[0].in_features, layers[-1].out_features
    graph = helper.make_graph(
        nodes,
        "onnxinv_generator",
        [helper.make_tensor_value_info(input_name, elem, [batch_dim, k])],
        [helper.make_tensor_value_info(output_name, elem, [batch_dim, n])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=IR_VERSION,
        producer_name="onnxinv",
    )
    return model


def _activation_node(layer: Layer, src: str, dst: str, name: str) -> onnx.NodeProto:
    act = layer.activation
    if act is Activation.RELU:
        return helper.make_node("Relu", [src], [dst], name=name)
    if act is Activation.LEAKY_RELU:
        if layer.per_unit_slope:
            raise ValueError("use _prelu_nodes for per-unit slopes")
        return helper.make_node("LeakyRelu", [src], [dst], name=name, alpha=layer.slope)
    if act is Activation.TANH:
        return helper.make_node("Tanh", [src], [dst], name=name)
    if act is Activation.SIGMOID:
        return helper.make_node("Sigmoid", [src], [dst], name=name)
    raise ValueError(f"no ONNX node for activation {act!r}")


def random_generator_layers(
    sizes: Sequence[int],
    *,
    activation: Activation = Activation.RELU,
    slope: float = 0.2,
    output_activation: Activation | None = None,
    bias_scale: float = 0.0,
    rng: np.random.Generator | int | None = 0,
) -> list[Layer]:
    """Layers with weights drawn i.i.d. from N(0, 1/n_out), as in the seed paper's experiments.

    ``sizes`` is ``[k, n_1, ..., n_d]``. Every layer gets ``activation`` (ReLU by default), the last
    one ``output_activation`` if given. ``bias_scale`` > 0 adds N(0, bias_scale²/n_out) biases.
    """
    rng = np.random.default_rng(rng)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = rng.normal(0.0, 1.0 / np.sqrt(n_out), size=(n_out, n_in))
        bias = rng.normal(0.0, bias_scale / np.sqrt(n_out), size=n_out) if bias_scale else np.zeros(n_out)
        act = activation
        if i == len(sizes) - 2 and output_activation is not None:
            act = output_activation
        layer_slope = slope if act is Activation.LEAKY_RELU else 0.0
        layers.append(Layer(weight, bias, act, layer_slope, (f"dense{i}",)))
    return layers
