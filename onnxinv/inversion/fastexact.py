"""The exact method's fast path: the same answer as :func:`onnxinv.inversion.exact.solve` followed by
the refine stage's fit test, for the common case, with none of the generic walk's fixed cost.

Problem
-------
A clean observation ``x = G(z*)`` of a dense ReLU network, every entry observed, no measurement
matrix. Layer by layer from the output (Theorem 2 of [1]_, as in :mod:`onnxinv.inversion.exact`):

.. math::

    I = \\{j : y_j > \\tau\\}, \\qquad u = \\arg\\min_u \\|W_I u - (y_I - b_I)\\|_2,

by the Cholesky route of :func:`onnxinv.inversion.linear.solve_rows` (the same kernel, so the same
``u``, condition estimate and spread), then the checks of :func:`onnxinv.inversion.exact.clean_layer`
on the branch where they all pass: the active rows are consistent (RMS misfit ``<= δ``) and every other
row and the input bound hold at the projected ``u`` within ``δ`` (or within the widened tolerance
``δ + c_e·sqrt(n)·e_u·max_j ||w_j||``). For ReLU rows the row bounds of
:func:`onnxinv.inversion.targets.build_targets` are ``y_j`` on the active rows and ``a_j <= max(y_j,
0)`` on the others, all with unit scale, so the misfit is computed from one product ``W u + b`` that
also gives the layer's residual.

Whenever a layer leaves that branch (too few active rows, rank or conditioning, an inconsistent
system, a violated row) or the float64 forward pass of the latent misses the fit rule, :func:`solve`
returns None and the caller runs the generic pipeline, which then takes the branch that applies: this
path decides nothing the generic walk would decide otherwise. The hidden values of the returned latent
(one float64 forward pass) are returned with it, so that the fit, the refine stage's test and the
certificate's margin check (:func:`onnxinv.inversion.evidence.margin_failure`) share that pass.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import math
import time

import numpy as np

from onnxinv.inversion import linear
from onnxinv.inversion.framework import (
    ERROR_FACTOR,
    ROUNDING_FACTOR,
    Draft,
    Problem,
    Settings,
    residual_norms,
)
from onnxinv.inversion.result import LayerStep, SolverStatus
from onnxinv.layers import Activation, Generator

__all__ = ["FastDraft", "applies", "generator_applies", "solve"]

_CERTIFICATE = "full column rank (Theorem 2)"


class FastDraft:
    """A draft of the fast path and the float64 hidden values ``[z, h_1, ..., G(z)]`` of its latent."""

    __slots__ = ("draft", "hidden")

    def __init__(self, draft: Draft, hidden: list[np.ndarray]) -> None:
        self.draft = draft
        self.hidden = hidden


def applies(problem: Problem) -> bool:
    """True when the fast path may try ``problem``: clean, fully observed, no measurement matrix, and a
    generator of dense ReLU layers."""
    return (
        problem.noise is None
        and problem.mask is None
        and problem.measure is None
        and generator_applies(problem.generator)
    )


def generator_applies(generator: Generator) -> bool:
    """True when every layer of ``generator`` is a dense ReLU layer (the fast path's networks)."""
    return all(
        layer.activation is Activation.RELU and isinstance(layer.weight, np.ndarray)
        for layer in generator.layers
    )


def solve(problem: Problem, settings: Settings, deadline: float) -> FastDraft | None:
    """The exact method's draft of ``problem`` when every layer takes the certified branch and the
    latent reproduces the observation in float64 (the module docstring); None otherwise, and always
    for a problem outside :func:`applies` or once ``deadline`` (a ``time.perf_counter()`` value) has
    passed (the generic walk then records the time limit)."""
    if not applies(problem):
        return None
    layers = problem.generator.layers
    precision = problem.precision
    rtol = max(settings.tol, ROUNDING_FACTOR * precision)
    y = problem.x
    y_error = 0.0
    steps: list[LayerStep] = []
    for i in reversed(range(len(layers))):
        start = time.perf_counter()
        if start >= deadline:
            return None
        layer = layers[i]
        w, b = layer.weight, layer.bias
        n = layer.in_features
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        delta = max(rtol * scale + ERROR_FACTOR * y_error, 1e-300)
        tau = max(settings.active_rtol * scale, 10.0 * y_error, 1e-300)
        active = y > tau
        idx = np.flatnonzero(active)
        n_eq = idx.size
        if n_eq < n:
            return None
        solved = _least_squares(w, idx, y[idx] - b[idx])
        if solved is None:
            return None
        u, rms, spread, how = solved
        prior = y_error + precision * scale
        seen = rms * math.sqrt(n_eq / max(n_eq - n, 1))
        u_error = max(prior, seen) * spread
        u_error = u_error if math.isfinite(u_error) else 0.0
        if not rms <= delta:
            return None
        if i > 0:
            u = np.clip(u, 0.0, np.inf)
        pre = w @ u + b
        # the ReLU row bounds (targets.build_targets, clean): y on the active rows, max(y, 0) above
        upper = np.where(active, y, np.maximum(y, 0.0))
        below = np.where(active, y - pre, 0.0)
        misfit = np.maximum(np.maximum(below, pre - upper), 0.0)
        worst = float(np.max(misfit)) if misfit.size else 0.0
        delta_all = delta
        if worst > delta:
            gain = float(np.max(linear.row_norms(w))) if w.shape[0] else 0.0
            delta_all += ERROR_FACTOR * math.sqrt(n) * u_error * gain
        if not worst <= delta_all:
            return None
        out = np.maximum(pre, 0.0)
        err = float(np.max(np.abs(out - y))) if out.size else 0.0
        residual = err / scale if scale > 0 else err
        steps.append(
            LayerStep(
                layer=i,
                activation=layer.describe_activation(),
                active_rows=n_eq,
                observed_rows=layer.out_features,
                unknowns=n,
                rank=n,
                preimage_dim=0,
                identifiable=True,
                status=SolverStatus.OPTIMAL,
                residual=residual,
                seconds=time.perf_counter() - start,
                message=(
                    f"least squares ({how}) on {n_eq} active rows; every row holds within "
                    f"{delta_all:.2g} on the layer's output (largest misfit {worst:.3g})"
                ),
                certificate=_CERTIFICATE,
            )
        )
        y = u
        y_error = u_error
    hidden = problem.generator.hidden_values(y)
    fit = residual_norms(problem, hidden[-1])[0]
    if not fit <= rtol:  # the refine stage would run: leave it to the generic pipeline
        return None
    steps.reverse()
    return FastDraft(Draft(z=y, method="exact", steps=tuple(steps), fit=fit), hidden)


def _least_squares(
    w: np.ndarray, idx: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, float, float, str] | None:
    """``(u, rms, spread, how)`` of the active system ``W[idx] u = t`` by the Cholesky route of
    :func:`onnxinv.inversion.linear.solve_rows`, the same LAPACK calls in the same order (factor,
    ``pocon`` condition estimate, solve, one step of iterative refinement, Hutchinson's spread), without
    its general plumbing; a system too large to gather goes through ``solve_rows`` itself. None when
    that route does not give full column rank (the generic walk then takes the pivoted QR, or the LP)."""
    m, n = idx.size, w.shape[1]
    if m * n > linear.BLOCK_ENTRIES or n == 0:
        ls = linear.solve_rows(w, idx, t)
        if ls.rank != n:
            return None
        return ls.u, ls.rms, ls.spread, f"{ls.method}, condition ~{ls.cond:.2g}"
    a = w[idx]
    gram_f = (a.T @ a).T  # symmetric: the transpose is the same matrix in Fortran order
    rhs = a.T @ t
    anorm = float(linear._lange("1", gram_f))
    factor, info = linear._potrf(gram_f, lower=0, clean=1, overwrite_a=1)
    if info != 0 or not (math.isfinite(anorm) and np.all(np.isfinite(np.diag(factor)))):
        return None
    rcond, info = linear._pocon(factor, anorm, uplo="U")
    rcond = float(rcond)
    if info != 0 or not rcond > 0:
        return None
    cond = math.sqrt(1.0 / rcond)
    if not cond <= linear.COND_LIMIT:
        return None
    u, info = linear._potrs(factor, rhs, lower=0)
    if info != 0:
        return None
    step, info = linear._potrs(factor, a.T @ (t - a @ u), lower=0)
    u = u + step
    rw = float(np.linalg.norm(a @ u - t))
    return u, rw / math.sqrt(m), linear._spread(factor), f"cholesky, condition ~{cond:.2g}"
