"""The audit's layer statistics where answers are shared: stacked thresholds, one Gram matrix per
distinct set of active rows factored in place, one Gram for a layer without ReLU, and ``rank(W)``
read off a sample whose active rows have full column rank instead of from the singular values of
``W``. Each is checked against the per-sample recomputation (a Gram copy and its Cholesky test, the
singular values of ``W_I`` and of ``W``, the coherence from the columns themselves) on models saved
and loaded as ONNX files, the way exporters write them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxinv
from onnxinv.audit import ACTIVE_TAU, audit
from onnxinv.building import build_model, random_generator_layers
from onnxinv.inversion.identifiability import mutual_coherence
from onnxinv.inversion.linear import gram_full_rank, numerical_rank
from onnxinv.layers import Activation, Layer

AUDIT = sys.modules["onnxinv.audit"]  # the module (onnxinv.audit is also the function's name)


def _tau(h: np.ndarray) -> float:
    return ACTIVE_TAU * max(float(np.abs(h).max()), np.finfo(float).tiny)


def _relu(layer: Layer) -> bool:
    return layer.activation is Activation.RELU or (
        layer.activation is Activation.LEAKY_RELU and bool(np.all(layer.slopes() == 0.0))
    )


def reference(layer: Layer, h_in: np.ndarray, h_out: np.ndarray) -> dict:
    """Every sample's statistics recomputed on their own: the rank test on a copy of the Gram matrix
    of the active rows (singular values of the rows where it does not show full rank), the coherence
    from the normalised columns, and rank(W) from the singular values of W."""
    weight = layer.dense_weight()
    n_in = layer.in_features
    relu = _relu(layer)
    rank = numerical_rank(weight)
    counts, identifiable, growth, coherent, mus = [], [], [], [], []
    for h_prev, h in zip(h_in, h_out):
        active = h > _tau(h) if relu else np.ones(h.shape[0], dtype=bool)
        count = int(active.sum())
        w_active = weight[active]
        if relu:
            gram = w_active.T @ w_active
            ok = count >= n_in and (gram_full_rank(gram) or numerical_rank(w_active) == n_in)
        else:
            ok = rank == n_in
        mu = mutual_coherence(w_active) if count else 1.0
        nnz_prev = int(np.count_nonzero(np.abs(h_prev) > _tau(h_prev)))
        counts.append(count)
        identifiable.append(ok)
        growth.append(int(np.count_nonzero(np.abs(h) > _tau(h))) >= 2 * nnz_prev)
        mus.append(mu)
        coherent.append(mu > 0 and nnz_prev < (1.0 + 1.0 / mu) / 2.0)
    return {
        "rank": rank,
        "active_min": min(counts),
        "active_median": float(np.median(counts)),
        "identifiable_share": float(np.mean(identifiable)),
        "growth_share": float(np.mean(growth)),
        "coherence_share": float(np.mean(coherent)),
        "coherence_median": float(np.median(mus)),
    }


def assert_same(found, expected: dict) -> None:
    for name, value in expected.items():
        if name == "coherence_median":  # two routes to the same cosines: equal up to round-off
            assert getattr(found, name) == pytest.approx(value, rel=1e-9, abs=1e-12), name
        else:
            assert getattr(found, name) == value, name


def exported(tmp_path: Path, name: str, layers: list[Layer]) -> onnxinv.Generator:
    path = tmp_path / name
    onnx.save(build_model(layers), path)
    return onnxinv.load(path)


def low_rank_layer(rng: np.random.Generator, n_out: int, n_in: int, rank: int, act: Activation) -> Layer:
    # repeated columns: the rank survives the float32 rounding of the saved model (a product of
    # random factors would not: its rounding error is far above the rank threshold)
    weight = rng.normal(size=(n_out, rank))[:, np.arange(n_in) % rank] / np.sqrt(n_out)
    return Layer(weight, np.zeros(n_out), act, 0.0, (f"lowrank{n_in}",))


def _models(tmp_path: Path) -> dict[str, onnxinv.Generator]:
    rng = np.random.default_rng(7)
    return {
        "expanding 20-100-500 with biases": exported(
            tmp_path, "expanding.onnx", random_generator_layers([20, 100, 500], bias_scale=0.5, rng=1)
        ),
        # hidden layers that do not expand (equal sizes, then a contraction) before the output layer
        "non-expanding 30-30-30-24-80": exported(
            tmp_path, "flat.onnx", random_generator_layers([30, 30, 30, 24, 80], rng=2)
        ),
        "classifier 64-32-10 (logits)": exported(
            tmp_path,
            "classifier.onnx",
            random_generator_layers([64, 32, 10], output_activation=Activation.IDENTITY, rng=3),
        ),
        "leaky 8-40-120": exported(
            tmp_path,
            "leaky.onnx",
            random_generator_layers([8, 40, 120], activation=Activation.LEAKY_RELU, rng=4),
        ),
        "rank-deficient ReLU and identity": exported(
            tmp_path,
            "lowrank.onnx",
            [
                *random_generator_layers([6, 30], rng=5),
                low_rank_layer(rng, 90, 30, 25, Activation.RELU),
                low_rank_layer(rng, 120, 90, 60, Activation.IDENTITY),
            ],
        ),
    }


def test_layer_statistics_equal_the_per_sample_recomputation(tmp_path):
    for label, generator in _models(tmp_path).items():
        z = np.random.default_rng(11).standard_normal((12, generator.latent_dim))
        z = np.concatenate([z, z[:3]])  # repeated samples share one Gram matrix: same answers
        hidden = generator.hidden_values(z)
        for i, layer in enumerate(generator.layers):
            found = AUDIT._layer_audit(i, layer, hidden[i], hidden[i + 1])
            try:
                assert_same(found, reference(layer, hidden[i], hidden[i + 1]))
            except AssertionError as exc:
                raise AssertionError(f"{label}, layer {i}: {exc}") from exc


def test_report_layers_equal_the_recomputation_at_the_audited_latents(tmp_path):
    generator = _models(tmp_path)["non-expanding 30-30-30-24-80"]
    report = audit(generator, samples=6, seed=3, milp_time=1.0)
    z = np.random.default_rng(3).standard_normal((6, generator.latent_dim))  # the audit's latents
    hidden = generator.hidden_values(z)
    assert len(report.layers) == len(generator.layers)
    for i, (found, layer) in enumerate(zip(report.layers, generator.layers)):
        assert_same(found, reference(layer, hidden[i], hidden[i + 1]))
    # a ReLU layer of equal sizes has about half its rows active: never identifiable at a sample
    assert [la.identifiable_share for la in report.layers] == [0.0, 0.0, 0.0, 1.0]
    assert [la.rank for la in report.layers] == [30, 30, 24, 24]
    assert [f.layer for f in report.findings_with("relu-contracting")] == [2]


def test_rank_of_w_from_a_sample_equals_its_singular_values(tmp_path):
    """Where some W_I has full column rank the audit skips the singular values of W: the rank it
    reports is theirs; where none has, they are computed and a deficient rank is reported."""
    generator = _models(tmp_path)["rank-deficient ReLU and identity"]
    report = audit(generator, samples=5, seed=0, milp_time=1.0)
    for la, layer in zip(report.layers, generator.layers):
        assert la.rank == numerical_rank(layer.dense_weight())
    assert [la.rank for la in report.layers] == [6, 25, 60]
    assert report.layers[0].identifiable_share == 1.0
    assert report.layers[1].identifiable_share == 0.0 and report.layers[2].identifiable_share == 0.0
    deficient = {f.layer: f for f in report.findings_with("rank-deficient")}
    assert set(deficient) == {1, 2}
    assert "rank(W) = 25 < 30" in deficient[1].message and "never identifiable" in deficient[1].message
    # the identity layer's finding keeps its preimage dimension
    assert "preimage of dimension 30" in deficient[2].message
    assert report.failing_layer == 1 and not report.invertible


def test_a_layer_not_identifiable_at_the_samples_keeps_its_finding_and_preimage_dimension(tmp_path):
    """A hidden ReLU layer 20 -> 30 of full rank whose negative bias leaves fewer active rows than
    inputs: the audit finds it not identifiable at every sample (the same statistics as the
    recomputation) and says so, and the inversions' own steps there carry the layer LP's preimage
    dimension (the whole network may still be certified: the latent has only 4 entries)."""
    rng = np.random.default_rng(3)
    layers = [
        Layer(rng.normal(size=(20, 4)), np.full(20, 0.5), Activation.RELU, 0.0, ("d0",)),
        Layer(rng.normal(size=(30, 20)) / 5, np.full(30, -0.4), Activation.RELU, 0.0, ("d1",)),
        Layer(rng.normal(size=(200, 30)) / 8, np.zeros(200), Activation.RELU, 0.0, ("d2",)),
    ]
    generator = exported(tmp_path, "narrow.onnx", layers)
    report = audit(generator, samples=3, seed=0, milp_time=1.0)
    z = np.random.default_rng(0).standard_normal((3, 4))
    hidden = generator.hidden_values(z)
    for i, (found, layer) in enumerate(zip(report.layers, generator.layers)):
        assert_same(found, reference(layer, hidden[i], hidden[i + 1]))
    assert report.layers[1].rank == 20 and report.layers[1].active_median < 20
    assert [la.identifiable_share for la in report.layers] == [1.0, 0.0, 1.0]
    (blamed,) = report.findings_with("not-identifiable")
    assert blamed.layer == 1 and "Not identifiable at any of the 3" in blamed.message
    results = AUDIT._invert_all(onnxinv.invert, generator, generator.run_onnx(z), "exact")
    steps = [r.steps[1] for r in results]
    assert all(s.rank == s.active_rows < 20 for s in steps)
    # the layer LP's preimage dimension: positive, unless tight inequalities pin the point (said so)
    assert all(s.preimage_dim > 0 or "implicit equalities" in s.certificate for s in steps)
    assert any(s.preimage_dim > 0 for s in steps)


def _logged_inversions(generator: onnxinv.Generator, z: np.ndarray) -> dict:
    from onnxinv.inversion import Settings

    grams: dict = {}
    AUDIT._invert_local(generator, generator.run_onnx(z), "exact", Settings(milp_time=1.0), None, grams)
    return grams


def test_gram_log_holds_the_coherence_of_the_accepted_active_rows(tmp_path):
    """The fast path's log (fastexact.GramLog, as the audit asks for it): for each sample and layer
    whose active system the Cholesky route accepted, the rows and exactly the coherence of their Gram
    matrix; a sample probed alone and the rest in one chunk are keyed by their own index."""
    generator = _models(tmp_path)["expanding 20-100-500 with biases"]
    z = np.random.default_rng(5).standard_normal((7, generator.latent_dim))
    grams = _logged_inversions(generator, z)
    assert sorted(grams) == [(k, i) for k in range(7) for i in range(2)]
    results = AUDIT._invert_all(onnxinv.invert, generator, generator.run_onnx(z), "exact")
    for (k, i), (packed, mu) in grams.items():
        layer = generator.layers[i]
        rows = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=layer.out_features).astype(bool)
        w_active = layer.dense_weight()[rows]
        assert rows.sum() == results[k].steps[i].active_rows
        assert mu == AUDIT._coherence_from_gram(w_active.T @ w_active)
        assert mu == pytest.approx(mutual_coherence(w_active), rel=1e-9)


def test_layer_statistics_from_the_gram_log_equal_their_recomputation(tmp_path):
    """Where the inversions logged the active rows' coherence the layer statistics take it from there:
    the same numbers, bit for bit, as computing them again, on every ReLU network of the set (layers
    the inversion did not accept, or whose active rows differ, are computed as before)."""
    hits = 0
    for label, generator in _models(tmp_path).items():
        z = np.random.default_rng(13).standard_normal((9, generator.latent_dim))
        grams = _logged_inversions(generator, z)
        kept = AUDIT._grams_by_layer(grams, list(range(9)), len(generator.layers))
        hidden = generator.hidden_values(z)
        for i, layer in enumerate(generator.layers):
            again = AUDIT._layer_audit(i, layer, hidden[i], hidden[i + 1])
            reused = AUDIT._layer_audit(i, layer, hidden[i], hidden[i + 1], kept[i])
            assert reused == again, f"{label}, layer {i}"
            hits += len(kept[i])
    assert hits >= 2 * 9  # the expanding network's two layers at least


def test_coherence_from_the_row_maxima_equals_scaling_every_entry():
    """_coherence_from_gram scales the row maxima instead of every entry (rounding is monotone):
    the same number as the entry-wise formula, bit for bit."""

    def entrywise(gram: np.ndarray) -> float:
        inverse = 1.0 / np.sqrt(gram.diagonal())
        cos = np.abs(gram) * inverse
        cos *= inverse[:, None]
        np.fill_diagonal(cos, 0.0)
        return float(cos.max())

    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(2, 40))
        a = rng.normal(size=(int(rng.integers(1, 3 * n)), n)) * rng.uniform(1e-3, 1e3, size=n)
        gram = a.T @ a
        assert AUDIT._coherence_from_gram(gram) == entrywise(gram)
        assert AUDIT._coherence_from_gram(np.asfortranarray(gram)) == entrywise(gram)
