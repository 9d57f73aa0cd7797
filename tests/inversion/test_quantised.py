"""8-bit images: quantisation noise (uniform, ±0.5/255) on the sigmoid VAE, and what is said about a miss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from contract import assert_contract
from inversion_helpers import rel_err

import onnxinv
from onnxinv.inversion import Verdict, invert

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
    image within the quantisation noise, and the verdict says so."""
    z, x = _quantised(vae, 8)
    assert np.any(x == 0.0) and np.abs(x - vae.run_onnx(z)).max() <= HALF_STEP * 1.001
    res = invert(vae, x, method=method, noise=HALF_STEP, workers=1)
    for r, z_true, row in zip(res.results, z, x):
        assert r.reproduces and r.verdict.success, r.message
        assert_contract(vae, row, r, in_range=True, known=[z_true])
        assert rel_err(r.z, z_true) <= 0.1


def test_8bit_data_implies_half_a_grey_level(vae) -> None:
    """Without a noise level, observations on the 8-bit grid are read as quantised: bounded noise of
    half a grey level, and the result says where the noise level came from."""
    z, x = _quantised(vae, 4, seed=2)
    res = invert(vae, x, workers=1)
    for r, z_true, row in zip(res, z, x):
        assert r.noise == pytest.approx(HALF_STEP) and r.noise_source == "quantisation"
        assert r.reproduces and r.fit.criterion == "max abs"
        assert_contract(vae, row, r, in_range=True, known=[z_true])
    # noise=0 says "clean" and skips the test
    r0 = invert(vae, x[0], noise=0)
    assert r0.noise is None and r0.noise_source is None and not r0.reproduces


def test_quantised_unique_verdicts_hold_z_true_in_their_radius(vae) -> None:
    """A noisy "unique" is a radius proved at the returned latent (stability argument); z* lies in it."""
    z, x = _quantised(vae, 8)
    res = invert(vae, x, method="linf", noise=HALF_STEP, workers=1)
    assert res.counts["unique"] >= 1
    for r, z_true in zip(res, z):
        if r.verdict is Verdict.UNIQUE:
            assert r.radius is not None and np.max(np.abs(r.z - z_true)) <= r.radius


def test_image_outside_the_range_is_not_explained(vae) -> None:
    """A digit-like image the decoder cannot draw (a bright bar where it draws background), given
    with the quantisation noise level: no latent reproduces it; never an exit-0 verdict."""
    _, x = _quantised(vae, 3, seed=1)
    img = x.reshape(3, 8, 8).copy()
    img[:, 0, :] = 1.0
    img[:, :, 0] = 1.0
    for method in ("linf", "auto"):
        res = invert(vae, img.reshape(3, 64), method=method, noise=HALF_STEP, workers=1)
        for r, row in zip(res.results, img.reshape(3, 64)):
            assert not r.reproduces and not r.verdict.success, r.message
            assert r.verdict in (Verdict.NOT_FOUND, Verdict.NO_PREIMAGE)
            assert_contract(vae, row, r)


def test_stacked_grid_test_answers_as_row_by_row() -> None:
    """quantisation_steps (a batch's grid test, first values of all rows at once) gives every row the
    answer quantisation_step gives it alone: rows on either grid, rows off it only after the first
    values, rows made only of the grid's ends, short rows, and with a mask."""
    from onnxinv.observations import quantisation_step, quantisation_steps

    rng = np.random.default_rng(3)
    k = rng.integers(0, 256, size=(8, 20)).astype(np.float64)
    rows = [
        k[0] / 255,  # [0, 1] grid
        2 * k[1] / 255 - 1,  # [-1, 1] grid
        rng.random(20),  # off both grids
        np.concatenate([k[2, :10] / 255, rng.random(10)]),  # on the grid for the first values only
        np.where(k[3] > 127, 1.0, 0.0),  # only the grid's ends
        np.concatenate([2 * k[4, :12] / 255 - 1, [0.3]]).tolist() + [0.0] * 7,  # off after 12 values
    ]
    values = np.array(rows, dtype=np.float64)
    expected = [quantisation_step(v) for v in values]
    assert expected[:3] == [1 / 255, 2 / 255, None] and expected[3:] == [None, None, None]
    assert quantisation_steps(values) == expected
    short = values[:, :5]
    assert quantisation_steps(short) == [quantisation_step(v) for v in short]
    mask = rng.random(values.shape) < 0.7
    assert quantisation_steps(values, mask) == [quantisation_step(v, m) for v, m in zip(values, mask)]
    assert quantisation_steps(np.zeros((0, 4))) == []
