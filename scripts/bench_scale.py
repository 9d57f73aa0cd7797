"""Throughput of streamed runs: the local process pool against a Dask cluster, and the chunk size.

Usage::

    python scripts/bench_scale.py                          # 100,000 observations, LocalCluster of 2
    python scripts/bench_scale.py --quick                  # 10,000 observations, one repeat
    python scripts/bench_scale.py --scheduler tcp://host:8786 --count 1000000   # a real cluster

Every run is :func:`onnxinv.stream.invert_to_folder` (what ``onnxinv invert --out-dir`` calls) on the
same ``.npy`` file of observations of the sample 20-60-784 ReLU generator (``sample_models/``), into a
fresh folder: observations read memory-mapped chunk by chunk, solved, verified through onnxruntime,
each chunk written to disk, ``z.npy`` assembled at the end. Times are wall times of whole runs.

* **engines**: ``--count`` observations at the default chunk size on the local pool (``--workers``
  processes) and on Dask (a ``LocalCluster`` of ``--workers`` single-threaded worker processes started
  here, or the cluster of ``--scheduler``); runs alternate between the engines (``--repeats`` each) so
  that both see the same load on a shared machine; the ratio of the medians is the engine's overhead
  (goal: Dask within 1.2 times the local pool's time on one machine).
* **chunk size**: ``--tradeoff-count`` observations at each of ``--chunk-sizes``, on both engines.

Every run's results are checked against the first local run: z and verdicts equal bit for bit.
The CSV (``--csv``) holds one row per run.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import onnxinv  # noqa: E402
from onnxinv.stream import DEFAULT_CHUNK, invert_to_folder  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "sample_models" / "gaussian_20_60_784_relu.onnx"


def _observations(path: Path, generator: onnxinv.Generator, count: int, seed: int) -> None:
    """``count`` observations G(z), z ~ N(0, I), written to a float32 .npy without holding them all."""
    rng = np.random.default_rng(seed)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, generator.output_dim))
    for a in range(0, count, 10_000):
        b = min(count, a + 10_000)
        rows[a:b] = generator.run_onnx(rng.standard_normal((b - a, generator.latent_dim)))
    rows.flush()
    del rows


def _run(generator, obs: Path, work: Path, engine: str, client, workers: int, chunk: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{engine}-{chunk}-"))
    where = {"executor": client} if engine == "dask" else {"workers": workers}
    started = time.perf_counter()
    result = invert_to_folder(generator, obs, out, chunk_size=chunk, **where)
    seconds = time.perf_counter() - started
    z = np.load(out / "z.npy")
    verdicts = np.load(out / "verdicts.npy")
    shutil.rmtree(out)
    return {
        "engine": engine,
        "count": result.count,
        "chunk_size": chunk,
        "chunks": result.chunks,
        "seconds": seconds,
        "obs_per_s": result.count / seconds,
        "unique": result.counts["unique"],
        "_z": z,
        "_verdicts": verdicts,
    }


def _check(row: dict, reference: dict | None) -> dict:
    if reference is not None and reference["count"] == row["count"]:
        same = np.array_equal(row["_z"], reference["_z"]) and np.array_equal(
            row["_verdicts"], reference["_verdicts"]
        )
        row["same_as_local"] = same
        if not same:
            print(f"  RESULTS DIFFER from the local run: {row['engine']} chunk {row['chunk_size']}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tradeoff-count", type=int, default=10_000)
    parser.add_argument("--chunk-sizes", default="16,64,256,1024")
    parser.add_argument(
        "--scheduler", default=None, help="a running Dask scheduler instead of a LocalCluster"
    )
    parser.add_argument("--csv", type=Path, default=None, help="write one row per run here")
    parser.add_argument("--quick", action="store_true", help="10,000 observations, one repeat, 2 chunk sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeats, args.tradeoff_count, args.chunk_sizes = 10_000, 1, 2_000, "32,512"
    sizes = [int(s) for s in args.chunk_sizes.split(",") if s]

    from distributed import Client, LocalCluster

    generator = onnxinv.load(MODEL)
    work = Path(tempfile.mkdtemp(prefix="onnxinv-bench-scale-"))
    cluster = None
    try:
        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
        client.wait_for_workers(1, timeout=120)
        print(
            f"onnxinv {onnxinv.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores; "
            f"Dask {'at ' + args.scheduler if args.scheduler else f'LocalCluster of {args.workers} workers'} "
            f"({sum(client.nthreads().values())} threads); local pool of {args.workers} processes"
        )
        rows: list[dict] = []
        obs = work / "obs.npy"
        started = time.perf_counter()
        _observations(obs, generator, args.count, args.seed)
        print(f"{args.count:,} observations written in {time.perf_counter() - started:.1f} s "
              f"({obs.stat().st_size / 1e6:.0f} MB)")  # fmt: skip

        # Warm both engines (worker start-up, imports, onnxruntime sessions) on a small file.
        warm = work / "warm.npy"
        _observations(warm, generator, 200, args.seed + 1)
        for engine in ("local", "dask"):
            _run(generator, warm, work, engine, client, args.workers, 50)

        print(f"\nengines: {args.count:,} observations, chunk size {DEFAULT_CHUNK}")
        reference = None
        times: dict[str, list[float]] = {"local": [], "dask": []}
        for repeat in range(args.repeats):
            for engine in ("local", "dask"):
                row = _check(
                    _run(generator, obs, work, engine, client, args.workers, DEFAULT_CHUNK), reference
                )
                reference = reference or row
                row["part"] = "engines"
                rows.append(row)
                times[engine].append(row["seconds"])
                print(
                    f"  {engine:5s} run {repeat + 1}: {row['seconds']:7.1f} s, {row['obs_per_s']:7.0f} obs/s"
                )
        local, dask = statistics.median(times["local"]), statistics.median(times["dask"])
        print(
            f"  median: local pool {args.count / local:,.0f} obs/s, Dask {args.count / dask:,.0f} obs/s; "
            f"Dask / local time = {dask / local:.2f}"
        )

        tradeoff = work / "tradeoff.npy"
        _observations(tradeoff, generator, args.tradeoff_count, args.seed + 2)
        print(f"\nchunk size: {args.tradeoff_count:,} observations")
        print(f"  {'chunk':>6s} {'chunks':>7s} {'local obs/s':>12s} {'dask obs/s':>11s} {'dask/local':>10s}")
        ref_small = None
        for size in sizes:
            pair = {}
            for engine in ("local", "dask"):
                row = _check(_run(generator, tradeoff, work, engine, client, args.workers, size), ref_small)
                ref_small = ref_small or row
                row["part"] = "chunk size"
                rows.append(row)
                pair[engine] = row
            print(
                f"  {size:6d} {pair['local']['chunks']:7d} {pair['local']['obs_per_s']:12,.0f} "
                f"{pair['dask']['obs_per_s']:11,.0f} {pair['dask']['seconds'] / pair['local']['seconds']:10.2f}"
            )
        differ = [r for r in rows if r.get("same_as_local") is False]
        print(f"\nresults equal to the local run, bit for bit: {'yes' if not differ else 'NO'}")
        if args.csv is not None:
            fields = ["part", "engine", "count", "chunk_size", "chunks", "seconds", "obs_per_s", "unique",
                      "same_as_local"]  # fmt: skip
            with open(args.csv, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        return 1 if differ else 0
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
