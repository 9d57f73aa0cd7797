"""Benchmark: loading convolutional generators as sparse layers, their memory, and their forward pass.

Usage::

    python scripts/bench_conv.py [--ngf 64] [--repeats 5] [--batches 1 16 64]

Builds (in a temporary folder, nothing is committed) a DCGAN-style generator of 64x64 RGB images with
random weights -- z (N, 100, 1, 1) -> ConvTranspose 4x4 -> 4x4 x 8ngf -> [ConvTranspose 4x4 stride 2 +
BatchNormalization + ReLU] x 3 -> ConvTranspose to 3 x 64 x 64 -> Tanh, as PyTorch's DCGAN example writes
it -- and the 20-256-12288 Tanh dense decoder (the wide-output case). For each it reports:

* load time (parse + lowering, no self-check) and the self-check time, medians over ``--repeats``;
* the working set of a load: the tracemalloc peak of numpy/scipy allocations while parsing, and the
  resident-set growth of a fresh process, against the bytes of the layer matrices' stored entries
  (value + column index per stored entry, plus row pointers, for CSR; ``out x in x 8`` for dense);
* forward time of ``Generator.forward`` (float64, sparse arithmetic, one thread) against onnxruntime
  (float32, one thread, graph optimizations off, as the oracle runs it) for each batch size, timed
  alternately and reported as medians and their ratio.

No time is asserted anywhere; the machine may be busy. Numbers go to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:
    import onnxinv
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import onnxinv

from threadpoolctl import threadpool_limits  # noqa: E402

from onnxinv.building import IR_VERSION, build_model, random_generator_layers  # noqa: E402
from onnxinv.layers import Activation  # noqa: E402

LATENT = 100


def dcgan_64(ngf: int, seed: int = 0) -> onnx.ModelProto:
    """The DCGAN generator for 64x64x3 images (bias-free ConvTranspose, BN, ReLU; Tanh out)."""
    rng = np.random.default_rng(seed)
    channels = [LATENT, 8 * ngf, 4 * ngf, 2 * ngf, ngf, 3]
    nodes, inits = [], []
    src = "z"
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        w = rng.normal(0.0, 0.02, (c_in, c_out, 4, 4)).astype(np.float32)  # the DCGAN init
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        stride, pad = (1, 0) if i == 0 else (2, 1)
        conv = f"c{i}"
        nodes.append(
            helper.make_node(
                "ConvTranspose",
                [src, f"w{i}"],
                [conv],
                name=f"deconv{i}",
                strides=[stride] * 2,
                pads=[pad] * 4,
            )
        )
        if i == len(channels) - 2:
            nodes.append(helper.make_node("Tanh", [conv], ["x"], name="tanh"))
            break
        for name, value in (
            ("s", rng.uniform(0.5, 1.5, c_out)),
            ("b", rng.normal(0, 0.1, c_out)),
            ("m", rng.normal(0, 0.1, c_out)),
            ("v", rng.uniform(0.5, 1.5, c_out)),
        ):
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"bn{i}_{name}"))
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [conv, f"bn{i}_s", f"bn{i}_b", f"bn{i}_m", f"bn{i}_v"],
                [f"n{i}"],
                name=f"bn{i}",
            )
        )
        nodes.append(helper.make_node("Relu", [f"n{i}"], [f"h{i}"], name=f"relu{i}"))
        src = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "dcgan64",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", LATENT, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def wide_decoder(seed: int = 7) -> onnx.ModelProto:
    layers = random_generator_layers([20, 256, 12288], output_activation=Activation.TANH, rng=seed)
    return build_model(layers)


def matrix_bytes(generator: onnxinv.Generator) -> tuple[int, int, int]:
    """(bytes of the stored entries, of which sparse, stored entries) over all layers."""
    total = sparse = entries = 0
    for layer in generator.layers:
        w = layer.weight
        if layer.sparse:
            size = w.data.nbytes + w.indices.nbytes + w.indptr.nbytes
            sparse += size
        else:
            size = w.nbytes
        total += size
        entries += layer.nnz
    return total, sparse, entries


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def rss_growth(path: Path) -> int:
    """Peak resident-set growth (bytes) of a fresh process loading ``path`` (no self-check).

    Reads VmHWM / VmRSS from /proc (Linux): ru_maxrss would carry over the parent's peak across exec.
    """
    code = (
        "import onnxinv, sys\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) * 1024\n"
        "before = status('VmRSS')\n"
        "g = onnxinv.load(sys.argv[1], self_check=False)\n"
        "print(status('VmHWM') - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def bench(name: str, path: Path, repeats: int, batches: list[int]) -> dict:
    from onnxinv.loader import check_generator

    print(f"\n{name}: {path.stat().st_size / 1e6:.1f} MB file")
    load_s = median_time(lambda: onnxinv.load(path, self_check=False), repeats)
    tracemalloc.start()
    generator = onnxinv.load(path, self_check=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    start = time.perf_counter()
    check = check_generator(generator)
    check_s = time.perf_counter() - start
    total, sparse, entries = matrix_bytes(generator)
    rss = rss_growth(path)
    print("  layers: " + "; ".join(repr(la) for la in generator.layers))
    print(
        f"  load (parse + lowering): median {load_s:.2f} s over {repeats}; self-check {check_s:.2f} s ({check.describe()})"
    )
    print(
        f"  matrices: {entries:,} stored entries, {total / 1e6:.1f} MB ({sparse / 1e6:.1f} MB in CSR); "
        f"load working set: tracemalloc peak {peak / 1e6:.1f} MB = {peak / total:.2f}x, "
        f"RSS growth {rss / 1e6:.1f} MB = {rss / total:.2f}x (includes the model bytes and imports)"
    )
    oracle = generator.oracle
    rng = np.random.default_rng(0)
    rows = []
    for n in batches:
        z = rng.standard_normal((n, generator.latent_dim))
        generator.forward(z[:1])  # warm up both paths
        oracle.run(z[:1])
        ours, theirs = [], []
        for _ in range(repeats):  # alternate, so a busy spell hits both
            start = time.perf_counter()
            generator.forward(z)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            oracle.run(z)
            theirs.append(time.perf_counter() - start)
        a, b = float(np.median(ours)), float(np.median(theirs))
        rows.append({"batch": n, "ours_s": a, "onnxruntime_s": b, "ratio": a / b})
        print(
            f"  forward batch {n:>3}: onnxinv {a * 1e3:9.1f} ms   onnxruntime {b * 1e3:8.1f} ms   ratio {a / b:6.1f}x"
        )
    return {
        "model": name,
        "load_s": load_s,
        "check_s": check_s,
        "entries": entries,
        "matrix_bytes": total,
        "tracemalloc_peak_bytes": peak,
        "rss_growth_bytes": rss,
        "forward": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, default=64, help="DCGAN width (PyTorch's example uses 64)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        dcgan = Path(tmp) / f"dcgan64_ngf{args.ngf}.onnx"
        onnx.save(dcgan_64(args.ngf), str(dcgan))
        wide = Path(tmp) / "dense_20_256_12288_tanh.onnx"
        onnx.save(wide_decoder(), str(wide))
        results.append(bench(f"DCGAN 64x64x3, ngf={args.ngf}", dcgan, args.repeats, args.batches))
        results.append(bench("dense 20-256-12288 Tanh", wide, args.repeats, args.batches))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
