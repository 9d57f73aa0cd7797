"""Piecewise-linear activations written with elementwise ops, as JAX, TF and hand-written graphs do.

Recognised (each a composite handler claiming the small subgraph rooted at its last node):

* ``Where(Greater(x, t), A, B)`` (also ``GreaterOrEqual``, ``Less``, ``LessOrEqual``, either operand
  order), each branch ``x``, ``Mul(x, c)``, ``Div(x, c)``, ``Neg(x)`` or a constant, when the two
  branches meet at the threshold: a leaky ReLU ``Where(x > 0, x, a·x)``, a ReLU
  ``Where(x > 0, x, 0)``, or a shifted / scaled version of them.
* ``Max(A, B)`` with the same branch forms: ``Max(x, 0)`` (ReLU), ``Max(x, a·x)`` (TF's leaky ReLU),
  ``Max(x, c)`` (a ReLU shifted by c).

Every one becomes ``s · leaky_r(x)`` (an activation with per-unit slope ``r``, then a diagonal scale
``s``) or ``c + s·relu(±(x − t))``; the scale and shift fold into the neighbouring layers. A pattern that
is not injective (slopes of opposite signs, a flat side) or jumps at its threshold is refused with
that reason, naming the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxinv.layers import Activation
from onnxinv.parser.context import Handler, NodeContext, Step, Subgraph, converge, per_sample
from onnxinv.parser.graph import standard_domain

if TYPE_CHECKING:
    from onnxinv.parser.graph import GraphView

# comparison op -> True when it reads "x above the threshold" with x as its first operand
_COMPARISONS = {"Greater": True, "GreaterOrEqual": True, "Less": False, "LessOrEqual": False}


def slope_activation(slopes: np.ndarray, what: str) -> Step | str:
    """The activation of a leaky ReLU with these per-unit negative-side slopes, or why it is refused.

    One slope for every unit: a leaky ReLU (a ReLU at 0). One slope per unit: all must be positive,
    since the layer-wise inversion divides by each unit's slope.
    """
    slopes = np.asarray(slopes, dtype=np.float64).reshape(-1)
    if slopes.size == 0 or np.all(slopes == slopes[0]):
        value = float(slopes[0]) if slopes.size else 0.0
        if value == 0.0:
            return Step("activation", activation=Activation.RELU)
        return Step("activation", activation=Activation.LEAKY_RELU, slope=value)
    bad = int(np.sum(slopes <= 0))
    if bad:
        return (
            f"{what} differ between units and {bad} of {slopes.size} are not positive (min "
            f"{slopes.min():g}); one slope per unit is inverted unit by unit, which needs every slope > 0"
        )
    return Step("activation", activation=Activation.LEAKY_RELU, slope=slopes)


def leaky_steps(positive: np.ndarray, negative: np.ndarray, what: str) -> tuple[Step, ...] | str:
    """``x -> positive·x`` for x > 0 and ``negative·x`` for x < 0 (per unit), as steps.

    It is ``positive · leaky_r(x)`` with ``r = negative / positive``: injective when ``positive != 0``
    and ``r >= 0``.
    """
    if np.any(positive == 0):
        return f"{what} is flat for positive inputs at some unit (slope 0), so it is not injective"
    ratio = negative / positive
    if np.any(ratio < 0):
        return (
            f"{what} has slopes of opposite signs on the two sides of 0 (ratio down to {ratio.min():g}), "
            "so two inputs give the same output: not injective"
        )
    activation = slope_activation(ratio, f"{what}'s slopes")
    if isinstance(activation, str):
        return activation
    if np.all(positive == 1.0):
        return (activation,)
    return activation, Step("affine", scale=positive)


class _Branches:
    """The two sides of a piecewise-linear pattern: each ``slope · x`` or a constant, per unit."""

    def __init__(self, view: GraphView, sub: Subgraph) -> None:
        self.view = view
        self.base = sub.data_input
        self.members = {m.output[0]: m for m in sub.members}

    def term(self, tensor: str) -> tuple[str, str | float] | str:
        """``("slope", name or 1.0)``, ``("constant", name)``, ``("negated", 1.0)``, or a reason."""
        if tensor == self.base:
            return ("slope", 1.0)
        if self.view.constant(tensor) is not None:
            return ("constant", tensor)
        node = self.members.get(tensor)
        if node is None or standard_domain(node.domain):
            return (
                f"'{tensor}' is neither the input '{self.base}', a constant, nor the input times a constant"
            )
        inputs = list(node.input)
        if node.op_type == "Neg" and inputs == [self.base]:
            return ("negated", 1.0)
        if node.op_type in ("Mul", "Div") and len(inputs) == 2 and self.base in inputs:
            other = inputs[1 - inputs.index(self.base)]
            if self.view.constant(other) is not None and (node.op_type == "Mul" or inputs[0] == self.base):
                return ("scaled" if node.op_type == "Mul" else "divided", other)
        return (
            f"'{tensor}' ({node.op_type}) is neither the input '{self.base}', a constant, nor the input "
            "times a constant"
        )

    def uses(self, *terms: tuple[str, str | float]) -> int:
        """How many nodes the terms account for (to check nothing else hides in the subgraph)."""
        return sum(kind in ("scaled", "divided", "negated") for kind, _ in terms)


def _values(ctx: NodeContext, term: tuple[str, str | float], what: str) -> tuple[str, np.ndarray] | str:
    """A branch as ``("slope", per-unit slope)`` or ``("constant", per-unit value)``."""
    kind, ref = term
    if kind == "constant":
        value = per_sample(ctx, ctx.view.constant(ref), ctx.out_shape, f"{what} '{ref}'")  # type: ignore[arg-type]  # term() gives this kind only for a constant tensor
        return value if isinstance(value, str) else ("constant", value)
    if kind == "slope":
        return ("slope", np.ones(ctx.out_size))
    if kind == "negated":
        return ("slope", -np.ones(ctx.out_size))
    value = per_sample(ctx, ctx.view.constant(ref), ctx.out_shape, f"{what}'s factor '{ref}'")  # type: ignore[arg-type]  # term() gives this kind only for a constant tensor
    if isinstance(value, str):
        return value
    if kind == "divided":
        if np.any(value == 0):
            return f"{what} divides by '{ref}', which has zero entries"
        value = 1.0 / value
    return ("slope", value)


def _two_sided(
    high: tuple[str, np.ndarray], low: tuple[str, np.ndarray], threshold: np.ndarray, what: str
) -> tuple[Step, ...] | str:
    """Steps for ``high(x)`` above ``threshold`` and ``low(x)`` below it."""
    (hk, hv), (lk, lv) = high, low
    if hk == "constant" and lk == "constant":
        return f"{what} is constant on both sides of its threshold, so it is not injective"
    if hk == "slope" and lk == "slope":
        jump = (hv != lv) & (threshold != 0)
        if np.any(jump):
            return (
                f"{what} jumps at its threshold {float(threshold[jump][0]):g}: its branches x·{hv[jump][0]:g} "
                f"and x·{lv[jump][0]:g} meet only at 0"
            )
        return leaky_steps(hv, lv, what)
    slope, constant = (hv, lv) if hk == "slope" else (lv, hv)
    if np.any(slope == 0):
        return f"{what} is flat on both sides at some unit (slope 0), so it is not injective"
    if not np.allclose(slope * threshold, constant, rtol=1e-6, atol=1e-7):
        return (
            f"{what} jumps at its threshold: the branch x·s gives {float((slope * threshold)[0]):g} there "
            f"but the constant branch is {float(constant[0]):g}"
        )
    if hk == "slope":  # slope·x above t, slope·t below: slope·relu(x − t) + slope·t
        return _scaled_relu(slope, threshold, constant)
    # slope·t above t, slope·x below: −slope·relu(t − x) + slope·t
    return _scaled_relu(-slope, threshold, constant, flip=True)


def _scaled_relu(
    scale: np.ndarray, threshold: np.ndarray, offset: np.ndarray, flip: bool = False
) -> tuple[Step, ...]:
    """``offset + scale·relu(±(x − threshold))``: affine, ReLU, affine."""
    sign = -1.0 if flip else 1.0
    first = Step("affine", scale=-np.ones(scale.shape) if flip else None, offset=-sign * threshold)
    last = Step("affine", scale=None if np.all(scale == 1.0) else scale, offset=offset)
    return first, Step("activation", activation=Activation.RELU), last


class WhereActivationHandler(Handler):
    """``Where(x > t, A, B)`` with linear or constant branches: a (leaky) ReLU, possibly shifted."""

    ops = ("Where",)
    name = "piecewise-linear activation written with Where"

    def recognise(self, view: GraphView, node: onnx.NodeProto) -> Subgraph | str:
        if len(node.input) != 3:
            return ""
        sub = converge(view, node)
        if isinstance(sub, str):
            return sub
        found = self._structure(view, sub)
        return found if isinstance(found, str) else sub

    def _structure(
        self, view: GraphView, sub: Subgraph
    ) -> tuple[tuple[str, str | float], tuple[str, str | float], str] | str:
        root = sub.root
        compare = next((m for m in sub.members if m.output[0] == root.input[0]), None)
        if compare is None or compare.op_type not in _COMPARISONS or standard_domain(compare.domain):
            return f"its condition '{root.input[0]}' is not a comparison of the input with a constant"
        a, b = (list(compare.input) + ["", ""])[:2]
        if sub.data_input not in (a, b) or view.constant(b if a == sub.data_input else a) is None:
            return (
                f"its condition ({compare.op_type} '{view.label(compare)}') does not compare the input "
                f"'{sub.data_input}' with a constant"
            )
        above_first = _COMPARISONS[compare.op_type] == (a == sub.data_input)
        threshold = b if a == sub.data_input else a
        branches = _Branches(view, sub)
        then, other = branches.term(root.input[1]), branches.term(root.input[2])
        if isinstance(then, str):
            return then
        if isinstance(other, str):
            return other
        if branches.uses(then, other) + 2 != len(sub.members):
            return "its subgraph holds nodes besides the comparison and the two branches"
        high, low = (then, other) if above_first else (other, then)
        return high, low, threshold

    def match(self, ctx: NodeContext) -> tuple[Step, ...] | str:
        sub = Subgraph(ctx.node, ctx.var_input, ctx.members)
        found = self._structure(ctx.view, sub)
        assert not isinstance(found, str)  # recognise accepted this subgraph
        high, low, threshold = found
        what = f"Where(x vs '{threshold}')"
        t = per_sample(ctx, ctx.view.constant(threshold), ctx.out_shape, f"threshold '{threshold}'")  # type: ignore[arg-type]  # checked constant in _structure
        high_v, low_v = _values(ctx, high, "branch"), _values(ctx, low, "branch")
        if isinstance(t, str):
            return t
        if isinstance(high_v, str):
            return high_v
        if isinstance(low_v, str):
            return low_v
        return _two_sided(high_v, low_v, t, what)


class MaxActivationHandler(Handler):
    """``Max(A, B)`` with linear or constant operands: ``Max(x, 0)``, ``Max(x, a·x)``, ``Max(x, c)``."""

    ops = ("Max",)
    name = "piecewise-linear activation written with Max"

    def recognise(self, view: GraphView, node: onnx.NodeProto) -> Subgraph | str:
        if len(node.input) != 2:
            return f"it takes the maximum of {len(node.input)} tensors, not of two"
        sub = converge(view, node)
        if isinstance(sub, str):
            return sub
        found = self._structure(view, sub)
        return found if isinstance(found, str) else sub

    def _structure(self, view: GraphView, sub: Subgraph) -> list[tuple[str, str | float]] | str:
        branches = _Branches(view, sub)
        terms = []
        for name in sub.root.input:
            term = branches.term(name)
            if isinstance(term, str):
                return term
            terms.append(term)
        if branches.uses(*terms) + 1 != len(sub.members):
            return "its subgraph holds nodes besides the two operands"
        return terms

    def match(self, ctx: NodeContext) -> tuple[Step, ...] | str:
        terms = self._structure(ctx.view, Subgraph(ctx.node, ctx.var_input, ctx.members))
        assert not isinstance(terms, str)  # recognise accepted this subgraph
        first_v, second_v = (_values(ctx, term, "operand") for term in terms)
        if isinstance(first_v, str):
            return first_v
        if isinstance(second_v, str):
            return second_v
        (ak, av), (bk, bv) = first_v, second_v
        what = "Max"
        if ak == "slope" and bk == "slope":  # max(a x, b x): max(a, b) x above 0, min(a, b) x below
            return leaky_steps(np.maximum(av, bv), np.minimum(av, bv), what)
        slope, constant = (av, bv) if ak == "slope" else (bv, av)
        if np.any(slope == 0):
            return f"{what} of a constant and 0·x is constant, so it is not injective"
        # max(s x, c) = relu(s x − c) + c
        first = Step("affine", scale=None if np.all(slope == 1.0) else slope, offset=-constant)
        return first, Step("activation", activation=Activation.RELU), Step("affine", offset=constant)
