"""``verify``: run latents through the model itself (onnxruntime) and measure how well they explain x.

For each pair ``(z, x)`` the residual ``r = G_onnx(z) - x`` is reported as

* the relative l2 error ``||r||_2 / ||x||_2`` (``||r||_2`` when ``x = 0``), and
* the largest absolute error ``||r||_inf``.

A pair passes when its relative l2 error is at most ``tol``. The default tolerance, 1e-3, leaves room
for float32 rounding in onnxruntime (about 1e-7 relative) and for mild observation noise; use a smaller
one to demand an exact fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxinv.errors import ObservationError
from onnxinv.layers import Generator

__all__ = ["DEFAULT_TOL", "VerifyResult", "relative_residuals", "verify"]

DEFAULT_TOL = 1e-3


@dataclass(frozen=True)
class VerifyResult:
    """Residuals of latents run through onnxruntime against observations.

    Attributes
    ----------
    residual_rel_l2, residual_linf : per pair, shape (N,)
    tol : the tolerance on the relative l2 error
    single : True when one latent and one observation were given
    """

    residual_rel_l2: np.ndarray
    residual_linf: np.ndarray
    tol: float
    single: bool = False

    @property
    def count(self) -> int:
        return int(self.residual_rel_l2.shape[0])

    @property
    def passed_mask(self) -> np.ndarray:
        return self.residual_rel_l2 <= self.tol

    @property
    def failures(self) -> int:
        return int(np.count_nonzero(~self.passed_mask))

    @property
    def passed(self) -> bool:
        """True when every pair's relative l2 error is within ``tol``."""
        return self.failures == 0

    @property
    def max_rel_l2(self) -> float:
        return float(self.residual_rel_l2.max())

    @property
    def max_linf(self) -> float:
        return float(self.residual_linf.max())

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        if self.single:
            return (
                f"{verdict}: relative l2 residual {self.max_rel_l2:.3e}, max abs residual "
                f"{self.max_linf:.3e} (tolerance {self.tol:g} on the relative l2 residual)"
            )
        return (
            f"{verdict}: {self.count - self.failures}/{self.count} within tolerance {self.tol:g}; relative l2 "
            f"residual median {float(np.median(self.residual_rel_l2)):.3e}, max {self.max_rel_l2:.3e}; max "
            f"abs residual {self.max_linf:.3e}"
        )

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "tol": self.tol,
            "count": self.count,
            "failures": self.failures,
            "max_residual_rel_l2": self.max_rel_l2,
            "max_residual_linf": self.max_linf,
            "residual_rel_l2": [float(v) for v in self.residual_rel_l2],
            "residual_linf": [float(v) for v in self.residual_linf],
        }


def relative_residuals(outputs: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(||G(z) - x|| / ||x||, ||G(z) - x||_inf)`` row by row for (N, n) arrays."""
    diff = outputs - x
    norm_r = np.linalg.norm(diff, axis=1)
    norm_x = np.linalg.norm(x, axis=1)
    rel = np.where(norm_x > 0, norm_r / np.where(norm_x > 0, norm_x, 1.0), norm_r)
    return rel, np.abs(diff).max(axis=1)


def verify(generator: Generator, z: np.ndarray, x: np.ndarray, tol: float = DEFAULT_TOL) -> VerifyResult:
    """Run ``z`` through onnxruntime and compare the output with ``x``.

    Parameters
    ----------
    generator : the loaded model (``onnxinv.load``)
    z : one latent (k,) or a batch (N, k)
    x : one observation (n values, any shape) or a batch (N, ...) with n values per row; the count must
        match ``z`` (a single observation may be paired with a single latent only)
    tol : largest relative l2 residual that counts as a fit

    Raises
    ------
    ObservationError : sizes or counts do not match, or values are not finite.
    OracleError : onnxruntime could not run the model.
    """
    from onnxinv.files import split_batch

    if not tol >= 0:
        raise ObservationError(f"the tolerance must be a number >= 0, got {tol}")
    z_rows, z_single = split_batch(np.asarray(z, dtype=np.float64), generator.latent_dim, "verify", "latent")
    x_rows, x_single = split_batch(np.asarray(x, dtype=np.float64), generator.output_dim, "verify")
    if z_rows.shape[0] != x_rows.shape[0]:
        raise ObservationError(
            f"verify got {z_rows.shape[0]} latent(s) but {x_rows.shape[0]} observation(s); give one latent "
            "per observation, in the same order."
        )
    for name, rows in (("latent", z_rows), ("observation", x_rows)):
        if not np.all(np.isfinite(rows)):
            raise ObservationError(f"verify: the {name} holds NaN or infinite values.")
    outputs = generator.run_onnx(z_rows)
    rel, linf = relative_residuals(outputs, x_rows)
    return VerifyResult(rel, linf, float(tol), z_single and x_single)
