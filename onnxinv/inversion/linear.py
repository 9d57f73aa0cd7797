"""Linear algebra shared by the methods: active-system least squares, layer LPs, preimage dimension.

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

import functools
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


@dataclass(frozen=True, eq=False)
class Dimension:
    """Result of :func:`preimage_dimension`.

    The masks say which constraints were found to be implicit equalities (None when the LP was not
    run): rows of ``targets`` held at their upper / lower bound, inputs held at their lower / upper
    bound.
    """

    dim: int
    rank: int  # rank of the equalities alone
    implicit: int  # tight inequalities found to be implicit equalities
    status: SolverStatus
    message: str = ""
    upper_rows: np.ndarray | None = None
    lower_rows: np.ndarray | None = None
    at_lower: np.ndarray | None = None
    at_upper: np.ndarray | None = None


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

    A row counts as tight when ``u`` is within ``tight_tol`` of (or beyond) its bound, measured on the
    layer's output (the pre-activation gap divided by the row's scale); an input bound when ``u`` is
    within ``tight_tol`` of it. ``extra_equalities`` (rows ``g`` with ``gᵀd = 0``) restricts to a
    face, e.g. ``1ᵀd = 0`` for the optimal face of basis pursuit.
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
    with np.errstate(invalid="ignore"):
        up = np.isfinite(targets.upper) & ~eq
        up &= (targets.upper - pre) / targets.upper_scale <= tight_tol
        lo = np.isfinite(targets.lower) & ~eq
        lo &= (pre - targets.lower) / targets.lower_scale <= tight_tol
    normals.append(w[up])
    normals.append(-w[lo])
    at_lo = np.zeros(n, dtype=bool)
    at_hi = np.zeros(n, dtype=bool)
    if bounds is not None:
        lower, upper = bounds
        at_lo = np.isfinite(lower) & (u - lower <= tight_tol)
        at_hi = np.isfinite(upper) & (upper - u <= tight_tol)
        eye = np.eye(n)
        normals.append(-eye[at_lo])
        normals.append(eye[at_hi])
    g = np.vstack(normals) if normals else np.zeros((0, n))
    # where each candidate came from: (kind, index) with kind 0 upper row, 1 lower row, 2/3 input bound
    kinds = np.concatenate([np.full(int(up.sum()), 0), np.full(int(lo.sum()), 1)])
    kinds = np.concatenate([kinds, np.full(int(at_lo.sum()), 2), np.full(int(at_hi.sum()), 3)])
    where = np.concatenate(
        [np.flatnonzero(up), np.flatnonzero(lo), np.flatnonzero(at_lo), np.flatnonzero(at_hi)]
    )
    if g.shape[0] == 0:
        return Dimension(n - rank_eq, rank_eq, 0, SolverStatus.OPTIMAL)
    norms = np.linalg.norm(g, axis=1)
    kinds, where = kinds[norms > 0], where[norms > 0]
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

    def mask(kind: int, size: int) -> np.ndarray:
        out = np.zeros(size, dtype=bool)
        out[where[implicit & (kinds == kind)]] = True
        return out

    return Dimension(
        n - rank_all,
        rank_eq,
        int(implicit.sum()),
        SolverStatus.OPTIMAL,
        upper_rows=mask(0, targets.count),
        lower_rows=mask(1, targets.count),
        at_lower=mask(2, n),
        at_upper=mask(3, n),
    )


def pinned_point(
    layer: Layer,
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    dim: Dimension,
) -> LeastSquares | None:
    """The point of a preimage that is a single point only through implicit equalities.

    Least squares on the equality rows plus the implicit equalities of ``dim`` (rows at their bound
    become equalities, inputs at their bound are fixed and leave the system), weighted like
    :func:`solve_active`. Unlike a vertex of the eq. (4) LP, which rests on ``n`` of the tight
    constraints only, it uses all of them, so rounding errors of the data average out. None when
    ``dim`` carries no implicit set or the system is rank deficient.
    """
    if dim.upper_rows is None or dim.lower_rows is None or dim.at_lower is None or dim.at_upper is None:
        return None
    w, b = targets.matrices(layer)
    n = layer.in_features
    eq = targets.equality
    rows = eq | dim.upper_rows | dim.lower_rows
    target = np.where(dim.upper_rows & ~eq, targets.upper, targets.lower)
    scale = np.where(dim.upper_rows & ~eq, targets.upper_scale, targets.lower_scale)
    fixed = dim.at_lower | dim.at_upper
    value = np.zeros(n)
    if bounds is not None:
        value = np.where(dim.at_lower, bounds[0], np.where(dim.at_upper, bounds[1], 0.0))
    free = ~fixed
    a = w[rows][:, free]
    t = target[rows] - b[rows] - w[rows][:, fixed] @ value[fixed]
    if a.shape[0] < a.shape[1]:
        return None
    ls = solve_active(a, t, 1.0 / scale[rows])
    if ls.rank < a.shape[1]:
        return None
    u = value.copy()
    u[free] = ls.u
    return LeastSquares(
        u,
        n,
        ls.cond,
        ls.residual,
        ls.error,
        f"{ls.method} with {int(fixed.sum())} inputs fixed",
        ls.spread,
        ls.rms,
    )


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
