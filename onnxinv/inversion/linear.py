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

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import blas, lapack

from onnxinv.inversion import lp
from onnxinv.inversion.targets import Targets
from onnxinv.layers import Layer, Weight

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
    factor: np.ndarray | None = None  # Cholesky route: upper triangular R with RᵀR = AᵀW²A


def solve_active(a: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None) -> LeastSquares:
    """Least squares ``min ||diag(w)(A u - t)||`` with rank and conditioning (see module Notes)."""
    m, n = a.shape
    unit = weights is None or _all_ones(weights)
    aw = a if unit or weights is None else a * weights[:, None]
    tw = t if unit or weights is None else t * weights
    if m >= n and n > 0:
        gram = aw.T @ aw
        out = _cholesky_solve(gram, aw.T @ tw, lambda u: aw @ u, lambda r: aw.T @ r, tw, m)
        if out is not None:
            # the residual is reported on the unweighted rows
            return out if unit else dataclasses.replace(out, residual=_maxabs(a @ out.u - t))
    return _solve_qr(a, t, aw, tw)


def solve_rows(
    w: Weight, select: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None
) -> LeastSquares:
    """:func:`solve_active` on the rows ``select`` (bool mask or indices) of ``w``.

    The rows are gathered once. For a large system (more than ``BLOCK_ENTRIES`` entries) no copy of
    them is made: the Gram matrix is accumulated in place by BLAS ``syrk`` one gathered block at a
    time, and the products with ``A`` go through the whole ``w`` (``(w u)[select]``, ``wᵀ r`` with
    ``r`` zero off the rows), so the working set stays at the Gram matrix plus one block. Unweighted
    ReLU rows skip the weighting.
    """
    idx = np.flatnonzero(select) if select.dtype == bool else np.asarray(select, dtype=np.intp)
    m, n = idx.size, w.shape[1]
    if sp.issparse(w):  # gathered rows of a sparse weight are solved densely (small layers only)
        return solve_active(np.asarray(w[idx].toarray()), t, weights)  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union
    if m * n <= BLOCK_ENTRIES or m < n or n == 0:
        return solve_active(w[idx], t, weights)
    unit = weights is None or _all_ones(weights)
    scale = np.ones(m) if weights is None or unit else weights
    tw = t * scale if not unit else t
    step = max(1, BLOCK_ENTRIES // n)
    # G = Σ_blocks A_bᵀA_b accumulated in place by BLAS syrk (upper triangle, Fortran order), one
    # block of gathered rows at a time
    gram_f = np.zeros((n, n), order="F")
    rhs = np.zeros(n)
    for i in range(0, m, step):
        part = w[idx[i : i + step]]
        if not unit:
            part *= scale[i : i + step, None]
        gram_f = _syrk(1.0, part.T, beta=1.0, c=gram_f, trans=0, lower=0, overwrite_c=1)
        rhs += part.T @ tw[i : i + step]
    rows_of = np.zeros(w.shape[0])

    # products with A = diag(weights) W[idx] through the whole W: no gathered copy
    def apply(u: np.ndarray) -> np.ndarray:
        return (w @ u)[idx] * scale

    def apply_t(r: np.ndarray) -> np.ndarray:
        rows_of[:] = 0.0
        rows_of[idx] = r * scale
        return w.T @ rows_of

    # the 1-norm of the symmetric G from its upper triangle (syrk leaves the lower one at zero)
    magnitude = np.abs(gram_f)
    anorm = float(np.max(magnitude.sum(axis=0) + magnitude.sum(axis=1) - np.abs(np.diag(gram_f))))
    del magnitude
    out = _cholesky_solve(gram_f, rhs, apply, apply_t, tw, m, fortran=True, anorm=anorm)
    if out is not None:
        if not unit:
            out = dataclasses.replace(out, residual=_maxabs(apply(out.u) / scale - t))
        return out
    return solve_active(w[idx], t, weights)


# Systems with more entries than this are never gathered as one copy (solve_rows).
BLOCK_ENTRIES = 1 << 22


def _all_ones(v: np.ndarray) -> bool:
    return bool(v.size == 0 or (v.min() == 1.0 and v.max() == 1.0))


def _cholesky_solve(
    gram: np.ndarray,
    rhs: np.ndarray,
    apply: Callable[[np.ndarray], np.ndarray],
    apply_t: Callable[[np.ndarray], np.ndarray],
    tw: np.ndarray,
    m: int,
    *,
    fortran: bool = False,
    anorm: float | None = None,
) -> LeastSquares | None:
    """The Cholesky route of :func:`solve_active` from the Gram matrix (overwritten), ``Aᵀt`` and the
    products ``u -> A u``, ``r -> Aᵀ r``; None when the factorisation fails or the system is worse
    conditioned than ``COND_LIMIT`` (the caller then uses pivoted QR).

    LAPACK is called directly: ``potrf`` factors, ``pocon`` estimates the reciprocal 1-norm condition
    number of the Gram matrix from the factor (Hager-Higham, a few triangular solves), ``potrs``
    solves. ``sqrt(1/rcond)`` estimates the 2-norm condition number of ``A``, ``rcond·||G||_1`` its
    smallest eigenvalue.
    """
    n = gram.shape[0]
    # the Gram matrix is symmetric: its transpose is the same matrix in Fortran order, which LAPACK
    # factors in place (a non-finite entry makes potrf fail or leaves a non-finite diagonal);
    # ``fortran``: it is already in Fortran order, its upper triangle filled, with its 1-norm given
    gram_f = gram if fortran else gram.T
    if anorm is None:
        anorm = float(_lange("1", gram_f))
    factor, info = _potrf(gram_f, lower=0, clean=1, overwrite_a=1)
    if info != 0 or not (np.isfinite(anorm) and np.all(np.isfinite(np.diag(factor)))):
        return None
    rcond, info = _pocon(factor, anorm, uplo="U")
    rcond = float(rcond)
    if info != 0 or not rcond > 0:
        return None
    cond = float(np.sqrt(1.0 / rcond))
    if not cond <= COND_LIMIT:
        return None
    u, info = _potrs(factor, rhs, lower=0)
    if info != 0:
        return None
    r = tw - apply(u)
    step, info = _potrs(factor, apply_t(r), lower=0)
    u = u + step
    resid = apply(u) - tw
    rw = float(np.linalg.norm(resid))
    lam_min = rcond * anorm
    err = rw / float(np.sqrt(lam_min)) if lam_min > 0 else float("inf")
    return LeastSquares(u, n, cond, _maxabs(resid), err, "cholesky", _spread(factor), rw / np.sqrt(m), factor)


def gram_full_rank(gram: np.ndarray) -> bool:
    """True when the Cholesky route of :func:`solve_active` accepts the Gram matrix ``AᵀA``: it
    factors and its condition estimate is within ``COND_LIMIT`` (then ``A`` has full column rank by
    any threshold near ``RANK_RTOL``). False means "not shown": use :func:`numerical_rank`. ``gram``
    is left untouched."""
    n = gram.shape[0]
    if n == 0:
        return True
    work = np.array(gram, dtype=np.float64, order="F")
    anorm = float(_lange("1", work))
    factor, info = _potrf(work, lower=0, clean=1, overwrite_a=1)
    if info != 0 or not (np.isfinite(anorm) and np.all(np.isfinite(np.diag(factor)))):
        return False
    rcond, info = _pocon(factor, anorm, uplo="U")
    return info == 0 and float(rcond) > 0 and float(np.sqrt(1.0 / float(rcond))) <= COND_LIMIT


def row_reach(factor: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``||R^{-T} g||_2`` for each row ``g`` of ``rows``: with ``RᵀR = AᵀA``, the largest ``|gᵀd|`` over
    the directions with ``||A d||_2 <= 1`` (``gᵀd = (R^{-T}g)ᵀ(R d)`` and ``||R d|| = ||A d||``)."""
    if rows.shape[0] == 0:
        return np.zeros(0)
    y, info = _trtrs(factor, np.ascontiguousarray(rows.T), lower=0, trans=1)
    if info != 0:
        return np.full(rows.shape[0], np.inf)
    return np.sqrt(np.sum(y * y, axis=0))


_potrf, _pocon, _potrs, _trtrs, _trtri, _lange = lapack.get_lapack_funcs(
    ("potrf", "pocon", "potrs", "trtrs", "trtri", "lange"), dtype=np.float64
)
(_syrk,) = blas.get_blas_funcs(("syrk",), dtype=np.float64)

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
    y, info = _trtrs(r, _probes(n), lower=0, trans=1)
    value = float(np.sqrt(np.sum(y * y) / (_PROBES * n))) if info == 0 else float("inf")
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
    spread = _spread(np.ascontiguousarray(r[:n, :n])) if rank == n else float("inf")
    cond = cond if rank == n else float("inf")
    return LeastSquares(u, rank, cond, _maxabs(res), err, "qr", spread, rw / np.sqrt(m))


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
    aw = a if row_scale is None or _all_ones(row_scale) else a / row_scale[:, None]
    gram = aw.T @ aw
    if not np.all(np.isfinite(gram)):
        return float("inf")
    factor, info = _potrf(gram.T, lower=0, clean=1, overwrite_a=1)
    if info != 0:
        return float("inf")
    return factor_error_scale(factor)


def factor_error_scale(factor: np.ndarray) -> float:
    """:func:`error_scale` from the upper Cholesky factor ``R`` of ``AᵀS⁻²A``: ``trace(G⁻¹) =
    ||R⁻¹||_F²``, one triangular inverse."""
    n = factor.shape[0]
    if n == 0:
        return 0.0
    inv, info = _trtri(factor, lower=0)
    if info != 0:
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
    # a row widened to +inf (huge data times a huge tolerance) constrains nothing
    keep = b_ub < np.inf
    if not keep.all():
        a_ub, b_ub = a_ub[keep], b_ub[keep]
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
