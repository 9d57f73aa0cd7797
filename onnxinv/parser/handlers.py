"""Pattern handlers: one small class per ONNX spelling of a piece of a dense layer.

Each handler names the op types it looks at and returns either a :class:`Step` (what the node does to
the flattened per-sample vector), a tuple of steps (a node that is an affine map and an activation at
once, like ``FusedGemm``), or a reason string saying why it does not match, naming the node and
tensor. ``HANDLERS`` is the explicit ordered list the parser tries, most specific first.

A handler declares everything the parser needs to know about its ops: ``shape_operands`` (inputs that
only set a shape and may be computed from the latent at run time, like Reshape's target shape),
``probe_node`` (a standard-op stand-in the shape probe can evaluate, for a non-standard op), and, for a
*composite* handler, ``recognise`` (the small subgraph rooted at a node that it consumes as one step:
see :mod:`onnxinv.parser.context`). A new pattern is therefore one handler class plus one line in
``HANDLERS``.

Conventions: ``ctx.shape(name)`` is the tensor's concrete shape when the model runs on the probe
batch; ``ctx.batch`` is that batch size (1 for a model without a batch dim). Per-sample vectors are
the row-major flattening of one sample, batch outermost.
"""

from __future__ import annotations

import numpy as np
import onnx
import scipy.sparse as sp

from onnxinv.layers import Activation
from onnxinv.parser import activations, conv_handlers, refusals
from onnxinv.parser.activations import slope_activation
from onnxinv.parser.context import NOOP, Handler, NodeContext, Step, Subgraph, attribute, per_sample
from onnxinv.parser.lowering import permutation_matrix

__all__ = ["HANDLERS", "NOOP", "REFUSAL_HINTS", "SUPPORTED_OPS", "Handler", "NodeContext", "Step", "Subgraph"]


# Shared helpers, defined beside NodeContext; the underscore names are kept for handler modules.
_attr = attribute
_per_sample = per_sample


class GemmHandler(Handler):
    """``Gemm(x, W, C)``: ``alpha * x @ op(W) + beta * C`` with the variable as A (transA=0)."""

    ops = ("Gemm",)
    name = "dense Gemm"

    def match(self, ctx: NodeContext) -> Step | tuple[Step, ...] | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return (
                f"its variable input '{ctx.var_input}' is operand B, not A (the weight must be a constant B)"
            )
        if _attr(node, "transA", 0):
            return (
                "transA=1 transposes the batch into the features, which no exporter writes for a dense layer"
            )
        weight = ctx.constant(1)
        if weight is None:
            return f"its weight '{node.input[1]}' is not a constant"
        if weight.ndim != 2:
            return f"its weight '{node.input[1]}' has shape {list(weight.shape)}, not 2-D"
        if len(ctx.shape(ctx.var_input)) != 2:
            return f"its input '{ctx.var_input}' has shape {list(ctx.shape(ctx.var_input))}, not (batch, features)"
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        w = weight.astype(np.float64)
        matrix = alpha * (w if _attr(node, "transB", 0) else w.T)  # (out, in)
        offset = None
        if len(node.input) > 2 and node.input[2]:
            bias = ctx.constant(2)
            if bias is None:
                return f"its bias '{node.input[2]}' is not a constant"
            per_sample = _per_sample(
                ctx, beta * bias.astype(np.float64), ctx.out_shape, f"bias '{node.input[2]}'"
            )
            if isinstance(per_sample, str):
                return per_sample
            offset = per_sample
        return Step("affine", matrix=matrix, offset=offset)


class FusedGemmHandler(GemmHandler):
    """onnxruntime's ``com.microsoft.FusedGemm``: a Gemm with its activation as an attribute."""

    ops = ("FusedGemm",)
    domain = "com.microsoft"
    name = "FusedGemm"
    _ACTS = {
        "Relu": Activation.RELU,
        "LeakyRelu": Activation.LEAKY_RELU,
        "Tanh": Activation.TANH,
        "Sigmoid": Activation.SIGMOID,
    }

    def match(self, ctx: NodeContext) -> Step | tuple[Step, ...] | str:
        act = _attr(ctx.node, "activation", b"")
        act = act.decode() if isinstance(act, bytes) else str(act)
        if act and act not in self._ACTS:
            return f"its fused activation '{act}' is not one onnxinv can invert"
        affine = super().match(ctx)
        if isinstance(affine, str) or not act:
            return affine
        assert isinstance(affine, Step)  # a Gemm is one affine step
        slope = float(_attr(ctx.node, "activation_alpha", 0.01)) if act == "LeakyRelu" else 0.0
        return affine, Step("activation", activation=self._ACTS[act], slope=slope)

    def probe_node(self, node: onnx.NodeProto) -> onnx.NodeProto:
        plain = onnx.helper.make_node("Gemm", node.input, node.output, name=node.name)
        plain.attribute.extend(a for a in node.attribute if a.name in ("alpha", "beta", "transA", "transB"))
        return plain


class MatMulWeightRightHandler(Handler):
    """``MatMul(x, W)`` with a constant ``W`` of shape (in, out), applied to the last axis of x."""

    ops = ("MatMul",)
    name = "MatMul with the weight on the right"

    def match(self, ctx: NodeContext) -> Step | str:
        if ctx.variable_position != 0:
            return f"input A '{ctx.node.input[0]}' is not the variable"
        weight = ctx.constant(1)
        if weight is None:
            return f"input B '{ctx.node.input[1]}' is not a constant (a MatMul of two variables is not a dense layer)"
        if weight.ndim not in (1, 2):
            return f"its weight '{ctx.node.input[1]}' has shape {list(weight.shape)}, not 1-D or 2-D"
        w = weight.astype(np.float64).reshape(weight.shape[0], -1)
        x_shape = ctx.shape(ctx.var_input)
        if not x_shape or x_shape[-1] != w.shape[0]:
            return f"its input '{ctx.var_input}' of shape {list(x_shape)} does not end in {w.shape[0]}"
        rows = ctx.in_size // w.shape[0]
        matrix = w.T if rows == 1 else sp.kron(sp.eye_array(rows), w.T, format="csr")
        return Step("affine", matrix=matrix)


class MatMulWeightLeftHandler(Handler):
    """``MatMul(W, x)`` with a constant (out, in) weight on the left of an unbatched or rank-3+ input."""

    ops = ("MatMul",)
    name = "MatMul with the weight on the left"

    def match(self, ctx: NodeContext) -> Step | str:
        if ctx.variable_position != 1:
            return f"input B '{ctx.node.input[1]}' is not the variable"
        weight = ctx.constant(0)
        if weight is None:
            return f"input A '{ctx.node.input[0]}' is not a constant"
        if weight.ndim != 2:
            return f"its weight '{ctx.node.input[0]}' has shape {list(weight.shape)}, not 2-D"
        w = weight.astype(np.float64)
        x_shape = ctx.shape(ctx.var_input)
        if not ctx.has_batch:
            if len(x_shape) == 1 and x_shape[0] == w.shape[1]:
                return Step("affine", matrix=w)
            if len(x_shape) == 2 and x_shape[0] == w.shape[1]:
                return Step("affine", matrix=sp.kron(w, sp.eye_array(x_shape[1]), format="csr"))
            return f"its input '{ctx.var_input}' of shape {list(x_shape)} does not fit the weight {list(w.shape)}"
        if len(x_shape) < 3 or x_shape[-2] != w.shape[1]:
            return (
                f"the weight multiplies input '{ctx.var_input}' of shape {list(x_shape)} from the left, "
                "which mixes the samples of a batch"
            )
        lead = ctx.in_size // (x_shape[-2] * x_shape[-1])
        block = sp.kron(w, sp.eye_array(x_shape[-1]))
        return Step("affine", matrix=sp.kron(sp.eye_array(lead), block, format="csr"))


class ElementwiseAffineHandler(Handler):
    """Add / Sub / Mul / Div of the variable and a constant: a diagonal affine map."""

    ops = ("Add", "Sub", "Mul", "Div")
    name = "elementwise op with a constant"

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        other = 1 - ctx.variable_position
        if len(node.input) != 2:
            return f"it has {len(node.input)} inputs"
        value = ctx.constant(other)
        if value is None:
            return f"its other operand '{node.input[other]}' is not a constant"
        if int(np.prod(ctx.out_shape)) != int(np.prod(ctx.shape(ctx.var_input))):
            return f"the constant '{node.input[other]}' broadcasts the variable to a larger shape {list(ctx.out_shape)}"
        c = _per_sample(ctx, value, ctx.out_shape, f"constant '{node.input[other]}'")
        if isinstance(c, str):
            return c
        op, size = node.op_type, ctx.in_size
        if op == "Add":
            return Step("affine", offset=c)
        if op == "Sub":
            if ctx.variable_position == 0:
                return Step("affine", offset=-c)
            return Step("affine", scale=-np.ones(size), offset=c)
        if op == "Mul":
            return Step("affine", scale=c)
        if ctx.variable_position == 1:
            return "it divides a constant by the variable, which is not an affine map"
        if np.any(c == 0):
            return f"it divides by the constant '{node.input[other]}', which has zero entries"
        return Step("affine", scale=1.0 / c)


class ConcatHandler(Handler):
    """``Concat`` of the variable with constants (a fixed one-hot label, an embedding, a condition):
    the variable's values are placed among constant ones, a selection matrix plus an offset."""

    ops = ("Concat",)
    name = "Concat of the variable with constants"

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        x_shape = tuple(ctx.shape(ctx.var_input))
        rank = len(x_shape)
        axis = int(_attr(node, "axis", 0))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            return f"its axis {_attr(node, 'axis', 0)} does not fit its input of shape {list(x_shape)}"
        if ctx.has_batch and axis == 0:
            return "it concatenates along the batch axis, which mixes samples"
        sample = x_shape[1:] if ctx.has_batch else x_shape
        where = np.broadcast_to(np.arange(ctx.in_size).reshape(sample), x_shape)
        index_parts, value_parts = [], []
        for position, name in enumerate(node.input):
            if position == ctx.variable_position:
                index_parts.append(where)
                value_parts.append(np.zeros(x_shape))
                continue
            value = ctx.constant(position)
            if value is None:
                return f"its input '{name}' is neither the variable nor a constant"
            if value.ndim != rank:
                return f"its constant '{name}' of shape {list(value.shape)} has not the rank {rank} of its variable input"
            index_parts.append(np.full(value.shape, -1))
            value_parts.append(np.asarray(value, dtype=np.float64))
        try:
            index = np.concatenate(index_parts, axis=axis)
            values = np.concatenate(value_parts, axis=axis)
        except ValueError:
            shapes = ", ".join(str(list(p.shape)) for p in index_parts)
            return f"its inputs of shapes {shapes} do not concatenate along axis {axis}"
        if index.shape != tuple(ctx.out_shape):
            return f"its output has shape {list(ctx.out_shape)}, not {list(index.shape)}"
        rows = values.reshape(ctx.batch, -1)
        if ctx.batch > 1 and not np.all(rows == rows[:1]):
            return "its constants differ between samples of the batch"
        picked = index.reshape(ctx.batch, -1)[0]
        kept = np.flatnonzero(picked >= 0)
        # a sparse selection: an image condition beside feature maps would be a huge dense matrix
        matrix = sp.csr_array((np.ones(kept.size), (kept, picked[kept])), shape=(picked.size, ctx.in_size))
        return Step("affine", matrix=matrix, offset=np.where(picked >= 0, 0.0, rows[0]))


class NegHandler(Handler):
    ops = ("Neg",)
    name = "Neg"

    def match(self, ctx: NodeContext) -> Step | str:
        return Step("affine", scale=-np.ones(ctx.in_size))


class BatchNormHandler(Handler):
    """Inference-mode ``BatchNormalization``: ``scale * (x - mean) / sqrt(var + eps) + B`` per channel."""

    ops = ("BatchNormalization",)
    name = "BatchNormalization in inference mode"

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return "its statistics, not its data input, come from the model input"
        if _attr(node, "training_mode", 0):
            return "training_mode=1 normalises with batch statistics, which depend on the batch"
        if len([o for o in node.output if o]) > 1:
            return "it also outputs running statistics, as in training"
        params = [ctx.constant(i) for i in range(1, 5)]
        for i, p in zip(range(1, 5), params):
            if p is None:
                return f"its parameter '{node.input[i]}' is not a constant"
        scale, bias, mean, var = (p.astype(np.float64).reshape(-1) for p in params)  # type: ignore[union-attr]  # None refused above
        x_shape = ctx.shape(ctx.var_input)
        channels = x_shape[1] if len(x_shape) >= 2 else None
        if channels is None or not ctx.has_batch:
            return (
                f"its input '{ctx.var_input}' of shape {list(x_shape)} has no channel axis after a batch axis"
            )
        if any(p.size != channels for p in (scale, bias, mean, var)):
            return f"its parameters do not have {channels} entries (one per channel)"
        eps = float(_attr(node, "epsilon", 1e-5))
        a = scale / np.sqrt(var + eps)
        spatial = int(np.prod(x_shape[2:])) if len(x_shape) > 2 else 1
        return Step("affine", scale=np.repeat(a, spatial), offset=np.repeat(bias - a * mean, spatial))


class TransposeHandler(Handler):
    """``Transpose`` that keeps the batch axis first: a permutation of the per-sample vector."""

    ops = ("Transpose",)
    name = "Transpose"

    def match(self, ctx: NodeContext) -> Step | str:
        x_shape = ctx.shape(ctx.var_input)
        perm = list(_attr(ctx.node, "perm", list(reversed(range(len(x_shape))))))
        if ctx.has_batch and (not perm or perm[0] != 0):
            return f"perm={perm} moves the batch axis"
        sample_shape = x_shape[1:] if ctx.has_batch else x_shape
        sample_perm = [p - 1 for p in perm[1:]] if ctx.has_batch else perm
        return Step("affine", matrix=permutation_matrix(sample_shape, sample_perm))


class ShapeNoOpHandler(Handler):
    """Ops that leave the flattened per-sample values unchanged."""

    ops = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout", "Cast")
    name = "shape no-op"
    shape_operands = {"Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Dropout": (1, 2)}

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return f"the model input feeds its shape operand '{ctx.var_input}', not its data"
        if ctx.out_size != ctx.in_size:
            return f"it changes the per-sample size from {ctx.in_size} to {ctx.out_size}"
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = ctx.constant(2)
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                return f"its training_mode input '{node.input[2]}' is not a constant False"
        if node.op_type == "Cast":
            to = _attr(node, "to", 0)
            if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                name = onnx.TensorProto.DataType.Name(to) if to in onnx.TensorProto.DataType.values() else to
                return f"it casts to {name}, which changes the values"
        return NOOP


class ActivationHandler(Handler):
    """Relu, LeakyRelu, Tanh, Sigmoid."""

    ops = ("Relu", "LeakyRelu", "Tanh", "Sigmoid")
    name = "activation"

    def match(self, ctx: NodeContext) -> Step | str:
        op = ctx.node.op_type
        if op == "LeakyRelu":
            alpha = float(_attr(ctx.node, "alpha", 0.01))
            return Step("activation", activation=Activation.LEAKY_RELU, slope=alpha)
        act = {"Relu": Activation.RELU, "Tanh": Activation.TANH, "Sigmoid": Activation.SIGMOID}[op]
        return Step("activation", activation=act)


class PReluHandler(Handler):
    """``PRelu(x, slope)`` with constant slopes: one for every unit (a leaky ReLU), or one per unit or
    per channel (PyTorch ``nn.PReLU(num_parameters=n)``), broadcast to the units."""

    ops = ("PRelu",)
    name = "PRelu with constant slopes"

    def match(self, ctx: NodeContext) -> Step | str:
        if ctx.variable_position != 0:
            return "its slope, not its data, comes from the model input"
        slope = ctx.constant(1)
        if slope is None:
            return f"its slope '{ctx.node.input[1]}' is not a constant"
        per_unit = _per_sample(ctx, slope, ctx.out_shape, f"slope '{ctx.node.input[1]}'")
        if isinstance(per_unit, str):
            return per_unit
        if per_unit.size and np.all(per_unit == per_unit[0]):
            # one slope for all: kept as before (a negative one is reported by audit as not injective)
            return Step("activation", activation=Activation.LEAKY_RELU, slope=float(per_unit[0]))
        return slope_activation(per_unit, f"its slopes '{ctx.node.input[1]}'")


class ClipAsReluHandler(Handler):
    """``Clip(x, 0, +inf)`` is a ReLU, ``Clip(x, c, +inf)`` a ReLU shifted by c; a finite upper bound
    (ReLU6, Hardtanh) saturates and is refused."""

    ops = ("Clip",)
    name = "Clip with a lower bound and no upper bound"
    shape_operands = {"Clip": (1, 2)}

    def match(self, ctx: NodeContext) -> Step | tuple[Step, ...] | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return "its bounds, not its data, come from the model input"
        if ctx.opset < 11:
            low = float(_attr(node, "min", -3.4028234663852886e38))
            high = float(_attr(node, "max", 3.4028234663852886e38))
        else:
            bounds = []
            for i, default in ((1, -np.inf), (2, np.inf)):
                if len(node.input) > i and node.input[i]:
                    value = ctx.constant(i)
                    if value is None:
                        return f"its bound '{node.input[i]}' is not a constant"
                    bounds.append(float(np.asarray(value).reshape(-1)[0]))
                else:
                    bounds.append(default)
            low, high = bounds
        if np.isfinite(high) and high < 3.4e38:
            return (
                f"its upper bound {high:g} saturates (ReLU6 / Hardtanh): every output at the bound has "
                "infinitely many preimages"
            )
        if not np.isfinite(low) or low <= -3.4e38:
            return NOOP
        relu = Step("activation", activation=Activation.RELU)
        if low == 0.0:
            return relu
        shift = np.full(ctx.out_size, low)  # max(x, c) = relu(x - c) + c
        return Step("affine", offset=-shift), relu, Step("affine", offset=shift)


# Most specific first; a node is offered to every handler that lists its op type, in this order.
# Composite handlers (they claim a subgraph rooted at the node) are tried by the chain walk first.
HANDLERS: tuple[Handler, ...] = (
    GemmHandler(),
    FusedGemmHandler(),
    MatMulWeightRightHandler(),
    MatMulWeightLeftHandler(),
    BatchNormHandler(),
    refusals.SiluHandler(),
    refusals.MishHandler(),
    refusals.GeluHandler(),
    refusals.HardSwishHandler(),
    refusals.DecomposedNormHandler(),
    refusals.DynamoSoftplusHandler(),
    activations.WhereActivationHandler(),
    activations.MaxActivationHandler(),
    ElementwiseAffineHandler(),
    ConcatHandler(),
    NegHandler(),
    TransposeHandler(),
    ActivationHandler(),
    PReluHandler(),
    ClipAsReluHandler(),
    ShapeNoOpHandler(),
    conv_handlers.ConvHandler(),
    conv_handlers.ConvTransposeHandler(),
    conv_handlers.ResizeNearestHandler(),
    conv_handlers.UpsampleNearestHandler(),
    conv_handlers.PadHandler(),
    conv_handlers.SliceHandler(),
    refusals.RefusedOpHandler(),
)

# Why an op nobody handles is refused, and what to try.
REFUSAL_HINTS = {
    **conv_handlers.REFUSAL_HINTS,
    "Softmax": "Softmax is not injective (it drops one degree of freedom per sample); a generator "
    "should not end in it",
    "LogSoftmax": "LogSoftmax is not injective; a generator should not end in it",
    "HardSigmoid": "HardSigmoid saturates at both ends; use Sigmoid",
    **refusals.REFUSAL_HINTS,
}
SUPPORTED_OPS = tuple(sorted({op for h in HANDLERS if not h.refuses for op in h.ops}))
