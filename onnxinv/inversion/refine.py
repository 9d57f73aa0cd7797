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

by trust-region least squares from ``z_0`` (:func:`onnxinv.inversion.network.fit`: MINPACK's
Levenberg-Marquardt with the Jacobian ``J = ∏_i diag(act_i'(a_i)) W_i`` of the current activation
pattern, exact for a piecewise-linear network away from kinks, plus rounds along the ReLU kinks it
stops on). The best point evaluated is kept, so the refined latent never fits worse than the
estimate. With a measurement matrix ``A`` the residual is ``A·G(z) - x``.

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

from onnxinv.inversion import lp, network
from onnxinv.inversion.framework import Draft, Problem, Settings, accepts, forward_fit, relative_tolerance

__all__ = ["least_squares", "linf_steps", "refine"]

MAX_STEPS = 100


def refine(problem: Problem, settings: Settings, draft: Draft, deadline: float) -> Draft:
    """The refine stage (module docstring): ``draft`` itself when it fits, else the refined draft."""
    if not settings.refine or time.perf_counter() >= deadline or not np.all(np.isfinite(draft.z)):
        return draft
    if accepts(problem, settings, problem.generator.forward(draft.z)):
        return draft
    start = np.asarray(draft.z, dtype=np.float64)
    z = least_squares(problem, settings, start, deadline)
    fit = forward_fit(problem, z)
    how = "trust-region least squares"
    if not fit < draft.fit:
        z, fit = start, draft.fit
        how = ""
    if problem.bounded and not accepts(problem, settings, problem.generator.forward(z)):
        z_inf, lp_steps = linf_steps(problem, z, deadline)
        if lp_steps and _linf(problem, z_inf) < _linf(problem, z):
            z, fit = z_inf, forward_fit(problem, z_inf)
            how = f"{how} and {lp_steps} l_inf LP step(s)" if how else f"{lp_steps} l_inf LP step(s)"
    if not how or not (fit < draft.fit or accepts(problem, settings, problem.generator.forward(z))):
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


def least_squares(problem: Problem, settings: Settings, start: np.ndarray, deadline: float) -> np.ndarray:
    """``min_z ½||M ⊙ (A·G(z) - x)||²`` from ``start`` (:func:`onnxinv.inversion.network.fit`: trust
    region with the Jacobian of the current activation pattern, rounds along ReLU kinks), stopping
    early at a tenth of the clean tolerance."""
    target = 0.1 * relative_tolerance(problem, settings) if problem.noise is None else None
    result = network.fit(
        problem.generator.layers,
        problem.x,
        starts=start,
        mask=problem.mask,
        measure=problem.measure,
        deadline=deadline,
        target=target,
    )
    return np.asarray(result.z, dtype=np.float64)


def _linf(problem: Problem, z: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return _misfit(problem, problem.generator.forward(z))


def linf_steps(
    problem: Problem, z: np.ndarray, deadline: float, max_steps: int = 30
) -> tuple[np.ndarray, int]:
    """Lower ``max |M ⊙ (A·G(z) - x)|`` by the trust-region LPs of the module docstring; (z, steps taken).

    Each LP is solved by row generation (:func:`onnxinv.inversion.lp.solve_lp`) from the rows of the
    largest residuals: few of the ``2 m`` rows bind at an l_inf optimum. The steps stop when the LP
    predicts no decrease (the model is convex in ``d``, so no smaller trust region predicts one), or
    when a step was exact (the activation pattern did not change along it) and ended inside the trust
    region: it is then the minimiser of the model over all ``d``, and the next LP would return ``d = 0``.
    """
    layers = problem.generator.layers
    k = z.size
    state = network.forward(layers, z)
    best = _misfit(problem, state.output)
    radius = max(1e-3, 0.1 * float(np.max(np.abs(z)))) if k else 0.0
    taken = 0
    c = np.zeros(k + 1)
    c[-1] = 1.0
    rows = problem.rows
    model: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the LP's rows at the current z
    for _ in range(max_steps):
        if time.perf_counter() >= deadline or not np.isfinite(best) or best == 0.0 or radius < 1e-12:
            break
        if model is None:  # z moved: linearise again (a rejected step keeps z, and so the rows)
            jac = network.jacobian(layers, state=state, measure=problem.measure, rows=rows, kind="dense")
            r = problem.observe(state.output) - problem.observed
            m = r.size
            a_ub = np.vstack([np.hstack([jac, -np.ones((m, 1))]), np.hstack([-jac, -np.ones((m, 1))])])
            b_ub = np.concatenate([-r, r])
            # the rows the step d = 0 comes closest to violating: those of the largest residuals
            first = np.argsort(b_ub)[: min(b_ub.size, 2 * (k + 1))]
            model = (a_ub, b_ub, first)
        bounds = (np.append(np.full(k, -radius), 0.0), np.append(np.full(k, radius), np.inf))
        res = lp.solve_lp(
            c,
            model[0],
            model[1],
            bounds=bounds,
            time_limit=max(deadline - time.perf_counter(), 0.0),
            row_generation=True,
            initial_rows=model[2],
        )
        if not res.ok or res.x is None:
            break
        if res.x[-1] >= best * (1.0 - 1e-9):
            break  # no decrease predicted (docstring)
        step = res.x[:k]
        candidate = z + step
        after = network.forward(layers, candidate)
        value = _misfit(problem, after.output)
        if value < best * (1.0 - 1e-12):
            gain = (best - value) / best
            exact = all(np.array_equal(d0, d1) for d0, d1 in zip(state.derivatives, after.derivatives))
            inside = float(np.max(np.abs(step))) < radius * (1.0 - 1e-9) if k else True
            z, best, state = candidate, value, after
            model = None
            taken += 1
            radius = radius * 2.0 if float(np.max(np.abs(step))) >= 0.5 * radius else radius
            if gain < 1e-9 or (exact and inside):
                break
        else:
            radius /= 4.0
    return z, taken


def _misfit(problem: Problem, output: np.ndarray) -> float:
    """``max |M ⊙ (A·output - x)|`` (inf when not finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = problem.observe(output)
        value = float(np.max(np.abs(out - problem.observed))) if out.size else 0.0
    return value if np.isfinite(value) else float("inf")
