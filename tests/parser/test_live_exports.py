"""The spellings of tests/parser, exported live by torch when it is installed (skipped otherwise)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from builders import assert_matches_onnxruntime

import onnxinv


def _export(torch, module, args, path, dynamo: bool) -> None:
    module.eval()
    names = [f"in{i}" for i in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            shapes = tuple({0: torch.export.Dim("batch", min=1)} for _ in args)
            torch.onnx.export(module, args, path, dynamo=True, dynamic_shapes=shapes, external_data=False)
        else:
            axes = {**{n: {0: "n"} for n in names}, "out": {0: "n"}}
            torch.onnx.export(module, args, path, dynamo=False, opset_version=17, input_names=names,
                              output_names=["out"], dynamic_axes=axes)  # fmt: skip


def _torch_out(torch, module, *args) -> np.ndarray:
    with torch.no_grad():
        return module(*args).numpy().reshape(args[0].shape[0], -1).astype(np.float64)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_conditional_embedding_generator(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Conditional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(5, 2)
            self.l1 = torch.nn.Linear(5, 12)
            self.l2 = torch.nn.Linear(14, 20)

        def forward(self, z, y):
            e = self.embed(y)
            return self.l2(torch.cat([torch.relu(self.l1(torch.cat([z, e], 1))), e], 1))

    module = Conditional()
    path = tmp_path / "cond.onnx"
    _export(torch, module, (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), path, dynamo)
    label_name = onnxinv_inputs(path)[1]
    generator = onnxinv.load(path, fixed={label_name: np.array(4)})
    assert_matches_onnxruntime(generator)
    z = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    expected = _torch_out(torch, module, torch.tensor(z), torch.full((3,), 4, dtype=torch.long))
    np.testing.assert_allclose(generator.forward(z), expected, rtol=1e-4, atol=1e-5)


def onnxinv_inputs(path) -> list[str]:
    import onnx

    return [v.name for v in onnx.load(path).graph.input]


def _sequential(torch, *layers):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), *layers, torch.nn.Linear(8, 6))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_prelu_per_unit_and_per_channel(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    per_unit = torch.nn.PReLU(num_parameters=8)
    per_channel = torch.nn.PReLU(num_parameters=2)
    with torch.no_grad():
        per_unit.weight.copy_(torch.linspace(0.05, 0.5, 8))
        per_channel.weight.copy_(torch.tensor([0.1, 0.4]))
    module = _sequential(
        torch,
        per_unit,
        torch.nn.Linear(8, 8),
        torch.nn.Unflatten(1, (2, 2, 2)),
        per_channel,
        torch.nn.Flatten(),
    )
    path = tmp_path / "prelu.onnx"
    _export(torch, module, (torch.zeros(2, 3),), path, dynamo)
    generator = onnxinv.load(path)
    assert [layer.per_unit_slope for layer in generator.layers] == [True, True, False]
    np.testing.assert_allclose(generator.layers[1].slopes(), [0.1] * 4 + [0.4] * 4, rtol=1e-6)
    z = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    np.testing.assert_allclose(
        generator.forward(z), _torch_out(torch, module, torch.tensor(z)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize(
    ("layer", "words"),
    [
        ("SiLU", ["SiLU", "not monotone"]),
        ("Softplus", ["Softplus", "invertible elementwise"]),
        ("GELU", ["GELU", "not monotone"]),
        ("LayerNorm", ["LayerNorm", "not injective"]),
    ],
)
def test_refusals_of_real_exports_name_the_function(tmp_path, dynamo, layer, words):
    torch = pytest.importorskip("torch")
    made = {
        "SiLU": torch.nn.SiLU(),
        "Softplus": torch.nn.Softplus(beta=2.0),
        "GELU": torch.nn.GELU(),
        "LayerNorm": torch.nn.LayerNorm(8),
    }[layer]
    path = tmp_path / f"{layer}.onnx"
    _export(torch, _sequential(torch, made), (torch.zeros(2, 3),), path, dynamo)
    with pytest.raises(onnxinv.UnsupportedModelError) as info:
        onnxinv.load(path)
    text = str(info.value)
    assert len(info.value.problems) == 1
    for word in words:
        assert word in text
    assert "initializers" not in text and "combines several tensors" not in text
