"""Linear algebra shared by the methods: active-system least squares, layer LPs, preimage dimension.

Notes
-----
**Least squares on the active rows** (Theorem 2 of [1]_). The active system ``W_I u = t`` (``t`` the
active targets minus the bias, rows weighted by ``1/s_j``) is solved by Cholesky of ``W_IᵀW_I`` with
one step of iterative refinement, the cheap route. Its 2-norm condition number is estimated from a
few power / inverse iterations on the factor; above ``COND_LIMIT`` (or if the factorisation fails) the
solve switches to column-pivoted QR, whose diagonal gives the numerical rank (``|R_kk| >
RANK_RTOL·|R_00|``).

**Layer LP**, eq. (4) of [1]_: ``W_I u + b_I = y_I``, ``W_{I^c} u + b_{I^c} <= 0`` (generally: the row
bounds of :mod:`onnxinv.inversion.targets`) and the input bounds (``u >= 0`` after a ReLU). With the
objective ``1ᵀu`` it is the layered basis pursuit of the sparse method.

**Preimage dimension.** The preimage of one layer is the polytope ``P`` above. Its dimension is not
always ``n - rank(W_I)``, the dimension of the equalities' affine hull: inequalities that hold with
equality on all of ``P`` (e.g. ``u_k >= 0`` for a hidden unit that is zero at every point of ``P``)
lower it. For any point ``u0`` of ``P``, the cone of feasible directions

.. math::

    C = \\{d : W_I d = 0,\\; g_k^\\top d \\le 0 \\text{ for every constraint } k \\text{ tight at } u_0\\}

spans the same space as ``P - u0``. One LP finds the tight constraints that are implicit equalities
of ``C``: ``max Σ s_k`` s.t. ``W_I d = 0``, ``g_kᵀd + s_k <= 0``, ``0 <= s_k <= 1``; at an optimum
``s_k = 1`` for every constraint some direction leaves strictly, ``s_k = 0`` for the implicit
equalities (adding such a direction to any optimum would raise the objective). Then
``dim P = n - rank([W_I; g_k for implicit k])``. Adding ``1ᵀd = 0`` gives the dimension of the optimal
face of the basis pursuit LP (0: its optimum is unique).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from onnxinv.inversion import lp
from onnxinv.inversion.result import SolverStatus
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
                err = float(np.linalg.norm(tw - aw @ u) / np.sqrt(lam_min))
                return LeastSquares(u, n, cond, _maxabs(res), err, "cholesky")
    return _solve_qr(a, t, aw, tw)


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
    err = float(np.linalg.norm(tw - aw @ u) / diag[rank - 1]) if rank else float("inf")
    return LeastSquares(u, rank, cond if rank == n else float("inf"), _maxabs(res), err, "qr")


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


@dataclass(frozen=True)
class Dimension:
    """Result of :func:`preimage_dimension`."""

    dim: int
    rank: int  # rank of the equalities alone
    implicit: int  # tight inequalities found to be implicit equalities
    status: SolverStatus
    message: str = ""


def preimage_dimension(
    layer: Layer,
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    u: np.ndarray,
    *,
    tight_tol: float,
    extra_equalities: np.ndarray | None = None,
    time_limit: float | None = None,
) -> Dimension:
    """Dimension of the layer's preimage polytope, from a point ``u`` in it (module Notes).

    ``extra_equalities`` (rows ``g`` with ``gᵀd = 0``) restricts to a face, e.g. ``1ᵀd = 0`` for the
    optimal face of basis pursuit.
    """
    w, b = targets.matrices(layer)
    n = layer.in_features
    eq = targets.equality
    a_eq = w[eq]
    if extra_equalities is not None:
        a_eq = np.vstack([a_eq, np.atleast_2d(extra_equalities)])
    rank_eq = numerical_rank(a_eq)
    if rank_eq == n:
        return Dimension(0, rank_eq, 0, SolverStatus.OPTIMAL)
    pre = w @ u + b
    normals = []
    up = np.isfinite(targets.upper) & ~eq
    up &= targets.upper - pre <= tight_tol
    normals.append(w[up])
    lo = np.isfinite(targets.lower) & ~eq
    lo &= pre - targets.lower <= tight_tol
    normals.append(-w[lo])
    if bounds is not None:
        lower, upper = bounds
        at_lo = np.isfinite(lower) & (u - lower <= tight_tol)
        at_hi = np.isfinite(upper) & (upper - u <= tight_tol)
        eye = np.eye(n)
        normals.append(-eye[at_lo])
        normals.append(eye[at_hi])
    g = np.vstack(normals) if normals else np.zeros((0, n))
    if g.shape[0] == 0:
        return Dimension(n - rank_eq, rank_eq, 0, SolverStatus.OPTIMAL)
    norms = np.linalg.norm(g, axis=1)
    g = g[norms > 0] / norms[norms > 0, None]
    eq_norms = np.linalg.norm(a_eq, axis=1) if a_eq.size else np.zeros(0)
    a_eq_n = a_eq[eq_norms > 0] / eq_norms[eq_norms > 0, None] if a_eq.size else a_eq
    t = g.shape[0]
    # variables [d (n, free), s (t, in [0, 1])]; maximise sum(s)
    c = np.concatenate([np.zeros(n), -np.ones(t)])
    a_ub = sp.hstack([sp.csr_matrix(g), sp.identity(t, format="csr")], format="csr")
    a_eq_full = sp.hstack([sp.csr_matrix(a_eq_n), sp.csr_matrix((a_eq_n.shape[0], t))], format="csr")
    lower = np.concatenate([np.full(n, -np.inf), np.zeros(t)])
    upper = np.concatenate([np.full(n, np.inf), np.ones(t)])
    res = lp.solve_lp(
        c,
        a_ub,
        np.zeros(t),
        a_eq_full if a_eq_n.shape[0] else None,
        np.zeros(a_eq_n.shape[0]) if a_eq_n.shape[0] else None,
        (lower, upper),
        time_limit=time_limit,
    )
    if not res.ok or res.x is None:
        return Dimension(
            n - rank_eq,
            rank_eq,
            0,
            res.status,
            f"the dimension LP ended '{res.status.value}', so n - rank = {n - rank_eq} is only an upper bound",
        )
    implicit = res.x[n:] < 0.5
    full = np.vstack([a_eq_n, g[implicit]]) if implicit.any() else a_eq_n
    rank_all = numerical_rank(full)
    return Dimension(n - rank_all, rank_eq, int(implicit.sum()), SolverStatus.OPTIMAL)


def mutual_coherence(a: np.ndarray) -> float:
    """Largest absolute cosine between two distinct columns of ``a`` (1.0 if a column is zero)."""
    if a.shape[1] < 2:
        return 0.0
    norms = np.linalg.norm(a, axis=0)
    if np.any(norms == 0):
        return 1.0
    an = a / norms
    gram = np.abs(an.T @ an)
    np.fill_diagonal(gram, 0.0)
    return float(gram.max())
