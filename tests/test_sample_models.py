"""Every shipped sample model loads, passes its self-check, and reproduces its observation files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnxinv

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODELS = sorted(SAMPLES.glob("*.onnx"))


def test_sample_models_are_shipped_small():
    names = {p.name for p in MODELS}
    for expected in ("gaussian_20_100_500_relu.onnx", "gaussian_20_250_600_relu.onnx",
                     "gaussian_20_100_200_500_leaky.onnx", "digits_vae_legacy.onnx", "digits_vae_dynamo.onnx",
                     "digits_mlp_skl2onnx.onnx"):  # fmt: skip
        assert expected in names
    assert (SAMPLES / "digits_vae_dynamo.onnx.data").exists()  # the dynamo export's sidecar, as written
    for path in SAMPLES.iterdir():
        assert path.stat().st_size < 2 * 1024 * 1024, path


def fixed_inputs(path: Path) -> dict[str, np.ndarray] | None:
    """The values shipped for a conditional model's other inputs: ``<model>.fix.<input>.npy``."""
    files = sorted(path.parent.glob(f"{path.stem}.fix.*.npy"))
    return {f.name.split(".")[-2]: np.load(f, allow_pickle=False) for f in files} or None


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_sample_model_loads_and_self_checks(path):
    generator = onnxinv.load(path, fixed=fixed_inputs(path))
    assert onnxinv.check_generator(generator).passed
    assert all(layer.weight.dtype == np.float64 for layer in generator.layers)


@pytest.mark.parametrize("path", [p for p in MODELS if (p.parent / f"{p.stem}.z_true.npy").exists()],
                         ids=lambda p: p.stem)  # fmt: skip
def test_observation_files_match_their_latents(path):
    generator = onnxinv.load(path, fixed=fixed_inputs(path))
    z = np.load(path.parent / f"{path.stem}.z_true.npy", allow_pickle=False)
    x = np.load(path.parent / f"{path.stem}.obs.npy", allow_pickle=False)
    assert x.size == generator.output_dim
    np.testing.assert_allclose(generator.forward(z), x.reshape(-1), rtol=1e-4, atol=1e-5)
    if not (path.parent / f"{path.stem}.batch.npy").exists():  # the convolutional models ship one
        return
    batch_z = np.load(path.parent / f"{path.stem}.batch_z_true.npy", allow_pickle=False)
    batch = np.load(path.parent / f"{path.stem}.batch.npy", allow_pickle=False)
    np.testing.assert_allclose(
        generator.forward(batch_z), batch.reshape(len(batch_z), -1), rtol=1e-4, atol=1e-5
    )
