"""``load``: model file -> verified :class:`~onnxinv.layers.Generator`."""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxinv.errors import SelfCheckError
from onnxinv.layers import Generator
from onnxinv.oracle import ATOL, RTOL
from onnxinv.parser import parse_model
from onnxinv.safe_load import load_model_file


@dataclass(frozen=True)
class SelfCheck:
    """Layer list vs onnxruntime on a few random latents."""

    passed: bool
    latents: int
    max_abs_diff: float
    max_abs_output: float
    rtol: float
    atol: float

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{verdict}: layer list vs onnxruntime on {self.latents} random latents, max |diff| "
            f"{self.max_abs_diff:.2e} (outputs up to {self.max_abs_output:.2e}; rtol {self.rtol:g}, "
            f"atol {self.atol:g})"
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# One self-check per generator object (load() runs it; inspect and audit ask again).
_CHECKS: weakref.WeakKeyDictionary[Generator, SelfCheck] = weakref.WeakKeyDictionary()


def load(
    path: str | os.PathLike[str],
    *,
    self_check: bool = True,
    fixed: Mapping[str, np.ndarray] | None = None,
    latent: str | None = None,
) -> Generator:
    """Read an ONNX generator into its normalized layer list.

    Parameters
    ----------
    path : the ``.onnx`` file; external data must sit in the same folder.
    self_check : compare the layer list's forward pass with onnxruntime on a few random latents and
        raise :class:`~onnxinv.errors.SelfCheckError` if they disagree.
    fixed : values of the graph's other inputs (a conditional generator's class label or condition),
        by input name. Each is one sample's value, with or without the batch axis; it is folded into
        the layers' biases and fed to onnxruntime beside every latent. Integer inputs (a class index
        feeding an embedding table) work too.
    latent : the name of the input to invert. Needed only when it is ambiguous: by default the one
        input left without a fixed value is the latent.

    Raises
    ------
    ModelLoadError, UnsupportedModelError (also when inputs are left without a fixed value: the
    message names them), InvalidArgumentError (a fixed value that does not fit its input),
    SelfCheckError, OracleError (all OnnxInvError).
    """
    generator = parse_model(load_model_file(path), fixed=fixed, latent=latent)
    if self_check:
        result = check_generator(generator)
        if not result.passed:
            raise SelfCheckError(
                f"{generator.path}: the parsed layer list disagrees with onnxruntime ({result.describe()}). "
                "The graph holds something the parser misread; please report the file. "
                "load(..., self_check=False) skips this check at your own risk."
            )
    return generator


def check_generator(generator: Generator, latents: int = 5, seed: int = 0) -> SelfCheck:
    """Run ``latents`` random N(0, I) latents (and z = 0) through both paths and compare."""
    cached = _CHECKS.get(generator)
    if cached is not None and cached.latents == latents:
        return cached
    rng = np.random.default_rng(seed)
    z = np.vstack([np.zeros(generator.latent_dim), rng.standard_normal((latents - 1, generator.latent_dim))])
    ours = generator.forward(z)
    theirs = generator.run_onnx(z)
    diff = np.abs(ours - theirs)
    passed = bool(np.all(np.isfinite(ours)) and np.all(diff <= ATOL + RTOL * np.abs(theirs)))
    result = SelfCheck(passed, latents, float(diff.max()), float(np.abs(theirs).max()), RTOL, ATOL)
    _CHECKS[generator] = result
    return result
