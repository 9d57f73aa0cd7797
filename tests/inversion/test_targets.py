"""Row bounds of tanh / sigmoid outputs: one-sided at the ends of the range, exact intervals when noisy,
and misfits measured on the output."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from onnxinv.inversion.targets import build_targets, row_misfit
from onnxinv.layers import Activation, Layer


def _layer(act: Activation, n: int) -> Layer:
    return Layer(np.eye(n), np.zeros(n), act)


def test_clean_sigmoid_ends_are_one_sided_and_finite() -> None:
    y = np.array([0.0, 1e-9, 0.3, 1.0 - 1e-9, 1.0])
    t = build_targets(_layer(Activation.SIGMOID, 5), y, None, 1e-12, noisy=False, band=1e-6)
    assert np.all(np.isfinite(t.upper[:2])) and np.all(np.isneginf(t.lower[:2]))
    assert np.all(np.isfinite(t.lower[3:])) and np.all(np.isposinf(t.upper[3:]))
    np.testing.assert_allclose(t.upper[:2], logit(y[:2] + 1e-6))
    np.testing.assert_allclose(t.lower[3:], logit(y[3:] - 1e-6))
    assert t.equality.tolist() == [False, False, True, False, False]
    assert t.lower[2] == pytest.approx(logit(0.3)) and t.lower_scale[2] == pytest.approx(1 / 0.21)
    # misfits are measured on the output: |sigmoid(a) - y| to first order
    a = np.array([-30.0, -30.0, logit(0.3) + 1e-4, 30.0, 30.0])
    mis = row_misfit(np.eye(5), np.zeros(5), t, a)
    assert mis[[0, 1, 3, 4]].max() == 0.0
    assert mis[2] == pytest.approx(abs(expit(a[2]) - 0.3), rel=1e-3)


@pytest.mark.parametrize("act", [Activation.SIGMOID, Activation.TANH], ids=["sigmoid", "tanh"])
def test_noisy_rows_are_exact_intervals_at_delta_equal_eps(act: Activation) -> None:
    """At δ = ε the row bounds are exactly ``f(y - ε) <= a <= f(y + ε)`` (``f`` = logit / atanh, a side
    beyond the range dropped), so ``δ* <= ε`` means ``|act(a) - y| <= ε`` on every row."""
    eps = 0.01
    if act is Activation.SIGMOID:
        f, low = logit, 0.0
        y = np.array([-0.02, 0.0, 0.005, 0.3, 0.995, 1.0, 1.02])
    else:
        f, low = np.arctanh, -1.0
        y = np.array([-1.02, -1.0, -0.995, 0.3, 0.995, 1.0, 1.02])
    t = build_targets(_layer(act, y.size), y, None, eps, noisy=True)
    assert t.rows.tolist() == list(range(y.size))  # none is dropped: each keeps at least one side
    yc = np.clip(y, low, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.where(yc - eps > low, f(np.clip(yc - eps, low, 1.0)), -np.inf)
        hi = np.where(yc + eps < 1.0, f(np.clip(yc + eps, low, 1.0)), np.inf)
        np.testing.assert_allclose(t.lower - eps * t.lower_scale, lo, rtol=1e-12)
        np.testing.assert_allclose(t.upper + eps * t.upper_scale, hi, rtol=1e-12)
    two = t.equality
    assert two.tolist() == [False, False, False, True, False, False, False]
    # smaller δ is stricter (the rows only widen with δ)
    assert np.all(t.lower_scale > 0) and np.all(t.upper_scale > 0)


def test_noisy_rows_keep_the_tangent_for_a_tiny_eps() -> None:
    t = build_targets(_layer(Activation.SIGMOID, 1), np.array([0.3]), None, 1e-12, noisy=True)
    assert t.lower[0] == pytest.approx(logit(0.3)) and t.lower_scale[0] == pytest.approx(1 / 0.21)


def test_relu_inactive_row_keeps_its_tiny_positive_value() -> None:
    """relu(a) = y implies a <= y: an entry below the active threshold bounds the row by itself."""
    y = np.array([2.0, 1e-12, 0.0])
    t = build_targets(_layer(Activation.RELU, 3), y, None, 1e-9, noisy=False)
    assert t.equality.tolist() == [True, False, False]
    assert t.upper.tolist() == [2.0, 1e-12, 0.0]
