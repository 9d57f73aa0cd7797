"""Exact layer-wise inversion of a realizable observation (Theorem 2 and eq. (4) of [1]_).

Problem
-------
Given ``x = G(z*)`` exactly, find ``z``, one layer at a time from the output. For a layer
``y = act(W u + b)``:

.. math::

    I = \\{j : y_j > \\tau\\}, \\qquad W_I u = y_I - b_I, \\qquad W_{I^c} u + b_{I^c} \\le 0,
    \\qquad u \\ge 0 \\text{ if } u \\text{ is a ReLU output}

with ``τ = 1e-9 · max|y|`` (never 0: round-off returns true zeros as 1e-16) raised to 10× the
estimated error of ``y`` when ``y`` was itself estimated from inconsistent (e.g. float32) data.

Notes
-----
* **Theorem 2 of [1]_**: if ``W_I`` has full column rank, ``u`` is the unique solution of the active
  system, found by least squares (Cholesky of ``W_IᵀW_I`` with its conditioning checked, pivoted QR
  when ill-conditioned); the inactive inequalities and input bounds are then confirmed. If they fail,
  the eq. (4) LP decides (infeasible: the observation is outside the generator's range).
* **Not identifiable**: ``|I| < n_in`` or ``rank(W_I) < n_in``. The eq. (4) LP returns a point of the
  layer's preimage polytope and its dimension is computed (``n_in - rank`` less the implicit
  equalities, see :mod:`onnxinv.inversion.linear`). The verdict then says *not unique*.
* **LeakyReLU**, eq. (5) of [1]_: every row is an equality (``y / slope`` where ``y < 0``): unique iff
  ``rank(W) = n_in``. **Identity**: plain least squares. **Tanh / Sigmoid**: ``atanh`` / ``logit``
  first, rows weighted by the derivative; saturated entries are inequalities
  (:mod:`onnxinv.inversion.targets`).
* Only the last layer's rows are restricted by a mask.
* **What it certifies.** When every layer's active system has full column rank, the chain of layer
  solves from the observation down is Theorem 2's proof that ``z`` is the only latent: this method's
  steps are then a layer-wise certificate (:mod:`onnxinv.inversion.verdict`). If rounding, amplified
  from layer to layer, leaves the latent just outside ``tol``, the pipeline refines it on the whole
  network and the evidence is re-established at the refined latent.

Tolerances
----------
Every check of a layer ("is the active system consistent", "do the other rows and the input bounds
hold") is made **in the layer's output space**: a row's misfit is how far ``act(a_j)`` is from
``y_j``, i.e. the pre-activation misfit times the activation's derivative (``1/s_j`` in
:mod:`onnxinv.inversion.targets`; ``y(1-y)`` for a sigmoid, ``1-y²`` for tanh). Inverting a sigmoid by
``logit`` amplifies the rounding of ``y`` by ``1/(y(1-y))``; measured on the output the same row is
as accurate as the data. The tolerance (:meth:`~onnxinv.inversion.framework.LayerContext.tolerance`) is

.. math::

    \\delta = \\max(\\mathrm{tol},\\, c_\\rho\\,\\rho)\\,\\max_j |y_j| \\;+\\; c_e\\, e_y

with ``ρ`` the machine epsilon of the data (the coarser of the model's dtype and the observations'
dtype; float32 outputs are only accurate to about ``1e-7`` relative, and onnxruntime's float32
sigmoid / tanh to about ``1.5e-7`` absolute), ``c_ρ = ROUNDING_FACTOR``, and ``e_y`` the estimated
error of ``y`` when it was itself estimated by the layer above (``c_e = ERROR_FACTOR``). A float64
model keeps ``δ = tol·max|y|``.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from onnxinv.inversion import identifiability, linear, lp
from onnxinv.inversion.framework import (
    ERROR_FACTOR,
    Draft,
    LayerContext,
    LayerOutcome,
    Method,
    Problem,
    Settings,
    clean_targets,
    least_squares_fallback,
    walk,
)
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import Targets, project, row_misfit

__all__ = ["METHOD", "clean_layer", "solve", "solve_layer"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Exact layer-wise inversion of ``problem`` (see module docstring)."""
    return walk(problem, settings, solve_layer, "exact", deadline)


def solve_layer(ctx: LayerContext) -> LayerOutcome:
    """One layer of the exact method: :func:`clean_layer` on the clean row bounds."""
    return clean_layer(ctx, clean_targets(ctx))


def clean_layer(ctx: LayerContext, targets: Targets, *, objective: np.ndarray | None = None) -> LayerOutcome:
    """Theorem 2 of [1]_ with the eq. (4) LP as fallback, for exact data.

    Full column rank of the active system: weighted least squares (rows weighted by the activation's
    derivative, so that the fit is measured on the output), then the checks of the module's
    Tolerances at the point projected into the input bounds. If the RMS misfit of the active rows
    already exceeds ``δ``, no input reproduces the output within ``δ`` on every row (the l_inf misfit
    of any point is at least the least-squares RMS misfit): infeasible. The other rows and the bounds
    also allow for the uncertainty of ``u`` itself (:func:`solution_error`, :func:`row_gain`); if they
    fail, the eq. (4) LP with every row widened by that tolerance decides.

    Otherwise the layer is not identifiable by its active rows alone: the eq. (4) LP (with
    ``objective``, e.g. ``1ᵀu`` for basis pursuit) gives a point of the preimage and
    :func:`~onnxinv.inversion.linear.preimage_dimension` its dimension. When tight inequalities pin
    it (dimension 0), the point is recomputed by least squares on the active rows and those implicit
    equalities (:func:`~onnxinv.inversion.linear.pinned_point`). Rounded data can leave the exact LP
    without a point although the unrounded one has one (a hidden code pinned by its zeros is
    overdetermined); then the point that comes closest (:func:`~onnxinv.inversion.linear.min_widening`,
    within ``δ``) is used. Every constraint that fixes that point is tight by construction, so
    dimension 0 is accepted there only if the least squares on the implicit equalities reproduces the
    data within ``δ``; otherwise the dimension reported is the upper bound ``n - rank``.
    """
    layer = ctx.layer
    n = layer.in_features
    w, b = targets.matrices(layer)
    eq = targets.equality
    n_eq = int(eq.sum())
    t_eq = targets.lower[eq] - b[eq]
    finite = np.concatenate(
        [targets.lower[np.isfinite(targets.lower)], targets.upper[np.isfinite(targets.upper)]]
    )
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    delta = ctx.tolerance()
    ls = None
    if n_eq >= n:
        ls = linear.solve_rows(w, eq, t_eq, 1.0 / targets.lower_scale[eq])
    if ls is not None and ls.rank == n:
        how = f"least squares ({ls.method}, condition ~{ls.cond:.2g}) on {n_eq} active rows"
        rms = ls.rms  # the active rows' misfit on the output (the weighted residual)
        u_error = solution_error(ctx, ls, n_eq, n)
        if rms > delta:
            return LayerOutcome(
                ls.u,
                SolverStatus.INFEASIBLE,
                n_eq,
                n,
                0,
                f"{how}: the active system is inconsistent (RMS misfit {rms:.3g} on the layer's output > "
                f"tolerance {delta:.2g}, so every input misses some row by more than that): no input of layer "
                f"{ctx.index} reproduces its output; for noisy data use a noisy method",
                u_error=u_error,
            )
        u = project(ls.u, ctx.bounds)
        worst = float(np.max(row_misfit(w, b, targets, u))) if targets.count else 0.0
        # the other rows and the bounds also allow for the uncertainty of u itself
        delta_all = delta
        if worst > delta:
            delta_all += ERROR_FACTOR * math.sqrt(n) * u_error * row_gain(w, targets)
        if worst <= delta_all:
            return LayerOutcome(
                u,
                SolverStatus.OPTIMAL,
                n_eq,
                n,
                0,
                f"{how}; every row holds within {delta_all:.2g} on the layer's output (largest misfit "
                f"{worst:.3g})",
                "full column rank (Theorem 2)",
                u_error=u_error,
            )
        proof = _misfit_proof(w, b, targets, ls, n_eq, delta_all)
        if proof is not None:
            return LayerOutcome(
                u,
                SolverStatus.INFEASIBLE,
                n_eq,
                n,
                0,
                f"{how}: the only candidate misses a row or bound by {worst:.3g} (tolerance {delta_all:.2g}), "
                f"and every input that holds the active rows within the tolerance still misses row "
                f"{proof[0]} by at least {proof[1]:.3g}: no input of layer {ctx.index} produces its output",
                u_error=u_error,
            )
        res = linear.layer_lp(layer, targets, ctx.bounds, slack=delta_all, time_limit=ctx.lp_time)
        if res.ok and res.x is not None:
            return LayerOutcome(
                res.x,
                SolverStatus.OPTIMAL,
                n_eq,
                n,
                0,
                f"{how} missed a row or bound by {worst:.3g} (tolerance {delta_all:.2g}); the eq. (4) LP "
                "with rows widened by the tolerance found the point",
                "full column rank (Theorem 2)",
                u_error=max(u_error, res.violation * max(scale, 1.0)),
            )
        return LayerOutcome(
            u,
            res.status,
            n_eq,
            n,
            0,
            f"{how}: the only candidate misses a row or bound by {worst:.3g} (tolerance {delta_all:.2g}) "
            f"and the eq. (4) LP with rows widened by the tolerance ended '{res.status.value}' "
            f"({res.message}): no input of layer {ctx.index} produces its output",
            u_error=u_error,
        )

    rank = ls.rank if ls is not None else linear.numerical_rank(w[eq])
    # LSMR (a large sparse system) tests no rank: its rank below n means "not shown", not a value
    rank_text = (
        f"of rank {rank}" if ls is None or ls.method != "lsmr" else "of a rank not shown to be full (LSMR)"
    )
    res = linear.layer_lp(layer, targets, ctx.bounds, objective=objective, time_limit=ctx.lp_time)
    tight = 1e-6 * max(ctx.scale, 1.0)
    what = "basis pursuit" if objective is not None else "the eq. (4) LP"
    closest = False
    if (not res.ok or res.x is None) and res.status is not SolverStatus.TIME_LIMIT:
        # rounding can leave the exact system without a point: take the one that comes closest
        # (not after a time limit: the widened LP is no easier)
        wide = linear.min_widening(layer, targets, ctx.bounds, time_limit=ctx.lp_time)
        if wide.ok and wide.x is not None and wide.x[-1] <= delta:
            t_star = float(wide.x[-1])
            tight += 2.0 * t_star
            closest = True
            what = (
                f"the point that comes closest to the eq. (4) LP (rows widened by {t_star:.2g}; the data "
                "admit no exact point)"
            )
            res = dataclasses.replace(wide, x=wide.x[:n], violation=t_star / max(scale, 1.0))
    if not res.ok or res.x is None:
        fallback = least_squares_fallback(ctx, res.status, "")
        return LayerOutcome(
            fallback.u,
            res.status,
            n_eq,
            rank,
            n - rank,
            f"{n_eq} active rows {rank_text} < {n} unknowns, and the eq. (4) LP ended "
            f"'{res.status.value}' ({res.message}): no point of this layer's preimage was found",
        )
    u = res.x
    dim = identifiability.preimage_dimension(
        layer, targets, ctx.bounds, u, tight_tol=tight, time_limit=ctx.lp_time
    )
    u_error = res.violation * max(scale, 1.0)
    dimension, cert, note = dim.dim, "", dim.message
    if dim.dim == 0:
        # the point's tight constraints leave no direction; least squares on all of them gives the point
        # without leaning on the n that make the LP vertex, and confirms the pinning on the data
        pinned = identifiability.pinned_point(layer, targets, ctx.bounds, dim)
        worst = float("inf")
        if pinned is not None:
            u_pin = project(pinned.u, ctx.bounds)
            worst = float(np.max(row_misfit(w, b, targets, u_pin))) if targets.count else 0.0
        if pinned is not None and worst <= delta:
            u, u_error = u_pin, solution_error(ctx, pinned, n_eq + dim.implicit, n)
            cert = "preimage is a single point (rank with implicit equalities = n)"
            msg = (
                f"{n_eq} active rows {rank_text} < {n} unknowns, but {dim.implicit} tight inequalities "
                f"pin the preimage to the point {what} found; least squares ({pinned.method}) on the "
                f"active rows and those equalities gives it within {delta:.2g} on the layer's output "
                f"(largest misfit {worst:.3g})"
            )
        elif not closest:
            cert = "preimage is a single point (rank with implicit equalities = n)"
            msg = (
                f"{n_eq} active rows {rank_text} < {n} unknowns, but {dim.implicit} tight inequalities "
                f"pin the preimage to the point {what} found"
            )
        else:
            # at the closest point every constraint that fixes it is tight by construction; without a
            # consistent least-squares point nothing shows that the unrounded preimage is a point
            dimension = n - rank
            msg = (
                f"{n_eq} active rows {rank_text} < {n} unknowns; {what} is fixed by {dim.implicit} tight "
                f"inequalities, but least squares on them misses the data by {worst:.3g} (tolerance "
                f"{delta:.2g}), so the preimage is not shown to be a point: its dimension is at most "
                f"{dimension}"
            )
    elif closest:
        dimension = n - rank
        msg = (
            f"{n_eq} active rows {rank_text} < {n} unknowns: the preimage has dimension at most "
            f"{dimension}; {what} is one point of it"
        )
    else:
        msg = (
            f"{n_eq} active rows {rank_text} < {n} unknowns: the preimage has dimension {dim.dim}; "
            f"{what} picked one point of it"
        )
    if note:
        msg += f" ({note})"
    return LayerOutcome(u, SolverStatus.OPTIMAL, n_eq, rank, dimension, msg, cert, u_error=u_error)


def _misfit_proof(
    w: np.ndarray, b: np.ndarray, targets: Targets, ls: linear.LeastSquares, rows: int, delta: float
) -> tuple[int, float] | None:
    """A proof, without an LP, that the eq. (4) LP with every row widened by ``delta`` has no point:
    (row, lower bound of its misfit) or None when the bound proves nothing.

    Every point ``u'`` of that LP meets each active row within ``delta`` on the output, so with ``A``
    the weighted active rows and ``u`` their least-squares solution, ``||A (u' - u)||_2 <= sqrt(m)
    (delta + rms)``; a row ``g`` then moves by at most ``||R^{-T} g||_2`` times that
    (:func:`~onnxinv.inversion.linear.row_reach`, ``R`` the Cholesky factor of ``AᵀA``). A row whose
    misfit at ``u``, less that reach (doubled, for rounding), still exceeds ``delta`` by more than the
    LP solver's own tolerance rules out every ``u'``: the same verdict the LP gives, in microseconds
    instead of seconds (an infeasible dense LP is HiGHS's slowest case).
    """
    if ls.factor is None or targets.count == 0:
        return None
    misfit = row_misfit(w, b, targets, ls.u)
    suspects = np.flatnonzero(misfit > delta)
    if suspects.size == 0:
        return None
    suspects = suspects[np.argsort(-misfit[suspects])[:64]]
    radius = math.sqrt(rows) * (delta + ls.rms)
    row_scale = np.minimum(targets.lower_scale, targets.upper_scale)[suspects]
    reach = linear.row_reach(ls.factor, _dense(w[suspects]))
    bound = misfit[suspects] - 2.0 * reach * radius / row_scale
    rhs = np.maximum(
        np.where(np.isfinite(targets.upper[suspects]), np.abs(targets.upper[suspects] - b[suspects]), 0.0),
        np.where(np.isfinite(targets.lower[suspects]), np.abs(targets.lower[suspects] - b[suspects]), 0.0),
    )
    # what the LP's feasibility tolerance and its numpy re-check could still accept
    slack = delta + 2.0 * lp.RECHECK_TOL * (1.0 + rhs) / row_scale
    proved = np.flatnonzero(bound > slack)
    if proved.size == 0:
        return None
    best = proved[np.argmax(bound[proved])]
    return int(targets.rows[suspects[best]]), float(bound[best])


def _dense(rows: object) -> np.ndarray:
    return rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)


def solution_error(ctx: LayerContext, ls: linear.LeastSquares, rows: int, n: int) -> float:
    """Typical per-entry error of a least-squares ``u``: the rows' error level times the spread.

    The rows' error (on the layer's output) is the larger of what is known beforehand (the error of
    ``y`` passed down, plus one rounding of the data, ``ρ·max|y|``) and what the fit reveals (its RMS
    residual, scaled by ``sqrt(m/(m-n))`` since a fit of ``n`` unknowns absorbs part of the error).
    """
    prior = ctx.y_error + ctx.precision * ctx.scale
    seen = ls.rms * math.sqrt(rows / max(rows - n, 1))
    value = max(prior, seen) * ls.spread
    return value if math.isfinite(value) else 0.0


def row_gain(w: np.ndarray, targets: Targets) -> float:
    """``max_j ||w_j|| / s_j``: how much a unit change of ``u`` can move a row, measured on the output."""
    if targets.count == 0:
        return 0.0
    scale = np.minimum(targets.lower_scale, targets.upper_scale)
    return float(np.max(linear.row_norms(w) / scale))


METHOD = Method(
    name="exact",
    solve=solve,
    summary="realizable case: least squares on each layer's active rows (Theorem 2), eq. (4) LP as fallback",
    noise="clean",
    certifies="layer-wise",
)
