"""Shared pieces of the experiment scripts: command line, seeding, identifiability, method runs, CSV, plots.

The scripts reproduce the experiments of Lei, Jalal, Dhillon, Dimakis, "Inverting Deep Generative Models, One
Layer at a Time" (NeurIPS 2019) with onnxinv's methods and the gradient-descent baseline in the same run.
Everything here uses numpy, onnxinv and the standard library; matplotlib is optional (plots are skipped with
a message when it is missing, the CSV files are always written).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "benchmarks"
SAMPLE_MODELS = REPO / "sample_models"

try:
    import onnxinv  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from onnxinv.layers import Activation, Generator  # noqa: E402

# Success criterion of the paper's Fig. 2 (and of the work it follows): relative latent error at most 1e-3.
SUCCESS_REL_ERROR = 1e-3

# The methods the scripts compare, by the name used in the CSV files: onnxinv method and Settings overrides.
# "gd" is gradient descent as in the paper's synthetic experiments: one random start, plain steps of
# size 1 (onnxinv halves a step that would raise the loss), at most 1000 iterations or gradient norm
# below 1e-9. "gd4" is onnxinv's default baseline: 4 random starts, 2 plain and 2 Adam, best kept.
METHOD_SPECS: dict[str, tuple[str, dict]] = {
    "auto": ("auto", {}),
    "exact": ("exact", {}),
    "sparse": ("sparse", {}),
    "linf": ("linf", {}),
    "l1": ("l1", {}),
    "relaxed": ("relaxed", {}),
    "gd": ("gd", {"restarts": 1, "lr": 1.0, "iterations": 1000, "gd_optimizer": "gd"}),
    "gd4": ("gd", {}),
}

# Time limit per observation and method, handed to ``invert`` (set from --time-limit).
TIME_LIMIT = 10.0

# Methods whose answer carries a uniqueness verdict worth scoring (gd's verdict is an after-the-fact
# analysis at its point; it is recorded but not scored).
VERDICT_METHODS = ("auto", "exact", "sparse", "linf", "l1", "relaxed")

# Methods that take the noise level of the observation.
NOISY_METHODS = ("linf", "l1", "relaxed")


# --------------------------------------------------------------------------------------------------
# command line


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every experiment script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0, help="base seed; every instance derives its own")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny counts, checks the pipeline, judges nothing"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for CSV and PNG files")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (1: run in this process)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the CSV files only")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw the plots from the CSV files already in --out; run nothing",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        help=f"seconds per observation and method (default {TIME_LIMIT:g}); a run that hits it counts as failed",
    )
    return parser


def apply_common_args(args) -> None:
    """Settings every run of this process (and of its forked workers) uses."""
    global TIME_LIMIT
    TIME_LIMIT = float(args.time_limit)


def parse_floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def instance_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for one instance, fixed by the base seed and the instance's keys."""
    return np.random.default_rng([seed, *keys])


# --------------------------------------------------------------------------------------------------
# worker processes


def _limit_threads() -> None:
    """One BLAS thread per process: the pools already use every core."""
    try:
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError:
        return
    threadpool_limits(1)


def _init_worker(initializer: Callable | None, initargs: tuple) -> None:
    _limit_threads()
    if initializer is not None:
        initializer(*initargs)


def run_tasks(
    func: Callable,
    tasks: Sequence,
    workers: int,
    *,
    initializer: Callable | None = None,
    initargs: tuple = (),
    label: str = "",
) -> list:
    """``[func(t) for t in tasks]``, in a process pool when ``workers > 1``; results keep the task order.

    ``func`` returns a list of rows per task; the lists are concatenated.
    """
    rows: list = []
    start = time.perf_counter()
    step = max(1, len(tasks) // 10)
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(initializer, initargs)
        for i, task in enumerate(tasks):
            rows.extend(func(task))
            _progress(label, i + 1, len(tasks), step, start)
        return rows
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(initializer, initargs)
    ) as pool:
        for i, part in enumerate(pool.map(func, tasks, chunksize=1)):
            rows.extend(part)
            _progress(label, i + 1, len(tasks), step, start)
    return rows


def _progress(label: str, done: int, total: int, step: int, start: float) -> None:
    if label and (done % step == 0 or done == total):
        print(f"  {label}: {done}/{total} tasks, {time.perf_counter() - start:.0f} s", flush=True)


# --------------------------------------------------------------------------------------------------
# identifiability from the true hidden values


@dataclass(frozen=True)
class LayerRank:
    """One layer's active system at the true point."""

    rows: int  # rows in the active system (active units, or every row for invertible activations)
    rank: int
    inputs: int

    @property
    def full(self) -> bool:
        return self.rank == self.inputs


def active_rows(layer, h_out: np.ndarray, rel_tol: float = 1e-9) -> np.ndarray:
    """Rows of ``layer`` whose output determines its input linearly at the true output ``h_out``."""
    if layer.activation is Activation.RELU:
        scale = float(np.max(np.abs(h_out))) if h_out.size else 0.0
        return h_out > rel_tol * max(scale, np.finfo(float).tiny)
    if layer.activation is Activation.SIGMOID:
        return (h_out > 0.0) & (h_out < 1.0)
    if layer.activation is Activation.TANH:
        return np.abs(h_out) < 1.0
    return np.ones(h_out.shape, dtype=bool)  # identity, LeakyReLU: every row is an equation


def layer_ranks(generator: Generator, z: np.ndarray, observed: np.ndarray | None = None) -> list[LayerRank]:
    """For every layer, the rank of the rows that pin its input down, from the true hidden values.

    The criterion of Theorem 2 of the paper: a ReLU layer's input is determined by its output iff the weight
    rows of the active units have full column rank (for LeakyReLU and invertible maps: all rows).
    ``observed`` (bool, per output) restricts the last layer to the observed outputs.
    """
    values = generator.hidden_values(np.asarray(z, dtype=np.float64))
    ranks = []
    last = len(generator.layers) - 1
    for i, layer in enumerate(generator.layers):
        rows = active_rows(layer, values[i + 1])
        if i == last and observed is not None:
            rows = rows & np.asarray(observed, dtype=bool).reshape(-1)
        w = layer.weight[rows]
        rank = int(np.linalg.matrix_rank(w)) if w.shape[0] else 0
        ranks.append(LayerRank(int(rows.sum()), rank, layer.in_features))
    return ranks


def jacobian_rank(generator: Generator, z: np.ndarray, observed: np.ndarray | None = None) -> int:
    """Rank of dG/dz at ``z`` (restricted to observed outputs).

    Below ``k`` the true latent lies in a flat piece of the generator: a whole segment of latents gives the
    same output, so no method can single it out. Full rank means the latent is locally unique.
    """
    values = generator.hidden_values(np.asarray(z, dtype=np.float64))
    jac = np.eye(generator.latent_dim)
    for i, layer in enumerate(generator.layers):
        a = layer.preactivation(values[i])
        if layer.activation is Activation.RELU:
            d = (a > 0).astype(float)
        elif layer.activation is Activation.LEAKY_RELU:
            d = np.where(a >= 0, 1.0, layer.slope)
        elif layer.activation is Activation.SIGMOID:
            d = values[i + 1] * (1.0 - values[i + 1])
        elif layer.activation is Activation.TANH:
            d = 1.0 - values[i + 1] ** 2
        else:
            d = np.ones_like(a)
        jac = d[:, None] * (layer.weight @ jac)
    if observed is not None:
        jac = jac[np.asarray(observed, dtype=bool).reshape(-1)]
    return int(np.linalg.matrix_rank(jac))


# --------------------------------------------------------------------------------------------------
# running one method


@dataclass
class Outcome:
    """What one method returned on one observation."""

    method: str
    z: np.ndarray | None
    verdict: str
    seconds: float
    cpu_seconds: float = math.nan
    error: str = ""
    evidence: str = ""  # what backs the verdict (onnxinv.inversion.verdict.EvidenceKind value)
    witness: bool = False  # a second latent reproducing x came with the verdict
    reproduces: bool = False  # onnxruntime confirmed that z reproduces x

    def rel_error(self, z_true: np.ndarray) -> float:
        if self.z is None or not np.all(np.isfinite(self.z)):
            return math.inf
        return float(np.linalg.norm(self.z - z_true) / np.linalg.norm(z_true))


def run_method(
    generator: Generator,
    x: np.ndarray,
    method: str,
    *,
    noise: float | None = None,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> Outcome:
    """Invert one observation with ``method`` (a key of METHOD_SPECS); never raises.

    A failure is an outcome with verdict "error" and the exception's first line. ``seconds`` is the wall
    time of the whole ``invert`` call, verification through onnxruntime included; ``cpu_seconds`` the CPU
    time of this process over the same call (every solver here runs on one thread), which a busy machine
    inflates much less than the wall time.
    """
    from onnxinv.inversion import Settings, invert

    api_method, overrides = METHOD_SPECS[method]
    settings = Settings(**overrides) if overrides else None
    start, cpu = time.perf_counter(), time.process_time()
    try:
        result = invert(
            generator,
            x,
            method=api_method,
            noise=noise,
            mask=mask,
            seed=seed,
            settings=settings,
            batch=False,
            time_limit=TIME_LIMIT,
        )
    except Exception as exc:  # recorded per instance; one failure must not stop a sweep
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        text = str(exc).splitlines()[0] if str(exc) else ""
        if os.environ.get("ONNXINV_EXPERIMENTS_TRACEBACK"):
            traceback.print_exc()
        return Outcome(method, None, "error", seconds, cpu, f"{type(exc).__name__}: {text}"[:200])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    z = np.asarray(result.z, dtype=np.float64).reshape(-1)
    verdict = getattr(result.verdict, "value", str(result.verdict))
    return Outcome(
        method,
        z,
        verdict,
        seconds,
        cpu,
        evidence=result.evidence.kind.value,
        witness=result.witness is not None,
        reproduces=bool(result.reproduces),
    )


# What may back each exit-0 verdict (the verdict contract, onnxinv.inversion.verdict).
BACKING = {
    "unique": ("layerwise", "milp", "stability", "milp-bounds"),
    "not unique": ("witness", "null-direction"),
}


def honest_answer(out: Outcome, recovered: bool) -> bool:
    """An exit-0 verdict backed by its evidence and consistent with the known z*.

    "unique": a certificate (layer-wise or MILP) and z* recovered; "not unique": a witness latent that
    onnxruntime confirmed; "fits": onnxruntime confirmed the fit (no claim about uniqueness is made).
    "no preimage" on a realizable observation, "not found" and errors are not honest successes.
    """
    if out.verdict == "unique":
        return out.evidence in BACKING["unique"] and recovered
    if out.verdict == "not unique":
        return out.evidence in BACKING["not unique"] and out.witness
    if out.verdict == "fits":
        return out.reproduces
    return False


# --------------------------------------------------------------------------------------------------
# noise


def draw_noise(rng: np.random.Generator, kind: str, level: float, size: int) -> np.ndarray:
    """``uniform``: U(-a, a) per entry; ``gaussian``: N(0, a) (a is the standard deviation), as in the paper."""
    if kind == "uniform":
        return rng.uniform(-level, level, size)
    if kind == "gaussian":
        return rng.normal(0.0, level, size)
    raise ValueError(f"unknown noise kind {kind!r}: use uniform or gaussian")


# --------------------------------------------------------------------------------------------------
# tables


def fmt(value) -> str:
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([fmt(row.get(c, "")) for c in columns])
    print(f"wrote {path}")
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_table(path: Path) -> list[dict]:
    """``read_csv`` with numbers turned into floats (for redrawing plots from saved runs)."""
    rows = read_csv(path)
    for row in rows:
        for key, value in row.items():
            with contextlib.suppress(TypeError, ValueError):
                row[key] = float(value)
    return rows


def group_rows(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentiles (inf counts as the largest value; nan when empty)."""
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    q = np.percentile(v, [25, 50, 75], method="lower" if np.isinf(v).any() else "linear")
    return float(q[0]), float(q[1]), float(q[2])


def count_timeouts(rows: Sequence[dict]) -> int:
    """Runs that used up the time limit (their answer is whatever the method had at that point)."""
    return sum(float(r["seconds"]) >= 0.98 * TIME_LIMIT for r in rows)


def median(values: Sequence[float]) -> float:
    return quantiles(values)[1]


# --------------------------------------------------------------------------------------------------
# noise sweeps (shared by the random-net and the digits experiments)

NOISE_RUN_COLUMNS = [
    "dataset",
    "noise_kind",
    "noise_level",
    "run",
    "method",
    "rel_error",
    "rel_noise",
    "residual_rel_l2",
    "verdict",
    "seconds",
    "cpu_seconds",
    "error",
]
NOISE_SUMMARY_COLUMNS = [
    "dataset",
    "noise_kind",
    "noise_level",
    "method",
    "runs",
    "median_rel_error",
    "q25_rel_error",
    "q75_rel_error",
    "max_rel_error",
    "median_rel_noise",
    "median_seconds",
    "median_cpu_seconds",
    "failures",
    "timeouts",
]


def output_residual(generator: Generator, z: np.ndarray | None, x: np.ndarray, observed=None) -> float:
    """``||G(z) - x|| / ||x||`` (float64 forward pass), on the observed entries."""
    if z is None or not np.all(np.isfinite(z)):
        return math.inf
    r = generator.forward(z).reshape(-1) - x.reshape(-1)
    xs = x.reshape(-1)
    if observed is not None:
        keep = np.asarray(observed, dtype=bool).reshape(-1)
        r, xs = r[keep], xs[keep]
    return float(np.linalg.norm(r) / max(np.linalg.norm(xs), np.finfo(float).tiny))


def evaluate_methods(
    generator: Generator,
    x: np.ndarray,
    z_true: np.ndarray,
    methods: Sequence[str],
    *,
    noise_level: float | None,
    gd_seed: int,
    base: dict,
    mask: np.ndarray | None = None,
    keep_z: bool = False,
) -> list[dict]:
    """Run every method on one observation; one row per method (``base`` plus the outcome)."""
    rows = []
    for method in methods:
        # Every method is told the noise level (gradient descent only uses it for its verdict).
        out = run_method(generator, x, method, noise=noise_level, mask=mask, seed=gd_seed)
        row = dict(base)
        row.update(
            {
                "method": method,
                "rel_error": out.rel_error(z_true),
                "residual_rel_l2": output_residual(generator, out.z, x, mask),
                "verdict": out.verdict,
                "seconds": out.seconds,
                "cpu_seconds": out.cpu_seconds,
                "error": out.error,
            }
        )
        if keep_z:
            row["z"] = out.z
        rows.append(row)
    return rows


def summarize_noise(rows: list[dict]) -> list[dict]:
    """Median, quartiles and worst relative latent error per dataset, noise kind, level and method."""
    summary = []
    keys = ["dataset", "noise_kind", "noise_level", "method"]
    for key, group in group_rows(rows, keys).items():
        errors = [r["rel_error"] for r in group]
        q25, q50, q75 = quantiles(errors)
        finite = [e for e in errors if math.isfinite(e)]
        summary.append(
            {
                **dict(zip(keys, key)),
                "runs": len(group),
                "median_rel_error": q50,
                "q25_rel_error": q25,
                "q75_rel_error": q75,
                "max_rel_error": max(errors) if errors else math.nan,
                "median_rel_noise": median([r["rel_noise"] for r in group]),
                "median_seconds": median([r["seconds"] for r in group]),
                "median_cpu_seconds": median([r["cpu_seconds"] for r in group]),
                "failures": len(errors) - len(finite),
                "timeouts": count_timeouts(group),
            }
        )
    return summary


def plot_noise(rows: list[dict], summary: list[dict], args, path: Path, title: str) -> None:
    """One panel per noise kind: every run as a faint dot, the median as a line, the quartiles as a band."""
    plt = pyplot(args.no_plots)
    if plt is None:
        return
    kinds = [k for k in args.kinds if any(s["noise_kind"] == k for s in summary)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.0), squeeze=False, sharey=True)
    names = {"uniform": "uniform noise U(-a, a)", "gaussian": "Gaussian noise N(0, a)"}
    offsets = np.linspace(-0.12, 0.12, len(args.methods)) if len(args.methods) > 1 else [0.0]
    rng = np.random.default_rng(0)
    floor = 1e-12
    for ax, kind in zip(axes[0], kinds):
        for method, offset in zip(args.methods, offsets):
            st = style(method)
            pts = [r for r in rows if r["noise_kind"] == kind and r["method"] == method]
            lv = np.array([r["noise_level"] for r in pts], dtype=float)
            er = np.array([r["rel_error"] for r in pts], dtype=float)
            er = np.where(np.isfinite(er), np.maximum(er, floor), np.nan)
            jitter = 10 ** (offset + rng.uniform(-0.03, 0.03, lv.size))
            ax.scatter(lv * jitter, er, s=3, alpha=0.15, color=st.get("color"), lw=0)
            srow = sorted(
                (s for s in summary if s["noise_kind"] == kind and s["method"] == method),
                key=lambda s: s["noise_level"],
            )
            lv_s = np.array([s["noise_level"] for s in srow], dtype=float) * 10**offset
            ax.fill_between(
                lv_s,
                np.maximum([s["q25_rel_error"] for s in srow], floor),
                np.maximum([s["q75_rel_error"] for s in srow], floor),
                color=st.get("color"),
                alpha=0.15,
                lw=0,
            )
            ax.plot(
                lv_s,
                np.maximum([s["median_rel_error"] for s in srow], floor),
                marker=st.get("marker"),
                color=st.get("color"),
                label=st["label"],
                ms=5,
                lw=1.5,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{title}\n{names.get(kind, kind)}", fontsize=10)
        ax.set_xlabel("noise level a")
        ax.grid(alpha=0.3, which="major")
    axes[0][0].set_ylabel("relative latent error ||z - z*|| / ||z*||")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# plots (optional)


def pyplot(no_plots: bool = False):
    """matplotlib.pyplot with the Agg backend, or None (and a message) when plots are off or unavailable."""
    if no_plots:
        print("plots: skipped (--no-plots); CSV files written")
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots: skipped, matplotlib is not installed (pip install matplotlib); CSV files written")
        return None
    return plt


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path}")
    return path


METHOD_STYLE = {
    "exact": {"color": "tab:blue", "marker": "o", "label": "exact (least squares)", "ls": "-"},
    "auto": {"color": "tab:cyan", "marker": "D", "label": "auto"},
    "linf": {"color": "tab:orange", "marker": "s", "label": "l_inf LP", "ls": "--"},
    "l1": {"color": "tab:green", "marker": "^", "label": "l_1 LP"},
    "relaxed": {"color": "tab:purple", "marker": "v", "label": "relaxed LP"},
    "gd": {"color": "tab:red", "marker": "x", "label": "gradient descent (paper: 1 start, lr 1)"},
    "gd4": {"color": "tab:brown", "marker": "+", "label": "gradient descent (4 starts, plain + Adam)"},
}


def style(method: str) -> dict:
    return METHOD_STYLE.get(method, {"label": method})


RUN_TIME_COLUMNS = [
    "script",
    "seconds",
    "cpu_count",
    "workers",
    "quick",
    "seed",
    "load_1min",
    "python",
    "onnxinv_commit",
    "finished",
]


def source_version() -> str:
    """The checkout's commit, with "+modified" when onnxinv/ has uncommitted changes ("" outside git)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "onnxinv"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+modified" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def record_run_time(out: Path, script: str, seconds: float, args) -> None:
    """Update this script's row of ``run_times.csv`` in ``out`` (the other scripts' rows are kept)."""
    import datetime
    import platform

    path = Path(out) / "run_times.csv"
    rows = [r for r in read_csv(path) if r.get("script") != script] if path.is_file() else []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    rows.append(
        {
            "script": script,
            "seconds": seconds,
            "cpu_count": os.cpu_count(),
            "workers": args.workers,
            "quick": bool(args.quick),
            "seed": args.seed,
            "load_1min": load,
            "python": platform.python_version(),
            "onnxinv_commit": source_version(),
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
    )
    write_csv(path, rows, RUN_TIME_COLUMNS)


def timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
