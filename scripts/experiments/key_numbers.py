"""Print the key numbers of the experiment CSVs as markdown tables (for benchmarks/README.md).

    python scripts/experiments/key_numbers.py [--out benchmarks]

Reads only the CSV files the experiment scripts write; files that are missing are skipped.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def pct(x) -> str:
    v = 100 * float(x)
    text = f"{v:.0f}"
    if text in ("0", "100") and v not in (0.0, 100.0):
        text = f"{v:.1f}"
    return text + "%"


def sci(x) -> str:
    x = float(x)
    return "inf" if math.isinf(x) else f"{x:.2g}"


def ms(x) -> str:
    return f"{1000 * float(x):.0f} ms" if float(x) >= 0.01 else f"{1000 * float(x):.1f} ms"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fig2(out: Path) -> None:
    path = out / "fig2_success_vs_k.csv"
    if not path.is_file():
        return
    rows = common.read_csv(path)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["activation"], int(r["k"]), r["method"]): r for r in rows}
    print("## Fig. 2: success rate against k\n")
    for act in dict.fromkeys(r["activation"] for r in rows):
        ks = sorted({int(r["k"]) for r in rows if r["activation"] == act})
        print(f"### {act}\n")
        body = []
        for k in ks:
            first = by[(act, k, methods[0])]
            body.append(
                [str(k), pct(first["identifiable_rate"])]
                + [pct(by[(act, k, m)]["success_rate"]) for m in methods]
            )
        print(table(["k", "identifiable"] + methods, body))
        print()
        for m in methods:
            full = [k for k in ks if float(by[(act, k, m)]["success_rate"]) == 1.0]
            last_full = max(
                (k for k in ks if all(float(by[(act, j, m)]["success_rate"]) == 1.0 for j in ks if j <= k)),
                default=None,
            )
            zero = [k for k in ks if float(by[(act, k, m)]["success_rate"]) == 0.0]
            print(
                f"- {m}: 100% for every k up to {last_full}; 100% at {len(full)} of {len(ks)} k values; "
                f"0% from k = {min(zero) if zero else 'never'}"
            )
        print()
    runs_path = out / "fig2_success_vs_k_runs.csv"
    if runs_path.is_file():
        runs = common.read_csv(runs_path)
        print("### Verdicts and identifiability (all k)\n")
        body = []
        for m in methods:
            group = [r for r in runs if r["method"] == m]
            ident = [r for r in group if r["identifiable"] == "1"]
            non = [r for r in group if r["identifiable"] == "0"]
            honest = [r for r in group if r["verdict_honest"] != ""]
            body.append(
                [
                    m,
                    f"{sum(r['success'] == '1' for r in ident)}/{len(ident)}",
                    f"{sum(r['success'] == '1' for r in non)}/{len(non)}",
                    f"{sum(r['verdict'] == 'unique' for r in ident)}/{len(ident)}",
                    f"{sum(r['verdict'] == 'not unique' for r in non)}/{len(non)}",
                    f"{sum(r['verdict_honest'] == '1' for r in honest)}/{len(honest)}" if honest else "n/a",
                    ms(np.median([float(r["seconds"]) for r in group])),
                    ms(np.median([float(r["cpu_seconds"]) for r in group]))
                    if "cpu_seconds" in group[0]
                    else "",
                ]
            )
        print(
            table(
                [
                    "method",
                    "success on identifiable",
                    "success on non-identifiable",
                    "'unique' on identifiable",
                    "'not unique' on non-identifiable",
                    "honest verdicts",
                    "median wall time",
                    "median CPU time",
                ],
                body,
            )
        )
        print()


def noise(out: Path, name: str, title: str) -> None:
    path = out / f"{name}.csv"
    if not path.is_file():
        return
    rows = common.read_csv(path)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print(f"## {title}\n")
    for kind in dict.fromkeys(r["noise_kind"] for r in rows):
        sub = [r for r in rows if r["noise_kind"] == kind]
        levels = sorted({float(r["noise_level"]) for r in sub})
        by = {(float(r["noise_level"]), r["method"]): r for r in sub}
        print(
            f"### {kind} noise, {sub[0]['runs']} runs per level: median relative latent error (quartiles)\n"
        )
        body = []
        for lv in levels:
            body.append(
                [f"{lv:g}", sci(by[(lv, methods[0])]["median_rel_noise"])]
                + [
                    f"{sci(by[(lv, m)]['median_rel_error'])} ({sci(by[(lv, m)]['q25_rel_error'])}-"
                    f"{sci(by[(lv, m)]['q75_rel_error'])})"
                    for m in methods
                ]
            )
        print(table(["a", "rel. noise ‖e‖/‖x‖"] + methods, body))
        print()
        slopes = []
        for m in methods:
            pts = [(lv, float(by[(lv, m)]["median_rel_error"])) for lv in levels if lv <= 1e-2]
            if len(pts) >= 2:
                x, y = np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts])
                slopes.append(f"{m} {np.polyfit(x, y, 1)[0]:.2f}")
        print(f"- log-log slope of the median error against a (a <= 1e-2): {', '.join(slopes)}")
        times = defaultdict(list)
        for r in sub:
            times[r["method"]].append((float(r["median_seconds"]), float(r.get("median_cpu_seconds", "nan"))))
        print(
            "- median time per observation (wall / CPU, median over levels): "
            + ", ".join(
                f"{m} {ms(np.median([t[0] for t in times[m]]))} / {ms(np.median([t[1] for t in times[m]]))}"
                for m in methods
            )
        )
        print()


def digits_mask(out: Path) -> None:
    path = out / "digits_mask.csv"
    if not path.is_file():
        return
    rows = common.read_csv(path)
    print("## Digits: inpainting and denoising\n")
    body = [
        [
            r["task"],
            r["method"],
            r["runs"],
            r["observed"],
            r["noise_sigma"],
            pct(r["identifiable_rate"]) if "identifiable_rate" in r else "",
            f"{sci(r['median_rel_error'])} ({sci(r['q25_rel_error'])}-{sci(r['q75_rel_error'])})",
            pct(r["success_rate"]),
            sci(r["median_hidden_pixel_rmse"]),
            sci(r["median_observed_pixel_rmse"]),
            ms(r["median_seconds"]),
        ]
        for r in rows
    ]
    print(
        table(
            [
                "task",
                "method",
                "runs",
                "observed pixels",
                "noise sigma",
                "identifiable",
                "median rel. latent error (quartiles)",
                "rel. error <= 1e-3",
                "hidden-pixel RMSE",
                "observed-pixel RMSE",
                "median time",
            ],
            body,
        )
    )
    print()


def time_per_observation(out: Path) -> None:
    """Median wall and CPU time per observation and method over every run of each experiment."""
    sources = [
        ("Fig. 2, k-250-600 (clean)", "fig2_success_vs_k_runs.csv", None),
        ("Fig. 1, 20-100-500, uniform noise", "fig1_error_vs_noise_runs.csv", "uniform"),
        ("Fig. 1, 20-100-500, Gaussian noise", "fig1_error_vs_noise_runs.csv", "gaussian"),
        ("digits decoder, noise sweep", "digits_noise_runs.csv", None),
        ("digits decoder, inpainting and denoising", "digits_mask_runs.csv", None),
    ]
    body, methods = [], []
    cells: dict[tuple[str, str], str] = {}
    for label, name, kind in sources:
        path = out / name
        if not path.is_file():
            continue
        rows = [r for r in common.read_csv(path) if kind is None or r.get("noise_kind") == kind]
        for m in dict.fromkeys(r["method"] for r in rows):
            if m not in methods:
                methods.append(m)
            group = [r for r in rows if r["method"] == m]
            wall = np.median([float(r["seconds"]) for r in group])
            cpu = (
                np.median([float(r["cpu_seconds"]) for r in group]) if "cpu_seconds" in group[0] else math.nan
            )
            cells[(label, m)] = f"{ms(wall)} ({ms(cpu)})" if math.isfinite(cpu) else ms(wall)
        body.append(label)
    if not body:
        return
    print("## Time per observation: median wall time (median CPU time)\n")
    print(table(["experiment", *methods], [[b, *(cells.get((b, m), "") for m in methods)] for b in body]))
    print()


def run_times(out: Path) -> None:
    path = out / "run_times.csv"
    if not path.is_file():
        return
    rows = common.read_csv(path)
    print("## Run times\n")
    print(
        table(
            ["script", "wall time", "workers", "1-min load at the end", "onnxinv"],
            [
                [
                    r["script"],
                    f"{float(r['seconds']) / 60:.1f} min",
                    r["workers"],
                    r["load_1min"],
                    r.get("onnxinv_commit", ""),
                ]
                for r in rows
            ],
        )
    )
    print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT, help="folder with the CSV files")
    args = parser.parse_args(argv)
    fig2(args.out)
    noise(args.out, "fig1_error_vs_noise", "Fig. 1a-b: random 20-100-500 ReLU nets")
    noise(args.out, "digits_noise", "Fig. 1c-d analogue: digits VAE decoder")
    digits_mask(args.out)
    time_per_observation(args.out)
    run_times(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
