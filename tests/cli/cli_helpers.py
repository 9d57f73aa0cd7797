"""Helpers shared by the command-line tests (a module name of its own, unlike conftest)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result

import onnxinv
from onnxinv.building import build_model, random_generator_layers
from onnxinv.cli import main

# click 8.1 mixes stderr into stdout unless told not to; 8.2 removed the switch and always separates them.
_RUNNER_ARGS = (
    {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
)


def run(*args) -> Result:
    """Invoke the ``onnxinv`` command group in-process; stdout and stderr are kept apart."""
    return CliRunner(**_RUNNER_ARGS).invoke(main, [str(a) for a in args])


def save_generator(folder: Path, name: str, sizes, **kwargs) -> Path:
    """A random dense generator (see ``random_generator_layers``) saved as ``folder/name``."""
    path = Path(folder) / name
    onnx.save(build_model(random_generator_layers(sizes, **kwargs)), path)
    return path


def observations(path: Path, count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(z, x)`` with x = G(z) computed by onnxruntime; one pair when ``count`` is None, else a batch."""
    generator = onnxinv.load(path)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count or 1, generator.latent_dim))
    x = generator.run_onnx(z).astype(np.float32)
    return (z[0], x[0]) if count is None else (z, x)
