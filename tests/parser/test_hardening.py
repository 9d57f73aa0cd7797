"""Hostile graphs: sizes checked before allocating, a walk linear in the graph, clear errors only.

Memory is measured with ``tracemalloc`` (numpy reports its buffers to it) and work by counting Python
calls, never by timing.
"""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from builders import F32, assert_matches_onnxruntime, init, model, node, rng_weights, save
from onnx import TensorProto, helper

import onnxinv
from onnxinv.errors import ModelLoadError, OnnxInvError, OracleError, UnsupportedModelError
from onnxinv.parser.graph import GraphView

K, H = 4, 6
LIMIT = 64 << 20  # bytes: far below the gigabytes these files used to allocate


def _dense_inits():
    return [init("W", rng_weights(1, H, K)), init("b", rng_weights(2, H))]


def _peak_while_refused(path, error=UnsupportedModelError) -> tuple[int, str]:
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            onnxinv.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, str(info.value)


def test_constant_of_shape_refused_before_allocating(tmp_path):
    # a file of a few hundred bytes whose ConstantOfShape would hold 20000 x 20000 floats (1.6 GB)
    nodes = [
        node("ConstantOfShape", ["shape"], ["big"], name="zeros"),
        node("Slice", ["big", "start", "end"], ["bias"]),
        node("Gemm", ["z", "W", "b"], ["a"], transB=1),
        node("Add", ["a", "bias"], ["x"]),
    ]
    inits = [
        init("shape", np.array([20000, 20000]), np.int64),
        init("start", np.array([0, 0]), np.int64),
        init("end", np.array([1, H]), np.int64),
        *_dense_inits(),
    ]
    path = save(model(nodes, inits), tmp_path)
    assert path.stat().st_size < 1000
    peak, text = _peak_while_refused(path)
    assert peak < LIMIT
    assert "node 'zeros' (ConstantOfShape)" in text and "400,000,000 values" in text


def test_broadcasting_fold_refused_before_allocating(tmp_path):
    # two small constants whose Add broadcasts to 16384 x 16384
    nodes = [
        node("Add", ["col", "row"], ["big"], name="outer"),
        node("Gemm", ["z", "W", "b"], ["x"], transB=1),
    ]
    inits = [init("col", np.zeros((1 << 14, 1))), init("row", np.zeros((1, 1 << 14))), *_dense_inits()]
    m = model(nodes, inits)
    view = GraphView(m, "m.onnx")
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedModelError) as info:
            view.constant("big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LIMIT
    assert "node 'outer' (Add) folds constants into 268,435,456 values" in str(info.value)
    # and when the output needs it, the whole load stops before allocating too
    m.graph.node.append(node("Add", ["x", "big"], ["y"]))
    m.graph.output[0].name = "y"
    peak, text = _peak_while_refused(save(m, tmp_path))
    assert peak < LIMIT and "node 'outer' (Add)" in text


def test_huge_latent_refused_before_allocating(tmp_path):
    path = save(model([node("Relu", ["z"], ["x"])], [], input_shape=(1, 1 << 31)), tmp_path)
    peak, text = _peak_while_refused(path)
    assert peak < LIMIT
    assert "input 'z' of shape [1, 2147483648] holds 2,147,483,648 values" in text


def test_zero_width_layer_refused(tmp_path):
    nodes = [node("Gemm", ["z", "W", "b"], ["a"], name="empty", transB=1), node("Relu", ["a"], ["x"])]
    path = save(model(nodes, [init("W", np.zeros((0, K))), init("b", np.zeros(0))]), tmp_path)
    _, text = _peak_while_refused(path)
    assert "node 'empty' (Gemm" in text and "holds no values per sample" in text


def test_overflowing_sparse_dims_are_a_clear_error(tmp_path):
    # (2^32 + 1) * (2^32 - 1) wraps around int64 to -1: the product must be taken in Python ints
    values = helper.make_tensor("sp", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("sp_idx", TensorProto.INT64, [1, 2], [0, 0])
    sparse = helper.make_sparse_tensor(values, indices, [(1 << 32) + 1, (1 << 32) - 1])
    nodes = [node("Gemm", ["z", "W", "b"], ["a"], transB=1), node("Add", ["a", "sp"], ["x"])]
    m = model(nodes, _dense_inits())
    m.graph.sparse_initializer.append(sparse)
    _, text = _peak_while_refused(save(m, tmp_path), ModelLoadError)
    assert "sparse initializer 'sp'" in text and "over the limit" in text


def _identity_chain(count: int, reverse: bool) -> onnx.ModelProto:
    nodes = [node("Gemm", ["z", "W", "b"], ["t0"], transB=1)]
    nodes += [node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(count)]
    nodes.append(node("Relu", [f"t{count}"], ["x"]))
    return model(nodes[::-1] if reverse else nodes, _dense_inits())


def _calls_to_load(path) -> int:
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        onnxinv.load(path, self_check=False)
    finally:
        sys.setprofile(None)
    return calls


def test_walk_is_linear_in_the_number_of_nodes(tmp_path):
    # nodes in reverse order made the old fixed-point walk quadratic (2000 nodes: 35 s, 10,000: minutes)
    small = _calls_to_load(save(_identity_chain(400, reverse=True), tmp_path, "small.onnx"))
    large = _calls_to_load(save(_identity_chain(1600, reverse=True), tmp_path, "large.onnx"))
    assert large < 6 * small, (small, large)  # 4x the nodes: about 4x the work, not 16x


def test_weight_behind_ten_thousand_identities(tmp_path):
    # constant folding used to recurse once per node: RecursionError ("internal error") here
    nodes = [node("Identity", [f"w{i}"], [f"w{i + 1}"]) for i in range(10_000)]
    nodes.append(node("Gemm", ["z", "w10000", "b"], ["x"], transB=1))
    generator = onnxinv.load(
        save(model(nodes, [init("w0", rng_weights(1, H, K)), init("b", rng_weights(2, H))]), tmp_path)
    )
    np.testing.assert_allclose(generator.layers[0].weight, rng_weights(1, H, K), rtol=1e-6)


def test_dead_nodes_are_skipped_and_not_given_to_onnxruntime(tmp_path):
    dead = [helper.make_node("Relu", ["z"], [f"d{i}"]) for i in range(20_000)]
    nodes = [node("Gemm", ["z", "W", "b"], ["a"], transB=1), *dead, node("Relu", ["a"], ["x"])]
    generator = onnxinv.load(save(model(nodes, _dense_inits()), tmp_path))
    assert any("20000 node(s) the output does not depend on were skipped" in n for n in generator.notes)
    given = onnx.ModelProto()
    given.ParseFromString(generator.model_bytes)
    assert [n.op_type for n in given.graph.node] == ["Gemm", "Relu"]
    assert_matches_onnxruntime(generator)


def test_cycle_on_the_output_path_is_a_clear_error(tmp_path):
    nodes = [
        node("Gemm", ["z", "W", "b"], ["a"], transB=1),
        node("Add", ["a", "c"], ["x"]),
        node("Identity", ["x"], ["c0"]),
        node("Neg", ["c0"], ["c"]),
    ]
    with pytest.raises(OnnxInvError) as info:
        onnxinv.load(save(model(nodes, _dense_inits()), tmp_path))
    assert "internal" not in str(info.value)


def test_oracle_model_over_protobuf_limit_is_an_oracle_error(monkeypatch):
    from google.protobuf.message import EncodeError

    from onnxinv import building
    from onnxinv.building import random_generator_layers

    class TooLarge:
        def SerializeToString(self):  # what upb raises for a message over 2 GiB
            raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(building, "build_model", lambda *a, **k: TooLarge())
    generator = onnxinv.Generator.from_layers(random_generator_layers([3, 5]))
    with pytest.raises(OracleError) as info:
        generator.run_onnx(np.zeros(3))
    assert "protobuf writes at most 2 GiB" in str(info.value)


def test_shapes_inference_cannot_tell_are_evaluated_node_by_node(tmp_path):
    # shape inference does not propagate values through Abs, so the Reshape's output shape is found
    # by running the nodes one at a time, each sized by a one-node inference on its concrete inputs
    nodes = [
        node("Gemm", ["z", "W", "b"], ["flat"], transB=1),
        node("Abs", ["signed"], ["target"]),
        node("Reshape", ["flat", "target"], ["x"]),
    ]
    inits = [
        init("W", rng_weights(1, 16, K)),
        init("b", rng_weights(2, 16)),
        init("signed", np.array([-1, -4, 4]), np.int64),
    ]
    m = model(nodes, inits, input_shape=(1, K))
    m.graph.output[0].type.tensor_type.ClearField("shape")
    generator = onnxinv.load(save(m, tmp_path))
    assert generator.output_dim == 16
    assert_matches_onnxruntime(generator)


def test_fixed_batch_probe_with_elem_types(tmp_path):
    extra = [helper.make_tensor_value_info("c", F32, [2, H])]
    nodes = [node("Gemm", ["z", "W", "b"], ["a"], transB=1), node("Add", ["a", "c"], ["x"])]
    path = save(model(nodes, _dense_inits(), input_shape=(2, K), extra_inputs=extra), tmp_path)
    generator = onnxinv.load(path, fixed={"c": rng_weights(7, H)})
    assert generator.batch_size == 2
    assert_matches_onnxruntime(generator, batch=3)
