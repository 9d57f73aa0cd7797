"""Whole-network numerics: forward pass, Jacobian, least-squares fit and gradient descent on ``G``.

Problem
-------
A generator is a chain ``h_i = act_i(W_i h_{i-1} + b_i)``, ``h_0 = z ∈ R^k``, ``G(z) = h_d``. With an
optional measurement matrix ``A`` (``m × n``, the identity when absent), observed entries ``M``
(a 0/1 mask of the measurements) and observation ``y``, this module minimises

.. math::

    F(z) = \\tfrac12 \\| M \\odot (A\\,G(z) - y) \\|_2^2 + \\tfrac12 \\lambda \\|z\\|_2^2

two ways:

* :func:`fit`: trust-region least squares (:func:`scipy.optimize.least_squares`) with the analytic
  Jacobian of the current activation pattern, from given starts (a layer-wise estimate, restarts),
  under a wall-clock deadline. With ``λ = σ²`` and ``z ~ N(0, I)`` it is the MAP estimate under
  Gaussian noise of standard deviation ``σ``; :func:`error_estimate` gives the standard deviations
  of the Laplace approximation around it.
* :func:`descend`: the gradient-descent / Adam baseline of Bora et al. [1]_ (the comparison of
  Lei et al. [2]_, Sec. 5), vectorised over observations × random restarts.

Notes
-----
**Jacobian.** With ``a_i = W_i h_{i-1} + b_i`` and ``D_i = diag(act_i'(a_i))``,

.. math::

    J(z) = \\frac{\\partial G}{\\partial z} = D_d W_d \\cdots D_1 W_1 .

For ReLU / leaky ReLU networks ``G`` is piecewise linear, ``J`` is constant on each activation
region, and the Gauss-Newton model is exact inside the region (so on realizable data a trust-region
method converges in a few steps once the pattern is right). At a kink the one-sided derivative of
:func:`forward` is used (ReLU: 0 at ``a = 0``; leaky ReLU: 1 at ``a = 0``, matching the forward
pass ``a >= 0``). Tanh and sigmoid: ``1 - tanh²(a)`` and ``s(a)(1 - s(a))``.

:func:`jacobian` returns ``J`` as a dense ``(n, k)`` array built by forward accumulation
(``T ← D_i (W_i T)``, ``T_0 = I_k``, costing ``k`` products per stored weight entry) or as a
:class:`~scipy.sparse.linalg.LinearOperator` (``J v`` by a forward pass of tangents, ``Jᵀ u`` by
backpropagation). Sparse weights stay sparse either way. ``kind="auto"`` takes the operator when a
layer is sparse, when ``k`` exceeds :data:`DENSE_LATENT`, or when the largest ``n_i × k`` block
exceeds :data:`DENSE_ENTRIES` entries, and the dense form otherwise. Measured
(``scripts/bench_network.py`` section e, CPU time of one :func:`fit` from a nearby start, median
of 5): with dense weights the dense form with MINPACK's ``lm`` is faster up to ``k = 100``
(8-40-64: 4x, 64-512-2048: 1.2x, 100-250-600: 1.3x) and the operator beyond (128-512-2048: 1.3x;
its ``lsmr`` solve needs fewer products than the ``k`` of the dense accumulation); with sparse
weights the operator is as fast at ``k = 32`` and 3-4x faster at ``k = 100``, since a
sparse-times-dense product does not block like a dense one.

**Errors.** Near a local minimum with residual ``r`` of i.i.d. ``N(0, σ²)`` noise on the ``m``
observed entries, the Laplace / Gauss-Newton approximation of the covariance of ``ẑ`` is

.. math::

    \\operatorname{Cov}(\\hat z) \\approx \\sigma^2 (J^\\top J + \\lambda I)^{-1},
    \\qquad \\hat\\sigma^2 = \\frac{\\|r\\|^2}{m - k}

(exact for a linear model without prior; with ``λ = σ²`` it is the posterior covariance of the
linearised model under the prior ``N(0, I)``).

References
----------
.. [1] A. Bora, A. Jalal, E. Price, A. G. Dimakis, "Compressed Sensing using Generative Models",
   ICML 2017 (CSGM: ``min_z ‖A G(z) − y‖² + λ‖z‖²`` by Adam with random restarts).
.. [2] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [3] M. A. Branch, T. F. Coleman, Y. Li, "A Subspace, Interior, and Conjugate Gradient Method for
   Large-Scale Bound-Constrained Minimization Problems", SIAM J. Sci. Comput. 21(1), 1999 (the
   ``trf`` method of :func:`scipy.optimize.least_squares`).
.. [4] D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
.. [5] J. J. Moré, "The Levenberg-Marquardt Algorithm: Implementation and Theory", Numerical
   Analysis, Lecture Notes in Mathematics 630, Springer, 1978 (MINPACK, the ``lm`` method).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import scipy.sparse as sp
from scipy.optimize import least_squares
from scipy.sparse.linalg import LinearOperator
from scipy.special import expit

from onnxinv.errors import InvalidArgumentError, ObservationError
from onnxinv.layers import Activation, Generator, Layer

__all__ = [
    "DENSE_ENTRIES",
    "DENSE_LATENT",
    "KINK_BAND",
    "KINK_RTOL",
    "Descent",
    "ErrorEstimate",
    "Fit",
    "FitStatus",
    "Pass",
    "Run",
    "descend",
    "error_estimate",
    "fit",
    "forward",
    "jacobian",
    "seeded_starts",
]

DENSE_ENTRIES = 1 << 22
"""Largest ``n_i × k`` block (entries) of a dense Jacobian built by :func:`jacobian` (32 MB)."""

DENSE_LATENT = 100
"""Largest latent size ``k`` for which ``kind="auto"`` builds dense Jacobians (module Notes)."""

Layers: TypeAlias = "Sequence[Layer] | Generator"
Measure: TypeAlias = "np.ndarray | sp.sparray | sp.spmatrix"
Jacobian: TypeAlias = "np.ndarray | LinearOperator"
JacobianKind = Literal["auto", "dense", "operator"]


# --------------------------------------------------------------------------------------------------
# forward pass and Jacobian


@dataclass(frozen=True, eq=False)
class Pass:
    """One forward pass through the layers.

    Attributes
    ----------
    z : (k,) or (N, k) the input latent(s)
    output : (n,) or (N, n) ``G(z)``
    derivatives : per layer, ``act_i'(a_i)`` with the shape of that layer's output (the diagonal of
        ``D_i`` in the module Notes): all the Jacobian needs besides the weights
    preactivations : per layer, ``a_i = W_i h_{i-1} + b_i`` (where the kinks are)
    """

    z: np.ndarray
    output: np.ndarray
    derivatives: tuple[np.ndarray, ...]
    preactivations: tuple[np.ndarray, ...] = ()


def forward(layers: Layers, z: np.ndarray) -> Pass:
    """``G(z)`` and the activation derivatives of every layer, for (k,) or (N, k) latents.

    Parameters
    ----------
    layers : the generator's layers (or the :class:`~onnxinv.layers.Generator`)
    z : (k,) or (N, k) latents

    Returns
    -------
    Pass
        The output and, per layer, ``act_i'(a_i)`` at the pre-activations ``a_i = W_i h_{i-1} + b_i``.
    """
    layers = _as_layers(layers)
    h = _latent(layers, z)
    derivatives, preactivations = [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for layer in layers:
            a = layer.preactivation(h)
            h, d = _activate(layer, a)
            derivatives.append(d)
            preactivations.append(a)
    return Pass(np.asarray(z, dtype=np.float64), h, tuple(derivatives), tuple(preactivations))


def jacobian(
    layers: Layers,
    z: np.ndarray | None = None,
    *,
    state: Pass | None = None,
    measure: Measure | None = None,
    rows: np.ndarray | None = None,
    kind: JacobianKind = "auto",
) -> Jacobian:
    """The Jacobian ``P J(z)`` of ``P G(z)``, with ``P = A[rows]`` (``A`` the identity by default).

    Parameters
    ----------
    layers : the generator's layers
    z : (k,) latent (or give ``state``, a :func:`forward` pass at one latent, to reuse it)
    measure : optional (m, n) measurement matrix ``A`` (dense or scipy.sparse)
    rows : optional boolean mask or index array of the kept rows of ``A G`` (of ``G`` without ``A``)
    kind : "dense", "operator", or "auto" (the operator when a layer is sparse or an ``n_i × k`` block
        of the forward accumulation has more than :data:`DENSE_ENTRIES` entries; module Notes)

    Returns
    -------
    np.ndarray or LinearOperator
        ``(rows, k)``: dense, or an operator with ``matvec`` / ``rmatvec`` / ``matmat`` / ``rmatmat``
        by forward (tangent) and backward (adjoint) passes.

    Notes
    -----
    ``J = D_d W_d ⋯ D_1 W_1`` (module Notes). The dense form is built from the input side; without a
    measurement matrix the last layer is evaluated on the kept rows only.
    """
    layers = _as_layers(layers)
    if state is None:
        if z is None:
            raise InvalidArgumentError("jacobian needs a latent z or a forward pass (state=)")
        state = forward(layers, z)
    if state.z.ndim != 1:
        raise ObservationError(f"jacobian takes one latent of shape (k,), got {state.z.shape}")
    out = _OutputMap(layers[-1].out_features, measure, rows)
    if _choose_kind(layers, kind) == "dense":
        return _dense_jacobian(layers, state, out)
    return _operator(layers, state, out)


def _build(
    layers: tuple[Layer, ...], state: Pass, out: _OutputMap, kind: Literal["dense", "operator"]
) -> Jacobian:
    return _dense_jacobian(layers, state, out) if kind == "dense" else _operator(layers, state, out)


def _choose_kind(layers: tuple[Layer, ...], kind: JacobianKind) -> Literal["dense", "operator"]:
    if kind not in ("auto", "dense", "operator"):
        raise InvalidArgumentError(f"jacobian kind must be 'auto', 'dense' or 'operator', got {kind!r}")
    if kind != "auto":
        return kind
    k = layers[0].in_features
    widest = max(layer.out_features for layer in layers)
    if any(layer.sparse for layer in layers) or k > DENSE_LATENT or widest * k > DENSE_ENTRIES:
        return "operator"
    return "dense"


def _activate(layer: Layer, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``act(a)`` and ``act'(a)`` (one-sided at kinks, consistent with the forward pass)."""
    act = layer.activation
    if act is Activation.IDENTITY:
        return a, np.ones_like(a)
    if act is Activation.RELU:
        on = a > 0.0
        return np.maximum(a, 0.0), on.astype(np.float64)
    if act is Activation.LEAKY_RELU:
        on = a >= 0.0
        slope = layer.slope
        return np.where(on, a, slope * a), np.where(on, 1.0, slope)
    if act is Activation.TANH:
        t = np.tanh(a)
        return t, 1.0 - t * t
    if act is Activation.SIGMOID:
        s = expit(a)
        return s, s * (1.0 - s)
    raise InvalidArgumentError(f"unknown activation {act!r}")


class _OutputMap:
    """``P = A[rows]`` (or the row selection ``I[rows]``) applied after the network."""

    def __init__(self, n: int, measure: Measure | None, rows: np.ndarray | None) -> None:
        self.n = n
        if measure is not None:
            if measure.ndim != 2 or measure.shape[1] != n:
                raise ObservationError(
                    f"measurement matrix has shape {measure.shape}; the generator has {n} outputs, "
                    f"so it must be (m, {n})"
                )
            measure = sp.csr_array(measure) if sp.issparse(measure) else np.asarray(measure, np.float64)
        size = n if measure is None else int(measure.shape[0])
        if rows is not None:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                if rows.shape != (size,):
                    raise ObservationError(f"mask has shape {rows.shape}; expected ({size},)")
                rows = np.flatnonzero(rows)
            rows = rows.astype(np.intp)
            if measure is not None:
                measure = measure[rows]
                rows = None
        self.measure = measure
        self.rows = rows
        if measure is not None:
            self.size = int(measure.shape[0])
        else:
            self.size = n if rows is None else int(rows.size)

    def apply(self, g: np.ndarray) -> np.ndarray:
        """``P g`` for (n,) or (n, p) ``g``."""
        if self.measure is not None:
            return np.asarray(self.measure @ g)
        if self.rows is not None:
            return g[self.rows]
        return g

    def adjoint(self, u: np.ndarray) -> np.ndarray:
        """``Pᵀ u`` for (size,) or (size, p) ``u``."""
        if self.measure is not None:
            return np.asarray(self.measure.T @ u)
        if self.rows is not None:
            full = np.zeros((self.n,) + u.shape[1:])
            full[self.rows] = u
            return full
        return u


def _matmul(weight: np.ndarray | sp.csr_array, t: np.ndarray) -> np.ndarray:
    """``W t`` for (in,) or (in, p) ``t``; sparse weights stay sparse."""
    return np.asarray(weight @ t)


def _rmatmul(weight: np.ndarray | sp.csr_array, u: np.ndarray) -> np.ndarray:
    """``Wᵀ u`` for (out,) or (out, p) ``u``."""
    return np.asarray(weight.T @ u)


def _dense_jacobian(layers: tuple[Layer, ...], state: Pass, out: _OutputMap) -> np.ndarray:
    k = layers[0].in_features
    t: np.ndarray = np.eye(k)
    last = len(layers) - 1
    with np.errstate(over="ignore", invalid="ignore"):
        for i, layer in enumerate(layers):
            d = state.derivatives[i]
            if i == last and out.measure is None and out.rows is not None:
                # only the kept rows of the last layer are needed
                w = layer.weight[out.rows]
                return d[out.rows][:, None] * _matmul(w, t)
            t = d[:, None] * _matmul(layer.weight, t)
    return out.apply(t)


def _operator(layers: tuple[Layer, ...], state: Pass, out: _OutputMap) -> LinearOperator:
    k = layers[0].in_features
    derivatives = state.derivatives

    def matmat(v: np.ndarray) -> np.ndarray:
        t = v
        for layer, d in zip(layers, derivatives):
            t = (d[:, None] if t.ndim == 2 else d) * _matmul(layer.weight, t)
        return out.apply(t)

    def rmatmat(u: np.ndarray) -> np.ndarray:
        g = out.adjoint(u)
        for layer, d in zip(reversed(layers), reversed(derivatives)):
            g = _rmatmul(layer.weight, (d[:, None] if g.ndim == 2 else d) * g)
        return g

    return LinearOperator(
        (out.size, k),
        matvec=matmat,
        rmatvec=rmatmat,
        matmat=matmat,
        rmatmat=rmatmat,
        dtype=np.float64,
    )


# --------------------------------------------------------------------------------------------------
# least-squares fit


class FitStatus(str, enum.Enum):
    """How one least-squares run (or a whole :func:`fit`) ended."""

    CONVERGED = "converged"  # a tolerance of least_squares (ftol, xtol or gtol) was met
    BUDGET = "budget"  # max_nfev residual evaluations used up
    DEADLINE = "deadline"  # stopped (or never started) because the deadline passed
    FAILED = "failed"  # the start's residual is not finite; nothing was run from it
    SKIPPED = "skipped"  # not run: an earlier run (or the best start) already met ``target``


@dataclass(frozen=True)
class Run:
    """One start of :func:`fit`.

    Attributes
    ----------
    start : index of the start in ``starts``
    initial_cost, cost : ``F`` at the start and at the best point this run evaluated
    nfev, njev : residual and Jacobian evaluations of this run (the start's own evaluation excluded)
    status : how the run ended
    """

    start: int
    initial_cost: float
    cost: float
    nfev: int
    njev: int
    status: FitStatus


@dataclass(frozen=True, eq=False)
class Fit:
    """The result of :func:`fit`: the best point over every start.

    Attributes
    ----------
    z : (k,) the best latent evaluated (never worse than the best start)
    cost : ``F(z) = ½‖M ⊙ (A G(z) − y)‖² + ½λ‖z‖²``
    residual : ``A G(z) − y`` on the observed entries, shape (m,)
    residual_l2, residual_linf : norms of ``residual``
    relative_l2 : ``residual_l2 / ‖y‖`` on the observed entries (inf when that norm is 0 and the
        residual is not)
    jacobian : ``∂ residual / ∂ z`` at ``z``, (m, k), dense or a LinearOperator (the prior excluded)
    prior : ``λ``
    nfev, njev : residual and Jacobian evaluations over all starts (the batched evaluation of the
        starts excluded)
    status : the winning run's status
    start : index of the winning start
    runs : every start's :class:`Run`, in the order given
    seconds : wall time of the call
    """

    z: np.ndarray
    cost: float
    residual: np.ndarray
    residual_l2: float
    residual_linf: float
    relative_l2: float
    jacobian: Jacobian
    prior: float
    nfev: int
    njev: int
    status: FitStatus
    start: int
    runs: tuple[Run, ...]
    seconds: float

    @property
    def observed(self) -> int:
        """Number of observed residual entries ``m``."""
        return int(self.residual.size)

    @property
    def deadline_hit(self) -> bool:
        """True when the deadline stopped a run or kept a start from running."""
        return any(r.status is FitStatus.DEADLINE for r in self.runs)


class _DeadlineReached(Exception):
    """Raised inside least_squares' callbacks to stop it at the deadline."""


class _Objective:
    """Residual and Jacobian of ``F`` for least_squares; caches the last forward pass, tracks the best
    point evaluated, and stops at the deadline."""

    def __init__(
        self,
        layers: tuple[Layer, ...],
        y: np.ndarray,
        out: _OutputMap,
        prior: float,
        deadline: float,
        kind: Literal["dense", "operator"],
    ) -> None:
        self.layers, self.y, self.out, self.deadline, self.kind = layers, y, out, deadline, kind
        self.root = float(np.sqrt(prior))
        self.k = layers[0].in_features
        self.m_residuals = out.size + (self.k if self.root else 0)
        self.state: Pass | None = None
        self.nfev = 0
        self.njev = 0
        self.best_cost = np.inf
        self.best_z: np.ndarray = np.zeros(self.k)

    def _pass(self, z: np.ndarray) -> Pass:
        if self.state is None or not np.array_equal(self.state.z, z):
            self.state = forward(self.layers, z.copy())
        return self.state

    def residual(self, z: np.ndarray) -> np.ndarray:
        if time.perf_counter() >= self.deadline:
            raise _DeadlineReached
        self.nfev += 1
        state = self._pass(z)
        r = self.out.apply(state.output) - self.y
        if self.root:
            r = np.concatenate([r, self.root * z])
        with np.errstate(over="ignore", invalid="ignore"):
            cost = 0.5 * float(r @ r)
        if cost < self.best_cost:  # NaN compares False
            self.best_cost, self.best_z = cost, z.copy()
        return r

    def jacobian(self, z: np.ndarray) -> Jacobian:
        if time.perf_counter() >= self.deadline:
            raise _DeadlineReached
        self.njev += 1
        state = self._pass(z)
        if self.kind == "dense":
            jac = np.nan_to_num(_dense_jacobian(self.layers, state, self.out))
            if self.root:
                jac = np.vstack([jac, self.root * np.eye(self.k)])
            return jac
        return _with_prior(_operator(self.layers, state, self.out), self.root)


def _with_prior(op: LinearOperator, root: float) -> LinearOperator:
    """``[J; √λ I]`` as an operator."""
    if not root:
        return op
    m, k = op.shape

    def matmat(v: np.ndarray) -> np.ndarray:
        return np.concatenate([op.matmat(v) if v.ndim == 2 else op.matvec(v), root * v])

    def rmatmat(u: np.ndarray) -> np.ndarray:
        top, bottom = u[:m], u[m:]
        return (op.rmatmat(top) if u.ndim == 2 else op.rmatvec(top)) + root * bottom

    return LinearOperator(
        (m + k, k), matvec=matmat, rmatvec=rmatmat, matmat=matmat, rmatmat=rmatmat, dtype=np.float64
    )


KINK_RTOL = 1e-7
"""A ReLU / leaky-ReLU unit is at its kink when ``|a_j| ≤ KINK_RTOL · max(1, max_j |a_j|)`` of its layer."""


def _kink_rows(layers: tuple[Layer, ...], state: Pass) -> np.ndarray:
    """Gradients ``∂a_j/∂z`` (rows, shape (p, k)) of the piecewise-linear units at their kink.

    Computed by backpropagation from each such unit's weight row, so sparse weights stay sparse.
    """
    k = layers[0].in_features
    rows = [np.empty((0, k))]
    for i, layer in enumerate(layers):
        if layer.activation not in (Activation.RELU, Activation.LEAKY_RELU):
            continue
        a = state.preactivations[i]
        near = np.flatnonzero(np.abs(a) <= KINK_RTOL * max(1.0, float(np.max(np.abs(a)))))
        if not near.size:
            continue
        # the p rows only: (p, n_{i-1}), dense for a sparse weight too (p is small)
        pick = np.zeros((layer.out_features, near.size))
        pick[near, np.arange(near.size)] = 1.0
        g = _rmatmul(layer.weight, pick).T
        for j in range(i - 1, -1, -1):
            g = g * state.derivatives[j]
            g = np.asarray(layers[j].weight.T @ g.T).T
        rows.append(g)
    return np.vstack(rows)


KINK_BAND = 1e-2
"""Converged runs within this relative cost of the best get the rounds along the kinks."""


def _solve(objective: _Objective, z: np.ndarray, options: dict[str, object], max_nfev: int) -> FitStatus:
    """One least_squares run from ``z``; the objective keeps the best point it evaluates."""
    try:
        res = least_squares(
            objective.residual,
            z,
            jac=objective.jacobian,
            max_nfev=max_nfev,
            **options,
        )
    except _DeadlineReached:
        return FitStatus.DEADLINE
    return FitStatus.CONVERGED if res.status > 0 else FitStatus.BUDGET


def _on_the_kinks(objective: _Objective, z: np.ndarray, options: dict[str, object], max_nfev: int) -> bool:
    """Least squares restricted to the kinks the point sits on; True if it lowered the cost.

    On a ReLU network Gauss-Newton often stops at a point where some units sit exactly at ``a_j = 0``:
    the model of either side pushes across the kink, the trust region shrinks, and the run reports
    convergence although the cost still falls along the kink. Here ``z = z_c + N u`` with ``N`` an
    orthonormal basis of the null space of those units' gradients ``∂a_j/∂z``, which keeps them on
    their kinks to first order, and least squares runs over ``u``.
    """
    state = forward(objective.layers, z)
    c = _kink_rows(objective.layers, state)
    if not c.shape[0]:
        return False
    _, sv, vt = np.linalg.svd(c)
    rank = int(np.sum(sv > 1e-10 * sv[0])) if sv.size else 0
    basis = vt[rank:].T  # (k, k - rank)
    if not basis.shape[1]:
        return False
    before = objective.best_cost

    def residual(u: np.ndarray) -> np.ndarray:
        return objective.residual(z + basis @ u)

    def jac(u: np.ndarray) -> Jacobian:
        full = objective.jacobian(z + basis @ u)
        if isinstance(full, np.ndarray):
            return full @ basis
        return LinearOperator(
            (full.shape[0], basis.shape[1]),
            matvec=lambda v: full.matvec(basis @ v),
            rmatvec=lambda r: basis.T @ full.rmatvec(r),
            dtype=np.float64,
        )

    reduced = dict(options)
    if reduced.get("method") == "lm" and objective.m_residuals < basis.shape[1]:
        reduced["method"] = "trf"
    least_squares(residual, np.zeros(basis.shape[1]), jac=jac, max_nfev=max_nfev, **reduced)
    return objective.best_cost < before * (1.0 - 1e-12)


def fit(
    layers: Layers,
    y: np.ndarray,
    *,
    starts: np.ndarray,
    mask: np.ndarray | None = None,
    measure: Measure | None = None,
    prior: float = 0.0,
    deadline: float | None = None,
    max_nfev: int = 200,
    method: Literal["auto", "trf", "lm"] = "auto",
    xtol: float = 1e-10,
    ftol: float = 1e-10,
    gtol: float | None = None,
    kind: JacobianKind = "auto",
    target: float | None = None,
    kinks: int = 8,
) -> Fit:
    """Minimise ``½‖M ⊙ (A G(z) − y)‖² + ½λ‖z‖²`` by trust-region least squares from each start.

    Parameters
    ----------
    layers : the generator's layers
    y : (m,) observation: of ``G(z)`` (m = n) or of ``A G(z)`` when ``measure`` is given
    starts : (S, k) or (k,) starting latents, tried in the order given (put the most promising first:
        the deadline may stop the later ones)
    mask : optional (m,) boolean, True where ``y`` is observed
    measure : optional (m, n) measurement matrix ``A``, dense or scipy.sparse
    prior : ``λ ≥ 0``; ``λ = σ²`` is the MAP estimate for ``z ~ N(0, I)`` and noise ``N(0, σ²)``
    deadline : a :func:`time.perf_counter` value; None for no limit
    max_nfev : residual evaluations allowed per start
    method : "auto" (default: "lm" where MINPACK can run it, else "trf"; see Notes), "trf" or "lm"
        (MINPACK: a dense Jacobian and at least ``k`` residuals, prior rows included)
    xtol, ftol, gtol : least_squares' tolerances (relative step and cost change; ``gtol`` None: 1e-10
        for lm, where it is a scale-free cosine test, off for trf, where it is absolute)
    kind : Jacobian form, as for :func:`jacobian`; an operator uses ``tr_solver='lsmr'``
    kinks : rounds of least squares along the ReLU kinks a converged run sits on, each followed by
        a plain run from the improved point (Notes); 0 turns this off
    target : optional relative residual ``‖M ⊙ (A G(z) − y)‖ / ‖M ⊙ y‖``: once the best point meets
        it, the remaining starts are skipped (status ``skipped``). For clean data: many starts cost
        no more than one when the first succeeds

    Returns
    -------
    Fit
        The lowest-cost point evaluated over every start, with its residual, Jacobian and the runs.

    Raises
    ------
    ObservationError
        Shapes that do not match, non-finite ``y`` or starts, a negative prior.
    InvalidArgumentError
        ``method="lm"`` where MINPACK cannot run it.

    Notes
    -----
    Every start's cost is first evaluated in one batched forward pass. Each start then runs
    :func:`scipy.optimize.least_squares` with the analytic Jacobian of the current activation pattern
    (module Notes) and residual ``[M ⊙ (A G(z) − y); √λ z]``. The result is the lowest-cost point
    evaluated by any run or start, so it never fits worse than the best start.

    *Deadline.* least_squares has no time limit; the residual and Jacobian callbacks check the clock
    and, once ``deadline`` has passed, stop the current run (it keeps its best point, status
    ``deadline``); later starts are not run (status ``deadline``, cost of the start itself). The
    overshoot is at most one Jacobian, one trust-region subproblem and one residual evaluation, plus
    the final Jacobian at the returned point. A deadline already past returns the best start at once.

    *Kinks.* On ReLU / leaky-ReLU networks Gauss-Newton and Levenberg-Marquardt often stop at a
    point where units sit exactly on their kink (``|a_j|`` ≈ 1e-10): the model of either side pushes
    across, the trust region shrinks and the run reports convergence while the cost still falls
    along the kink (measured on the digits decoder at σ = 0.1: 6 of 30 fits ended 1e-7 to 2e-4
    above the cost Adam reached in 3000 iterations). After the plain runs, the converged runs that
    ended within :data:`KINK_BAND` of the best cost (best first, one per end point: runs that ended
    within a relative 1e-3 of a polished one are skipped) get up to ``kinks`` rounds of least
    squares in ``z = z_c + N u``, ``N`` an orthonormal basis of the null space of those units'
    gradients (they stay on their kinks to first order), each followed by a plain run; the rounds
    end when one no longer lowers the cost (by a relative 1e-12) or no unit sits on a kink.

    *Method.* Measured side by side on the shipped digits decoder (``scripts/bench_network.py``,
    section d: 100 observations, Gaussian noise σ = 0.05 and compressed sensing with 20 rows, 5
    starts), MINPACK's Levenberg-Marquardt (``lm`` [5]_) reaches the same cost as ``trf`` [3]_ with
    the exact (SVD) subproblem on 97% and 100% of the observations and a lower one on the rest, in
    about 40% of the CPU time; ``trf`` with ``lsmr`` on the LinearOperator is another 2-3x slower
    (its inner iterations cost a network pass each) on this small network. So ``auto`` takes ``lm``
    when the Jacobian is dense and there are at least ``k`` residuals, and ``trf`` otherwise
    (operators, or fewer measurements than unknowns without a prior). Both stop within one
    evaluation of the deadline
    (the check lives in the callbacks, not in scipy's ``callback`` hook, which ``lm`` lacks).
    """
    t0 = time.perf_counter()
    layers = _as_layers(layers)
    k = layers[0].in_features
    z0 = _latent(layers, starts, name="starts")
    z0 = z0.reshape(1, k) if z0.ndim == 1 else z0
    if not np.all(np.isfinite(z0)):
        raise ObservationError("fit: every start must be finite")
    prior = float(prior)
    if not (np.isfinite(prior) and prior >= 0.0):
        raise ObservationError(f"fit: prior λ must be a finite number >= 0, got {prior}")
    out, y_obs = _observed(layers, y, mask, measure)
    jac_kind = _choose_kind(layers, kind)
    if method not in ("auto", "trf", "lm"):
        raise InvalidArgumentError(f"fit: method must be 'auto', 'trf' or 'lm', got {method!r}")
    lm_ok = jac_kind == "dense" and out.size + (k if prior else 0) >= k
    if method == "auto":
        method = "lm" if lm_ok else "trf"
    if method == "lm" and not lm_ok:
        raise InvalidArgumentError(
            "fit: method 'lm' (MINPACK) needs a dense Jacobian and at least as many residuals as "
            f"unknowns (here {out.size} observed entries for k = {k}); use method='trf'"
        )
    end = np.inf if deadline is None else float(deadline)

    initial = _costs(layers, z0, out, y_obs, prior)
    finite = np.isfinite(initial)
    if not finite.any():
        raise ObservationError(
            "fit: the residual is not finite at any start (the generator overflows there, or its "
            "weights are not finite)"
        )
    winner = int(np.argmin(np.where(finite, initial, np.inf)))
    best_cost, best_z = float(initial[winner]), z0[winner].copy()
    objective = _Objective(layers, y_obs, out, prior, end, jac_kind)
    if gtol is None:
        # lm's gtol is a scale-free cosine test; trf's is absolute on the gradient (so it would depend
        # on the scale of y): off there, ftol and xtol are relative
        gtol = 1e-10 if method == "lm" else None
    options: dict[str, object] = {"method": method, "xtol": xtol, "ftol": ftol, "gtol": gtol}
    if jac_kind == "operator":
        options["tr_solver"] = "lsmr"
    runs: list[Run] = []
    y_norm = float(np.linalg.norm(y_obs))

    def meets_target(z: np.ndarray) -> bool:
        if target is None:
            return False
        r = out.apply(forward(layers, z).output) - y_obs
        return bool(np.linalg.norm(r) <= target * y_norm)

    reached = meets_target(best_z)
    run_z: list[np.ndarray] = []
    for s in range(z0.shape[0]):
        c0 = float(initial[s])
        run_z.append(z0[s].copy())
        if not finite[s]:
            runs.append(Run(s, c0, c0, 0, 0, FitStatus.FAILED))
            continue
        if reached:
            runs.append(Run(s, c0, c0, 0, 0, FitStatus.SKIPPED))
            continue
        if time.perf_counter() >= end:
            runs.append(Run(s, c0, c0, 0, 0, FitStatus.DEADLINE))
            continue
        objective.best_cost, objective.best_z = c0, z0[s].copy()
        nfev0, njev0 = objective.nfev, objective.njev
        status = _solve(objective, z0[s], options, max_nfev)
        run_z[s] = objective.best_z.copy()
        runs.append(Run(s, c0, objective.best_cost, objective.nfev - nfev0, objective.njev - njev0, status))
        if objective.best_cost < best_cost:
            winner, best_cost, best_z = s, objective.best_cost, run_z[s]
            reached = meets_target(best_z)

    # rounds along the kinks (Notes), for the converged runs that ended near the best cost, best first
    candidates = [
        r.start for r in runs if r.status is FitStatus.CONVERGED and r.cost <= best_cost * (1.0 + KINK_BAND)
    ]
    seen: list[np.ndarray] = []  # where the polished runs ended before polishing: one per basin
    for s in sorted(candidates, key=lambda i: runs[i].cost) if kinks > 0 else []:
        if reached or time.perf_counter() >= end:
            break
        near = 1e-3 * (1.0 + float(np.linalg.norm(run_z[s])))
        if any(float(np.linalg.norm(run_z[s] - z)) <= near for z in seen):
            continue
        seen.append(run_z[s].copy())
        run = runs[s]
        objective.best_cost, objective.best_z = run.cost, run_z[s].copy()
        nfev0, njev0 = objective.nfev, objective.njev
        status = run.status
        try:
            for _ in range(kinks):
                if not _on_the_kinks(objective, objective.best_z, options, max_nfev):
                    break
                status = _solve(objective, objective.best_z, options, max_nfev)
                if status is FitStatus.DEADLINE:
                    break
        except _DeadlineReached:
            status = FitStatus.DEADLINE
        run_z[s] = objective.best_z.copy()
        runs[s] = Run(
            s,
            run.initial_cost,
            objective.best_cost,
            run.nfev + objective.nfev - nfev0,
            run.njev + objective.njev - njev0,
            status,
        )
        if objective.best_cost < best_cost:
            winner, best_cost, best_z = s, objective.best_cost, run_z[s]
            reached = meets_target(best_z)

    state = forward(layers, best_z)
    residual = out.apply(state.output) - y_obs
    l2 = float(np.linalg.norm(residual))
    relative = l2 / y_norm if y_norm > 0 else (0.0 if l2 == 0 else np.inf)
    jac = _build(layers, state, out, jac_kind)
    return Fit(
        z=best_z,
        cost=best_cost,
        residual=residual,
        residual_l2=l2,
        residual_linf=float(np.max(np.abs(residual))) if residual.size else 0.0,
        relative_l2=relative,
        jacobian=jac,
        prior=prior,
        nfev=objective.nfev,
        njev=objective.njev,
        status=runs[winner].status,
        start=winner,
        runs=tuple(runs),
        seconds=time.perf_counter() - t0,
    )


def _observed(
    layers: tuple[Layer, ...], y: np.ndarray, mask: np.ndarray | None, measure: Measure | None
) -> tuple[_OutputMap, np.ndarray]:
    n = layers[-1].out_features
    y = np.asarray(y, dtype=np.float64)
    size = n if measure is None else int(measure.shape[0])
    if y.shape != (size,):
        what = f"{n} generator outputs" if measure is None else f"{size} rows of the measurement matrix"
        raise ObservationError(f"observation has shape {y.shape}; expected ({size},) for the {what}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (size,):
            raise ObservationError(
                f"mask must be a boolean array of shape ({size},), got {mask.dtype} {mask.shape}"
            )
    out = _OutputMap(n, measure, mask)
    y_obs = y if mask is None else y[mask]
    if not np.all(np.isfinite(y_obs)):
        raise ObservationError("observation has non-finite observed entries")
    return out, y_obs


def _costs(
    layers: tuple[Layer, ...], z: np.ndarray, out: _OutputMap, y_obs: np.ndarray, prior: float
) -> np.ndarray:
    """``F`` at each row of ``z`` (S, k), in one batched forward pass."""
    g = forward(layers, z).output
    with np.errstate(over="ignore", invalid="ignore"):
        r = out.apply(g.T).T - y_obs
        cost = 0.5 * np.sum(r * r, axis=1) + 0.5 * prior * np.sum(z * z, axis=1)
    return np.where(np.isnan(cost), np.inf, cost)


# --------------------------------------------------------------------------------------------------
# helpers


def _as_layers(layers: Layers) -> tuple[Layer, ...]:
    out = tuple(layers.layers) if isinstance(layers, Generator) else tuple(layers)
    if not out:
        raise InvalidArgumentError("a generator needs at least one layer")
    return out


def _latent(layers: tuple[Layer, ...], z: np.ndarray, name: str = "latent") -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    k = layers[0].in_features
    if z.ndim not in (1, 2) or z.shape[-1] != k:
        raise ObservationError(
            f"{name} has shape {z.shape}; this generator takes {k} values per latent, as shape "
            f"({k},) or (N, {k})"
        )
    return z


# --------------------------------------------------------------------------------------------------
# error estimate


@dataclass(frozen=True, eq=False)
class ErrorEstimate:
    """Standard deviations of a fitted latent (:func:`error_estimate`).

    Attributes
    ----------
    std : (k,) standard deviations of ``z``, or None when they cannot be estimated (see ``reason``)
    covariance : (k, k) ``σ²(JᵀJ + λI)⁻¹``, or None
    sigma : the noise standard deviation used (given, or estimated from the residual; nan if neither)
    estimated : True when ``sigma`` was estimated from the residual
    dof : ``m − k``, the degrees of freedom of the residual
    condition : 2-norm condition number of ``JᵀJ + λI`` (inf when singular)
    reason : why ``std`` is None; "" otherwise
    """

    std: np.ndarray | None
    covariance: np.ndarray | None
    sigma: float
    estimated: bool
    dof: int
    condition: float
    reason: str


def error_estimate(fit: Fit, sigma: float | None = None) -> ErrorEstimate:
    """Standard deviations of ``fit.z`` from ``σ²(JᵀJ + λI)⁻¹`` (Laplace / Gauss-Newton approximation).

    Parameters
    ----------
    fit : a :func:`fit` result (its Jacobian, residual and prior are used)
    sigma : standard deviation of the i.i.d. Gaussian noise on each observed entry; None to estimate
        it as ``σ̂ = ‖r‖ / √(m − k)``

    Returns
    -------
    ErrorEstimate
        ``std`` is None, with the reason, when ``JᵀJ + λI`` is singular to working precision (a
        direction of ``z`` that changes no observed entry, e.g. a latent unit feeding only dead ReLUs,
        or fewer observed entries than ``k`` without a prior), or when ``σ`` must be estimated but
        ``m ≤ k`` leaves no degrees of freedom.

    Notes
    -----
    For a linear model ``y = A z + e``, ``e ~ N(0, σ² I)``, the least-squares estimate has covariance
    ``σ²(AᵀA)⁻¹`` exactly; for ``G`` it is the linearisation at ``ẑ`` (valid when the noise is small
    enough not to change the activation pattern much). With ``λ = σ²`` it is the covariance of the
    Laplace approximation of the posterior under ``z ~ N(0, I)``. The estimate ``σ̂²`` uses ``m − k``
    degrees of freedom (unbiased for the linear model without prior).
    """
    jac = fit.jacobian
    m, k = fit.observed, int(fit.z.size)
    dof = m - k
    if sigma is None:
        if dof <= 0:
            return ErrorEstimate(
                None,
                None,
                float("nan"),
                True,
                dof,
                float("nan"),
                f"σ cannot be estimated from the residual: {m} observed entries leave no degrees of "
                f"freedom for k = {k} unknowns; pass sigma",
            )
        sigma_used, estimated = fit.residual_l2 / np.sqrt(dof), True
    else:
        sigma_used, estimated = float(sigma), False
        if not (np.isfinite(sigma_used) and sigma_used >= 0.0):
            raise ObservationError(f"error_estimate: sigma must be a finite number >= 0, got {sigma}")
    h = _gram(jac, k) + fit.prior * np.eye(k)
    eig = np.linalg.eigvalsh(h)
    top = float(eig[-1])
    if not (np.all(np.isfinite(eig)) and top > 0.0) or eig[0] <= 10.0 * k * np.finfo(float).eps * top:
        return ErrorEstimate(
            None,
            None,
            sigma_used,
            estimated,
            dof,
            float("inf"),
            f"JᵀJ{' + λI' if fit.prior else ''} is singular to working precision (eigenvalues "
            f"{max(float(eig[0]), 0.0):.3g} to {top:.3g}): some direction of z changes no observed "
            "entry at this point (a unit that only feeds inactive ReLUs, or too few observed entries), "
            "so its error is unbounded",
        )
    cov = sigma_used**2 * np.linalg.inv(h)
    cov = 0.5 * (cov + cov.T)
    return ErrorEstimate(np.sqrt(np.diag(cov)), cov, sigma_used, estimated, dof, top / float(eig[0]), "")


def _gram(jac: Jacobian, k: int, block: int = 64) -> np.ndarray:
    """``JᵀJ`` (k, k); an operator is applied to blocks of unit vectors."""
    if isinstance(jac, np.ndarray):
        return jac.T @ jac
    h = np.empty((k, k))
    for lo in range(0, k, block):
        e = np.eye(k, min(block, k - lo), -lo)
        h[:, lo : lo + e.shape[1]] = jac.rmatmat(jac.matmat(e))
    return 0.5 * (h + h.T)


# --------------------------------------------------------------------------------------------------
# gradient descent / Adam baseline

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-12


@dataclass(frozen=True, eq=False)
class Descent:
    """Per-observation details of :func:`descend`.

    Attributes
    ----------
    restart : (N,) index of the winning restart of each observation
    iterations : (N,) iterations run for each observation before it stopped
    relative : (N,) relative residual ``‖M ⊙ (A G(z) − y)‖ / ‖M ⊙ y‖`` of the returned latent
    status : (N,) str array of :class:`FitStatus` values: "converged" (``relative ≤ tol``), "budget"
        (the iteration cap), "deadline"
    polished : (N,) True where the final least-squares polish (``polish > 0``) lowered the loss
    starts : (N, R, k) the random starts used
    seconds : wall time of the call
    """

    restart: np.ndarray
    iterations: np.ndarray
    relative: np.ndarray
    status: np.ndarray
    polished: np.ndarray
    starts: np.ndarray
    seconds: float


def seeded_starts(k: int, restarts: int, seed: int, indices: np.ndarray) -> np.ndarray:
    """Random starts ``z ~ N(0, I)``: (N, restarts, k), those of observation ``i`` drawn from the
    seed sequence ``(seed, indices[i])`` alone, so they do not depend on ``N`` or on the batch split."""
    out = np.empty((len(indices), restarts, k))
    for row, index in enumerate(indices):
        out[row] = np.random.default_rng([int(seed), int(index)]).standard_normal((restarts, k))
    return out


def descend(
    layers: Layers,
    y: np.ndarray,
    *,
    masks: np.ndarray | None = None,
    measure: Measure | None = None,
    prior: float = 0.0,
    restarts: int = 5,
    iterations: int = 1000,
    lr: float | None = None,
    adam: bool = True,
    seed: int = 0,
    indices: np.ndarray | None = None,
    deadline: float | None = None,
    tol: float = 1e-6,
    polish: int = 0,
) -> tuple[np.ndarray, np.ndarray, Descent]:
    """Gradient descent (or Adam) on ``½‖M ⊙ (A G(z) − y)‖² + ½λ‖z‖²`` from random restarts, batched.

    Parameters
    ----------
    layers : the generator's layers
    y : (N, m) observations (or one, (m,)); m = n, or the rows of ``measure``
    masks : optional boolean (m,) mask shared by every observation, or (N, m), True where observed
    measure : optional (m, n) measurement matrix ``A`` shared by every observation
    prior : ``λ ≥ 0`` (CSGM's ``‖z‖²`` regulariser [1]_; ``σ²`` gives the MAP objective)
    restarts : random starts ``z ~ N(0, I)`` per observation (see :func:`seeded_starts`)
    iterations : iteration cap
    lr : step size; None for 0.05 with Adam, 1.0 for plain gradient descent (as in [2]_)
    adam : Adam [4]_ (default) or plain gradient descent with an adaptive step (see Notes)
    seed, indices : the starts of observation ``i`` come from ``(seed, indices[i])``; ``indices``
        defaults to ``0..N-1``: pass the global indices when a batch is split into chunks
    deadline : a :func:`time.perf_counter` value; None for no limit
    tol : an observation stops once one restart's relative residual is at most ``tol``
    polish : when > 0, an observation that did not reach ``tol`` gets a final :func:`fit` from its
        best point with at most ``polish`` residual evaluations (Gauss-Newton steps; see Notes)

    Returns
    -------
    z : (N, k) the best latent of each observation over its restarts
    losses : (N,) the objective at ``z``
    info : :class:`Descent`

    Notes
    -----
    All ``N × R`` points move together: one batched forward pass and one batched backpropagation
    (``∇F = Jᵀ Aᵀ (M ⊙ r) + λ z``) per iteration. Each point keeps the best iterate it visited.

    *Adam* uses ``β = (0.9, 0.999)``, a fixed step, and no line search. *Plain descent* takes
    ``z ← z − η ∇F`` with a per-point step that grows by 1.1 after a step that does not raise the
    loss and halves (the step being undone) after one that does (a "bold driver"); a fixed step that
    only halves, as the previous baseline did, shrinks early and then stalls.

    *Stopping.* An observation stops when its best relative residual reaches ``tol`` (``1e-6``: on
    clean data a point that fits that well is in the basin of ``z*``, and a layer-wise analysis or
    :func:`fit` finishes it to rounding), at the iteration cap, or at the deadline (checked every
    iteration). The previous baseline stopped only at ``1e-3 · tol`` (1e-8) and answered "not found"
    at residuals around 1e-4 to 1e-3 after 1000 iterations: Adam converges linearly, at a rate set
    by the conditioning of ``JᵀJ`` near the solution, and its fixed step does not decay. Measured
    (``scripts/bench_network.py`` section f, clean random ``k``-250-600 ReLU nets, 4 restarts, 1000
    iterations): every observation reaches 1e-6 at ``k = 70``, half at ``k = 90``, none at
    ``k = 110``. ``polish`` finishes them with Gauss-Newton steps, which converge in a step or two
    once the activation pattern is right: with ``polish=20`` all reach 1e-6 at ``k = 90`` (half to
    1e-10) and 70% reach 1e-10 at ``k = 110``. A polished result is no longer plain gradient descent;
    the default (0) keeps the baseline pure, and a pipeline that refines every method's answer with
    :func:`fit` gets the same effect.

    *Determinism.* Everything an observation does depends only on its own data, starts and the
    iteration count (rows of the batched products are computed independently), so splitting a
    batch, with the right ``indices``, gives the same results, unless a deadline cuts it short.
    """
    t0 = time.perf_counter()
    layers = _as_layers(layers)
    k = layers[0].in_features
    n = layers[-1].out_features
    y = np.asarray(y, dtype=np.float64)
    single = y.ndim == 1
    y = y[None] if single else y
    m = n if measure is None else int(measure.shape[0])
    if y.ndim != 2 or y.shape[1] != m:
        raise ObservationError(f"observations have shape {y.shape}; expected (N, {m})")
    n_obs = y.shape[0]
    if measure is not None:
        if measure.ndim != 2 or measure.shape[1] != n:
            raise ObservationError(
                f"measurement matrix has shape {measure.shape}; it must be (m, {n}) for this generator"
            )
        measure = sp.csr_array(measure) if sp.issparse(measure) else np.asarray(measure, np.float64)
    weights = _mask_weights(masks, n_obs, m)
    observed_y = y if weights is None else y * weights
    if not np.all(np.isfinite(observed_y)):
        raise ObservationError("observations have non-finite observed entries")
    prior = float(prior)
    if not (np.isfinite(prior) and prior >= 0.0):
        raise ObservationError(f"descend: prior λ must be a finite number >= 0, got {prior}")
    restarts = int(restarts)
    if restarts < 1 or int(iterations) < 0:
        raise InvalidArgumentError("descend: restarts must be >= 1 and iterations >= 0")
    idx = np.arange(n_obs) if indices is None else np.asarray(indices).reshape(-1)
    if idx.shape != (n_obs,):
        raise InvalidArgumentError(f"descend: indices must have one entry per observation ({n_obs})")
    step = float(lr) if lr is not None else (0.05 if adam else 1.0)
    end = np.inf if deadline is None else float(deadline)

    starts = seeded_starts(k, restarts, seed, idx)
    y_norm = np.linalg.norm(observed_y, axis=1)
    # loss at which an observation counts as converged: ½ (tol ‖M y‖)², plus the prior
    stop_data = 0.5 * (tol * y_norm) ** 2

    y_rep = np.repeat(y, restarts, axis=0)
    w_rep = None if weights is None else np.repeat(weights, restarts, axis=0)
    total = n_obs * restarts

    # full per-point state; the loop works on compact copies of the points still running and writes
    # them back when an observation stops (no fancy indexing in the common iteration)
    z_all = starts.reshape(total, k).copy()
    best_loss_all, best_data_all, best_z_all = np.empty(total), np.empty(total), z_all.copy()
    ids = np.arange(total)
    z_a = z_all.copy()
    y_a, w_a = y_rep, w_rep
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss_a, data_a, grad_a = _objective(layers, z_a, y_a, measure, w_a, prior)
        best_loss_a, best_data_a, best_z_a = loss_a.copy(), data_a.copy(), z_a.copy()
        m1_a = np.zeros_like(z_a)
        m2_a = np.zeros_like(z_a)
        eta_a = np.full(total, step)
        live = np.arange(n_obs)  # observations still running, in order
        ran = np.zeros(n_obs, dtype=np.int64)
        status = np.full(n_obs, FitStatus.BUDGET.value, dtype="<U9")
        it = 0
        while live.size:
            reached = best_data_a.reshape(live.size, restarts).min(axis=1) <= stop_data[live]
            stop_all = it >= iterations or time.perf_counter() >= end
            if reached.any() or stop_all:
                status[live[reached]] = FitStatus.CONVERGED.value
                if stop_all and it < iterations:
                    status[live[~reached]] = FitStatus.DEADLINE.value
                leaving = np.repeat(reached | stop_all, restarts)
                gone = ids[leaving]
                best_loss_all[gone], best_data_all[gone] = best_loss_a[leaving], best_data_a[leaving]
                best_z_all[gone] = best_z_a[leaving]
                if stop_all:
                    break
                keep = ~leaving
                live = live[~reached]
                ids, z_a, loss_a, data_a, grad_a = (
                    ids[keep],
                    z_a[keep],
                    loss_a[keep],
                    data_a[keep],
                    grad_a[keep],
                )
                best_loss_a, best_data_a, best_z_a = best_loss_a[keep], best_data_a[keep], best_z_a[keep]
                m1_a, m2_a, eta_a = m1_a[keep], m2_a[keep], eta_a[keep]
                y_a = y_rep[ids]
                w_a = None if w_rep is None else w_rep[ids]
                if not live.size:
                    break
            it += 1
            ran[live] = it
            if adam:
                m1_a *= _BETA1
                m1_a += (1.0 - _BETA1) * grad_a
                m2_a *= _BETA2
                m2_a += (1.0 - _BETA2) * grad_a * grad_a
                lr_t = step * np.sqrt(1.0 - _BETA2**it) / (1.0 - _BETA1**it)
                z_a = z_a - lr_t * m1_a / (np.sqrt(m2_a) + _ADAM_EPS * np.sqrt(1.0 - _BETA2**it))
                loss_a, data_a, grad_a = _objective(layers, z_a, y_a, measure, w_a, prior)
            else:
                z_new = z_a - eta_a[:, None] * grad_a
                loss_new, data_new, grad_new = _objective(layers, z_new, y_a, measure, w_a, prior)
                take = loss_new <= loss_a
                eta_a = np.where(take, 1.1 * eta_a, 0.5 * eta_a)
                np.copyto(z_a, z_new, where=take[:, None])
                np.copyto(grad_a, grad_new, where=take[:, None])
                loss_a = np.where(take, loss_new, loss_a)
                data_a = np.where(take, data_new, data_a)
            better = loss_a < best_loss_a
            np.copyto(best_loss_a, loss_a, where=better)
            np.copyto(best_data_a, data_a, where=better)
            np.copyto(best_z_a, z_a, where=better[:, None])
    best_loss, best_data, best_z = best_loss_all, best_data_all, best_z_all

    grid = best_loss.reshape(n_obs, restarts)
    winner = np.argmin(np.where(np.isnan(grid), np.inf, grid), axis=1)
    pick = np.arange(n_obs) * restarts + winner
    z_out, loss_out, data_out = best_z[pick].copy(), best_loss[pick].copy(), best_data[pick].copy()
    polished = np.zeros(n_obs, dtype=bool)
    if polish > 0:
        for i in np.flatnonzero(status != FitStatus.CONVERGED.value):
            if time.perf_counter() >= end:
                break
            mask_i = None if weights is None else weights[i] > 0
            res = fit(
                layers,
                y[i],
                starts=z_out[i],
                mask=mask_i,
                measure=measure,
                prior=prior,
                deadline=end,
                max_nfev=int(polish),
            )
            if res.cost < loss_out[i]:
                z_out[i], loss_out[i] = res.z, res.cost
                data_out[i] = 0.5 * res.residual_l2**2
                polished[i] = True
                if data_out[i] <= stop_data[i]:
                    status[i] = FitStatus.CONVERGED.value
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(y_norm > 0, np.sqrt(2.0 * data_out) / y_norm, np.where(data_out > 0, np.inf, 0.0))
    info = Descent(
        restart=winner,
        iterations=ran,
        relative=relative,
        status=status,
        polished=polished,
        starts=starts,
        seconds=time.perf_counter() - t0,
    )
    return z_out, loss_out, info


def _mask_weights(masks: np.ndarray | None, n_obs: int, m: int) -> np.ndarray | None:
    """(N, m) 0/1 float weights from a shared (m,) or per-observation (N, m) boolean mask."""
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.dtype != bool or masks.shape not in ((m,), (n_obs, m)):
        raise ObservationError(
            f"masks must be boolean of shape ({m},) or ({n_obs}, {m}), got {masks.dtype} {masks.shape}"
        )
    return np.broadcast_to(masks, (n_obs, m)).astype(np.float64)


def _objective(
    layers: tuple[Layer, ...],
    z: np.ndarray,
    y: np.ndarray,
    measure: np.ndarray | sp.csr_array | None,
    weights: np.ndarray | None,
    prior: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``z`` (B, k): the objective, its data part ``½‖M ⊙ (A G(z) − y)‖²``, and the
    gradient (B, k) by backpropagation. Callers silence floating-point warnings."""
    h = z
    derivatives = []
    sparse = [sp.issparse(layer.weight) for layer in layers]
    for layer, is_sparse in zip(layers, sparse):
        a = np.asarray(layer.weight @ h.T).T + layer.bias if is_sparse else h @ layer.weight.T + layer.bias
        h, d = _activate(layer, a)
        derivatives.append(d)
    out = h if measure is None else np.asarray(measure @ h.T).T
    r = out - y
    if weights is not None:
        r *= weights
    data = 0.5 * np.einsum("ij,ij->i", r, r)
    g = r if measure is None else np.asarray(measure.T @ r.T).T
    for layer, d, is_sparse in zip(reversed(layers), reversed(derivatives), reversed(sparse)):
        g = g * d
        g = np.asarray(layer.weight.T @ g.T).T if is_sparse else g @ layer.weight
    if prior:
        loss = data + 0.5 * prior * np.einsum("ij,ij->i", z, z)
        g = g + prior * z
    else:
        loss = data
    if not np.isfinite(g).all():
        g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    loss = np.where(np.isfinite(loss), loss, np.inf)
    return loss, data, g
