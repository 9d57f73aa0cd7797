"""A read-only view of an ONNX graph: constants, producers, the chain from input to output, shapes.

This is the only part of onnxinv, with the handlers beside it, that reads protobufs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxinv.errors import ModelLoadError, UnsupportedModelError

# A single constant larger than this (in elements) is refused before it is decoded.
MAX_CONSTANT_ELEMENTS = 1 << 27
_FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}
# Ops folded when all their inputs are constants (weights stored transposed, cast or reshaped).
_FOLDABLE = {
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
    "Constant",
}


@dataclass(frozen=True)
class Problem:
    """One refused node (or graph-level defect), with the reasons each candidate handler gave."""

    node: str
    op: str
    opset: int
    reasons: tuple[str, ...]
    hint: str = ""

    def describe(self) -> str:
        where = f"node '{self.node}' ({self.op}, opset {self.opset})" if self.op else self.node
        text = f"{where}: " + "; ".join(self.reasons)
        return text + (f". Try: {self.hint}" if self.hint else "")


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A name for messages: the node's own name, or its op and position when it has none."""
    return node.name or f"{node.op_type}#{index}"


class GraphView:
    """Indexes of one graph, built once."""

    def __init__(self, model: onnx.ModelProto, where: str) -> None:
        self.model = model
        self.graph = model.graph
        self.where = where
        self.opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
        self.opset = self.opsets.get("ai.onnx", 0)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.sparse_initializers = {s.values.name: s for s in self.graph.sparse_initializer}
        self.producer: dict[str, tuple[int, onnx.NodeProto]] = {}
        for index, node in enumerate(self.graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = (index, node)
        constant_names = set(self.initializers) | set(self.sparse_initializers)
        self.real_inputs = [v for v in self.graph.input if v.name not in constant_names]
        self.listed_initializers = [v.name for v in self.graph.input if v.name in constant_names]
        self._constants: dict[str, np.ndarray | None] = {}
        self.variable: set[str] = set()
        self.fixed: dict[str, np.ndarray] = {}
        for name, tensor in self.initializers.items():
            check_tensor(tensor, f"initializer '{name}'", where)
        for name, sparse in self.sparse_initializers.items():
            check_tensor(sparse.values, f"sparse initializer '{name}' values", where)
            check_tensor(sparse.indices, f"sparse initializer '{name}' indices", where)
        for index, node in enumerate(self.graph.node):
            for attr in node.attribute:
                if attr.HasField("t"):
                    check_tensor(attr.t, f"node '{node_label(node, index)}' attribute '{attr.name}'", where)

    def label(self, node: onnx.NodeProto) -> str:
        index, _ = self.producer.get(node.output[0], (-1, node)) if node.output else (-1, node)
        return node_label(node, index)

    def node_opset(self, node: onnx.NodeProto) -> int:
        return self.opsets.get(node.domain or "ai.onnx", 0)

    def set_fixed(self, values: dict[str, np.ndarray]) -> None:
        """Treat these graph inputs as constants with the given values (as fed for the probe batch)."""
        self.fixed = dict(values)
        self._constants.clear()

    def mark_variables(self, input_name: str) -> None:
        """Every tensor computed from the input, whatever the node order in the file."""
        variable = {input_name}
        changed = True
        while changed:
            changed = False
            for node in self.graph.node:
                if any(i in variable for i in node.input if i) and not all(
                    o in variable for o in node.output if o
                ):
                    variable.update(o for o in node.output if o)
                    changed = True
        self.variable = variable

    # --- constants -------------------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant (initializer, fixed input, Constant node, folded op),
        else None."""
        if name in self.fixed:
            return self.fixed[name]
        if not name or name in self.variable:
            return None
        if name not in self._constants:
            self._constants[name] = None  # guards against cycles
            self._constants[name] = self._compute_constant(name)
        return self._constants[name]

    def _compute_constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return tensor_to_array(self.initializers[name], f"initializer '{name}'", self.where)
        if name in self.sparse_initializers:
            return sparse_to_array(self.sparse_initializers[name], f"sparse initializer '{name}'", self.where)
        if name not in self.producer:
            return None
        index, node = self.producer[name]
        label = node_label(node, index)
        if node.op_type == "Constant" and not node.domain:
            return constant_node_value(node, label, self.where)
        if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx"):
            return None
        inputs = [self.constant(i) if i else None for i in node.input]
        if any(v is None for v, i in zip(inputs, node.input) if i):
            return None
        return self._fold(node, label, inputs, name)

    def _fold(self, node: onnx.NodeProto, label: str, inputs: list, name: str) -> np.ndarray | None:
        from onnx.reference import ReferenceEvaluator

        if node.op_type in ("Add", "Sub", "Mul", "Div", "Concat"):
            total = sum(int(np.prod(v.shape)) for v in inputs if v is not None)
            if total > MAX_CONSTANT_ELEMENTS:
                raise UnsupportedModelError(
                    f"{self.where}: node '{label}' folds constants too large to hold."
                )
        feeds = {f"i{k}": v for k, v in enumerate(inputs) if v is not None}
        names = [f"i{k}" if i else "" for k, i in enumerate(node.input)]
        outs = [f"o{k}" for k in range(len(node.output))]
        single = onnx.helper.make_node(node.op_type, names, outs, domain=node.domain)
        single.attribute.extend(node.attribute)
        graph = onnx.helper.make_graph(
            [single],
            "fold",
            [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.UNDEFINED, None) for k in feeds],
            [onnx.helper.make_empty_tensor_value_info(o) for o in outs],
        )
        folded = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=10)
        try:
            results = ReferenceEvaluator(folded).run(None, feeds)
        except Exception:  # an op the reference evaluator cannot fold: treat the tensor as non-constant
            return None
        return np.asarray(results[list(node.output).index(name)])

    # --- shapes ----------------------------------------------------------------------------------

    def probe_shapes(self, input_name: str, feed: np.ndarray, wanted: set[str]) -> dict[str, tuple]:
        """Concrete shapes of ``wanted`` tensors when the model runs on ``feed``.

        Runs the nodes the output needs, sorted into topological order, so Reshape shapes computed at
        run time (Shape -> Slice -> Concat) resolve: in onnxruntime with every wanted tensor as an
        output (fast on convolutions), or in onnx's pure-Python reference evaluator if onnxruntime
        refuses the graph (a float64 Conv, say, which it has no kernel for).
        """
        from onnx.reference import ReferenceEvaluator

        needed = self._needed_nodes()
        nodes = []
        for node in needed:
            if node.op_type == "FusedGemm" and node.domain == "com.microsoft":
                plain = onnx.helper.make_node("Gemm", node.input, node.output, name=node.name)
                plain.attribute.extend(
                    a for a in node.attribute if a.name in ("alpha", "beta", "transA", "transB")
                )
                node = plain
            nodes.append(node)
        graph = onnx.helper.make_graph(
            nodes,
            "probe",
            [onnx.helper.make_tensor_value_info(input_name, _elem_type(feed.dtype), list(feed.shape))],
            [onnx.helper.make_empty_tensor_value_info(n) for n in sorted(wanted) if n != input_name],
            initializer=[
                *self.graph.initializer,
                *(numpy_helper.from_array(self.constant(n), n) for n in self.sparse_initializers),
                *(numpy_helper.from_array(np.asarray(v), n) for n, v in self.fixed.items()),
            ],
        )
        opsets = [o for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        probe = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=10)
        values = _run_in_onnxruntime(probe, {input_name: feed})
        try:
            if values is None:
                values = ReferenceEvaluator(probe).run(None, {input_name: feed}, intermediate=True)
        except Exception as exc:
            raise UnsupportedModelError(
                f"{self.where}: the graph could not be evaluated to find tensor shapes "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}). "
                "Check that the model runs in onnxruntime, then report the file as a bug."
            ) from None
        shapes = {name: tuple(np.shape(value)) for name, value in values.items()}
        shapes[input_name] = tuple(feed.shape)
        return shapes

    def _needed_nodes(self) -> list[onnx.NodeProto]:
        """Nodes the graph output depends on, in topological order (the file's order may be wrong)."""
        needed: dict[int, onnx.NodeProto] = {}
        stack = [o.name for o in self.graph.output]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name not in self.producer:
                continue
            seen.add(name)
            index, node = self.producer[name]
            needed[index] = node
            stack.extend(i for i in node.input if i)
        available = (
            {v.name for v in self.graph.input} | set(self.initializers) | set(self.sparse_initializers)
        )
        ordered, pending = [], sorted(needed)
        while pending:
            ready = [i for i in pending if all(not x or x in available for x in needed[i].input)]
            if not ready:
                names = ", ".join(node_label(needed[i], i) for i in pending[:5])
                raise UnsupportedModelError(
                    f"{self.where}: the graph has a cycle or reads a tensor nothing produces (at {names}). "
                    "Check the file with onnx.checker.check_model."
                )
            for i in ready:
                ordered.append(needed[i])
                available.update(o for o in needed[i].output if o)
            pending = [i for i in pending if i not in ready]
        return ordered


def _run_in_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Every output of ``model`` on ``feeds`` by onnxruntime (settings as the oracle's), or None."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
    except Exception:  # any refusal: the reference evaluator gets its turn
        return None
    return dict(zip(names, results))


_TYPED_FIELDS = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
    **dict.fromkeys(
        (
            TensorProto.INT32,
            TensorProto.INT16,
            TensorProto.INT8,
            TensorProto.UINT16,
            TensorProto.UINT8,
            TensorProto.BOOL,
            TensorProto.FLOAT16,
            TensorProto.BFLOAT16,
        ),
        "int32_data",
    ),
}


def check_tensor(tensor: TensorProto, what: str, where: str) -> int:
    """Check a tensor's declared size against the limit and against the data it holds; return its count.

    Runs before anything is decoded, so a shape declared absurdly large is refused without allocating.
    """
    count = 1
    for d in tensor.dims:
        if d < 0:
            raise ModelLoadError(f"{where}: {what} declares a negative dimension {list(tensor.dims)}.")
        count *= d
    if count > MAX_CONSTANT_ELEMENTS:
        raise ModelLoadError(
            f"{where}: {what} declares shape {list(tensor.dims)} = {count:,} values, over the limit of "
            f"{MAX_CONSTANT_ELEMENTS:,}; refusing before allocating memory for it."
        )
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ModelLoadError(f"{where}: {what} still points to external data after loading.")
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    if tensor.HasField("raw_data"):
        held, expected = len(tensor.raw_data), count * itemsize
        unit = "bytes"
    elif tensor.data_type in _TYPED_FIELDS:
        held, expected = len(getattr(tensor, _TYPED_FIELDS[tensor.data_type])), count
        unit = "values"
    else:
        return count
    if itemsize and held != expected:
        raise ModelLoadError(
            f"{where}: {what} declares shape {list(tensor.dims)} ({expected} {unit}) but holds {held} "
            f"{unit}; the file is damaged. Re-export the model."
        )
    return count


def tensor_to_array(tensor: TensorProto, what: str, where: str) -> np.ndarray:
    """Decode a TensorProto after checking its declared size against its data."""
    check_tensor(tensor, what, where)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: {what} cannot be decoded ({str(exc).splitlines()[0][:200] if str(exc) else exc!r}); "
            "its data does not match its declared shape or type. Re-export the model."
        ) from None


def sparse_to_array(sparse: onnx.SparseTensorProto, what: str, where: str) -> np.ndarray:
    dims = list(sparse.dims)
    count = int(np.prod(dims)) if dims else 1
    if count > MAX_CONSTANT_ELEMENTS:
        raise UnsupportedModelError(
            f"{where}: {what} declares shape {dims} = {count:,} values, over the limit of "
            f"{MAX_CONSTANT_ELEMENTS:,}; refusing before allocating memory for it."
        )
    values = tensor_to_array(sparse.values, f"{what} values", where).reshape(-1)
    indices = tensor_to_array(sparse.indices, f"{what} indices", where).astype(np.int64)
    if indices.ndim == 2:  # coordinates, one row per value
        if indices.shape != (values.size, len(dims)):
            raise UnsupportedModelError(f"{where}: {what} has indices of shape {indices.shape}.")
        flat = np.ravel_multi_index(indices.T, dims) if values.size else np.zeros(0, np.int64)
    else:
        flat = indices.reshape(-1)
    if flat.size != values.size or (flat.size and (flat.min() < 0 or flat.max() >= count)):
        raise UnsupportedModelError(f"{where}: {what} has indices that do not fit its shape {dims}.")
    dense = np.zeros(count, dtype=values.dtype)
    dense[flat] = values
    return dense.reshape(dims)


def constant_node_value(node: onnx.NodeProto, label: str, where: str) -> np.ndarray:
    for attr in node.attribute:
        what = f"Constant node '{label}' attribute '{attr.name}'"
        if attr.name == "value":
            return tensor_to_array(attr.t, what, where)
        if attr.name == "sparse_value":
            return sparse_to_array(attr.sparse_tensor, what, where)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(attr.floats, dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(attr.ints, dtype=np.int64)
    raise UnsupportedModelError(f"{where}: Constant node '{label}' has no value attribute onnxinv can read.")


def float_dtype_name(elem_type: int) -> str | None:
    return _FLOAT_TYPES.get(elem_type)


def _elem_type(dtype: np.dtype) -> int:
    return TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT
