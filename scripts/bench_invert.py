"""Benchmark onnxinv's inversions against their floors, side by side in one process (issue "Speed at
every size").

Usage::

    python scripts/bench_invert.py                 # every row except the 50000-output layer
    python scripts/bench_invert.py --quick         # fewer observations, a 1000-observation batch
    python scripts/bench_invert.py --huge          # also 256-2048-50000 (800 MB of weights; needs ~4 GB)
    python scripts/bench_invert.py --rows exact,linf --count 30

Every onnxinv time is the wall time of a whole ``invert`` (or ``audit``) call: validation, solve,
refinement, the onnxruntime check and the evidence stage. Each floor is the least work that gives the
same answer, run on the same observations in the same process, alternating with onnxinv:

* exact: per layer, the active rows gathered, one Gram matrix and one Cholesky factorisation
  (LAPACK ``potrf`` / ``potrs``); nothing else (no checks, no onnxruntime).
* l_inf: a plain port of Algorithm 1 of Lei et al. to HiGHS (``scipy.optimize.linprog``, method
  ``highs``): per layer, a fresh LP ``min δ`` with ``δ <= ε`` for ``ε = ε_0 α^m``, ``m = 0, 1, ...``
  until it is feasible.
* l_1: onnxinv's own l_inf time on the same observations (the goal is relative to it).
* audit: twenty exact floors on the audit's samples (medians of ``--count`` alternating repeats; the
  classifier's audit once).
* batch: the exact floor for every observation plus one onnxruntime run of all latents.

Ratios are of medians; "CPU" ratios use the process's CPU time, which a busy machine disturbs less.
BLAS runs one thread (set before numpy is imported). The working set of the large rows is the peak
resident memory above the level at the start of the call (``/proc/self/clear_refs``, Linux) and
tracemalloc's peak (numpy's allocations). Models are built in code: random N(0, 1/n_out) weights,
float32 ONNX models, as exported generators are. Speed stays out of the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.linalg import lapack  # noqa: E402

from onnxinv.audit import audit  # noqa: E402
from onnxinv.building import random_generator_layers  # noqa: E402
from onnxinv.inversion import invert  # noqa: E402
from onnxinv.layers import Activation, Generator  # noqa: E402

ROWS = ("exact", "large", "linf", "linf-large", "l1", "audit", "batch")


def _generator(sizes: list[int], seed: int, output: Activation | None = None) -> Generator:
    return Generator.from_layers(random_generator_layers(sizes, rng=seed, output_activation=output))


def _label(sizes: list[int]) -> str:
    return "-".join(map(str, sizes))


def _clean(g: Generator, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.random.default_rng(seed).standard_normal((count, g.latent_dim))
    return z, g.forward(z)


def _noisy(g: Generator, count: int, seed: int, rel: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count, g.latent_dim))
    x = g.forward(z)
    levels = [rel * float(np.max(np.abs(row))) for row in x]
    x = x + np.stack([rng.uniform(-a, a, size=x.shape[1]) for a in levels])
    return z, x, levels


def _err(z: np.ndarray, z_true: np.ndarray) -> float:
    return float(np.linalg.norm(z - z_true) / np.linalg.norm(z_true))


class Clock:
    """Wall and CPU time of one call."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


# ----------------------------------------------------------------------------- floors


def exact_floor(g: Generator, x: np.ndarray) -> np.ndarray:
    """One Gram matrix and one Cholesky factorisation per layer on its active rows."""
    y = x
    for layer in reversed(g.layers):
        w = layer.dense_weight()
        active = y > 1e-9 * np.max(np.abs(y))
        a = w[active]
        gram = a.T @ a  # symmetric: .T is the same matrix in Fortran order, factored in place
        factor, _ = lapack.dpotrf(gram.T, lower=0, overwrite_a=1)
        y, _ = lapack.dpotrs(factor, a.T @ (y[active] - layer.bias[active]))
    return y


_PROBES: dict[int, np.ndarray] = {}  # the spread's fixed +-1 probes, by size (made once, as onnxinv's)


def reported_numbers(g: Generator, x: np.ndarray) -> list[float]:
    """Only the numerical work whose results an exact inversion reports, as straight-line code: per
    layer the active rows' Gram, its 1-norm, Cholesky, ``pocon`` condition estimate, solve, one step of
    iterative refinement, the RMS misfit, ``W u + b`` and the largest misfit on every row, the spread
    (the error estimate passed down), then the float64 forward pass and one onnxruntime run with its
    residual. No checks, steps, certificate or result objects: what is left of an inversion's cost in
    Python once everything but its arithmetic is gone (the exact row's note)."""
    y = x
    reported: list[float] = []  # per layer: condition estimate, RMS, largest misfit, error passed down
    for layer in reversed(g.layers):
        w, b = layer.weight, layer.bias
        scale = float(np.max(np.abs(y)))
        active = y > 1e-6 * scale
        a = w.take(active.nonzero()[0], axis=0)
        t = y[active] - b[active]
        gram = a.T @ a
        anorm = lapack.dlange("1", gram.T)
        factor, _ = lapack.dpotrf(gram.T, lower=0, clean=1, overwrite_a=1)
        rcond, _ = lapack.dpocon(factor, anorm)
        u, _ = lapack.dpotrs(factor, a.T @ t)
        step, _ = lapack.dpotrs(factor, a.T @ (t - a @ u))
        u = u + step
        r = a @ u - t
        rms = np.sqrt(r @ r / r.size)
        pre = w @ u + b
        misfit = np.max(np.abs(np.where(active, pre - y, np.maximum(pre - np.maximum(y, 0.0), 0.0))))
        if u.size not in _PROBES:
            _PROBES[u.size] = np.where(np.random.default_rng(0).random((u.size, 8)) < 0.5, -1.0, 1.0)
        s, _ = lapack.dtrtrs(factor, _PROBES[u.size], lower=0, trans=1)
        spread = np.sqrt(np.sum(s * s) / s.size)
        reported += [float(np.sqrt(1.0 / rcond)), float(rms), float(misfit), float(max(rms, misfit) * spread)]
        y = np.maximum(u, 0.0) if layer is not g.layers[0] else u
    h = y
    for layer in g.layers:
        h = np.maximum(h @ layer.weight.T + layer.bias, 0.0)
    out = g.run_onnx(y)
    return reported + [
        float(np.linalg.norm(h - x) / np.linalg.norm(x)),
        float(np.linalg.norm(out - x) / np.linalg.norm(x)),
    ]


def plain_linf(g: Generator, x: np.ndarray, noise_rel: float, alpha: float = 1.2) -> np.ndarray:
    """Algorithm 1 of Lei et al. as a plain loop of fresh HiGHS LPs (scipy's ``linprog``)."""
    from scipy.optimize import linprog

    y = x
    for i in reversed(range(len(g.layers))):
        layer = g.layers[i]
        w, b, n = layer.dense_weight(), layer.bias, layer.in_features
        eps = max(noise_rel * float(np.max(np.abs(y))), 1e-12)
        low = 0.0 if i > 0 else None
        while True:
            on = y > eps
            a_ub = np.vstack(
                [np.hstack([w, -np.ones((w.shape[0], 1))]), np.hstack([-w[on], -np.ones((on.sum(), 1))])]
            )
            b_ub = np.concatenate([y - b, -(y[on] - b[on])])
            c = np.zeros(n + 1)
            c[-1] = 1.0
            res = linprog(c, a_ub, b_ub, bounds=[(low, None)] * n + [(0.0, eps)], method="highs")
            if res.status == 0:
                break
            eps *= alpha
        y = res.x[:n]
    return y


# ----------------------------------------------------------------------------- memory


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def working_set(call) -> tuple[object, float, float, float]:
    """(result, seconds, peak RSS above the start in MB, tracemalloc peak in MB)."""
    start = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset the peak (VmHWM) to the current resident size
    except OSError:
        start = None
    tracemalloc.start()
    begin = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - begin
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _rss_kib("VmHWM")
    rss = float("nan") if start is None or peak is None else (peak - start) / 1024.0
    return out, seconds, rss, traced / 2**20


# ----------------------------------------------------------------------------- rows


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.notes: list[str] = []

    def add(self, setting: str, ours: str, floor: str, ratio: str, goal: str, met: bool | None) -> None:
        verdict = "-" if met is None else ("met" if met else "MISSED")
        self.rows.append((setting, ours, floor, ratio, goal, verdict))
        print(f"  {setting}: {ours} | floor {floor} | {ratio} | goal {goal}: {verdict}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"    {text}", flush=True)

    def markdown(self) -> str:
        head = ("setting", "onnxinv", "floor / reference", "ratio", "goal", "")
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def row_exact(table: Table, count: int, seed: int) -> None:
    for sizes in ([20, 100, 500], [20, 250, 600]):
        g = _generator(sizes, seed)
        z, x = _clean(g, count + 1, seed + 1)
        invert(g, x[0], method="exact")  # the onnxruntime session is built outside the timings
        ours, auto, floor, bare = [], [], [], []
        verdicts: dict[str, int] = {}
        for i in range(1, count + 1):
            with Clock() as f:
                zf = exact_floor(g, x[i])
            with Clock() as n:
                reported_numbers(g, x[i])
            with Clock() as e:
                r = invert(g, x[i], method="exact")
            with Clock() as a:
                invert(g, x[i])
            assert _err(zf, z[i]) < 1e-6, "the floor must recover the latent"
            floor.append(f)
            ours.append(e)
            auto.append(a)
            bare.append(n)
            verdicts[r.verdict.value] = verdicts.get(r.verdict.value, 0) + 1
        fw, fc = np.median([c.wall for c in floor]), np.median([c.cpu for c in floor])
        ew, ec = np.median([c.wall for c in ours]), np.median([c.cpu for c in ours])
        aw, ac = np.median([c.wall for c in auto]), np.median([c.cpu for c in auto])
        table.add(
            f"exact {_label(sizes)}",
            f"{ew * 1e3:.2f} ms (auto {aw * 1e3:.2f} ms)",
            f"{fw * 1e3:.2f} ms",
            f"{ew / fw:.1f}x wall, {ec / fc:.1f}x CPU (auto {aw / fw:.1f}x, {ac / fc:.1f}x)",
            "<= 2x",
            ew / fw <= 2.0,
        )
        nw, nc = np.median([c.wall for c in bare]), np.median([c.cpu for c in bare])
        table.note(
            f"verdicts {verdicts}; only the numbers a result reports (reported_numbers): "
            f"{nw * 1e3:.2f} ms, {nw / fw:.1f}x wall, {nc / fc:.1f}x CPU of the floor"
        )


def row_large(table: Table, count: int, seed: int, huge: bool) -> None:
    settings = [[128, 1024, 4096], [256, 2048, 16384]] + ([[256, 2048, 50000]] if huge else [])
    for sizes in settings:
        g = _generator(sizes, seed)
        z, x = _clean(g, count + 1, seed + 1)
        invert(g, x[0], method="exact")
        times, floors, mem, fmem, errs = [], [], [], [], []
        for i in range(1, count + 1):
            zf, tf, rf, pf = working_set(lambda i=i, g=g, x=x: exact_floor(g, x[i]))
            r, te, re, pe = working_set(lambda i=i, g=g, x=x: invert(g, x[i], method="exact"))
            floors.append(tf)
            times.append(te)
            fmem.append((rf, pf))
            mem.append((re, pe))
            errs.append((r.verdict.value, _err(r.z, z[i]), _err(zf, z[i])))
        ft, et = float(np.median(floors)), float(np.median(times))
        frss, ftr = np.median([m[0] for m in fmem]), np.median([m[1] for m in fmem])
        ers, etr = np.median([m[0] for m in mem]), np.median([m[1] for m in mem])
        table.add(
            f"exact {_label(sizes)}",
            f"{et:.2f} s",
            f"{ft:.2f} s",
            f"{et / ft:.2f}x; working set {etr / max(ftr, 1e-9):.2f}x (numpy peak)"
            + (f", {ers / frss:.2f}x (RSS peak)" if frss >= 8 else ""),
            "<= 1.5x; <= 1.2x",
            et / ft <= 1.5 and etr / max(ftr, 1e-9) <= 1.2,
        )
        table.note(
            f"peak above start: onnxinv {ers:.0f} MB RSS / {etr:.0f} MB numpy, floor {frss:.0f} MB / {ftr:.0f} MB; "
            f"weights {sum(layer.nnz for layer in g.layers) * 8 / 2**20:.0f} MB; (verdict, err, floor err) {errs}"
        )
        del g


def row_linf(table: Table, count: int, seed: int) -> dict[str, float]:
    g = _generator([20, 100, 500], seed)
    z, x, levels = _noisy(g, count + 1, seed + 2, 1e-3)
    invert(g, x[0], method="linf", noise=levels[0])
    plain, ours, auto, errs = [], [], [], []
    for i in range(1, count + 1):
        with Clock() as p:
            zp = plain_linf(g, x[i], 1e-3)
        with Clock() as o:
            r = invert(g, x[i], method="linf", noise=levels[i])
        with Clock() as a:
            invert(g, x[i], noise=levels[i])
        plain.append(p)
        ours.append(o)
        auto.append(a)
        errs.append((_err(r.z, z[i]), _err(zp, z[i]), r.verdict.value))
    pw, ow, aw = (float(np.median([c.wall for c in s])) for s in (plain, ours, auto))
    pc, oc = (float(np.median([c.cpu for c in s])) for s in (plain, ours))
    table.add(
        "linf 20-100-500, noise 1e-3·max abs x",
        f"{ow * 1e3:.0f} ms (auto {aw * 1e3:.0f} ms)",
        f"plain HiGHS port {pw * 1e3:.0f} ms",
        f"{ow / pw:.2f}x wall, {oc / pc:.2f}x CPU (auto {aw / pw:.2f}x)",
        "<= 0.25x",
        ow / pw <= 0.25,
    )
    ours_err, plain_err = np.median([e[0] for e in errs]), np.median([e[1] for e in errs])
    table.note(
        f"median rel. error onnxinv {ours_err:.2e}, plain port {plain_err:.2e}; "
        f"verdicts {sorted({e[2] for e in errs})}"
    )
    return {"linf": ow, "linf_cpu": oc, "x": x, "levels": levels, "z": z, "g": g}


def row_linf_large(table: Table, count: int, seed: int) -> None:
    g = _generator([128, 1024, 4096], seed)
    z, x, levels = _noisy(g, count, seed + 3, 1e-3)
    g.run_onnx(z[:1])
    for i in range(count):
        with Clock() as c:
            r = invert(g, x[i], method="linf", noise=levels[i], time_limit=200.0)
        err = _err(r.z, z[i])
        table.add(
            "linf 128-1024-4096, noise 1e-3·max abs x",
            f"{c.wall:.1f} s, {r.verdict.value}, rel. error {err:.1e}",
            "-",
            "-",
            "<= 10 s, right answer",
            c.wall <= 10.0 and r.verdict.success,
        )
        table.note("; ".join(f"layer {s.layer}: {s.seconds:.1f} s, {s.message[:90]}" for s in r.steps))


def row_l1(table: Table, count: int, seed: int, linf: dict[str, object]) -> None:
    g, x, levels, z = linf["g"], linf["x"], linf["levels"], linf["z"]
    ours, errs = [], []
    for i in range(1, count + 1):
        with Clock() as c:
            r = invert(g, x[i], method="l1", noise=levels[i])
        ours.append(c)
        errs.append(_err(r.z, z[i]))
    ow, oc = float(np.median([c.wall for c in ours])), float(np.median([c.cpu for c in ours]))
    table.add(
        "l1 (Algorithm 2) 20-100-500",
        f"{ow * 1e3:.0f} ms",
        f"linf {linf['linf'] * 1e3:.0f} ms",
        f"{ow / linf['linf']:.2f}x wall, {oc / linf['linf_cpu']:.2f}x CPU",
        "<= 2x linf",
        ow / linf["linf"] <= 2.0,
    )
    table.note(f"median rel. error {np.median(errs):.2e}")


def row_audit(table: Table, count: int, seed: int) -> None:
    g = _generator([20, 100, 500], seed)
    g.run_onnx(np.zeros((1, 20)))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((20, 20))
    x = g.run_onnx(z)  # the audit's own observations (its latents are drawn the same way)
    audit(g, samples=20, seed=seed)  # first-call costs (lazy imports, sessions) outside the timings
    ours, twenty = [], []
    for _ in range(count):
        with Clock() as c:
            report = audit(g, samples=20, seed=seed)
        with Clock() as f:
            for i in range(20):
                exact_floor(g, x[i])
        ours.append(c)
        twenty.append(f)
    ow, oc = float(np.median([c.wall for c in ours])), float(np.median([c.cpu for c in ours]))
    fw, fc = float(np.median([c.wall for c in twenty])), float(np.median([c.cpu for c in twenty]))
    table.add(
        "audit 20-100-500, 20 samples",
        f"{ow * 1e3:.0f} ms ({report.status.value})",
        f"twenty exact floors {fw * 1e3:.1f} ms",
        f"{ow / fw:.1f}x wall, {oc / fc:.1f}x CPU",
        "<= 2x",
        ow / fw <= 2.0,
    )
    classifier = _generator([784, 256, 10], seed, Activation.IDENTITY)
    classifier.run_onnx(np.zeros((1, 784)))
    with Clock() as c:
        report = audit(classifier, samples=20, seed=seed)
    table.add(
        "audit 784-256-10 classifier (logits), 20 samples",
        f"{c.wall:.1f} s ({report.status.value})",
        "-",
        "-",
        "<= 10 s",
        c.wall <= 10.0,
    )
    table.note(f"verdicts {report.inversion_verdicts}")


def row_batch(table: Table, count: int, seed: int) -> None:
    g = _generator([20, 60, 784], seed)
    z, x = _clean(g, count, seed + 4)
    x = g.run_onnx(z)  # float32 observations, as a model's outputs are
    invert(g, x[0])
    # three alternating repeats: one run of either is at the mercy of the shared machine's load
    floors, ours, ratios = [], [], []
    for _ in range(3):
        with Clock() as f:
            latents = np.stack([exact_floor(g, row) for row in x])
            g.run_onnx(latents)
        with Clock() as c:
            res = invert(g, x, workers=2)
        floors.append(f.wall)
        ours.append(c.wall)
        ratios.append(c.wall / f.wall)
    err = float(np.median(np.linalg.norm(res.z - z, axis=1) / np.linalg.norm(z, axis=1)))
    ratio = float(np.median(ratios))
    table.add(
        f"batch {count} obs of 20-60-784, 2 workers",
        f"{np.median(ours):.1f} s",
        f"vectorised floor {np.median(floors):.1f} s (one process)",
        f"{ratio:.2f}x (median of 3 paired runs: {', '.join(f'{r:.2f}' for r in ratios)})",
        "<= 2x",
        ratio <= 2.0,
    )
    table.note(f"median rel. error {err:.1e}; verdicts {dict((k, v) for k, v in res.counts.items() if v)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer observations, a 1000-observation batch")
    parser.add_argument("--huge", action="store_true", help="also the 256-2048-50000 layer (~4 GB)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to run, from {', '.join(ROWS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of models, latents and noise (default 0)")
    parser.add_argument("--count", type=int, default=None, help="observations per small setting")
    parser.add_argument("--batch", type=int, default=None, help="observations in the batch row")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    count = args.count or (5 if args.quick else 20)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"onnxinv speed benchmark: seed {args.seed}, {count} observations per small setting, python "
        f"{platform.python_version()}, {os.cpu_count()} cpu(s), BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS')}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    table = Table()
    linf: dict[str, object] | None = None
    if "exact" in rows:
        row_exact(table, count, args.seed)
    if "large" in rows:
        row_large(table, 1 if args.quick else 3, args.seed, args.huge)
    if "linf" in rows or "l1" in rows:
        linf = row_linf(table, count, args.seed)
    if "linf-large" in rows:
        row_linf_large(table, 1, args.seed)
    if "l1" in rows and linf is not None:
        row_l1(table, count, args.seed, linf)
    if "audit" in rows:
        row_audit(table, count, args.seed)
    if "batch" in rows:
        row_batch(table, args.batch or (1000 if args.quick else 10000), args.seed)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
