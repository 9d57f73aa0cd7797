"""What pattern handlers see and return: :class:`NodeContext` in, :class:`Step` (or a reason) out.

The chain walk in :mod:`onnxinv.parser.parse` turns the graph into a list of :class:`Link` records,
one per node on the path from the latent to the output. A composite handler (SiLU written as
``Sigmoid`` + ``Mul``, a leaky ReLU written as ``Where(Greater(x, 0), x, Mul(x, a))``) may claim a
small :class:`Subgraph` rooted at a node; the walk then treats the whole subgraph as one link whose
one data input is the subgraph's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxinv.layers import Activation, Weight

if TYPE_CHECKING:
    from onnxinv.parser.graph import GraphView

# A composite pattern holds at most this many nodes (SiLU: 2, GELU: 5, a decomposed LayerNorm: 9).
MAX_PATTERN_NODES = 24


@dataclass(frozen=True)
class Step:
    """What one node (or one recognised subgraph) does to the per-sample vector ``v``.

    kind "affine": ``v -> matrix @ v + offset`` (matrix None: identity; ``scale``: a diagonal);
    kind "activation": elementwise ``activation`` with ``slope`` (one value, or one per unit);
    kind "noop": values unchanged.
    """

    kind: str
    matrix: Weight | None = None
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    activation: Activation = Activation.IDENTITY
    slope: float | np.ndarray = 0.0


NOOP = Step("noop")


@dataclass(frozen=True)
class Subgraph:
    """Nodes a composite handler consumes as one link.

    ``root`` computes the subgraph's output (the tensor the chain continues from); ``data_input`` is
    the one tensor computed from the latent that the subgraph reads; ``members`` are all its nodes,
    the root included. Every member's outputs, except the root's, are read only inside the subgraph.
    """

    root: onnx.NodeProto
    data_input: str
    members: tuple[onnx.NodeProto, ...]


@dataclass(frozen=True)
class Link:
    """One element of the chain from the latent to the output.

    ``node`` is the ONNX node whose first output continues the chain, ``data_input`` the tensor it
    reads from the chain. For a recognised subgraph, ``handler`` is the composite handler that claimed
    it and ``members`` its nodes; for a plain node both are empty and every handler of its op type is
    offered the node. ``reasons`` say why each composite handler of the op did not claim the node.
    """

    node: onnx.NodeProto
    data_input: str
    handler: Handler | None = None
    members: tuple[onnx.NodeProto, ...] = ()
    reasons: tuple[str, ...] = field(default=())


@dataclass
class NodeContext:
    """What a handler may look at for one link of the chain."""

    view: GraphView
    node: onnx.NodeProto
    label: str
    var_input: str
    variable_position: int  # position of ``var_input`` among the node's inputs (-1: not a direct input)
    shapes: dict[str, tuple]
    batch: int
    has_batch: bool
    members: tuple[onnx.NodeProto, ...] = ()

    @property
    def opset(self) -> int:
        return self.view.node_opset(self.node)

    def constant(self, position: int) -> np.ndarray | None:
        if position >= len(self.node.input):
            return None
        return self.view.constant(self.node.input[position])

    def shape(self, name: str) -> tuple:
        return self.shapes[name]

    @property
    def out_shape(self) -> tuple:
        return self.shapes[self.node.output[0]]

    @property
    def in_size(self) -> int:
        return int(np.prod(self.shape(self.var_input))) // self.batch

    @property
    def out_size(self) -> int:
        return int(np.prod(self.out_shape)) // self.batch


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def per_sample(ctx: NodeContext, value: np.ndarray, out_shape: tuple, what: str) -> np.ndarray | str:
    """Broadcast a constant against the (probe-batch) output shape and return one sample's copy."""
    try:
        full = np.broadcast_to(np.asarray(value, dtype=np.float64), out_shape)
    except ValueError:
        return f"{what} of shape {list(np.shape(value))} does not broadcast to {list(out_shape)}"
    rows = full.reshape(ctx.batch, -1)
    if ctx.batch > 1 and not np.all(rows == rows[:1]):
        return f"{what} differs between samples of the batch"
    return rows[0].copy()


class Handler:
    """Base class of pattern handlers (see :mod:`onnxinv.parser.handlers` for the registry).

    Attributes
    ----------
    ops : the op types the handler looks at (for a composite: the op of the subgraph's root)
    domain : their domain ("" for the default one, however the file spells it)
    name : how messages name the handler
    shape_operands : per op type, the input positions that only set a shape (they may be computed
        from the latent at run time, like Reshape's target shape; the chain walk does not follow them)
    refuses : True for handlers that recognise a spelling only to refuse it with its reason; their
        ops are not listed as supported
    hint : what to try after a refusal by this handler
    """

    ops: tuple[str, ...] = ()
    domain: str = ""
    name = "handler"
    shape_operands: Mapping[str, tuple[int, ...]] = {}
    refuses = False
    hint = ""  # what to try, shown after a refusal when the op has no entry in REFUSAL_HINTS

    @property
    def composite(self) -> bool:
        """True for handlers that consume a subgraph (they override :meth:`recognise`)."""
        return type(self).recognise is not Handler.recognise

    def recognise(self, view: GraphView, node: onnx.NodeProto) -> Subgraph | str:
        """A composite handler's structural check: the subgraph rooted at ``node`` it consumes, or why
        it does not apply ("" when the node is plainly not its pattern). Plain handlers consume just
        the node and do not override this."""
        raise NotImplementedError

    def match(self, ctx: NodeContext) -> Step | tuple[Step, ...] | str:
        """What the node (or recognised subgraph) does to the per-sample vector, as one step or a
        sequence of steps, or the reason it does not fit this handler."""
        raise NotImplementedError

    def probe_node(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """A standard-op node computing the same shapes, for ops the shape probe cannot evaluate."""
        return None


def converge(view: GraphView, root: onnx.NodeProto, limit: int = MAX_PATTERN_NODES) -> Subgraph | str:
    """The smallest subgraph ending at ``root`` whose tensors computed from the latent all come from one
    tensor: its data input.

    Walks back from the root's variable inputs, always expanding the one computed last (in the
    graph's topological order), until a single tensor is left; that tensor feeds every path into the
    root. Returns a reason when more than ``limit`` nodes would be needed, or when a tensor made inside
    the subgraph is also read outside it (then it is not a self-contained pattern).
    """
    position = view.position
    frontier = {i for i in root.input if i and i in view.variable}
    members = [root]
    while len(frontier) > 1:
        latest = max(frontier, key=lambda t: position(t))
        node = view.producer_of(latest)
        if node is None or len(members) >= limit:
            return f"the tensors it reads from the input do not meet within {limit} nodes"
        members.append(node)
        frontier.discard(latest)
        frontier.update(i for i in node.input if i and i in view.variable)
        for member in members:
            frontier.difference_update(o for o in member.output if o)
    if not frontier:
        return "it reads no tensor computed from the input"
    (data,) = frontier
    inside = {m.output[0] for m in members}
    for member in members[1:]:
        for out in member.output:
            if not out:
                continue
            outside = [c for c in view.consumers(out) if not c.output or c.output[0] not in inside]
            if outside or view.is_graph_output(out):
                reader = view.label(outside[0]) if outside else "the graph output"
                return f"its intermediate tensor '{out}' is also read by {reader}"
    members.sort(key=lambda n: position(n.output[0]))
    return Subgraph(root, data, tuple(members))
