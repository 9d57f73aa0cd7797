"""Malformed and hostile input through the command line: exit 1 (2 for usage), one paragraph on stderr
naming the file, no traceback, and no output file created or truncated."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest
from builders import init, model, node, rng_weights, save
from cli_helpers import observations, run
from onnx import TensorProto, helper

PREVIOUS = b"previous contents"


def _bad_models(folder):
    """name -> (path, words the message must contain)."""
    cases = {}

    def raw(name, data):
        path = folder / name
        path.write_bytes(data)
        return path

    good = model([node("Gemm", ["z", "W1", "b1"], ["x"], transB=1)],
                 [init("W1", rng_weights(1, 8, 4)), init("b1", rng_weights(2, 8))]).SerializeToString()  # fmt: skip
    cases["empty"] = (raw("empty.onnx", b""), "empty")
    cases["truncated"] = (raw("cut.onnx", good[: len(good) // 2]), "not an ONNX model")
    cases["random"] = (raw("random.onnx", np.random.default_rng(1).bytes(3000)), "not an ONNX model")
    cases["text"] = (raw("text.onnx", b"hello, I am a text file\n" * 20), "not an ONNX model")
    cases["tensor_protobuf"] = (
        raw("tensor.onnx", helper.make_tensor("t", TensorProto.FLOAT, [3], [1, 2, 3]).SerializeToString()),
        "not an ONNX model",
    )
    sub = folder / "ext"
    sub.mkdir()
    (folder / "secret.bin").write_bytes(b"\0" * 4096)
    ext = model([node("Gemm", ["z", "W1"], ["x"], transB=1)], [init("W1", rng_weights(1, 8, 4))])
    w = ext.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "128")):
        w.external_data.add(key=key, value=value)
    cases["external_dotdot"] = (save(ext, sub, "ext.onnx"), "'..'")
    two_out = model([node("Gemm", ["z", "W1"], ["x"], transB=1), node("Relu", ["x"], ["y"])],
                    [init("W1", rng_weights(1, 8, 4))], output_names=("x", "y"))  # fmt: skip
    cases["two_outputs"] = (save(two_out, folder, "two_out.onnx"), "2")
    weights_in = model([node("Gemm", ["z", "W1"], ["x"], transB=1)], [],
                       extra_inputs=[helper.make_tensor_value_info("W1", TensorProto.FLOAT, [8, 4])])  # fmt: skip
    cases["weights_as_inputs"] = (save(weights_in, folder, "w_in.onnx"), "'W1'")
    mismatch = init("W1", rng_weights(1, 8, 4))
    mismatch.dims[0] = 9
    cases["initializer_mismatch"] = (
        save(model([node("Gemm", ["z", "W1"], ["x"], transB=1)], [mismatch]), folder, "mismatch.onnx"),
        "declares shape",
    )
    huge = TensorProto(name="W1", data_type=TensorProto.FLOAT, dims=[1 << 22, 1 << 22], raw_data=b"")
    cases["huge"] = (save(model([node("Gemm", ["z", "W1"], ["x"], transB=1)], [huge]), folder, "huge.onnx"),
                     "refusing before allocating")  # fmt: skip
    two_ops = model([node("Gemm", ["z", "W1"], ["a"], transB=1), node("Softplus", ["a"], ["b"], name="sp"),
                     node("Elu", ["b"], ["x"], name="elu")], [init("W1", rng_weights(1, 8, 4))])  # fmt: skip
    cases["unsupported_ops"] = (save(two_ops, folder, "ops.onnx"), "'sp'")
    return cases


def _assert_clean_failure(result, path_words, out_path, existed: bool, code: int = 1):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("Error")
    for word in path_words:
        assert word in result.stderr, (word, result.stderr)
    if existed:
        assert out_path.read_bytes() == PREVIOUS
    else:
        assert not out_path.exists()
    leftovers = [
        p.name for p in out_path.parent.iterdir() if p.name.startswith(out_path.name) and p != out_path
    ]
    assert not leftovers


@pytest.mark.parametrize("existed", [False, True])
@pytest.mark.parametrize(
    "case",
    ["empty", "truncated", "random", "text", "tensor_protobuf", "external_dotdot", "two_outputs",
     "weights_as_inputs", "initializer_mismatch", "huge", "unsupported_ops"],
)  # fmt: skip
def test_bad_model_files(tmp_path, case, existed):
    path, words = _bad_models(tmp_path)[case]
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros(8, dtype=np.float32))
    out = tmp_path / "out.npy"
    if existed:
        out.write_bytes(PREVIOUS)
    result = run("invert", path, obs, "-o", out)
    _assert_clean_failure(result, [path.name, words], out, existed)
    for command in (["inspect", path], ["audit", path, "--samples", "2"]):
        result = run(*command)
        # audit reports an unsupported graph as a negative answer (exit 3); everything else is an error
        expected = (
            3
            if command[0] == "audit" and case in {"unsupported_ops", "two_outputs", "weights_as_inputs"}
            else 1
        )
        assert result.exit_code == expected, (command, result.stderr)
        assert "Traceback" not in result.stderr


def _bad_observations(folder, n):
    cases = {}

    def arr(name, value, **kw):
        path = folder / name
        np.save(path, value, **kw)
        return path

    cases["pickled_object_array"] = (arr("obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
                                     "pickle")  # fmt: skip
    cases["nan"] = (arr("nan.npy", np.full(n, np.nan, dtype=np.float32)), "NaN")
    cases["inf"] = (arr("inf.npy", np.full(n, np.inf, dtype=np.float32)), "inf")
    cases["wrong_size"] = (arr("short.npy", np.zeros(n - 1, dtype=np.float32)), f"{n}")
    cases["integer"] = (arr("int.npy", np.zeros(n, dtype=np.int64)), "int")
    cases["bool"] = (arr("bool.npy", np.zeros(n, dtype=bool)), "bool")
    cases["zero_d"] = (arr("scalar.npy", np.float32(1.0)), "scalar.npy")
    several = folder / "several.npz"
    np.savez(several, a=np.zeros(n), b=np.zeros(n))
    cases["npz_several_arrays"] = (several, "2 arrays")
    text = folder / "text.npy"
    text.write_text("1 2 3\n")
    cases["text_named_npy"] = (text, "text.npy")
    evil = folder / "evil.npy"
    evil.write_bytes(pickle.dumps(np.zeros(n)))  # a pickle, not an .npy file
    cases["raw_pickle_named_npy"] = (evil, "evil.npy")
    return cases


OBS_CASES = ["pickled_object_array", "nan", "inf", "wrong_size", "integer", "bool", "zero_d",
             "npz_several_arrays", "text_named_npy", "raw_pickle_named_npy"]  # fmt: skip


@pytest.mark.parametrize("existed", [False, True])
@pytest.mark.parametrize("case", OBS_CASES)
def test_bad_observations(tmp_path, relu_model, case, existed, monkeypatch):
    import onnxinv

    n = onnxinv.load(relu_model).output_dim
    path, word = _bad_observations(tmp_path, n)[case]
    out = tmp_path / "out.npy"
    if existed:
        out.write_bytes(PREVIOUS)
    unpickled = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(a) or None)
    result = run("invert", relu_model, path, "-o", out)
    _assert_clean_failure(result, [path.name], out, existed)
    assert word.lower() in result.stderr.lower(), result.stderr
    assert not unpickled


@pytest.mark.parametrize(
    ("mask", "word"),
    [
        (np.ones(7, dtype=bool), "mask"),  # wrong shape
        (np.full(120, 0.5), "mask"),  # not 0/1
        (np.zeros(120, dtype=bool), "mask"),  # observes nothing
    ],
)
def test_bad_masks(tmp_path, relu_model, mask, word):
    _, x = observations(relu_model)
    obs, mask_path, out = tmp_path / "obs.npy", tmp_path / "mask.npy", tmp_path / "out.npy"
    np.save(obs, x)
    np.save(mask_path, mask)
    result = run("invert", relu_model, obs, "--mask", mask_path, "-o", out)
    _assert_clean_failure(result, [word], out, existed=False)


def test_bad_latent_for_verify(tmp_path, relu_model):
    _, x = observations(relu_model)
    obs, z = tmp_path / "obs.npy", tmp_path / "z.npy"
    np.save(obs, x)
    np.save(z, np.array([object()], dtype=object), allow_pickle=True)
    result = run("verify", relu_model, z, obs)
    assert result.exit_code == 1 and "Traceback" not in result.stderr and "z.npy" in result.stderr


def test_usage_errors_exit_2(tmp_path, relu_model):
    assert run("invert", relu_model).exit_code == 2
    assert run("invert", relu_model, tmp_path / "missing.npy").exit_code == 2
    assert run("invert", relu_model, relu_model, "--method", "magic").exit_code == 2
    assert run("nonsense").exit_code == 2


def test_onnx_checker_is_not_a_gate(tmp_path):
    # nodes out of topological order fail onnx.checker but run in onnxruntime: onnxinv reads them
    m = model([node("Relu", ["a"], ["x"]), node("Gemm", ["z", "W1"], ["a"], transB=1)],
              [init("W1", rng_weights(1, 8, 4))])  # fmt: skip
    path = save(m, tmp_path)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(onnx.load(path))
    assert run("inspect", path).exit_code == 0
