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
import math
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
# full_rank_without: more rows removed than this and the Gram matrix is formed again instead
MAX_REMOVED_ROWS = 512
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
    if sp.issparse(w):
        return _solve_sparse_rows(w, idx, t, weights)
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
# A sparse system's Gram matrix (n, n) is formed densely when n is at most this (8 MB) or when it
# takes no more than SPARSE_GRAM_FACTOR times the bytes of the rows' stored entries.
SPARSE_GRAM_COLUMNS = 1024
SPARSE_GRAM_FACTOR = 3.0
# A block of sparse rows is copied densely only when the copy takes at most SPARSE_GRAM_FACTOR times
# the bytes of its stored entries (value + column index), or at most this many bytes.
DENSE_COPY_FLOOR = 1 << 20
# LSMR's stopping tolerances (relative, on the residual and on Aᵀr) and iteration cap per unknown.
LSMR_TOL = 1e-12
LSMR_ITERATIONS = 20


def _sparse_gram_fits(n: int, nnz: int) -> bool:
    """True when the dense ``(n, n)`` Gram matrix of a sparse system is affordable (see the limits)."""
    return n <= SPARSE_GRAM_COLUMNS or 8.0 * n * n <= SPARSE_GRAM_FACTOR * 12.0 * nnz


def sparse_gram(a: sp.csr_array) -> np.ndarray:
    """``AᵀA`` of sparse rows as a dense Fortran-order array with its upper triangle filled (the layout
    :func:`_cholesky_solve` factors in place), accumulated by BLAS ``syrk`` over dense copies of
    blocks of about ``DENSE_COPY_FLOOR`` bytes: the working set is the Gram matrix plus one block (the
    sparse product ``AᵀA`` would hold the product's fill on top of the dense copy)."""
    m, n = a.shape
    gram = np.zeros((n, n), order="F")
    step = max(1, DENSE_COPY_FLOOR // (8 * max(n, 1)))
    for i in range(0, m, step):
        part = a[i : i + step].toarray()
        gram = _syrk(1.0, part.T, beta=1.0, c=gram, trans=0, lower=0, overwrite_c=1)
    return gram


def _gram_norm(gram: np.ndarray) -> float:
    """The 1-norm of a symmetric matrix stored as its upper triangle (syrk leaves the lower at 0),
    a block of columns at a time (no full copy of ``|G|``)."""
    n = gram.shape[0]
    cols, rows = np.zeros(n), np.zeros(n)
    step = max(1, DENSE_COPY_FLOOR // (8 * max(n, 1)))
    for j in range(0, n, step):
        magnitude = np.abs(gram[:, j : j + step])
        cols[j : j + step] = magnitude.sum(axis=0)
        rows += magnitude.sum(axis=1)
    return float(np.max(cols + rows - np.abs(np.diag(gram)))) if n else 0.0


def dense_copy_fits(m: int, n: int, nnz: int) -> bool:
    """True when a dense copy of ``(m, n)`` sparse rows with ``nnz`` stored entries is affordable: the
    working set stays within ``SPARSE_GRAM_FACTOR`` times the bytes of the stored entries."""
    return 8.0 * m * n <= max(float(DENSE_COPY_FLOOR), SPARSE_GRAM_FACTOR * 12.0 * nnz)


def _solve_sparse_rows(
    w: sp.csr_array, idx: np.ndarray, t: np.ndarray, weights: np.ndarray | None
) -> LeastSquares:
    """:func:`solve_rows` for a scipy.sparse weight; never densifies the rows of a large system.

    Which solver, and why: scipy has neither a sparse QR nor a sparse Cholesky (CHOLMOD is a separate
    package), so

    * a small block (:func:`dense_copy_fits`) is gathered densely and solved like a dense one
      (Cholesky with ``pocon``, pivoted QR when ill-conditioned): the rank is sound;
    * a tall block with an affordable Gram matrix (``_sparse_gram_fits``) forms ``AᵀA`` by a sparse
      product and factors it densely by LAPACK, with the products ``A u``, ``Aᵀ r`` sparse: the
      ``pocon`` condition estimate (``<= COND_LIMIT``) is the full-column-rank claim, as on the dense
      path (``σ_min/σ_max >= 1/COND_LIMIT``, far above ``RANK_RTOL``);
    * a block whose rows hold at most one non-zero each (diagonal scalings, permutations, nearest
      upsampling, selections, padding: :func:`_one_per_row`) has orthogonal columns, so its singular
      values are the column norms and the least-squares point is ``u_j = a_jᵀt / ||a_j||²``, exactly;
    * otherwise LSMR [2]_ (``scipy.sparse.linalg.lsmr``, only products with ``A`` and ``Aᵀ``; preferred
      to LSQR for its monotone ``||Aᵀr||``) gives the least-squares point, and **no rank is claimed**:
      the rank reported is ``min(m, n) - 1`` when ``m >= n`` (not shown to be full) so that no caller
      can read uniqueness into it.

    References
    ----------
    .. [2] D. C.-L. Fong, M. A. Saunders, "LSMR: An iterative algorithm for sparse least-squares
       problems", SIAM J. Sci. Comput. 33(5), 2011.
    """
    m, n = idx.size, w.shape[1]
    rows = w[idx]
    if n == 0 or m == 0 or dense_copy_fits(m, n, int(rows.nnz)):
        return solve_active(rows.toarray(), t, weights)
    unit = weights is None or _all_ones(weights)
    scale = np.ones(m) if weights is None or unit else np.asarray(weights, dtype=np.float64)
    aw = rows if unit else sp.csr_array(sp.diags_array(scale) @ rows)
    tw = t if unit else t * scale
    if _one_per_row(aw):
        return _orthogonal_solve(rows, aw, t, tw)
    if m >= n and _sparse_gram_fits(n, int(rows.nnz)):
        gram = sparse_gram(aw)
        out = _cholesky_solve(
            gram, aw.T @ tw, lambda u: aw @ u, lambda r: aw.T @ r, tw, m, fortran=True, anorm=_gram_norm(gram)
        )
        if out is not None:
            return out if unit else dataclasses.replace(out, residual=_maxabs(rows @ out.u - t))
    from scipy.sparse.linalg import lsmr

    sol = lsmr(aw, tw, atol=LSMR_TOL, btol=LSMR_TOL, maxiter=LSMR_ITERATIONS * max(n, 1))
    u = np.asarray(sol[0], dtype=np.float64)
    rw = float(np.linalg.norm(tw - aw @ u))
    rank = min(m, n - 1)
    return LeastSquares(
        u, rank, float("inf"), _maxabs(rows @ u - t), float("inf"), "lsmr", float("inf"), rw / np.sqrt(m)
    )


def _one_per_row(a: sp.csr_array) -> bool:
    """True when every row of ``a`` stores at most one non-zero: its columns then have disjoint
    supports, hence are orthogonal."""
    csr = sp.csr_array(a)
    if csr.nnz and not np.all(csr.data != 0):
        csr = csr.copy()
        csr.eliminate_zeros()
    return bool(csr.shape[0] == 0 or int(np.max(np.diff(csr.indptr))) <= 1)


def _orthogonal_solve(rows: sp.csr_array, aw: sp.csr_array, t: np.ndarray, tw: np.ndarray) -> LeastSquares:
    """Least squares for orthogonal columns (:func:`_one_per_row`): ``σ_j = ||a_j||``, exact."""
    m, n = aw.shape
    norms2 = np.asarray(aw.multiply(aw).sum(axis=0), dtype=np.float64).reshape(-1)
    live = norms2 > 0
    u = np.zeros(n)
    u[live] = np.asarray(aw.T @ tw, dtype=np.float64)[live] / norms2[live]
    sigma = np.sqrt(norms2[live])
    rank = int(np.count_nonzero(sigma > RANK_RTOL * sigma.max())) if sigma.size else 0
    cond = float(sigma.max() / sigma.min()) if rank == n and n else float("inf")
    resid = aw @ u - tw
    rw = float(np.linalg.norm(resid))
    err = rw / float(sigma.min()) if rank == n and n else float("inf")
    spread = float(np.sqrt(np.mean(1.0 / norms2))) if rank == n and n else float("inf")
    return LeastSquares(
        u, rank, cond, _maxabs(rows @ u - t), err, "orthogonal columns", spread, rw / np.sqrt(max(m, 1))
    )


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


def gram_full_rank(gram: np.ndarray, *, overwrite: bool = False) -> bool:
    """True when the Cholesky route of :func:`solve_active` accepts the Gram matrix ``AᵀA``: it
    factors and its condition estimate is within ``COND_LIMIT`` (then ``A`` has full column rank by
    any threshold near ``RANK_RTOL``). False means "not shown": use :func:`numerical_rank`. ``gram``
    is left untouched, unless ``overwrite``: then a contiguous float64 ``gram`` may be factored in
    place (its transpose is the same symmetric matrix in Fortran order) instead of copied."""
    n = gram.shape[0]
    if n == 0:
        return True
    if overwrite and gram.dtype == np.float64 and gram.flags.c_contiguous:
        work = gram.T
    else:
        work = np.array(gram, dtype=np.float64, order="F")
    anorm = float(_lange("1", work))
    factor, info = _potrf(work, lower=0, clean=1, overwrite_a=1)
    if info != 0 or not (np.isfinite(anorm) and np.all(np.isfinite(np.diag(factor)))):
        return False
    rcond, info = _pocon(factor, anorm, uplo="U")
    return info == 0 and float(rcond) > 0 and float(np.sqrt(1.0 / float(rcond))) <= COND_LIMIT


@dataclass(frozen=True, eq=False)
class RowsFactor:
    """The Cholesky factor ``R`` (upper, ``RᵀR = W_Sᵀ W_S``) of a layer's rows ``S`` and its condition
    estimate, as a least-squares solve left it (:func:`full_rank_without` reuses it)."""

    rows: np.ndarray  # indices S into the layer's rows
    factor: np.ndarray
    cond: float


def full_rank_without(known: RowsFactor, w: Weight, keep: np.ndarray) -> bool:
    """True when the rows ``keep`` (indices) of ``w`` are shown to have full column rank, within
    ``COND_LIMIT``, from the factor of the rows ``known.rows`` without forming their Gram matrix.

    With ``N`` the known rows not kept and ``V = N R^{-1}``: ``W_keepᵀW_keep ⪰ RᵀR − NᵀN = Rᵀ(I − VᵀV)R``
    when ``keep`` holds every other known row, so ``λ_min`` shrinks at most by the factor
    ``1 − ||V||_2²`` and the condition number of ``W_keep`` is at most ``cond / sqrt(1 − ||V||_2²)``
    (``λ_max`` does not grow without new rows). ``||V||_2²`` is the largest eigenvalue of the small
    ``k × k`` matrix ``N G^{-1} Nᵀ`` (``k`` rows removed). False means "not shown" (rows outside
    ``known.rows``, or too much removed): form the Gram instead."""
    keep = np.asarray(keep, dtype=np.intp)
    rows = np.asarray(known.rows, dtype=np.intp)
    # membership by masks over the row indices (np.setdiff1d sorts: ~10x the time on a batch's rows)
    size = int(max(rows.max(initial=-1), keep.max(initial=-1))) + 1
    in_known = np.zeros(size, dtype=bool)
    in_known[rows] = True
    if not in_known[keep].all():
        return False
    in_keep = np.zeros(size, dtype=bool)
    in_keep[keep] = True
    gone = rows[~in_keep[rows]]  # the known rows not kept, in the factor's order
    if gone.size == 0:
        return known.cond <= COND_LIMIT
    if gone.size > MAX_REMOVED_ROWS:
        return False
    v, info = _trtrs(known.factor, np.ascontiguousarray(dense(w[gone]).T), lower=0, trans=1)
    if info != 0 or not np.all(np.isfinite(v)):
        return False
    # a relative margin on the eigenvalue for its round-off
    loss = float(np.linalg.eigvalsh(v.T @ v)[-1]) * (1.0 + 1e-6)
    return loss < 1.0 and known.cond / math.sqrt(1.0 - loss) <= COND_LIMIT


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
    if info != 0:
        return float("inf")
    # Python floats: the same IEEE division and (correctly rounded) square root as numpy's scalars
    value = math.sqrt(float(np.add.reduce(y * y, axis=None)) / (_PROBES * n))  # = (y * y).sum()
    return value if math.isfinite(value) else float("inf")


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


def error_scale(a: np.ndarray | sp.csr_array, row_scale: np.ndarray | None = None) -> float:
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
    if sp.issparse(a):
        aw = a if row_scale is None or _all_ones(row_scale) else scale_rows(a, 1.0 / row_scale)
        if not _sparse_gram_fits(n, int(a.nnz)):  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union
            return float("inf")
        gram = np.asarray((aw.T @ aw).toarray())
    else:
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


def numerical_rank(a: np.ndarray | sp.sparray | sp.spmatrix) -> int:
    """Rank with the same relative threshold as the QR path (``RANK_RTOL``).

    A sparse ``a`` is densified only when the copy is small (:func:`dense_copy_fits`; the singular
    values of the dense copy: sound). A larger sparse block gets :func:`sparse_rank_bound`, an upper
    bound that never overstates the rank (it is what may keep a layer from being called identifiable).
    """
    if sp.issparse(a):
        m, n = a.shape
        if m == 0 or n == 0:
            return 0
        if m * n > DENSE_RANK_ENTRIES or not dense_copy_fits(m, n, int(a.nnz)):  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union
            return sparse_rank_bound(a)
        a = a.toarray()  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union
    if a.size == 0:
        return 0
    s = np.linalg.svd(a, compute_uv=False)
    return int(np.sum(s > RANK_RTOL * s[0])) if s[0] > 0 else 0


def sparse_rank(a: sp.sparray | sp.spmatrix) -> tuple[int, bool]:
    """``(rank, exact)`` of a sparse block: ``exact`` is False when only the bound of
    :func:`sparse_rank_bound` is known (its value is then not a rank to report as a fact)."""
    m, n = a.shape
    if m == 0 or n == 0:
        return 0, True
    if m * n <= DENSE_RANK_ENTRIES and dense_copy_fits(m, n, int(a.nnz)):
        return numerical_rank(a.toarray()), True
    bound = sparse_rank_bound(a)
    return bound, bound == min(m, n)


# Sparse blocks with at most this many entries are densified for their singular values (64 MB).
DENSE_RANK_ENTRIES = 1 << 23


def sparse_rank_bound(a: sp.sparray | sp.spmatrix) -> int:
    """An upper bound on the rank of a large sparse ``(m, n)`` block, without densifying it.

    The rank is at most ``min(m, n)``, at most the number of non-zero rows and of non-zero columns. When
    that bound is the smaller side ``s`` and the ``(s, s)`` Gram matrix (``AᵀA`` when tall, ``AAᵀ`` when
    wide, formed by a sparse product) is affordable, the Cholesky test of :func:`gram_full_rank` shows
    full rank ``s`` soundly; without that proof the bound returned is ``s - 1``: "not shown", never a
    claim of full rank. (Rank of a wide block only bounds a preimage's dimension from below; no
    uniqueness claim rests on it.)
    """
    csr = sp.csr_array(a)
    m, n = csr.shape
    nonzero_rows = int(np.count_nonzero(np.diff(csr.indptr)))
    nonzero_cols = int(np.unique(csr.indices).size)
    side = min(m, n)
    bound = min(side, nonzero_rows, nonzero_cols)
    if bound < side:
        return bound
    if _one_per_row(csr):  # orthogonal non-zero columns: the rank is their number, exactly
        return bound
    if _sparse_gram_fits(side, int(csr.nnz)):
        gram = csr.T @ csr if m >= n else csr @ csr.T
        if gram_full_rank(gram.toarray()):
            return side
    return side - 1


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
    a_ub = vstack([w[up], -w[lo]])
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
    if sp.issparse(w):
        # HiGHS takes the rows sparse (lp.py): the column of t appended without densifying W
        a_ub = sp.vstack(
            [
                sp.hstack([w[up], sp.csr_array(-targets.upper_scale[up, None])]),
                sp.hstack([-w[lo], sp.csr_array(-targets.lower_scale[lo, None])]),
            ],
            format="csr",
        )
    else:
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


def vstack(blocks: list) -> np.ndarray | sp.csr_array:
    """Rows stacked in the blocks' storage: sparse blocks stay sparse (CSR), dense ones dense."""
    if any(sp.issparse(b) for b in blocks):
        return sp.csr_array(sp.vstack(blocks, format="csr"))
    return np.vstack(blocks)


def row_norms(a: np.ndarray | sp.csr_array) -> np.ndarray:
    """Euclidean norm of each row, for dense or sparse ``a`` (no dense copy of a sparse one)."""
    if sp.issparse(a):
        sq = sp.csr_array(a)
        return np.sqrt(np.asarray(sq.multiply(sq).sum(axis=1)).reshape(-1))
    return np.linalg.norm(a, axis=1)


def scale_rows(a: np.ndarray | sp.csr_array, s: np.ndarray) -> np.ndarray | sp.csr_array:
    """``diag(s) a`` in ``a``'s storage."""
    if sp.issparse(a):
        return sp.csr_array(sp.diags_array(np.asarray(s, dtype=np.float64)) @ a)
    return a * s[:, None]


def identity_rows(n: int, select: np.ndarray, like: object) -> np.ndarray | sp.csr_array:
    """Rows ``select`` of the ``(n, n)`` identity, sparse when ``like`` is sparse."""
    if sp.issparse(like):
        idx = np.flatnonzero(select) if select.dtype == bool else np.asarray(select, dtype=np.intp)
        return sp.csr_array((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n))
    return np.eye(n)[select]


def dense(a: object) -> np.ndarray:
    """A dense array of ``a`` (a copy for sparse input: only for blocks known to be small)."""
    return a.toarray() if sp.issparse(a) else np.asarray(a)  # type: ignore[attr-defined]  # scipy has no stubs, so sp.issparse cannot narrow
