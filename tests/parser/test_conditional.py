"""Conditional generators: inputs besides the latent, held fixed and folded into the layers' biases."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from builders import (
    F32,
    assert_matches_onnxruntime,
    conditional_add,
    conditional_embedding,
    conditional_onehot,
    init,
    model,
    node,
    rng_weights,
    run_file,
    save,
)
from onnx import TensorProto, helper

import onnxinv
from onnxinv.errors import InvalidArgumentError, UnsupportedModelError
from onnxinv.report import format_generator, generator_to_dict


def _assert_matches_file(generator, path, fixed_feeds: dict, batch: int = 5, seed: int = 3) -> None:
    """The layer list equals onnxruntime run on the file itself, fed the fixed values by the test."""
    z = np.random.default_rng(seed).standard_normal((batch, generator.latent_dim)).astype(np.float32)
    feeds = {generator.input.name: z.reshape((batch, *generator.sample_input_shape))}
    for name, per_sample in fixed_feeds.items():
        feeds[name] = np.repeat(per_sample[None], batch, axis=0)
    expected = run_file(path, feeds).reshape(batch, -1)
    np.testing.assert_allclose(generator.forward(z.astype(np.float64)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", ["sample", "batch of one"])
def test_onehot_concat_feeding_gemm(tmp_path, shape):
    path = save(conditional_onehot(), tmp_path)
    label = np.eye(5, dtype=np.float32)[2]
    value = label if shape == "sample" else label[None]
    generator = onnxinv.load(path, fixed={"onehot": value})
    assert generator.input.name == "z" and generator.latent_dim == 3
    assert [info.name for info in generator.inputs] == ["z", "onehot"]
    assert generator.fixed["onehot"].shape == (1, 5)
    assert generator.layers[0].source_nodes == ("/Concat", "/l1/Gemm", "/Relu")
    assert_matches_onnxruntime(generator)
    _assert_matches_file(generator, path, {"onehot": label})


def test_onehot_label_changes_only_the_bias(tmp_path):
    path = save(conditional_onehot(), tmp_path)
    a = onnxinv.load(path, fixed={"onehot": np.eye(5)[0]})
    b = onnxinv.load(path, fixed={"onehot": np.eye(5)[4]})
    np.testing.assert_array_equal(a.layers[0].weight, b.layers[0].weight)
    assert not np.allclose(a.layers[0].bias, b.layers[0].bias)
    np.testing.assert_array_equal(a.layers[1].bias, b.layers[1].bias)


@pytest.mark.parametrize("label", [np.int64(3), np.array([3]), np.array([3], dtype=np.int32), np.array(3.0)])
def test_embedding_gather_of_a_fixed_class_index_used_by_two_layers(tmp_path, label):
    path = save(conditional_embedding(), tmp_path)
    generator = onnxinv.load(path, fixed={"y": label})
    assert generator.fixed["y"].dtype == np.int64 and generator.fixed["y"].shape == (1,)
    assert [layer.source_nodes[0] for layer in generator.layers] == ["node_cat", "node_cat_1"]
    assert_matches_onnxruntime(generator)
    _assert_matches_file(generator, path, {"y": np.array(3, dtype=np.int64)})


def test_add_and_mul_of_conditioning_vectors(tmp_path):
    path = save(conditional_add(), tmp_path)
    c = rng_weights(41, 12)
    s = np.abs(rng_weights(42, 12)) + 0.5
    c2 = rng_weights(43, 20)
    generator = onnxinv.load(path, fixed={"c": c, "s": s, "c2": c2[None]})
    assert len(generator.layers) == 2
    np.testing.assert_allclose(generator.layers[0].bias, c * s, rtol=1e-6)
    assert_matches_onnxruntime(generator)
    z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    feeds = {"z": z, "c": np.repeat(c[None], 4, axis=0), "s": s, "c2": c2[None]}
    np.testing.assert_allclose(generator.forward(z), run_file(path, feeds), rtol=1e-4, atol=1e-5)


def test_fixed_batch_export_takes_one_sample(tmp_path):
    # a static dynamo export: z [2, 3] and y [2]; one label is repeated for both rows of each run
    path = save(conditional_embedding(batch=2), tmp_path)
    generator = onnxinv.load(path, fixed={"y": np.array(1)})
    assert generator.batch_size == 2
    np.testing.assert_array_equal(generator.fixed["y"], [1, 1])
    assert_matches_onnxruntime(generator, batch=5)


def test_latent_named_explicitly_when_two_float_inputs(tmp_path):
    path = save(conditional_onehot(), tmp_path)
    generator = onnxinv.load(path, latent="z", fixed={"onehot": np.eye(5)[1]})
    assert generator.input.name == "z"
    assert_matches_onnxruntime(generator)


def test_generator_with_fixed_inputs_pickles_and_stays_read_only(tmp_path):
    generator = onnxinv.load(save(conditional_embedding(), tmp_path), fixed={"y": 4})
    with pytest.raises(ValueError):
        generator.fixed["y"][0] = 0
    with pytest.raises(TypeError):
        generator.fixed["y"] = np.array([1])  # type: ignore[index]
    copy = pickle.loads(pickle.dumps(generator))
    np.testing.assert_array_equal(copy.fixed["y"], [4])
    z = np.random.default_rng(0).standard_normal((3, 3))
    np.testing.assert_allclose(copy.run_onnx(z), generator.run_onnx(z))


def test_inspect_lists_every_input_and_the_latent(tmp_path):
    generator = onnxinv.load(save(conditional_embedding(), tmp_path), fixed={"y": 2})
    text = "\n".join(format_generator(generator))
    assert "z [s17, 3] float32  (latent: 3 values)" in text
    assert "y [s17] int64  (fixed to [2] (shape (1,)))" in text
    document = generator_to_dict(generator)
    assert [(i["name"], i["role"]) for i in document["inputs"]] == [("z", "latent"), ("y", "fixed")]
    assert document["inputs"][1]["value"] == [2]


# --- refusals ---------------------------------------------------------------------------------------


def _unsupported(path, **kwargs) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        onnxinv.load(path, **kwargs)
    return str(info.value)


def _invalid(path, **kwargs) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        onnxinv.load(path, **kwargs)
    return str(info.value)


def test_unfixed_label_names_the_input_and_the_option(tmp_path):
    text = _unsupported(save(conditional_embedding(), tmp_path))
    assert "'z' [s17, 3] float32, 'y' [s17] int64" in text
    assert "inverts the latent 'z' and needs a fixed value for 'y'" in text
    assert "--fix y=Y.npy" in text and "fixed={'y': ...}" in text
    assert "initializers" not in text  # the old, wrong hint


def test_two_unfixed_float_inputs_are_ambiguous(tmp_path):
    text = _unsupported(save(conditional_onehot(), tmp_path))
    assert "which one is the latent is ambiguous" in text
    assert "--latent z --fix onehot=ONEHOT.npy" in text


def test_every_input_fixed_leaves_no_latent(tmp_path):
    path = save(conditional_onehot(), tmp_path)
    text = _unsupported(path, fixed={"z": np.zeros(3), "onehot": np.eye(5)[0]})
    assert "none is left to be the latent" in text


def test_latent_named_but_other_input_left_unfixed(tmp_path):
    text = _unsupported(save(conditional_onehot(), tmp_path), latent="z")
    assert "needs a fixed value for 'onehot'" in text and "--fix onehot=" in text


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"fixed": {"label": np.array(1)}}, ["fixed input 'label' is not an input", "'y' [s17] int64"]),
        ({"fixed": {"e.weight": np.zeros((5, 2))}}, ["'e.weight' is an initializer"]),
        ({"latent": "w", "fixed": {"y": 1}}, ["latent 'w' is not an input"]),
        ({"latent": "y", "fixed": {"y": 1}}, ["named as the latent and also given a fixed value"]),
        ({"fixed": {"y": np.array([1, 2])}}, ["holds 2 samples along the batch axis", "shape []"]),
        ({"fixed": {"y": np.zeros((2, 2))}}, ["shape (2, 2)", "does not fit [s17] or one sample []"]),
        ({"fixed": {"y": np.array(1.5)}}, ["non-integer floats"]),
        ({"fixed": {"y": np.array(2.0**70)}}, ["do not fit int64"]),
        ({"fixed": {"y": np.array(["a"])}}, ["dtype <U1", "numeric array"]),
    ],
)
def test_bad_fixed_arguments(tmp_path, kwargs, words):
    text = _invalid(save(conditional_embedding(), tmp_path), **kwargs)
    for word in words:
        assert word in text


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
def test_fixed_float_values_must_be_finite_in_the_input_dtype(tmp_path, bad):
    value = np.eye(5)[0]
    value[1] = bad
    text = _invalid(save(conditional_onehot(), tmp_path), latent="z", fixed={"onehot": value})
    assert "fixed input 'onehot'" in text and ("NaN or infinite" in text or "too large for float32" in text)


def test_latent_must_be_float(tmp_path):
    path = save(conditional_embedding(), tmp_path)
    text = _unsupported(path, latent="y", fixed={"z": np.zeros(3, np.float32)})
    assert "'y' has element type INT64" in text


def test_weights_fed_as_inputs_get_the_initializer_hint(tmp_path):
    extra = [helper.make_tensor_value_info("W1", F32, [6, 4])]
    nodes = [node("Gemm", ["z", "W1", "b1"], ["x"], transB=1)]
    text = _unsupported(save(model(nodes, [init("b1", rng_weights(2, 6))], extra_inputs=extra), tmp_path))
    assert "needs a fixed value for 'W1'" in text
    assert "'W1' feed(s) the weight of a dense node" in text and "initializers" in text


def test_fixed_weight_input_works_too(tmp_path):
    # a weight fed as a graph input is just another constant once fixed
    extra = [helper.make_tensor_value_info("W1", F32, [6, 4])]
    nodes = [node("Gemm", ["z", "W1", "b1"], ["a"], transB=1), node("Relu", ["a"], ["x"])]
    path = save(model(nodes, [init("b1", rng_weights(2, 6))], extra_inputs=extra), tmp_path)
    generator = onnxinv.load(path, fixed={"W1": rng_weights(3, 6, 4)})
    np.testing.assert_allclose(generator.layers[0].weight, rng_weights(3, 6, 4), rtol=1e-6)
    assert_matches_onnxruntime(generator)


def test_concat_refusals_name_the_reason(tmp_path):
    # Concat along the batch axis mixes samples
    nodes = [
        node("Concat", ["z", "c"], ["cat"], name="cat0", axis=0),
        node("Gemm", ["cat", "W", "b"], ["x"], transB=1),
    ]
    inits = [init("W", rng_weights(1, 6, 3)), init("b", rng_weights(2, 6))]
    extra = [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 3])]
    path = save(model(nodes, inits, input_shape=("n", 3), extra_inputs=extra), tmp_path)
    text = _unsupported(path, fixed={"c": np.zeros(3)})
    assert "node 'cat0' (Concat" in text and "along the batch axis" in text
