"""The pipeline's refine stage: whole-network least squares from a method's estimate (*ours*).

Problem
-------
A layer-wise method fits each layer on its own, so the error of a hidden estimate grows from layer
to layer (Theorems 3-4 of [1]_: up to ``(2/c)^d ε``), and rounding of float32 data, amplified by each
layer's least squares, adds up over a deep network; a point picked in a non-identifiable hidden
layer's preimage may not be reachable from below at all. When the estimate ``z_0`` does not
reproduce the observation (the float64 forward pass fails the fit rule of
:mod:`onnxinv.inversion.framework`), it is refined on the whole network:

.. math::

    \\min_z\\; \\tfrac12 \\| M \\odot (G(z) - x) \\|_2^2

by Levenberg-Marquardt from ``z_0``, with the Jacobian ``J = ∏_i diag(act_i'(a_i)) W_i`` of the current
activation pattern (exact for a piecewise-linear network away from kinks). A step is taken only if
it lowers the loss, so the refined latent never fits worse than the estimate.

Under bounded noise the fit rule is ``||M ⊙ (G(z) - x)||_∞ <= ε``, which the least-squares point need
not meet although the true latent does. The l_inf misfit is then lowered by sequential linear
programming: at ``z``,

.. math::

    \\min_{d,\\,t}\\; t \\quad\text{s.t.}\\quad |G(z) + J d - x|_j \\le t \\;\\;(j \text{ observed}),
    \\qquad \\|d\\|_\\infty \\le \\Delta,

a step taken only if the true misfit falls (the trust radius ``Δ`` grows after a success and shrinks
after a failure). Inside one activation region ``G`` is affine, so the LP's step is exact there: it is
Algorithm 1's l_inf LP of [1]_ over the whole network rather than one layer.

Notes
-----
* The refined latent replaces the estimate only if it fits better, and
  :attr:`~onnxinv.inversion.framework.Draft.refined` is set: the method's steps then describe the
  estimate, not the returned latent, so the evidence stage analyses every layer at the refined
  latent's own hidden values (:func:`onnxinv.inversion.identifiability.analyse_latent`).
* The stage applies to every method (the pipeline calls it, not the methods), except those whose
  :class:`~onnxinv.inversion.framework.Method` record says ``refine=False``; ``Settings.refine=False``
  turns it off.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from onnxinv.inversion import lp
from onnxinv.inversion.framework import Draft, Problem, Settings, accepts, forward_fit
from onnxinv.layers import Layer, activation_derivative

__all__ = ["levenberg_marquardt", "linf_steps", "refine"]

MAX_STEPS = 100


def refine(problem: Problem, settings: Settings, draft: Draft, deadline: float) -> Draft:
    """The refine stage (module docstring): ``draft`` itself when it fits, else the refined draft."""
    if not settings.refine or time.perf_counter() >= deadline or not np.all(np.isfinite(draft.z)):
        return draft
    if accepts(problem, settings, problem.generator.forward(draft.z)):
        return draft
    z, steps = levenberg_marquardt(problem, np.asarray(draft.z, dtype=np.float64), deadline)
    fit = forward_fit(problem, z)
    how = f"{steps} Levenberg-Marquardt step(s)"
    if problem.bounded and not accepts(problem, settings, problem.generator.forward(z)):
        start = z if fit < draft.fit else np.asarray(draft.z, dtype=np.float64)
        z_inf, lp_steps = linf_steps(problem, start, deadline)
        if lp_steps and _linf(problem, z_inf) < _linf(problem, start):
            z, fit = z_inf, forward_fit(problem, z_inf)
            how += f" and {lp_steps} l_inf LP step(s)"
    if not (fit < draft.fit or accepts(problem, settings, problem.generator.forward(z))):
        return draft
    failed = [f"layer {s.layer} ended '{s.status.value}'" for s in draft.steps if not s.status.ok]
    why = f" ({', '.join(failed)})" if failed else ""
    note = (
        f"The {draft.method} estimate missed the observation (relative l2 {draft.fit:.3g}){why}; {how} on "
        f"the whole network brought it to {fit:.3g}."
    )
    return dataclasses.replace(
        draft,
        z=np.asarray(z, dtype=np.float64),
        fit=fit,
        refined=True,
        message=f"{draft.message} {note}".strip(),
    )


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


def _linf(problem: Problem, z: np.ndarray) -> float:
    out = problem.generator.forward(z)
    if problem.mask is not None:
        out = out[problem.mask]
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(np.max(np.abs(out - problem.observed))) if out.size else 0.0
    return value if np.isfinite(value) else float("inf")


def linf_steps(
    problem: Problem, z: np.ndarray, deadline: float, max_steps: int = 30
) -> tuple[np.ndarray, int]:
    """Lower ``max |M ⊙ (G(z) - x)|`` by the trust-region LPs of the module docstring; (z, steps taken)."""
    layers = problem.generator.layers
    rows = problem.rows
    k = z.size
    best = _linf(problem, z)
    radius = max(1e-3, 0.1 * float(np.max(np.abs(z)))) if k else 0.0
    taken = 0
    c = np.zeros(k + 1)
    c[-1] = 1.0
    for _ in range(max_steps):
        if time.perf_counter() >= deadline or not np.isfinite(best) or best == 0.0 or radius < 1e-12:
            break
        out, jac = _jacobian(layers, z)
        if rows is not None:
            out, jac = out[rows], jac[rows]
        r = out - problem.observed
        m = r.size
        a_ub = np.vstack([np.hstack([jac, -np.ones((m, 1))]), np.hstack([-jac, -np.ones((m, 1))])])
        b_ub = np.concatenate([-r, r])
        bounds = (np.append(np.full(k, -radius), 0.0), np.append(np.full(k, radius), np.inf))
        res = lp.solve_lp(c, a_ub, b_ub, bounds=bounds, time_limit=max(deadline - time.perf_counter(), 0.0))
        if not res.ok or res.x is None:
            break
        candidate = z + res.x[:k]
        value = _linf(problem, candidate)
        if value < best * (1.0 - 1e-12):
            gain = (best - value) / best
            z, best = candidate, value
            taken += 1
            radius = radius * 2.0 if float(np.max(np.abs(res.x[:k]))) >= 0.5 * radius else radius
            if gain < 1e-9:
                break
        else:
            radius /= 4.0
    return z, taken


def _jacobian(layers: tuple[Layer, ...], z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G(z)`` and ``dG/dz`` (n, k) through the layer list in float64."""
    h = z
    jac = np.eye(z.size)
    with np.errstate(over="ignore", invalid="ignore"):
        for layer in layers:
            h = layer.forward(h)
            jac = activation_derivative(h, layer.activation, layer.slope)[:, None] * (layer.weight @ jac)
    return h, jac
