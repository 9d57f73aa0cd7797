"""Linear algebra shared by the methods: active-system least squares, ranks, the layer LPs.

Notes
-----
**Least squares on the active rows** (Theorem 2 of [1]_). The active system ``W_I u = t`` (``t`` the
active targets minus the bias, rows weighted by ``1/s_j``) is solved by Cholesky of ``W_IᵀW_I`` with
one step of iterative refinement, the cheap route. Its 2-norm condition number is estimated from a
few power / inverse iterations on the factor; above ``COND_LIMIT`` (or if the factorisation fails) the
solve switches to column-pivoted QR, whose diagonal gives the numerical rank (``|R_kk| >
RANK_RTOL·|R_00|``). The spread ``sqrt(trace((AᵀA)⁻¹)/n)`` (Hutchinson's estimator on the factor)
turns a per-row error of the data into the typical per-entry error of ``u``.

**Layer LP**, eq. (4) of [1]_: ``W_I u + b_I = y_I``, ``W_{I^c} u + b_{I^c} <= 0`` (generally: the row
bounds of :mod:`onnxinv.inversion.targets`) and the input bounds (``u >= 0`` after a ReLU). With the
objective ``1ᵀu`` it is the layered basis pursuit of the sparse method.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from onnxinv.inversion import lp
from onnxinv.inversion.targets import Targets
from onnxinv.layers import Layer

COND_LIMIT = 1e6
RANK_RTOL = 1e-10


@dataclass(frozen=True, eq=False)
class LeastSquares:
    """Solution of the (weighted) active system."""

    u: np.ndarray
    rank: int
    cond: float
    residual: float  # max |A u - t| (unweighted rows)
    error: float  # estimated absolute error of u from the data's inconsistency
    method: str
    spread: float = float("inf")  # sqrt(trace((AᵀW²A)⁻¹)/n): per-entry error of u per unit row error
    rms: float = 0.0  # root-mean-square weighted residual ||diag(w)(A u - t)|| / sqrt(m)


def solve_active(a: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None) -> LeastSquares:
    """Least squares ``min ||diag(w)(A u - t)||`` with rank and conditioning (see module Notes)."""
    m, n = a.shape
    aw = a if weights is None else a * weights[:, None]
    tw = t if weights is None else t * weights
    if m >= n and n > 0:
        gram = aw.T @ aw
        try:
            factor = sla.cho_factor(gram, lower=False, check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            factor = None
        if factor is not None and np.all(np.isfinite(factor[0])):
            lam_max, lam_min = _extreme_eigs(gram, factor)
            cond = float(np.sqrt(lam_max / lam_min)) if lam_min > 0 else float("inf")
            if cond <= COND_LIMIT:
                u = sla.cho_solve(factor, aw.T @ tw, check_finite=False)
                r = tw - aw @ u
                u = u + sla.cho_solve(factor, aw.T @ r, check_finite=False)
                res = a @ u - t
                rw = float(np.linalg.norm(tw - aw @ u))
                err = rw / float(np.sqrt(lam_min))
                spread = _spread(factor[0])
                return LeastSquares(u, n, cond, _maxabs(res), err, "cholesky", spread, rw / np.sqrt(m))
    return _solve_qr(a, t, aw, tw)


_PROBES = 8


@functools.lru_cache(maxsize=64)
def _probes(n: int) -> np.ndarray:
    """The fixed ``±1`` probes of :func:`_spread` for ``n`` unknowns (read-only)."""
    signs = np.where(np.random.default_rng(0).random((n, _PROBES)) < 0.5, -1.0, 1.0)
    signs.setflags(write=False)
    return signs


def _spread(r: np.ndarray) -> float:
    """``sqrt(trace((RᵀR)⁻¹)/n)`` for an upper triangular ``R``, by Hutchinson's estimator with a fixed
    set of ``±1`` probes (``trace(M⁻¹) = E[vᵀM⁻¹v]``; a few triangular solves, not an inverse)."""
    n = r.shape[0]
    if n == 0:
        return 0.0
    y = sla.solve_triangular(r, _probes(n), trans="T", lower=False, check_finite=False)
    value = float(np.sqrt(np.sum(y * y) / (_PROBES * n)))
    return value if np.isfinite(value) else float("inf")


def _solve_qr(a: np.ndarray, t: np.ndarray, aw: np.ndarray, tw: np.ndarray) -> LeastSquares:
    m, n = a.shape
    if n == 0:
        return LeastSquares(np.zeros(0), 0, 1.0, _maxabs(t), 0.0, "qr")
    if m == 0:
        return LeastSquares(np.zeros(n), 0, float("inf"), 0.0, float("inf"), "qr")
    q, r, perm = sla.qr(aw, mode="economic", pivoting=True, check_finite=False)
    diag = np.abs(np.diag(r))
    rank = int(np.sum(diag > RANK_RTOL * diag[0])) if diag.size and diag[0] > 0 else 0
    u = np.zeros(n)
    if rank:
        sol = sla.solve_triangular(r[:rank, :rank], (q.T @ tw)[:rank], check_finite=False)
        u[perm[:rank]] = sol
    cond = float(diag[0] / diag[rank - 1]) if rank else float("inf")
    res = a @ u - t
    rw = float(np.linalg.norm(tw - aw @ u))
    err = rw / float(diag[rank - 1]) if rank else float("inf")
    spread = _spread(r[:n, :n]) if rank == n else float("inf")
    cond = cond if rank == n else float("inf")
    return LeastSquares(u, rank, cond, _maxabs(res), err, "qr", spread, rw / np.sqrt(m))


def _extreme_eigs(gram: np.ndarray, factor: tuple[np.ndarray, bool]) -> tuple[float, float]:
    """Estimates of the largest and smallest eigenvalue of the s.p.d. ``gram`` (a few iterations)."""
    n = gram.shape[0]
    v = np.cos(np.arange(1, n + 1) * 0.7548776662466927) + 1.0  # fixed, generic start vector
    w = v / np.linalg.norm(v)
    for _ in range(4):
        w = gram @ w
        w /= np.linalg.norm(w)
    lam_max = float(w @ (gram @ w))
    w = v / np.linalg.norm(v)
    lam_inv = 0.0
    for _ in range(4):
        w = sla.cho_solve(factor, w, check_finite=False)
        lam_inv = float(np.linalg.norm(w))
        w /= lam_inv
    return lam_max, (1.0 / lam_inv if lam_inv > 0 else 0.0)


def error_scale(a: np.ndarray, row_scale: np.ndarray | None = None) -> float:
    """``sqrt(trace((AᵀS⁻²A)⁻¹) / n)`` for a tall ``A`` of full column rank (inf otherwise).

    If the rows' errors, divided by ``S = diag(row_scale)``, are independent with standard deviation
    ``σ``, the least-squares solution's entries have root-mean-square standard deviation
    ``σ · error_scale``: a typical per-entry error, not a worst-case bound.
    """
    m, n = a.shape
    if n == 0:
        return 0.0
    if m < n:
        return float("inf")
    aw = a if row_scale is None else a / row_scale[:, None]
    try:
        chol = sla.cholesky(aw.T @ aw, lower=True, check_finite=False)
        inv = sla.solve_triangular(chol, np.eye(n), lower=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return float("inf")
    value = float(np.sqrt(np.sum(inv * inv) / n))
    return value if np.isfinite(value) else float("inf")


def numerical_rank(a: np.ndarray) -> int:
    """Rank with the same relative threshold as the QR path (``RANK_RTOL``)."""
    if a.size == 0:
        return 0
    s = np.linalg.svd(a, compute_uv=False)
    return int(np.sum(s > RANK_RTOL * s[0])) if s[0] > 0 else 0


def _maxabs(v: np.ndarray) -> float:
    return float(np.max(np.abs(v))) if v.size else 0.0


# ----------------------------------------------------------------------------- layer LPs


def layer_lp(
    layer: Layer,
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    *,
    objective: np.ndarray | None = None,
    slack: float = 0.0,
    time_limit: float | None = None,
) -> lp.LPResult:
    """The eq. (4) LP of one layer over ``u``: row bounds of ``targets`` widened by ``slack``
    (equalities become ``|a - y| <= slack·s`` when ``slack > 0``), input bounds, objective ``objective``
    (None: feasibility)."""
    w, b = targets.matrices(layer)
    eq = targets.equality if slack == 0.0 else np.zeros(targets.count, dtype=bool)
    up = np.isfinite(targets.upper) & ~eq
    lo = np.isfinite(targets.lower) & ~eq
    a_ub = np.vstack([w[up], -w[lo]])
    b_ub = np.concatenate(
        [
            targets.upper[up] - b[up] + slack * targets.upper_scale[up],
            -(targets.lower[lo] - b[lo]) + slack * targets.lower_scale[lo],
        ]
    )
    n = layer.in_features
    c = np.zeros(n) if objective is None else objective
    return lp.solve_lp(
        c,
        a_ub if a_ub.shape[0] else None,
        b_ub if a_ub.shape[0] else None,
        w[eq] if eq.any() else None,
        (targets.lower[eq] - b[eq]) if eq.any() else None,
        bounds,
        time_limit=time_limit,
    )


def min_widening(
    layer: Layer,
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    *,
    time_limit: float | None = None,
) -> lp.LPResult:
    """The smallest widening ``t`` of the row bounds (in units of each row's scale, so on the layer's
    output) for which the eq. (4) LP has a point: ``min t`` over ``(u, t)`` subject to
    ``ℓ_j - t s^ℓ_j <= a_j <= h_j + t s^h_j`` and the input bounds; ``x = [u, t]``.

    When rounding leaves the exact eq. (4) LP without a point, its optimum is the point that comes
    closest, and the constraints tight there (within a few ``t*``) are those of the unrounded data.
    """
    c, a_ub, b_ub, box = widening_lp(layer, targets, bounds)
    # degenerate at its optimum (t is tiny and many rows bind), where dual simplex can stall
    return lp.solve_lp(
        c,
        a_ub if a_ub.shape[0] else None,
        b_ub if a_ub.shape[0] else None,
        bounds=box,
        time_limit=time_limit,
        algorithm="primal simplex",
    )


def widening_lp(
    layer: Layer, targets: Targets, bounds: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(c, A_ub, b_ub, bounds)`` of ``min t`` over ``x = [u, t]`` subject to every finite row bound
    widened by ``t`` times the row's scale: ``ℓ_j - t s^ℓ_j <= w_jᵀu + b_j <= h_j + t s^h_j``, ``t >= 0``.

    Shared by :func:`min_widening` and the l_inf LP of Algorithm 1 (there ``t`` is ``δ``).
    """
    w, b = targets.matrices(layer)
    n = layer.in_features
    up = np.isfinite(targets.upper)
    lo = np.isfinite(targets.lower)
    a_ub = np.vstack(
        [
            np.hstack([w[up], -targets.upper_scale[up, None]]),
            np.hstack([-w[lo], -targets.lower_scale[lo, None]]),
        ]
    )
    b_ub = np.concatenate([targets.upper[up] - b[up], -(targets.lower[lo] - b[lo])])
    c = np.zeros(n + 1)
    c[-1] = 1.0
    lower, upper = (np.full(n, -np.inf), np.full(n, np.inf)) if bounds is None else bounds
    return c, a_ub, b_ub, (np.append(lower, 0.0), np.append(upper, np.inf))
