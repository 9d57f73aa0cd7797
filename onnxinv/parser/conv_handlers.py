"""Pattern handlers for the linear operators of convolutional generators.

``Conv``, ``ConvTranspose``, nearest ``Resize`` / ``Upsample``, ``Pad`` and ``Slice`` applied to the
variable each become one affine step whose matrix is a ``scipy.sparse`` CSR array built by
:mod:`onnxinv.parser.lowering`. Per-channel ``BatchNormalization``, bias ``Add`` and ``Mul`` on NCHW
tensors, ``Transpose``, ``Flatten`` and ``Reshape`` are read by the general handlers in
:mod:`onnxinv.parser.handlers` (diagonals, offsets, permutations and no-ops).

Each handler reads the per-sample input shape from the shape probe (``ctx.shape``), lowers the node,
and checks the output shape it computed against the probed one, so a disagreement about padding or
rounding is refused with a reason instead of producing a wrong layer. Refusal reasons name the
attribute or tensor that did not fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxinv.layers import Weight
from onnxinv.parser.composition import MAX_LAYER_ELEMENTS
from onnxinv.parser.context import Handler, NodeContext, Step
from onnxinv.parser.context import attribute as _attr
from onnxinv.parser.lowering import (
    NEAREST_COORDINATE_MODES,
    NEAREST_ROUNDING_MODES,
    PAD_MODES,
    LoweringError,
    channel_values,
    conv_matrix,
    conv_transpose_matrix,
    nearest_resize_matrix,
    pad_matrix,
    selection_matrix,
    slice_source_index,
)

# Nearest-mode combinations on which onnxruntime and the ONNX formulas disagree (ties at .5 with
# tf_half_pixel_for_nn): refused rather than guessed.
_REFUSED_NEAREST = {("tf_half_pixel_for_nn", "round_prefer_ceil"), ("tf_half_pixel_for_nn", "ceil")}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sample_shape(ctx: NodeContext, name: str, keep_first: bool = False) -> tuple[int, ...] | str:
    """The per-sample shape of tensor ``name``, or a reason.

    With a batch dim the first axis must be the probe batch and is dropped. Without one the whole tensor
    is the sample: ``keep_first`` keeps its first axis (Resize, Pad, Slice), otherwise (Conv, whose
    first axis is always N) it must be 1 and is dropped.
    """
    shape = tuple(int(d) for d in ctx.shape(name))
    if not ctx.has_batch and keep_first:
        return shape
    expected = ctx.batch if ctx.has_batch else 1
    if not shape or shape[0] != expected:
        return f"tensor '{name}' has shape {list(shape)}, whose first axis is not the batch of {expected}"
    return shape[1:]


def _check_out(ctx: NodeContext, computed: tuple[int, ...], keep_first: bool = False) -> str | None:
    probed = _sample_shape(ctx, ctx.node.output[0], keep_first)
    if isinstance(probed, str):
        return probed
    if tuple(probed) != tuple(computed):
        return (
            f"the output shape onnxinv computes, {list(computed)} per sample, differs from the shape "
            f"{list(probed)} the model produces"
        )
    return None


def _ints(value: object) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _conv_operands(ctx: NodeContext) -> tuple[tuple[int, ...], np.ndarray, dict[str, Any]] | str:
    """The sample shape, the constant weight and the attributes Conv and ConvTranspose share, or why
    the node does not qualify."""
    node = ctx.node
    if ctx.variable_position != 0:
        return f"its weight '{ctx.var_input}', not its data, comes from the model input"
    weight = ctx.constant(1)
    if weight is None:
        return f"its weight '{node.input[1]}' is not a constant"
    in_shape = _sample_shape(ctx, ctx.var_input)
    if isinstance(in_shape, str):
        return in_shape
    kernel = _ints(_attr(node, "kernel_shape", None))
    if kernel and list(weight.shape[2:]) != kernel:
        return (
            f"kernel_shape {kernel} does not match the weight '{node.input[1]}' of shape {list(weight.shape)}"
        )
    options = {
        "strides": _ints(_attr(node, "strides", None)),
        "pads": _ints(_attr(node, "pads", None)),
        "dilations": _ints(_attr(node, "dilations", None)),
        "group": int(_attr(node, "group", 1)),
        "auto_pad": _text(_attr(node, "auto_pad", "NOTSET")),
    }
    return in_shape, np.asarray(weight, dtype=np.float64), options


class ConvHandler(Handler):
    """``Conv(x, W, B)`` with a constant weight: a sparse matrix, plus the bias per output channel."""

    ops = ("Conv",)
    name = "Conv with a constant weight"

    def match(self, ctx: NodeContext) -> Step | str:
        got = _conv_operands(ctx)
        if isinstance(got, str):
            return got
        in_shape, weight, options = got
        try:
            matrix, out_shape = conv_matrix(in_shape, weight, **options, max_entries=MAX_LAYER_ELEMENTS)
        except LoweringError as exc:
            return str(exc)
        return _with_bias(ctx, matrix, out_shape)


class ConvTransposeHandler(Handler):
    """``ConvTranspose(x, W, B)`` with a constant weight (strides, pads, output_padding, output_shape,
    dilations, groups)."""

    ops = ("ConvTranspose",)
    name = "ConvTranspose with a constant weight"

    def match(self, ctx: NodeContext) -> Step | str:
        got = _conv_operands(ctx)
        if isinstance(got, str):
            return got
        in_shape, weight, options = got
        node = ctx.node
        try:
            matrix, out_shape = conv_transpose_matrix(
                in_shape,
                weight,
                **options,
                output_padding=_ints(_attr(node, "output_padding", None)),
                output_shape=_ints(_attr(node, "output_shape", None)),
                max_entries=MAX_LAYER_ELEMENTS,
            )
        except LoweringError as exc:
            return str(exc)
        return _with_bias(ctx, matrix, out_shape)


def _with_bias(ctx: NodeContext, matrix: Weight, out_shape: tuple[int, ...]) -> Step | str:
    mismatch = _check_out(ctx, out_shape)
    if mismatch:
        return mismatch
    node = ctx.node
    offset = None
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.constant(2)
        if bias is None:
            return f"its bias '{node.input[2]}' is not a constant"
        if bias.size != out_shape[0]:
            return f"its bias '{node.input[2]}' has {bias.size} values for {out_shape[0]} output channels"
        offset = channel_values(bias, int(np.prod(out_shape[1:])))
    return Step("affine", matrix=matrix, offset=offset)


class ResizeNearestHandler(Handler):
    """Nearest-neighbour ``Resize`` by integer scales (given as ``scales`` or as ``sizes``)."""

    ops = ("Resize",)
    name = "nearest Resize by integer scales"
    shape_operands = {"Resize": (1, 2, 3)}  # roi, scales, sizes (sizes may be computed at run time)

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return f"the model input feeds its operand '{ctx.var_input}', not its data"
        mode = _text(_attr(node, "mode", "nearest"))
        if mode != "nearest":
            return (
                f"mode '{mode}' interpolates; onnxinv reads nearest-neighbour resizing (mode 'nearest') only"
            )
        if ctx.opset < 11:  # Resize-10: the Upsample semantics
            coordinate, rounding = "asymmetric", "floor"
        else:
            coordinate = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
            rounding = _text(_attr(node, "nearest_mode", "round_prefer_floor"))
        if coordinate not in NEAREST_COORDINATE_MODES:
            return (
                f"coordinate_transformation_mode '{coordinate}' is not supported (supported: "
                + ", ".join(NEAREST_COORDINATE_MODES)
                + ")"
            )
        if rounding not in NEAREST_ROUNDING_MODES:
            return f"nearest_mode '{rounding}' is not one of " + ", ".join(NEAREST_ROUNDING_MODES)
        if (coordinate, rounding) in _REFUSED_NEAREST:
            return (
                f"coordinate_transformation_mode '{coordinate}' with nearest_mode '{rounding}': onnxruntime "
                "and the ONNX formula pick different pixels at ties, so its meaning is ambiguous"
            )
        scales_input = 1 if ctx.opset < 11 else 2
        scales = ctx.constant(scales_input) if len(node.input) > scales_input else None
        has_sizes = ctx.opset >= 11 and len(node.input) > 3 and bool(node.input[3])
        if scales is not None and np.asarray(scales).size == 0:
            scales = None
        if scales is None and not has_sizes:
            name = node.input[scales_input] if len(node.input) > scales_input else "scales"
            return f"its scales '{name}' are not a constant and it has no sizes input"
        return _nearest_step(ctx, coordinate, rounding, scales, _ints(_attr(node, "axes", None)))


class UpsampleNearestHandler(Handler):
    """The deprecated ``Upsample`` (opsets 7-9) in nearest mode by integer scales."""

    ops = ("Upsample",)
    name = "nearest Upsample by integer scales"
    shape_operands = {"Upsample": (1,)}

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return f"the model input feeds its scales '{ctx.var_input}', not its data"
        mode = _text(_attr(node, "mode", "nearest"))
        if mode != "nearest":
            return f"mode '{mode}' interpolates; onnxinv reads nearest-neighbour upsampling only"
        scales = _attr(node, "scales", None)
        if scales is None:
            scales = ctx.constant(1) if len(node.input) > 1 else None
            if scales is None:
                return "its scales are not a constant"
        return _nearest_step(ctx, "asymmetric", "floor", scales, None)


def _nearest_step(
    ctx: NodeContext, coordinate: str, rounding: str, scales: object, axes: list[int] | None
) -> Step | str:
    x_shape = tuple(int(d) for d in ctx.shape(ctx.var_input))
    out_full = tuple(int(d) for d in ctx.out_shape)
    rank = len(x_shape)
    if scales is not None:
        values = [float(v) for v in np.asarray(scales, dtype=np.float64).reshape(-1)]
        full = [1.0] * rank
        targets = [a % rank for a in axes] if axes else list(range(rank))
        if len(values) != len(targets):
            return f"{len(values)} scales for {len(targets)} axes"
        for a, v in zip(targets, values):
            full[a] = v
    else:  # sizes, possibly computed at run time: the scales are the probed size ratios
        if len(out_full) != rank or any(o % i for o, i in zip(out_full, x_shape) if i):
            return f"its output shape {list(out_full)} is not an integer multiple of its input shape {list(x_shape)}"
        full = [o / i if i else 1.0 for o, i in zip(out_full, x_shape)]
    bad = [v for v in full if v != int(v) or v < 1]
    if bad:
        return (
            f"scale {bad[0]:g} is not a positive integer; onnxinv reads nearest upsampling by whole factors"
        )
    start = 1 if ctx.has_batch else 0
    if start and full[0] != 1:
        return f"it scales the batch axis by {full[0]:g}"
    sample = _sample_shape(ctx, ctx.var_input, keep_first=True)
    if isinstance(sample, str):
        return sample
    try:
        matrix, out_shape = nearest_resize_matrix(sample, full[start:], coordinate, rounding)
    except LoweringError as exc:
        return str(exc)
    mismatch = _check_out(ctx, out_shape, keep_first=True)
    if mismatch:
        return mismatch
    return Step("affine", matrix=matrix)


class PadHandler(Handler):
    """``Pad`` in constant (any value), edge, reflect or wrap mode; negative pads crop."""

    ops = ("Pad",)
    name = "Pad"
    shape_operands = {"Pad": (1, 2, 3)}  # pads, constant_value, axes

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return f"the model input feeds its operand '{ctx.var_input}', not its data"
        mode = _text(_attr(node, "mode", "constant"))
        if mode not in PAD_MODES:
            return f"mode '{mode}' is not one of " + ", ".join(PAD_MODES)
        x_shape = tuple(int(d) for d in ctx.shape(ctx.var_input))
        rank = len(x_shape)
        if ctx.opset < 11:
            pads = _ints(_attr(node, "pads", None)) or []
            value = float(_attr(node, "value", 0.0))
            axes = list(range(rank))
        else:
            pads_value = ctx.constant(1) if len(node.input) > 1 else None
            if pads_value is None:
                return f"its pads '{node.input[1] if len(node.input) > 1 else ''}' are not a constant"
            pads = _ints(pads_value) or []
            value = 0.0
            if len(node.input) > 2 and node.input[2]:
                constant = ctx.constant(2)
                if constant is None:
                    return f"its constant_value '{node.input[2]}' is not a constant"
                value = float(np.asarray(constant).reshape(-1)[0]) if np.asarray(constant).size else 0.0
            axes = list(range(rank))
            if len(node.input) > 3 and node.input[3]:
                axes_value = ctx.constant(3)
                if axes_value is None:
                    return f"its axes '{node.input[3]}' are not a constant"
                axes = [a % rank for a in (_ints(axes_value) or [])]
        if len(pads) != 2 * len(axes):
            return f"it has {len(pads)} pads for {len(axes)} axes"
        begins, ends = [0] * rank, [0] * rank
        for k, a in enumerate(axes):
            begins[a], ends[a] = pads[k], pads[len(axes) + k]
        start = 1 if ctx.has_batch else 0
        if start and (begins[0] or ends[0]):
            return f"it pads the batch axis by ({begins[0]}, {ends[0]})"
        sample = _sample_shape(ctx, ctx.var_input, keep_first=True)
        if isinstance(sample, str):
            return sample
        try:
            matrix, inside, out_shape = pad_matrix(sample, begins[start:], ends[start:], mode)
        except LoweringError as exc:
            return str(exc)
        mismatch = _check_out(ctx, out_shape, keep_first=True)
        if mismatch:
            return mismatch
        offset = np.where(inside, 0.0, value) if mode == "constant" and value != 0.0 else None
        return Step("affine", matrix=matrix, offset=offset)


class SliceHandler(Handler):
    """``Slice`` of the variable with constant starts, ends, axes and steps: a selection."""

    ops = ("Slice",)
    name = "Slice with constant bounds"
    shape_operands = {"Slice": (1, 2, 3, 4)}

    def match(self, ctx: NodeContext) -> Step | str:
        node = ctx.node
        if ctx.variable_position != 0:
            return f"the model input feeds its operand '{ctx.var_input}', not its data"
        x_shape = tuple(int(d) for d in ctx.shape(ctx.var_input))
        rank = len(x_shape)
        if ctx.opset < 10:
            starts = _ints(_attr(node, "starts", None)) or []
            ends = _ints(_attr(node, "ends", None)) or []
            axes = _ints(_attr(node, "axes", None)) or list(range(len(starts)))
            steps = [1] * len(starts)
        else:
            values: list[list[int] | None] = []
            for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")):
                if len(node.input) > i and node.input[i]:
                    v = ctx.constant(i)
                    if v is None:
                        return f"its {what} '{node.input[i]}' are not a constant"
                    values.append(_ints(v))
                else:
                    values.append(None)
            starts, ends = values[0] or [], values[1] or []
            axes = values[2] if values[2] is not None else list(range(len(starts)))
            steps = values[3] if values[3] is not None else [1] * len(starts)
        if not (len(starts) == len(ends) == len(axes) == len(steps)):
            return "its starts, ends, axes and steps differ in length"
        sources = [np.arange(n, dtype=np.int64) for n in x_shape]
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = a % rank
            try:
                sources[a] = slice_source_index(x_shape[a], s, e, st)
            except LoweringError as exc:
                return str(exc)
        start = 1 if ctx.has_batch else 0
        if start and not np.array_equal(sources[0], np.arange(x_shape[0])):
            return "it slices the batch axis"
        sample = _sample_shape(ctx, ctx.var_input, keep_first=True)
        if isinstance(sample, str):
            return sample
        matrix, _ = selection_matrix(sample, sources[start:])
        out_shape = tuple(s.size for s in sources[start:])
        mismatch = _check_out(ctx, out_shape, keep_first=True)
        if mismatch:
            return mismatch
        return Step("affine", matrix=matrix)


REFUSAL_HINTS = {
    "Conv": "onnxinv reads Conv with constant weights, explicit or automatic padding, strides, "
    "dilations and groups; re-export with the weights as initializers",
    "ConvTranspose": "onnxinv reads ConvTranspose with constant weights; give explicit pads (or an "
    "output_shape needing even padding) when onnxruntime and the ONNX specification disagree",
    "Resize": "onnxinv reads nearest-neighbour Resize by integer scales; upsample with mode='nearest' "
    "(torch nn.Upsample(scale_factor=2), Keras UpSampling2D)",
    "Upsample": "onnxinv reads nearest-neighbour Upsample by integer scales",
}
