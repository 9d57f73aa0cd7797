"""Observation, mask and noise validation: ObservationError with what, the shapes, and what to try."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinv.errors import InvalidArgumentError, ObservationError, OnnxInvError
from onnxinv.inversion import invert
from onnxinv.observations import check_noise, prepare_mask, prepare_observations

N = 64


@pytest.mark.parametrize("shape", [(64,), (1, 64), (1, 1, 8, 8), (64, 1)])
def test_single_observation_shapes(shape: tuple[int, ...]) -> None:
    obs = prepare_observations(np.zeros(shape, dtype=np.float32), N)
    assert obs.single and obs.values.shape == (1, N) and obs.values.dtype == np.float64
    assert obs.input_shape == shape


@pytest.mark.parametrize("shape", [(3, 64), (3, 1, 8, 8), (3, 1, 64)])
def test_batch_shapes(shape: tuple[int, ...]) -> None:
    obs = prepare_observations(np.zeros(shape), N)
    assert not obs.single and obs.values.shape == (3, N) and obs.count == 3


def test_batch_flag() -> None:
    assert not prepare_observations(np.zeros((1, N)), N, batch=True).single
    with pytest.raises(ObservationError, match="batch=True needs the batch on the first axis"):
        prepare_observations(np.zeros(N), N, batch=True)
    with pytest.raises(ObservationError, match="batch=False"):
        prepare_observations(np.zeros((2, N)), N, batch=False)


def test_size_mismatch_names_shapes_and_a_fix() -> None:
    with pytest.raises(ObservationError, match=r"shape \(63,\) \(63 values\).*produces 64 values.*\(N, 64\)"):
        prepare_observations(np.zeros(63), N)
    with pytest.raises(ObservationError, match=r"reshape to \(2, 64\)"):
        prepare_observations(np.zeros(128), N)  # flat: the batch axis is missing


@pytest.mark.parametrize(
    "value,match",
    [
        (np.zeros(N, dtype=np.int64), "dtype int64.*float array is required.*astype"),
        (np.zeros(N, dtype=np.uint8), "dtype uint8.*/ 255"),
        (np.zeros(N, dtype=bool), "dtype bool.*looks like a mask"),
        (np.zeros(N, dtype=complex), "complex"),
        (np.array([object()] * N), "dtype object"),
        (np.float64(1.0), "0-d array"),
        (np.zeros((0, N)), "empty"),
    ],
)
def test_bad_dtypes_and_ranks(value: object, match: str) -> None:
    with pytest.raises(ObservationError, match=match):
        prepare_observations(value, N)


def test_nan_and_inf_are_refused_unless_unobserved() -> None:
    x = np.zeros(N)
    x[5] = np.nan
    with pytest.raises(ObservationError, match=r"NaN at entry 5.*mask=np.isfinite\(x\)"):
        prepare_observations(x, N)
    x[5] = np.inf
    with pytest.raises(ObservationError, match="infinite value at entry 5"):
        prepare_observations(x, N)
    xb = np.zeros((2, N))
    xb[1, 3] = -np.inf
    with pytest.raises(ObservationError, match="observation 1, entry 3"):
        prepare_observations(xb, N)
    obs = prepare_observations(x, N, np.isfinite(x))
    assert obs.values[0, 5] == 0.0 and not obs.mask[0, 5]


def test_masks() -> None:
    m = prepare_mask(np.arange(N) % 2, N)  # 0/1 integers are fine
    assert m.dtype == bool and m.shape == (1, N) and m.sum() == N // 2
    assert prepare_mask(np.ones((3, N), dtype=bool), N, 3).shape == (3, N)  # one mask per observation
    assert prepare_mask(np.ones(N, dtype=bool), N, 3).shape == (3, N)  # one mask shared by the batch
    with pytest.raises(ObservationError, match=r"mask has shape \(63,\).*64 entries"):
        prepare_mask(np.ones(63, dtype=bool), N)
    with pytest.raises(ObservationError, match=r"or 3 x 64 = 192"):
        prepare_mask(np.ones((2, N), dtype=bool), N, 3)
    with pytest.raises(ObservationError, match="neither 0 nor 1"):
        prepare_mask(np.full(N, 0.5), N)
    with pytest.raises(ObservationError, match="dtype <U1"):
        prepare_mask(np.array(["a"] * N), N)
    with pytest.raises(ObservationError, match="observes no entry"):
        prepare_mask(np.zeros(N, dtype=bool), N)
    with pytest.raises(ObservationError, match="observes no entry for observation 1"):
        prepare_mask(np.array([[True] * N, [False] * N]), N, 2)
    with pytest.raises(ObservationError, match="single value"):
        prepare_mask(np.bool_(True), N)


def test_all_true_mask_is_no_mask() -> None:
    assert prepare_observations(np.zeros(N), N, np.ones(N, dtype=bool)).mask is None


def test_noise() -> None:
    assert check_noise(None) is None and check_noise(0) is None
    assert check_noise(np.float32(0.5)) == 0.5
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ObservationError, match="finite and >= 0"):
            check_noise(bad)
    with pytest.raises(ObservationError, match="must be a number"):
        check_noise("loud")


def test_invert_raises_observation_error(relu_20_100_500) -> None:
    with pytest.raises(ObservationError, match="produces 500 values"):
        invert(relu_20_100_500, np.zeros(499))
    with pytest.raises(OnnxInvError):  # the package's base class
        invert(relu_20_100_500, np.zeros(500), mask=np.zeros(500, dtype=bool))
    with pytest.raises(InvalidArgumentError, match="unknown method 'newton'"):
        invert(relu_20_100_500, np.zeros(500), method="newton")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_precision_of_the_dtype_is_kept(dtype) -> None:
    """Values are converted to float64, but they are only as accurate as the dtype they came in."""
    obs = prepare_observations(np.zeros((2, N), dtype=dtype), N)
    assert obs.values.dtype == np.float64
    assert obs.precision == float(np.finfo(dtype).eps)
