"""Survey of verdicts on networks of every kind users bring: which verdict, on what evidence, and does
onnxruntime confirm the fit. Used for the verdict contract's before/after comparison.

Usage::

    python scripts/contract_survey.py            # the installed onnxinv
    PYTHONPATH=/path/to/other/checkout python scripts/contract_survey.py   # another version

Networks are built in code (seeded): small ReLU controllers (4-16-16-2), tanh nets, contracting
classifiers (50-30-10), a 3-32-32-3 ReLU net (input size = output size), k-250-600 past the layer-wise
edge (k = 140), a 20-100-200-500 net, a 4-20-100-60 net with a non-expanding last hidden layer, and the
shipped digits decoder. For each: a clean observation G(z*) (float32 through onnxruntime), inverted with
the default method; printed: verdict, evidence kind (where the version has one), onnxruntime residual,
exit-0 or not, and whether an exit-0 answer really reproduces x (residual <= 1e-4 relative).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import onnxinv
from onnxinv.building import random_generator_layers
from onnxinv.layers import Activation, Generator, Layer

ROOT = Path(__file__).resolve().parents[1]


def _net(sizes, seed, act=Activation.RELU, out=None, bias=0.5) -> Generator:
    return Generator.from_layers(
        random_generator_layers(sizes, activation=act, output_activation=out, bias_scale=bias, rng=seed)
    )


def cases():
    yield "controller 4-16-16-2 relu", _net([4, 16, 16, 2], 1)
    yield "tanh net 6-24-24-12", _net([6, 24, 24, 12], 2, act=Activation.TANH, out=Activation.TANH)
    yield "classifier 50-30-10", _net([50, 30, 10], 3)
    yield "3-32-32-3 relu", _net([3, 32, 32, 3], 4, out=Activation.IDENTITY)
    yield "140-250-600 relu", _net([140, 250, 600], 5, bias=0.0)
    yield "20-100-200-500 relu", _net([20, 100, 200, 500], 6, bias=0.0)
    rng = np.random.default_rng(7)
    layers = [
        Layer(rng.normal(size=(20, 4)), rng.normal(size=20) * 0.3, Activation.RELU),
        Layer(rng.normal(size=(100, 20)) / 5, np.full(100, -0.15), Activation.RELU),
        Layer(rng.normal(size=(60, 100)) / 8, np.full(60, 1.0), Activation.RELU),
    ]
    yield "4-20-100-60 relu (wide hidden)", Generator.from_layers(layers)
    yield "digits VAE decoder 8-40-64", onnxinv.load(ROOT / "sample_models" / "digits_vae_legacy.onnx")


def main() -> None:
    print(f"onnxinv {onnxinv.__version__} from {Path(onnxinv.__file__).parent}")
    print(f"{'network':32} {'seed':>4}  {'verdict':12} {'evidence':15} {'residual':>9}  exit0  honest")
    for name, g in cases():
        for seed in range(3):
            z = np.random.default_rng(100 + seed).standard_normal(g.latent_dim)
            x = g.run_onnx(z).astype(np.float32)
            r = onnxinv.invert(g, x)
            verdict = r.verdict.value
            evidence = getattr(getattr(r, "evidence", None), "kind", None)
            evidence = evidence.value if evidence is not None else "-"
            exit0 = verdict in ("unique", "not unique", "fits")
            out = g.run_onnx(r.z)
            rel = float(np.linalg.norm(out - x) / max(np.linalg.norm(x), 1e-300))
            honest = (not exit0) or rel <= 1e-4
            print(f"{name:32} {seed:>4}  {verdict:12} {evidence:15} {rel:9.2e}  {exit0!s:5}  {honest}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
