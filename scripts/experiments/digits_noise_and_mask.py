"""The shipped trained digits decoder: error against noise, denoising and inpainting (Figs. 1c-d, 3, 4 of the paper).

Model: ``sample_models/digits_vae_legacy.onnx`` (z (8) -> 40 ReLU, BatchNorm folded -> 64 sigmoid, an 8x8
image), loaded with ``onnxinv.load``. Latents are drawn from the VAE prior N(0, I_8); clean observations are
computed by onnxruntime from the model itself (float32), then noise is added in float64.

* **Noise sweep** (Fig. 1c-d): uniform U(-a, a) and Gaussian N(0, a) pixel noise, a = 1e-6 ... 1e-1;
  ``linf``, ``l1``, ``relaxed`` and gradient descent on the same observations; relative latent error.
* **Inpainting** (Fig. 4): a random 10% of the pixels is hidden (``mask``; 90% observed, the authors'
  ``p = 0.9``), clean observation; ``exact``, ``linf`` and gradient descent; relative latent error and the
  error on the hidden pixels of the re-generated image.
* **Denoising** (Fig. 3): Gaussian pixel noise of standard deviation ``--denoise-sigma`` (0.1), all pixels
  observed; ``linf``, ``l1`` and gradient descent.
* A picture grid of the first runs of both (observation with hidden pixels shown black and outlined,
  truth, ours (l_inf LP), gradient descent), 8x8 images scaled up.

Outputs in ``--out``: ``digits_noise_runs.csv``, ``digits_noise.csv``, ``digits_noise.png``,
``digits_mask_runs.csv``, ``digits_mask.csv``, ``digits_recovery_grid.png``.

    python scripts/experiments/digits_noise_and_mask.py             # full run
    python scripts/experiments/digits_noise_and_mask.py --quick     # smoke mode
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import onnxinv  # noqa: E402

MODEL = common.SAMPLE_MODELS / "digits_vae_legacy.onnx"
DATASET = "digits_vae_legacy"
KINDS = ("uniform", "gaussian")
SIDE = 8

MASK_RUN_COLUMNS = [
    "task",
    "run",
    "method",
    "observed",
    "noise_sigma",
    "identifiable",
    "rel_error",
    "hidden_pixel_rmse",
    "observed_pixel_rmse",
    "residual_rel_l2",
    "verdict",
    "seconds",
    "cpu_seconds",
    "error",
]
MASK_SUMMARY_COLUMNS = [
    "task",
    "method",
    "runs",
    "observed",
    "noise_sigma",
    "identifiable_rate",
    "median_rel_error",
    "q25_rel_error",
    "q75_rel_error",
    "success_rate",
    "median_hidden_pixel_rmse",
    "median_observed_pixel_rmse",
    "median_seconds",
    "median_cpu_seconds",
    "failures",
]

_GENERATOR = None


def generator():
    """The decoder, loaded once per process."""
    global _GENERATOR
    if _GENERATOR is None:
        _GENERATOR = onnxinv.load(MODEL)
    return _GENERATOR


def parse_args(argv):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per noise kind and level (200)")
    parser.add_argument("--levels", type=common.parse_floats, default=None, help="noise levels a")
    parser.add_argument("--kinds", type=common.parse_names, default=list(KINDS))
    parser.add_argument("--methods", type=common.parse_names, default=["linf", "l1", "relaxed", "gd"])
    parser.add_argument("--mask-runs", type=int, default=None, help="inpainting and denoising runs (200)")
    parser.add_argument("--observed", type=float, default=0.9, help="share of pixels observed")
    parser.add_argument("--denoise-sigma", type=float, default=0.1, help="pixel noise of the denoising runs")
    parser.add_argument("--inpaint-methods", type=common.parse_names, default=["exact", "linf", "gd"])
    parser.add_argument("--denoise-methods", type=common.parse_names, default=["linf", "l1", "gd"])
    parser.add_argument(
        "--grid-methods",
        type=common.parse_names,
        default=["linf", "gd"],
        help="ours and the baseline in the picture grid (the paper shows its l_inf LP)",
    )
    parser.add_argument("--grid", type=int, default=6, help="examples in the picture grid")
    args = parser.parse_args(argv)
    if args.levels is None:
        args.levels = [1e-3, 1e-1] if args.quick else [10.0**-i for i in range(6, 0, -1)]
    if args.runs is None:
        args.runs = 3 if args.quick else 200
    if args.mask_runs is None:
        args.mask_runs = 3 if args.quick else 200
    return args


# --------------------------------------------------------------------------------------------------
# noise sweep


def noise_instance(task) -> list[dict]:
    seed, kind, kind_index, level_index, level, run, methods = task
    gen = generator()
    rng = common.instance_rng(seed, 3, kind_index, level_index, run)
    z_true = rng.standard_normal(gen.latent_dim)
    clean = gen.run_onnx(z_true).reshape(-1)
    noise = common.draw_noise(rng, kind, level, clean.size)
    x = clean + noise
    return common.evaluate_methods(
        gen,
        x,
        z_true,
        methods,
        noise_level=level,
        gd_seed=int(rng.integers(2**31)),
        base={
            "dataset": DATASET,
            "noise_kind": kind,
            "noise_level": level,
            "run": run,
            "rel_noise": float(np.linalg.norm(noise) / np.linalg.norm(clean)),
        },
    )


# --------------------------------------------------------------------------------------------------
# inpainting and denoising


def recovery_instance(task) -> list[dict]:
    seed, name, run, methods, observed_share, sigma = task
    gen = generator()
    rng = common.instance_rng(seed, 4, 0 if name == "inpaint" else 1, run)
    z_true = rng.standard_normal(gen.latent_dim)
    clean = gen.run_onnx(z_true).reshape(-1)
    n = clean.size
    if name == "inpaint":
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: int(round(observed_share * n))]] = True
        x = clean.copy()
        noise_level = None
    else:
        mask = None
        x = clean + rng.normal(0.0, sigma, n)
        noise_level = sigma
    gd_seed = int(rng.integers(2**31))
    rows = common.evaluate_methods(
        gen,
        x,
        z_true,
        methods,
        noise_level=noise_level,
        gd_seed=gd_seed,
        base={"task": name, "run": run, "noise_sigma": 0.0 if mask is not None else sigma},
        mask=mask,
        keep_z=True,
    )
    keep = np.ones(n, dtype=bool) if mask is None else mask
    identifiable = all(r.full for r in common.layer_ranks(gen, z_true, keep))
    for row in rows:
        row["identifiable"] = identifiable
        z = row.pop("z")
        row["observed"] = int(keep.sum())
        if z is None or not np.all(np.isfinite(z)):
            row["hidden_pixel_rmse"] = row["observed_pixel_rmse"] = float("inf")
            image = None
        else:
            image = gen.run_onnx(z).reshape(-1)
            hidden = ~keep
            row["hidden_pixel_rmse"] = (
                float(np.sqrt(np.mean((image[hidden] - clean[hidden]) ** 2))) if hidden.any() else 0.0
            )
            row["observed_pixel_rmse"] = float(np.sqrt(np.mean((image[keep] - clean[keep]) ** 2)))
        row["_image"] = image
    rows.append({"task": name, "run": run, "method": "_data", "_clean": clean, "_x": x, "_mask": keep})
    return rows


def summarize_recovery(rows: list[dict]) -> list[dict]:
    summary = []
    for (task, method), group in common.group_rows(rows, ["task", "method"]).items():
        errors = [r["rel_error"] for r in group]
        q25, q50, q75 = common.quantiles(errors)
        summary.append(
            {
                "task": task,
                "method": method,
                "runs": len(group),
                "observed": group[0]["observed"],
                "noise_sigma": group[0]["noise_sigma"],
                "identifiable_rate": sum(bool(r["identifiable"]) for r in group) / len(group),
                "median_rel_error": q50,
                "q25_rel_error": q25,
                "q75_rel_error": q75,
                "success_rate": sum(e <= common.SUCCESS_REL_ERROR for e in errors) / len(errors),
                "median_hidden_pixel_rmse": common.median([r["hidden_pixel_rmse"] for r in group]),
                "median_observed_pixel_rmse": common.median([r["observed_pixel_rmse"] for r in group]),
                "median_seconds": common.median([r["seconds"] for r in group]),
                "median_cpu_seconds": common.median([r["cpu_seconds"] for r in group]),
                "failures": sum(not np.isfinite(e) for e in errors),
            }
        )
    return summary


def plot_grid(rows: list[dict], args) -> None:
    """Rows: observation (hidden pixels black, outlined in red), truth, ours, gradient descent."""
    plt = common.pyplot(args.no_plots)
    if plt is None:
        return
    from matplotlib.patches import Rectangle

    ours, gd = args.grid_methods
    blocks = []
    for task, heading in (
        ("denoise", f"Denoising: Gaussian pixel noise, sigma {args.denoise_sigma:g}, all 64 pixels observed"),
        (
            "inpaint",
            f"Inpainting: {100 * args.observed:.0f}% of the pixels observed (hidden ones black, outlined)",
        ),
    ):
        data = [r for r in rows if r["task"] == task and r["method"] == "_data"][: args.grid]
        if data:
            blocks.append((task, heading, data))
    if not blocks:
        return
    labels = ["observation", "ground truth", f"ours ({common.style(ours)['label']})", "gradient descent"]
    cols = max(len(b[2]) for b in blocks)
    size, left, top, gap = 0.9, 1.5, 0.55, 0.45  # inches: image, row labels, heading, between blocks
    width = left + cols * size * 1.1
    height = len(blocks) * (top + 4 * size * 1.25) + gap + 0.2
    fig = plt.figure(figsize=(width, height))
    y = height
    for task, heading, data in blocks:
        fig.text(0.1 / width, (y - 0.3) / height, heading, fontsize=9, weight="bold", va="center")
        y -= top
        for r in range(4):
            y_img = y - (r + 1) * size * 1.25 + 0.25 * size
            fig.text(0.1 / width, (y_img + size / 2) / height, labels[r], fontsize=8, va="center")
            for c, d in enumerate(data):
                ax = fig.add_axes(
                    ((left + c * size * 1.1) / width, y_img / height, size / width, size / height)
                )
                ax.set_xticks([])
                ax.set_yticks([])
                caption = ""
                if r == 0:
                    img = np.where(d["_mask"], np.clip(d["_x"], 0, 1), 0.0)
                elif r == 1:
                    img = d["_clean"]
                else:
                    method = ours if r == 2 else gd
                    match = [
                        x
                        for x in rows
                        if x["task"] == task and x["run"] == d["run"] and x["method"] == method
                    ]
                    found = bool(match) and match[0]["_image"] is not None
                    img = match[0]["_image"] if found else np.zeros(SIDE * SIDE)
                    caption = f"{match[0]['rel_error']:.1e}" if match else "n/a"
                ax.imshow(img.reshape(SIDE, SIDE), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if caption:
                    ax.set_xlabel(caption, fontsize=7, labelpad=1)
                if r == 0:
                    for p in np.flatnonzero(~d["_mask"]):
                        ax.add_patch(
                            Rectangle((p % SIDE - 0.5, p // SIDE - 0.5), 1, 1, fill=False, ec="red", lw=1.0)
                        )
        y -= 4 * size * 1.25 + gap
    fig.text(
        0.1 / width,
        0.12 / height,
        "digits VAE decoder (sample_models/digits_vae_legacy.onnx); number under an image: relative latent error",
        fontsize=7,
        color="0.3",
    )
    common.save_figure(fig, args.out / "digits_recovery_grid.png")
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.apply_common_args(args)
    methods = {"inpaint": args.inpaint_methods, "denoise": args.denoise_methods}
    title = "digits VAE decoder 8-40-64"
    if args.replot:
        rows = common.read_table(args.out / "digits_noise_runs.csv")
        summary = common.read_table(args.out / "digits_noise.csv")
        common.plot_noise(rows, summary, args, args.out / "digits_noise.png", title=title)
        # The pictures are not in the CSV files: redo the first runs (same seeds, same answers).
        tasks = [
            (args.seed, name, run, methods[name], args.observed, args.denoise_sigma)
            for name in ("inpaint", "denoise")
            for run in range(args.grid)
        ]
        plot_grid(common.run_tasks(recovery_instance, tasks, 1), args)
        return 0
    elapsed = common.timer()
    tasks = [
        (args.seed, kind, KINDS.index(kind), li, level, run, args.methods)
        for kind in args.kinds
        for li, level in enumerate(args.levels)
        for run in range(args.runs)
    ]
    print(
        f"digits noise sweep: {len(tasks)} observations x {len(args.methods)} methods, {args.workers} workers"
    )
    rows = common.run_tasks(noise_instance, tasks, args.workers, label="digits noise")
    common.write_csv(args.out / "digits_noise_runs.csv", rows, common.NOISE_RUN_COLUMNS)
    summary = common.summarize_noise(rows)
    common.write_csv(args.out / "digits_noise.csv", summary, common.NOISE_SUMMARY_COLUMNS)
    common.plot_noise(rows, summary, args, args.out / "digits_noise.png", title=title)

    tasks = [
        (args.seed, name, run, methods[name], args.observed, args.denoise_sigma)
        for name in ("inpaint", "denoise")
        for run in range(args.mask_runs)
    ]
    print(f"digits inpainting and denoising: {len(tasks)} observations, {args.workers} workers")
    rows = common.run_tasks(recovery_instance, tasks, args.workers, label="digits recovery")
    results = [r for r in rows if r["method"] != "_data"]
    common.write_csv(args.out / "digits_mask_runs.csv", results, MASK_RUN_COLUMNS)
    common.write_csv(args.out / "digits_mask.csv", summarize_recovery(results), MASK_SUMMARY_COLUMNS)
    plot_grid(rows, args)
    common.record_run_time(args.out, "digits_noise_and_mask", elapsed(), args)
    print(f"digits: done in {elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
