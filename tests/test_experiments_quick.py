"""Smoke test of the experiment scripts in ``scripts/experiments/``: each one's ``--quick`` mode.

Every script runs in a subprocess with matplotlib blocked (CI's environment has no matplotlib): the CSV
files must still be written, with the expected columns and sane values, and the plots skipped with a
message. The numbers of a quick run judge nothing about speed or accuracy beyond the obvious.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "experiments"

# Run a script as __main__ with `import matplotlib` failing, as it does where matplotlib is not installed.
_RUNNER = (
    "import runpy, sys; sys.modules['matplotlib'] = None; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "runpy.run_path(script, run_name='__main__')"
)


def run_script(name: str, out: Path, *extra: str, block_matplotlib: bool = True) -> str:
    script = str(SCRIPTS / f"{name}.py")
    args = [script, "--quick", "--seed", "0", "--out", str(out), *extra]
    cmd = [sys.executable, "-c", _RUNNER, *args] if block_matplotlib else [sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def read(path: Path) -> list[dict]:
    assert path.is_file(), f"{path.name} was not written"
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def columns(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


def num(value: str) -> float:
    return float(value)


def test_fig2_quick(tmp_path):
    stdout = run_script("fig2_success_vs_k", tmp_path, "--workers", "1")
    assert "matplotlib is not installed" in stdout
    assert not list(tmp_path.glob("*.png"))

    runs = read(tmp_path / "fig2_success_vs_k_runs.csv")
    assert {"activation", "k", "net", "method", "rel_error", "success", "verdict", "identifiable"} <= set(
        columns(tmp_path / "fig2_success_vs_k_runs.csv")
    )
    # 2 activations x k in {10, 150} x 2 nets x 3 methods
    assert len(runs) == 2 * 2 * 2 * 3
    assert {r["method"] for r in runs} == {"exact", "linf", "gd"}
    assert all(r["verdict"] != "error" for r in runs if r["method"] != "gd"), runs

    summary = read(tmp_path / "fig2_success_vs_k.csv")
    by_key = {(r["activation"], int(r["k"]), r["method"]): r for r in summary}
    assert len(by_key) == 2 * 2 * 3
    for r in summary:
        for name in ("success_rate", "identifiable_rate", "jacobian_full_rank_rate"):
            assert 0.0 <= num(r[name]) <= 1.0
        assert num(r["median_seconds"]) >= 0.0
    for act in ("relu", "leaky_relu"):
        assert num(by_key[(act, 10, "exact")]["success_rate"]) == 1.0
        assert num(by_key[(act, 10, "exact")]["identifiable_rate"]) == 1.0
        assert num(by_key[(act, 10, "linf")]["success_rate"]) == 1.0
    # A wide LeakyReLU net is identifiable at any k <= 250; a k-250-600 ReLU net at k = 150 almost never is
    # (about 125 of the 250 hidden units are active), and the exact method must say "not unique".
    assert num(by_key[("leaky_relu", 150, "exact")]["success_rate"]) == 1.0
    relu150 = by_key[("relu", 150, "exact")]
    assert num(relu150["identifiable_rate"]) == 0.0
    assert int(relu150["verdict_not_unique"]) == int(relu150["runs"])
    assert num(relu150["honest_rate"]) == 1.0


def test_fig1_quick(tmp_path):
    run_script("fig1_error_vs_noise", tmp_path, "--workers", "2")
    runs = read(tmp_path / "fig1_error_vs_noise_runs.csv")
    assert len(runs) == 2 * 2 * 3 * 4  # kinds x levels x runs x methods
    summary = read(tmp_path / "fig1_error_vs_noise.csv")
    assert {
        "noise_kind",
        "noise_level",
        "method",
        "median_rel_error",
        "q25_rel_error",
        "q75_rel_error",
    } <= set(summary[0])
    by_key = {(r["noise_kind"], num(r["noise_level"]), r["method"]): r for r in summary}
    assert len(by_key) == 2 * 2 * 4
    for r in summary:
        q25, q50, q75 = num(r["q25_rel_error"]), num(r["median_rel_error"]), num(r["q75_rel_error"])
        assert q25 <= q50 <= q75
    for kind in ("uniform", "gaussian"):
        for method in ("linf", "l1", "relaxed"):
            small = num(by_key[(kind, 1e-3, method)]["median_rel_error"])
            assert math.isfinite(small) and small < 0.5, (kind, method, small)


def test_digits_quick(tmp_path):
    run_script("digits_noise_and_mask", tmp_path, "--workers", "1")
    summary = read(tmp_path / "digits_noise.csv")
    assert {r["dataset"] for r in summary} == {"digits_vae_legacy"}
    assert len(summary) == 2 * 2 * 4
    for r in summary:
        if r["method"] in ("linf", "l1") and num(r["noise_level"]) == 1e-3:
            assert num(r["median_rel_error"]) < 0.5, r
    mask = read(tmp_path / "digits_mask.csv")
    assert {(r["task"], r["method"]) for r in mask} == {
        *(("inpaint", m) for m in ("exact", "linf", "gd")),
        *(("denoise", m) for m in ("linf", "l1", "gd")),
    }
    inpaint = {r["method"]: r for r in mask if r["task"] == "inpaint"}
    assert int(inpaint["linf"]["observed"]) == 58  # 90% of the 64 pixels
    # Clean inpainting from 58 of 64 pixels: every quick instance is identifiable, and the exact method
    # recovers the latent up to the float32 rounding of the observation.
    assert num(inpaint["exact"]["success_rate"]) == 1.0
    runs = read(tmp_path / "digits_mask_runs.csv")
    assert all(math.isfinite(num(r["rel_error"])) for r in runs if r["method"] in ("exact", "linf"))


def test_whole_network_quick(tmp_path):
    stdout = run_script("whole_network", tmp_path, "--only", "sweep,small,noisy,cs", "--ks", "110,140")
    assert "matplotlib is not installed" in stdout
    sweep = read(tmp_path / "whole_network_sweep.csv")
    assert len(sweep) == 4 and {r["k"] for r in sweep} == {"110", "140"}
    for r in sweep:
        # every verdict on these nets is backed (layer-wise certificate or a checked witness) and right
        assert r["backed"] == "1" and r["agree"] == "1", r
    small = read(tmp_path / "whole_network_small.csv")
    assert len(small) == 2 and all(r["checked"] == "1" for r in small)
    noisy = read(tmp_path / "whole_network_noisy.csv")
    assert len(noisy) == 2 * 3 * 3
    assert {r["verdict"] for r in noisy} <= {"fits", "not found"}  # never a radius under Gaussian noise
    assert all(math.isfinite(num(r[c])) for r in noisy for c in ("err_auto", "err_gd", "err_gd_map"))
    cs = read(tmp_path / "whole_network_cs.csv")
    assert {r["m"] for r in cs} == {"10", "20", "30", "40", "50", "60"}
    assert "auto <= gd MAP" in stdout and "recovery rate" in stdout


def test_run_all_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    # The smallest possible run through run_all, with plots, when matplotlib is present.
    stdout = run_script(
        "run_all", tmp_path, "--only", "fig2_success_vs_k", "--workers", "1", block_matplotlib=False
    )
    assert "fig2_success_vs_k" in stdout
    assert (tmp_path / "fig2_success_vs_k.png").stat().st_size > 1000
    times = read(tmp_path / "run_times.csv")
    assert [t["script"] for t in times] == ["fig2_success_vs_k"]
    # Redraw from the CSV files alone.
    (tmp_path / "fig2_success_vs_k.png").unlink()
    run_script("fig2_success_vs_k", tmp_path, "--replot", block_matplotlib=False)
    assert (tmp_path / "fig2_success_vs_k.png").stat().st_size > 1000
