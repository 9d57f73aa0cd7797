"""Spellings onnxinv recognises only to refuse them, each with the real reason.

Two kinds:

* single ops whose math rules them out (``LayerNormalization``, ``Softplus``, ``Gelu``, ...): a plain
  handler that always answers with its reason;
* composites, the same functions written with several elementwise ops: SiLU / Swish as
  ``Mul(x, Sigmoid(x))``, Mish as ``Mul(x, Tanh(Softplus(x)))``, GELU with ``Erf`` or its ``Tanh``
  approximation, HardSwish as ``Mul(x, HardSigmoid(x))``, the torch dynamo exporter's Softplus
  ``Where(Greater(x, threshold), x, Softplus(x))`` and a LayerNorm written as ``ReduceMean``, ``Sub``,
  ``Pow``, ``Sqrt``, ``Div``. A composite claims the small subgraph rooted at its last node (see
  :func:`onnxinv.parser.context.converge`), so the refusal names it instead of reporting "a node
  combines several tensors" or pointing at weights fed as inputs.

Why each is refused: the layer-wise inversion needs each activation to be piecewise linear (ReLU,
leaky ReLU) or an elementwise bijection it implements (Tanh, Sigmoid). A map that is not monotone
(SiLU, GELU, Mish, HardSwish) sends two inputs to one output, so no method can recover the latent;
a per-sample normalisation (LayerNorm) forgets each sample's mean and scale; Softplus and ELU are
invertible elementwise but not (yet) supported by the inversion methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxinv.parser.context import Handler, NodeContext, Subgraph, converge
from onnxinv.parser.graph import standard_domain

if TYPE_CHECKING:
    from onnxinv.parser.graph import GraphView

NOT_MONOTONE = (
    "it is not monotone (it dips below 0 for negative inputs, then rises), so two inputs give the same "
    "output and the layer cannot be inverted"
)
NOT_SUPPORTED_SMOOTH = (
    "it is not supported: it is invertible elementwise (strictly increasing) but not piecewise linear, "
    "and onnxinv's layer-wise methods handle ReLU, LeakyReLU / PReLU, Tanh and Sigmoid activations only"
)
NORMALISES = (
    "it normalises each sample to zero mean and unit variance, so inputs that differ by a shift or a "
    "positive scale give the same output: it is not injective (it loses two degrees of freedom per sample)"
)

# op -> (name, reason); for ops with no handler of their own
_OP_REASONS = {
    "Softplus": ("Softplus", NOT_SUPPORTED_SMOOTH),
    "Elu": ("ELU", NOT_SUPPORTED_SMOOTH),
    "Selu": ("SELU", NOT_SUPPORTED_SMOOTH),
    "Celu": ("CELU", NOT_SUPPORTED_SMOOTH),
    "Softsign": ("Softsign", NOT_SUPPORTED_SMOOTH),
    "ThresholdedRelu": (
        "ThresholdedRelu",
        "it is not supported: it jumps from 0 to its threshold, so it is not continuous and maps every input below the threshold to 0",
    ),
    "Gelu": ("GELU", NOT_MONOTONE),
    "Mish": ("Mish", NOT_MONOTONE),
    "HardSwish": ("HardSwish", NOT_MONOTONE),
    "LayerNormalization": ("LayerNorm", NORMALISES),
    "RMSNormalization": (
        "RMSNorm",
        "it divides each sample by its root mean square, so inputs that differ by a positive scale give the same output: it is not injective",
    ),
    "InstanceNormalization": (
        "InstanceNorm",
        "it normalises each channel of each sample to zero mean and unit variance, so inputs that differ by a per-channel shift or scale give the same output: it is not injective",
    ),
    "GroupNormalization": (
        "GroupNorm",
        "it normalises each group of channels of each sample, so inputs that differ by a per-group shift or scale give the same output: it is not injective",
    ),
    "LpNormalization": (
        "LpNormalization",
        "it divides each sample by its norm, so inputs that differ by a positive scale give the same output: it is not injective",
    ),
}
# Why the op is refused and what to try, shown after "Try:".
REFUSAL_HINTS = {
    "Softplus": "re-export with ReLU or LeakyReLU, or invert with gradient descent elsewhere",
    "Elu": "replace ELU with LeakyReLU or ReLU",
    "Selu": "replace SELU with LeakyReLU or ReLU",
    "Celu": "replace CELU with LeakyReLU or ReLU",
    "Softsign": "replace Softsign with Tanh",
    "Gelu": "use LeakyReLU, which is monotone and piecewise linear",
    "Mish": "use LeakyReLU, which is monotone and piecewise linear",
    "HardSwish": "use LeakyReLU, which is monotone and piecewise linear",
    "LayerNormalization": "remove the normalisation from the generator, or use BatchNorm (folded in inference mode)",
    "RMSNormalization": "remove the normalisation from the generator",
    "InstanceNormalization": "remove the normalisation from the generator, or use BatchNorm",
    "GroupNormalization": "remove the normalisation from the generator, or use BatchNorm",
}


class RefusedOpHandler(Handler):
    """Ops refused for their math, each with its reason (and a hint in :data:`REFUSAL_HINTS`)."""

    ops = tuple(_OP_REASONS)
    name = ""  # the reason names the function itself
    refuses = True

    def match(self, ctx: NodeContext) -> str:
        name, reason = _OP_REASONS[ctx.node.op_type]
        return f"{name}: {reason}"


def _ops(view: GraphView, sub: Subgraph) -> set[str]:
    return {m.op_type for m in sub.members if not standard_domain(m.domain)}


class _NamedComposite(Handler):
    """A function written with several elementwise ops, recognised by the ops in its subgraph."""

    refuses = True
    reason = ""
    hint = "use LeakyReLU, which is monotone and piecewise linear"

    def recognise(self, view: GraphView, node: onnx.NodeProto) -> Subgraph | str:
        sub = converge(view, node)
        if isinstance(sub, str) or len(sub.members) < 2 or not self.fits(_ops(view, sub), sub, view):
            return ""  # not this pattern: say nothing, the node goes to the other handlers
        return sub

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        raise NotImplementedError

    def match(self, ctx: NodeContext) -> str:
        nodes = ", ".join(f"{m.op_type} '{ctx.view.label(m)}'" for m in ctx.members)
        return f"{self.reason} (nodes: {nodes})"


def _gated(sub: Subgraph, view: GraphView) -> bool:
    """``Mul(g(x), f(x))``: the root multiplies two tensors computed from the input."""
    return sub.root.op_type == "Mul" and sum(i in view.variable for i in sub.root.input) == 2


class DynamoSoftplusHandler(_NamedComposite):
    """torch dynamo's Softplus: ``Where(Greater(beta·x, threshold), x, Softplus(beta·x) / beta)``."""

    ops = ("Where",)
    name = "Softplus (torch dynamo's Where(Greater(x, threshold), x, Softplus(x)))"
    reason = NOT_SUPPORTED_SMOOTH
    hint = REFUSAL_HINTS["Softplus"]

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        return "Softplus" in ops and "Tanh" not in ops


class SiluHandler(_NamedComposite):
    """SiLU / Swish: ``Mul(x, Sigmoid(x))`` or ``Mul(x, Sigmoid(beta·x))``."""

    ops = ("Mul",)
    name = "SiLU / Swish (x·sigmoid(x) written as Sigmoid + Mul)"
    reason = NOT_MONOTONE

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        return _gated(sub, view) and "Sigmoid" in ops and ops <= {"Sigmoid", "Mul", "Div"}


class MishHandler(_NamedComposite):
    """Mish: ``Mul(x, Tanh(Softplus(x)))``."""

    ops = ("Mul",)
    name = "Mish (x·tanh(softplus(x)) written as Softplus + Tanh + Mul)"
    reason = NOT_MONOTONE

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        return _gated(sub, view) and {"Tanh", "Softplus"} <= ops <= {"Tanh", "Softplus", "Mul"}


class GeluHandler(_NamedComposite):
    """GELU: ``x · (1 + erf(x / √2))`` (torch legacy) or its tanh approximation."""

    ops = ("Mul",)
    name = "GELU (x·Φ(x) written with Erf or Tanh)"
    reason = NOT_MONOTONE

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        elementwise = {"Erf", "Tanh", "Mul", "Add", "Div", "Pow", "Sqrt"}
        return _gated(sub, view) and bool(ops & {"Erf", "Tanh"}) and ops <= elementwise


class HardSwishHandler(_NamedComposite):
    """HardSwish: ``Mul(x, HardSigmoid(x))`` or ``x · relu6(x + 3) / 6``."""

    ops = ("Mul",)
    name = "HardSwish (x·hardsigmoid(x) written with HardSigmoid or Clip)"
    reason = NOT_MONOTONE

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        return (
            _gated(sub, view)
            and bool(ops & {"HardSigmoid", "Clip"})
            and ops <= {"HardSigmoid", "Clip", "Add", "Mul", "Div"}
        )


class DecomposedNormHandler(_NamedComposite):
    """A LayerNorm written out: ``(x − mean(x)) / sqrt(var(x) + eps)`` with ``ReduceMean``."""

    ops = ("Div", "Mul", "Sub")
    name = "LayerNorm written as ReduceMean, Sub, Pow, Sqrt, Div"
    reason = NORMALISES
    hint = REFUSAL_HINTS["LayerNormalization"]

    def recognise(self, view: GraphView, node: onnx.NodeProto) -> Subgraph | str:
        sub = super().recognise(view, node)
        if isinstance(sub, str):
            return sub
        # (x - mean) is read twice (variance and quotient): the first subgraph stops there; take in the
        # centring too, so the whole LayerNorm is one refusal naming all its nodes
        producer = view.producer_of(sub.data_input)
        if producer is not None and producer.op_type in self.ops:
            more = converge(view, producer)
            if not isinstance(more, str) and self.fits(_ops(view, more), more, view):
                members = {m.output[0]: m for m in (*sub.members, *more.members)}
                readers = view.consumers(sub.data_input)
                if all(r.output and r.output[0] in members for r in readers):
                    ordered = sorted(members.values(), key=lambda m: view.position(m.output[0]))
                    return Subgraph(node, more.data_input, tuple(ordered))
        return sub

    def fits(self, ops: set[str], sub: Subgraph, view: GraphView) -> bool:
        return bool(ops & {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"})
