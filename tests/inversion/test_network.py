"""Whole-network numerics: Jacobians against finite differences, least-squares fits against a known
z*, the error estimate against the empirical spread, and the batched gradient-descent baseline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

import onnxinv
from onnxinv.errors import InvalidArgumentError, ObservationError
from onnxinv.inversion import network
from onnxinv.inversion.network import (
    KINK_RTOL,
    FitStatus,
    descend,
    error_estimate,
    fit,
    forward,
    jacobian,
    seeded_starts,
)
from onnxinv.layers import Activation, Layer

ACTIVATIONS = [
    Activation.RELU,
    Activation.LEAKY_RELU,
    Activation.IDENTITY,
    Activation.TANH,
    Activation.SIGMOID,
]


def _net(
    sizes: list[int],
    act: Activation,
    seed: int,
    *,
    sparse: bool = False,
    per_unit: bool = False,
    last: Activation | None = None,
) -> tuple[Layer, ...]:
    """Random layers with biases; sparse weights keep about half the entries (CSR)."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_out, n_in))
        if sparse:
            w[rng.random(w.shape) < 0.5] = 0.0
            w = sp.csr_array(w)
        a = last if (last is not None and i == len(sizes) - 2) else act
        slope = 0.0
        if a is Activation.LEAKY_RELU:
            slope = rng.uniform(0.05, 0.4, size=n_out) if per_unit else 0.2
        layers.append(Layer(w, rng.normal(0.0, 0.3, size=n_out), a, slope))
    return tuple(layers)


def _finite_differences(layers: tuple[Layer, ...], z: np.ndarray, h: float = 1e-6) -> np.ndarray:
    cols = []
    for e in np.eye(z.size):
        cols.append((forward(layers, z + h * e).output - forward(layers, z - h * e).output) / (2 * h))
    return np.stack(cols, axis=1)


def _away_from_kinks(layers: tuple[Layer, ...], seed: int, margin: float = 1e-3) -> np.ndarray:
    """A latent whose pre-activations all keep ``margin`` from 0 (finite differences are exact
    there for piecewise-linear units)."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        z = rng.standard_normal(layers[0].in_features)
        h, ok = z, True
        for layer in layers:
            a = layer.preactivation(h)
            ok &= bool(np.min(np.abs(a)) > margin)
            h = layer.forward(h)
        if ok:
            return z
    raise AssertionError("no latent away from the kinks")


def _dense(jac: np.ndarray | LinearOperator) -> np.ndarray:
    return jac if isinstance(jac, np.ndarray) else jac.matmat(np.eye(jac.shape[1]))


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.value)
@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("kind", ["dense", "operator"])
def test_jacobian_matches_finite_differences(act: Activation, storage: str, kind: str) -> None:
    layers = _net([4, 9, 7, 6], act, seed=3, sparse=storage == "sparse", per_unit=True)
    assert all(lay.sparse == (storage == "sparse") for lay in layers)
    z = _away_from_kinks(layers, 1)
    jac = jacobian(layers, z, kind=kind)
    assert isinstance(jac, np.ndarray) == (kind == "dense")
    assert jac.shape == (6, 4)
    np.testing.assert_allclose(_dense(jac), _finite_differences(layers, z), rtol=1e-6, atol=1e-8)


def test_per_unit_slopes_change_the_jacobian() -> None:
    layers = _net([3, 12, 5], Activation.LEAKY_RELU, seed=4, per_unit=True)
    assert layers[0].per_unit_slope
    z = _away_from_kinks(layers, 2)
    np.testing.assert_allclose(jacobian(layers, z), _finite_differences(layers, z), rtol=1e-6, atol=1e-9)
    shared = tuple(Layer(lay.weight, lay.bias, lay.activation, 0.2) for lay in layers)
    assert not np.allclose(jacobian(shared, z), jacobian(layers, z))


def test_mixed_activations_measure_and_rows() -> None:
    """A chain of every activation, with a measurement matrix and a row subset, both Jacobian forms."""
    rng = np.random.default_rng(5)
    acts = [Activation.LEAKY_RELU, Activation.RELU, Activation.TANH, Activation.IDENTITY, Activation.SIGMOID]
    sizes = [5, 12, 14, 10, 9, 11]
    layers = []
    for i, a in enumerate(acts):
        w = rng.normal(0.0, 1.0 / np.sqrt(sizes[i]), size=(sizes[i + 1], sizes[i]))
        weight = sp.csr_array(w) if i % 2 else w
        slope = rng.uniform(0.1, 0.3, size=sizes[i + 1]) if a is Activation.LEAKY_RELU else 0.0
        layers.append(Layer(weight, rng.normal(0.0, 0.3, size=sizes[i + 1]), a, slope))
    layers = tuple(layers)
    z = _away_from_kinks(layers, 3)
    full = _finite_differences(layers, z)
    a_mat = rng.standard_normal((7, 11))
    rows = np.array([True, False, True, True, False, True, False])
    for kind in ("dense", "operator"):
        np.testing.assert_allclose(_dense(jacobian(layers, z, kind=kind)), full, rtol=1e-6, atol=1e-8)
        got = _dense(jacobian(layers, z, measure=a_mat, rows=rows, kind=kind))
        np.testing.assert_allclose(got, (a_mat @ full)[rows], rtol=1e-6, atol=1e-8)
        sub = _dense(jacobian(layers, z, rows=np.array([0, 4, 10]), kind=kind))
        np.testing.assert_allclose(sub, full[[0, 4, 10]], rtol=1e-6, atol=1e-8)
        sparse_a = _dense(jacobian(layers, z, measure=sp.csr_array(a_mat), kind=kind))
        np.testing.assert_allclose(sparse_a, a_mat @ full, rtol=1e-6, atol=1e-8)


def test_operator_is_the_adjoint_of_itself() -> None:
    """Dot test: ``u · (J v) = (Jᵀ u) · v`` for the operator with a measurement and rows."""
    layers = _net([6, 20, 15], Activation.TANH, seed=6, sparse=True)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(6)
    op = jacobian(
        layers, z, measure=rng.standard_normal((8, 15)), rows=np.arange(8) % 3 != 0, kind="operator"
    )
    assert isinstance(op, LinearOperator)
    for _ in range(5):
        u, v = rng.standard_normal(op.shape[0]), rng.standard_normal(op.shape[1])
        assert np.isclose(u @ op.matvec(v), op.rmatvec(u) @ v, rtol=1e-12)


def test_sparse_weights_are_never_densified() -> None:
    """A 200000 × 200000 sparse layer (a dense copy would need 320 GB) through both Jacobian forms."""
    n = 200_000
    rng = np.random.default_rng(7)
    first = Layer(
        sp.csr_array(sp.random(n, 3, density=0.5, random_state=1)), np.zeros(n), Activation.IDENTITY
    )
    diag = Layer(sp.diags_array(rng.uniform(0.5, 2.0, n)).tocsr(), rng.normal(size=n), Activation.TANH)
    layers = (first, diag)
    z = rng.standard_normal(3)
    dense = jacobian(layers, z, kind="dense")  # (n, 3): the weights stay sparse
    op = jacobian(layers, z)
    assert isinstance(op, LinearOperator)  # auto: a sparse layer
    assert isinstance(dense, np.ndarray) and dense.shape == (n, 3)
    np.testing.assert_allclose(op.matmat(np.eye(3)), dense, rtol=1e-12, atol=1e-15)


def test_jacobian_chooses_an_operator_for_large_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    k = 8
    layers = (Layer(np.ones((100, k)), np.zeros(100), Activation.RELU),)
    assert isinstance(jacobian(layers, np.ones(k)), np.ndarray)
    monkeypatch.setattr(network, "DENSE_ENTRIES", 100 * k - 1)
    assert isinstance(jacobian(layers, np.ones(k)), LinearOperator)


def test_forward_batch_matches_single() -> None:
    layers = _net([4, 10, 6], Activation.LEAKY_RELU, seed=8, per_unit=True)
    z = np.random.default_rng(0).standard_normal((5, 4))
    batch = forward(layers, z)
    for i in range(5):
        one = forward(layers, z[i])
        np.testing.assert_allclose(one.output, batch.output[i], rtol=1e-14)
        for d1, db in zip(one.derivatives, batch.derivatives):
            np.testing.assert_array_equal(d1, db[i])


# ---------------------------------------------------------------------------------------------- fit


def _relu_net(sizes: list[int], seed: int, last: Activation = Activation.RELU) -> tuple[Layer, ...]:
    return _net(sizes, Activation.RELU, seed, last=last)


@pytest.mark.parametrize("method", ["auto", "trf", "lm"])
def test_fit_recovers_z_from_a_nearby_start(method: str) -> None:
    layers = _relu_net([6, 40, 80], seed=10, last=Activation.SIGMOID)
    rng = np.random.default_rng(1)
    z_true = rng.standard_normal(6)
    y = forward(layers, z_true).output
    start = z_true + 0.05 * rng.standard_normal(6)
    f = fit(layers, y, starts=start, method=method)
    assert f.status is FitStatus.CONVERGED
    assert f.relative_l2 <= 1e-10
    assert np.linalg.norm(f.z - z_true) <= 1e-8 * np.linalg.norm(z_true)
    assert f.start == 0 and f.nfev >= 1 and f.runs[0].cost == f.cost
    assert f.residual.shape == (80,) and np.isclose(f.residual_l2, np.linalg.norm(f.residual))
    assert f.cost <= f.runs[0].initial_cost


def test_fit_with_a_mask() -> None:
    layers = _relu_net([5, 40, 100], seed=11)
    rng = np.random.default_rng(2)
    z_true = rng.standard_normal(5)
    y = forward(layers, z_true).output
    mask = rng.random(100) < 0.5
    y_bad = np.where(mask, y, 1e3)  # unobserved entries must not matter
    f = fit(layers, y_bad, mask=mask, starts=z_true + 0.05 * rng.standard_normal(5))
    assert f.residual.shape == (int(mask.sum()),)
    assert f.relative_l2 <= 1e-10
    assert np.linalg.norm(f.z - z_true) <= 1e-8 * np.linalg.norm(z_true)


@pytest.mark.parametrize("method", ["trf", "lm"])
def test_fit_with_a_gaussian_measurement_matrix(method: str) -> None:
    layers = _relu_net([5, 40, 100], seed=12)
    rng = np.random.default_rng(3)
    z_true = rng.standard_normal(5)
    a_mat = rng.normal(0.0, 1.0 / np.sqrt(25), size=(25, 100))
    y = a_mat @ forward(layers, z_true).output
    starts = np.vstack([z_true + 0.05 * rng.standard_normal(5), rng.standard_normal((3, 5))])
    f = fit(layers, y, measure=a_mat, starts=starts, method=method)
    assert f.jacobian.shape == (25, 5)
    assert f.relative_l2 <= 1e-10
    assert np.linalg.norm(f.z - z_true) <= 1e-8 * np.linalg.norm(z_true)


def test_fit_with_an_operator_jacobian() -> None:
    layers = _net([5, 30, 60], Activation.LEAKY_RELU, seed=13, sparse=True)
    rng = np.random.default_rng(4)
    z_true = rng.standard_normal(5)
    y = forward(layers, z_true).output
    f = fit(layers, y, starts=z_true + 0.05 * rng.standard_normal(5), kind="operator")
    assert isinstance(f.jacobian, LinearOperator)
    assert f.relative_l2 <= 1e-10
    with pytest.raises(InvalidArgumentError, match="lm"):
        fit(layers, y, starts=z_true, kind="operator", method="lm")


def test_fit_never_returns_worse_than_the_best_start() -> None:
    layers = _relu_net([6, 30, 50], seed=14, last=Activation.TANH)
    rng = np.random.default_rng(5)
    y = forward(layers, rng.standard_normal(6)).output + 0.3 * rng.standard_normal(50)
    for trial in range(10):
        starts = rng.standard_normal((4, 6)) * 2
        initial = [0.5 * float(np.sum((forward(layers, s).output - y) ** 2)) for s in starts]
        f = fit(layers, y, starts=starts, max_nfev=1 + trial % 3)
        assert f.cost <= min(initial) + 1e-15
        assert np.isclose(f.cost, 0.5 * f.residual_l2**2, rtol=1e-12)
        assert all(r.cost <= r.initial_cost for r in f.runs)
        assert f.runs[f.start].cost == f.cost


def test_fit_past_deadline_returns_the_best_start_at_once() -> None:
    layers = _relu_net([6, 30, 50], seed=15)
    rng = np.random.default_rng(6)
    y = forward(layers, rng.standard_normal(6)).output
    starts = rng.standard_normal((3, 6))
    costs = [0.5 * float(np.sum((forward(layers, s).output - y) ** 2)) for s in starts]
    f = fit(layers, y, starts=starts, deadline=time.perf_counter() - 1.0)
    assert f.status is FitStatus.DEADLINE and f.deadline_hit
    assert f.nfev == 0 and f.njev == 0
    assert f.start == int(np.argmin(costs))
    np.testing.assert_array_equal(f.z, starts[f.start])
    assert np.isclose(f.cost, min(costs), rtol=1e-12)


def test_fit_prior_is_part_of_the_cost() -> None:
    layers = _relu_net([4, 30, 40], seed=16)
    rng = np.random.default_rng(7)
    y = forward(layers, rng.standard_normal(4)).output
    f0 = fit(layers, y, starts=np.zeros(4) + 0.1)
    f1 = fit(layers, y, starts=f0.z, prior=0.5)
    assert np.isclose(f1.cost, 0.5 * f1.residual_l2**2 + 0.25 * float(f1.z @ f1.z), rtol=1e-10)
    assert np.linalg.norm(f1.z) < np.linalg.norm(f0.z)  # shrunk toward 0


def test_fit_rejects_bad_input() -> None:
    layers = _relu_net([4, 10, 12], seed=17)
    with pytest.raises(ObservationError, match=r"expected \(12,\)"):
        fit(layers, np.zeros(11), starts=np.zeros(4))
    with pytest.raises(ObservationError, match="takes 4 values"):
        fit(layers, np.zeros(12), starts=np.zeros(3))
    with pytest.raises(ObservationError, match="mask"):
        fit(layers, np.zeros(12), starts=np.zeros(4), mask=np.ones(12))
    with pytest.raises(ObservationError, match="measurement matrix"):
        fit(layers, np.zeros(5), starts=np.zeros(4), measure=np.zeros((5, 11)))
    with pytest.raises(ObservationError, match="prior"):
        fit(layers, np.zeros(12), starts=np.zeros(4), prior=-1.0)
    with pytest.raises(InvalidArgumentError, match="lm"):
        fit(layers, np.zeros(3), starts=np.zeros(4), measure=np.ones((3, 12)), method="lm")


# ------------------------------------------------------------------------------------ error estimate


def _linear_model(seed: int) -> tuple[tuple[Layer, ...], np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((30, 4)) * np.array([1.0, 0.3, 2.0, 0.7])  # unequal column scales
    return (Layer(w, rng.standard_normal(30), Activation.IDENTITY),), rng.standard_normal(4)


@pytest.mark.parametrize("given", [True, False], ids=["sigma given", "sigma estimated"])
def test_error_estimate_matches_the_empirical_spread(given: bool) -> None:
    layers, z_true = _linear_model(20)
    clean = forward(layers, z_true).output
    sigma = 0.05
    rng = np.random.default_rng(21)
    zs, stds = [], []
    for _ in range(400):
        f = fit(layers, clean + sigma * rng.standard_normal(30), starts=np.zeros(4))
        est = error_estimate(f, sigma if given else None)
        assert est.std is not None and est.reason == "" and est.dof == 26
        zs.append(f.z)
        stds.append(est.std)
    empirical = np.std(np.array(zs), axis=0, ddof=1)
    predicted = np.mean(np.array(stds), axis=0)
    np.testing.assert_allclose(predicted, empirical, rtol=0.2)
    w = layers[0].dense_weight()
    np.testing.assert_allclose(predicted, sigma * np.sqrt(np.diag(np.linalg.inv(w.T @ w))), rtol=0.05)


def test_error_estimate_with_prior_and_operator() -> None:
    layers, z_true = _linear_model(22)
    y = forward(layers, z_true).output
    dense = fit(layers, y, starts=np.zeros(4), prior=0.1)
    op = fit(layers, y, starts=np.zeros(4), prior=0.1, kind="operator")
    a, b = error_estimate(dense, 0.1), error_estimate(op, 0.1)
    w = layers[0].dense_weight()
    expected = 0.1 * np.sqrt(np.diag(np.linalg.inv(w.T @ w + 0.1 * np.eye(4))))
    np.testing.assert_allclose(a.std, expected, rtol=1e-10)
    np.testing.assert_allclose(b.std, expected, rtol=1e-8)


def test_error_estimate_says_why_it_cannot() -> None:
    rng = np.random.default_rng(23)
    w = rng.standard_normal((20, 3))
    w[:, 1] = 0.0  # z_1 changes nothing
    layers = (Layer(w, np.zeros(20), Activation.IDENTITY),)
    f = fit(layers, rng.standard_normal(20), starts=np.zeros(3))
    est = error_estimate(f, 0.1)
    assert est.std is None and est.covariance is None and "singular" in est.reason
    small = (Layer(rng.standard_normal((3, 3)), np.zeros(3), Activation.IDENTITY),)
    f = fit(small, rng.standard_normal(3), starts=np.zeros(3))
    est = error_estimate(f)
    assert est.std is None and "degrees of freedom" in est.reason
    assert error_estimate(f, 0.1).std is not None


# ------------------------------------------------------------------------------------------- descend


def test_descend_converges_on_an_easy_clean_case() -> None:
    layers = _relu_net([5, 50, 200], seed=30)
    rng = np.random.default_rng(8)
    z_true = rng.standard_normal((4, 5))
    y = forward(layers, z_true).output
    z, losses, info = descend(layers, y, restarts=3, iterations=1500, seed=1)
    assert z.shape == (4, 5) and losses.shape == (4,)
    assert np.all(info.status == "converged")
    assert np.all(info.relative <= 1e-6)
    assert np.all(np.linalg.norm(z - z_true, axis=1) <= 1e-4 * np.linalg.norm(z_true, axis=1))
    assert np.allclose(losses, 0.5 * (info.relative * np.linalg.norm(y, axis=1)) ** 2, rtol=1e-8)


def test_descend_plain_gradient_with_adaptive_step_converges() -> None:
    layers = _relu_net([5, 50, 200], seed=31)
    y = forward(layers, np.random.default_rng(9).standard_normal((3, 5))).output
    _, _, info = descend(layers, y, restarts=3, iterations=1500, adam=False, seed=2)
    assert np.all(info.relative <= 1e-6)


def test_descend_does_not_depend_on_the_batch_split() -> None:
    layers = _net([4, 30, 60], Activation.LEAKY_RELU, seed=32, last=Activation.SIGMOID)
    rng = np.random.default_rng(10)
    y = forward(layers, rng.standard_normal((7, 4))).output + 0.01 * rng.standard_normal((7, 60))
    masks = rng.random((7, 60)) < 0.7
    whole, loss_w, info_w = descend(layers, y, masks=masks, restarts=3, iterations=200, seed=5)
    parts = [
        descend(layers, y[s], masks=masks[s], restarts=3, iterations=200, seed=5, indices=np.arange(7)[s])
        for s in (slice(0, 2), slice(2, 3), slice(3, 7))
    ]
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), whole, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), loss_w, rtol=1e-9)
    np.testing.assert_array_equal(np.concatenate([p[2].restart for p in parts]), info_w.restart)
    np.testing.assert_array_equal(
        np.concatenate([p[2].starts for p in parts]), seeded_starts(4, 3, 5, np.arange(7))
    )


def test_descend_with_measurement_prior_and_polish() -> None:
    layers = _relu_net([5, 40, 100], seed=33)
    rng = np.random.default_rng(11)
    z_true = rng.standard_normal((3, 5))
    a_mat = rng.normal(0.0, 1.0 / np.sqrt(30), size=(30, 100))
    y = forward(layers, z_true).output @ a_mat.T
    z, losses, info = descend(layers, y, measure=a_mat, restarts=4, iterations=100, seed=3, polish=30)
    assert np.all(info.polished | (info.status == "converged"))
    assert np.all(info.relative[info.polished] <= 1e-10)
    z_p, losses_p, _ = descend(layers, y, measure=a_mat, prior=0.1, restarts=2, iterations=50, seed=3)
    fz = forward(layers, z_p).output @ a_mat.T
    expected = 0.5 * np.sum((fz - y) ** 2, axis=1) + 0.05 * np.sum(z_p * z_p, axis=1)
    np.testing.assert_allclose(losses_p, expected, rtol=1e-10)


def test_descend_honours_the_deadline() -> None:
    layers = _relu_net([5, 40, 100], seed=34)
    y = forward(layers, np.random.default_rng(12).standard_normal((2, 5))).output
    z, losses, info = descend(layers, y, restarts=2, deadline=time.perf_counter() - 1.0, seed=0)
    assert np.all(info.status == "deadline") and np.all(info.iterations == 0)
    starts = info.starts[np.arange(2), info.restart]
    np.testing.assert_array_equal(z, starts)


def test_descend_rejects_bad_input() -> None:
    layers = _relu_net([4, 10, 12], seed=35)
    with pytest.raises(ObservationError, match=r"\(N, 12\)"):
        descend(layers, np.zeros((2, 11)))
    with pytest.raises(ObservationError, match="masks"):
        descend(layers, np.zeros((2, 12)), masks=np.ones((3, 12), dtype=bool))
    with pytest.raises(InvalidArgumentError, match="indices"):
        descend(layers, np.zeros((2, 12)), indices=[0])


def test_fit_target_skips_the_remaining_starts() -> None:
    layers = _relu_net([5, 40, 80], seed=18)
    rng = np.random.default_rng(13)
    z_true = rng.standard_normal(5)
    y = forward(layers, z_true).output
    starts = np.vstack([z_true + 0.05 * rng.standard_normal(5), rng.standard_normal((3, 5))])
    f = fit(layers, y, starts=starts, target=1e-10)
    assert f.relative_l2 <= 1e-10 and f.start == 0
    assert [r.status for r in f.runs[1:]] == [FitStatus.SKIPPED] * 3
    assert all(r.nfev == 0 for r in f.runs[1:])
    again = fit(layers, y, starts=np.vstack([starts[1:], f.z]), target=1e-10)
    assert again.nfev == 0 and again.start == 3
    assert all(r.status is FitStatus.SKIPPED for r in again.runs)


def test_rounds_along_the_kinks_lower_the_cost_where_plain_runs_stall() -> None:
    """On the shipped digits decoder (ReLU then sigmoid) at heavy noise, plain Levenberg-Marquardt
    runs end with hidden units on their kinks; the rounds along the kinks never fit worse and lower
    the cost of some observations."""
    g = onnxinv.load(str(Path(__file__).resolve().parents[2] / "sample_models" / "digits_vae_legacy.onnx"))
    rng = np.random.default_rng(0)
    x = g.forward(rng.standard_normal((16, 8)))
    y = x + 0.1 * rng.standard_normal(x.shape)
    lowered = 0
    for i in range(16):
        starts = np.vstack([np.zeros(8), np.random.default_rng(i).standard_normal((2, 8))])
        plain = fit(g, y[i], starts=starts, kinks=0)
        rounds = fit(g, y[i], starts=starts)
        assert rounds.cost <= plain.cost
        if rounds.cost < plain.cost * (1 - 1e-9):
            lowered += 1
            a = forward(g, plain.z).preactivations[0]
            assert np.min(np.abs(a)) <= KINK_RTOL * max(1.0, float(np.max(np.abs(a))))
    assert lowered >= 1
