"""8-bit images: quantisation noise (uniform, ±0.5/255) on the sigmoid VAE, and what is said about a miss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inversion_helpers import rel_err

import onnxinv
from onnxinv.inversion import SolverStatus, Verdict, invert
from onnxinv.inversion.api import decide
from onnxinv.inversion.result import LayerStep

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
HALF_STEP = 0.5 / 255


@pytest.fixture(scope="module")
def vae():
    return onnxinv.load(SAMPLES / "digits_vae_legacy.onnx")


def _quantised(g, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    z = np.random.default_rng(seed).standard_normal((count, 8))
    x = np.round(g.run_onnx(z).astype(np.float32) * 255) / 255
    return z, x.astype(np.float32)


@pytest.mark.parametrize("method", ["linf", "auto", "l1"])
def test_quantised_observations_are_explained(vae, method: str) -> None:
    """Pixels at exactly 0 and 1 after rounding bound the fit from one side; the latent reproduces the
    image within the quantisation noise and the verdict is not "not found"."""
    z, x = _quantised(vae, 8)
    assert np.any(x == 0.0) and np.abs(x - vae.run_onnx(z)).max() <= HALF_STEP * 1.001
    res = invert(vae, x, method=method, noise=HALF_STEP, workers=1)
    assert res.counts["not found"] == 0, [r.message for r in res.results if not r.reproduces][:1]
    for r, z_true in zip(res.results, z):
        assert r.reproduces and r.verdict in (Verdict.UNIQUE, Verdict.NOT_UNIQUE)
        assert rel_err(r.z, z_true) <= 0.1


def test_quantised_verdicts_come_from_real_dimensions(vae) -> None:
    """A layer-wise estimate that leaves many hidden signs uncertain does not make the latent "not
    unique": the claim is checked at the returned latent's own hidden values."""
    z, x = _quantised(vae, 8)
    res = invert(vae, x, method="linf", noise=HALF_STEP, workers=1)
    assert res.counts["unique"] == 8, [r.message for r in res.results if r.verdict is not Verdict.UNIQUE][:1]


def test_image_outside_the_range_is_not_found(vae) -> None:
    """A digit-like image the decoder cannot draw (a bright bar where it draws background), given
    with the quantisation noise level: no latent reproduces it, so "not found", never "not unique"."""
    _, x = _quantised(vae, 3, seed=1)
    img = x.reshape(3, 8, 8).copy()
    img[:, 0, :] = 1.0
    img[:, :, 0] = 1.0
    for method in ("linf", "auto"):
        res = invert(vae, img.reshape(3, 64), method=method, noise=HALF_STEP, workers=1)
        for r in res.results:
            assert not r.reproduces
            assert r.verdict is Verdict.NOT_FOUND, r.message
            assert r.message.startswith("Not found") and f"{r.residual_rel_l2:.3g}" in r.message


def _step(layer: int, dim: int, unknowns: int, *, status=SolverStatus.OPTIMAL, residual=0.0, eps=None):
    return LayerStep(
        layer=layer,
        activation="relu",
        active_rows=unknowns - dim,
        observed_rows=2 * unknowns,
        unknowns=unknowns,
        rank=unknowns - dim,
        preimage_dim=dim,
        identifiable=status.ok and dim == 0,
        status=status,
        residual=residual,
        seconds=0.0,
        message="m",
        epsilon=eps,
    )


def test_verdict_rule_for_a_miss() -> None:
    """z does not reproduce x: "not unique" only for a clean observation whose layers down to a hidden
    layer were solved exactly and whose preimage there is a proper positive-dimensional set."""
    failed0 = _step(0, 0, 8, status=SolverStatus.INFEASIBLE, residual=0.3)

    # noisy estimate: the whole latent space "unconstrained" at layer 0
    steps = [_step(0, 8, 8, eps=0.1), _step(1, 0, 40, eps=0.002)]
    assert decide(steps, False, 0.2, 0.3, 0.004, 0.002)[0] is Verdict.NOT_FOUND
    # noisy, hidden layer with free directions: still an estimate, not evidence
    steps = [failed0, _step(1, 7, 40, eps=0.002)]
    verdict, _, _, message = decide(steps, False, 0.2, 0.3, 0.004, 0.002)
    assert verdict is Verdict.NOT_FOUND and "method='sparse'" in message
    # clean, hidden layer solved exactly with a 7-dimensional preimage: a free choice explains the miss
    steps = [failed0, _step(1, 7, 40)]
    verdict, layer, dim, _ = decide(steps, False, 0.2, 0.3, 1e-5, None)
    assert (verdict, layer, dim) == (Verdict.NOT_UNIQUE, 1, 7)
    # clean, but nothing pinned down there (dimension = the whole input space)
    steps = [failed0, _step(1, 40, 40)]
    assert decide(steps, False, 0.2, 0.3, 1e-5, None)[0] is Verdict.NOT_FOUND
    # clean, but a layer above it failed
    steps = [_step(0, 0, 8), _step(1, 7, 40), _step(2, 0, 80, status=SolverStatus.UNKNOWN)]
    assert decide(steps, False, 0.2, 0.3, 1e-5, None)[0] is Verdict.NOT_FOUND
    # a reproducing z keeps its verdicts
    assert decide([_step(0, 8, 8, eps=0.1)], True, 1e-3, 1e-3, 0.004, 0.002)[0] is Verdict.NOT_UNIQUE
