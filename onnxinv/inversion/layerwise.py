"""The machinery every layer-wise method shares: problem, settings, the walk from the output back to
the latent, and the clean (noise-free) layer solve of Theorem 2 / eq. (4) of [1]_.

A method supplies one function ``LayerContext -> LayerOutcome``; :func:`walk` calls it for the last
layer first, feeds each layer's input estimate to the layer below, and records a
:class:`~onnxinv.inversion.result.LayerStep` per layer. Only the last layer sees the mask.

Tolerances
----------
Every check of a layer ("is the active system consistent", "do the other rows and the input bounds
hold") is made **in the layer's output space**: a row's misfit is how far ``act(a_j)`` is from
``y_j``, i.e. the pre-activation misfit times the activation's derivative (``1/s_j`` in
:mod:`onnxinv.inversion.targets`; ``y(1-y)`` for a sigmoid, ``1-y²`` for tanh). Inverting a sigmoid by
``logit`` amplifies the rounding of ``y`` by ``1/(y(1-y))``; measured on the output the same row is
as accurate as the data. The tolerance (:meth:`LayerContext.tolerance`) is

.. math::

    \\delta = \\max(\\mathrm{tol},\\, c_\\rho\\,\\rho)\\,\\max_j |y_j| \\;+\\; c_e\\, e_y

with ``ρ`` the machine epsilon of the data (:attr:`Problem.precision`: the coarser of the model's
dtype and the observations' dtype; float32 outputs are only accurate to about ``1e-7`` relative, and
onnxruntime's float32 sigmoid / tanh to about ``1.5e-7`` absolute), ``c_ρ = ROUNDING_FACTOR``, and
``e_y`` the estimated error of ``y`` when it was itself estimated by the layer above
(``c_e = ERROR_FACTOR``). A float64 model keeps ``δ = tol·max|y|``.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxinv.inversion import linear
from onnxinv.inversion.result import Attempt, LayerStep, SolverStatus
from onnxinv.inversion.targets import (
    Targets,
    build_targets,
    input_bounds,
    layer_residual,
    project,
    row_misfit,
)
from onnxinv.layers import Generator, Layer

# Relative tolerances never go below ROUNDING_FACTOR machine epsilons of the data's dtype.
ROUNDING_FACTOR = 16.0
# A layer's checks allow ERROR_FACTOR times the estimated error of an estimated output.
ERROR_FACTOR = 3.0


@dataclass(frozen=True)
class Settings:
    """Tuning knobs shared by the methods (all have working defaults).

    Attributes
    ----------
    tol : relative l2 residual ``||G(z) - x|| / ||x||`` accepted as reproducing a clean observation;
        also the relative tolerance of the exact layer checks (consistency of the active system,
        inactive inequalities, input bounds, all measured on the layer's output relative to its
        largest value; see the module's Tolerances). Never below ``ROUNDING_FACTOR`` machine epsilons
        of the data's dtype
    noise_factor : a noisy observation is reproduced when the RMS residual is at most
        ``noise_factor * noise`` (plus ``tol`` relative)
    time_limit : seconds per observation (all layers, all LPs, all attempts of ``auto``)
    alpha : growth factor of the noise threshold ε (Algorithms 1-2 of [1]_)
    max_growth : largest number of ε growth steps per layer
    active_rtol : clean active threshold ``τ = active_rtol * max|y|`` (never 0)
    default_eps_rtol : initial ε relative to ``max|y|`` when no noise level is given
    restarts, iterations, lr, adam_lr, grad_tol : gradient-descent baseline
    seed : random starts of gradient descent
    """

    tol: float = 1e-5
    noise_factor: float = 2.0
    time_limit: float = 60.0
    alpha: float = 1.2
    max_growth: int = 200
    active_rtol: float = 1e-9
    default_eps_rtol: float = 1e-6
    restarts: int = 4
    iterations: int = 1000
    lr: float = 1.0
    adam_lr: float = 0.05
    grad_tol: float = 1e-9
    seed: int = 0


def dtype_precision(dtype: str) -> float:
    """Machine epsilon of a dtype name such as ``"float32"`` (float32's for anything not a float)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = np.dtype(np.float32)
    if dt.kind != "f":
        dt = np.dtype(np.float32)
    return float(np.finfo(dt).eps)


def model_precision(generator: Generator) -> float:
    """Machine epsilon of the coarser of the model's declared input and output dtypes."""
    return max(dtype_precision(generator.input.dtype), dtype_precision(generator.output.dtype))


@dataclass(frozen=True, eq=False)
class Problem:
    """One observation to invert. ``x`` is (n,) float64 with unobserved entries set to 0.

    ``precision`` is the machine epsilon of the data: the coarser of the model's dtype and the dtype
    the observation came in (0: use the model's).
    """

    generator: Generator
    x: np.ndarray
    mask: np.ndarray | None  # (n,) bool, True = observed; None = all observed
    noise: float | None  # None: clean
    precision: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", max(float(self.precision), model_precision(self.generator)))

    @property
    def rows(self) -> np.ndarray | None:
        return None if self.mask is None else np.flatnonzero(self.mask)

    @property
    def observed(self) -> np.ndarray:
        return self.x if self.mask is None else self.x[self.mask]

    @property
    def noise_rel(self) -> float | None:
        """Noise relative to ``max|x|`` over the observed entries."""
        if self.noise is None:
            return None
        scale = float(np.max(np.abs(self.observed))) if self.observed.size else 0.0
        return self.noise / scale if scale > 0 else 0.0


@dataclass
class Draft:
    """A method's answer before the onnxruntime verification turns it into an InversionResult."""

    z: np.ndarray
    method: str
    steps: tuple[LayerStep, ...]
    message: str = ""
    attempts: tuple[Attempt, ...] = ()
    fit: float = float("nan")  # relative l2 residual of the float64 forward pass

    def with_fit(self, problem: Problem) -> Draft:
        self.fit = forward_fit(problem, self.z)
        return self


def forward_fit(problem: Problem, z: np.ndarray) -> float:
    """Relative l2 residual of the layer list's float64 forward pass on the observed entries."""
    out = problem.generator.forward(z)
    return residual_norms(problem, out)[0]


def residual_norms(problem: Problem, output: np.ndarray) -> tuple[float, float, float]:
    """(relative l2, l_inf, RMS) of ``output - x`` on the observed entries; inf when not finite."""
    if problem.mask is not None:
        output = output[problem.mask]
    obs = problem.observed
    diff = output - obs
    if not np.all(np.isfinite(diff)):
        return float("inf"), float("inf"), float("inf")
    err = float(np.linalg.norm(diff))
    scale = float(np.linalg.norm(obs))
    rel = err / scale if scale > 0 else err
    linf = float(np.max(np.abs(diff))) if diff.size else 0.0
    rms = err / math.sqrt(diff.size) if diff.size else 0.0
    return rel, linf, rms


def relative_tolerance(problem: Problem, settings: Settings) -> float:
    """``tol``, but never below ``ROUNDING_FACTOR`` machine epsilons of the data."""
    return max(settings.tol, ROUNDING_FACTOR * problem.precision)


def accepts(problem: Problem, settings: Settings, output: np.ndarray) -> tuple[bool, float]:
    """Does ``output`` reproduce the observation? Returns (verdict, tolerance used).

    Clean: relative l2 residual ``<= tol``. Noisy: RMS residual ``<= noise_factor * noise + tol * RMS(x)``
    (the tolerance reported is that RMS bound). ``tol`` here is :func:`relative_tolerance`.
    """
    rel, _, rms = residual_norms(problem, output)
    tol = relative_tolerance(problem, settings)
    if problem.noise is None:
        return rel <= tol, tol
    obs = problem.observed
    rms_x = float(np.sqrt(np.mean(obs * obs))) if obs.size else 0.0
    bound = settings.noise_factor * problem.noise + tol * rms_x
    return rms <= bound, bound


@dataclass(frozen=True, eq=False)
class LayerContext:
    """Everything one layer's solve needs."""

    index: int
    layer: Layer
    y: np.ndarray  # estimate of the layer's output (full length)
    rows: np.ndarray | None  # rows that take part (the mask, on the last layer only)
    bounds: tuple[np.ndarray, np.ndarray] | None  # bounds on the layer's input
    y_error: float  # estimated absolute error of y (clean methods)
    noise_rel: float | None
    deadline: float
    settings: Settings
    precision: float = 0.0  # machine epsilon of the data (Problem.precision)

    @property
    def remaining(self) -> float:
        return max(self.deadline - time.perf_counter(), 0.0)

    @property
    def scale(self) -> float:
        """``max |y|`` over the rows that take part."""
        y = self.y if self.rows is None else self.y[self.rows]
        return float(np.max(np.abs(y))) if y.size else 0.0

    @property
    def rtol(self) -> float:
        """The relative tolerance of this layer's checks: ``tol``, at least ``ROUNDING_FACTOR·ρ``."""
        return max(self.settings.tol, ROUNDING_FACTOR * self.precision)

    def tolerance(self) -> float:
        """``δ`` of the module's Tolerances: the largest misfit of a row, measured on the layer's output,
        that still counts as reproducing ``y``."""
        return max(self.rtol * self.scale + ERROR_FACTOR * self.y_error, 1e-300)

    def initial_eps(self) -> float:
        """This layer's own starting ε: the relative noise level (or the default) times ``max|y|``, never
        below a few roundings of the data (``4ρ·max|y|``)."""
        rel = self.settings.default_eps_rtol if self.noise_rel is None else self.noise_rel
        floor = max(self.settings.default_eps_rtol, 4.0 * self.precision)
        return max(rel * self.scale, floor * self.scale, 1e-12)


@dataclass
class LayerOutcome:
    """What a method's layer solve returns; :func:`walk` turns it into a LayerStep."""

    u: np.ndarray
    status: SolverStatus
    active_rows: int
    rank: int
    preimage_dim: int
    message: str
    certificate: str = ""
    epsilon: float | None = None
    u_error: float = 0.0
    extra: dict = field(default_factory=dict)


LayerSolver = Callable[[LayerContext], LayerOutcome]


def walk(
    problem: Problem, settings: Settings, solve_layer: LayerSolver, method: str, deadline: float
) -> Draft:
    """Invert the layers from the output back to the latent with ``solve_layer``."""
    layers = problem.generator.layers
    depth = len(layers)
    y = problem.x
    y_error = problem.noise or 0.0
    steps: list[LayerStep | None] = [None] * depth
    for i in reversed(range(depth)):
        start = time.perf_counter()
        ctx = LayerContext(
            index=i,
            layer=layers[i],
            y=y,
            rows=problem.rows if i == depth - 1 else None,
            bounds=input_bounds(layers, i),
            y_error=y_error,
            noise_rel=problem.noise_rel,
            deadline=deadline,
            settings=settings,
            precision=problem.precision,
        )
        if time.perf_counter() >= deadline:
            out = least_squares_fallback(
                ctx, SolverStatus.TIME_LIMIT, "time limit reached before this layer; least squares only"
            )
        else:
            out = solve_layer(ctx)
        u = project(np.asarray(out.u, dtype=np.float64), ctx.bounds)
        steps[i] = LayerStep(
            layer=i,
            activation=layers[i].describe_activation(),
            active_rows=out.active_rows,
            observed_rows=layers[i].out_features if ctx.rows is None else int(ctx.rows.size),
            unknowns=layers[i].in_features,
            rank=out.rank,
            preimage_dim=out.preimage_dim,
            identifiable=out.status.ok and out.preimage_dim == 0,
            status=out.status,
            residual=layer_residual(layers[i], u, y, ctx.rows),
            seconds=time.perf_counter() - start,
            message=out.message,
            certificate=out.certificate,
            epsilon=out.epsilon,
        )
        y = u
        y_error = out.u_error
    return Draft(z=y, method=method, steps=tuple(s for s in steps if s is not None)).with_fit(problem)


def least_squares_fallback(ctx: LayerContext, status: SolverStatus, message: str) -> LayerOutcome:
    """Best-effort ``u`` when a layer cannot be solved properly: least squares on the equality rows."""
    targets = clean_targets(ctx)
    w, b = targets.matrices(ctx.layer)
    eq = targets.equality
    n = ctx.layer.in_features
    if eq.any():
        u, *_ = np.linalg.lstsq(w[eq], targets.lower[eq] - b[eq], rcond=None)
        rank = linear.numerical_rank(w[eq])
    else:
        u, rank = np.zeros(n), 0
    return LayerOutcome(project(u, ctx.bounds), status, int(eq.sum()), rank, n - rank, message)


def clean_threshold(ctx: LayerContext) -> float:
    """``τ``: relative to ``max|y|`` and to the estimated error of ``y``, never 0."""
    return max(ctx.settings.active_rtol * ctx.scale, 10.0 * ctx.y_error, 1e-300)


def clean_targets(ctx: LayerContext) -> Targets:
    """The exact methods' row bounds: active threshold ``τ``; tanh / sigmoid entries within half the
    layer's tolerance ``δ`` of their range's ends are one-sided (``act(a) <= y + δ/2`` and its mirror
    image, see :mod:`onnxinv.inversion.targets`), so that they hold with room to spare in the checks."""
    return build_targets(
        ctx.layer, ctx.y, ctx.rows, clean_threshold(ctx), noisy=False, band=0.5 * ctx.tolerance()
    )


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
        ls = linear.solve_active(w[eq], t_eq, 1.0 / targets.lower_scale[eq])
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
        res = linear.layer_lp(layer, targets, ctx.bounds, slack=delta_all, time_limit=ctx.remaining)
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
    res = linear.layer_lp(layer, targets, ctx.bounds, objective=objective, time_limit=ctx.remaining)
    tight = 1e-6 * max(ctx.scale, 1.0)
    what = "basis pursuit" if objective is not None else "the eq. (4) LP"
    closest = False
    if not res.ok or res.x is None:
        # rounding can leave the exact system without a point: take the one that comes closest
        wide = linear.min_widening(layer, targets, ctx.bounds, time_limit=ctx.remaining)
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
            f"{n_eq} active rows of rank {rank} < {n} unknowns, and the eq. (4) LP ended "
            f"'{res.status.value}' ({res.message}): no point of this layer's preimage was found",
        )
    u = res.x
    dim = linear.preimage_dimension(layer, targets, ctx.bounds, u, tight_tol=tight, time_limit=ctx.remaining)
    u_error = res.violation * max(scale, 1.0)
    dimension, cert, note = dim.dim, "", dim.message
    if dim.dim == 0:
        # the point's tight constraints leave no direction; least squares on all of them gives the point
        # without leaning on the n that make the LP vertex, and confirms the pinning on the data
        pinned = linear.pinned_point(layer, targets, ctx.bounds, dim)
        worst = float("inf")
        if pinned is not None:
            u_pin = project(pinned.u, ctx.bounds)
            worst = float(np.max(row_misfit(w, b, targets, u_pin))) if targets.count else 0.0
        if pinned is not None and worst <= delta:
            u, u_error = u_pin, solution_error(ctx, pinned, n_eq + dim.implicit, n)
            cert = "preimage is a single point (rank with implicit equalities = n)"
            msg = (
                f"{n_eq} active rows of rank {rank} < {n} unknowns, but {dim.implicit} tight inequalities "
                f"pin the preimage to the point {what} found; least squares ({pinned.method}) on the "
                f"active rows and those equalities gives it within {delta:.2g} on the layer's output "
                f"(largest misfit {worst:.3g})"
            )
        elif not closest:
            cert = "preimage is a single point (rank with implicit equalities = n)"
            msg = (
                f"{n_eq} active rows of rank {rank} < {n} unknowns, but {dim.implicit} tight inequalities "
                f"pin the preimage to the point {what} found"
            )
        else:
            # at the closest point every constraint that fixes it is tight by construction; without a
            # consistent least-squares point nothing shows that the unrounded preimage is a point
            dimension = n - rank
            msg = (
                f"{n_eq} active rows of rank {rank} < {n} unknowns; {what} is fixed by {dim.implicit} tight "
                f"inequalities, but least squares on them misses the data by {worst:.3g} (tolerance "
                f"{delta:.2g}), so the preimage is not shown to be a point: its dimension is at most "
                f"{dimension}"
            )
    elif closest:
        dimension = n - rank
        msg = (
            f"{n_eq} active rows of rank {rank} < {n} unknowns: the preimage has dimension at most "
            f"{dimension}; {what} is one point of it"
        )
    else:
        msg = (
            f"{n_eq} active rows of rank {rank} < {n} unknowns: the preimage has dimension {dim.dim}; "
            f"{what} picked one point of it"
        )
    if note:
        msg += f" ({note})"
    return LayerOutcome(u, SolverStatus.OPTIMAL, n_eq, rank, dimension, msg, cert, u_error=u_error)


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
    return float(np.max(np.linalg.norm(w, axis=1) / scale))
