"""A read-only view of an ONNX graph: indexes, the nodes the output needs, variables and constants.

This is the only part of onnxinv, with the handlers beside it, that reads protobufs. Everything here
is linear in the size of the graph: indexes are built once, the nodes the output needs are found by
one depth-first walk from the output (dead nodes are never looked at again), tensors computed from
the latent by one breadth-first walk, and constants are folded without recursion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxinv.errors import ModelLoadError, UnsupportedModelError
from onnxinv.parser.folding import FOLDABLE, fold

# A single constant larger than this (in elements) is refused before it is decoded or folded.
MAX_CONSTANT_ELEMENTS = 1 << 27
_FLOAT_TYPES: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}
# onnxruntime runs nodes whose domain is spelled "ai.onnx"; it is the default domain.
STANDARD_DOMAINS = ("", "ai.onnx")


def standard_domain(domain: str) -> str:
    """``""`` for the default ONNX domain however it is spelled, else the domain itself."""
    return "" if domain in STANDARD_DOMAINS else domain


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
        self.opsets = {(standard_domain(o.domain) or "ai.onnx"): o.version for o in model.opset_import}
        self.opset = self.opsets.get("ai.onnx", 0)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.sparse_initializers = {s.values.name: s for s in self.graph.sparse_initializer}
        # tensor name -> index of the node producing it (indices, not node objects: a file may hold
        # a million dead nodes)
        self._producer_index: dict[str, int] = {}
        for index, node in enumerate(self.graph.node):
            for out in node.output:
                if out:
                    self._producer_index[out] = index
        constant_names = set(self.initializers) | set(self.sparse_initializers)
        self.real_inputs = [v for v in self.graph.input if v.name not in constant_names]
        self.listed_initializers = [v.name for v in self.graph.input if v.name in constant_names]
        self._constants: dict[str, np.ndarray | None] = {}
        self.variable: set[str] = set()
        self.fixed: dict[str, np.ndarray] = {}
        for name, tensor in self.initializers.items():
            check_tensor(tensor, f"initializer '{name}'", where)
        for name, sparse in self.sparse_initializers.items():
            check_sparse(sparse, f"sparse initializer '{name}'", where)
        self._nodes: dict[int, onnx.NodeProto] = {}
        self.needed_indices, self._dangling, self._cycle_at = self._walk_needed()
        self.needed: list[onnx.NodeProto] = [self._node(i) for i in self.needed_indices]
        self._order = {index: k for k, index in enumerate(self.needed_indices)}
        self.dead_nodes = len(self.graph.node) - len(self.needed)
        self._consumers: dict[str, list[int]] | None = None
        for index, node in zip(self.needed_indices, self.needed):
            for attr in node.attribute:
                what = f"node '{node_label(node, index)}' attribute '{attr.name}'"
                if attr.HasField("t"):
                    check_tensor(attr.t, what, where)
                if attr.HasField("sparse_tensor"):
                    check_sparse(attr.sparse_tensor, what, where)

    # --- indexes ---------------------------------------------------------------------------------

    def _node(self, index: int) -> onnx.NodeProto:
        node = self._nodes.get(index)
        if node is None:
            node = self._nodes[index] = self.graph.node[index]
        return node

    @property
    def producer(self) -> _Producers:
        """``tensor name -> (index, node)`` of the node computing it."""
        return _Producers(self)

    def producer_of(self, name: str) -> onnx.NodeProto | None:
        index = self._producer_index.get(name)
        return None if index is None else self._node(index)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        """The nodes the output needs that read tensor ``name``."""
        if self._consumers is None:
            consumers: dict[str, list[int]] = {}
            for index, node in zip(self.needed_indices, self.needed):
                for i in dict.fromkeys(node.input):
                    if i:
                        consumers.setdefault(i, []).append(index)
            self._consumers = consumers
        return [self._node(i) for i in self._consumers.get(name, ())]

    def position(self, name: str) -> int:
        """Where the node computing ``name`` comes in topological order (-1 for inputs and constants)."""
        index = self._producer_index.get(name)
        return -1 if index is None else self._order.get(index, -1)

    def is_graph_output(self, name: str) -> bool:
        return any(o.name == name for o in self.graph.output)

    def label(self, node: onnx.NodeProto) -> str:
        index = self._producer_index.get(node.output[0], -1) if node.output else -1
        return node_label(node, index)

    def node_opset(self, node: onnx.NodeProto) -> int:
        return self.opsets.get(standard_domain(node.domain) or "ai.onnx", 0)

    def _walk_needed(self) -> tuple[list[int], list[tuple[str, int]], int | None]:
        """Indices of the nodes the graph outputs depend on, in topological order (a depth-first walk
        from the outputs, without recursion), the tensors read that nothing produces, and a node on a
        cycle if there is one."""
        available = (
            {v.name for v in self.graph.input} | set(self.initializers) | set(self.sparse_initializers)
        )
        state: dict[int, int] = {}  # 1: on the walk's stack, 2: done
        order: list[int] = []
        dangling: list[tuple[str, int]] = []
        cycle_at: int | None = None
        for output in self.graph.output:
            start = self._producer_index.get(output.name)
            if start is None or start in state:
                continue
            state[start] = 1
            stack = [(start, 0)]
            while stack:
                index, position = stack[-1]
                inputs = self._node(index).input
                if position < len(inputs):
                    stack[-1] = (index, position + 1)
                    name = inputs[position]
                    if not name or name in available:
                        continue
                    source = self._producer_index.get(name)
                    if source is None:
                        dangling.append((name, index))
                    elif source not in state:
                        state[source] = 1
                        stack.append((source, 0))
                    elif state[source] == 1 and cycle_at is None:
                        cycle_at = index
                    continue
                state[index] = 2
                order.append(index)
                stack.pop()
        return order, dangling, cycle_at

    def check_runnable(self) -> None:
        """Raise UnsupportedModelError when the output depends on a cycle or on a tensor nothing makes."""
        if self._cycle_at is not None or self._dangling:
            if self._cycle_at is not None:
                at = node_label(self._node(self._cycle_at), self._cycle_at)
                why = f"the graph has a cycle (at node '{at}')"
            else:
                name, index = self._dangling[0]
                why = f"node '{node_label(self._node(index), index)}' reads tensor '{name}', which nothing produces"
            raise UnsupportedModelError(f"{self.where}: {why}. Check the file with onnx.checker.check_model.")

    def set_fixed(self, values: dict[str, np.ndarray]) -> None:
        """Treat these graph inputs as constants with the given values (as fed for the probe batch)."""
        self.fixed = dict(values)
        self._constants.clear()

    def mark_variables(self, input_name: str) -> None:
        """Every tensor the output needs that is computed from the input, whatever the node order."""
        variable = {input_name}
        queue = [input_name]
        while queue:
            for node in self.consumers(queue.pop()):
                for out in node.output:
                    if out and out not in variable:
                        variable.add(out)
                        queue.append(out)
        self.variable = variable

    # --- constants -------------------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant (initializer, fixed input, Constant node, folded op),
        else None."""
        if name in self.fixed:
            return self.fixed[name]
        if not name or name in self.variable:
            return None
        if name in self._constants:
            return self._constants[name]
        # Depth-first without recursion: a weight may reach its Gemm through 10,000 Identity nodes.
        stack, entered = [name], set()
        while stack:
            tensor = stack[-1]
            if tensor in self._constants:
                stack.pop()
                continue
            inputs = self._fold_inputs(tensor)
            if inputs and tensor not in entered:
                entered.add(tensor)
                stack.extend(i for i in inputs if self._unknown(i))
                continue
            self._constants[tensor] = self._compute_constant(tensor, inputs)
            stack.pop()
        return self._constants[name]

    def _unknown(self, name: str) -> bool:
        return (
            bool(name)
            and name not in self._constants
            and name not in self.fixed
            and name not in self.variable
        )

    def _fold_inputs(self, name: str) -> list[str]:
        """The inputs of the foldable node computing ``name`` (empty for leaves and unfoldable nodes)."""
        if name in self.initializers or name in self.sparse_initializers or name in self.fixed:
            return []
        node = self.producer_of(name)
        if node is None or node.op_type not in FOLDABLE or standard_domain(node.domain):
            return []
        return list(node.input)

    def _lookup(self, name: str) -> np.ndarray | None:
        if name in self.fixed:
            return self.fixed[name]
        return None if name in self.variable else self._constants.get(name)

    def _compute_constant(self, name: str, inputs: list[str]) -> np.ndarray | None:
        if name in self.initializers:
            return tensor_to_array(self.initializers[name], f"initializer '{name}'", self.where)
        if name in self.sparse_initializers:
            return sparse_to_array(self.sparse_initializers[name], f"sparse initializer '{name}'", self.where)
        node = self.producer_of(name)
        if node is None:
            return None
        label = self.label(node)
        if node.op_type == "Constant" and not standard_domain(node.domain):
            return constant_node_value(node, label, self.where)
        if not inputs:
            return None
        values = [self._lookup(i) if i else None for i in inputs]
        if any(v is None for v, i in zip(values, inputs) if i):
            return None
        opsets = [onnx.helper.make_opsetid("", self.opset)] if self.opset else []
        return fold(node, label, values, name, opsets, self.where, MAX_CONSTANT_ELEMENTS)


class _Producers:
    """``view.producer[name] -> (index, node)`` and ``name in view.producer``, over the index."""

    def __init__(self, view: GraphView) -> None:
        self._view = view

    def __contains__(self, name: object) -> bool:
        return name in self._view._producer_index

    def __getitem__(self, name: str) -> tuple[int, onnx.NodeProto]:
        index = self._view._producer_index[name]
        return index, self._view._node(index)


_TYPED_FIELDS: dict[int, str] = {
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


def check_sparse(sparse: onnx.SparseTensorProto, what: str, where: str) -> int:
    """Check a sparse tensor's declared dims (Python ints: no overflow), values and indices; its size."""
    dims = [int(d) for d in sparse.dims]
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: {what} declares a negative dimension {dims}.")
    count = 1
    for d in dims:
        count *= d
    if count > MAX_CONSTANT_ELEMENTS:
        raise ModelLoadError(
            f"{where}: {what} declares shape {dims} = {count:,} values, over the limit of "
            f"{MAX_CONSTANT_ELEMENTS:,}; refusing before allocating memory for it."
        )
    check_tensor(sparse.values, f"{what} values", where)
    check_tensor(sparse.indices, f"{what} indices", where)
    return count


def sparse_to_array(sparse: onnx.SparseTensorProto, what: str, where: str) -> np.ndarray:
    dims = [int(d) for d in sparse.dims]
    count = check_sparse(sparse, what, where)
    values = tensor_to_array(sparse.values, f"{what} values", where).reshape(-1)
    indices = tensor_to_array(sparse.indices, f"{what} indices", where).astype(np.int64)
    if indices.ndim == 2:  # coordinates, one row per value
        if indices.shape != (values.size, len(dims)):
            raise UnsupportedModelError(f"{where}: {what} has indices of shape {indices.shape}.")
        if values.size and (np.any(indices < 0) or np.any(indices >= np.asarray(dims, dtype=np.int64))):
            raise UnsupportedModelError(f"{where}: {what} has indices that do not fit its shape {dims}.")
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
