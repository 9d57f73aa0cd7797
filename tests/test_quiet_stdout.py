"""The library writes nothing to stdout: HiGHS's banner, printed from C++ when the first ``Highs()`` of a
process is built, is muted, so a script that prints a JSON document of its own keeps a clean stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"

SCRIPT = """
import json, sys
import numpy as np
import onnxinv
generator = onnxinv.load(sys.argv[1])
x = np.load(sys.argv[2])[0]
result = onnxinv.invert(generator, x, method="linf", noise=1e-3)
print(json.dumps({"verdict": result.verdict.value}))
"""


def test_an_lp_through_the_api_prints_nothing_on_stdout(tmp_path):
    done = subprocess.run(
        [
            sys.executable, "-c", SCRIPT,
            str(SAMPLES / "gaussian_20_100_500_relu.onnx"),
            str(SAMPLES / "gaussian_20_100_500_relu.batch_noisy.npy"),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['{"verdict": "unique"}'], done.stdout
