"""Linear ONNX operators on one sample, lowered to ``scipy.sparse`` CSR matrices.

Every function here is pure: it takes the per-sample input shape ``(C, *spatial)`` (no batch axis),
the operator's weights and attributes, and returns the matrix ``A`` with ``y = A @ x`` for the
row-major (C-order) flattenings ``x`` of one input sample and ``y`` of one output sample. Nothing here
reads protobufs; the handlers in :mod:`onnxinv.parser.conv_handlers` turn nodes into these calls.

The matrices are built directly in CSR form from index arithmetic (vectorised numpy), never by
densifying and never by probing the operator with unit vectors, so building one costs time and memory
proportional to its stored entries. Column indices are sorted within each row and there are no
duplicates, so the result is in canonical form.

Notes
-----
**Convolution** (ONNX ``Conv``, [1]_). For spatial axes ``d`` with input size ``I_d``, kernel ``K_d``,
stride ``s_d``, dilation ``δ_d`` and leading padding ``p_d``,

.. math:: y[m, o] = \\sum_{c \\in g(m)} \\sum_{k} W[m, c, k]\\, x[c, o \\cdot s + k \\cdot δ - p],

where out-of-range input positions read zero and ``g(m)`` is the group of output channel ``m``. The
output size is ``O_d = \\lfloor (I_d + p_d + q_d - (K_d - 1) δ_d - 1) / s_d \\rfloor + 1`` with trailing
padding ``q_d``. A *tap* is a valid pair (output position, kernel offset); the taps of a
multi-dimensional convolution are the Cartesian product of the per-axis taps, so they are found per
axis (an ``O_d × K_d`` table) and combined.

**Transposed convolution** (``ConvTranspose``) is the adjoint of a convolution, plus ``output_padding``
extra rows at the end of each axis:

.. math:: y[m, o] = \\sum_{c \\in g(m)} \\sum_{i, k:\\; i s + k δ - p = o} x[c, i]\\, W[c, m', k],

with ``m'`` the index of ``m`` inside its group, and
``O_d = s_d (I_d - 1) + a_d + (K_d - 1) δ_d + 1 - p_d - q_d`` (``a_d`` the output padding). Its taps
per axis are the pairs (o, k) for which ``o + p - k δ`` is a multiple of ``s`` inside the input.

**Selections** (nearest ``Resize``/``Upsample``, ``Pad``, ``Slice``, ``Transpose``): each output
element reads at most one input element, chosen per axis by an index map; the matrix has one entry
(value 1) in every row that reads an input, and none in rows that read a constant.

References
----------
.. [1] ONNX operator specification, https://onnx.ai/onnx/operators/ (Conv, ConvTranspose, Resize,
   Upsample, Pad, Slice).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from onnxinv.errors import OnnxInvError


class LoweringError(OnnxInvError, ValueError):
    """An operator cannot be lowered: inconsistent shapes or attributes, or too many entries."""


# --------------------------------------------------------------------------------------------------
# helpers


def _index_dtype(*sizes: int) -> type:
    return np.int32 if max(sizes, default=0) < np.iinfo(np.int32).max else np.int64


def _csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> sp.csr_array:
    matrix = sp.csr_array((data, indices, indptr), shape=shape, copy=False)
    # Built row by row with increasing columns and no repeats (see the module docstring).
    matrix.has_sorted_indices = True
    matrix.has_canonical_format = True
    return matrix


def _check_entries(entries: int, max_entries: int | None, what: str) -> None:
    if max_entries is not None and entries > max_entries:
        raise LoweringError(
            f"{what} would store {entries:,} matrix entries ({entries * 12:,} bytes as CSR), over the "
            f"limit of {max_entries:,}"
        )


def _per_axis(value: Sequence[int] | None, rank: int, default: int, name: str) -> tuple[int, ...]:
    if value is None or len(value) == 0:
        return (default,) * rank
    if len(value) != rank:
        raise LoweringError(f"{name} has {len(value)} entries for {rank} spatial axes")
    return tuple(int(v) for v in value)


def split_pads(pads: Sequence[int] | None, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ONNX ``pads`` ``[b_1, ..., b_n, e_1, ..., e_n]`` as (begins, ends); None or empty: zeros."""
    if pads is None or len(pads) == 0:
        return (0,) * rank, (0,) * rank
    if len(pads) != 2 * rank:
        raise LoweringError(f"pads has {len(pads)} entries; {2 * rank} expected for {rank} axes")
    values = tuple(int(p) for p in pads)
    return values[:rank], values[rank:]


# --------------------------------------------------------------------------------------------------
# convolution and transposed convolution


def conv_output_size(
    in_size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int
) -> int:
    """``floor((I + p + q - (K - 1) δ - 1) / s) + 1``: the output length of one Conv axis."""
    return (in_size + pad_begin + pad_end - (kernel - 1) * dilation - 1) // stride + 1


def conv_pads(
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    auto_pad: str = "NOTSET",
    pads: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Leading and trailing padding of a ``Conv`` per axis, resolving ``auto_pad``.

    ``SAME_UPPER`` / ``SAME_LOWER`` pad so that ``O = ceil(I / s)``, the odd extra element at the end
    (UPPER) or at the start (LOWER); ``VALID`` pads nothing; ``NOTSET`` uses ``pads``.
    """
    rank = len(in_spatial)
    if auto_pad in ("NOTSET", ""):
        return split_pads(pads, rank)
    if auto_pad == "VALID":
        return (0,) * rank, (0,) * rank
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise LoweringError(f"auto_pad '{auto_pad}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    begins, ends = [], []
    for i, k, s, d in zip(in_spatial, kernel, strides, dilations):
        out = -(-i // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - i)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return tuple(begins), tuple(ends)


def conv_transpose_geometry(
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    output_padding: Sequence[int],
    auto_pad: str = "NOTSET",
    pads: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Leading padding and output size per axis of a ``ConvTranspose``.

    Explicit ``pads`` (or VALID: none) give ``O = s (I - 1) + a + (K - 1) δ + 1 - p - q``. With
    ``output_shape`` the total padding ``s (I - 1) + a + (K - 1) δ + 1 - O`` is derived; with ``auto_pad``
    SAME_* the ONNX specification asks for ``O = I s``. Only the cases on which the ONNX specification and
    onnxruntime (the reference this package checks against) agree are accepted: a derived total padding
    that is even and not negative (they put an odd element on opposite sides, and onnxruntime clamps a
    negative total to 0), and SAME_* without ``output_shape`` only when no padding is needed
    (onnxruntime then pads nothing and keeps the natural size). Others raise LoweringError.
    """
    rank = len(in_spatial)
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise LoweringError(f"auto_pad '{auto_pad}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    natural = [
        s * (i - 1) + a + (k - 1) * d + 1
        for i, k, s, d, a in zip(in_spatial, kernel, strides, dilations, output_padding)
    ]
    if output_shape is not None and len(output_shape) > 0:
        target = [int(v) for v in output_shape]
        if len(target) == rank + 2:  # written with the batch and channel axes
            target = target[2:]
        if len(target) != rank:
            raise LoweringError(f"output_shape {list(output_shape)} does not fit {rank} spatial axes")
        totals = [n - o for n, o in zip(natural, target)]
        if any(t < 0 or t % 2 for t in totals):
            raise LoweringError(
                f"output_shape {target} needs a total padding of {totals} (natural size {natural}); the "
                "ONNX specification and onnxruntime place an odd padding element on opposite sides and "
                "disagree on negative padding, so only even, non-negative totals are read"
            )
        return tuple(t // 2 for t in totals), tuple(target)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(in_spatial, strides)]
        if target != natural:
            raise LoweringError(
                f"auto_pad={auto_pad} asks for output size {target} (input times stride) but needs padding "
                f"from the natural size {natural}; onnxruntime ignores auto_pad here and gives {natural}, "
                "so the model's meaning is ambiguous. Re-export with explicit pads"
            )
        return (0,) * rank, tuple(target)
    begins, ends = split_pads(pads, rank) if auto_pad != "VALID" else ((0,) * rank, (0,) * rank)
    return begins, tuple(n - b - e for n, b, e in zip(natural, begins, ends))


def _conv_axis_taps(
    in_size: int, out_size: int, kernel: int, stride: int, dilation: int, pad_begin: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output position, kernel offset, input position) of every valid tap, sorted by output then input."""
    o = np.arange(out_size)[:, None]
    k = np.arange(kernel)[None, :]
    i = o * stride + k * dilation - pad_begin
    oo, kk = np.nonzero((i >= 0) & (i < in_size))  # row-major: by output, then kernel (= input) order
    return oo, kk, i[oo, kk]


def _transpose_axis_taps(
    in_size: int, out_size: int, kernel: int, stride: int, dilation: int, pad_begin: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.arange(out_size)[:, None]
    k = np.arange(kernel)[None, :]
    t = o + pad_begin - k * dilation  # = i * stride
    oo, kk = np.nonzero((t % stride == 0) & (t >= 0) & (t < in_size * stride))
    ii = t[oo, kk] // stride
    order = np.lexsort((ii, oo))  # inputs increase as the kernel offset decreases: sort by input
    return oo[order], kk[order], ii[order]


def _combine_taps(
    axis_taps: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    in_spatial: Sequence[int],
    out_spatial: Sequence[int],
    kernel: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat taps of the multi-dimensional operator, sorted by flat output position then flat input."""
    o = np.zeros(1, dtype=np.int64)
    k = np.zeros(1, dtype=np.int64)
    i = np.zeros(1, dtype=np.int64)
    for (oa, ka, ia), n_in, n_out, n_k in zip(axis_taps, in_spatial, out_spatial, kernel):
        o = (o[:, None] * n_out + oa[None, :]).ravel()
        k = (k[:, None] * n_k + ka[None, :]).ravel()
        i = (i[:, None] * n_in + ia[None, :]).ravel()
    order = np.lexsort((i, o))
    return o[order], k[order], i[order]


def _grouped_csr(
    weight: np.ndarray,
    taps: tuple[np.ndarray, np.ndarray, np.ndarray],
    in_channels: int,
    groups: int,
    in_spatial_size: int,
    out_spatial_size: int,
    max_entries: int | None,
    what: str,
) -> sp.csr_array:
    """CSR of ``y[m, o] = Σ_{c in group(m)} Σ_taps weight[m, c, k] x[c, i]``.

    ``weight`` has shape (M, C / groups, K_flat): one row of kernel values per output channel and input
    channel of its group. Rows are ordered (m, o), entries within a row (c, tap), which is column order
    because the taps of each output position are sorted by input position.
    """
    tap_o, tap_k, tap_i = taps
    out_channels, group_in, kernel_size = weight.shape
    entries = out_channels * group_in * tap_o.size
    _check_entries(entries, max_entries, what)
    per_o = np.bincount(tap_o, minlength=out_spatial_size)
    start = np.cumsum(per_o) - per_o
    idx = _index_dtype(in_channels * in_spatial_size, entries)
    # One template row block for an output channel: entry (c, tap j) of output position o_j sits at
    # group_in * start[o_j] + c * per_o[o_j] + (j - start[o_j]).
    j = np.arange(tap_o.size)
    c = np.arange(group_in)[:, None]
    pos = group_in * start[tap_o] + c * per_o[tap_o] + (j - start[tap_o])
    template_col = np.empty(group_in * tap_o.size, dtype=idx)
    template_w = np.empty(group_in * tap_o.size, dtype=np.int64)
    template_col[pos.ravel()] = (c * in_spatial_size + tap_i).ravel()
    template_w[pos.ravel()] = (c * kernel_size + tap_k).ravel()
    group_of = np.arange(out_channels) // (out_channels // groups)
    shift = (group_of * group_in * in_spatial_size).astype(idx)
    indices = (template_col[None, :] + shift[:, None]).reshape(-1)
    flat_weight = np.ascontiguousarray(weight, dtype=np.float64).reshape(out_channels, -1)
    data = np.take(flat_weight, template_w, axis=1).reshape(-1)  # C-ordered, so no copy here
    row_lengths = np.tile(group_in * per_o, out_channels)
    indptr = np.zeros(out_channels * out_spatial_size + 1, dtype=idx)
    np.cumsum(row_lengths, out=indptr[1:])
    return _csr(data, indices, indptr, (out_channels * out_spatial_size, in_channels * in_spatial_size))


def conv_matrix(
    in_shape: Sequence[int],
    weight: np.ndarray,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    group: int = 1,
    auto_pad: str = "NOTSET",
    max_entries: int | None = None,
) -> tuple[sp.csr_array, tuple[int, ...]]:
    """The matrix of ONNX ``Conv`` (without bias) on one sample of shape ``in_shape = (C, *spatial)``.

    Parameters
    ----------
    in_shape : (C, I_1, ..., I_n), one sample without the batch axis
    weight : (M, C / group, K_1, ..., K_n)
    strides, pads, dilations, group, auto_pad : the ONNX attributes (pads as ``[begins..., ends...]``)
    max_entries : refuse (LoweringError) before allocating if the matrix would store more entries

    Returns
    -------
    (matrix, out_shape) with matrix of shape (M * prod(O), C * prod(I)) and out_shape (M, *O).
    """
    in_channels, *in_spatial = (int(v) for v in in_shape)
    rank = len(in_spatial)
    if weight.ndim != rank + 2:
        raise LoweringError(f"the weight has shape {list(weight.shape)}; {rank + 2} axes expected")
    out_channels, group_in, *kernel = weight.shape
    if group < 1 or in_channels % group or out_channels % group or group_in * group != in_channels:
        raise LoweringError(
            f"group={group} does not fit {in_channels} input channels and a weight of shape "
            f"{list(weight.shape)}"
        )
    strides_ = _per_axis(strides, rank, 1, "strides")
    dilations_ = _per_axis(dilations, rank, 1, "dilations")
    if min(strides_ + dilations_, default=1) < 1:
        raise LoweringError("strides and dilations must be positive")
    begins, ends = conv_pads(in_spatial, kernel, strides_, dilations_, auto_pad, pads)
    out_spatial = [
        conv_output_size(i, k, s, d, b, e)
        for i, k, s, d, b, e in zip(in_spatial, kernel, strides_, dilations_, begins, ends)
    ]
    if min(out_spatial, default=1) < 1:
        raise LoweringError(f"the kernel does not fit the padded input {in_spatial}: output {out_spatial}")
    axis_taps = [
        _conv_axis_taps(i, o, k, s, d, b)
        for i, o, k, s, d, b in zip(in_spatial, out_spatial, kernel, strides_, dilations_, begins)
    ]
    taps = _combine_taps(axis_taps, in_spatial, out_spatial, kernel)
    matrix = _grouped_csr(
        weight.reshape(out_channels, group_in, -1),
        taps,
        in_channels,
        group,
        int(np.prod(in_spatial)),
        int(np.prod(out_spatial)),
        max_entries,
        "this Conv",
    )
    return matrix, (out_channels, *out_spatial)


def conv_transpose_matrix(
    in_shape: Sequence[int],
    weight: np.ndarray,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    group: int = 1,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    auto_pad: str = "NOTSET",
    max_entries: int | None = None,
) -> tuple[sp.csr_array, tuple[int, ...]]:
    """The matrix of ONNX ``ConvTranspose`` (without bias) on one sample ``(C, *spatial)``.

    ``weight`` has shape (C, M / group, K_1, ..., K_n). Returns (matrix, (M, *O)); see
    :func:`conv_transpose_geometry` for the output size and padding.
    """
    in_channels, *in_spatial = (int(v) for v in in_shape)
    rank = len(in_spatial)
    if weight.ndim != rank + 2:
        raise LoweringError(f"the weight has shape {list(weight.shape)}; {rank + 2} axes expected")
    w_in, group_out, *kernel = weight.shape
    if group < 1 or w_in != in_channels or in_channels % group:
        raise LoweringError(
            f"group={group} does not fit {in_channels} input channels and a weight of shape "
            f"{list(weight.shape)}"
        )
    out_channels = group_out * group
    strides_ = _per_axis(strides, rank, 1, "strides")
    dilations_ = _per_axis(dilations, rank, 1, "dilations")
    adjust = _per_axis(output_padding, rank, 0, "output_padding")
    if min(strides_ + dilations_, default=1) < 1 or min(adjust, default=0) < 0:
        raise LoweringError("strides and dilations must be positive, output_padding not negative")
    begins, out_spatial = conv_transpose_geometry(
        in_spatial, kernel, strides_, dilations_, adjust, auto_pad, pads, output_shape
    )
    if min(out_spatial, default=1) < 1:
        raise LoweringError(f"the output would have size {list(out_spatial)}")
    axis_taps = [
        _transpose_axis_taps(i, o, k, s, d, b)
        for i, o, k, s, d, b in zip(in_spatial, out_spatial, kernel, strides_, dilations_, begins)
    ]
    taps = _combine_taps(axis_taps, in_spatial, out_spatial, kernel)
    group_in = in_channels // group
    # Conv layout (M, C / group, K): output channel m = g * group_out + m' reads w[g * group_in + c, m'].
    w = weight.reshape(group, group_in, group_out, -1).transpose(0, 2, 1, 3)
    matrix = _grouped_csr(
        w.reshape(out_channels, group_in, -1),
        taps,
        in_channels,
        group,
        int(np.prod(in_spatial)),
        int(np.prod(out_spatial)),
        max_entries,
        "this ConvTranspose",
    )
    return matrix, (out_channels, *out_spatial)


# --------------------------------------------------------------------------------------------------
# selections: each output element reads one input element or a constant


def selection_matrix(
    in_shape: Sequence[int], sources: Sequence[np.ndarray]
) -> tuple[sp.csr_array, np.ndarray]:
    """The 0/1 matrix of ``y[o_1, ..., o_n] = x[src_1[o_1], ..., src_n[o_n]]``.

    ``sources[d]`` maps each output index of axis d to an input index, or to -1 where the output
    reads no input (padding). Returns the (prod O, prod I) matrix and the flat boolean mask of output
    elements that read an input (the others are constants).
    """
    in_shape = tuple(int(v) for v in in_shape)
    if len(sources) != len(in_shape):
        raise LoweringError(f"{len(sources)} index maps for {len(in_shape)} axes")
    out_shape = tuple(len(s) for s in sources)
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    idx = _index_dtype(n_in, n_out)
    cols = np.zeros(1, dtype=np.int64)
    valid = np.ones(1, dtype=bool)
    for src, size in zip(sources, in_shape):
        src = np.asarray(src, dtype=np.int64)
        if src.size and (src.max() >= size or src.min() < -1):
            raise LoweringError(f"an index map reads outside an axis of size {size}")
        cols = (cols[:, None] * size + np.maximum(src, 0)[None, :]).ravel()
        valid = (valid[:, None] & (src >= 0)[None, :]).ravel()
    indptr: np.ndarray = np.zeros(n_out + 1, dtype=idx)
    np.cumsum(valid, out=indptr[1:])
    indices: np.ndarray = cols[valid].astype(idx)
    matrix = _csr(np.ones(indices.size), indices, indptr, (n_out, n_in))
    return matrix, valid


def permutation_matrix(in_shape: Sequence[int], perm: Sequence[int]) -> sp.csr_array:
    """The matrix of ``Transpose(perm)`` on one sample of shape ``in_shape`` (perm over its axes)."""
    in_shape = tuple(int(v) for v in in_shape)
    if sorted(perm) != list(range(len(in_shape))):
        raise LoweringError(f"perm {list(perm)} is not a permutation of {len(in_shape)} axes")
    n = int(np.prod(in_shape))
    idx = _index_dtype(n)
    order: np.ndarray = np.arange(n, dtype=idx).reshape(in_shape).transpose(list(perm)).reshape(-1)
    return _csr(np.ones(n), order, np.arange(n + 1, dtype=idx), (n, n))


NEAREST_COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
)
NEAREST_ROUNDING_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def nearest_source_index(
    in_size: int, out_size: int, scale: float, coordinate_mode: str, nearest_mode: str
) -> np.ndarray:
    """The input index each output index of one axis reads in a nearest-neighbour ``Resize``.

    Follows the ONNX formulas for ``coordinate_transformation_mode`` (the output coordinate ``o``
    mapped to an input coordinate ``x``) and ``nearest_mode`` (``x`` rounded), then clamps to
    ``[0, in_size - 1]``. Exact in float64 for the integer scales the handlers accept: the only ties
    (``x`` at .5 or at an integer) are exactly representable.
    """
    o = np.arange(out_size, dtype=np.float64)
    if coordinate_mode in ("half_pixel", "half_pixel_symmetric"):
        x = (o + 0.5) / scale - 0.5
        if coordinate_mode == "half_pixel_symmetric":
            adjustment = out_size / (scale * in_size)
            x = x + (in_size / 2.0) * (1.0 - adjustment)
    elif coordinate_mode == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    elif coordinate_mode == "align_corners":
        x = o * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
    elif coordinate_mode == "asymmetric":
        x = o / scale
    elif coordinate_mode == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    else:
        raise LoweringError(
            f"coordinate_transformation_mode '{coordinate_mode}' is not one of "
            + ", ".join(NEAREST_COORDINATE_MODES)
        )
    if nearest_mode == "floor":
        index = np.floor(x)
    elif nearest_mode == "ceil":
        index = np.ceil(x)
    elif nearest_mode in ("round_prefer_floor", "round_prefer_ceil"):
        tie = x - np.floor(x) == 0.5
        index = np.where(
            tie, np.floor(x) if nearest_mode == "round_prefer_floor" else np.ceil(x), np.round(x)
        )
    else:
        raise LoweringError(
            f"nearest_mode '{nearest_mode}' is not one of " + ", ".join(NEAREST_ROUNDING_MODES)
        )
    return np.clip(index, 0, in_size - 1).astype(np.int64)


def nearest_resize_matrix(
    in_shape: Sequence[int],
    scales: Sequence[float],
    coordinate_mode: str = "half_pixel",
    nearest_mode: str = "round_prefer_floor",
) -> tuple[sp.csr_array, tuple[int, ...]]:
    """Nearest-neighbour ``Resize`` of one sample by positive integer ``scales`` (one per axis)."""
    in_shape = tuple(int(v) for v in in_shape)
    if len(scales) != len(in_shape):
        raise LoweringError(f"{len(scales)} scales for {len(in_shape)} axes")
    sources, out_shape = [], []
    for size, scale in zip(in_shape, scales):
        if scale != int(scale) or scale < 1:
            raise LoweringError(f"scale {scale:g} is not a positive integer")
        out = size * int(scale)
        sources.append(nearest_source_index(size, out, float(scale), coordinate_mode, nearest_mode))
        out_shape.append(out)
    matrix, _ = selection_matrix(in_shape, sources)
    return matrix, tuple(out_shape)


PAD_MODES = ("constant", "edge", "reflect", "wrap")


def pad_source_index(in_size: int, begin: int, end: int, mode: str) -> np.ndarray:
    """Input index read by each output index of one padded axis (-1: the constant).

    Negative ``begin``/``end`` crop. ``reflect`` mirrors without repeating the edge element, ``edge``
    repeats it, ``wrap`` continues periodically (ONNX Pad modes).
    """
    out = in_size + begin + end
    if out < 0:
        raise LoweringError(f"pads ({begin}, {end}) remove more than the {in_size} elements of an axis")
    src = np.arange(out, dtype=np.int64) - begin
    if mode == "constant":
        return np.where((src >= 0) & (src < in_size), src, -1)
    if in_size == 0:
        raise LoweringError(f"mode '{mode}' cannot pad an empty axis")
    if mode == "edge":
        return np.clip(src, 0, in_size - 1)
    if mode == "wrap":
        return np.mod(src, in_size)
    if mode == "reflect":
        if in_size == 1:
            return np.zeros(out, dtype=np.int64)
        period = 2 * (in_size - 1)
        m = np.mod(src, period)
        return np.where(m < in_size, m, period - m)
    raise LoweringError(f"Pad mode '{mode}' is not one of " + ", ".join(PAD_MODES))


def pad_matrix(
    in_shape: Sequence[int], begins: Sequence[int], ends: Sequence[int], mode: str = "constant"
) -> tuple[sp.csr_array, np.ndarray, tuple[int, ...]]:
    """``Pad`` of one sample: (matrix, mask of output elements that read the input, out_shape).

    In constant mode the elements outside the mask hold the constant value, an offset of the affine
    map ``y = A x + value * (1 - mask)``.
    """
    in_shape = tuple(int(v) for v in in_shape)
    if len(begins) != len(in_shape) or len(ends) != len(in_shape):
        raise LoweringError(f"pads for {len(begins)} axes, the input has {len(in_shape)}")
    sources = [pad_source_index(n, int(b), int(e), mode) for n, b, e in zip(in_shape, begins, ends)]
    matrix, valid = selection_matrix(in_shape, sources)
    return matrix, valid, tuple(len(s) for s in sources)


def slice_source_index(in_size: int, start: int, end: int, step: int) -> np.ndarray:
    """Input indices kept by ``Slice`` on one axis, with ONNX clamping of start and end."""
    if step == 0:
        raise LoweringError("a Slice step of 0")
    start = start + in_size if start < 0 else start
    end = end + in_size if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), in_size), min(max(end, 0), in_size)
    else:
        start, end = min(max(start, -1), in_size - 1), min(max(end, -1), in_size - 1)
    return np.arange(start, end, step, dtype=np.int64)


def channel_values(per_channel: np.ndarray, spatial_size: int) -> np.ndarray:
    """A per-channel vector repeated over the spatial positions of a (C, *spatial) sample."""
    return np.repeat(np.asarray(per_channel, dtype=np.float64).reshape(-1), spatial_size)
