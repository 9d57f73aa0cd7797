"""Benchmark onnxinv's inversion methods against gradient descent, per observation and for a batch.

Usage::

    python scripts/bench_invert.py            # 20 observations per setting, 1000-observation batch
    python scripts/bench_invert.py --quick    # 5 observations per setting, 200-observation batch
    python scripts/bench_invert.py --seed 3 --count 50 --batch 2000

Every time is the wall time of a whole ``invert`` call on one observation (validation, solve, and the
verification of ``G(z)`` through onnxruntime), median over the observations. Per-observation runs
use one core: BLAS is limited to one thread before numpy is imported. ``gd/method`` is how many times
faster the method is than the gradient-descent baseline (4 restarts, 1000 iterations) on the same
observations; ``max err|uniq`` is the largest relative latent error among the observations whose
verdict is "unique" (the honesty check: it must be small). Models are built
in code (random N(0, 1/n_out) weights, float32 ONNX models, as exported generators are).

Targets (2-core machine): exact on 20-250-600 <= 5 ms; linf on 20-100-500 at noise 1e-3 <= 50 ms;
1000 observations of 20-60-784 in <= 5 s with both cores, onnxruntime verification included.
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
from onnxinv.inversion import invert  # noqa: E402
from onnxinv.layers import Generator  # noqa: E402

# (label, sizes, relative noise, methods, {method: target seconds per observation})
SETTINGS = [
    ("20-100-500 clean", [20, 100, 500], None, ["exact", "sparse", "linf", "l1", "relaxed", "auto"], {}),
    ("20-250-600 clean", [20, 250, 600], None, ["exact", "linf", "auto"], {"exact": 5e-3}),
    ("100-250-600 clean", [100, 250, 600], None, ["exact", "linf", "auto"], {}),
    ("140-250-600 clean", [140, 250, 600], None, ["exact", "auto"], {}),
    ("20-100-500 noise 1e-3", [20, 100, 500], 1e-3, ["linf", "l1", "relaxed", "auto"], {"linf": 50e-3}),
]
BATCH_SIZES = [20, 60, 784]
BATCH_TARGET = 5.0


def _generator(sizes: list[int], seed: int) -> Generator:
    return Generator.from_layers(random_generator_layers(sizes, rng=seed))


def _observations(g: Generator, count: int, noise: float | None, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(count, g.latent_dim))
    x = g.forward(z)
    levels = [None] * count
    if noise is not None:
        levels = [noise * float(np.max(np.abs(row))) for row in x]
        x = x + np.stack([rng.uniform(-a, a, size=x.shape[1]) for a in levels])
    return z, x, levels


def _run(g: Generator, z, x, levels, method: str, seed: int) -> tuple[float, float, float, dict[str, int]]:
    """(median seconds, median relative error, max relative error among "unique" verdicts, verdicts)."""
    times, errors, unique_errors, verdicts = [], [], [], {}
    for i in range(x.shape[0]):
        start = time.perf_counter()
        r = invert(g, x[i], method=method, noise=levels[i], seed=seed)
        times.append(time.perf_counter() - start)
        err = float(np.linalg.norm(r.z - z[i]) / np.linalg.norm(z[i]))
        errors.append(err)
        if r.verdict.value == "unique":
            unique_errors.append(err)
        verdicts[r.verdict.value] = verdicts.get(r.verdict.value, 0) + 1
    worst = max(unique_errors) if unique_errors else float("nan")
    return float(np.median(times)), float(np.median(errors)), worst, verdicts


def per_observation(count: int, seed: int) -> list[str]:
    header = (
        f"{'setting':<22} {'method':<8} {'ms/obs':>9} {'gd ms/obs':>10} {'gd/method':>10} "
        f"{'med rel err':>12} {'gd rel err':>11} {'max err|uniq':>12}  verdicts                        target"
    )
    lines = [header, "-" * len(header)]
    for label, sizes, noise, methods, targets in SETTINGS:
        g = _generator(sizes, seed)
        z, x, levels = _observations(g, count, noise, seed + 1)
        invert(g, x[0], method="exact")  # build the onnxruntime session outside the timings
        gd_t, gd_err, _, _ = _run(g, z, x, levels, "gd", seed)
        for method in methods:
            t, err, worst, verdicts = _run(g, z, x, levels, method, seed)
            target = targets.get(method)
            mark = ""
            if target is not None:
                mark = f"<= {target * 1e3:g} ms: {'met' if t <= target else 'MISSED'}"
            vtext = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
            lines.append(
                f"{label:<22} {method:<8} {t * 1e3:>9.2f} {gd_t * 1e3:>10.1f} {gd_t / t:>9.1f}x "
                f"{err:>12.2e} {gd_err:>11.2e} {worst:>12.2e}  {vtext:<31} {mark}"
            )
    return lines


def batch(count: int, seed: int) -> list[str]:
    g = _generator(BATCH_SIZES, seed)
    z, x, _ = _observations(g, count, None, seed + 2)
    invert(g, x[0], method="exact")
    lines = []
    label = "-".join(map(str, BATCH_SIZES))
    scaled = BATCH_TARGET * count / 1000
    for workers in (1, 2, None):
        start = time.perf_counter()
        res = invert(g, x, method="auto", workers=workers)
        wall = time.perf_counter() - start
        err = float(np.median(np.linalg.norm(res.z - z, axis=1) / np.linalg.norm(z, axis=1)))
        verdicts = ", ".join(f"{n} {v}" for v, n in res.counts.items() if n)
        mark = f"target <= {scaled:g} s: {'met' if wall <= scaled else 'MISSED'}"
        lines.append(
            f"{count} obs of {label}, auto, workers={workers!s:<4} -> {res.workers} process(es): "
            f"{wall:6.2f} s wall ({wall / count * 1e3:.2f} ms/obs), median rel err {err:.1e}, {verdicts}; {mark}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 observations per setting, 200 in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of models, latents and noise (default 0)")
    parser.add_argument("--count", type=int, default=None, help="observations per setting")
    parser.add_argument("--batch", type=int, default=None, help="observations in the batch run")
    args = parser.parse_args(argv)
    count = args.count or (5 if args.quick else 20)
    batch_count = args.batch or (200 if args.quick else 1000)
    print(
        f"onnxinv inversion benchmark: seed {args.seed}, {count} observations per setting, "
        f"python {platform.python_version()}, {os.cpu_count()} cpu(s), BLAS threads "
        f"{os.environ.get('OPENBLAS_NUM_THREADS')}"
    )
    print("\n".join(per_observation(count, args.seed)))
    print()
    print("\n".join(batch(batch_count, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
