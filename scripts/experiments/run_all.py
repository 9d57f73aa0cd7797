"""Run every experiment script in turn.

    python scripts/experiments/run_all.py                 # full runs into benchmarks/
    python scripts/experiments/run_all.py --quick --out /tmp/bench

Options other than ``--only`` are handed to every script (``--seed``, ``--quick``, ``--out``,
``--workers``, ``--no-plots``, ``--time-limit``). Each script records its wall time in
``run_times.csv`` in the output folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import digits_noise_and_mask  # noqa: E402
import fig1_error_vs_noise  # noqa: E402
import fig2_success_vs_k  # noqa: E402
import whole_network  # noqa: E402

SCRIPTS = {
    "fig2_success_vs_k": fig2_success_vs_k.main,
    "fig1_error_vs_noise": fig1_error_vs_noise.main,
    "digits_noise_and_mask": digits_noise_and_mask.main,
    "whole_network": whole_network.main,
}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", type=common.parse_names, default=list(SCRIPTS), help="scripts to run")
    args = parser.parse_args(argv)
    unknown = [s for s in args.only if s not in SCRIPTS]
    if unknown:
        parser.error(f"unknown script(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    shared = ["--seed", str(args.seed), "--out", str(args.out), "--workers", str(args.workers)]
    shared += ["--time-limit", str(args.time_limit)]
    if args.quick:
        shared.append("--quick")
    if args.no_plots:
        shared.append("--no-plots")
    status = 0
    elapsed = common.timer()
    for name in args.only:
        print(f"== {name} {' '.join(shared)}", flush=True)
        code = SCRIPTS[name](shared)
        if code:
            print(f"{name} exited with status {code}", file=sys.stderr)
            status = status or code
    print(f"run_all: {', '.join(args.only)} done in {elapsed():.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
