"""Relative latent error against observation noise on random 20-100-500 ReLU nets (Fig. 1a-b of the seed paper).

Each run draws a new network with i.i.d. N(0, 1/n_out) weights (ReLU on both layers, no bias, as in the
authors' code), ``z* ~ N(0, I_20)`` and noise ``e``: uniform U(-a, a) or Gaussian N(0, a) (standard deviation
a) on every output, a = 1e-6 ... 1e-1. The observation is ``x = G(z*) + e`` (float64). Every method inverts the
same observations: onnxinv's ``linf`` (Algorithm 1), ``l1`` (Algorithm 2), ``relaxed`` (eq. 8), and
gradient descent as in the paper (lr 1, at most 1000 iterations or gradient norm below 1e-9). The noisy
methods are told the noise level a, as in the authors' experiments.

Outputs in ``--out``: ``fig1_error_vs_noise_runs.csv`` (one row per run and method),
``fig1_error_vs_noise.csv`` (median and quartiles per noise kind, level and method),
``fig1_error_vs_noise.png``.

    python scripts/experiments/fig1_error_vs_noise.py             # full run
    python scripts/experiments/fig1_error_vs_noise.py --quick     # smoke mode
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from onnxinv.building import random_generator_layers  # noqa: E402
from onnxinv.layers import Activation, Generator  # noqa: E402

NAME = "fig1_error_vs_noise"
KINDS = ("uniform", "gaussian")


def parse_args(argv):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=common.parse_ints, default=[20, 100, 500], help="layer sizes k,n1,n")
    parser.add_argument("--runs", type=int, default=None, help="runs per noise kind and level (100)")
    parser.add_argument("--levels", type=common.parse_floats, default=None, help="noise levels a")
    parser.add_argument("--kinds", type=common.parse_names, default=list(KINDS))
    parser.add_argument("--methods", type=common.parse_names, default=["linf", "l1", "relaxed", "gd"])
    args = parser.parse_args(argv)
    if args.levels is None:
        args.levels = [1e-3, 1e-1] if args.quick else [10.0**-i for i in range(6, 0, -1)]
    if args.runs is None:
        args.runs = 3 if args.quick else 100
    return args


def run_instance(task) -> list[dict]:
    seed, sizes, kind, kind_index, level_index, level, run, methods = task
    rng = common.instance_rng(seed, 1, kind_index, level_index, run)
    layers = random_generator_layers(sizes, activation=Activation.RELU, rng=rng)
    generator = Generator.from_layers(layers, dtype="float64")
    z_true = rng.standard_normal(sizes[0])
    clean = generator.forward(z_true)
    noise = common.draw_noise(rng, kind, level, clean.shape[0])
    x = clean + noise
    gd_seed = int(rng.integers(2**31))
    return common.evaluate_methods(
        generator,
        x,
        z_true,
        methods,
        noise_level=level,
        gd_seed=gd_seed,
        base={
            "dataset": "random_" + "_".join(map(str, sizes)),
            "noise_kind": kind,
            "noise_level": level,
            "run": run,
            "rel_noise": float(np.linalg.norm(noise) / np.linalg.norm(clean)),
        },
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    common.apply_common_args(args)
    title = f"random {'-'.join(map(str, args.sizes))} ReLU nets"
    if args.replot:
        rows = common.read_table(args.out / f"{NAME}_runs.csv")
        summary = common.read_table(args.out / f"{NAME}.csv")
        common.plot_noise(rows, summary, args, args.out / f"{NAME}.png", title=title)
        return 0
    elapsed = common.timer()
    tasks = [
        (args.seed, args.sizes, kind, KINDS.index(kind), li, level, run, args.methods)
        for kind in args.kinds
        for li, level in enumerate(args.levels)
        for run in range(args.runs)
    ]
    print(f"{NAME}: {len(tasks)} observations x {len(args.methods)} methods, {args.workers} workers")
    rows = common.run_tasks(run_instance, tasks, args.workers, label=NAME)
    common.write_csv(args.out / f"{NAME}_runs.csv", rows, common.NOISE_RUN_COLUMNS)
    summary = common.summarize_noise(rows)
    common.write_csv(args.out / f"{NAME}.csv", summary, common.NOISE_SUMMARY_COLUMNS)
    common.plot_noise(rows, summary, args, args.out / f"{NAME}.png", title=title)
    common.record_run_time(args.out, NAME, elapsed(), args)
    print(f"{NAME}: done in {elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
