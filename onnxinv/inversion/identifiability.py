"""Identifiability: the one definition of what an observation determines, layer by layer.

Used by the methods (to report each layer), by the pipeline's evidence stage (to certify a returned
latent or to look for a second one), by :mod:`onnxinv.audit` and by the experiment scripts.

Notes
-----
**Active rows and rank** (Theorem 2 of [1]_). For a layer ``y = act(W u + b)`` the rows that pin its
input are the active rows ``I`` (ReLU: ``y_j > τ``; LeakyReLU, identity, tanh, sigmoid: every row not
saturated). If ``W_I`` has full column rank, ``u`` is the unique solution of ``W_I u = act^{-1}(y_I) -
b_I``; a layer-wise certificate is that condition at every layer.

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

**Noisy rows.** Under noise only the rows whose sign is certain carry two-sided information: ``y_j``
above the noise threshold (and, for an estimated hidden layer, above 3× its typical error). Their rank
is what the noisy methods report (:func:`noisy_rows`).

**Stability radius** (the argument of Theorem 3 of [1]_, made a computable certificate). Let ``z``
fit the observation, ``||G(z) - x||_∞ <= ε``, and let ``z'`` be any other latent that fits. On the
last layer, a ReLU row with ``x_j > ε`` is active for both, so their pre-activations differ by at most
``2ε`` there; a hidden ReLU row whose value at ``z`` exceeds the bound ``e`` on ``|h' - h|_∞`` below it
is active for both, and their pre-activations differ by at most ``e``. Writing those rows as
``|W_R (u' - u)|_j <= β_j`` and ``Ŵ = diag(β)^{-1} W_R`` of full column rank, any left inverse ``L`` of
``Ŵ`` gives ``||u' - u||_∞ <= ||L||_{∞→∞}`` (the largest row sum of ``|L|``); with ``L = Ŵ^+`` this is
the bound passed to the layer below. At the latent it is the radius: every fitting ``z'`` lies within
it of ``z``, with no box and no assumption on the weights. LeakyReLU rows of either certain sign,
identity rows, and tanh / sigmoid rows (through the largest derivative of the inverse on the interval)
take part likewise. Where some layer's certain rows lose rank, there is no radius.

**Null directions** (witnesses of non-uniqueness at layer 0). If layer 0's active rows at ``z`` have
rank below ``k``, any ``v`` with ``W_{0,I} v = 0`` leaves them unchanged, and ``z + t v`` keeps every
inactive row inactive for ``t`` up to the first row that would turn on: ``G(z + t v) = G(z)``.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [2] A. Aberdam, D. Simon, M. Elad, "When and How Can Deep Generative Models be Inverted?", 2020
   (the mutual-coherence condition for sparse hidden codes).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import lapack

from onnxinv.inversion import linear, lp
from onnxinv.inversion.framework import LayerContext, LayerOutcome, Problem, Settings, clean_targets, walk
from onnxinv.inversion.linear import LeastSquares, numerical_rank, solve_active
from onnxinv.inversion.result import LayerStep, SolverStatus
from onnxinv.inversion.targets import Targets, build_targets, project
from onnxinv.layers import Activation, Generator, Layer

__all__ = [
    "Dimension",
    "NullDirection",
    "Radius",
    "active_rank",
    "analyse_at",
    "analyse_latent",
    "mutual_coherence",
    "noisy_outcome",
    "noisy_rows",
    "null_direction",
    "pinned_point",
    "preimage_dimension",
    "stability_radius",
]


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
    key = _dimension_key(targets, bounds, u, tight_tol, extra_equalities)
    memo = _DIMENSIONS.setdefault(layer, {})
    if key in memo:
        return memo[key]
    dim = _preimage_dimension(layer, targets, bounds, u, tight_tol, extra_equalities, time_limit)
    if dim.status is SolverStatus.OPTIMAL:
        if len(memo) >= _MEMO_SIZE:
            memo.pop(next(iter(memo)))
        memo[key] = dim
    return dim


# The evidence stage analyses a returned latent at the hidden values the exact method's own layer
# solves produced, i.e. it asks for the same preimage dimensions again: they are remembered per
# layer (a few, keyed by every input bitwise), so the dimension LPs run once.
_DIMENSIONS: weakref.WeakKeyDictionary[Layer, dict[tuple[object, ...], Dimension]] = (
    weakref.WeakKeyDictionary()
)
_MEMO_SIZE = 8


def _dimension_key(
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    u: np.ndarray,
    tight_tol: float,
    extra: np.ndarray | None,
) -> tuple[object, ...]:
    def raw(a: object) -> bytes:
        return b"" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes()

    parts = (targets.rows, targets.lower, targets.upper, targets.lower_scale, targets.upper_scale, u)
    return (
        tuple(raw(p) for p in parts),
        None if bounds is None else (raw(bounds[0]), raw(bounds[1])),
        float(tight_tol),
        raw(extra),
    )


def _preimage_dimension(
    layer: Layer,
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    u: np.ndarray,
    tight_tol: float,
    extra_equalities: np.ndarray | None,
    time_limit: float | None,
) -> Dimension:
    w, b = targets.matrices(layer)
    n = layer.in_features
    eq = targets.equality
    a_eq = w[eq]
    if extra_equalities is not None:
        a_eq = linear.vstack([a_eq, np.atleast_2d(extra_equalities)])
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
        normals.append(-linear.identity_rows(n, at_lo, w))
        normals.append(linear.identity_rows(n, at_hi, w))
    g = linear.vstack(normals) if normals else np.zeros((0, n))
    # where each candidate came from: (kind, index) with kind 0 upper row, 1 lower row, 2/3 input bound
    kinds = np.concatenate([np.full(int(up.sum()), 0), np.full(int(lo.sum()), 1)])
    kinds = np.concatenate([kinds, np.full(int(at_lo.sum()), 2), np.full(int(at_hi.sum()), 3)])
    where = np.concatenate(
        [np.flatnonzero(up), np.flatnonzero(lo), np.flatnonzero(at_lo), np.flatnonzero(at_hi)]
    )
    if g.shape[0] == 0:
        return Dimension(n - rank_eq, rank_eq, 0, SolverStatus.OPTIMAL)
    norms = linear.row_norms(g)
    kinds, where = kinds[norms > 0], where[norms > 0]
    g = linear.scale_rows(g[norms > 0], 1.0 / norms[norms > 0])
    eq_norms = linear.row_norms(a_eq) if a_eq.shape[0] else np.zeros(0)
    a_eq_n = linear.scale_rows(a_eq[eq_norms > 0], 1.0 / eq_norms[eq_norms > 0]) if a_eq.shape[0] else a_eq
    t = g.shape[0]
    if _leaves_every_constraint(a_eq_n, g):
        # the LP's optimum would be s = 1 everywhere: no tight constraint is an implicit equality
        none = np.zeros(targets.count, dtype=bool)
        none.setflags(write=False)
        off = np.zeros(n, dtype=bool)
        off.setflags(write=False)
        rank_all = numerical_rank(a_eq_n)
        return Dimension(n - rank_all, rank_eq, 0, SolverStatus.OPTIMAL, "", none, none, off, off)
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
    if sp.issparse(g):
        rank_all = _sparse_rank_with_fixed(a_eq_n, g, implicit, kinds, where, n)
    else:
        full = linear.vstack([a_eq_n, g[implicit]]) if implicit.any() else a_eq_n
        rank_all = numerical_rank(full)

    def mask(kind: int, size: int) -> np.ndarray:
        out = np.zeros(size, dtype=bool)
        out[where[implicit & (kinds == kind)]] = True
        out.setflags(write=False)  # remembered and shared (see _DIMENSIONS)
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


def _sparse_rank_with_fixed(
    a_eq: sp.csr_array, g: sp.csr_array, implicit: np.ndarray, kinds: np.ndarray, where: np.ndarray, n: int
) -> int:
    """``rank([A_eq; G_implicit])`` of a sparse layer without stacking the input-bound rows.

    An implicit input bound contributes the row ``±e_i``; with ``S`` the set of those inputs,
    ``rank([A; E_S]) = |S| + rank(A[:, ~S])`` (eliminate the fixed columns), so only the weight rows
    restricted to the free inputs are ranked: a far smaller block than the stack.
    """
    fixed = np.zeros(n, dtype=bool)
    fixed[where[implicit & (kinds >= 2)]] = True
    rows = implicit & (kinds < 2)
    block = linear.vstack([a_eq, g[rows]]) if rows.any() else a_eq
    free = np.flatnonzero(~fixed)
    if free.size == 0 or block.shape[0] == 0:
        return int(fixed.sum())
    return int(fixed.sum()) + numerical_rank(sp.csr_array(block)[:, free])


def _leaves_every_constraint(a_eq: np.ndarray, g: np.ndarray) -> bool:
    """True when a direction ``d`` with ``A_eq d = 0`` and ``g_k d <= -1/2`` for every tight
    constraint ``k`` exists, shown by solving ``[A_eq; G] d = [0; -1]`` (least norm, when the stacked
    rows are independent) and checking ``d``. Then the dimension LP of :func:`preimage_dimension`
    ends with every ``s_k = 1`` (``2 d`` is feasible with all of them), so none of them is an implicit
    equality: the LP's answer without the LP. Generic when the tight constraints and equalities are
    fewer than the unknowns (a contracting layer, an input pinned by few zeros)."""
    m = linear.vstack([a_eq, g]) if a_eq.shape[0] else g
    if m.shape[0] == 0 or m.shape[0] > m.shape[1]:
        return False
    rhs = np.concatenate([np.zeros(a_eq.shape[0]), -np.ones(g.shape[0])])
    if sp.issparse(m):
        # no dense (rows, rows) Gram matrix of a sparse stack: LSMR from 0 converges to the least-norm
        # solution of a consistent system; whatever it returns is only a candidate, checked below
        from scipy.sparse.linalg import lsmr

        d = np.asarray(lsmr(m, rhs, atol=1e-14, btol=1e-14, maxiter=20 * m.shape[1])[0])
    else:
        gram = m @ m.T
        factor, info = linear._potrf(gram.T, lower=0, clean=1, overwrite_a=1)
        if info != 0:
            return False
        y, info = linear._potrs(factor, rhs, lower=0)
        if info != 0 or not np.all(np.isfinite(y)):
            return False
        d = m.T @ y
    size = float(np.max(np.abs(d))) if d.size else 0.0
    if not (np.isfinite(size) and size > 0):
        return False
    flat = float(np.max(np.abs(a_eq @ d))) if a_eq.shape[0] else 0.0
    return flat <= 1e-9 * size and float(np.max(g @ d)) <= -0.5


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
    if sp.issparse(a):
        ls = linear.solve_rows(sp.csr_array(a), np.arange(a.shape[0]), t, 1.0 / scale[rows])
    else:
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
    if sp.issparse(a):
        # the column Gram matrix of a sparse block stays sparse (a convolution's columns overlap little)
        csc = sp.csc_array(a)
        norms = np.sqrt(np.asarray(csc.multiply(csc).sum(axis=0)).reshape(-1))
        if np.any(norms == 0):
            return 1.0
        an = sp.csc_array(csc @ sp.diags_array(1.0 / norms))
        ant = sp.csr_array(an.T)
        n = an.shape[1]
        best = 0.0
        step = max(1, n // 16)  # the column Gram matrix a block of columns at a time
        for j in range(0, n, step):
            block = sp.coo_array(ant[j : j + step] @ an)
            off = block.row + j != block.col
            if off.any():
                best = max(best, float(np.max(np.abs(block.data[off]))))
        return best
    norms = np.linalg.norm(a, axis=0)
    if np.any(norms == 0):
        return 1.0
    an = a / norms
    gram = np.abs(an.T @ an)
    np.fill_diagonal(gram, 0.0)
    return float(gram.max())


# ----------------------------------------------------------------------------- ranks of active rows


def active_rank(
    w: np.ndarray, targets_rhs: np.ndarray | None = None, weights: np.ndarray | None = None
) -> int:
    """Numerical rank of the active rows ``w`` (Cholesky / pivoted QR when tall, SVD otherwise), with the
    threshold :data:`~onnxinv.inversion.linear.RANK_RTOL` of :func:`~onnxinv.inversion.linear.solve_active`."""
    n = w.shape[1]
    if w.shape[0] >= n:
        rhs = np.zeros(w.shape[0]) if targets_rhs is None else targets_rhs
        if sp.issparse(w):  # the sparse route of solve_rows: its rank claims are sound (see there)
            return linear.solve_rows(sp.csr_array(w), np.arange(w.shape[0]), rhs, weights).rank
        return solve_active(w, rhs, weights).rank
    return numerical_rank(w)


# ----------------------------------------------------------------------------- noisy rows


def _certain_rows(ctx: LayerContext, targets: Targets) -> np.ndarray:
    rows = targets.equality
    if ctx.layer.activation in (Activation.RELU, Activation.LEAKY_RELU) and ctx.y_error > 0:
        rows = rows & (np.abs(ctx.y[targets.rows]) > 3.0 * ctx.y_error)
    return rows


def two_sided_rank(ctx: LayerContext, targets: Targets) -> tuple[int, int]:
    """(number of sign-certain two-sided rows, rank of their weights); see :func:`noisy_rows`."""
    rows = _certain_rows(ctx, targets)
    w = ctx.layer.weight_rows(targets.rows[rows])
    return int(rows.sum()), active_rank(w)


def noisy_rows(ctx: LayerContext, targets: Targets, u: np.ndarray) -> tuple[int, int, int, float]:
    """How well the noisy data determine this layer's input: (rows, rank, dimension, typical error).

    The rows counted are the two-sided rows (``|a_j - c_j| <= s_j δ``) whose sign is certain: for
    ReLU / LeakyReLU layers ``|y_j|`` must exceed 3× the typical error of ``y`` (0 at the output, where
    the threshold ε already separates the noise), so that small spurious values of an estimated hidden
    layer do not count as information. If they have full column rank, the typical error of ``u`` is
    ``σ · sqrt(trace((W_TᵀS⁻²W_T)⁻¹)/n)`` with ``σ = dev(u) + err(y)``, ``dev(u) = max_j |a_j(u) - c_j|
    / s_j`` (the least-squares error model of :func:`~onnxinv.inversion.linear.error_scale`); it is
    passed down as the error of the next layer's target. A statistical estimate, not a bound: it steers
    the next layer's thresholds, and proves nothing (the radius of :func:`stability_radius` does).
    """
    n = ctx.layer.in_features
    rows = _certain_rows(ctx, targets)
    w = ctx.layer.weight_rows(targets.rows[rows])
    scale = targets.upper_scale[rows]
    unit = bool(scale.size == 0 or (scale.min() == 1.0 and scale.max() == 1.0))
    if w.shape[0] < n:
        ls = None
    elif sp.issparse(w):
        ls = linear.solve_rows(w, np.arange(w.shape[0]), np.zeros(w.shape[0]))
    else:
        ls = solve_active(w, np.zeros(w.shape[0]))
    if unit and ls is not None and ls.factor is not None:
        # ReLU / identity rows: the rank's Cholesky factor is also error_scale's
        rank, spread = n, linear.factor_error_scale(ls.factor)
    else:
        rank = ls.rank if ls is not None else numerical_rank(w)
        spread = None
    if rank < n:
        return int(rows.sum()), rank, n - rank, 0.0
    pre = w @ u + ctx.layer.bias[targets.rows[rows]]
    dev = float(np.max(np.abs(pre - targets.upper[rows]) / scale)) if scale.size else 0.0
    if spread is None:
        spread = linear.error_scale(w, scale)
    return int(rows.sum()), rank, 0, spread * (dev + ctx.y_error)


def noisy_outcome(
    ctx: LayerContext, targets: Targets, u: np.ndarray, eps: float, status: SolverStatus, message: str
) -> LayerOutcome:
    """A noisy method's LayerOutcome with the identifiability of :func:`noisy_rows`."""
    n = ctx.layer.in_features
    active, rank, dim, err = noisy_rows(ctx, targets, u)
    cert = f"{active} sign-certain two-sided rows have full column rank" if dim == 0 else ""
    if dim:
        message += (
            f"; {active} sign-certain two-sided rows of rank {rank} < {n}: {dim} direction(s) unconstrained"
        )
    return LayerOutcome(
        u, status, active, rank, dim, message, cert, epsilon=eps, u_error=err if dim == 0 else 0.0
    )


# ----------------------------------------------------------------------------- analysis at a point


def analyse_at(ctx: LayerContext, u: np.ndarray, where: str = "this point", *, last: bool) -> LayerOutcome:
    """Identifiability of one layer at a given input ``u`` (a hidden value of a latent found otherwise).

    The last layer of a noisy observation: the rows at the layer's initial ``ε`` and the rank of the
    two-sided ones (:func:`noisy_outcome`). Every other case: the active rows' rank (Theorem 2 of
    [1]_) and, below full rank, the dimension of the layer's preimage through ``u``. The hidden values
    below the last layer are the latent's own forward values, not estimates, so no error is passed
    down (``u_error = 0``).
    """
    n = ctx.layer.in_features
    u = project(u, ctx.bounds)
    if ctx.noise_rel is not None and last:
        eps = ctx.initial_eps()
        targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
        out = noisy_outcome(ctx, targets, u, eps, SolverStatus.OPTIMAL, f"analysed at {where}")
        out.u_error = 0.0
        return out
    targets = clean_targets(ctx)
    w, b = targets.matrices(ctx.layer)
    eq = targets.equality
    n_eq = int(eq.sum())
    rank = active_rank(w[eq], targets.lower[eq] - b[eq], 1.0 / targets.lower_scale[eq])
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
    dim = preimage_dimension(ctx.layer, targets, ctx.bounds, u, tight_tol=tight, time_limit=ctx.remaining)
    return LayerOutcome(
        u,
        dim.status,
        n_eq,
        rank,
        dim.dim,
        f"analysed at {where}: {n_eq} active rows of rank {rank} < {n}: preimage of dimension {dim.dim}",
        "preimage is a single point" if dim.dim == 0 else "",
    )


def analyse_latent(
    problem: Problem, settings: Settings, z: np.ndarray, deadline: float
) -> tuple[LayerStep, ...]:
    """The analysis of every layer at ``z``'s own hidden values (:func:`analyse_at`), layer 0 first."""
    hidden = problem.generator.hidden_values(np.asarray(z, dtype=np.float64))
    last = len(problem.generator.layers) - 1

    def analyse(ctx: LayerContext) -> LayerOutcome:
        return analyse_at(ctx, hidden[ctx.index], "the returned latent", last=ctx.index == last)

    return walk(problem, settings, analyse, "analysis", deadline).steps


# ----------------------------------------------------------------------------- stability radius

# Layers with at most this many inputs get exact per-coordinate bounds (2 small LPs per input); wider
# ones the bound of the pseudo-inverse (one SVD).
RADIUS_LP_INPUTS = 64


@dataclass(frozen=True)
class Radius:
    """Result of :func:`stability_radius`: every fitting latent lies within ``radius`` (max abs) of ``z``.

    ``per_layer`` holds the bound on ``||h' - h||_∞`` at each layer's input (index 0: the latent),
    ``rows`` the number of sign-certain rows used at each layer, and ``bounds`` the per-coordinate
    bound on ``|z' - z|``.
    """

    radius: float
    per_layer: tuple[float, ...]
    rows: tuple[int, ...]
    bounds: np.ndarray


def stability_radius(
    generator: Generator,
    z: np.ndarray,
    x: np.ndarray,
    mask: np.ndarray | None,
    eps: float,
    *,
    time_limit: float | None = None,
) -> tuple[Radius | None, str]:
    """The radius of the module's Notes (see :func:`layerwise_radius`): first with the pseudo-inverse
    bounds alone (one SVD per layer), and only if that fails with the LP bounds on layers of up to
    ``RADIUS_LP_INPUTS`` inputs."""
    first, why = layerwise_radius(generator, z, x, mask, eps, tighten=False)
    if first is not None:
        return first, ""
    second, why_lp = layerwise_radius(generator, z, x, mask, eps, tighten=True, time_limit=time_limit)
    return (second, "") if second is not None else (None, why_lp or why)


def layerwise_radius(
    generator: Generator,
    z: np.ndarray,
    x: np.ndarray,
    mask: np.ndarray | None,
    eps: float,
    *,
    tighten: bool = True,
    time_limit: float | None = None,
) -> tuple[Radius | None, str]:
    """The radius of the module's Notes for ``z`` fitting ``x`` within ``eps`` (max abs, observed entries).

    Works from the output down with per-coordinate bounds ``e`` on ``|h' - h|``: the sign-certain rows
    of each layer give two-sided bounds on the pre-activation difference, the others one-sided ones
    (a ReLU row that may be off cannot exceed ``h + e``), and the input's own range (``u' >= 0`` after
    a ReLU) another; the bound on each input coordinate is the largest ``|Δu_m|`` they allow — by LP
    for layers of up to ``RADIUS_LP_INPUTS`` inputs, else the row sums of ``|Ŵ^+|`` from the certain
    rows alone (a valid, looser bound). Returns ``(Radius, "")``, or ``(None, why)`` when some layer's
    certain rows do not have full column rank. ``eps`` must bound both ``z``'s residual and that of
    every latent the radius is to cover.
    """
    layers = generator.layers
    hidden = generator.hidden_values(np.asarray(z, dtype=np.float64))
    eps = float(eps)
    if not (eps >= 0 and math.isfinite(eps)):
        return None, "the error bound is not a finite number"
    deadline = None if time_limit is None else _now() + time_limit
    per_layer: list[float] = []
    counts: list[int] = []
    bound: np.ndarray | None = None  # per-coordinate bound on |h' - h| at the current layer's output
    for i in reversed(range(len(layers))):
        layer = layers[i]
        last = i == len(layers) - 1
        rows = np.flatnonzero(mask) if last and mask is not None else np.arange(layer.out_features)
        if last:
            ref = np.asarray(x, dtype=np.float64)[rows]
            e = np.full(rows.size, eps)
            spread = 2.0 * e  # both z and z' are within eps of x
            own = hidden[i + 1][rows]
        else:
            assert bound is not None
            ref = hidden[i + 1]
            e = bound
            spread = e
            own = ref
        pre = layer.preactivation(hidden[i])[rows]
        two, beta, upper = _row_bounds(layer, rows, ref, own, pre, e, spread)
        w = layer.weight_rows(rows)
        n = layer.in_features
        if sp.issparse(w):
            if w.shape[0] * n > linear.DENSE_RANK_ENTRIES:
                # the pseudo-inverse bound needs the dense rows; no radius rather than a dense copy
                return None, (
                    f"layer {i}: its {w.shape[0]}x{n} sparse weight is too large for the pseudo-inverse "
                    "bound of the stability radius"
                )
            w = w.toarray()  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union
        if int(two.sum()) < n:
            return None, (
                f"layer {i}: {int(two.sum())} sign-certain rows for {n} inputs (the error bound "
                f"{float(np.max(e)) if e.size else 0.0:.3g} hides the sign of the others)"
            )
        w_two = w[two] / beta[two][:, None]
        try:
            pinv, rank = _pseudo_inverse(w_two)
        except (np.linalg.LinAlgError, ValueError):
            return None, f"layer {i}: the pseudo-inverse of its sign-certain rows failed"
        if rank < n:
            return None, f"layer {i}: its {int(two.sum())} sign-certain rows have rank {rank} < {n}"
        new = np.sum(np.abs(pinv), axis=1)
        if tighten and n <= RADIUS_LP_INPUTS:
            box = _input_room(layers, i, hidden[i], new)
            tight = _lp_bounds(w, two, beta, upper, box, deadline)
            if tight is not None:
                new = np.minimum(new, tight)
        if not np.all(np.isfinite(new)):
            return None, f"layer {i}: the bound is not finite"
        bound = new
        per_layer.append(float(np.max(new)) if new.size else 0.0)
        counts.append(int(two.sum()))
    assert bound is not None
    return Radius(float(np.max(bound)), tuple(reversed(per_layer)), tuple(reversed(counts)), bound), ""


# A Gram matrix whose estimated reciprocal condition number (1-norm) is at least this gives the
# pseudo-inverse by Cholesky (see _pseudo_inverse); the error is then about eps / PINV_RCOND.
PINV_RCOND = 1e-4


def _pseudo_inverse(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.linalg.pinv(a, return_rank=True)`` for a tall ``a`` (rows of a layer), with a shortcut.

    For ``a`` of full column rank ``A⁺ = (AᵀA)⁻¹Aᵀ``: one Gram matrix and its Cholesky factor (LAPACK
    ``potrf`` / ``potrs``), a fraction of the SVD's cost on the 250 x 100 sign-certain rows of
    20-100-500's output layer. The shortcut is taken only when LAPACK's estimate of the Gram matrix's
    reciprocal condition number (``pocon``) is at least ``PINV_RCOND``: then ``a`` is far from rank
    deficient (the SVD's rank is ``n``), and the normal equations lose at most about
    ``eps / PINV_RCOND`` (relative) against the SVD's ``A⁺``. Anything else goes to the SVD.
    """
    m, n = a.shape
    if 0 < n <= m:
        gram = a.T @ a
        chol, info = lapack.dpotrf(gram, lower=0, clean=1)
        if info == 0:
            rcond, info = lapack.dpocon(chol, float(np.linalg.norm(gram, 1)))
            if info == 0 and rcond >= PINV_RCOND:
                pinv, info = lapack.dpotrs(chol, a.T, lower=0)
                if info == 0 and np.all(np.isfinite(pinv)):
                    return np.asarray(pinv), n
    pinv, rank = sla.pinv(a, return_rank=True, check_finite=False)
    return pinv, int(rank)


def _now() -> float:
    import time

    return time.perf_counter()


def _row_bounds(
    layer: Layer,
    rows: np.ndarray,
    ref: np.ndarray,
    own: np.ndarray,
    pre: np.ndarray,
    e: np.ndarray,
    spread: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether it is two-sided (sign certain for every output within ``e`` of ``ref``), the
    bound ``β`` on ``|Δa|`` there, and an upper bound on ``Δa`` for the others (inf: none).

    ``own`` and ``pre`` are ``z``'s own outputs and pre-activations on these rows.
    """
    act = layer.activation
    inf = np.full(rows.size, np.inf)
    if act is Activation.IDENTITY:
        return np.ones(rows.size, dtype=bool), np.maximum(spread, 1e-300), inf
    if act is Activation.RELU:
        two = ref > e
        # a row that may be off: relu(a') <= ref + e, so a' <= ref + e
        upper = np.where(two, np.inf, ref + e - pre)
        return two, np.maximum(spread, 1e-300), upper
    if act is Activation.LEAKY_RELU:
        slopes = layer.slopes(rows)
        pos, neg = ref > e, ref < -e
        beta = np.where(pos, spread, spread / np.maximum(slopes, 1e-300))
        upper = np.where(pos | neg, np.inf, np.maximum(ref + e, 0.0) - pre)
        return pos | neg, np.maximum(beta, 1e-300), upper
    lo, hi = (-1.0, 1.0) if act is Activation.TANH else (0.0, 1.0)
    a, b = ref - e, ref + e
    two = (a > lo) & (b < hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        if act is Activation.TANH:
            deriv = np.maximum(1.0 / ((1.0 - a) * (1.0 + a)), 1.0 / ((1.0 - b) * (1.0 + b)))
        else:
            deriv = np.maximum(1.0 / (a * (1.0 - a)), 1.0 / (b * (1.0 - b)))
    beta = np.where(two, spread * np.where(np.isfinite(deriv), deriv, 0.0), 1.0)
    return two, np.maximum(beta, 1e-300), inf


def _input_room(
    layers: tuple[Layer, ...], index: int, u: np.ndarray, limit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ``Δu`` from the range of the layer's input (``u' >= 0`` after a ReLU, ...), capped by
    ``limit`` (the pseudo-inverse bound, which also holds)."""
    lower, upper = -limit, limit.copy()
    box = input_bounds_of(layers, index)
    if box is not None:
        lower = np.maximum(lower, box[0] - u)
        upper = np.minimum(upper, box[1] - u)
    return lower, upper


def input_bounds_of(layers: tuple[Layer, ...], index: int) -> tuple[np.ndarray, np.ndarray] | None:
    from onnxinv.inversion.targets import input_bounds

    return input_bounds(layers, index)


def _lp_bounds(
    w: np.ndarray,
    two: np.ndarray,
    beta: np.ndarray,
    upper: np.ndarray,
    box: tuple[np.ndarray, np.ndarray],
    deadline: float | None,
) -> np.ndarray | None:
    """``max |Δu_m|`` over ``{Δu : |w_j Δu| <= β_j (two-sided rows), w_j Δu <= upper_j (others), box}``
    for every ``m``: two LPs per coordinate. None when an LP does not end optimal (the caller keeps the
    pseudo-inverse bound)."""
    n = w.shape[1]
    one = ~two & np.isfinite(upper)
    a_ub = np.vstack([w[two], -w[two], w[one]])
    b_ub = np.concatenate([beta[two], beta[two], upper[one]])
    lower, high = box
    if np.any(lower > high):
        return None
    out = np.zeros(n)
    # one LP, 2n objectives: each solve starts from the last optimum's basis
    session: lp.LPSession | None = None
    for m in range(n):
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[m] = -sign
            remaining = None if deadline is None else max(deadline - _now(), 0.0)
            if a_ub.shape[0] == 0:
                res = lp.solve_lp(c, None, None, bounds=(lower, high), time_limit=remaining)
            else:
                if session is None:
                    session = lp.LPSession(c, a_ub, b_ub, (lower, high))
                else:
                    session.set_objective(c)
                res = session.solve(time_limit=remaining)
            if not res.ok or res.x is None:
                return None
            # the LP's optimum, loosened by the re-check tolerance of its constraints
            out[m] = max(out[m], sign * float(res.x[m]) + 1e-9 * (1.0 + abs(float(res.x[m]))))
    return out


# ----------------------------------------------------------------------------- null directions


@dataclass(frozen=True, eq=False)
class NullDirection:
    """``z + t v`` has the same layer-0 output as ``z`` (see module Notes); ``||v||_∞ = 1``, or
    ``t = 0`` and ``v = 0`` where the LP moved nowhere (``failure`` then says why, if its solve failed)."""

    direction: np.ndarray
    step: float
    active_rows: int
    rank: int
    failure: str | None = None


def null_direction(
    layer: Layer,
    z: np.ndarray,
    *,
    reach: float,
    objective: np.ndarray,
    tau: float,
    time_limit: float | None = None,
) -> NullDirection | None:
    """A move ``d = t v`` of the latent that leaves layer 0's output unchanged, as far as ``reach``
    (max abs) allows; None when layer 0's active rows have full column rank at ``z``. ``t = 0`` when
    the set does not reach out from ``z`` along this objective (or the LP failed: see ``failure``).

    ``d`` is a vertex of ``{d : W_I d = 0, W_j (z + d) + b_j <= 0 for the inactive rows j,
    ||d||_∞ <= reach}`` minimising ``objective · d`` (one LP): every point of that set is another
    preimage of layer 0's output. ``tau`` is the active threshold on layer 0's output.
    """
    k = layer.in_features
    z = np.asarray(z, dtype=np.float64)
    pre = layer.preactivation(z)
    if layer.sparse and layer.out_features * k > linear.DENSE_RANK_ENTRIES:
        return None  # no dense copy of a large sparse layer 0; the witness search still runs
    w = layer.dense_weight()
    relu = layer.activation is Activation.RELU
    active = pre > tau if relu else np.ones(layer.out_features, dtype=bool)
    rank = numerical_rank(w[active]) if active.any() else 0
    if rank >= k:
        return None
    inactive = ~active
    res = lp.solve_lp(
        np.asarray(objective, dtype=np.float64),
        w[inactive] if inactive.any() else None,
        -pre[inactive] if inactive.any() else None,
        w[active] if active.any() else None,
        np.zeros(int(active.sum())) if active.any() else None,
        (-np.full(k, reach), np.full(k, reach)),
        time_limit=time_limit,
    )
    count = int(active.sum())
    if not res.ok or res.x is None:
        return NullDirection(np.zeros(k), 0.0, count, rank, f"LP status: {res.status.value}")
    d = np.asarray(res.x, dtype=np.float64)
    if active.any():  # W_I d exactly zero: project out the LP's round-off
        wa = w[active]
        d = d - np.linalg.lstsq(wa, wa @ d, rcond=None)[0]
    step = float(np.max(np.abs(d))) if d.size else 0.0
    if not step > 0:
        return NullDirection(np.zeros(k), 0.0, count, rank)
    return NullDirection(d / step, step, count, rank)
