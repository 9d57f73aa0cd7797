"""Folding constant-only nodes (weights stored transposed, cast, reshaped, gathered), size first.

A node whose inputs are all constants is evaluated once, with onnx's pure-Python reference evaluator.
Before anything is evaluated, :func:`folded_size` bounds the number of values the node would produce
from its input shapes and its (small, integer) shape operands, so a 200-byte file whose
``ConstantOfShape([20000, 20000])`` or broadcasting ``Add`` would allocate gigabytes is refused first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from onnxinv.errors import UnsupportedModelError

# Ops folded when all their inputs are constants.
FOLDABLE = frozenset(
    {
        "Identity",
        "Cast",
        "Transpose",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Neg",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Sqrt",
        "Reciprocal",
        "Concat",
        "Gather",
        "Slice",
        "Shape",
        "ConstantOfShape",
        "Expand",
        "Tile",
        "OneHot",
        "Range",
    }
)
_BROADCASTING = {"Add", "Sub", "Mul", "Div"}
# Ops whose output never holds more values than their largest input.
_NOT_GROWING = (
    FOLDABLE - _BROADCASTING - {"Concat", "Gather", "ConstantOfShape", "Expand", "Tile", "OneHot", "Range"}
)


def folded_size(op: str, inputs: Sequence[np.ndarray | None], attrs: dict) -> int | None:
    """An upper bound on the values ``op`` produces from ``inputs``; None when it cannot be bounded
    (malformed operands): the node is then not folded."""
    present = [v for v in inputs if v is not None]
    try:
        if op in _NOT_GROWING:
            return max((v.size for v in present), default=1)
        if op in _BROADCASTING:
            return math.prod(np.broadcast_shapes(*(v.shape for v in present)))
        if op == "Concat":
            return sum(v.size for v in present)
        if op == "Gather":
            data, index = inputs[0], inputs[1]
            if data is None or index is None:
                return None
            axis = int(attrs.get("axis", 0))
            length = data.shape[axis]
            return 0 if length == 0 else data.size // length * index.size
        if op == "ConstantOfShape":
            dims = _ints(inputs[0])
            return None if dims is None else math.prod(dims)
        if op == "Expand":
            dims = _ints(inputs[1])
            first = inputs[0]
            return (
                None
                if dims is None or first is None
                else math.prod(np.broadcast_shapes(first.shape, tuple(dims)))
            )
        if op == "Tile":
            repeats = _ints(inputs[1])
            first = inputs[0]
            return None if repeats is None or first is None else first.size * math.prod(repeats)
        if op == "OneHot":
            depth = np.asarray(inputs[1]).reshape(-1)
            first = inputs[0]
            return None if depth.size != 1 or first is None else first.size * max(int(depth[0]), 0)
        if op == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in inputs[:3])
            return (
                None
                if delta == 0 or not math.isfinite((limit - start) / delta)
                else max(math.ceil((limit - start) / delta), 0)
            )
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    return None


def _ints(value: np.ndarray | None) -> list[int] | None:
    """A shape operand as Python ints (which do not overflow), or None when it is not one."""
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1:
        return None
    dims = [int(v) for v in value.reshape(-1)]
    return None if any(d < 0 for d in dims) else dims


def fold(
    node: onnx.NodeProto,
    label: str,
    inputs: list[np.ndarray | None],
    name: str,
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    where: str,
    limit: int,
) -> np.ndarray | None:
    """The value of output ``name`` of ``node`` on constant ``inputs``; None when it cannot be folded.

    Raises UnsupportedModelError when the result would hold more than ``limit`` values.
    """
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    size = folded_size(node.op_type, inputs, attrs)
    if size is None:
        return None
    if size > limit:
        raise UnsupportedModelError(
            f"{where}: node '{label}' ({node.op_type}) folds constants into {size:,} values, over the "
            f"limit of {limit:,}; refusing before allocating memory for them."
        )
    if node.op_type == "Identity":
        return inputs[0]
    from onnx.reference import ReferenceEvaluator

    feeds = {f"i{k}": v for k, v in enumerate(inputs) if v is not None}
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"o{k}" for k in range(len(node.output))]
    single = onnx.helper.make_node(node.op_type, names, outs)
    single.attribute.extend(node.attribute)
    graph = onnx.helper.make_graph(
        [single],
        "fold",
        [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.UNDEFINED, None) for k in feeds],
        [onnx.helper.make_empty_tensor_value_info(o) for o in outs],
    )
    folded = onnx.helper.make_model(graph, opset_imports=list(opset_imports), ir_version=10)
    try:
        results = ReferenceEvaluator(folded).run(None, feeds)
    except Exception:  # an op the reference evaluator cannot fold: treat the tensor as non-constant
        return None
    # run(None, ...) returns a list of all outputs; onnx annotates the dict form of other calls too
    value = np.asarray(results[list(node.output).index(name)])  # type: ignore[index]
    return value if value.size <= limit else None
