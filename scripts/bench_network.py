"""Whole-network least squares (``network.fit``) against the gradient-descent baseline (``network.descend``).

Usage::

    python scripts/bench_network.py               # 100 observations per setting
    python scripts/bench_network.py --count 20    # quicker
    python scripts/bench_network.py --sections a,c --seed 3

Model: the shipped digits decoder ``sample_models/digits_vae_legacy.onnx`` (8 -> 40 ReLU -> 64
Sigmoid, 8x8 images), latents ``z* ~ N(0, I)``. Error = relative latent error ``‖z − z*‖ / ‖z*‖``.

Sections
--------
a  Gaussian pixel noise σ ∈ {0.01, 0.05, 0.1}: ``fit`` (maximum likelihood, λ = 0) and ``fit`` MAP
   (λ = σ², the posterior mode for z ~ N(0, I)), each from 5 starts (the zero vector and 4 draws of
   N(0, I)), against ``descend`` (Adam, 5 restarts) given, per observation, the wall time ``fit``
   took on it (``gd@fit``), the same total time for the whole batch at once (``gd batch``: GD's own
   advantage, vectorised), and 1000 iterations without a time limit (``gd 1000``, the usual setting).
   ``err/pred`` is the median of ``‖z − z*‖ / √trace(Cov)`` with ``Cov`` from ``error_estimate``
   (σ given): about 1 when the estimate is calibrated.
b  The same with 50% of the pixels observed (a random mask per observation), σ ∈ {0, 0.01, 0.05, 0.1}.
c  Compressed sensing (CSGM, Bora et al. 2017): ``y = A G(z*)``, ``A`` Gaussian with m = 10..60
   rows, ``A_ij ~ N(0, 1/m)``, clean; ``fit`` from 5 starts, and from up to 20 stopping at the first
   that fits (``target=1e-10``); GD gets the second one's time. Recovery = relative latent error ≤ 1e-3 (and ≤ 1e-2): on clean
   data a method that found the basin of ``z*`` converges far below 1e-3 (fit reaches ~1e-15), one
   stuck in another local minimum is off by O(0.1–1); 1e-3 is the threshold the project's other
   recovery benchmarks use (README, Fig. 2), 1e-2 shows how many GD runs were close but unconverged.
d  least_squares method and Jacobian form on section a's σ = 0.05 and section c's m = 20: trf
   (exact), trf (LinearOperator + lsmr), lm (MINPACK); CPU time (``time.process_time``), which other
   processes on the machine disturb less than wall time.
e  Jacobian form on larger generators built in code (dense and sparse CSR weights): dense (lm, trf)
   against the LinearOperator (trf + lsmr), and what ``kind="auto"`` picks.
f  ``descend`` on clean random k-250-600 ReLU nets (k = 70, 90, 110): how many observations reach the
   relative-residual tolerance in 1000 Adam iterations, with and without the final ``fit`` polish.

Times are medians per observation on one core (BLAS limited to one thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.sparse.linalg import LinearOperator  # noqa: E402

import onnxinv  # noqa: E402
from onnxinv.inversion.network import descend, error_estimate, fit, forward, jacobian  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "sample_models" / "digits_vae_legacy.onnx"
STARTS = 5
CS_STARTS = 20
RESTARTS = 5


def _starts(k: int, seed: int, index: int, count: int = STARTS) -> np.ndarray:
    rng = np.random.default_rng([seed, 7, index])
    return np.vstack([np.zeros(k), rng.standard_normal((count - 1, k))])


def _err(z: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    return np.linalg.norm(z - z_true, axis=-1) / np.linalg.norm(z_true, axis=-1)


@dataclass
class Outcome:
    z: np.ndarray  # (N, k)
    seconds: np.ndarray  # (N,) wall time per observation (a batch: its time / N, repeated)
    cost: np.ndarray  # (N,) the objective reached
    extra: np.ndarray  # fit: err/pred per observation; gd: iterations per observation


class Runner:
    def __init__(self, layers, z_true: np.ndarray, seed: int) -> None:
        self.layers = layers
        self.z_true = z_true
        self.seed = seed
        self.k = z_true.shape[1]

    def fit_all(self, y, *, masks=None, measure=None, prior=0.0, sigma=None, starts=STARTS, **kw) -> Outcome:
        z, secs, cost, ratio = [], [], [], []
        for i in range(y.shape[0]):
            mask = None if masks is None else masks[i]
            t0 = time.perf_counter()
            f = fit(
                self.layers,
                y[i],
                starts=_starts(self.k, self.seed, i, starts),
                mask=mask,
                measure=measure,
                prior=prior,
                **kw,
            )
            secs.append(time.perf_counter() - t0)
            z.append(f.z)
            cost.append(f.cost)
            pred = np.nan
            if sigma:
                est = error_estimate(f, sigma)
                if est.covariance is not None:
                    pred = float(np.sqrt(np.trace(est.covariance)))
            ratio.append(float(np.linalg.norm(f.z - self.z_true[i])) / pred)
        return Outcome(np.array(z), np.array(secs), np.array(cost), np.array(ratio))

    def gd_each(self, y, budgets, *, masks=None, measure=None, prior=0.0) -> Outcome:
        """descend per observation with its own wall budget."""
        z, secs, cost, its = [], [], [], []
        for i in range(y.shape[0]):
            mask = None if masks is None else masks[i : i + 1]
            t0 = time.perf_counter()
            zi, loss, info = descend(
                self.layers,
                y[i : i + 1],
                masks=mask,
                measure=measure,
                prior=prior,
                restarts=RESTARTS,
                iterations=10**7,
                seed=self.seed,
                indices=np.array([i]),
                deadline=t0 + budgets[i],
            )
            secs.append(time.perf_counter() - t0)
            z.append(zi[0])
            cost.append(loss[0])
            its.append(int(info.iterations[0]))
        return Outcome(np.array(z), np.array(secs), np.array(cost), np.array(its))

    def gd_batch(self, y, budget, *, masks=None, measure=None, prior=0.0, iterations=10**7) -> Outcome:
        t0 = time.perf_counter()
        z, loss, info = descend(
            self.layers,
            y,
            masks=masks,
            measure=measure,
            prior=prior,
            restarts=RESTARTS,
            iterations=iterations,
            seed=self.seed,
            deadline=None if budget is None else t0 + budget,
        )
        per = (time.perf_counter() - t0) / y.shape[0]
        return Outcome(z, np.full(y.shape[0], per), loss, info.iterations)


def _row(label: str, cols: list[str], widths: list[int]) -> str:
    return f"{label:<10s}" + "".join(f"{c:>{w}s}" for c, w in zip(cols, widths))


def _not_worse(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of observations where cost ``a`` is at most cost ``b`` (1e-9 relative slack)."""
    return float(np.mean(a <= b * (1 + 1e-9) + 1e-300))


def section_noise(run: Runner, x: np.ndarray, sigmas, rng, *, masked: bool) -> None:
    title = "50% pixel masks" if masked else "Gaussian pixel noise"
    label = "b" if masked else "a"
    print(f"\n({label}) {title}: median relative latent error")
    heads = ["fit", "fit MAP", "gd@fit", "gd@MAP", "gd batch", "gd 1000", "err/pred"]
    widths = [10, 10, 10, 10, 10, 10, 10]
    heads2 = [
        "fit",
        "fit MAP",
        "gd@fit its",
        "gd batch",
        "gd 1000",
        "gd@fit/fit",
        "batch/fit",
        "<=gd@fit",
        "<=batch",
    ]
    widths2 = [10, 10, 12, 10, 10, 12, 11, 10, 9]
    rows1, rows2 = [], []
    for sigma in sigmas:
        y = x + sigma * rng.standard_normal(x.shape)
        masks = rng.random(x.shape) < 0.5 if masked else None
        ml = run.fit_all(y, masks=masks, sigma=sigma)
        map_ = run.fit_all(y, masks=masks, prior=sigma**2)
        gd = run.gd_each(y, ml.seconds, masks=masks)
        gdm = run.gd_each(y, map_.seconds, masks=masks, prior=sigma**2)
        gb = run.gd_batch(y, float(np.sum(ml.seconds)), masks=masks)
        g1 = run.gd_batch(y, None, masks=masks, iterations=1000)
        errs = [_err(o.z, run.z_true) for o in (ml, map_, gd, gdm, gb, g1)]
        cols = [f"{np.median(e):.3g}" for e in errs]
        cols.append(f"{np.nanmedian(ml.extra):.2f}" if sigma else "-")
        rows1.append(_row(f"{sigma:g}", cols, widths))
        ms = [f"{1e3 * np.median(o.seconds):.1f}" for o in (ml, map_)]
        ms.append(f"{1e3 * np.median(gd.seconds):.1f} ({np.median(gd.extra):.0f})")
        ms += [f"{1e3 * np.median(o.seconds):.1f}" for o in (gb, g1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ms.append(f"{np.median(errs[2] / errs[0]):.3g}")
            ms.append(f"{np.median(errs[4] / errs[0]):.3g}")
        ms += [f"{_not_worse(ml.cost, gd.cost):.2f}", f"{_not_worse(ml.cost, gb.cost):.2f}"]
        rows2.append(_row(f"{sigma:g}", ms, widths2))
    print(_row("sigma", heads, widths))
    print("\n".join(rows1))
    print(f"({label}) milliseconds per observation (gd@fit: median Adam iterations it got), paired ratios")
    print("    (median over observations of gd error / fit error), fraction of observations where fit's")
    print("    cost is at most GD's")
    print(_row("sigma", heads2, widths2))
    print("\n".join(rows2))
    print(
        f"({x.shape[0]} observations per row; fit MAP and gd@MAP minimise the MAP objective, λ = σ²; "
        "err/pred = median ‖z − z*‖ / √trace(Cov) of fit)"
    )


def section_cs(run: Runner, z_true: np.ndarray, x: np.ndarray, rows, rng) -> None:
    print("\n(c) compressed sensing, clean: recovery rate (relative latent error <= 1e-3 | <= 1e-2)")
    heads = ["fit 5", "fit <=20", "gd@fit", "gd batch", "gd 1000", "fit5 ms", "fit20 ms", "gd1000 ms"]
    widths = [13, 13, 13, 13, 13, 9, 9, 10]
    print(_row("m", heads, widths))
    for m in rows:
        a = rng.normal(0.0, 1.0 / np.sqrt(m), size=(m, x.shape[1]))
        y = x @ a.T
        f5 = run.fit_all(y, measure=a)
        f20 = run.fit_all(y, measure=a, starts=CS_STARTS, target=1e-10)
        gd = run.gd_each(y, f20.seconds, measure=a)
        gb = run.gd_batch(y, float(np.sum(f20.seconds)), measure=a)
        g1 = run.gd_batch(y, None, measure=a, iterations=1000)
        errs = [_err(o.z, z_true) for o in (f5, f20, gd, gb, g1)]
        cols = [f"{np.mean(e <= 1e-3):.2f} | {np.mean(e <= 1e-2):.2f}" for e in errs]
        cols += [f"{1e3 * np.median(o.seconds):.1f}" for o in (f5, f20, g1)]
        print(_row(str(m), cols, widths), flush=True)
    print(
        f"(fit 5: 5 starts; fit <=20: up to {CS_STARTS} starts, stopping at the first that fits to 1e-10 "
        "relative; gd@fit and gd batch get fit <=20's time)"
    )


def _compare(c: np.ndarray, ref: np.ndarray) -> str:
    """ "same | lower | higher": fractions of observations whose cost matches the reference."""
    tol = 1e-8 * ref + 1e-20
    return f"{np.mean(np.abs(c - ref) <= tol):.2f}|{np.mean(c < ref - tol):.2f}|{np.mean(c > ref + tol):.2f}"


def section_methods(run: Runner, x: np.ndarray, rng) -> None:
    print("\n(d) least_squares method / Jacobian form: median CPU time per observation; cost vs lm")
    configs = [
        ("lm", {"method": "lm"}),
        ("trf", {"method": "trf"}),
        ("trf lsmr", {"method": "trf", "kind": "operator"}),
    ]
    a = rng.normal(0.0, 1.0 / np.sqrt(20), size=(20, x.shape[1]))
    cases = [("noise 0.05", x + 0.05 * rng.standard_normal(x.shape), None), ("cs m=20", x @ a.T, a)]
    widths = [11, 11, 11, 18, 18]
    print(_row("case", [name for name, _ in configs] + ["trf same|lo|hi", "lsmr same|lo|hi"], widths))
    for label, y, measure in cases:
        costs, times = [], []
        for _, cfg in configs:
            c, t = [], []
            for i in range(y.shape[0]):
                t0 = time.process_time()
                f = fit(run.layers, y[i], starts=_starts(run.k, run.seed, i), measure=measure, **cfg)
                t.append(time.process_time() - t0)
                c.append(f.cost)
            costs.append(np.array(c))
            times.append(np.median(t))
        cols = [f"{1e3 * t:.1f} ms" for t in times] + [_compare(c, costs[0]) for c in costs[1:]]
        print(_row(label, cols, widths), flush=True)


def section_kinds(seed: int) -> None:
    """Dense Jacobian against the LinearOperator on generators larger than the digits decoder."""
    import scipy.sparse as sp

    from onnxinv.building import random_generator_layers
    from onnxinv.layers import Activation, Layer

    print("\n(e) Jacobian form on larger generators built in code: CPU time of one fit from a nearby")
    print("    start, 1% noise, median of 5 draws; dense weights N(0, 1/n_out), sparse: CSR layers with 1%")
    print("    and 0.5% of the entries")
    rng = np.random.default_rng(seed)

    def sparse_layer(n_out: int, n_in: int, density: float, act: Activation) -> Layer:
        w = sp.random(n_out, n_in, density=density, random_state=rng)
        w.data = rng.normal(0.0, 1.0 / np.sqrt(density * n_in), w.nnz)
        return Layer(sp.csr_array(w), rng.normal(0.0, 0.1, n_out), act)

    def sparse_net(k: int, sizes: tuple[int, int, int]) -> tuple[Layer, ...]:
        first = Layer(rng.normal(0.0, 1.0 / np.sqrt(k), (sizes[0], k)), np.zeros(sizes[0]), Activation.RELU)
        return (
            first,
            sparse_layer(sizes[1], sizes[0], 0.01, Activation.RELU),
            sparse_layer(sizes[2], sizes[1], 0.005, Activation.SIGMOID),
        )

    cases = [
        ("dense 8-40-64", tuple(random_generator_layers([8, 40, 64], rng=1))),
        ("dense 32-250-600", tuple(random_generator_layers([32, 250, 600], rng=1))),
        ("dense 64-512-2048", tuple(random_generator_layers([64, 512, 2048], rng=1))),
        ("dense 100-250-600", tuple(random_generator_layers([100, 250, 600], rng=1))),
        ("dense 128-512-2048", tuple(random_generator_layers([128, 512, 2048], rng=1))),
        ("sparse 32-1024-4096-3072", sparse_net(32, (1024, 4096, 3072))),
        ("sparse 100-2048-8192-3072", sparse_net(100, (2048, 8192, 3072))),
    ]
    widths = [14, 14, 14, 10]
    print(_row("generator".ljust(26), ["dense lm", "dense trf", "operator trf", "auto"], widths))
    for name, layers in cases:
        k, n = layers[0].in_features, layers[-1].out_features
        times: dict[str, list[float]] = {"lm": [], "trf": [], "op": []}
        for _ in range(5):
            z = rng.standard_normal(k)
            y = forward(layers, z).output
            y = y + 0.01 * float(np.std(y)) * rng.standard_normal(n)
            start = z + 0.1 * rng.standard_normal(k)
            for label, kind, method in (
                ("lm", "dense", "lm"),
                ("trf", "dense", "trf"),
                ("op", "operator", "trf"),
            ):
                t0 = time.process_time()
                fit(layers, y, starts=start, kind=kind, method=method)
                times[label].append(time.process_time() - t0)
        cols = [f"{1e3 * np.median(v):.1f} ms" for v in times.values()]
        auto = "operator" if isinstance(jacobian(layers, z), LinearOperator) else "dense"
        print(_row(name.ljust(26), cols + [auto], widths), flush=True)


def section_descend(seed: int, count: int) -> None:
    """How far the batched Adam baseline converges on clean data, with and without the polish."""
    from onnxinv.building import random_generator_layers

    print("\n(f) descend on clean k-250-600 ReLU nets (Adam, 4 restarts, 1000 iterations, tol 1e-6):")
    print("    fraction of observations reaching relative residual <= 1e-6 | <= 1e-10, latent error <= 1e-3,")
    print(
        "    ms per observation (batched); polish = a final fit with <= 20 evaluations where tol was missed"
    )
    heads = ["polish 0", "err<=1e-3", "ms", "polish 20", "err<=1e-3", "ms"]
    widths = [14, 11, 8, 14, 11, 8]
    print(_row("k", heads, widths))
    n = min(count, 20)
    for k in (70, 90, 110):
        layers = tuple(random_generator_layers([k, 250, 600], rng=seed + k))
        z_true = np.random.default_rng([seed, k]).standard_normal((n, k))
        y = forward(layers, z_true).output
        cols = []
        for polish in (0, 20):
            t0 = time.perf_counter()
            z, _, info = descend(layers, y, restarts=4, iterations=1000, seed=seed, polish=polish)
            per = 1e3 * (time.perf_counter() - t0) / n
            rel = info.relative
            cols += [f"{np.mean(rel <= 1e-6):.2f} | {np.mean(rel <= 1e-10):.2f}"]
            cols += [f"{np.mean(_err(z, z_true) <= 1e-3):.2f}", f"{per:.0f}"]
        print(_row(str(k), cols, widths), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100, help="observations per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    g = onnxinv.load(str(MODEL))
    rng = np.random.default_rng(args.seed)
    z_true = rng.standard_normal((args.count, g.latent_dim))
    x = g.forward(z_true)
    run = Runner(g.layers, z_true, args.seed)
    print(
        f"bench_network: {MODEL.name} ({' -> '.join(str(s) for s in [g.latent_dim] + [lay.out_features for lay in g.layers])}), "
        f"{args.count} observations per setting, seed {args.seed}; fit from {STARTS} starts, descend Adam "
        f"with {RESTARTS} restarts; python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} cpus"
    )
    if "a" in sections:
        section_noise(run, x, [0.01, 0.05, 0.1], rng, masked=False)
    if "b" in sections:
        section_noise(run, x, [0.0, 0.01, 0.05, 0.1], rng, masked=True)
    if "c" in sections:
        section_cs(run, z_true, x, [10, 20, 30, 40, 50, 60], rng)
    if "d" in sections:
        section_methods(run, x, rng)
    if "e" in sections:
        section_kinds(args.seed)
    if "f" in sections:
        section_descend(args.seed, args.count)


if __name__ == "__main__":
    sys.exit(main())
