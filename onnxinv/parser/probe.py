"""Concrete shapes of the chain's tensors at the probe batch, known before anything large exists.

Handlers need each tensor's shape when the model runs on one latent (or on the batch a fixed-batch
export requires). Shapes come first from onnx's shape inference with data propagation, run on a copy
of the graph without its float weights (they only need their declared dims) but with the latent's
concrete shape and the small integer constants that shape computations read (``Shape -> Slice ->
Concat -> Reshape`` resolves). Every tensor whose size inference knows is checked against
:data:`MAX_PROBE_ELEMENTS` before anything is evaluated, so a ``ConstantOfShape([20000, 20000])`` is
refused, not allocated. Only when inference leaves a wanted shape open are the needed nodes run one
at a time with onnx's reference evaluator, each checked by a one-node inference on its concrete
inputs before it runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinv.errors import UnsupportedModelError
from onnxinv.parser.graph import GraphView, standard_domain

# A tensor of the probe larger than this (in elements) is refused before it is computed.
MAX_PROBE_ELEMENTS = 1 << 27
# Integer constants up to this size reach shape inference as values (shapes, axes, indices).
_SMALL_INT = 4096
# Float constants up to this size do too: Resize's scales, Pad's constant value (never weights).
_SMALL_FLOAT = 16
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
_INT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8}

# Ops not evaluated once their output shapes are inferred (float data, slow in the reference evaluator).
_SHAPED_BY_INFERENCE = {"Conv", "ConvTranspose"}

Substitutes = Mapping[tuple[str, str], Callable[[onnx.NodeProto], onnx.NodeProto]]


def probe_shapes(
    view: GraphView,
    latent: str,
    shape: tuple[int, ...],
    dtype: str,
    wanted: set[str],
    substitutes: Substitutes,
) -> dict[str, tuple]:
    """Concrete shapes of the ``wanted`` tensors when the model runs on a latent of ``shape``.

    ``substitutes`` maps ``(domain, op)`` to a function returning a standard-op stand-in for nodes of
    non-standard ops a handler reads (``com.microsoft.FusedGemm`` -> ``Gemm``), declared by the
    handlers. Raises UnsupportedModelError naming the node when a tensor would be too large, or when
    the graph cannot be evaluated.
    """
    count = math.prod(shape)
    if count > MAX_PROBE_ELEMENTS:
        raise UnsupportedModelError(
            f"{view.where}: input '{latent}' of shape {list(shape)} holds {count:,} values, over the "
            f"limit of {MAX_PROBE_ELEMENTS:,}; refusing before allocating memory for it."
        )
    view.check_runnable()
    nodes = [_standard_node(node, substitutes) for node in view.needed]
    labels = {id(n): view.label(original) for n, original in zip(nodes, view.needed)}
    elem = TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT
    known = _infer(view, nodes, latent, shape, elem)
    for node in nodes:
        for out in node.output:
            if out in known:
                _check_size(view, labels[id(node)], node, out, known[out])
    known[latent] = tuple(shape)
    if all(name in known for name in wanted):
        return {name: known[name] for name in wanted}
    return _evaluate(view, nodes, labels, latent, shape, dtype, known, wanted)


def _standard_node(node: onnx.NodeProto, substitutes: Substitutes) -> onnx.NodeProto:
    key = (standard_domain(node.domain), node.op_type)
    if key in substitutes:
        return substitutes[key](node)
    if node.domain and not key[0]:  # "ai.onnx" spelled out: the reference evaluator wants ""
        plain = onnx.NodeProto()
        plain.CopyFrom(node)
        plain.domain = ""
        return plain
    return node


def _opsets(view: GraphView) -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", view.opset)] if view.opset else []


def _small_int(tensor: TensorProto) -> bool:
    """A constant shape inference gets as a value: a small integer tensor, or a tiny float one."""
    size = math.prod(tensor.dims)
    if tensor.data_type in _FLOAT_TYPES:
        return size <= _SMALL_FLOAT
    return tensor.data_type in _INT_TYPES and size <= _SMALL_INT


def _small_array(array: np.ndarray) -> bool:
    return (array.dtype.kind in "iu" and array.size <= _SMALL_INT) or (
        array.dtype.kind == "f" and array.size <= _SMALL_FLOAT
    )


def _infer(
    view: GraphView, nodes: list[onnx.NodeProto], latent: str, shape: tuple[int, ...], elem: int
) -> dict[str, tuple]:
    """Shapes shape inference can tell, for a copy of the graph that carries no float data."""
    inputs = [helper.make_tensor_value_info(latent, elem, list(shape))]
    initializers = []
    for name, tensor in view.initializers.items():
        if _small_int(tensor):
            initializers.append(tensor)
        else:
            inputs.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    for name, sparse in view.sparse_initializers.items():
        inputs.append(helper.make_tensor_value_info(name, sparse.values.data_type, list(sparse.dims)))
    for name, fixed_value in view.fixed.items():
        array = np.asarray(fixed_value)
        if _small_array(array):
            initializers.append(numpy_helper.from_array(array, name))
        else:
            inputs.append(helper.make_tensor_value_info(name, _elem_of(array), list(array.shape)))
    kept = []
    for node in nodes:
        value = _constant_attr(node)
        if value is not None and not _small_int(value):
            # a large Constant node: inference needs only its type and dims
            inputs.append(helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
            continue
        kept.append(node)
    outputs = [helper.make_empty_tensor_value_info(o.name) for o in view.graph.output]
    graph = helper.make_graph(kept, "probe", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=_opsets(view), ir_version=10)
    try:
        inferred = onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception:  # inference is a shortcut; the evaluation below gives the reason for a failure
        return {}
    shapes = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output, *inputs):
        found = _concrete(info)
        if found is not None:
            shapes[info.name] = found
    return shapes


def _constant_attr(node: onnx.NodeProto) -> TensorProto | None:
    if node.op_type != "Constant":
        return None
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "sparse_value":
            sparse = TensorProto()
            sparse.data_type = attr.sparse_tensor.values.data_type
            sparse.dims.extend(attr.sparse_tensor.dims)
            return sparse
    return None


def _concrete(value: onnx.ValueInfoProto) -> tuple | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _elem_of(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(array.dtype)


def _check_size(view: GraphView, label: str, node: onnx.NodeProto, name: str, shape: tuple) -> None:
    size = math.prod(shape)
    if size > MAX_PROBE_ELEMENTS:
        raise UnsupportedModelError(
            f"{view.where}: node '{label}' ({node.op_type}) computes tensor '{name}' of shape "
            f"{list(shape)} = {size:,} values, over the limit of {MAX_PROBE_ELEMENTS:,}; refusing before "
            "allocating memory for it."
        )


def _evaluate(
    view: GraphView,
    nodes: list[onnx.NodeProto],
    labels: dict[int, str],
    latent: str,
    shape: tuple[int, ...],
    dtype: str,
    known: dict[str, tuple],
    wanted: set[str],
) -> dict[str, tuple]:
    """Run the needed nodes one at a time, each size-checked before it runs; free values once read."""
    from onnx.reference import ReferenceEvaluator

    values: dict[str, np.ndarray] = {latent: np.zeros(shape, dtype=dtype), **view.fixed}
    uses = Counter(i for node in nodes for i in node.input if i)
    shapes = {latent: tuple(shape)}
    for node in nodes:
        label = labels[id(node)]
        feeds = {}
        for name in node.input:
            if name and name not in feeds:
                value = values.get(name)
                feeds[name] = value if value is not None else view.constant(name)
        missing = [o for o in node.output if o and o not in known]
        if missing:
            known.update(_infer_one(view, node, feeds))
        for out in node.output:
            if not out:
                continue
            if out not in known:
                raise UnsupportedModelError(
                    f"{view.where}: the size of tensor '{out}' (node '{label}', {node.op_type}) cannot be "
                    "told before computing it, so it is not computed. Check that the model runs in "
                    "onnxruntime, then report the file as a bug."
                )
            _check_size(view, label, node, out, known[out])
        try:
            present = {k: v for k, v in feeds.items() if v is not None}
            if node.op_type in _SHAPED_BY_INFERENCE and not standard_domain(node.domain):
                # the reference evaluator's convolutions are pure-Python loops (seconds on a 64x64
                # DCGAN); their shapes are known by now and their values only ever reach a Shape node
                results: list[Any] = [np.zeros(known[o], dtype=dtype) if o else None for o in node.output]
            else:
                # run(None, ...) returns a list of all outputs; onnx annotates the dict form of other calls too
                results = ReferenceEvaluator(_one_node_model(view, node, present)).run(None, present)  # type: ignore[assignment]
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise UnsupportedModelError(
                f"{view.where}: the graph could not be evaluated to find tensor shapes (node '{label}', "
                f"{node.op_type}: {type(exc).__name__}: {first}). Check that the model runs in "
                "onnxruntime, then report the file as a bug."
            ) from None
        for out, result in zip(node.output, results):
            if out:
                values[out] = np.asarray(result)
                shapes[out] = tuple(np.shape(result))
        for name in node.input:
            if name and name in values and name != latent:
                uses[name] -= 1
                if uses[name] <= 0:
                    del values[name]
    found = {**known, **shapes}
    return {name: found[name] for name in wanted if name in found}


def _one_node_model(
    view: GraphView, node: onnx.NodeProto, feeds: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in feeds],
        [helper.make_empty_tensor_value_info(o) for o in node.output if o],
    )
    return helper.make_model(graph, opset_imports=_opsets(view), ir_version=10)


def _infer_one(
    view: GraphView, node: onnx.NodeProto, feeds: Mapping[str, np.ndarray | None]
) -> dict[str, tuple]:
    """Output shapes of one node from its concrete inputs (small integer ones as values)."""
    inputs, initializers = [], []
    for name, value in feeds.items():
        if value is None:
            continue
        array = np.asarray(value)
        if _small_array(array):
            initializers.append(numpy_helper.from_array(array, name))
        else:
            inputs.append(helper.make_tensor_value_info(name, _elem_of(array), list(array.shape)))
    graph = helper.make_graph(
        [node],
        "one",
        inputs,
        [helper.make_empty_tensor_value_info(o) for o in node.output if o],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=_opsets(view), ir_version=10)
    try:
        inferred = onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception:
        return {}
    return {v.name: s for v in inferred.graph.output if (s := _concrete(v)) is not None}
