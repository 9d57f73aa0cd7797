"""Turn a loaded ONNX model into a :class:`~onnxinv.layers.Generator`.

The walk starts at the graph output and follows the one tensor computed from the model input back to
that input, so node order in the file and dead nodes do not matter. At each node the composite
handlers of its op may claim a small subgraph (SiLU as Sigmoid + Mul, a leaky ReLU as Where + Greater +
Mul) and the walk continues from its one data input; otherwise the node must read one tensor computed
from the input, besides the shape operands its handlers declare. Each link of that chain is offered to
the pattern handlers in ``HANDLERS``; their steps are composed into layers: affine steps accumulate
until an activation closes a layer, and any affine steps after the last activation become a final
identity layer. Everything the handlers need to know about an op (shape operands, the shape probe's
stand-in for a non-standard op, the subgraph a composite claims) comes from the handlers themselves.
How affine steps are multiplied out (dense or sparse, and when two factors stay apart) is decided in
:mod:`onnxinv.parser.composition`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxinv.errors import UnsupportedModelError
from onnxinv.layers import Activation, Generator, Layer, TensorInfo
from onnxinv.parser.composition import PendingAffine
from onnxinv.parser.context import Handler, Link, NodeContext, Step
from onnxinv.parser.graph import GraphView, Problem, standard_domain
from onnxinv.parser.handlers import HANDLERS, REFUSAL_HINTS, SUPPORTED_OPS
from onnxinv.parser.inputs import resolve_interface
from onnxinv.parser.probe import probe_shapes
from onnxinv.safe_load import LoadedModel

__all__ = ["NodeContext", "Step", "parse_model"]


def _registry() -> tuple[dict, dict, dict, dict]:
    """From HANDLERS, by ``(domain, op)``: plain handlers, composite handlers, shape operands, and
    the probe's stand-ins for non-standard ops."""
    plain: dict[tuple[str, str], list] = {}
    composite: dict[tuple[str, str], list] = {}
    shape_operands: dict[tuple[str, str], set[int]] = {}
    substitutes: dict[tuple[str, str], object] = {}
    for handler in HANDLERS:
        for op in handler.ops:
            key = (handler.domain, op)
            (composite if handler.composite else plain).setdefault(key, []).append(handler)
            shape_operands.setdefault(key, set()).update(handler.shape_operands.get(op, ()))
            if type(handler).probe_node is not Handler.probe_node:
                substitutes[key] = handler.probe_node
    return plain, composite, shape_operands, substitutes


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
    reported = {p.node for p in problems}
    problems += [p for p in _screen_ops(view, chain) if p.node not in reported]
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
    sample_shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]  # all ints: checked above
    batch_size = input_info.shape[0] if has_batch and isinstance(input_info.shape[0], int) else None
    probe_batch = batch_size or 1
    feed_shape = (probe_batch, *sample_shape) if has_batch else sample_shape
    wanted = {t for link in chain for t in (link.node.output[0], link.data_input)} | {input_info.name}
    shapes = probe_shapes(view, input_info.name, feed_shape, input_info.dtype, wanted, _SUBSTITUTES)

    layers, problems = _build_layers(
        view, chain, input_info.name, shapes, probe_batch if has_batch else 1, has_batch, notes
    )
    if problems:
        raise _unsupported(where, problems)
    if view.dead_nodes:
        notes.append(
            f"{view.dead_nodes} node(s) the output does not depend on were skipped (onnxruntime is given "
            "the graph without them)"
        )
    if view.listed_initializers:
        notes.append(
            f"{len(view.listed_initializers)} initializer(s) are also listed as graph inputs "
            "(old exporters do this); they are treated as constants"
        )
    model_bytes = loaded.model_bytes
    if view.dead_nodes:
        model, model_bytes = _without_dead_nodes(view, where)
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
        model_bytes=model_bytes,
        notes=tuple(notes),
        inputs=interface.inputs,
        fixed=interface.fixed,
    )


def _chain(view: GraphView, input_name: str, output_name: str) -> tuple[list[Link], list[Problem]]:
    """Links from input to output along the one variable tensor, and problems found on the way.

    At each node, the composite handlers of its op may claim a small subgraph rooted there (SiLU as
    Sigmoid + Mul, a leaky ReLU as Where + Greater + Mul); the walk then continues from that
    subgraph's data input. Otherwise the node must read exactly one tensor computed from the input,
    not counting the operands its handlers declare as shape operands.
    """
    chain: list[Link] = []
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
        _, node = view.producer[tensor]
        key = (standard_domain(node.domain), node.op_type)
        link, reasons = None, []
        for handler in _COMPOSITE.get(key, ()):
            found = handler.recognise(view, node)
            if isinstance(found, str):
                if found:
                    reasons.append(f"{handler.name}: {found}")
                continue
            link = Link(node, found.data_input, handler, found.members)
            break
        if link is None:
            shape_operands = _SHAPE_OPERAND_POSITIONS.get(key, set())
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
                            *reasons,
                        ),
                        "store weights as constants (initializers); onnxinv inverts chains of dense layers",
                    )
                )
                if not data:
                    break
            link = Link(node, data[0][1], reasons=tuple(reasons))
        chain.append(link)
        tensor = link.data_input
    chain.reverse()
    return chain, problems


def _screen_ops(view: GraphView, chain: list[Link]) -> list[Problem]:
    """Every node on the chain whose op no handler looks at."""
    problems = []
    for link in chain:
        node = link.node
        domain = standard_domain(node.domain)
        if link.handler is not None or (domain, node.op_type) in _PLAIN:
            continue
        opset = view.node_opset(node)
        qualified = f"{domain}.{node.op_type}" if domain else node.op_type
        hint = REFUSAL_HINTS.get(node.op_type, "supported ops are " + ", ".join(SUPPORTED_OPS))
        reason = f"op {qualified} is not supported" + (" (non-standard domain)" if domain else "")
        problems.append(Problem(view.label(node), qualified, opset, (reason, *link.reasons), hint))
    return problems


def _has_batch_dim(view: GraphView, input_info: TensorInfo, chain: list[Link]) -> bool:
    if len(input_info.shape) <= 1:
        return False
    # A rank-2 input multiplied by a weight on its left is one column-vector sample, not a batch.
    first = next((link.node for link in chain if link.node.op_type not in ShapeOps), None)
    return not (
        len(input_info.shape) == 2
        and first is not None
        and first.op_type == "MatMul"
        and view.constant(first.input[0]) is not None
    )


ShapeOps = {"Identity", "Cast", "Dropout"}


def _build_layers(
    view: GraphView,
    chain: list[Link],
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

    def close(activation: Activation, slope: float | np.ndarray, label: str | None) -> None:
        closed, note = pending.close(activation, slope, label)
        layers.extend(closed)
        if note and notes is not None:
            notes.append(note)

    for link in chain:
        node = link.node
        label = view.label(node)
        position = next((p for p, n in enumerate(node.input) if n == tensor), -1)
        ctx = NodeContext(view, node, label, tensor, position, shapes, batch, has_batch, link.members)
        if not node.output or node.output[0] not in shapes:
            problems.append(Problem(label, node.op_type, ctx.opset, ("its output shape is unknown",)))
            break
        out_size = ctx.out_size
        if out_size == 0:
            problems.append(
                Problem(
                    label,
                    node.op_type,
                    ctx.opset,
                    (
                        f"its output '{node.output[0]}' of shape {list(ctx.out_shape)} holds no values per sample",
                    ),
                    "a layer needs at least one unit; check the weight shapes of the export",
                )
            )
            break
        # no out x in size check here: handlers refuse matrices over the cap on stored entries
        # (composition.MAX_LAYER_ELEMENTS) before building them, and elementwise steps stay diagonal
        steps, reasons = _match(ctx, link)
        if steps is None:
            hint = REFUSAL_HINTS.get(node.op_type, "") or (link.handler.hint if link.handler else "")
            problems.append(Problem(label, node.op_type, ctx.opset, tuple(reasons), hint))
            tensor, size = node.output[0], out_size
            pending = PendingAffine(size)  # keep walking to report every refused node
            continue
        mismatch = _steps_mismatch(steps, size, out_size)
        if mismatch:
            problems.append(
                Problem(
                    label,
                    node.op_type,
                    ctx.opset,
                    (mismatch,),
                    "the file's shapes contradict its weights; check that it runs in onnxruntime",
                )
            )
            break
        for step in steps:
            if step.kind == "affine":
                pending.push(label, out_size, matrix=step.matrix, scale=step.scale, offset=step.offset)
            elif step.kind == "activation":
                close(step.activation, step.slope, None if pending.last_label == label else label)
            size = out_size  # a multi-step node is affine first, then elementwise on its output
            pending.size = size
        tensor, size = node.output[0], out_size
    if not problems and (not pending.empty or not layers):
        close(Activation.IDENTITY, 0.0, None)
    return layers, problems


def _steps_mismatch(steps: tuple[Step, ...], size: int, out_size: int) -> str | None:
    """Why the steps do not map ``size`` values to ``out_size`` (the probed shapes), or None.

    A file whose declared shapes contradict its weights (a damaged attribute, say) can get shapes from
    shape inference that no weight fits; this catches it before a layer is built.
    """
    current = size
    for step in steps:
        if step.matrix is not None and tuple(step.matrix.shape) != (out_size, current):
            return (
                f"its weights map {step.matrix.shape[1]} values to {step.matrix.shape[0]}, but the node reads "
                f"{current} and writes {out_size} values per sample"
            )
        if step.scale is not None and np.size(step.scale) != out_size:
            return f"its scale has {np.size(step.scale)} values for {out_size} outputs per sample"
        if step.offset is not None and np.size(step.offset) != out_size:
            return f"its offset has {np.size(step.offset)} values for {out_size} outputs per sample"
        if step.kind == "activation" and np.size(step.slope) not in (1, out_size):
            return f"its slopes have {np.size(step.slope)} values for {out_size} units"
        if step.kind == "affine" and step.matrix is None and step.scale is None and current != out_size:
            return f"it adds an offset but changes the size from {current} to {out_size}"
        current = out_size
    return None


def _match(ctx: NodeContext, link: Link) -> tuple[tuple[Step, ...] | None, list[str]]:
    """The steps of the first handler that accepts the link, or the reason every candidate gave."""
    reasons = []
    key = (standard_domain(ctx.node.domain), ctx.node.op_type)
    candidates = [link.handler] if link.handler is not None else _PLAIN.get(key, [])
    for handler in candidates:
        result = handler.match(ctx)
        if isinstance(result, Step):
            return (result,), []
        if isinstance(result, tuple):
            return result, []
        reasons.append(f"{handler.name}: {result}" if handler.name else result)
    return None, reasons


def _without_dead_nodes(view: GraphView, where: str) -> tuple[onnx.ModelProto, bytes]:
    """The model with only the nodes its output needs (in file order), and its bytes for onnxruntime."""
    from google.protobuf.message import EncodeError

    pruned = onnx.ModelProto()
    pruned.CopyFrom(view.model)
    del pruned.graph.node[:]
    pruned.graph.node.extend(view.model.graph.node[i] for i in sorted(view.needed_indices))
    try:
        return pruned, pruned.SerializeToString()
    except (EncodeError, ValueError):
        raise UnsupportedModelError(
            f"{where}: the model without its dead nodes cannot be serialized for onnxruntime (over "
            "protobuf's 2 GiB limit)."
        ) from None


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


_PLAIN, _COMPOSITE, _SHAPE_OPERAND_POSITIONS, _SUBSTITUTES = _registry()


def _dims(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
