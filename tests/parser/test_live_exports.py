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
