"""The machinery every layer-wise method shares: problem, settings, the walk from the output back to
the latent, and the clean (noise-free) layer solve of Theorem 2 / eq. (4) of [1]_.

A method supplies one function ``LayerContext -> LayerOutcome``; :func:`walk` calls it for the last
layer first, feeds each layer's input estimate to the layer below, and records a
:class:`~onnxinv.inversion.result.LayerStep` per layer. Only the last layer sees the mask.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxinv.inversion import linear
from onnxinv.inversion.result import Attempt, LayerStep, SolverStatus
from onnxinv.inversion.targets import Targets, build_targets, input_bounds, layer_residual, project
from onnxinv.layers import Generator, Layer


@dataclass(frozen=True)
class Settings:
    """Tuning knobs shared by the methods (all have working defaults).

    Attributes
    ----------
    tol : relative l2 residual ``||G(z) - x|| / ||x||`` accepted as reproducing a clean observation;
        also the relative tolerance of the exact layer checks (consistency of the active system,
        inactive inequalities, input bounds, all relative to the layer's largest target)
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


@dataclass(frozen=True, eq=False)
class Problem:
    """One observation to invert. ``x`` is (n,) float64 with unobserved entries set to 0."""

    generator: Generator
    x: np.ndarray
    mask: np.ndarray | None  # (n,) bool, True = observed; None = all observed
    noise: float | None  # None: clean

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


def accepts(problem: Problem, settings: Settings, output: np.ndarray) -> tuple[bool, float]:
    """Does ``output`` reproduce the observation? Returns (verdict, tolerance used).

    Clean: relative l2 residual ``<= tol``. Noisy: RMS residual ``<= noise_factor * noise + tol * RMS(x)``
    (the tolerance reported is that RMS bound).
    """
    rel, _, rms = residual_norms(problem, output)
    if problem.noise is None:
        return rel <= settings.tol, settings.tol
    obs = problem.observed
    rms_x = float(np.sqrt(np.mean(obs * obs))) if obs.size else 0.0
    bound = settings.noise_factor * problem.noise + settings.tol * rms_x
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

    @property
    def remaining(self) -> float:
        return max(self.deadline - time.perf_counter(), 0.0)

    @property
    def scale(self) -> float:
        """``max |y|`` over the rows that take part."""
        y = self.y if self.rows is None else self.y[self.rows]
        return float(np.max(np.abs(y))) if y.size else 0.0

    def initial_eps(self) -> float:
        """This layer's own starting ε: the relative noise level (or the default) times ``max|y|``."""
        rel = self.settings.default_eps_rtol if self.noise_rel is None else self.noise_rel
        return max(rel * self.scale, self.settings.default_eps_rtol * self.scale, 1e-12)


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
    tau = clean_threshold(ctx)
    targets = build_targets(ctx.layer, ctx.y, ctx.rows, tau, noisy=False)
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


def clean_layer(ctx: LayerContext, targets: Targets, *, objective: np.ndarray | None = None) -> LayerOutcome:
    """Theorem 2 of [1]_ with the eq. (4) LP as fallback, for exact data.

    Full column rank of the active system: least squares, then confirm the other rows and the input
    bounds; if they fail, the eq. (4) LP decides. Otherwise the layer is not identifiable here: the
    eq. (4) LP (with ``objective``, e.g. ``1ᵀu`` for basis pursuit) gives a point of the preimage and
    :func:`~onnxinv.inversion.linear.preimage_dimension` its dimension.
    """
    layer, settings = ctx.layer, ctx.settings
    n = layer.in_features
    w, b = targets.matrices(layer)
    eq = targets.equality
    n_eq = int(eq.sum())
    t_eq = targets.lower[eq] - b[eq]
    finite = np.concatenate(
        [targets.lower[np.isfinite(targets.lower)], targets.upper[np.isfinite(targets.upper)]]
    )
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    ls = None
    if n_eq >= n:
        ls = linear.solve_active(w[eq], t_eq, 1.0 / targets.lower_scale[eq])
    if ls is not None and ls.rank == n:
        # one tolerance for every layer check, consistent with the final acceptance test
        tol = settings.tol * max(scale, 1e-300)
        how = f"least squares ({ls.method}, condition ~{ls.cond:.2g}) on {n_eq} active rows"
        if ls.residual > tol:
            return LayerOutcome(
                ls.u,
                SolverStatus.INFEASIBLE,
                n_eq,
                n,
                0,
                f"{how}: the active system is inconsistent (residual {ls.residual:.3g} > {tol:.2g}), so no "
                f"input of layer {ctx.index} reproduces its output exactly; for noisy data use a noisy method",
                u_error=ls.error,
            )
        viol = inequality_violation(w, b, targets, ctx.bounds, ls.u)
        if viol <= tol:
            return LayerOutcome(
                ls.u,
                SolverStatus.OPTIMAL,
                n_eq,
                n,
                0,
                f"{how}; the other rows and input bounds hold",
                "full column rank (Theorem 2)",
                u_error=ls.error,
            )
        res = linear.layer_lp(layer, targets, ctx.bounds, time_limit=ctx.remaining)
        if res.ok and res.x is not None:
            return LayerOutcome(
                res.x,
                SolverStatus.OPTIMAL,
                n_eq,
                n,
                0,
                f"{how} violated the other rows by {viol:.3g}; the eq. (4) LP found the point",
                "full column rank (Theorem 2)",
                u_error=max(ls.error, res.violation * max(scale, 1.0)),
            )
        return LayerOutcome(
            ls.u,
            res.status,
            n_eq,
            n,
            0,
            f"{how}: the only candidate violates the other rows by {viol:.3g} (tolerance {tol:.2g}) and "
            f"the eq. (4) LP ended '{res.status.value}' ({res.message}): no input of layer {ctx.index} "
            "produces its output",
            u_error=ls.error,
        )

    rank = ls.rank if ls is not None else linear.numerical_rank(w[eq])
    res = linear.layer_lp(layer, targets, ctx.bounds, objective=objective, time_limit=ctx.remaining)
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
    tight = 1e-6 * max(scale, 1.0)
    dim = linear.preimage_dimension(layer, targets, ctx.bounds, u, tight_tol=tight, time_limit=ctx.remaining)
    what = "basis pursuit" if objective is not None else "the eq. (4) LP"
    if dim.dim == 0:
        msg = (
            f"{n_eq} active rows of rank {rank} < {n} unknowns, but {dim.implicit} tight inequalities "
            f"pin the preimage to the point {what} found"
        )
        cert = "preimage is a single point (rank with implicit equalities = n)"
    else:
        msg = (
            f"{n_eq} active rows of rank {rank} < {n} unknowns: the preimage has dimension {dim.dim}; "
            f"{what} picked one point of it"
        )
        cert = ""
    if dim.message:
        msg += f" ({dim.message})"
    return LayerOutcome(
        u, SolverStatus.OPTIMAL, n_eq, rank, dim.dim, msg, cert, u_error=res.violation * max(scale, 1.0)
    )


def inequality_violation(
    w: np.ndarray,
    b: np.ndarray,
    targets: Targets,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    u: np.ndarray,
) -> float:
    """Largest violation (absolute) of the non-equality rows and of the input bounds at ``u``."""
    pre = w @ u + b
    eq = targets.equality
    worst = 0.0
    up = np.isfinite(targets.upper) & ~eq
    if up.any():
        worst = max(worst, float(np.max(pre[up] - targets.upper[up])))
    lo = np.isfinite(targets.lower) & ~eq
    if lo.any():
        worst = max(worst, float(np.max(targets.lower[lo] - pre[lo])))
    if bounds is not None and u.size:
        worst = max(worst, float(np.max(bounds[0] - u)), float(np.max(u - bounds[1])))
    return worst
