"""What every inversion method shares: the problem, the settings, the method record, the fit rule,
and the walk from the output back to the latent. No method knowledge lives here.

A layer-wise method supplies one function ``LayerContext -> LayerOutcome``; :func:`walk` calls it for
the last layer first, feeds each layer's input estimate to the layer below, and records a
:class:`~onnxinv.inversion.result.LayerStep` per layer. Only the last layer sees the mask.

Fit rule
--------
:func:`fit_check` decides whether an output reproduces the observation (the verdict contract's first
question, :mod:`onnxinv.inversion.verdict`): clean observations by the relative l2 residual
``||r|| / ||x|| <= tol``; bounded noise ``||e||_∞ <= ε`` by ``||r||_∞ <= ε + tol·max|x|``; Gaussian
noise of standard deviation ``σ`` by the RMS residual ``<= noise_factor·σ + tol·RMS(x)``. ``tol`` is
never below a few roundings of the data's dtype (:func:`relative_tolerance`).

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

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxinv.errors import InvalidArgumentError
from onnxinv.inversion import linear
from onnxinv.inversion.result import Attempt, LayerStep, SolverStatus
from onnxinv.inversion.targets import (
    Targets,
    build_targets,
    input_bounds,
    layer_residual,
    project,
)
from onnxinv.inversion.verdict import FitCheck
from onnxinv.layers import Generator, Layer

Measure = Any  # a dense (m, n) array or a scipy.sparse matrix

# Relative tolerances never go below ROUNDING_FACTOR machine epsilons of the data's dtype.
ROUNDING_FACTOR = 16.0
# A layer's checks allow ERROR_FACTOR times the estimated error of an estimated output.
ERROR_FACTOR = 3.0
# Share of the time limit the LPs of a sparse layer with a guessed output may take (LayerContext.lp_time).
GUESSED_LP_SHARE = 0.02


@dataclass(frozen=True)
class Settings:
    """Tuning knobs shared by the methods (all have working defaults).

    Attributes
    ----------
    tol : relative l2 residual ``||G(z) - x|| / ||x||`` accepted as reproducing a clean observation;
        also the relative tolerance of the exact layer checks (consistency of the active system,
        inactive inequalities, input bounds, all measured on the layer's output relative to its
        largest value; see :mod:`onnxinv.inversion.exact`). Never below ``ROUNDING_FACTOR`` machine
        epsilons of the data's dtype
    noise_factor : Gaussian noise: the RMS residual may be up to ``noise_factor * σ`` (plus ``tol``)
    time_limit : seconds per observation (all layers, all LPs, all attempts of ``auto``, refinement
        and the search for evidence)
    alpha : growth factor of the noise threshold ε (Algorithms 1-2 of [1]_)
    max_growth : largest number of ε growth steps per layer
    active_rtol : clean active threshold ``τ = active_rtol * max|y|`` (never 0)
    default_eps_rtol : initial ε relative to ``max|y|`` when no noise level is given
    restarts, iterations : gradient-descent baseline (random starts, iteration cap), also the random
        restarts of ``lsq``
    gd_optimizer : ``"adam"`` (step ``adam_lr``) or ``"gd"`` (plain gradient descent with the adaptive
        step starting at ``lr``, the variant of the paper's comparison)
    seed : random starts of gradient descent and of the witness search
    distance : δ of the verdict contract, relative to ``max(1, ||z||_∞)``: a witness must lie at least
        this far from ``z`` (max abs), and a certificate bounds every other preimage within it
    refine : refine an estimate that misses the observation on the whole network (the pipeline's
        refine stage)
    witness_search : look for a second preimage when ``z`` reproduces a clean observation but no
        certificate holds
    milp : use the whole-network MILP where the layer-wise argument runs out (networks of piecewise-linear
        hidden layers small enough for it): to find, certify, refute and bound
    milp_time : seconds the MILP may take per use and observation (within ``time_limit``)
    latent_box : a stated assumption ``max |z_i| <= latent_box`` on the latents: whole-network claims
        that hold only inside that box then count, and say so; None: they must hold for every latent
    """

    tol: float = 1e-5
    noise_factor: float = 2.0
    time_limit: float = 60.0
    alpha: float = 1.2
    max_growth: int = 200
    active_rtol: float = 1e-9
    default_eps_rtol: float = 1e-6
    restarts: int = 5
    iterations: int = 1000
    lr: float = 1.0
    adam_lr: float = 0.05
    gd_optimizer: str = "adam"

    def __post_init__(self) -> None:
        for name in (
            "tol",
            "noise_factor",
            "time_limit",
            "alpha",
            "active_rtol",
            "default_eps_rtol",
            "distance",
            "milp_time",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise InvalidArgumentError(f"Settings.{name} must be a positive finite number, got {value!r}")
        for name in ("max_growth", "restarts", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"Settings.{name} must be a non-negative integer, got {value!r}")
        box = self.latent_box
        if box is not None and (
            isinstance(box, bool) or not isinstance(box, (int, float)) or not (math.isfinite(box) and box > 0)
        ):
            raise InvalidArgumentError(
                f"Settings.latent_box must be a positive finite number or None, got {box!r}"
            )
        if self.gd_optimizer not in ("adam", "gd"):
            raise InvalidArgumentError(
                f"Settings.gd_optimizer must be 'adam' or 'gd', got {self.gd_optimizer!r}"
            )

    seed: int = 0
    distance: float = 1e-2
    refine: bool = True
    witness_search: bool = True
    milp: bool = True
    milp_time: float = 20.0
    latent_box: float | None = None


NOISE_MODELS = ("bounded", "gaussian")


@functools.lru_cache(maxsize=64)
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
    the observation came in (0: use the model's). ``noise_model`` is ``"bounded"`` (``||e||_∞ <=
    noise``) or ``"gaussian"`` (i.i.d. entries of standard deviation ``noise``); it is ignored for
    clean observations. With ``measure`` (``A``, shape ``(m, n)``) the observation ``x`` (m,) is of
    ``A·G(z)`` (compressed sensing; a mask is the special case of selected rows), and the mask is over
    its ``m`` entries.
    """

    generator: Generator
    x: np.ndarray
    mask: np.ndarray | None  # (m,) bool, True = observed; None = all observed
    noise: float | None  # None: clean
    precision: float = 0.0
    noise_model: str = "bounded"
    measure: Measure | None = None  # (m, n): the observation is A·G(z); None: G(z) itself

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", max(float(self.precision), model_precision(self.generator)))

    def observe(self, output: np.ndarray) -> np.ndarray:
        """What the observation sees of a model output (n,): ``A·output`` with a measurement matrix,
        else the output itself; then the observed entries."""
        seen = output if self.measure is None else np.asarray(self.measure @ output, dtype=np.float64)
        return seen if self.mask is None else seen[self.mask]

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

    @property
    def bounded(self) -> bool:
        """A noisy observation with a bound on every entry's error (the l_inf LP's model)."""
        return self.noise is not None and self.noise_model == "bounded"


@dataclass
class Draft:
    """A method's answer before the pipeline refines, verifies and judges it.

    ``fit`` is the relative l2 residual of the float64 forward pass; ``refined`` says that ``z`` came
    from the whole-network refinement of the method's estimate (``steps`` still describe how the method
    inverted each layer); ``noise_estimate`` is the noise level Algorithm 1 needed when none was given.
    """

    z: np.ndarray
    method: str
    steps: tuple[LayerStep, ...]
    message: str = ""
    attempts: tuple[Attempt, ...] = ()
    fit: float = float("nan")
    refined: bool = False
    noise_estimate: float | None = None
    latent_std: np.ndarray | None = None
    # per layer index: the Cholesky factor of the rows the solve used (the certificate's margin check
    # reuses it instead of forming a Gram matrix again); only a single observation's draft keeps them
    factors: dict[int, linear.RowsFactor] | None = None

    def with_fit(self, problem: Problem) -> Draft:
        self.fit = forward_fit(problem, self.z)
        return self


SolveFunction = Callable[["Problem", "Settings", float], Draft]
BatchSolveFunction = Callable[[Sequence["Problem"], "Settings", Sequence[float]], list[Draft]]


@dataclass(frozen=True)
class Method:
    """One inversion method, as the CLI, ``auto``, audit and the scripts see it.

    Attributes
    ----------
    name : the ``method=`` value
    solve : ``solve(problem, settings, deadline) -> Draft`` (``deadline`` a ``time.perf_counter()`` value)
    summary : one line for help texts
    noise : the observations it is made for: ``"clean"``, ``"noisy"`` or ``"any"``
    certifies : what its own steps can prove (``"layer-wise"``: Theorem 2 at every layer; ``""``:
        nothing by themselves — the pipeline's evidence stage analyses its ``z``)
    refine : whether the pipeline refines a missing estimate on the whole network
    measure : whether it can invert through a measurement matrix (``y = A·G(z)``); the layer-wise
        methods cannot start there
    solve_batch : optional ``solve_batch(problems, settings, deadlines) -> drafts`` that solves a
        chunk of observations at once (vectorised), with the same answers as ``solve`` one by one
    """

    name: str
    solve: SolveFunction
    summary: str
    noise: str = "any"
    certifies: str = ""
    refine: bool = True
    measure: bool = False
    solve_batch: BatchSolveFunction | None = None


def forward_fit(problem: Problem, z: np.ndarray) -> float:
    """Relative l2 residual of the layer list's float64 forward pass on the observed entries."""
    out = problem.generator.forward(z)
    return residual_norms(problem, out)[0]


def residual_norms(problem: Problem, output: np.ndarray) -> tuple[float, float, float]:
    """(relative l2, l_inf, RMS) of ``observe(output) - x`` on the observed entries; inf when not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        output = problem.observe(output)
    obs = problem.observed
    with np.errstate(over="ignore", invalid="ignore"):
        diff = output - obs
        if not np.all(np.isfinite(diff)):
            return float("inf"), float("inf"), float("inf")
        err = float(np.linalg.norm(diff))
    if not math.isfinite(err):
        return float("inf"), float("inf"), float("inf")
    scale = float(np.linalg.norm(obs))
    rel = err / scale if scale > 0 else err
    linf = float(np.max(np.abs(diff))) if diff.size else 0.0
    rms = err / math.sqrt(diff.size) if diff.size else 0.0
    return rel, linf, rms


def relative_tolerance(problem: Problem, settings: Settings) -> float:
    """``tol``, but never below ``ROUNDING_FACTOR`` machine epsilons of the data."""
    return max(settings.tol, ROUNDING_FACTOR * problem.precision)


def fit_check(problem: Problem, settings: Settings, output: np.ndarray) -> FitCheck:
    """Does ``output`` reproduce the observation? The module's fit rule."""
    rel, linf, rms = residual_norms(problem, output)
    tol = relative_tolerance(problem, settings)
    obs = problem.observed
    if problem.noise is None:
        return FitCheck(rel <= tol, rel, linf, rms, tol, "relative l2")
    if problem.noise_model == "gaussian":
        rms_x = float(np.sqrt(np.mean(obs * obs))) if obs.size else 0.0
        bound = settings.noise_factor * problem.noise + tol * rms_x
        return FitCheck(rms <= bound, rel, linf, rms, bound, "RMS", problem.noise, "gaussian")
    scale = float(np.max(np.abs(obs))) if obs.size else 0.0
    bound = problem.noise + tol * scale
    return FitCheck(linf <= bound, rel, linf, rms, bound, "max abs", problem.noise, "bounded")


def accepts(problem: Problem, settings: Settings, output: np.ndarray) -> bool:
    """``fit_check(...).reproduces``: the float64 test methods use before onnxruntime decides."""
    return fit_check(problem, settings, output).reproduces


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
    # y is not determined by the observation: a layer above left a preimage of dimension > 0 (or
    # failed) and y is the one point of it that layer picked
    guessed: bool = False

    @property
    def remaining(self) -> float:
        return max(self.deadline - time.perf_counter(), 0.0)

    @property
    def lp_time(self) -> float:
        """Seconds this layer's LPs may take: what is left, except for a sparse layer whose output is a
        guess (:attr:`guessed`), whose LPs get at most ``GUESSED_LP_SHARE`` of the time limit. A point
        picked in a contracting layer's preimage is almost never in the range of the layer below, and
        HiGHS is slowest at proving a large LP infeasible; the time is better left to the
        whole-network fit (measured on the digits DCGANs: 112 s for one such LP, 0.3 s for the fit)."""
        if self.guessed and self.layer.sparse:
            return min(self.remaining, GUESSED_LP_SHARE * self.settings.time_limit)
        return self.remaining

    @functools.cached_property
    def scale(self) -> float:  # computed once: the checks of a layer ask for it many times
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
    problem: Problem,
    settings: Settings,
    solve_layer: LayerSolver,
    method: str,
    deadline: float,
    *,
    top: int | None = None,
    y_top: np.ndarray | None = None,
) -> Draft:
    """Invert the layers from the output back to the latent with ``solve_layer``.

    ``top`` and ``y_top`` start the walk at layer ``top`` with output ``y_top`` instead (layers above
    are left out of the steps): used to follow another point of a hidden layer's preimage down.
    """
    layers = problem.generator.layers
    depth = len(layers)
    start_layer = depth - 1 if top is None else int(top)
    y = problem.x if y_top is None else np.asarray(y_top, dtype=np.float64)
    y_error = (problem.noise or 0.0) if y_top is None else 0.0
    steps: list[LayerStep | None] = [None] * depth
    guessed = False
    for i in reversed(range(start_layer + 1)):
        start = time.perf_counter()
        ctx = LayerContext(
            index=i,
            layer=layers[i],
            y=y,
            rows=problem.rows if i == depth - 1 and y_top is None else None,
            bounds=input_bounds(layers, i),
            y_error=y_error,
            noise_rel=problem.noise_rel,
            deadline=deadline,
            settings=settings,
            precision=problem.precision,
            guessed=guessed,
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
        guessed = guessed or out.preimage_dim > 0 or not out.status.ok
    return Draft(z=y, method=method, steps=tuple(s for s in steps if s is not None)).with_fit(problem)


def least_squares_fallback(ctx: LayerContext, status: SolverStatus, message: str) -> LayerOutcome:
    """Best-effort ``u`` when a layer cannot be solved properly: least squares on the equality rows."""
    targets = clean_targets(ctx)
    w, b = targets.matrices(ctx.layer)
    eq = targets.equality
    n = ctx.layer.in_features
    if eq.any() and ctx.layer.sparse:
        ls = linear.solve_rows(w, eq, targets.lower[eq] - b[eq])
        u, rank = ls.u, ls.rank
    elif eq.any():
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
