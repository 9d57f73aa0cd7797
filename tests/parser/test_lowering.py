"""Each linear operator lowered to a CSR matrix, compared with onnxruntime on one-node models.

Inputs and weights are small integers, so onnxruntime's float32 arithmetic is exact and the float64
matrix product must agree to the last bit whatever the summation order: any indexing mistake shows.
(onnxruntime has no float64 Conv, ConvTranspose or Resize kernel, so float64 models cannot be used.)
The attribute combinations are drawn at random with a fixed seed, many per regime.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper

from onnxinv.parser import lowering
from onnxinv.parser.lowering import LoweringError

IR_VERSION = 10


def run_node(op, x, inits=(), opset=19, inputs=None, **attrs) -> np.ndarray:
    """Run one node in onnxruntime on ``x`` (float32) with constant ``inits`` (name, array) pairs."""
    names = inputs if inputs is not None else ["x", *(n for n, _ in inits)]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "one_node",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def apply_per_sample(matrix: sp.csr_array, x: np.ndarray, out_shape) -> np.ndarray:
    return np.stack([(matrix @ s.reshape(-1).astype(np.float64)).reshape(out_shape) for s in x])


def ints(rng, *shape) -> np.ndarray:
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def assert_canonical(matrix: sp.csr_array) -> None:
    assert isinstance(matrix, sp.csr_array)
    check = matrix.copy()
    check.has_canonical_format = False
    check.sum_duplicates()  # recomputed from scratch: sorted columns, no repeats
    assert np.array_equal(check.indices, matrix.indices) and np.array_equal(check.indptr, matrix.indptr)


# --------------------------------------------------------------------------------------------------
# Conv


def conv_cases(count=60, seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        rank = (1, 2, 2, 3)[i % 4]
        group = int(rng.choice([1, 1, 2, 3]))
        auto_pad = ("NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")[i % 5]
        attrs = {
            "strides": [int(v) for v in rng.integers(1, 4, rank)],
            "group": group,
            "auto_pad": auto_pad,
        }
        if auto_pad == "NOTSET":
            attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * rank)]
        dilations = [int(v) for v in rng.integers(1, 3, rank)]
        if not auto_pad.startswith("SAME"):  # onnxruntime has no dilated SAME convolution
            attrs["dilations"] = dilations
        else:
            dilations = [1] * rank
        kernel = tuple(int(v) for v in rng.integers(1, 4, rank))
        # every input axis at least as long as the dilated kernel, so the output is never empty
        spatial = [(k - 1) * d + 1 + int(rng.integers(0, 5)) for k, d in zip(kernel, dilations)]
        shape = (2, group * int(rng.integers(1, 3)), *spatial)
        out_channels = group * int(rng.integers(1, 3))
        cases.append(pytest.param(shape, (out_channels, shape[1] // group, *kernel), attrs, id=f"conv{i}"))
    return cases


@pytest.mark.parametrize(("shape", "wshape", "attrs"), conv_cases())
def test_conv_matches_onnxruntime(shape, wshape, attrs):
    rng = np.random.default_rng(abs(hash((shape, wshape))) % 2**32)
    x, w = ints(rng, *shape), ints(rng, *wshape)
    y = run_node("Conv", x, [("w", w)], **attrs)
    matrix, out_shape = lowering.conv_matrix(shape[1:], w.astype(np.float64), **attrs)
    assert out_shape == y.shape[1:]
    assert_canonical(matrix)
    np.testing.assert_array_equal(apply_per_sample(matrix, x, out_shape), y)


def test_dilated_same_conv_follows_the_specification():
    # onnxruntime refuses dilations with auto_pad SAME_*; the ONNX reference evaluator runs them
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 7, 6)), rng.standard_normal((3, 2, 3, 2))
    for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        attrs = {"strides": [2, 1], "dilations": [2, 3], "auto_pad": auto_pad}
        node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.DOUBLE, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
            initializer=[numpy_helper.from_array(w, "w")],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=IR_VERSION)
        y = ReferenceEvaluator(m).run(None, {"x": x})[0]
        matrix, out_shape = lowering.conv_matrix(x.shape[1:], w, **attrs)
        np.testing.assert_allclose(apply_per_sample(matrix, x, out_shape), y, rtol=1e-12, atol=1e-12)


def test_conv_entries_cap_refuses_before_allocating():
    with pytest.raises(
        LoweringError, match=r"would store 1,982,464 matrix entries .* over the limit of 1,000"
    ):
        lowering.conv_matrix((64, 8, 8), np.zeros((64, 64, 3, 3)), pads=[1, 1, 1, 1], max_entries=1000)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"group": 3}, "group=3 does not fit 4 input channels"),
        ({"strides": [1]}, "strides has 1 entries for 2 spatial axes"),
        ({"auto_pad": "SAME"}, "auto_pad 'SAME' is not one of"),
        ({"pads": [0, 0, 0]}, "pads has 3 entries; 4 expected"),
    ],
)
def test_conv_bad_attributes(kwargs, words):
    with pytest.raises(LoweringError, match=words):
        lowering.conv_matrix((4, 5, 5), np.zeros((2, 4, 3, 3)), **kwargs)


# --------------------------------------------------------------------------------------------------
# ConvTranspose


def conv_transpose_cases(count=60, seed=1):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        rank = (1, 2, 2)[i % 3]  # onnxruntime runs 1-D and 2-D ConvTranspose only
        group = int(rng.choice([1, 1, 2]))
        strides = [int(v) for v in rng.integers(1, 4, rank)]
        dilations = [int(v) for v in rng.integers(1, 3, rank)]
        kernel = tuple(int(v) for v in rng.integers(1, 5, rank))
        shape = (2, group * int(rng.integers(1, 3)), *(int(v) for v in rng.integers(2, 6, rank)))
        adjust = [int(rng.integers(0, s)) for s in strides]  # onnxruntime wants output_padding < stride
        attrs = {"strides": strides, "dilations": dilations, "group": group, "output_padding": adjust}
        regime = ("pads", "pads", "output_shape", "valid")[i % 4]
        if regime == "pads":
            attrs["pads"] = [
                int(rng.integers(0, (k - 1) * d // 2 + 1)) for k, d in zip(kernel * 2, dilations * 2)
            ]
        elif regime == "output_shape":
            natural = [
                s * (n - 1) + a + (k - 1) * d + 1
                for n, k, s, d, a in zip(shape[2:], kernel, strides, dilations, adjust)
            ]
            attrs["output_shape"] = [max(1, n - 2 * int(rng.integers(0, 2))) for n in natural]
            attrs["output_shape"] = [
                o if (n - o) % 2 == 0 else n for n, o in zip(natural, attrs["output_shape"])
            ]
        else:
            attrs["auto_pad"] = "VALID"
        wshape = (shape[1], int(rng.integers(1, 3)), *kernel)
        cases.append(pytest.param(shape, wshape, attrs, id=f"deconv{i}-{regime}"))
    return cases


@pytest.mark.parametrize(("shape", "wshape", "attrs"), conv_transpose_cases())
def test_conv_transpose_matches_onnxruntime(shape, wshape, attrs):
    rng = np.random.default_rng(abs(hash((shape, wshape))) % 2**32)
    x, w = ints(rng, *shape), ints(rng, *wshape)
    y = run_node("ConvTranspose", x, [("w", w)], **attrs)
    matrix, out_shape = lowering.conv_transpose_matrix(shape[1:], w.astype(np.float64), **attrs)
    assert out_shape == y.shape[1:]
    assert_canonical(matrix)
    np.testing.assert_array_equal(apply_per_sample(matrix, x, out_shape), y)


def test_conv_transpose_is_the_adjoint_of_conv():
    # ConvTranspose(W) is Conv(W)^T when output_padding restores the Conv's input size
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 3, 4, 3))  # Conv: 3 -> 6 channels; ConvTranspose: 6 -> 3
    attrs = {"strides": [2, 1], "pads": [1, 0, 1, 1], "dilations": [1, 2]}
    conv, out = lowering.conv_matrix((3, 9, 8), w, **attrs)
    assert out == (6, 4, 5)
    deconv, back = lowering.conv_transpose_matrix(out, w, output_padding=[1, 0], **attrs)
    assert back == (3, 9, 8)
    np.testing.assert_array_equal(deconv.toarray(), conv.toarray().T)
    u, v = rng.standard_normal(conv.shape[1]), rng.standard_normal(conv.shape[0])
    np.testing.assert_allclose((conv @ u) @ v, u @ (deconv @ v), rtol=1e-12)  # the dot test


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"strides": [2, 2], "output_shape": [6, 6]}, "total padding of [1, 1]"),
        ({"strides": [2, 2], "output_shape": [9, 9]}, "total padding of [-2, -2]"),
        ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, "asks for output size [6, 6]"),
    ],
)
def test_conv_transpose_ambiguous_padding_refused(attrs, words):
    with pytest.raises(LoweringError) as info:
        lowering.conv_transpose_matrix((1, 3, 3), np.ones((1, 1, 3, 3)), **attrs)
    assert words in str(info.value)


def test_conv_transpose_same_without_padding_accepted():
    # kernel == stride: the natural size is already input * stride, so SAME_* needs no padding
    rng = np.random.default_rng(2)
    x, w = ints(rng, 1, 2, 3, 4), ints(rng, 2, 3, 2, 2)
    for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        y = run_node("ConvTranspose", x, [("w", w)], strides=[2, 2], auto_pad=auto_pad)
        matrix, out_shape = lowering.conv_transpose_matrix(x.shape[1:], w, strides=[2, 2], auto_pad=auto_pad)
        np.testing.assert_array_equal(apply_per_sample(matrix, x, out_shape), y)


# --------------------------------------------------------------------------------------------------
# nearest Resize / Upsample

SUPPORTED_NEAREST = [
    (c, r)
    for c in lowering.NEAREST_COORDINATE_MODES
    for r in lowering.NEAREST_ROUNDING_MODES
    if not (c == "tf_half_pixel_for_nn" and "ceil" in r)
]


@pytest.mark.parametrize(("coordinate", "rounding"), SUPPORTED_NEAREST)
def test_nearest_resize_matches_onnxruntime(coordinate, rounding):
    roi = ("roi", np.zeros(0, np.float32))
    for h, w, sh, sw in itertools.product((1, 2, 5), (3, 4), (1, 2, 3), (1, 4)):
        x = np.arange(2 * h * w, dtype=np.float32).reshape(1, 2, h, w)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": coordinate, "nearest_mode": rounding}
        by_scales = run_node("Resize", x, [roi, ("scales", np.array([1, 1, sh, sw], np.float32))], **attrs)
        by_sizes = run_node(
            "Resize",
            x,
            [roi, ("sizes", np.array([1, 2, h * sh, w * sw], np.int64))],
            inputs=["x", "roi", "", "sizes"],
            **attrs,
        )
        matrix, out_shape = lowering.nearest_resize_matrix((2, h, w), (1, sh, sw), coordinate, rounding)
        assert_canonical(matrix)
        ours = apply_per_sample(matrix, x, out_shape)
        np.testing.assert_array_equal(ours, by_scales, err_msg=f"{h}x{w} by {sh}x{sw}")
        np.testing.assert_array_equal(ours, by_sizes, err_msg=f"{h}x{w} to sizes")


@pytest.mark.parametrize("opset", [7, 9])
def test_upsample_is_asymmetric_floor(opset):
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    scales = np.array([1, 1, 3, 2], np.float32)
    if opset == 7:
        y = run_node("Upsample", x, opset=7, mode="nearest", scales=[float(s) for s in scales])
    else:
        y = run_node("Upsample", x, [("scales", scales)], opset=9, mode="nearest")
    matrix, out_shape = lowering.nearest_resize_matrix((2, 3, 4), (1, 3, 2), "asymmetric", "floor")
    np.testing.assert_array_equal(apply_per_sample(matrix, x, out_shape), y)


def test_non_integer_scale_refused():
    with pytest.raises(LoweringError, match="scale 1.5 is not a positive integer"):
        lowering.nearest_resize_matrix((1, 4, 4), (1, 1.5, 2))


# --------------------------------------------------------------------------------------------------
# Pad, Slice, Transpose


@pytest.mark.parametrize("mode", lowering.PAD_MODES)
def test_pad_matches_onnxruntime(mode):
    rng = np.random.default_rng(7)
    for trial in range(12):
        shape = (1, *(int(v) for v in rng.integers(2, 6, 3)))
        low = -1 if mode == "constant" else 0  # negative pads crop
        pads = [0, *(int(v) for v in rng.integers(low, 3, 3)), 0, *(int(v) for v in rng.integers(low, 3, 3))]
        if mode == "reflect":  # reflection needs pads smaller than the axis
            pads = [min(p, shape[i % 4] - 1) for i, p in enumerate(pads)]
        value = 0.0 if trial % 2 else 2.5
        x = ints(rng, *shape)
        inits = [("pads", np.array(pads, np.int64))]
        if mode == "constant":
            inits.append(("value", np.array(value, np.float32)))
        y = run_node("Pad", x, inits, mode=mode)
        matrix, inside, out_shape = lowering.pad_matrix(shape[1:], pads[1:4], pads[5:8], mode)
        assert out_shape == y.shape[1:]
        assert_canonical(matrix)
        ours = apply_per_sample(matrix, x, out_shape)
        if mode == "constant":
            ours = ours + np.where(inside, 0.0, value).reshape(out_shape)
        np.testing.assert_array_equal(ours, y, err_msg=f"pads {pads}")


def test_slice_matches_onnxruntime():
    rng = np.random.default_rng(8)
    x = ints(rng, 1, 3, 7, 6)
    cases = [
        ([0, 1], [3, 6], [1, 2], [1, 2]),
        ([-1, 5], [-100, 0], [2, 3], [-2, -1]),
        ([1], [1000], [-1], [3]),
    ]
    for starts, ends, axes, steps in cases:
        inits = [
            (n, np.array(v, np.int64)) for n, v in zip(("s", "e", "a", "t"), (starts, ends, axes, steps))
        ]
        y = run_node("Slice", x, inits)
        sources = [np.arange(n) for n in x.shape[1:]]
        for s, e, a, t in zip(starts, ends, axes, steps):
            sources[a % 4 - 1] = lowering.slice_source_index(x.shape[a % 4], s, e, t)
        matrix, _ = lowering.selection_matrix(x.shape[1:], sources)
        np.testing.assert_array_equal(apply_per_sample(matrix, x, y.shape[1:]), y)


def test_permutation_matrix_is_transpose():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(float)
    for perm in itertools.permutations(range(3)):
        matrix = lowering.permutation_matrix(x.shape, perm)
        np.testing.assert_array_equal(matrix @ x.reshape(-1), x.transpose(perm).reshape(-1))
        assert matrix.nnz == x.size


def test_selection_refuses_out_of_range_maps():
    with pytest.raises(LoweringError, match="reads outside an axis of size 3"):
        lowering.selection_matrix((3,), [np.array([0, 3])])
