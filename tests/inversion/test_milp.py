"""The whole-network MILP engine: known answers against a known z* and onnxruntime, witnesses that
reproduce the data, refutations, noisy bounds, measurements, activations, sparse weights, limits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from onnxinv.building import random_generator_layers
from onnxinv.errors import InvalidArgumentError, ObservationError
from onnxinv.inversion import SolverStatus, invert, milp
from onnxinv.layers import Activation, Generator, Layer

F64 = float(np.finfo(np.float64).eps)


def _net(sizes, seed=0, **kwargs) -> list[Layer]:
    return random_generator_layers(sizes, rng=seed, **kwargs)


def _latent(k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(size=k)


def _onnx(layers) -> Generator:
    return Generator.from_layers(layers, dtype="float64")


def _assert_reproduces(spec: milp.PreimageSpec, layers, z: np.ndarray) -> None:
    """The latent fits the band in float64 through the layer list, and onnxruntime agrees."""
    assert spec.misfit(z) <= 1.0
    out = _onnx(layers).run_onnx(z)
    if spec.measure is not None:
        out = np.asarray(spec.measure @ out)
    err = np.abs(out[spec.rows] - spec.observed)
    assert np.all(err <= spec.slack * (1.0 + 1e-6) + 1e-12)


# -- find ---------------------------------------------------------------------------------------------


def test_find_where_layer_wise_fails() -> None:
    # hidden layers with fewer active units than their inputs: the layer-wise exact method picks hidden
    # values no latent produces; the MILP (no heuristics: relaxation, repair, branch and bound) finds one
    layers = _net([4, 12, 12, 6])
    z_star = np.random.default_rng(0).normal(size=4)
    x = _onnx(layers).forward(z_star)
    layerwise = invert(_onnx(layers), x, method="exact")
    assert not layerwise.reproduces
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    engine = milp.build(spec, time_limit=10, heuristics=False)
    found = engine.find(time_limit=30)
    assert found.finding is milp.Finding.FOUND and found.status is SolverStatus.OPTIMAL
    assert found.proved_by.startswith("MILP")
    _assert_reproduces(spec, layers, found.z)


def test_find_by_piece_walk_and_float32_data() -> None:
    # the 3-32-32-3 shape of the benchmark, on float32 data from onnxruntime (default tolerance)
    layers = _net([3, 32, 32, 3], seed=1)
    z_star = _latent(3, 1)
    x = Generator.from_layers(layers, dtype="float32").run_onnx(z_star)
    spec = milp.PreimageSpec.create(layers, x)
    found = milp.find(spec, time_limit=20)
    assert found.finding is milp.Finding.FOUND
    _assert_reproduces(spec, layers, found.z)


def test_start_point_is_rechecked_not_trusted() -> None:
    layers = _net([3, 10, 20])
    z_star = _latent(3)
    x = _onnx(layers).forward(z_star)
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    engine = milp.build(spec)
    assert engine.find(start=z_star).proved_by == "start point"
    wrong = engine.find(start=z_star + 0.3)
    assert wrong.finding is milp.Finding.FOUND and wrong.proved_by != "start point"
    _assert_reproduces(spec, layers, wrong.z)


# -- certify ------------------------------------------------------------------------------------------


def test_certify_unique_on_an_injective_net() -> None:
    layers = _net([5, 30, 60], seed=2)
    z_star = _latent(5, 2)
    x = _onnx(layers).forward(z_star)
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    engine = milp.build(spec)
    found = engine.find()
    result = engine.certify(found.z, 1e-3)
    assert result.finding is milp.Finding.UNIQUE and result.status is SolverStatus.OPTIMAL
    assert result.certified.all() and result.witness is None
    assert np.max(np.abs(found.z - z_star)) <= 1e-3
    # the observation itself bounds the latent here: the claim holds for every latent
    assert result.box.implied and result.global_claim


def _duplicated_direction_net() -> list[Layer]:
    """3 -> 8 -> 12 ReLU whose first weight has rank 2 (its third column is the sum of the first two):
    z and z + t (1, 1, -1) give the same output for every t."""
    rng = np.random.default_rng(5)
    w0 = rng.normal(size=(8, 2)) / np.sqrt(8)
    w0 = np.hstack([w0, w0[:, :1] + w0[:, 1:]])
    w1 = rng.normal(size=(12, 8)) / np.sqrt(12)
    return [
        Layer(w0, rng.normal(size=8) * 0.1, Activation.RELU),
        Layer(w1, np.zeros(12), Activation.RELU),
    ]


def test_certify_finds_a_witness_on_a_non_injective_net() -> None:
    layers = _duplicated_direction_net()
    z_star = np.array([0.4, -0.2, 0.3])
    x = _onnx(layers).forward(z_star)
    assert np.allclose(_onnx(layers).forward(z_star + 0.7 * np.array([1.0, 1.0, -1.0])), x)
    spec = milp.PreimageSpec.create(layers, x, precision=F64, radius=3.0)
    engine = milp.build(spec)
    delta = 0.05
    result = engine.certify(z_star, delta)
    assert result.finding is milp.Finding.NOT_UNIQUE and result.witness is not None
    assert result.witness_distance >= delta
    assert np.max(np.abs(result.witness - z_star)) >= delta
    _assert_reproduces(spec, layers, result.witness)
    # onnxruntime sees the same output for both latents, within the band on either side
    both = _onnx(layers).run_onnx(np.stack([z_star, result.witness]))
    np.testing.assert_allclose(both[0], both[1], atol=2.0 * float(np.max(spec.slack)))


def test_certify_rejects_a_z_hat_that_does_not_fit() -> None:
    layers = _net([3, 10, 20])
    x = _onnx(layers).forward(_latent(3))
    engine = milp.build(milp.PreimageSpec.create(layers, x, precision=F64))
    with pytest.raises(InvalidArgumentError, match="does not reproduce"):
        engine.certify(_latent(3) + 1.0, 1e-3)
    with pytest.raises(InvalidArgumentError, match="delta"):
        engine.certify(_latent(3), 0.0)


# -- refute -------------------------------------------------------------------------------------------


def test_refute_a_value_outside_the_output_range() -> None:
    layers = _net([3, 10, 20])
    x = _onnx(layers).forward(_latent(3))
    x[4] = -0.5  # a ReLU output is never negative
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    result = milp.find(spec)
    assert result.finding is milp.Finding.NO_PREIMAGE and result.status is SolverStatus.INFEASIBLE
    assert result.proved_by == "observation" and result.global_claim
    assert "observed entry 4" in result.message


def test_refute_an_observation_off_the_range() -> None:
    # 3 latents, 12 identity outputs: moving one active entry leaves the 3-dimensional range
    layers = _net([3, 10, 12], seed=3, output_activation=Activation.IDENTITY)
    x = _onnx(layers).forward(_latent(3, 3))
    x[0] += 0.2
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    engine = milp.build(spec)
    result = engine.find()
    assert result.finding is milp.Finding.NO_PREIMAGE and result.status is SolverStatus.INFEASIBLE
    assert result.z is None
    # every later use agrees
    assert engine.bound().finding is milp.Finding.NO_PREIMAGE


# -- bound --------------------------------------------------------------------------------------------


def test_bound_contains_z_star_and_shrinks_with_the_noise() -> None:
    layers = _net([3, 12, 24], seed=4, activation=Activation.LEAKY_RELU, slope=0.2)
    z_star = _latent(3, 4)
    clean = _onnx(layers).forward(z_star)
    scale = float(np.max(np.abs(clean)))
    widths = []
    for level in (1e-2, 1e-3):
        eps = level * scale
        noisy = clean + np.random.default_rng(9).uniform(-eps, eps, size=clean.shape)
        spec = milp.PreimageSpec.create(layers, noisy, noise=eps, precision=F64)
        engine = milp.build(spec)
        found = engine.find()
        result = engine.bound(start=found.z)
        assert result.finding is milp.Finding.BOUNDED
        assert np.all(result.lower <= z_star) and np.all(z_star <= result.upper)
        assert not result.at_box.any()
        # reached values are real latents of the set, inside the proved bounds
        assert np.all(result.lower <= result.lower_reached + 1e-12)
        assert np.all(result.upper_reached <= result.upper + 1e-12)
        assert result.radius(found.z) >= np.max(np.abs(found.z - z_star)) - 1e-12
        widths.append(float(np.max(result.upper - result.lower)))
    assert widths[1] < widths[0]


# -- measurements, activations, storage ---------------------------------------------------------------


def test_measurement_matrix_recovery() -> None:
    layers = _net([3, 12, 16], seed=6)
    z_star = _latent(3, 6)
    a = np.random.default_rng(6).normal(size=(9, 16))  # fewer measurements than outputs
    y = a @ _onnx(layers).forward(z_star)
    spec = milp.PreimageSpec.create(layers, y, measure=a, precision=F64)
    engine = milp.build(spec)
    found = engine.find(time_limit=20)
    assert found.finding is milp.Finding.FOUND
    _assert_reproduces(spec, layers, found.z)
    np.testing.assert_allclose(spec.predict(found.z), y, atol=float(np.max(spec.slack)) * 1.01)


def test_masked_observation() -> None:
    layers = _net([3, 12, 24], seed=10)
    z_star = _latent(3, 10)
    x = _onnx(layers).forward(z_star)
    mask = np.zeros(24, dtype=bool)
    mask[::2] = True
    x[~mask] = np.nan  # unobserved entries are never read
    spec = milp.PreimageSpec.create(layers, x, mask=mask, precision=F64)
    assert spec.rows.tolist() == list(range(0, 24, 2))
    found = milp.find(spec)
    assert found.finding is milp.Finding.FOUND
    _assert_reproduces(spec, layers, found.z)


def test_measurement_matrix_shape_is_checked() -> None:
    layers = _net([3, 12, 16])
    with pytest.raises(ObservationError, match=r"must have shape \(m, 16\)"):
        milp.PreimageSpec.create(layers, np.zeros(9), measure=np.zeros((9, 15)))
    with pytest.raises(ObservationError, match="9 rows"):
        milp.PreimageSpec.create(layers, np.zeros(8), measure=np.zeros((9, 16)))


def test_leaky_relu_with_per_unit_slopes() -> None:
    rng = np.random.default_rng(7)
    base = _net([4, 16, 30], seed=7)
    slopes = rng.uniform(0.05, 0.5, size=16)
    layers = [Layer(base[0].weight, base[0].bias, Activation.LEAKY_RELU, slopes), base[1]]
    assert layers[0].per_unit_slope
    z_star = _latent(4, 7)
    x = _onnx(layers).forward(z_star)
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    engine = milp.build(spec)
    found = engine.find()
    _assert_reproduces(spec, layers, found.z)
    result = engine.certify(found.z, 1e-3)
    assert result.finding is milp.Finding.UNIQUE
    assert np.max(np.abs(found.z - z_star)) <= 1e-3


@pytest.mark.parametrize("activation", [Activation.SIGMOID, Activation.TANH])
def test_tanh_sigmoid_output_with_saturated_rows(activation: Activation) -> None:
    layers = _net([3, 12, 20], seed=8, output_activation=activation)
    last = layers[-1]
    bias = last.bias.copy()
    bias[:3] += 40.0  # saturated: the float32 output is exactly 1
    layers[-1] = Layer(last.weight, bias, activation)
    z_star = _latent(3, 8)
    x = Generator.from_layers(layers, dtype="float32").run_onnx(z_star)
    assert np.all(x[:3] == 1.0)
    spec = milp.PreimageSpec.create(layers, x)
    engine = milp.build(spec)
    found = engine.find()
    assert found.finding is milp.Finding.FOUND
    _assert_reproduces(spec, layers, found.z)
    assert engine.certify(found.z, 1e-2).finding is milp.Finding.UNIQUE


def test_sparse_weights_give_the_same_answers() -> None:
    dense = _net([4, 14, 28], seed=9)
    sparse = [Layer(sp.csr_array(lay.weight), lay.bias, lay.activation, lay.slope) for lay in dense]
    assert sparse[0].sparse
    z_star = _latent(4, 9)
    x = _onnx(dense).forward(z_star)
    answers = []
    for layers in (dense, sparse):
        spec = milp.PreimageSpec.create(layers, x, precision=F64)
        engine = milp.build(spec)
        found = engine.find()
        cert = engine.certify(found.z, 1e-3)
        answers.append((found.finding, cert.finding, found.z, engine.tightening.binaries))
    assert answers[0][:2] == answers[1][:2] == (milp.Finding.FOUND, milp.Finding.UNIQUE)
    assert answers[0][3] == answers[1][3]
    np.testing.assert_allclose(answers[0][2], answers[1][2], atol=1e-6)


def test_hidden_tanh_does_not_apply() -> None:
    layers = _net([3, 8, 10], activation=Activation.TANH)
    with pytest.raises(milp.MilpNotApplicable, match="hidden layer 0 has a tanh activation"):
        milp.PreimageSpec.create(layers, np.zeros(10))
    out_tanh = _net([3, 8, 10], output_activation=Activation.TANH)
    assert milp.applicability(out_tanh) is None
    assert "measurement" in milp.applicability(out_tanh, measure=np.eye(10))


# -- limits -------------------------------------------------------------------------------------------


def test_a_time_limit_that_is_hit_decides_nothing() -> None:
    layers = _net([3, 32, 32, 3], seed=1)
    x = _onnx(layers).forward(_latent(3, 1))
    spec = milp.PreimageSpec.create(layers, x, precision=F64)
    engine = milp.build(spec, heuristics=False)
    found = engine.find(time_limit=0.0)
    assert found.finding is milp.Finding.UNDECIDED and found.status is SolverStatus.TIME_LIMIT
    assert found.z is None and "nothing is claimed" in found.message
    z = _latent(3, 1)
    cert = engine.certify(z, 1e-3, time_limit=0.0)
    assert cert.finding is milp.Finding.UNDECIDED and cert.status is SolverStatus.TIME_LIMIT
    assert cert.witness is None
    # only directions the box itself settles count as certified; the rest say why not
    assert set(cert.how[~cert.certified].tolist()) == {"time limit"}
    assert len(cert.undecided) == int((~cert.certified).sum())


def test_tightening_reports_fixed_units_and_the_box() -> None:
    layers = _net([5, 30, 60], seed=2)
    x = _onnx(layers).forward(_latent(5, 2))
    t = milp.tighten(milp.PreimageSpec.create(layers, x, precision=F64))
    assert t.status is SolverStatus.OPTIMAL
    assert t.fixed_active + t.fixed_inactive + t.binaries + t.relaxed == 30
    assert t.binaries == 0  # the observation fixes every hidden unit's sign
    assert t.box.implied and np.all(t.box.upper - t.box.lower < 1e-2)
    assert np.all(np.isfinite(t.implied_lower)) and np.all(np.isfinite(t.implied_upper))
