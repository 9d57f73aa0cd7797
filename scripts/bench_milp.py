"""Benchmark the whole-network MILP engine (onnxinv.inversion.milp) on the settings of issue 11.

Usage::

    python scripts/bench_milp.py                 # 20 nets per setting (the final run)
    python scripts/bench_milp.py --nets 5        # fewer, for development
    python scripts/bench_milp.py --only sweep    # one block: sweep, refute, small, mid, decoder

Rows
----
* ``k-250-600`` ReLU, k = 110..140 (past the layer-wise edge): build + find + certify at ``δ`` per
  observation. ``decided`` is the share of verdicts backed by a certificate ("unique": every direction
  proved) or a witness ("not unique": a latent at distance ``>= δ`` that reproduces the observation,
  re-checked here through onnxruntime in float64). ``agree`` checks each verdict against the known z*:
  "unique" must have ``‖ẑ - z*‖∞ <= δ``, "not unique" must have a witness onnxruntime confirms, and a
  realizable observation must never get "no preimage". ``lw-ident`` is how many of the nets are
  identifiable layer by layer at z* (every layer's active rows of full column rank), for comparison.
* ``refute 140-250-600``: the observation of a z* with uniform noise of 1e-2 and 1e-4 times max|x|
  added to its active entries, inverted as exact data; "no preimage" is the right answer.
* ``3-32-32-3`` ReLU (input size = output size, non-expanding hidden layers): build + find.
* ``20-100-200-500`` ReLU: build + find + certify.
* ``20-200-500-784`` LeakyReLU(0.1) at uniform noise 1e-3·max|x|: find (started from onnxinv's
  layer-wise ``exact`` method, as the pipeline does; its time is the last column), then the box
  ``[min z_i, max z_i]`` (:meth:`MilpEngine.bound`) twice: in the default assumed box ``[-10, 10]^k``
  and in a trust region ``ẑ ± 0.01`` around the latent found in the first; ``z* in`` says whether the proved
  box contains z* (counted over the nets whose z* lies in the assumed box: a claim covers that box
  only), ``inside`` whether no side of it is the assumed box.

Observations are float32 model outputs from onnxruntime (the default tolerance of
:class:`PreimageSpec` covers their rounding). Times are wall seconds per observation (one BLAS
thread), medians and maxima; ``cpu`` is the median process CPU time (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from onnxinv.building import random_generator_layers  # noqa: E402
from onnxinv.inversion import invert, milp  # noqa: E402
from onnxinv.layers import Activation, Generator  # noqa: E402


def _data(layers, seed: int) -> tuple[np.ndarray, np.ndarray]:
    k = layers[0].in_features
    z = np.random.default_rng(10_000 + seed).normal(size=k)
    x = Generator.from_layers(layers, dtype="float32").run_onnx(z)
    return z, x


def _witness_ok(layers, spec: milp.PreimageSpec, w: np.ndarray) -> bool:
    """onnxruntime (float64 model) confirms that ``w`` reproduces the observation within the band."""
    out = Generator.from_layers(layers, dtype="float64").run_onnx(w)[spec.rows]
    return bool(np.all(np.abs(out - spec.observed) <= spec.slack * (1 + 1e-9)))


def _layerwise_identifiable(layers, z: np.ndarray) -> bool:
    h = z
    for layer in layers:
        a = layer.preactivation(h)
        rows = a > 0 if layer.activation is Activation.RELU else np.ones(a.size, dtype=bool)
        w = layer.dense_weight()[rows]
        if w.shape[0] < w.shape[1] or np.linalg.matrix_rank(w) < w.shape[1]:
            return False
        h = layer.forward(h)
    return True


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.median(values):.2f} / {np.max(values):.2f}"


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def sweep(nets: int, ks: list[int], delta: float, limit: float) -> None:
    print(f"\n## k-250-600 ReLU, find + certify at delta = {delta:g} (l_inf), time limit {limit:g} s")
    print(
        "| k | nets | unique | not unique | no preimage | undecided | decided | agree | lw-ident | s median / max | cpu |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        counts = {f: 0 for f in milp.Finding}
        agree = decided = ident = 0
        secs, cpus = [], []
        for seed in range(nets):
            layers = random_generator_layers([k, 250, 600], rng=seed)
            z, x = _data(layers, seed)
            ident += _layerwise_identifiable(layers, z)
            spec = milp.PreimageSpec.create(layers, x)

            def run(spec=spec):
                engine = milp.build(spec, time_limit=0.3 * limit)
                found = engine.find(time_limit=0.3 * limit)
                if found.z is None:
                    return found, None
                return found, engine.certify(found.z, delta, time_limit=0.7 * limit)

            (found, cert), sec, cpu = _timed(run)
            secs.append(sec)
            cpus.append(cpu)
            finding = found.finding if cert is None else cert.finding
            counts[finding] += 1
            if finding is milp.Finding.UNIQUE:
                decided += 1
                agree += float(np.max(np.abs(found.z - z))) <= delta
            elif finding is milp.Finding.NOT_UNIQUE:
                ok = _witness_ok(layers, spec, cert.witness) and cert.witness_distance >= delta
                decided += ok
                agree += ok
        print(
            f"| {k} | {nets} | {counts[milp.Finding.UNIQUE]} | {counts[milp.Finding.NOT_UNIQUE]} | "
            f"{counts[milp.Finding.NO_PREIMAGE]} | {counts[milp.Finding.UNDECIDED]} | {decided / nets:.0%} | "
            f"{agree / nets:.0%} | {ident} | {_stats(secs)} | {np.median(cpus):.2f} |",
            flush=True,
        )


def refute(nets: int, limit: float) -> None:
    print("\n## refute: 140-250-600 ReLU, uniform noise on the active entries, inverted as exact data")
    print("| noise | nets | no preimage | proved by | other | s median / max | cpu |")
    print("|---|---|---|---|---|---|---|")
    for level in (1e-2, 1e-4):
        _refute(nets, limit, level)


def _refute(nets: int, limit: float, level: float) -> None:
    n_no, other, secs, cpus, how = 0, 0, [], [], {}
    for seed in range(nets):
        layers = random_generator_layers([140, 250, 600], rng=seed)
        _, x = _data(layers, seed)
        eps = level * float(np.max(np.abs(x)))
        # only the active entries move (a negative pixel would be refuted by the range check alone)
        noise = np.random.default_rng(seed).uniform(-eps, eps, size=x.shape)
        x = np.where(x > eps, x + noise, x)
        spec = milp.PreimageSpec.create(layers, x)
        result, sec, cpu = _timed(lambda spec=spec: milp.find(spec, time_limit=limit))
        secs.append(sec)
        cpus.append(cpu)
        if result.finding is milp.Finding.NO_PREIMAGE:
            n_no += 1
            how[result.proved_by] = how.get(result.proved_by, 0) + 1
        else:
            other += 1
    text = ", ".join(f"{k}: {v}" for k, v in how.items())
    print(
        f"| {level:g}·max|x| | {nets} | {n_no} | {text} | {other} | {_stats(secs)} | {np.median(cpus):.2f} |",
        flush=True,
    )


def small(nets: int, limit: float) -> None:
    print("\n## 3-32-32-3 ReLU: build + find (target <= 1 s)")
    print("| nets | found | how | s median / max | cpu |")
    print("|---|---|---|---|---|")
    found_n, secs, cpus, how = 0, [], [], {}
    for seed in range(nets):
        layers = random_generator_layers([3, 32, 32, 3], rng=seed)
        _, x = _data(layers, seed)
        spec = milp.PreimageSpec.create(layers, x)
        result, sec, cpu = _timed(lambda spec=spec: milp.find(spec, time_limit=limit))
        secs.append(sec)
        cpus.append(cpu)
        if result.finding is milp.Finding.FOUND and _witness_ok(layers, spec, result.z):
            found_n += 1
        how[result.proved_by] = how.get(result.proved_by, 0) + 1
    text = ", ".join(f"{k}: {v}" for k, v in how.items())
    print(f"| {nets} | {found_n} | {text} | {_stats(secs)} | {np.median(cpus):.2f} |", flush=True)


def mid(nets: int, delta: float, limit: float) -> None:
    print(f"\n## 20-100-200-500 ReLU: build + find + certify at delta = {delta:g} (target median <= 5 s)")
    print("| nets | unique | not unique | undecided | agree | binaries median | s median / max | cpu |")
    print("|---|---|---|---|---|---|---|---|")
    counts = {f: 0 for f in milp.Finding}
    agree, secs, cpus, bins = 0, [], [], []
    for seed in range(nets):
        layers = random_generator_layers([20, 100, 200, 500], rng=seed)
        z, x = _data(layers, seed)
        spec = milp.PreimageSpec.create(layers, x)

        def run(spec=spec):
            engine = milp.build(spec, time_limit=0.3 * limit)
            found = engine.find(time_limit=0.3 * limit)
            cert = engine.certify(found.z, delta, time_limit=0.7 * limit) if found.z is not None else None
            return engine, found, cert

        (engine, found, cert), sec, cpu = _timed(run)
        secs.append(sec)
        cpus.append(cpu)
        bins.append(engine.binaries)
        finding = found.finding if cert is None else cert.finding
        counts[finding] += 1
        if finding is milp.Finding.UNIQUE:
            agree += float(np.max(np.abs(found.z - z))) <= delta
        elif finding is milp.Finding.NOT_UNIQUE:
            agree += _witness_ok(layers, spec, cert.witness)
    print(
        f"| {nets} | {counts[milp.Finding.UNIQUE]} | {counts[milp.Finding.NOT_UNIQUE]} | "
        f"{counts[milp.Finding.UNDECIDED]} | {agree / nets:.0%} | {np.median(bins):.0f} | {_stats(secs)} | "
        f"{np.median(cpus):.2f} |",
        flush=True,
    )


def decoder(nets: int, limit: float, radius: float) -> None:
    print(
        "\n## 20-200-500-784 LeakyReLU(0.1), uniform noise 1e-3·max|x|: start from the layer-wise exact "
        "method, find, then bound (target <= 2 s)"
    )
    print(
        "| box | nets | found | bounded | z* in | inside | exact sides | width median | radius median | "
        "s median / max | cpu | layer-wise s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    labels = ["[-10, 10]^20", f"ẑ ± {radius:g}"]
    rows: dict[str, list] = {label: [] for label in labels}
    lw_secs = []
    for seed in range(nets):
        layers = random_generator_layers(
            [20, 200, 500, 784], activation=Activation.LEAKY_RELU, slope=0.1, rng=seed
        )
        z, x = _data(layers, seed)
        eps = 1e-3 * float(np.max(np.abs(x)))
        x = x + np.random.default_rng(seed).uniform(-eps, eps, size=x.shape)
        gen = Generator.from_layers(layers, dtype="float32")
        layerwise, lw_sec, _ = _timed(lambda gen=gen, x=x, eps=eps: invert(gen, x, method="exact", noise=eps))
        lw_secs.append(lw_sec)
        start = layerwise.z
        for label in labels:
            if label.startswith("["):
                spec = milp.PreimageSpec.create(layers, x, noise=eps)
            else:
                # centred on the latent found in the default box (it fits; the layer-wise estimate
                # may lie farther than the radius from every latent that does)
                found = rows[labels[0]][-1][0]
                if found.z is None:
                    continue
                start = found.z
                spec = milp.PreimageSpec.create(layers, x, noise=eps, box=(start - radius, start + radius))

            def run(spec=spec, start=start):
                engine = milp.build(spec, time_limit=0.4 * limit)
                f = engine.find(time_limit=0.2 * limit, start=start)
                return f, engine.bound(time_limit=0.4 * limit, start=f.z)

            (f, b), sec, cpu = _timed(run)
            rows[label].append((f, b, z, sec, cpu))
    for label, runs in rows.items():
        found_n = sum(r[0].finding is milp.Finding.FOUND for r in runs)
        bounded = [r for r in runs if r[1].finding is milp.Finding.BOUNDED]
        in_box = [
            r for r in runs if np.all((r[1].box.assumed_lower <= r[2]) & (r[2] <= r[1].box.assumed_upper))
        ]
        z_in = sum(bool(np.all((r[1].lower <= r[2]) & (r[2] <= r[1].upper))) for r in in_box)
        inside = sum(not r[1].at_box.any() for r in runs)
        exact = sum(int(r[1].exact.sum()) for r in runs)
        widths = [float(np.max(r[1].upper - r[1].lower)) for r in runs]
        radii = [r[1].radius(r[0].z) for r in runs if r[0].z is not None]
        print(
            f"| {label} | {len(runs)} | {found_n} | {len(bounded)} | {z_in}/{len(in_box)} | {inside} | "
            f"{exact}/{40 * len(runs)} | "
            f"{np.median(widths):.3g} | {np.median(radii) if radii else float('nan'):.3g} | "
            f"{_stats([r[3] for r in runs])} | {np.median([r[4] for r in runs]):.2f} | {np.median(lw_secs):.2f} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=20, help="nets per setting (default 20)")
    parser.add_argument("--ks", default="110,120,130,140", help="latent sizes of the k-250-600 sweep")
    parser.add_argument("--delta", type=float, default=1e-2, help="certify radius, l_inf (default 1e-2)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per observation (default 60)")
    parser.add_argument("--radius", type=float, default=0.01, help="trust region of the decoder box")
    parser.add_argument("--only", choices=["sweep", "refute", "small", "mid", "decoder"], action="append")
    args = parser.parse_args(argv)
    blocks = args.only or ["sweep", "refute", "small", "mid", "decoder"]
    print(
        f"# bench_milp: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}"
    )
    print(f"nets per setting: {args.nets}; time limit {args.limit:g} s per observation")
    if "sweep" in blocks:
        sweep(args.nets, [int(k) for k in args.ks.split(",")], args.delta, args.limit)
    if "refute" in blocks:
        refute(args.nets, args.limit)
    if "small" in blocks:
        small(args.nets, args.limit)
    if "mid" in blocks:
        mid(args.nets, args.delta, args.limit)
    if "decoder" in blocks:
        decoder(args.nets, args.limit, args.radius)
    return 0


if __name__ == "__main__":
    sys.exit(main())
