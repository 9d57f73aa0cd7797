"""Turn a loaded ONNX model into a :class:`~onnxinv.layers.Generator`.

The walk starts at the graph output and follows the one tensor computed from the model input back to
that input, so node order in the file and dead nodes do not matter. Each node on that chain is offered
to the pattern handlers in ``HANDLERS``; their steps are composed into layers: affine steps accumulate
until an activation closes a layer, and any affine steps after the last activation become a final
identity layer. How affine steps are multiplied out (dense or sparse, and when two factors stay apart)
is decided in :mod:`onnxinv.parser.composition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxinv.errors import UnsupportedModelError
from onnxinv.layers import Activation, Generator, Layer, TensorInfo
from onnxinv.parser import conv_handlers
from onnxinv.parser.composition import PendingAffine
from onnxinv.parser.graph import GraphView, Problem
from onnxinv.parser.handlers import HANDLERS, REFUSAL_HINTS, SUPPORTED_OPS, FusedGemmHandler, Step
from onnxinv.parser.inputs import resolve_interface
from onnxinv.safe_load import LoadedModel

# Where the variable is a "shape" operand rather than data (Reshape's target shape may be computed).
_SHAPE_OPERANDS = {"Reshape": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Dropout": {1, 2}, "Clip": {1, 2}}
_SHAPE_OPERANDS.update(conv_handlers.SHAPE_OPERANDS)


@dataclass
class NodeContext:
    """What a handler may look at for one node on the chain."""

    view: GraphView
    node: onnx.NodeProto
    label: str
    var_input: str
    variable_position: int
    shapes: dict[str, tuple]
    batch: int
    has_batch: bool

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


def parse_model(
    loaded: LoadedModel, *, fixed: Mapping[str, object] | None = None, latent: str | None = None
) -> Generator:
    """The layer list of ``loaded``, or UnsupportedModelError listing every node that was refused.

    ``fixed`` gives values for graph inputs other than the latent (see :mod:`onnxinv.parser.inputs`);
    they are constants to the parser. ``latent`` names the latent input when that is ambiguous.
    """
    model = loaded.model
    where = str(loaded.path)
    view = GraphView(model, where)
    notes: list[str] = []
    interface = resolve_interface(view, where, fixed, latent)
    input_info, output_info = interface.latent, interface.output
    view.set_fixed(interface.probe)
    view.mark_variables(input_info.name)
    chain, problems = _chain(view, input_info.name, output_info.name)
    problems += _screen_ops(view, chain)
    if problems:
        raise _unsupported(where, problems)

    has_batch = _has_batch_dim(view, input_info, chain)
    dims = input_info.shape[1:] if has_batch else input_info.shape
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise UnsupportedModelError(
            f"{where}: input '{input_info.name}' has shape {_dims(input_info.shape)}; onnxinv needs every "
            "dimension but the batch to be a fixed number (the latent size). Re-export with a static "
            "latent shape."
        )
    sample_shape = tuple(int(d) for d in dims)
    batch_size = input_info.shape[0] if has_batch and isinstance(input_info.shape[0], int) else None
    probe_batch = batch_size or 1
    feed = np.zeros(((probe_batch, *sample_shape) if has_batch else sample_shape), dtype=input_info.dtype)
    wanted = {t for node in chain for t in node.output if t} | {input_info.name}
    shapes = view.probe_shapes(input_info.name, feed, wanted)

    layers, problems = _build_layers(
        view, chain, input_info.name, shapes, probe_batch if has_batch else 1, has_batch, notes
    )
    if problems:
        raise _unsupported(where, problems)
    if view.listed_initializers:
        notes.append(
            f"{len(view.listed_initializers)} initializer(s) are also listed as graph inputs "
            "(old exporters do this); they are treated as constants"
        )
    notes.extend(_checker_notes(model))
    return Generator(
        layers=tuple(layers),
        input=input_info,
        output=output_info,
        sample_input_shape=sample_shape,
        batch_size=batch_size,
        has_batch_dim=has_batch,
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        opset=view.opset,
        path=where,
        model_bytes=loaded.model_bytes,
        notes=tuple(notes),
        inputs=interface.inputs,
        fixed=interface.fixed,
    )


def _chain(view: GraphView, input_name: str, output_name: str) -> tuple[list[onnx.NodeProto], list[Problem]]:
    """Nodes from input to output along the one variable tensor, and problems found on the way."""
    chain: list[onnx.NodeProto] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    tensor = output_name
    if output_name not in view.variable:
        problems.append(
            Problem(f"output '{output_name}'", "", view.opset, ("the output does not depend on the input",))
        )
        return chain, problems
    while tensor != input_name:
        if tensor in seen or tensor not in view.producer:
            problems.append(Problem(f"tensor '{tensor}'", "", view.opset, ("nothing produces it",)))
            break
        seen.add(tensor)
        index, node = view.producer[tensor]
        shape_operands = _SHAPE_OPERANDS.get(node.op_type, set())
        data = [
            (pos, name)
            for pos, name in enumerate(node.input)
            if name and name in view.variable and pos not in shape_operands
        ]
        if len(data) != 1:
            names = ", ".join(f"'{n}'" for _, n in data)
            problems.append(
                Problem(
                    view.label(node),
                    node.op_type,
                    view.node_opset(node),
                    (
                        f"it combines several tensors computed from the input ({names}); a dense generator is a chain",
                    ),
                    "store weights as constants (initializers); onnxinv inverts chains of dense layers",
                )
            )
            if not data:
                break
        chain.append(node)
        tensor = data[0][1]
    chain.reverse()
    return chain, problems


def _screen_ops(view: GraphView, chain: list[onnx.NodeProto]) -> list[Problem]:
    """Every node on the chain whose op no handler looks at."""
    known = {(h.domain, op) for h in HANDLERS for op in h.ops}
    problems = []
    for node in chain:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (domain, node.op_type) in known:
            continue
        opset = view.node_opset(node)
        qualified = f"{domain}.{node.op_type}" if domain else node.op_type
        hint = REFUSAL_HINTS.get(node.op_type, "supported ops are " + ", ".join(SUPPORTED_OPS))
        reason = f"op {qualified} is not supported" + (" (non-standard domain)" if domain else "")
        problems.append(Problem(view.label(node), qualified, opset, (reason,), hint))
    return problems


def _has_batch_dim(view: GraphView, input_info: TensorInfo, chain: list[onnx.NodeProto]) -> bool:
    if len(input_info.shape) <= 1:
        return False
    # A rank-2 input multiplied by a weight on its left is one column-vector sample, not a batch.
    first = next((n for n in chain if n.op_type not in ShapeOps), None)
    return not (
        len(input_info.shape) == 2
        and first is not None
        and first.op_type == "MatMul"
        and view.constant(first.input[0]) is not None
    )


ShapeOps = {"Identity", "Cast", "Dropout"}


def _build_layers(
    view: GraphView,
    chain: list[onnx.NodeProto],
    input_name: str,
    shapes: dict[str, tuple],
    batch: int,
    has_batch: bool,
    notes: list[str] | None = None,
) -> tuple[list[Layer], list[Problem]]:
    layers: list[Layer] = []
    problems: list[Problem] = []
    size = int(np.prod(shapes[input_name])) // batch
    pending = PendingAffine(size)  # the affine steps since the last activation
    tensor = input_name

    def close(activation: Activation, slope: float, label: str | None) -> None:
        closed, note = pending.close(activation, slope, label)
        layers.extend(closed)
        if note and notes is not None:
            notes.append(note)

    for node in chain:
        label = view.label(node)
        position = next(p for p, n in enumerate(node.input) if n == tensor)
        ctx = NodeContext(view, node, label, tensor, position, shapes, batch, has_batch)
        if node.output[0] not in shapes or not node.output or list(node.output).index(node.output[0]) != 0:
            problems.append(Problem(label, node.op_type, ctx.opset, ("its output shape is unknown",)))
            break
        out_size = ctx.out_size
        step, reasons = _match(ctx)
        if step is None:
            hint = REFUSAL_HINTS.get(node.op_type, "")
            problems.append(Problem(label, node.op_type, ctx.opset, tuple(reasons), hint))
            tensor, size = node.output[0], out_size
            pending = PendingAffine(size)  # keep walking to report every refused node
            continue
        if step.kind == "affine":
            pending.push(label, out_size, matrix=step.matrix, scale=step.scale, offset=step.offset)
        elif step.kind == "activation":
            close(step.activation, step.slope, label)
        if isinstance(step, FusedStep):
            close(step.fused.activation, step.fused.slope, None)
        tensor, size = node.output[0], out_size
        pending.size = size
    if not problems and (not pending.empty or not layers):
        close(Activation.IDENTITY, 0.0, None)
    return layers, problems


@dataclass(frozen=True)
class FusedStep(Step):
    """An affine step with the activation fused into the same node (FusedGemm)."""

    fused: Step = Step("noop")


def _match(ctx: NodeContext) -> tuple[Step | None, list[str]]:
    reasons = []
    domain = "" if ctx.node.domain in ("", "ai.onnx") else ctx.node.domain
    for handler in HANDLERS:
        if handler.domain != domain or ctx.node.op_type not in handler.ops:
            continue
        result = handler.match(ctx)
        if isinstance(result, Step):
            if isinstance(handler, FusedGemmHandler):
                fused = handler.fused_activation(ctx.node)
                if fused is not None:
                    return FusedStep("affine", result.matrix, result.scale, result.offset, fused=fused), []
            return result, []
        reasons.append(f"{handler.name}: {result}")
    return None, reasons


def _unsupported(where: str, problems: list[Problem]) -> UnsupportedModelError:
    if len(problems) == 1:
        text = f"{where}: {problems[0].describe()}."
    else:
        lines = "\n".join(f"  - {p.describe()}" for p in problems)
        text = f"{where}: {len(problems)} nodes cannot be read as dense layers:\n{lines}"
    return UnsupportedModelError(text, tuple(problems))


def _checker_notes(model: onnx.ModelProto) -> list[str]:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return [f"onnx.checker warns (not a gate; onnxruntime may still run it): {first}"]
    return []


def _dims(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
