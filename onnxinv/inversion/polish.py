"""End-to-end refinement of a layer-wise estimate (*ours*), mainly for noisy observations.

Problem
-------
The layer-wise noisy methods (Algorithms 1-2 of [1]_, eq. (8), noisy basis pursuit) fit each layer
on its own, so the error of a hidden estimate grows from layer to layer (Theorems 3-4 of [1]_: up to
``(2/c)^d ε``), and the latent they return may miss the observation by more than the noise although
the true latent does not. When that happens (the float64 forward pass does not pass
:func:`~onnxinv.inversion.layerwise.accepts`), the estimate is refined on the whole network:

.. math::

    \\min_z\\; \\tfrac12 \\| M \\odot (G(z) - x) \\|_2^2

by Levenberg-Marquardt from the layer-wise ``z``, with the Jacobian ``∏_i diag(act_i'(a_i)) W_i``
of the current activation pattern (exact for a piecewise-linear network away from kinks). A step is
taken only if it lowers the loss, so the refined latent never fits worse than the layer-wise one.

Notes
-----
* The refined latent is kept only if it lowers the residual; the verdict then comes from the
  layer-wise analysis at the refined point (:func:`analyse_at`, as for gradient descent): the last
  layer's rows at its initial ``ε`` and the rank of the two-sided ones
  (:func:`~onnxinv.inversion.linf.noisy_outcome`); every hidden layer at the refined latent's own
  hidden values (its active rows' rank, Theorem 2 of [1]_), since those are exact values of the
  network, not estimates.
* A layer-wise estimate that does reproduce ``x`` is kept as it is, unless a layer reports a
  preimage of positive dimension: a noisy method counts only the rows whose sign is certain given the
  estimated error of its input, and that estimate is pessimistic (errors grow from layer to layer).
  Such a claim is checked by the same analysis at the returned latent, whose steps then decide.
* A clean observation is refined only when every layer was solved and identifiable (the layer-wise
  certificate of Theorem 2 of [1]_ holds) but the latent misses ``x`` by more than ``tol``: the
  rounding of float32 data, amplified by each layer's least squares, can add up over a deep network
  (the layer-wise latent is then a few ``tol`` away, and the refinement converges in a couple of
  steps). The refined latent is kept only if it reproduces ``x``, with the steps of the analysis
  at it; otherwise the layer-wise answer stands.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import time

import numpy as np

from onnxinv.inversion import linear, linf
from onnxinv.inversion.layerwise import (
    Draft,
    LayerContext,
    LayerOutcome,
    Problem,
    Settings,
    accepts,
    clean_targets,
    forward_fit,
    relative_tolerance,
    walk,
)
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import build_targets, project
from onnxinv.layers import Activation, Layer

__all__ = ["analyse_at", "derivative", "refine"]

MAX_STEPS = 100


def refine(problem: Problem, settings: Settings, draft: Draft, deadline: float) -> Draft:
    """The layer-wise methods' last step (see module docstring)."""
    if time.perf_counter() >= deadline or not np.all(np.isfinite(draft.z)):
        return draft
    if problem.noise is None:
        # draft.fit is the clean acceptance measure (relative l2 of the float64 forward pass)
        certified = all(s.status.ok and s.preimage_dim == 0 for s in draft.steps)
        if draft.fit <= relative_tolerance(problem, settings) or not certified:
            return draft
        z, steps = levenberg_marquardt(problem, np.asarray(draft.z, dtype=np.float64), deadline)
        fit = forward_fit(problem, z)
        if not (fit < draft.fit and accepts(problem, settings, problem.generator.forward(z))[0]):
            return draft
        note = (
            "Every layer was identifiable, but the rounding of the data, amplified from layer to layer, "
            f"left the layer-wise latent at relative l2 {draft.fit:.3g}; {steps} Levenberg-Marquardt "
            f"step(s) on the whole network brought it to {fit:.3g}, and every layer was analysed at that "
            "latent."
        )
        return _analysed(problem, settings, draft, z, deadline, note)
    ok, _ = accepts(problem, settings, problem.generator.forward(draft.z))
    if ok:
        loose = [s for s in draft.steps if s.status.ok and s.preimage_dim > 0]
        if not loose:
            return draft
        step = min(loose, key=lambda s: s.layer)
        note = (
            f"The layer-wise estimate left {step.preimage_dim} direction(s) of layer {step.layer}'s input "
            "without sign-certain rows, so every layer was analysed at the returned latent's own hidden "
            "values."
        )
        return _analysed(problem, settings, draft, np.asarray(draft.z, dtype=np.float64), deadline, note)
    z, steps = levenberg_marquardt(problem, np.asarray(draft.z, dtype=np.float64), deadline)
    fit = forward_fit(problem, z)
    if not fit < draft.fit:
        return draft
    note = (
        f"The layer-wise {draft.method} estimate missed the observation by more than the noise "
        f"(relative l2 {draft.fit:.3g}); {steps} Levenberg-Marquardt step(s) on the whole network "
        f"brought it to {fit:.3g}, and every layer was analysed at the refined point."
    )
    return _analysed(problem, settings, draft, z, deadline, note)


def _analysed(
    problem: Problem, settings: Settings, draft: Draft, z: np.ndarray, deadline: float, note: str
) -> Draft:
    """A draft with latent ``z`` and the steps of :func:`analyse_at` at its hidden values."""
    hidden = problem.generator.hidden_values(z)
    last = len(problem.generator.layers) - 1

    def analyse(ctx: LayerContext) -> LayerOutcome:
        return analyse_at(ctx, hidden[ctx.index], "the returned latent", last=ctx.index == last)

    out = walk(problem, settings, analyse, draft.method, deadline)
    out.z = z
    out.attempts = draft.attempts
    out.message = f"{draft.message} {note}".strip()
    return out.with_fit(problem)


def levenberg_marquardt(problem: Problem, z: np.ndarray, deadline: float) -> tuple[np.ndarray, int]:
    """Minimise ``½||M(G(z) - x)||²`` from ``z``; returns (z, accepted steps).

    Each step solves ``(JᵀJ + λ diag(JᵀJ)) d = -Jᵀr``; a step that lowers the loss is taken and ``λ``
    shrinks, otherwise ``λ`` grows and the step is solved again. It stops after ``MAX_STEPS`` steps,
    when no step lowers the loss, or when the loss or the step stops changing.
    """
    layers = problem.generator.layers
    rows = problem.rows

    def evaluate(point: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        out, jac = _jacobian(layers, point)
        if rows is not None:
            out, jac = out[rows], jac[rows]
        res = out - problem.observed
        with np.errstate(over="ignore", invalid="ignore"):
            loss = float(res @ res)
        return res, jac, loss if np.isfinite(loss) else float("inf")

    r, j, loss = evaluate(z)
    lam = 1e-3
    taken = 0
    while taken < MAX_STEPS and loss > 0.0 and np.isfinite(loss) and time.perf_counter() < deadline:
        g = j.T @ r
        h = j.T @ j
        diag = np.maximum(np.diag(h), 1e-12 * max(float(np.max(np.diag(h))), 1e-300))
        accepted = None
        while lam < 1e12:
            try:
                step = np.linalg.solve(h + lam * np.diag(diag), -g)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            r_new, j_new, loss_new = evaluate(z + step)
            if np.isfinite(loss_new) and loss_new < loss:
                accepted = (step, r_new, j_new, loss_new)
                break
            lam *= 4.0
        if accepted is None:
            break
        step, r, j, loss_new = accepted
        z = z + step
        decrease, loss = loss - loss_new, loss_new
        lam = max(lam / 3.0, 1e-12)
        taken += 1
        small_step = float(np.linalg.norm(step)) <= 1e-12 * (1.0 + float(np.linalg.norm(z)))
        if decrease <= 1e-12 * loss or small_step:
            break
    return z, taken


def _jacobian(layers: tuple[Layer, ...], z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G(z)`` and ``dG/dz`` (n, k) through the layer list in float64."""
    h = z
    jac = np.eye(z.size)
    with np.errstate(over="ignore", invalid="ignore"):
        for layer in layers:
            h = layer.forward(h)
            jac = derivative(layer, h)[:, None] * (layer.weight @ jac)
    return h, jac


def derivative(layer: Layer, out: np.ndarray) -> np.ndarray:
    """``d act / d a``, written in terms of the activation's output."""
    act = layer.activation
    if act is Activation.RELU:
        return (out > 0).astype(np.float64)
    if act is Activation.LEAKY_RELU:
        return np.where(out >= 0, 1.0, layer.slope)
    if act is Activation.TANH:
        return 1.0 - out * out
    if act is Activation.SIGMOID:
        return out * (1.0 - out)
    return np.ones_like(out)


def analyse_at(ctx: LayerContext, u: np.ndarray, where: str = "this point", *, last: bool) -> LayerOutcome:
    """Identifiability of one layer at a given input ``u`` (a hidden value of a latent found otherwise).

    The last layer of a noisy observation: the rows at the layer's initial ``ε`` and the rank of the
    two-sided ones (:func:`~onnxinv.inversion.linf.noisy_outcome`). Every other case: the active rows'
    rank (Theorem 2 of [1]_) and, below full rank, the dimension of the layer's preimage through
    ``u``. The hidden values below the last layer are the latent's own forward values, not estimates,
    so no error is passed down (``u_error = 0``).
    """
    n = ctx.layer.in_features
    u = project(u, ctx.bounds)
    if ctx.noise_rel is not None and last:
        eps = ctx.initial_eps()
        targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
        out = linf.noisy_outcome(ctx, targets, u, eps, SolverStatus.OPTIMAL, f"analysed at {where}")
        out.u_error = 0.0
        return out
    targets = clean_targets(ctx)
    w, b = targets.matrices(ctx.layer)
    eq = targets.equality
    n_eq = int(eq.sum())
    if n_eq >= n:
        rank = linear.solve_active(w[eq], targets.lower[eq] - b[eq], 1.0 / targets.lower_scale[eq]).rank
    else:
        rank = linear.numerical_rank(w[eq])
    if rank == n:
        return LayerOutcome(
            u,
            SolverStatus.OPTIMAL,
            n_eq,
            rank,
            0,
            f"analysed at {where}: {n_eq} active rows of full column rank {n}",
            "full column rank (Theorem 2)",
        )
    scale = max(ctx.scale, 1.0)
    tight = max(
        1e-6 * scale, 10.0 * float(np.max(np.abs(ctx.layer.forward(u)[targets.rows] - ctx.y[targets.rows])))
    )
    dim = linear.preimage_dimension(
        ctx.layer, targets, ctx.bounds, u, tight_tol=tight, time_limit=ctx.remaining
    )
    return LayerOutcome(
        u,
        dim.status,
        n_eq,
        rank,
        dim.dim,
        f"analysed at {where}: {n_eq} active rows of rank {rank} < {n}: preimage of dimension {dim.dim}",
        "preimage is a single point" if dim.dim == 0 else "",
    )
