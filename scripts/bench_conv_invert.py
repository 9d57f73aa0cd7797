"""Benchmark: inverting the convolutional sample models (sparse layers), time per observation and verdicts.

Usage::

    python scripts/bench_conv_invert.py [--extra 2] [--out benchmarks] [--time-limit 60]

For every convolutional model in ``sample_models/`` (``digits_dcgan_*``, ``digits_dcgan_linear_*``,
``digits_upconv_*``, ``digits_cdcgan_*``; the conditional ones with their ``.fix.label.npy``) it inverts
the model's own observation (``.obs.npy``, latent ``.z_true.npy``) and ``--extra`` more observations made
by onnxruntime from latents drawn from N(0, I) (seed 0), one at a time with ``method="auto"`` in this
process (one worker), and reports per observation the wall time, the verdict, the evidence, the residual
through onnxruntime and the recovered latent's error ``max |z - z*|``. Per model: the median time per
observation, the verdict counts and the largest latent error; and, for the model's own observation, the
tracemalloc peak of one inversion (numpy / scipy allocations only: HiGHS's own memory is not traced)
against the bytes of the layer matrices' stored entries (CSR values + column indices + row pointers;
``out x in x 8`` for a dense layer).

Writes ``conv_invert.csv`` (one row per observation) and ``conv_invert_models.csv`` (one row per model)
to ``--out``. No time is asserted; the machine may be busy.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:
    import onnxinv
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import onnxinv

from onnxinv.inversion.framework import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = (
    "digits_dcgan_legacy",
    "digits_dcgan_dynamo",
    "digits_dcgan_linear_legacy",
    "digits_dcgan_linear_dynamo",
    "digits_upconv_legacy",
    "digits_upconv_dynamo",
    "digits_cdcgan_legacy",
    "digits_cdcgan_dynamo",
)


def load(name: str) -> onnxinv.Generator:
    path = ROOT / "sample_models" / f"{name}.onnx"
    label = ROOT / "sample_models" / f"{name}.fix.label.npy"
    if label.exists():
        return onnxinv.load(path, latent="z", fixed={"label": np.load(label)})
    return onnxinv.load(path)


def matrix_bytes(generator: onnxinv.Generator) -> int:
    total = 0
    for layer in generator.layers:
        w = layer.weight
        total += w.data.nbytes + w.indices.nbytes + w.indptr.nbytes if layer.sparse else w.nbytes
    return total


def invert_one(generator, x, z_true, settings) -> dict:
    start = time.perf_counter()
    result = onnxinv.invert(generator, x, method="auto", settings=settings)
    seconds = time.perf_counter() - start
    z = np.asarray(result.z, dtype=np.float64).reshape(-1)
    return {
        "seconds": seconds,
        "verdict": result.verdict.value,
        "evidence": result.evidence.kind.value,
        "rel_l2": result.fit.rel_l2,
        "latent_error": float(np.max(np.abs(z - z_true.reshape(-1)))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=2, help="observations from random latents per model")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per observation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    settings = Settings(time_limit=args.time_limit)
    rows, summary = [], []
    for name in args.models:
        generator = load(name)
        x0 = np.load(ROOT / "sample_models" / f"{name}.obs.npy")
        z0 = np.load(ROOT / "sample_models" / f"{name}.z_true.npy").reshape(-1)
        rng = np.random.default_rng(0)
        zs = rng.standard_normal((args.extra, generator.latent_dim))
        xs = [x0] + [generator.run_onnx(z[None, :])[0] for z in zs]
        truths = [z0, *zs]
        sizes = "; ".join(
            f"{la.out_features}x{la.in_features} {'CSR' if la.sparse else 'dense'} {la.activation.value}"
            for la in generator.layers
        )
        tracemalloc.start()
        first = invert_one(generator, x0, z0, settings)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        entries = matrix_bytes(generator)
        per = [first] + [invert_one(generator, x, z, settings) for x, z in zip(xs[1:], truths[1:])]
        # the traced run is slower: the median time comes from an untraced run of the same observation
        per[0] = {**invert_one(generator, x0, z0, settings), "traced_peak_bytes": peak}
        for i, r in enumerate(per):
            rows.append({"model": name, "observation": "obs.npy" if i == 0 else f"random {i}", **r})
            print(
                f"{name:28s} {'obs.npy' if i == 0 else f'random {i}':9s} {r['seconds']:7.2f} s  "
                f"{r['verdict']:10s} ({r['evidence']})  residual {r['rel_l2']:.2g}  "
                f"max|z - z*| {r['latent_error']:.2g}"
            )
        verdicts: dict[str, int] = {}
        for r in per:
            verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
        summary.append(
            {
                "model": name,
                "layers": sizes,
                "observations": len(per),
                "median_seconds": float(np.median([r["seconds"] for r in per])),
                "verdicts": " ".join(f"{k}={v}" for k, v in sorted(verdicts.items())),
                "max_latent_error": max(r["latent_error"] for r in per),
                "matrix_bytes": entries,
                "traced_peak_bytes": peak,
                "peak_over_matrix": peak / entries,
            }
        )
        s = summary[-1]
        print(
            f"  {name}: median {s['median_seconds']:.2f} s per observation, {s['verdicts']}, "
            f"max latent error {s['max_latent_error']:.2g}; traced peak {peak / 1e6:.1f} MB = "
            f"{s['peak_over_matrix']:.2f}x the matrices' {entries / 1e6:.1f} MB"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for file, table in (("conv_invert.csv", rows), ("conv_invert_models.csv", summary)):
        keys = list(dict.fromkeys(k for row in table for k in row))
        with open(args.out / file, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(table)
    print(f"wrote {args.out / 'conv_invert.csv'} and {args.out / 'conv_invert_models.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
