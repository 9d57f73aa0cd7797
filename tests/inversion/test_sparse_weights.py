"""Inversion of generators with scipy.sparse (convolutional) layers.

Regimes: an expanding ConvTranspose + ReLU generator (layer-wise exact recovers z* and proves it
unique), a generator whose last Conv contracts (layer-wise inversion cannot recover that layer's
input: an honest verdict from the whole network), and the sparse routes of the shared linear algebra
(sparse Gram + Cholesky, LSMR, ranks, preimage dimensions) against their dense counterparts. Models
are built node by node as exporters write them; forward passes are checked by onnxruntime, and every
inversion against a known z* and the verdict contract.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from builders import assert_matches_onnxruntime, save
from contract import assert_contract
from conv_builders import K, contracting_model, expanding_model
from scipy.sparse.linalg import lsqr

import onnxinv
from onnxinv.inversion import EvidenceKind, Verdict, linear, milp
from onnxinv.inversion.framework import Settings
from onnxinv.inversion.identifiability import active_rank, mutual_coherence, preimage_dimension
from onnxinv.inversion.targets import build_targets
from onnxinv.layers import Activation, Layer


@pytest.fixture(scope="module")
def expanding(tmp_path_factory):
    return onnxinv.load(save(expanding_model(), tmp_path_factory.mktemp("expanding")))


@pytest.fixture(scope="module")
def contracting(tmp_path_factory):
    return onnxinv.load(save(contracting_model(), tmp_path_factory.mktemp("contracting")))


def test_expanding_conv_transpose_generator_is_inverted_exactly_and_proved_unique(expanding):
    assert_matches_onnxruntime(expanding)
    assert [la.sparse for la in expanding.layers] == [False, True, True]
    assert [(la.in_features, la.out_features) for la in expanding.layers] == [
        (4, 128),
        (128, 512),
        (512, 512),
    ]
    z_true = np.random.default_rng(3).standard_normal(K)
    x = expanding.run_onnx(z_true)
    result = onnxinv.invert(expanding, x, method="exact")
    assert_contract(expanding, x, result, in_range=True, known=[z_true])
    assert result.verdict is Verdict.UNIQUE, result.message
    assert result.evidence.kind is EvidenceKind.LAYERWISE
    assert all(step.identifiable for step in result.steps)
    np.testing.assert_allclose(result.z, z_true, atol=1e-4)


def test_expanding_conv_generator_through_auto_and_the_cli_json(expanding, tmp_path):
    import json
    import subprocess
    import sys

    z_true = np.random.default_rng(4).standard_normal(K)
    x = expanding.run_onnx(z_true)
    result = onnxinv.invert(expanding, x)
    assert_contract(expanding, x, result, in_range=True, known=[z_true])
    assert result.verdict is Verdict.UNIQUE
    path = save(expanding_model(), tmp_path)
    obs = tmp_path / "obs.npy"
    np.save(obs, x.reshape(1, 2, 16, 16).astype(np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "onnxinv", "invert", str(path), str(obs), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # the CLI writes obs.z.npy to the working directory
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    text = json.dumps(doc)
    assert "unique" in text and "Traceback" not in done.stderr


def test_contracting_last_conv_gets_an_honest_verdict_from_the_whole_network(contracting):
    assert_matches_onnxruntime(contracting)
    last = contracting.layers[-1]
    assert last.sparse and (last.in_features, last.out_features) == (512, 16)
    z_true = np.random.default_rng(5).standard_normal(K)
    x = contracting.run_onnx(z_true)
    result = onnxinv.invert(contracting, x)
    assert_contract(contracting, x, result, in_range=True, known=[z_true])
    # the last layer alone leaves 512 - 16 directions: no layer-wise proof is possible
    assert result.evidence.kind is not EvidenceKind.LAYERWISE, result.message
    assert result.verdict.success, result.message
    if result.verdict is Verdict.UNIQUE:  # only from the whole-network certificate
        assert result.evidence.kind is EvidenceKind.MILP
        np.testing.assert_allclose(result.z, z_true, atol=1e-3)


def test_contracting_last_layer_exact_method_says_the_layer_is_not_identifiable(contracting):
    z_true = np.random.default_rng(6).standard_normal(K)
    x = contracting.run_onnx(z_true)
    result = onnxinv.invert(contracting, x, method="exact", settings=Settings(milp=False))
    assert_contract(contracting, x, result, in_range=True, known=[z_true])
    last = result.steps[-1]
    assert not last.identifiable and last.preimage_dim > 0
    assert result.verdict is not Verdict.UNIQUE


def test_milp_refuses_a_large_sparse_layer_by_its_size_without_densifying():
    rng = np.random.default_rng(0)
    w = sp.random_array((2048, 1024), density=0.01, random_state=rng, format="csr")
    layers = [
        Layer(rng.standard_normal((1024, 4)), np.zeros(1024), Activation.RELU),
        Layer(w, np.zeros(2048), Activation.RELU),
        Layer(sp.csr_array(sp.eye(16, 2048)), np.zeros(16)),
    ]
    why = milp.applicability(layers)
    assert why is not None and "too large for the MILP" in why and "layer 1" in why


# ----------------------------------------------------------------------------- the linear algebra


def _conv_like(m: int, n: int, seed: int, per_row: int = 6) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(m), per_row)
    cols = rng.integers(0, n, size=m * per_row)
    return sp.csr_array((rng.standard_normal(m * per_row), (rows, cols)), shape=(m, n))


@pytest.mark.parametrize("route", ["gram", "lsmr"])
def test_sparse_least_squares_routes_agree_with_the_dense_solve(monkeypatch, route):
    w = _conv_like(600, 80, seed=1) + sp.csr_array(sp.eye(600, 80))
    w = sp.csr_array(w)
    u_true = np.random.default_rng(2).standard_normal(80)
    select = np.random.default_rng(3).random(600) < 0.7
    t = (w @ u_true)[select]
    weights = np.random.default_rng(4).uniform(0.5, 2.0, int(select.sum()))
    dense = linear.solve_active(w.toarray()[select], t, weights)
    monkeypatch.setattr(linear, "DENSE_COPY_FLOOR", 0)  # force the sparse routes
    if route == "lsmr":
        monkeypatch.setattr(linear, "SPARSE_GRAM_COLUMNS", 1)
        monkeypatch.setattr(linear, "SPARSE_GRAM_FACTOR", 0.0)
    ls = linear.solve_rows(w, select, t, weights)
    np.testing.assert_allclose(ls.u, u_true, atol=1e-8)
    np.testing.assert_allclose(ls.u, dense.u, atol=1e-8)
    if route == "gram":
        assert ls.method == "cholesky" and ls.rank == 80 == dense.rank
    else:
        # LSMR finds the point but claims no full rank: nothing may read uniqueness into it
        assert ls.method == "lsmr" and ls.rank < 80


@pytest.mark.parametrize("missing_column", [False, True])
def test_one_non_zero_per_row_is_solved_exactly_with_its_true_rank(monkeypatch, missing_column):
    """Diagonal scalings, nearest upsampling, selections: orthogonal columns, whose rank and least-squares
    point need no factorisation (a 2x nearest upsampling of 3000 values with random gains here)."""
    n = 3000
    cols = np.repeat(np.arange(n), 2)
    if missing_column:
        cols = np.where(cols == 17, 18, cols)  # column 17 never used: rank n - 1
    gains = np.random.default_rng(0).uniform(0.5, 2.0, cols.size)
    w = sp.csr_array((gains, (np.arange(cols.size), cols)), shape=(cols.size, n))
    u_true = np.random.default_rng(1).standard_normal(n)
    if missing_column:
        u_true[17] = 0.0
    t = w @ u_true + np.random.default_rng(2).normal(scale=1e-3, size=cols.size)
    monkeypatch.setattr(linear, "DENSE_COPY_FLOOR", 0)  # no dense copy: the sparse routes
    ls = linear.solve_rows(w, np.arange(cols.size), t)
    expected = lsqr(w, t, atol=1e-14, btol=1e-14)[0]
    np.testing.assert_allclose(ls.u, expected, atol=1e-8)
    assert ls.method == "orthogonal columns" and ls.rank == n - int(missing_column)
    monkeypatch.setattr(linear, "DENSE_RANK_ENTRIES", 10)  # the large-block rank bound: exact here
    assert linear.numerical_rank(w) == n - int(missing_column)


def test_sparse_gram_route_does_not_claim_full_rank_for_a_rank_deficient_block(monkeypatch):
    w = _conv_like(400, 60, seed=5).toarray()
    w[:, 7] = w[:, 3]  # two equal columns
    ws = sp.csr_array(w)
    monkeypatch.setattr(linear, "DENSE_COPY_FLOOR", 0)
    ls = linear.solve_rows(ws, np.arange(400), ws @ np.ones(60))
    assert ls.rank < 60
    assert linear.numerical_rank(ws) == np.linalg.matrix_rank(w) == 59
    monkeypatch.setattr(linear, "DENSE_RANK_ENTRIES", 10)  # the bound for large blocks
    assert linear.numerical_rank(ws) < 60
    assert active_rank(ws) < 60


def test_sparse_rank_and_coherence_match_the_dense_ones(monkeypatch):
    for seed, (m, n) in enumerate([(50, 30), (30, 50), (200, 40)]):
        a = _conv_like(m, n, seed=seed, per_row=3)
        assert linear.numerical_rank(a) == linear.numerical_rank(a.toarray())
        assert mutual_coherence(a) == pytest.approx(mutual_coherence(a.toarray()), abs=1e-12)
    tall = sp.csr_array(_conv_like(300, 40, seed=9) + sp.eye(300, 40))
    monkeypatch.setattr(linear, "DENSE_RANK_ENTRIES", 10)
    assert linear.numerical_rank(tall) == 40 == np.linalg.matrix_rank(tall.toarray())


def test_preimage_dimension_of_a_sparse_layer_equals_the_dense_one():
    rng = np.random.default_rng(7)
    w = _conv_like(30, 50, seed=7)
    b = rng.standard_normal(30)
    u = np.maximum(rng.standard_normal(50), 0.0)
    bounds = (np.zeros(50), np.full(50, np.inf))
    answers = []
    for weight in (w, w.toarray()):
        layer = Layer(weight, b, Activation.RELU)
        y = layer.forward(u)
        targets = build_targets(layer, y, None, 1e-9, noisy=False)
        answers.append(preimage_dimension(layer, targets, bounds, u, tight_tol=1e-9))
    sparse_dim, dense_dim = answers
    assert sparse_dim.dim == dense_dim.dim and sparse_dim.rank == dense_dim.rank
    assert sparse_dim.implicit == dense_dim.implicit
    assert 0 < sparse_dim.dim < 50


@pytest.mark.parametrize("method", ["linf", "l1", "relaxed", "sparse", "lsq", "gd"])
def test_every_method_takes_sparse_weights(expanding, method):
    z_true = np.random.default_rng(8).standard_normal(K)
    x = expanding.run_onnx(z_true)
    noisy = method in ("linf", "l1", "relaxed")
    noise = 1e-3 if noisy else None
    if noisy:
        x = x + np.random.default_rng(9).uniform(-noise, noise, x.shape)
    result = onnxinv.invert(expanding, x, method=method, noise=noise)
    assert_contract(expanding, x, result, in_range=not noisy)
    assert result.verdict.success, result.message
    assert float(np.max(np.abs(result.z - z_true))) < (0.1 if noisy else 1e-3)
