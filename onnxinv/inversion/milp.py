"""Exact search over the whole network: a mixed-integer program that finds, certifies, refutes and
bounds preimages (HiGHS, through :mod:`onnxinv.inversion.lp`).

Problem
-------
For a chain ``h_i = act_i(W_i h_{i-1} + b_i)``, ``h_0 = z``, an observation ``y`` of the output (or of
``A·G(z)`` with a measurement matrix ``A``) on the rows ``O`` it covers, and a latent box ``B``, the
**preimage set** is

.. math::

    P = \\{ z \\in B :\\; |G(z)_i - y_i| \\le s_i \\;\\; \\forall i \\in O \\}, \\qquad
    s_i = \\varepsilon + \\mathrm{tol}_i

(``ε`` the noise level, 0 for exact data; ``tol`` covers the rounding of the data, in the
observation's own scale). Every claim this module makes is about ``P``.

Formulation (big-M, Tjeng et al. [1]_; OMLT's ``bigm`` ReLU [2]_)
-----------------------------------------------------------------
Each hidden unit whose sign is not certain gets a column ``r = relu(a)`` and a binary ``δ``. A leaky
ReLU with slope ``c`` (one per unit) is ``h = c·a + (1 - c)·r``, so every piecewise-linear unit needs
only the ReLU constraints

.. math::

    r \\ge a,\\quad r \\ge 0,\\quad r \\le a - l(1-\\delta),\\quad r \\le u\\,\\delta,\\quad
    \\delta \\in \\{0, 1\\}

with ``l <= a <= u`` valid bounds. A unit with ``l >= 0`` is **fixed active** (``h = a``, one row
``a >= 0``), one with ``u <= 0`` **fixed inactive** (``h = c·a``, ``a <= 0``): neither gets a column or
a binary. The model is *condensed*: its only columns are ``z``, the ``r`` and the ``δ``; every
pre-activation is an affine expression of them, composed through the fixed units (:func:`_assemble`).
Few columns keep HiGHS's basis small, which makes the many LPs below cheap. The LP relaxation replaces
each open unit by its triangle ``r <= u (a - l) / (u - l)``.

The observation fixes the last layer's pattern (*ours*, section 1 of issue 11): for a monotone output
map ``f`` (identity, ReLU, leaky ReLU with ``c >= 0``, tanh, sigmoid) the set ``{a : |f(a) - y| <= s}``
is the interval ``[f⁻¹(y - s), f⁻¹(y + s)]`` (a side beyond the range of ``f`` is dropped: saturated
tanh / sigmoid pixels and ReLU zeros are one-sided; ``y + s`` below the range is "no preimage"), so the
last layer needs no binary. ``tol`` is therefore exact through ``atanh`` / ``logit``: the interval is
the exact preimage of the tolerance band, not a linearisation. With a measurement matrix (section 3)
the output layer becomes a hidden layer (binaries as above) and ``y - s <= A h_d <= y + s`` are rows; a
tanh / sigmoid output is then not piecewise linear and the engine does not apply.

Bounds (:func:`tighten`), in this order
---------------------------------------
1. **Implied by the observation** (valid for *every* latent, no box): from the last layer down, the
   bounds on a layer's pre-activations bound its input, by weighted least squares on the rows with
   two-sided bounds (``|u - P c| <= |P| w`` for every ``u`` with ``|W_E u - c| <= w``, ``P`` a weighted
   pseudo-inverse) and small LPs over the directions those rows leave free (:func:`_input_bounds`);
   input bounds become pre-activation bounds of the layer below through the inverse of its
   activation. An infeasible layer LP proves "no preimage" for every latent. The bounds on ``z`` found
   this way make the **implied box**; the box searched is ``B = assumed box ∩ implied box``.
2. **Interval arithmetic**, then **symbolic propagation** forward from ``B`` (:func:`_symbolic`: the
   pre-activations as affine forms of ``z`` and one bounded term per open unit, the zonotope
   relaxation of Singh et al. [3]_).
3. **Composed bounds** (:func:`_pattern_box`): the observed rows as ``M z + Σ F e`` through the same
   relaxation, bounding ``z`` by least squares, in rounds with step 2 while the box shrinks. Only when
   step 4 cannot run (a relaxation above ``OBBT_MAX_NNZ`` entries, or ``obbt=False``) and at most
   ``PATTERN_LP_TERMS`` units are open, the first round refines these bounds by LPs over ``(z, e)``,
   within ``PATTERN_LP_SHARE`` of the time (HiGHS can take seconds per LP on these dense rows).
4. **Optimisation-based bound tightening** (OBBT; [1]_): ``min`` / ``max a_j`` over the LP relaxation of
   the whole network *constrained by the observation*, stage by stage, the side the unit lies on at a
   point of the relaxation first (one LP proves a certain sign); skipped for units open only at the
   tolerance's scale (``OBBT_FRACTION``) and for relaxations above ``OBBT_MAX_NNZ`` entries. Then step 3
   again. An infeasible relaxation proves "no preimage in ``B``".

The LPs of steps 4 and of :meth:`MilpEngine.bound` run by **row generation** (:class:`_LazyLP`): each
over the rows nearest to binding, growing by the rows its optimum violates (checked in numpy), so the
optimum is the full LP's, and one HiGHS object carries rows and basis from one objective to the next. A
relaxation's optimum is a valid bound even before the rows are complete (fewer rows, a lower minimum).

A unit whose ``min(u, -l)`` is below ``θ = RELAX_FRACTION · min_i s_i / gain`` (``gain`` bounds how far a
unit's change moves the output: the product of the later layers' ``‖W‖_∞``) keeps its LP relaxation
instead of a binary: the relaxation is a superset of the exact set, so certificates and refutations
stay sound, and a point the relaxed model returns is re-checked (and repaired, below) like any other.

Uses
----
* :meth:`MilpEngine.find`: the start point (re-checked, repaired, walked from), the piece the bounds
  point to, the LP relaxation (+ repair), piece walks, then the feasibility MILP (objective 0).
* :meth:`MilpEngine.certify`: for every coordinate and sign, is there a ``z ∈ P`` with
  ``±(z_i - ẑ_i) >= δ``? First the box (a side within ``δ`` settles it), then the LP relaxation with a
  column bound on ``z_i`` (infeasible proves it; a point, repaired, is a witness), then the MILP. All
  proved: every latent of ``P`` is within ``δ`` of ``ẑ`` in ``l_∞``, *unique up to δ*. The first witness
  ends it: *not unique*.
* refute: :meth:`find` (or :func:`tighten`) proving ``P`` empty.
* :meth:`MilpEngine.bound`: ``min`` and ``max z_i`` over ``P`` for every ``i``, by the LP relaxation and
  the MILP (with at most ``ENUMERATE_BINARIES`` binaries: one LP per sign pattern of the binary units,
  which is the MILP with each binary fixed; :class:`_Pieces`); dual bounds are valid even when a solve
  stops at its time limit. A side counts as solved when the MILP finished, or when a re-checked latent
  comes within ``CLOSE_RTOL`` of the coordinate's width of the LP bound: that is the box's precision.

Every point a solver returns is re-checked through the layer list in float64
(:meth:`PreimageSpec.misfit`). A point that misses by a little (solver tolerances, relaxed units) is
**repaired**: with the activation pattern at that point fixed, ``G`` is affine on a polytope, and an LP
over ``z`` with the observation band shrunk to ``ε + REPAIR_FRACTION · tol`` finds a point of that piece
(the repair LP also maximises the witness's distance from ``ẑ``). A point that still misses is not
returned. The **piece walk** (:meth:`MilpEngine.walk`) is a primal heuristic of the same kind: it
descends the misfit over neighbouring pieces; it proves nothing, and finds points the MILP's
branch-and-bound takes long to reach (small latents, weak big-M bounds).

What is assumed, and what a result proves
-----------------------------------------
* Claims are about ``P``, which depends on ``s`` (the tolerance, in the observation's scale) and on
  the box. :class:`LatentBox` says which coordinates the assumed box actually cuts; when it cuts none,
  the box is implied by the observation and every claim holds for *all* latents.
* Soundness of "infeasible" rests on HiGHS's proof within its feasibility tolerances (``1e-7`` on
  rows, ``1e-6`` in the MIP), and on the bounds, which are rounded outward by ``BOUND_MARGIN``.
* "unique" means unique **up to δ** in ``l_∞``: ``P`` has a diameter of the order of ``s`` times the
  inverse Lipschitz constant of ``G``; ``δ`` must exceed it, or a witness is merely a nearby point.

References
----------
.. [1] V. Tjeng, K. Xiao, R. Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
   Programming", ICLR 2019 (MIPVerify).
.. [2] F. Ceccon et al., "OMLT: Optimization & Machine Learning Toolkit", JMLR 23, 2022.
.. [3] G. Singh, T. Gehr, M. Mirman, M. Püschel, M. Vechev, "Fast and Effective Robustness
   Certification", NeurIPS 2018 (DeepZ).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from onnxinv.errors import InvalidArgumentError, ObservationError, OnnxInvError
from onnxinv.inversion import lp
from onnxinv.inversion.result import SolverStatus
from onnxinv.layers import Activation, Layer

DEFAULT_RADIUS = 10.0
"""Half-width of the default assumed latent box ``[-R, R]^k``."""
DEFAULT_RTOL = 1e-6
"""Default tolerance relative to ``max |y|`` (never below ``ROUNDING_FACTOR`` machine epsilons)."""
ROUNDING_FACTOR = 16.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)
RELAX_FRACTION = 0.1
"""Units whose ``min(u, -l)`` is below this share of the smallest slack (over the gain to the output)
keep their LP relaxation instead of a binary."""
REPAIR_FRACTION = 0.5
"""The repair LP asks for ``|G(z) - y| <= ε + REPAIR_FRACTION · tol``: room for LP tolerances (HiGHS
struggles with the tiny feasibility tolerances a band closer to ``s`` would need)."""
BOUND_MARGIN = 1e-7
"""Bounds found by LPs are rounded outward by ``BOUND_MARGIN · (1 + |value|)``."""
OBBT_FRACTION = 1e-3
"""Units ambiguous by less than this share of their stage's typical bound get no OBBT LPs (they are
ambiguous at the scale of the tolerance, which no LP resolves)."""
WALK_STEPS = 40
"""Pieces one :meth:`MilpEngine.walk` visits at most."""
WALK_STARTS = 50
"""Starting points :meth:`MilpEngine.find` walks from at most, before the MILP."""
WALK_SHARE = 0.5
"""Share of :meth:`MilpEngine.find`'s time the walks may take before the MILP."""
PATTERN_MAX_FLOPS = 2e9
"""Largest factorisation (rows × columns²) :func:`_pattern_box` attempts."""
PATTERN_ROUNDS = 4
PATTERN_LP_SHARE = 0.25
"""Share of the remaining time :func:`_pattern_box`'s LPs may take."""
"""Rounds of composed bounds and interval arithmetic in :func:`tighten`."""
OBBT_MAX_NNZ = 400_000
"""Largest LP relaxation (rows × columns) that bound tightening by LPs is tried on."""
SYMBOLIC_MAX_ENTRIES = 5_000_000
"""Largest coefficient matrix (rows × terms) :func:`_symbolic` keeps."""
PATTERN_LP_TERMS = 300
"""Error terms up to which :func:`_pattern_box` refines its least-squares bounds by LPs."""
CLOSE_RTOL = 0.02
"""A side of :meth:`MilpEngine.bound` counts as solved when a re-checked latent comes within this share
of the coordinate's proved width of the proved bound."""
ENUMERATE_BINARIES = 3
"""Binaries up to which :meth:`MilpEngine.bound` solves the MILP as one LP per sign pattern."""
PULL_STEPS = (1.0, 1.0 - 1e-6, 1.0 - 1e-4, 1.0 - 1e-2)
"""Shares of the way from a known latent to a solver's point that :meth:`MilpEngine.bound` re-checks
as the values reached."""
MAX_UNITS = 4000
"""Hidden units above which :func:`applicability` calls a network too large for the MILP."""
MAX_NNZ = 2_000_000
"""Weight entries above which :func:`applicability` calls a network too large for the MILP."""
MAX_SPARSE_DENSE = 1 << 20
"""Entries of a sparse layer's dense copy above which :func:`applicability` calls the network too
large for the MILP (8 MB): its bound steps densify every stage, and a large sparse weight is never
densified."""

_LINEAR, _ACTIVE, _INACTIVE, _AMBIGUOUS, _RELAXED = range(5)


class MilpNotApplicable(OnnxInvError):
    """The whole-network MILP does not apply to this network or observation (a hidden tanh / sigmoid
    layer, a measurement matrix behind a tanh / sigmoid output, a network too large)."""


class Finding(str, enum.Enum):
    """What a use of the engine established (always read together with the box and the slack)."""

    FOUND = "found"  # a latent reproducing the observation, re-checked in float64
    NO_PREIMAGE = "no preimage"  # proved: no latent in the box reproduces the observation
    UNIQUE = "unique"  # proved: every latent that does is within δ of ẑ
    NOT_UNIQUE = "not unique"  # a witness at distance >= δ that reproduces the observation
    BOUNDED = "bounded"  # proved bounds on every latent that reproduces the observation
    UNDECIDED = "undecided"  # a time limit or numerical trouble: nothing is claimed


# ----------------------------------------------------------------------------------------------------
# The problem
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LatentBox:
    """The box the MILP searches, and where it comes from.

    Attributes
    ----------
    lower, upper : (k,) the box searched: the assumed box intersected with the box implied by the
        observation
    assumed_lower, assumed_upper : (k,) the box the caller assumed (default ``[-R, R]^k``)
    assumed : (k,) bool, True where the assumed box cuts the implied one on at least one side: a claim
        about such a coordinate holds only for latents inside the assumed box. All False: the box is
        implied by the observation and every claim holds for every latent.
    """

    lower: np.ndarray
    upper: np.ndarray
    assumed_lower: np.ndarray
    assumed_upper: np.ndarray
    assumed: np.ndarray

    @property
    def implied(self) -> bool:
        """True when the observation alone bounds every latent inside the assumed box."""
        return not bool(np.any(self.assumed))

    def touches(self, z: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
        """(k,) bool: ``z`` lies on a side of the box that the assumed box (not the model) sets."""
        z = np.asarray(z, dtype=np.float64)
        span = rtol * (1.0 + np.abs(self.assumed_upper - self.assumed_lower))
        low = self.assumed & (z <= self.assumed_lower + span)
        high = self.assumed & (z >= self.assumed_upper - span)
        return low | high

    def describe(self) -> str:
        """Which latents a claim covers, in words."""
        if self.implied:
            return "every latent (the observation itself bounds the latent inside the assumed box)"
        idx = np.flatnonzero(self.assumed)
        listed = ", ".join(str(i) for i in idx[:8]) + (", ..." if idx.size > 8 else "")
        lo, hi = float(np.min(self.assumed_lower)), float(np.max(self.assumed_upper))
        half = 0.5 * (self.assumed_upper - self.assumed_lower)
        centre = 0.5 * (self.assumed_upper + self.assumed_lower)
        if np.allclose(half, half[0]) and np.any(centre != 0):
            shape = f"the assumed box of half-width {float(half[0]):g} around its centre"
        else:
            shape = f"the assumed box [{lo:g}, {hi:g}]"
        if idx.size == self.lower.size:
            return f"latents inside {shape} (the observation does not bound them)"
        return (
            f"latents inside {shape} on {idx.size} of {self.lower.size} "
            f"coordinates ({listed}); the observation bounds the others"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "assumed_lower": self.assumed_lower.tolist(),
            "assumed_upper": self.assumed_upper.tolist(),
            "assumed": self.assumed.tolist(),
            "implied": self.implied,
        }


@dataclass(frozen=True, eq=False)
class _Stage:
    """One affine map + activation of the extended chain (the layers, then the measurement map)."""

    weight: np.ndarray | sp.csr_array
    bias: np.ndarray
    activation: Activation
    slopes: np.ndarray  # (n,) negative-side slope; 0 for ReLU, 1 for identity

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def piecewise(self) -> bool:
        return self.activation in (Activation.RELU, Activation.LEAKY_RELU)

    def pre(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(self.weight @ h).reshape(-1) + self.bias

    def act(self, a: np.ndarray) -> np.ndarray:
        if self.piecewise:
            return np.where(a >= 0.0, a, self.slopes * a)
        return a  # identity (tanh / sigmoid only occur on the observed stage, never applied here)

    def csr(self) -> sp.csr_array:
        return sp.csr_array(self.weight)

    def dense(self) -> np.ndarray:
        return self.weight.toarray() if sp.issparse(self.weight) else np.asarray(self.weight)  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union


@dataclass(frozen=True, eq=False)
class PreimageSpec:
    """One observation and everything the MILP needs to know about it (build with :meth:`create`).

    Attributes
    ----------
    layers : the generator's layers (weights dense or ``scipy.sparse.csr_array``)
    y : the observation as given: ``(n_out,)``, or ``(m,)`` with a measurement matrix
    mask : bool over ``y``, True = observed (None: all observed)
    measure : the measurement matrix ``A`` (``(m, n_out)``, dense or sparse), or None: then ``y``
        observes ``G(z)`` itself
    noise : ``ε``, the ``l_∞`` noise level in the observation's scale (None: exact data)
    tol : (observed,) absolute tolerance per observed row, in the observation's scale
    slack : (observed,) ``s_i = ε + tol_i``: the band ``|prediction_i - y_i| <= s_i`` that defines ``P``
    rows : (observed,) int indices of the observed entries of ``y``
    box_lower, box_upper : (k,) the assumed latent box
    precision : machine epsilon of the data the default tolerance was derived from
    """

    layers: tuple[Layer, ...]
    y: np.ndarray
    mask: np.ndarray | None
    measure: np.ndarray | sp.csr_array | None
    noise: float | None
    tol: np.ndarray
    slack: np.ndarray
    rows: np.ndarray
    box_lower: np.ndarray
    box_upper: np.ndarray
    precision: float

    @classmethod
    def create(
        cls,
        layers: Sequence[Layer],
        y: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        measure: np.ndarray | sp.spmatrix | sp.sparray | None = None,
        noise: float | None = None,
        tol: float | np.ndarray | None = None,
        rtol: float = DEFAULT_RTOL,
        precision: float = FLOAT32_EPS,
        radius: float = DEFAULT_RADIUS,
        box: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> PreimageSpec:
        """Validate and assemble a problem.

        Parameters
        ----------
        layers : the generator's layers, input side first
        y : observed values (``(n_out,)``, or ``(m,)`` with ``measure``)
        mask : bool over ``y``; False entries are ignored
        measure : ``A`` with ``y = A·G(z)``; shape ``(m, n_out)``
        noise : ``ε >= 0`` (``l_∞`` in the observation's scale); None for exact data
        tol : absolute tolerance per observed entry (scalar or one per observed entry); None:
            ``max(rtol, ROUNDING_FACTOR·precision) · max|y_observed|``
        rtol, precision : see ``tol``; ``precision`` is the machine epsilon of the data (float32's by
            default, which covers onnxruntime's float32 forward pass: measured ``<= 7`` epsilons of
            ``max|x|`` on random nets up to 20-200-500-784)
        radius : half-width of the default assumed box ``[-radius, radius]^k``
        box : ``(lower, upper)`` of the assumed box instead (finite, ``(k,)`` or scalars)

        Raises
        ------
        MilpNotApplicable
            A hidden tanh / sigmoid layer, or a measurement matrix behind a tanh / sigmoid output.
        ObservationError
            ``y``, ``mask``, ``measure``, ``noise`` or ``tol`` of the wrong shape or value.
        InvalidArgumentError
            A bad box or radius.
        """
        layers = tuple(layers)
        if not layers:
            raise InvalidArgumentError("the MILP needs at least one layer")
        for i in range(1, len(layers)):
            if layers[i].in_features != layers[i - 1].out_features:
                raise InvalidArgumentError(
                    f"layer {i} takes {layers[i].in_features} inputs but layer {i - 1} gives "
                    f"{layers[i - 1].out_features}"
                )
        reason = applicability(layers, measure, check_size=False)
        if reason is not None:
            raise MilpNotApplicable(reason)
        n_out = layers[-1].out_features
        k = layers[0].in_features
        a_meas = None
        if measure is not None:
            a_meas = (
                sp.csr_array(measure, dtype=np.float64)
                if sp.issparse(measure)
                else np.array(measure, dtype=np.float64)
            )
            if a_meas.ndim != 2 or a_meas.shape[1] != n_out:
                raise ObservationError(
                    f"the measurement matrix has shape {tuple(a_meas.shape)}; the generator gives {n_out} "
                    f"values, so it must have shape (m, {n_out}) with one row per measurement"
                )
            data = a_meas.data if sp.issparse(a_meas) else a_meas
            if not np.all(np.isfinite(data)):
                raise ObservationError("the measurement matrix has NaN or infinite entries")
        m = n_out if a_meas is None else int(a_meas.shape[0])
        yv = np.array(y, dtype=np.float64).reshape(-1)
        if yv.shape != (m,):
            what = (
                f"the measurement matrix has {m} rows" if a_meas is not None else f"the generator gives {m}"
            )
            raise ObservationError(f"the observation has {yv.size} values, but {what}")
        if mask is not None:
            mk = np.asarray(mask)
            if mk.dtype != bool or mk.shape != (m,):
                raise ObservationError(
                    f"the mask must be a bool array of shape ({m},), got {mk.dtype} {mk.shape}"
                )
            mk = mk.copy()
        else:
            mk = None
        rows = np.arange(m) if mk is None else np.flatnonzero(mk)
        if rows.size == 0:
            raise ObservationError("the mask observes no entry")
        if not np.all(np.isfinite(yv[rows])):
            raise ObservationError("the observation has NaN or infinite values on observed entries")
        if noise is not None and not (math.isfinite(float(noise)) and float(noise) >= 0.0):
            raise ObservationError(f"noise must be a finite value >= 0, got {noise}")
        y_obs = yv[rows]
        scale = float(np.max(np.abs(y_obs))) or 1.0
        if tol is None:
            tv = np.full(rows.size, max(float(rtol), ROUNDING_FACTOR * float(precision)) * scale)
        else:
            tv = np.broadcast_to(np.asarray(tol, dtype=np.float64), (rows.size,)).copy()
            if not np.all(np.isfinite(tv)) or np.any(tv < 0):
                raise ObservationError("tol must be finite and >= 0 (one value, or one per observed entry)")
        slack = tv + (0.0 if noise is None else float(noise))
        if np.any(slack <= 0.0):
            raise ObservationError("the tolerance band is empty (tol = 0 and no noise): use a tol > 0")
        if box is None:
            if not (math.isfinite(radius) and radius > 0):
                raise InvalidArgumentError(f"radius must be finite and > 0, got {radius}")
            lo, hi = np.full(k, -float(radius)), np.full(k, float(radius))
        else:
            lo = np.broadcast_to(np.asarray(box[0], dtype=np.float64), (k,)).copy()
            hi = np.broadcast_to(np.asarray(box[1], dtype=np.float64), (k,)).copy()
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)):
                raise InvalidArgumentError(
                    "the latent box must be finite with lower <= upper on every coordinate (big-M needs "
                    "finite bounds)"
                )
        for arr in (yv, tv, slack, rows, lo, hi):
            arr.setflags(write=False)
        return cls(
            layers=layers,
            y=yv,
            mask=mk,
            measure=a_meas,
            noise=None if noise is None else float(noise),
            tol=tv,
            slack=slack,
            rows=rows,
            box_lower=lo,
            box_upper=hi,
            precision=float(precision),
        )

    @property
    def latent_dim(self) -> int:
        return self.layers[0].in_features

    @property
    def observed(self) -> np.ndarray:
        """The observed values ``y[rows]``."""
        return self.y[self.rows]

    def predict(self, z: np.ndarray) -> np.ndarray:
        """The observed entries of ``G(z)`` (or of ``A·G(z)``), float64 through the layer list."""
        h = np.asarray(z, dtype=np.float64).reshape(-1)
        for layer in self.layers:
            h = layer.forward(h)
        if self.measure is not None:
            h = np.asarray(self.measure @ h).reshape(-1)
        return h[self.rows]

    def misfit(self, z: np.ndarray) -> float:
        """``max_i |prediction_i - y_i| / s_i`` over the observed rows: ``<= 1`` means ``z ∈ P`` (apart
        from the box); inf when not finite."""
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        if z.shape != (self.latent_dim,) or not np.all(np.isfinite(z)):
            return float("inf")
        diff = np.abs(self.predict(z) - self.observed)
        if not np.all(np.isfinite(diff)):
            return float("inf")
        return float(np.max(diff / self.slack))

    def residual_linf(self, z: np.ndarray) -> float:
        """``max_i |prediction_i - y_i|`` over the observed rows."""
        return float(np.max(np.abs(self.predict(z) - self.observed)))

    def stages(self) -> tuple[tuple[_Stage, ...], bool]:
        """The chain the MILP models and whether the last stage's pattern is fixed by the data.

        Without a measurement matrix and with a monotone output map, the last stage is the output layer
        restricted to the observed rows; otherwise the output layer is a hidden stage and a linear
        stage (``A`` or the identity, on the observed rows) carries the observation.
        """
        out = []
        for layer in self.layers:
            out.append(_stage_of(layer))
        last = self.layers[-1]
        monotone = last.activation in (Activation.IDENTITY, Activation.TANH, Activation.SIGMOID) or (
            last.activation in (Activation.RELU, Activation.LEAKY_RELU) and bool(np.all(last.slopes() >= 0.0))
        )
        if self.measure is None and monotone:
            st = out[-1]
            w = st.weight[self.rows]
            out[-1] = _Stage(w, st.bias[self.rows], st.activation, st.slopes[self.rows])
            return tuple(out), True
        if self.measure is None:
            meas = sp.csr_array(sp.eye_array(last.out_features, format="csr")[self.rows])
        else:
            meas = self.measure[self.rows]
        out.append(_Stage(meas, np.zeros(self.rows.size), Activation.IDENTITY, np.ones(self.rows.size)))
        return tuple(out), False


def _stage_of(layer: Layer) -> _Stage:
    act = layer.activation
    if act is Activation.RELU:
        slopes = np.zeros(layer.out_features)
    elif act is Activation.LEAKY_RELU:
        slopes = np.asarray(layer.slopes(), dtype=np.float64)
    else:
        slopes = np.ones(layer.out_features)
    weight = layer.weight if sp.issparse(layer.weight) else np.asarray(layer.weight)
    return _Stage(weight, np.asarray(layer.bias), act, slopes)


def applicability(
    layers: Sequence[Layer],
    measure: object | None = None,
    *,
    check_size: bool = True,
    max_units: int = MAX_UNITS,
    max_nnz: int = MAX_NNZ,
) -> str | None:
    """Why the whole-network MILP does not apply to ``layers`` (None: it applies).

    Hidden layers must be piecewise linear (ReLU, leaky ReLU / PReLU, identity); the output layer may
    also be tanh / sigmoid, but not behind a measurement matrix. With ``check_size`` a network with
    more than ``max_units`` hidden units or ``max_nnz`` weight entries is called too large (the sizes
    where the MILP stops being practical; see ``scripts/bench_milp.py``).
    """
    layers = tuple(layers)
    smooth = (Activation.TANH, Activation.SIGMOID)
    for i, layer in enumerate(layers[:-1]):
        if layer.activation in smooth:
            return (
                f"hidden layer {i} has a {layer.activation.value} activation, which is not piecewise "
                "linear: the MILP models ReLU, leaky ReLU / PReLU and identity hidden layers only"
            )
    if measure is not None and layers and layers[-1].activation in smooth:
        return (
            f"the output layer has a {layers[-1].activation.value} activation and the observation is a "
            "measurement A·G(z): A mixes outputs, so the tanh / sigmoid can no longer be inverted per "
            "entry and the MILP does not apply"
        )
    if check_size:
        for i, layer in enumerate(layers):
            entries = layer.out_features * layer.in_features
            if layer.sparse and entries > MAX_SPARSE_DENSE:
                # the bound steps work on dense copies of each stage (pseudo-inverses, composed maps)
                return (
                    f"layer {i} is a sparse {layer.out_features}x{layer.in_features} map ({layer.nnz} stored "
                    f"entries): too large for the MILP, whose bound tightening works on a dense copy of "
                    f"every layer ({entries} entries; the limit for a sparse layer is {MAX_SPARSE_DENSE})"
                )
        units = sum(layer.out_features for layer in layers[:-1])
        nnz = sum(layer.nnz for layer in layers)
        if units > max_units or nnz > max_nnz:
            return (
                f"the network has {units} hidden units and {nnz} weight entries; the MILP is limited to "
                f"{max_units} units and {max_nnz} entries (beyond that its bound tightening alone takes "
                "minutes)"
            )
    return None


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StageBounds:
    """Pre-activation bounds of one stage after tightening.

    ``lower``/``upper`` are valid for every latent of the preimage set inside the box; ``state`` per
    unit: 0 linear (identity), 1 fixed active, 2 fixed inactive, 3 ambiguous (a binary), 4 relaxed
    (LP relaxation kept, see the module docstring).
    """

    lower: np.ndarray
    upper: np.ndarray
    state: np.ndarray

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.state == state))


@dataclass(frozen=True, eq=False)
class Tightening:
    """What :func:`tighten` established.

    Attributes
    ----------
    status : ``OPTIMAL`` tightening finished; ``INFEASIBLE`` "no preimage" is proved (see
        ``proved_by`` and ``global_claim``); ``TIME_LIMIT`` it stopped early (every bound is still
        valid, only looser)
    proved_by : for ``INFEASIBLE``: ``"observation"`` (a value outside the output map's range),
        ``"layer LP"`` (a layer's LP over the bounds the observation implies), ``"interval
        arithmetic"`` (from the box), ``"LP relaxation"`` (the whole network's, in the box)
    global_claim : the infeasibility (or, for a feasible problem, the box) holds for every latent, not
        only inside the assumed box
    box : the latent box searched (:class:`LatentBox`)
    implied_lower, implied_upper : (k,) bounds on z that the observation alone implies (``±inf``
        where it implies none)
    stages : per stage of the chain, :class:`StageBounds`; the last one is the observed stage
    fixed_active, fixed_inactive, binaries, relaxed : counts over the hidden units
    lps : LPs solved
    seconds : wall time
    message : one sentence
    """

    status: SolverStatus
    proved_by: str
    global_claim: bool
    box: LatentBox
    implied_lower: np.ndarray
    implied_upper: np.ndarray
    stages: tuple[StageBounds, ...]
    fixed_active: int
    fixed_inactive: int
    binaries: int
    relaxed: int
    lps: int
    seconds: float
    message: str

    @property
    def infeasible(self) -> bool:
        return self.status is SolverStatus.INFEASIBLE


@dataclass(frozen=True, eq=False)
class FindResult:
    """Outcome of :meth:`MilpEngine.find`.

    Attributes
    ----------
    finding : ``FOUND``, ``NO_PREIMAGE`` or ``UNDECIDED``
    status : the deciding solve's status (``OPTIMAL`` for a found point, ``INFEASIBLE`` for a proof)
    z : (k,) the latent found, re-checked (``misfit <= 1``); None otherwise
    misfit : ``max_i |G(z)_i - y_i| / s_i`` of ``z`` (nan without a point)
    residual_linf : ``max_i |G(z)_i - y_i|`` of ``z`` (nan without a point)
    proved_by : which step decided: ``"start point"``, ``"pattern LP"`` (the repair LP on one piece),
        ``"piece walk"``, ``"LP relaxation"`` / ``"MILP"`` (``+ repair`` when its point was repaired),
        or for ``NO_PREIMAGE`` one of :attr:`Tightening.proved_by`, ``"LP relaxation"`` or ``"MILP"``
    global_claim : for ``NO_PREIMAGE``: it holds for every latent, not only inside the box
    box : the box searched
    nodes, seconds, binaries : branch-and-bound nodes, wall time (this call), binaries in the model
    message : one sentence
    """

    finding: Finding
    status: SolverStatus
    z: np.ndarray | None
    misfit: float
    residual_linf: float
    proved_by: str
    global_claim: bool
    box: LatentBox
    nodes: int
    seconds: float
    binaries: int
    message: str


@dataclass(frozen=True, eq=False)
class CertifyResult:
    """Outcome of :meth:`MilpEngine.certify`.

    Attributes
    ----------
    finding : ``UNIQUE`` (every direction proved), ``NOT_UNIQUE`` (a witness), ``NO_PREIMAGE`` or
        ``UNDECIDED``
    status : ``OPTIMAL`` when the finding is decided, else the status that stopped it
    z_hat, delta : the latent certified and the radius (``l_∞``)
    witness : (k,) a latent with ``misfit <= 1`` and ``‖witness - z_hat‖_∞ >= delta`` (None otherwise)
    witness_distance : ``‖witness - z_hat‖_∞`` (nan without a witness)
    witness_misfit : its misfit (nan without a witness)
    witness_on_box : the witness touches a side of the box that the assumed box sets (then it shows
        "not unique within the box"; it still reproduces the data)
    certified : (k, 2) bool; ``[i, 0]``: no latent of the set has ``z_i <= ẑ_i - δ``, ``[i, 1]``: none
        has ``z_i >= ẑ_i + δ``
    how : (k, 2) str per direction: ``"box"`` (the tightened box already excludes it), ``"LP
        relaxation"`` or ``"MILP"`` (proved infeasible), ``"witness"``, ``"time limit"``, ``"not tried"``
        (stopped at the first witness), or ``"<model>: <why>"`` for an undecided direction
    global_claim : ``UNIQUE`` / ``NO_PREIMAGE`` hold for every latent, not only inside the box
    box : the box searched
    nodes, seconds, solves : totals over the MILPs of this call
    message : one sentence
    """

    finding: Finding
    status: SolverStatus
    z_hat: np.ndarray
    delta: float
    witness: np.ndarray | None
    witness_distance: float
    witness_misfit: float
    witness_on_box: bool
    certified: np.ndarray
    how: np.ndarray
    global_claim: bool
    box: LatentBox
    nodes: int
    seconds: float
    solves: int
    message: str

    @property
    def undecided(self) -> list[tuple[int, int]]:
        """``(coordinate, sign)`` pairs neither certified nor refuted by a witness (sign -1 or +1)."""
        out = []
        for i in range(self.certified.shape[0]):
            for col, sign in ((0, -1), (1, 1)):
                if not self.certified[i, col] and self.how[i, col] != "witness":
                    out.append((i, sign))
        return out


@dataclass(frozen=True, eq=False)
class BoundResult:
    """Outcome of :meth:`MilpEngine.bound`.

    Attributes
    ----------
    finding : ``BOUNDED`` (every bound proved, possibly loose where a solve stopped early: see
        ``exact``), ``NO_PREIMAGE`` or ``UNDECIDED`` (the time ran out before every coordinate had a
        proved bound tighter than the box)
    status : ``OPTIMAL`` when every MILP finished, ``TIME_LIMIT`` when one stopped, ``INFEASIBLE`` for
        no preimage
    lower, upper : (k,) proved bounds: every latent of the set lies in ``[lower, upper]`` (the MILPs'
        dual bounds rounded outward; the box where nothing better was proved)
    lower_reached, upper_reached : (k,) ``z_i`` of re-checked latents of the set (nan where none was
        found); the true extremes lie between these and the proved bounds
    exact : (k, 2) bool, that side is solved: the MILP finished within its gap, or the LP relaxation's
        bound is within ``CLOSE_RTOL`` of the width of a re-checked latent
    at_box : (k, 2) bool, the proved bound is a side of the assumed box: a property of the box, not of
        the model
    slack : (observed,) the band ``s`` the set is defined with
    global_claim : the bounds hold for every latent, not only inside the box
    box : the box searched
    nodes, seconds, solves : totals
    message : one sentence
    """

    finding: Finding
    status: SolverStatus
    lower: np.ndarray
    upper: np.ndarray
    lower_reached: np.ndarray
    upper_reached: np.ndarray
    exact: np.ndarray
    at_box: np.ndarray
    slack: np.ndarray
    global_claim: bool
    box: LatentBox
    nodes: int
    seconds: float
    solves: int
    message: str

    def radius(self, z_hat: np.ndarray) -> float:
        """The ``l_∞`` radius ``r`` with every latent of the set inside ``‖z' - z_hat‖_∞ <= r``."""
        z = np.asarray(z_hat, dtype=np.float64).reshape(-1)
        return float(np.max(np.maximum(z - self.lower, self.upper - z)))


# ----------------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------------


def _outward(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(lo), lo - BOUND_MARGIN * (1.0 + np.abs(lo)), lo)
        hi = np.where(np.isfinite(hi), hi + BOUND_MARGIN * (1.0 + np.abs(hi)), hi)
    return lo, hi


def _observed_interval(
    stage: _Stage, y: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[lo, hi]`` with ``{a : |act(a) - y| <= s} = [lo, hi]`` per row, and a bool mask of rows where the
    set is empty (``y`` too far outside the activation's range)."""
    act = stage.activation
    dn, up = y - s, y + s
    inf = np.full_like(y, np.inf)
    if act is Activation.IDENTITY:
        return dn, up, np.zeros(y.shape, dtype=bool)
    if act in (Activation.RELU, Activation.LEAKY_RELU):
        c = stage.slopes
        leaky = c > 0.0

        def inverse(v: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(v >= 0.0, v, np.where(leaky, v / np.where(leaky, c, 1.0), -np.inf))

        lo = np.where(leaky | (dn > 0.0), inverse(dn), -inf)
        hi = inverse(up)
        empty = ~leaky & (up < 0.0)
        return lo, np.where(empty, -inf, hi), empty
    # tanh / sigmoid: open ranges
    low_end, high_end = (-1.0, 1.0) if act is Activation.TANH else (0.0, 1.0)

    def f(v: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            if act is Activation.TANH:
                return np.arctanh(v)
            return np.log(v) - np.log1p(-v)

    has_lo = dn > low_end
    has_hi = up < high_end
    lo = np.where(has_lo, f(np.where(has_lo, dn, 0.5 * (low_end + high_end))), -inf)
    hi = np.where(has_hi, f(np.where(has_hi, up, 0.5 * (low_end + high_end))), inf)
    empty = (up <= low_end) | (dn >= high_end)
    return lo, hi, empty


def _input_domain(stages: Sequence[_Stage], s: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the input of stage ``s`` from the activation that produced it (free for z)."""
    n = stages[s].n_in
    if s == 0:
        return np.full(n, -np.inf), np.full(n, np.inf)
    prev = stages[s - 1]
    if prev.piecewise:
        # relu(a) >= 0, and c·a >= 0 for a < 0 when c <= 0
        nonneg = prev.slopes <= 0.0
        return np.where(nonneg, 0.0, -np.inf), np.full(n, np.inf)
    return np.full(n, -np.inf), np.full(n, np.inf)


def _pre_from_output(stage: _Stage, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on a stage's pre-activation from bounds ``[lo, hi]`` on its output (inverse image)."""
    if not stage.piecewise:
        return lo.copy(), hi.copy()
    c = stage.slopes
    pos = c > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(pos, c, 1.0)
        # c > 0: act is increasing with inverse v (v >= 0), v / c (v < 0)
        lo_pos = np.where(lo >= 0.0, lo, lo / safe)
        hi_pos = np.where(hi >= 0.0, hi, hi / safe)
        # c == 0: act(a) = max(a, 0): output > 0 pins a; otherwise only a <= hi
        lo_zero = np.where(lo > 0.0, lo, -np.inf)
        # c < 0: act(a) >= 0 with a = v or a = v / c: a in [hi / c, hi]
        neg_safe = np.where(c < 0.0, c, -1.0)
        lo_neg = np.where(lo > 0.0, np.minimum(lo, hi / neg_safe), hi / neg_safe)
    new_lo = np.where(pos, lo_pos, np.where(c == 0.0, lo_zero, lo_neg))
    new_hi = np.where(pos, hi_pos, hi)
    return new_lo, new_hi


def _forward(stage: _Stage, h_lo: np.ndarray, h_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval arithmetic: bounds on ``W h + b`` for ``h`` in the box."""
    mid = 0.5 * (h_lo + h_hi)
    rad = 0.5 * (h_hi - h_lo)
    w = stage.weight
    absw = abs(w) if sp.issparse(w) else np.abs(w)
    centre = np.asarray(w @ mid).reshape(-1) + stage.bias
    spread = np.asarray(absw @ rad).reshape(-1)
    # interval arithmetic in floating point: a few roundings of the largest term
    fuzz = 1e-12 * (np.asarray(absw @ np.abs(mid)).reshape(-1) + spread + np.abs(stage.bias) + 1.0)
    return centre - spread - fuzz, centre + spread + fuzz


def _act_range(stage: _Stage, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Range of the stage's activation over ``[lo, hi]`` (piecewise linear with its kink at 0)."""
    if not stage.piecewise:
        return lo.copy(), hi.copy()
    a1, a2 = stage.act(lo), stage.act(hi)
    low = np.minimum(a1, a2)
    high = np.maximum(a1, a2)
    straddle = (lo < 0.0) & (hi > 0.0)
    return np.where(straddle, np.minimum(low, 0.0), low), np.where(straddle, np.maximum(high, 0.0), high)


@dataclass
class _Bounds:
    """Working bounds on every stage's pre-activation (mutable during tightening)."""

    lo: list[np.ndarray]
    hi: list[np.ndarray]
    state: list[np.ndarray]
    lps: int = 0


def _input_bounds(
    stage: _Stage,
    a_lo: np.ndarray,
    a_hi: np.ndarray,
    dom: tuple[np.ndarray, np.ndarray],
    deadline: float,
    counter: _Bounds,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bounds on the input ``u`` of ``stage`` from ``a_lo <= W u + b <= a_hi`` and ``u ∈ dom``, valid for
    every such ``u``; the flag is True when these constraints are proved infeasible.

    Split ``u = u_c + P e + N t`` with ``E`` the rows bounded on both sides, ``P = (D W_E)⁺ D`` with
    ``D = diag(1 / w_E)`` (singular values below ``1e-9`` of the largest dropped), ``N`` an orthonormal basis of the rest, ``u_c = P(mid_E -
    b_E)`` and ``|e| <= w_E`` the rows' half-widths (exact: ``P W_E + N Nᵀ = I``). Then ``|P e| <= |P| w_E``
    and ``t`` ranges over a polytope of dimension ``n - rank`` cut out by the other rows and ``dom``,
    each widened by what ``P e`` can contribute. With few free directions (``2 (n - rank) <= n``) ``t`` is
    bounded by a box (two LPs per direction) and ``N t`` by interval arithmetic; otherwise one LP per
    bound of ``N_j t``. No LP at all when ``W_E`` has full column rank.
    """
    n = stage.n_in
    u_lo, u_hi = dom[0].copy(), dom[1].copy()
    rows = np.flatnonzero(np.isfinite(a_lo) | np.isfinite(a_hi))
    if rows.size == 0:
        return u_lo, u_hi, False
    two = np.flatnonzero(np.isfinite(a_lo) & np.isfinite(a_hi))
    one = np.setdiff1d(rows, two)
    if two.size:
        w_e = stage.dense()[two]
        half = 0.5 * (a_hi[two] - a_lo[two])
        # rows weighted by 1 / half-width (any weighting is valid; this one keeps loose rows from
        # spoiling tight ones): P = (D W_E)⁺ D with D = diag(1 / half)
        weight = 1.0 / np.maximum(half, 1e-300 + 1e-12 * float(np.max(half)))
        try:
            # the whole of V for the null space; U only as far as the rank (thin when rows >= columns)
            uu, sv, vt = np.linalg.svd(w_e * weight[:, None], full_matrices=bool(two.size < n))
        except np.linalg.LinAlgError:
            return u_lo, u_hi, False
        rank = int(np.count_nonzero(sv > 1e-9 * sv[0])) if sv.size and sv[0] > 0 else 0
        pinv = ((vt[:rank].T / sv[:rank]) @ uu[:, :rank].T) * weight[None, :]
        null = vt[rank:].T  # (n, n - rank)
        centre = pinv @ (0.5 * (a_lo[two] + a_hi[two]) - stage.bias[two])
        spread = np.abs(pinv) @ half
        # floating error of the split u = P W_E u + N Nᵀ u, generously
        split = pinv @ w_e + null @ null.T - np.eye(n)
        err = float(np.max(np.abs(split))) if split.size else 0.0
        fuzz = (1e-12 + 10.0 * err) * (1.0 + np.abs(centre) + spread)
        spread = spread + fuzz
    else:
        rank, pinv, null = 0, np.zeros((n, 0)), np.eye(n)
        centre, spread = np.zeros(n), np.zeros(n)
    if rank == n:
        return np.maximum(u_lo, centre - spread), np.minimum(u_hi, centre + spread), False
    # the polytope of t: the one-sided rows and the domain, widened by what P e may contribute
    free_dim = n - rank
    blocks, lows, highs = [], [], []
    if one.size:
        w_f = stage.dense()[one]
        base = w_f @ centre + stage.bias[one]
        slack = np.abs(w_f) @ spread if two.size else np.zeros(one.size)
        blocks.append(w_f @ null)
        lows.append(a_lo[one] - base - slack)
        highs.append(a_hi[one] - base + slack)
    finite_dom = np.flatnonzero(np.isfinite(u_lo) | np.isfinite(u_hi))
    if finite_dom.size:
        blocks.append(null[finite_dom])
        lows.append(u_lo[finite_dom] - centre[finite_dom] - spread[finite_dom])
        highs.append(u_hi[finite_dom] - centre[finite_dom] + spread[finite_dom])
    if not blocks:
        return u_lo, u_hi, False
    program = lp.MixedIntegerProgram.build(
        np.zeros(free_dim), np.vstack(blocks), np.concatenate(lows), np.concatenate(highs)
    )
    session = lp.MilpSession(program)
    first = session.solve(time_limit=max(deadline - time.perf_counter(), 0.0))
    counter.lps += 1
    if first.status is SolverStatus.INFEASIBLE:
        return u_lo, u_hi, True
    if first.status is not SolverStatus.OPTIMAL:
        return u_lo, u_hi, False
    if 2 * free_dim <= n:
        # few free directions: bound t by a box (2 (n - rank) LPs), then N_j t by interval arithmetic
        t_lo, t_hi = np.full(free_dim, -np.inf), np.full(free_dim, np.inf)
        for j in range(free_dim):
            for sign in (1.0, -1.0):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return u_lo, u_hi, False
                session.set_objective({j: sign})
                res = session.solve(time_limit=remaining)
                counter.lps += 1
                if res.status is not SolverStatus.OPTIMAL:
                    continue
                value = sign * res.objective
                lo_v, hi_v = _outward(np.array([value]), np.array([value]))
                if sign > 0:
                    t_lo[j] = float(lo_v[0])
                else:
                    t_hi[j] = float(hi_v[0])
        if np.all(np.isfinite(t_lo)) and np.all(np.isfinite(t_hi)):
            mid_t, rad_t = 0.5 * (t_lo + t_hi), 0.5 * (t_hi - t_lo)
            c_t = null @ mid_t
            r_t = np.abs(null) @ rad_t
            u_lo = np.maximum(u_lo, centre + c_t - r_t - spread)
            u_hi = np.minimum(u_hi, centre + c_t + r_t + spread)
        return u_lo, u_hi, False
    for j in range(n):
        direction = null[j]
        if not np.any(direction):
            continue
        for sign in (1.0, -1.0):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return u_lo, u_hi, False
            session.set_objective(sign * direction)
            res = session.solve(time_limit=remaining)
            counter.lps += 1
            if res.status is not SolverStatus.OPTIMAL:
                continue  # unbounded (or stopped): no bound from this side
            value = sign * res.objective
            lo_v, hi_v = _outward(np.array([value]), np.array([value]))
            if sign > 0:
                u_lo[j] = max(u_lo[j], centre[j] - spread[j] + float(lo_v[0]))
            else:
                u_hi[j] = min(u_hi[j], centre[j] + spread[j] + float(hi_v[0]))
    # coordinates the null space does not reach are fixed by the two-sided rows alone
    pinned = ~np.any(null, axis=1)
    u_lo = np.where(pinned, np.maximum(u_lo, centre - spread), u_lo)
    u_hi = np.where(pinned, np.minimum(u_hi, centre + spread), u_hi)
    return u_lo, u_hi, False


def _gains(stages: Sequence[_Stage]) -> np.ndarray:
    """``gain[s]``: how much a unit change of stage ``s``'s output can move the last stage's
    pre-activation in ``l_∞`` (product of the later stages' ``‖W‖_∞`` times their largest slope)."""
    gains = np.ones(len(stages))
    g = 1.0
    for s in range(len(stages) - 1, 0, -1):
        w = stages[s].weight
        absw = abs(w) if sp.issparse(w) else np.abs(w)
        norm = float(np.max(np.asarray(absw.sum(axis=1)).reshape(-1))) if stages[s].n else 0.0
        g *= max(norm, 1e-300)
        prev = stages[s - 1]
        slope = max(1.0, float(np.max(np.abs(prev.slopes)))) if prev.piecewise else 1.0
        gains[s - 1] = g * slope
    return gains


def _classify(stage: _Stage, lo: np.ndarray, hi: np.ndarray, theta: float) -> np.ndarray:
    if not stage.piecewise:
        return np.full(lo.shape, _LINEAR, dtype=np.int8)
    state = np.full(lo.shape, _AMBIGUOUS, dtype=np.int8)
    state[np.minimum(hi, -lo) <= theta] = _RELAXED
    state[lo >= 0.0] = _ACTIVE
    state[hi <= 0.0] = _INACTIVE
    return state


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where each variable and row of an assembled model lives.

    Columns: ``z`` (``k``), then one ``r`` per unit with an r column (stage order), then the binaries.
    ``expr[s] = (A_s, c_s)``: stage ``s``'s pre-activations are ``A_s x + c_s`` (dense, over all columns).
    """

    k: int
    r_units: list[np.ndarray]  # per stage, units with an r column
    r_cols: list[np.ndarray]
    d_cols: list[np.ndarray]  # per stage, aligned with r_units (-1: no binary)
    expr: list[tuple[np.ndarray, np.ndarray]]
    num_cols: int = 0


def _assemble(
    stages: Sequence[_Stage],
    bounds: _Bounds,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    obs: tuple[np.ndarray, np.ndarray],
    *,
    milp: bool,
) -> tuple[lp.MixedIntegerProgram, _Layout]:
    """The big-M model (``milp``) or its LP relaxation (every ambiguous unit as its triangle), condensed.

    Only ``z``, the ``r`` of units whose sign is open and their binaries are columns; every
    pre-activation is an affine expression of them, composed through the fixed units (``h = a`` active,
    ``h = c a`` inactive, ``h = c a + (1 - c) r`` open). Rows per unit: a fixed unit's sign (``a >= 0`` or
    ``a <= 0``); an open unit's ``a - r <= 0`` and either the big-M pair ``r - a - l δ <= -l``,
    ``r - u δ <= 0`` (binary) or the triangle ``r - σ a <= -σ l``, ``σ = u / (u - l)``; the observed
    stage's ``lo <= a <= hi``. Few columns keep HiGHS's basis small, which is what makes the many LPs of
    tightening and certification cheap; the rows are dense but assembled as a sparse matrix.
    """
    k = stages[0].n_in
    last = len(stages) - 1
    r_units, r_cols, d_cols = [], [], []
    col = k
    for s, st in enumerate(stages):
        if s < last and st.piecewise:
            units = np.flatnonzero((bounds.state[s] == _AMBIGUOUS) | (bounds.state[s] == _RELAXED))
        else:
            units = np.zeros(0, dtype=np.intp)
        r_units.append(units)
        r_cols.append(np.arange(col, col + units.size))
        col += units.size
    for s in range(len(stages)):
        units = r_units[s]
        binary = (bounds.state[s][units] == _AMBIGUOUS) if milp else np.zeros(units.size, dtype=bool)
        d = np.full(units.size, -1, dtype=np.intp)
        d[binary] = np.arange(col, col + int(binary.sum()))
        col += int(binary.sum())
        d_cols.append(d)
    n = col
    lower = np.full(n, -np.inf)
    upper = np.full(n, np.inf)
    integer = np.zeros(n, dtype=bool)
    lower[:k], upper[:k] = box_lo, box_hi
    blocks: list[np.ndarray] = []
    row_lo: list[np.ndarray] = []
    row_hi: list[np.ndarray] = []
    expr = []
    h_mat = np.zeros((k, n))
    h_mat[:, :k] = np.eye(k)
    h_off = np.zeros(k)
    for s, st in enumerate(stages):
        a_mat = np.asarray(st.weight @ h_mat)
        a_off = np.asarray(st.weight @ h_off).reshape(-1) + st.bias
        expr.append((a_mat, a_off))
        lo_s, hi_s = bounds.lo[s], bounds.hi[s]
        if s == last:
            lo_s, hi_s = np.maximum(lo_s, obs[0]), np.minimum(hi_s, obs[1])
            keep = np.isfinite(lo_s) | np.isfinite(hi_s)
            blocks.append(a_mat[keep])
            row_lo.append(lo_s[keep] - a_off[keep])
            row_hi.append(hi_s[keep] - a_off[keep])
            break
        if not st.piecewise:
            h_mat, h_off = a_mat, a_off
            continue
        state = bounds.state[s]
        act = np.flatnonzero(state == _ACTIVE)
        ina = np.flatnonzero(state == _INACTIVE)
        # a fixed unit keeps its sign: -a <= 0 (active), a <= 0 (inactive)
        blocks += [-a_mat[act], a_mat[ina]]
        row_lo += [np.full(act.size, -np.inf), np.full(ina.size, -np.inf)]
        row_hi += [a_off[act], -a_off[ina]]
        c = st.slopes
        alpha = np.where((state == _ACTIVE) | (state == _LINEAR), 1.0, c)
        h_mat, h_off = a_mat * alpha[:, None], a_off * alpha
        units = r_units[s]
        if units.size:
            rc, dc = r_cols[s], d_cols[s]
            l_u, u_u = lo_s[units], hi_s[units]
            lower[rc], upper[rc] = 0.0, np.maximum(u_u, 0.0)
            e_r = np.zeros((units.size, n))
            e_r[np.arange(units.size), rc] = 1.0
            a_u, off_u = a_mat[units], a_off[units]
            # a - r <= 0
            blocks.append(a_u - e_r)
            row_lo.append(np.full(units.size, -np.inf))
            row_hi.append(-off_u)
            binary = dc >= 0
            if np.any(binary):
                b = np.flatnonzero(binary)
                integer[dc[b]] = True
                lower[dc[b]], upper[dc[b]] = 0.0, 1.0
                e_d = np.zeros((b.size, n))
                e_d[np.arange(b.size), dc[b]] = 1.0
                # r - a - l δ <= -l
                blocks.append(e_r[b] - a_u[b] - l_u[b][:, None] * e_d)
                row_lo.append(np.full(b.size, -np.inf))
                row_hi.append(-l_u[b] + off_u[b])
                # r - u δ <= 0
                blocks.append(e_r[b] - u_u[b][:, None] * e_d)
                row_lo.append(np.full(b.size, -np.inf))
                row_hi.append(np.zeros(b.size))
            t = np.flatnonzero(~binary)
            if t.size:
                sigma = u_u[t] / (u_u[t] - l_u[t])
                blocks.append(e_r[t] - sigma[:, None] * a_u[t])
                row_lo.append(np.full(t.size, -np.inf))
                row_hi.append(-sigma * l_u[t] + sigma * off_u[t])
            # h = c a + (1 - c) r on the open units
            h_mat[units] += (1.0 - c[units])[:, None] * e_r
    mat = sp.csr_array(np.vstack(blocks)) if blocks else sp.csr_array((0, n))
    program = lp.MixedIntegerProgram.build(
        np.zeros(n), mat, np.concatenate(row_lo), np.concatenate(row_hi), lower, upper, integer
    )
    return program, _Layout(k, r_units, r_cols, d_cols, expr, n)


def _full_vector(stages: Sequence[_Stage], layout: _Layout, z: np.ndarray) -> np.ndarray:
    """The model's variables at latent ``z`` (``r = relu(a)``, ``δ = [a > 0]``), for a warm start."""
    x = np.zeros(layout.num_cols)
    h = np.asarray(z, dtype=np.float64).reshape(-1)
    x[: layout.k] = h
    for s, st in enumerate(stages):
        a = st.pre(h)
        units = layout.r_units[s]
        if units.size:
            x[layout.r_cols[s]] = np.maximum(a[units], 0.0)
            d = layout.d_cols[s]
            has = d >= 0
            x[d[has]] = (a[units][has] > 0.0).astype(np.float64)
        h = st.act(a)
    return x


# ----------------------------------------------------------------------------------------------------
# Tightening
# ----------------------------------------------------------------------------------------------------


def tighten(spec: PreimageSpec, *, time_limit: float = 10.0, obbt: bool = True) -> Tightening:
    """Bounds on every pre-activation, fixed units, the box, and "no preimage" when already proved.

    Steps (module docstring, Bounds): bounds implied by the observation, interval arithmetic from the
    box, then (``obbt``) LPs over the whole network's relaxation for units that stay ambiguous.
    Stopping at ``time_limit`` leaves valid, looser bounds (status ``TIME_LIMIT``).
    """
    state, _ = _tighten(spec, time.perf_counter() + max(float(time_limit), 0.0), obbt)
    return state


@dataclass
class _Work:
    """Tightening's working state, kept by the engine to assemble the MILP."""

    stages: tuple[_Stage, ...]
    fixed_pattern: bool
    bounds: _Bounds
    obs: tuple[np.ndarray, np.ndarray]
    box_lo: np.ndarray
    box_hi: np.ndarray
    theta: np.ndarray
    ftol: float  # HiGHS's primal feasibility tolerance for the repair LPs
    theta_obbt: np.ndarray = field(default_factory=lambda: np.zeros(0))
    relax: tuple[lp.MilpSession, _Layout] | None = None  # the LP relaxation, kept warm
    piece: bool = False  # every hidden unit is fixed, or open only at the tolerance's scale

    def open_units(self) -> int:
        """Hidden units whose sign is open (ambiguous or relaxed)."""
        return sum(int(np.count_nonzero(st >= _AMBIGUOUS)) for st in self.bounds.state[:-1])

    def model_size(self) -> int:
        """Entries of the (dense) condensed model: rows times columns."""
        open_units = sum(int(np.count_nonzero(st >= _AMBIGUOUS)) for st in self.bounds.state[:-1])
        return (sum(st.n for st in self.stages) + 3 * open_units) * (self.stages[0].n_in + 2 * open_units)

    @property
    def exact_relaxation(self) -> bool:
        """No unit is open: the LP relaxation is the exact problem."""
        return not any(np.any((st == _AMBIGUOUS) | (st == _RELAXED)) for st in self.bounds.state[:-1])

    def relaxation(self) -> tuple[lp.MilpSession, _Layout]:
        """The LP relaxation of the whole network (built on first use, then kept with its basis)."""
        if self.relax is None:
            program, layout = _assemble(
                self.stages, self.bounds, self.box_lo, self.box_hi, self.obs, milp=False
            )
            # HiGHS's default tolerances: its points are re-checked and repaired, and a looser tolerance
            # only makes an "infeasible" more conservative
            self.relax = (lp.MilpSession(program), layout)
        return self.relax

    def candidates(self, s: int) -> np.ndarray:
        """Units of stage ``s`` worth an OBBT LP: ambiguous by more than ``theta_obbt``."""
        lo, hi = self.bounds.lo[s], self.bounds.hi[s]
        return np.flatnonzero(
            (self.bounds.state[s] == _AMBIGUOUS) & (np.minimum(hi, -lo) > self.theta_obbt[s])
        )


def _tighten(spec: PreimageSpec, deadline: float, obbt: bool) -> tuple[Tightening, _Work | None]:
    start = time.perf_counter()
    stages, fixed = spec.stages()
    depth = len(stages)
    k = spec.latent_dim
    last = stages[-1]
    obs_lo, obs_hi, empty = _observed_interval(last, spec.observed, spec.slack)
    counter = _Bounds([], [], [])

    def finish(
        status: SolverStatus,
        proved_by: str,
        global_claim: bool,
        box: LatentBox,
        implied: tuple[np.ndarray, np.ndarray],
        bounds: _Bounds | None,
        message: str,
    ) -> Tightening:
        per_stage: tuple[StageBounds, ...] = ()
        counts = [0, 0, 0, 0]
        if bounds is not None:
            per_stage = tuple(
                StageBounds(bounds.lo[s].copy(), bounds.hi[s].copy(), bounds.state[s].copy())
                for s in range(depth)
            )
            for st in bounds.state[:-1]:
                counts[0] += int(np.count_nonzero(st == _ACTIVE))
                counts[1] += int(np.count_nonzero(st == _INACTIVE))
                counts[2] += int(np.count_nonzero(st == _AMBIGUOUS))
                counts[3] += int(np.count_nonzero(st == _RELAXED))
        return Tightening(
            status=status,
            proved_by=proved_by,
            global_claim=global_claim,
            box=box,
            implied_lower=implied[0],
            implied_upper=implied[1],
            stages=per_stage,
            fixed_active=counts[0],
            fixed_inactive=counts[1],
            binaries=counts[2],
            relaxed=counts[3],
            lps=counter.lps,
            seconds=time.perf_counter() - start,
            message=message,
        )

    assumed_box = LatentBox(
        spec.box_lower.copy(), spec.box_upper.copy(), spec.box_lower, spec.box_upper, np.ones(k, dtype=bool)
    )
    free = (np.full(k, -np.inf), np.full(k, np.inf))
    if np.any(empty):
        i = int(spec.rows[np.flatnonzero(empty)[0]])
        return finish(
            SolverStatus.INFEASIBLE,
            "observation",
            True,
            assumed_box,
            free,
            None,
            f"observed entry {i} ({float(spec.y[i]):.6g}) is farther than its tolerance "
            f"({float(spec.slack[np.flatnonzero(empty)[0]]):.3g}) from the range of the output "
            f"activation ({last.activation.value}): no latent produces it",
        ), None

    # 1. bounds implied by the observation, from the last stage down
    g_lo, g_hi, z_lo, z_hi, bad_layer = _implied(stages, obs_lo, obs_hi, deadline, counter)
    if bad_layer is not None:
        s = bad_layer
        return finish(
            SolverStatus.INFEASIBLE,
            "layer LP",
            True,
            assumed_box,
            free,
            None,
            f"the LP over layer {s}'s rows is infeasible: no input of layer {s} meets the bounds the "
            "observation implies on its outputs, so no latent reproduces the observation",
        ), None
    implied = (z_lo, z_hi)
    box = _searched_box(spec, z_lo, z_hi)
    box_lo, box_hi, assumed = box.lower, box.upper, box.assumed
    if np.any(box_lo > box_hi):
        return finish(
            SolverStatus.INFEASIBLE,
            "interval arithmetic",
            False,
            box,
            implied,
            None,
            "the latents the observation allows all lie outside the assumed box (coordinate "
            f"{int(np.flatnonzero(box_lo > box_hi)[0])})",
        ), None
    box_lo, box_hi = np.minimum(box_lo, box_hi), np.maximum(box_lo, box_hi)
    box = LatentBox(box_lo, box_hi, spec.box_lower, spec.box_upper, assumed)

    # 2. interval arithmetic from the box, intersected with the implied bounds
    min_slack = float(np.min(spec.slack))
    theta = RELAX_FRACTION * min_slack / _gains(stages)
    bounds = _Bounds(list(g_lo), list(g_hi), [np.zeros(st.n, dtype=np.int8) for st in stages])
    bounds.lps = counter.lps
    bad_stage = _propagate(stages, bounds, box_lo, box_hi, 0, theta)
    if bad_stage is not None:
        return finish(
            SolverStatus.INFEASIBLE,
            "interval arithmetic",
            box.implied,
            box,
            implied,
            None,
            f"interval arithmetic from the box contradicts the bounds the observation implies on layer "
            f"{bad_stage}: no latent in the box reproduces the observation",
        ), None
    # the repair LP's rows are the observed stage's own: its violation is an error on the output
    ftol = float(np.clip(0.05 * min_slack, 1e-9, 1e-7))
    work = _Work(
        stages, fixed, bounds, (obs_lo, obs_hi), box_lo, box_hi, theta, ftol, _obbt_thresholds(bounds)
    )
    status = SolverStatus.OPTIMAL
    notes = []

    def rounds(lps: bool) -> str:
        """Composed bounds (:func:`_pattern_box`) and interval arithmetic, in turn, while they gain;
        ``lps``: the first round refines by LPs."""
        nonlocal box
        for n_round in range(PATTERN_ROUNDS):
            if time.perf_counter() >= deadline:
                return ""
            # LPs in the first round only: they fix most open units, least squares then suffices
            tight = _pattern_box(work, deadline, counter, refine=lps and n_round == 0)
            if tight is None:
                return ""
            lo, hi, bad = tight
            if bad or np.any(lo > hi):
                return "pattern"
            before = float(np.max(work.box_hi - work.box_lo))
            work.box_lo, work.box_hi = np.maximum(work.box_lo, lo), np.minimum(work.box_hi, hi)
            box = LatentBox(work.box_lo, work.box_hi, spec.box_lower, spec.box_upper, assumed)
            work.relax = None
            if _symbolic(stages, bounds, work.box_lo, work.box_hi, theta) is not None:
                return "interval"
            if float(np.max(work.box_hi - work.box_lo)) > 0.95 * before:
                return ""
        return ""

    def refuted(how: str) -> Tightening:
        if how == "pattern":
            text = (
                "no latent of the box reproduces the observation: the network's outputs, written as one affine "
                "map of the latent plus bounded terms for the units whose sign is open, cannot meet it"
            )
            return finish(SolverStatus.INFEASIBLE, "LP relaxation", box.implied, box, implied, bounds, text)
        text = (
            "interval arithmetic from the tightened box contradicts the bounds the observation implies: no "
            "latent in the box reproduces the observation"
        )
        return finish(SolverStatus.INFEASIBLE, "interval arithmetic", box.implied, box, implied, bounds, text)

    if _symbolic(stages, bounds, work.box_lo, work.box_hi, theta) is not None:
        return refuted("interval"), work

    def wide() -> bool:
        return any(work.candidates(s).size for s in range(depth - 1) if stages[s].piecewise)

    # least squares first (cheap); then OBBT over the whole network's relaxation when it is small enough,
    # else the composed bounds' LPs over (z, e), which bound z only and cost more per open unit
    how = rounds(lps=not obbt)
    if how:
        return refuted(how), work
    if obbt and wide() and work.model_size() > OBBT_MAX_NNZ and work.open_units() <= PATTERN_LP_TERMS:
        how = rounds(lps=True)
        if how:
            return refuted(how), work
    if obbt and wide():
        size = work.model_size()
        if size > OBBT_MAX_NNZ:
            notes.append(f"bound tightening by LPs skipped (an LP relaxation of ~{size:.2g} entries)")
        else:
            status, note = _obbt(work, deadline)
            if note:
                notes.append(note)
            counter.lps = bounds.lps
            if status is SolverStatus.INFEASIBLE:
                return finish(
                    SolverStatus.INFEASIBLE,
                    "LP relaxation",
                    box.implied,
                    box,
                    implied,
                    bounds,
                    "the LP relaxation of the whole network, constrained by the observation, is infeasible: no "
                    f"latent in {('the box' if not box.implied else 'the implied box')} reproduces the observation",
                ), work
            how = rounds(lps=False)
            if how:
                return refuted(how), work
    counter.lps = bounds.lps
    work.piece = not any(work.candidates(s).size for s in range(depth - 1) if stages[s].piecewise)
    note = "; ".join(notes)
    result = finish(status, "", box.implied, box, implied, bounds, "")
    message = (
        f"{result.fixed_active} hidden units fixed active, {result.fixed_inactive} fixed inactive, "
        f"{result.relaxed} relaxed, {result.binaries} binaries left after {result.lps} LPs"
        + (f"; {note}" if note else "")
    )
    return (
        Tightening(**{**result.__dict__, "message": message}),
        work,
    )


def _implied(
    stages: Sequence[_Stage], obs_lo: np.ndarray, obs_hi: np.ndarray, deadline: float, counter: _Bounds
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, int | None]:
    """Step 1 of :func:`tighten`: per stage the pre-activation bounds the observation implies (valid for
    every latent), from the last stage down, and the bounds on ``z``; the last item is the layer whose LP
    proved the observation infeasible (None when none did)."""
    depth = len(stages)
    k = stages[0].n_in
    g_lo: list[np.ndarray] = [np.full(st.n, -np.inf) for st in stages]
    g_hi: list[np.ndarray] = [np.full(st.n, np.inf) for st in stages]
    g_lo[-1], g_hi[-1] = obs_lo.copy(), obs_hi.copy()
    z_lo, z_hi = np.full(k, -np.inf), np.full(k, np.inf)
    for s in range(depth - 1, -1, -1):
        u_lo, u_hi, bad = _input_bounds(
            stages[s], g_lo[s], g_hi[s], _input_domain(stages, s), deadline, counter
        )
        if bad:
            return g_lo, g_hi, z_lo, z_hi, s
        if s == 0:
            z_lo, z_hi = u_lo, u_hi
        else:
            lo, hi = _pre_from_output(stages[s - 1], u_lo, u_hi)
            g_lo[s - 1], g_hi[s - 1] = np.maximum(g_lo[s - 1], lo), np.minimum(g_hi[s - 1], hi)
    return g_lo, g_hi, z_lo, z_hi, None


def _searched_box(spec: PreimageSpec, z_lo: np.ndarray, z_hi: np.ndarray) -> LatentBox:
    """The assumed box cut by the implied bounds ``[z_lo, z_hi]`` (lower may exceed upper: empty)."""
    tiny = 1e-9 * (1.0 + np.abs(spec.box_lower) + np.abs(spec.box_upper))
    box_lo = np.maximum(spec.box_lower, z_lo)
    box_hi = np.minimum(spec.box_upper, z_hi)
    assumed = (spec.box_lower > z_lo + tiny) | (spec.box_upper < z_hi - tiny)
    return LatentBox(box_lo, box_hi, spec.box_lower, spec.box_upper, assumed)


def implied_box(spec: PreimageSpec, *, time_limit: float = 10.0) -> LatentBox | None:
    """The box :func:`tighten` would search, from the bounds the observation implies alone (its step 1,
    without the bounds from the assumed box that follow); None when that step proves "no preimage" or
    the observation is outside the output map's range (:func:`tighten` then says why).

    Cheap next to :func:`build`: a caller whose claim needs the box implied (``LatentBox.implied``) can
    ask first and skip the rest when it is not."""
    stages, _ = spec.stages()
    obs_lo, obs_hi, empty = _observed_interval(stages[-1], spec.observed, spec.slack)
    if np.any(empty):
        return None
    deadline = time.perf_counter() + max(float(time_limit), 0.0)
    _, _, z_lo, z_hi, bad = _implied(stages, obs_lo, obs_hi, deadline, _Bounds([], [], []))
    return None if bad is not None else _searched_box(spec, z_lo, z_hi)


def _linearize(
    st: _Stage, lo: np.ndarray, hi: np.ndarray, state: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``h = d·a + o + e`` with ``|e| <= w`` for every unit of a piecewise-linear stage over ``l <= a <= u``.

    Fixed units are exact (``d = 1`` active, ``d = c`` inactive, ``o = w = 0``). An open unit
    (``l < 0 < u``) uses the zonotope relaxation of ``relu`` (Singh et al., DeepZ, NeurIPS 2018):
    ``relu(a) = λ a + μ + ε`` with ``λ = u / (u - l)``, ``μ = -λ l / 2`` and ``|ε| <= μ`` on ``[l, u]``, so
    ``h = c a + (1 - c) relu(a)`` gives ``d = c + (1 - c) λ``, ``o = (1 - c) μ``, ``w = |1 - c| μ``.
    """
    c = st.slopes
    open_ = (state == _AMBIGUOUS) | (state == _RELAXED)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(open_, hi / np.where(open_, hi - lo, 1.0), 0.0)
    mu = np.where(open_, -lam * lo / 2.0, 0.0)
    d = np.where(open_, c + (1.0 - c) * lam, np.where(state == _INACTIVE, c, 1.0))
    return d, (1.0 - c) * mu, np.abs(1.0 - c) * mu


def _pattern_box(
    work: _Work, deadline: float, counter: _Bounds, *, refine: bool = True
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Bounds on ``z`` through one affine piece of the network, valid on the whole box.

    Every unit whose sign is open (``l < 0 < u``) is linearised (:func:`_linearize`, ``h = d a + o + e``)
    and its error ``|e| <= w`` becomes an unknown of its own. Then ``a_last = M z + m + Σ_s F_s e_s``
    exactly, with ``F_s`` the linear map
    from stage ``s``'s output to the observed stage, and the observed rows bound ``(z, e)``
    (:func:`_input_bounds`, with the bounds of ``e`` as rows of their own): least squares weighs each
    ``e`` against the data, and ``M`` is never split into layers, which makes these bounds far tighter
    than the layer-by-layer ones. When some unit is open by more than the tolerance's scale (and there
    are at most ``PATTERN_LP_TERMS`` error terms) the least-squares bounds are then refined by ``min`` /
    ``max z_i`` LPs over the same rows. None when the system would be
    too large to factor.
    """
    stages, bounds = work.stages, work.bounds
    last = len(stages) - 1
    k = stages[0].n_in
    diag, shift, e_lo, e_hi = [], [], [], []
    for s in range(last):
        st = stages[s]
        if not st.piecewise:
            diag.append(np.ones(st.n))
            shift.append(np.zeros(st.n))
            e_lo.append(np.zeros(st.n))
            e_hi.append(np.zeros(st.n))
            continue
        d, o, w = _linearize(st, bounds.lo[s], bounds.hi[s], bounds.state[s])
        diag.append(d)
        shift.append(o)
        e_lo.append(-w)
        e_hi.append(w)
    ne = sum(int(np.count_nonzero(hi_e > lo_e)) for lo_e, hi_e in zip(e_lo, e_hi))
    if (stages[last].n + ne) * (k + ne) ** 2 > PATTERN_MAX_FLOPS:
        return None
    m_mat, m_off = np.eye(k), np.zeros(k)
    for s in range(last):
        st = stages[s]
        m_a = np.asarray(st.weight @ m_mat)
        off = np.asarray(st.weight @ m_off).reshape(-1) + st.bias
        m_mat, m_off = m_a * diag[s][:, None], off * diag[s] + shift[s]
    st = stages[last]
    composed = _Stage(
        np.asarray(st.weight @ m_mat),
        np.asarray(st.weight @ m_off).reshape(-1) + st.bias,
        Activation.IDENTITY,
        np.ones(st.n),
    )
    # the errors become unknowns of their own, bounded by ±w: least squares then weighs them against
    # the data instead of widening every row by their worst case
    f = st.dense()
    cols = []
    for s in range(last - 1, -1, -1):
        open_units = np.flatnonzero(e_hi[s] > e_lo[s])
        if open_units.size:
            cols.append((f[:, open_units], e_lo[s][open_units], e_hi[s][open_units]))
        if s > 0:
            f = np.asarray((f * diag[s][None, :]) @ stages[s].dense())
    a_lo = np.maximum(bounds.lo[last], work.obs[0])
    a_hi = np.minimum(bounds.hi[last], work.obs[1])
    dom_lo, dom_hi = work.box_lo.copy(), work.box_hi.copy()
    if cols:
        f_all = np.hstack([c[0] for c in cols])
        e_min = np.concatenate([c[1] for c in cols])
        e_max = np.concatenate([c[2] for c in cols])
        ne = e_max.size
        weight = np.block([[composed.dense(), f_all], [np.zeros((ne, k)), np.eye(ne)]])
        composed = _Stage(
            weight, np.concatenate([composed.bias, np.zeros(ne)]), Activation.IDENTITY, np.ones(st.n + ne)
        )
        a_lo = np.concatenate([a_lo, e_min])
        a_hi = np.concatenate([a_hi, e_max])
        dom_lo = np.concatenate([dom_lo, e_min])
        dom_hi = np.concatenate([dom_hi, e_max])
    lo, hi, bad = _input_bounds(composed, a_lo, a_hi, (dom_lo, dom_hi), deadline, counter)
    # LPs only pay when some unit is open by more than the tolerance's scale (least squares is then
    # loose); with units open only at that scale it is within a small factor of them already
    wide = any(work.candidates(s).size for s in range(last) if stages[s].piecewise)
    if bad or not refine or not cols or not wide or sum(c[0].shape[1] for c in cols) > PATTERN_LP_TERMS:
        return lo[:k], hi[:k], bad
    # with error terms, least squares is loose: LPs over (z, e) give the exact bounds of this relaxation;
    # they get a share of the time only (HiGHS can take seconds per LP on these dense, narrow rows)
    deadline = time.perf_counter() + PATTERN_LP_SHARE * max(deadline - time.perf_counter(), 0.0)
    dom_lo[:k], dom_hi[:k] = np.maximum(dom_lo[:k], lo[:k]), np.minimum(dom_hi[:k], hi[:k])
    w = composed.dense()
    up, dn = np.isfinite(a_hi), np.isfinite(a_lo)
    lazy = _LazyLP(
        np.vstack([w[up], -w[dn]]),
        np.concatenate([a_hi[up] - composed.bias[up], composed.bias[dn] - a_lo[dn]]),
        dom_lo,
        dom_hi,
        0.5 * (dom_lo + dom_hi),
    )
    z_lo, z_hi = dom_lo[:k].copy(), dom_hi[:k].copy()
    for j in range(k):
        for sign in (1.0, -1.0):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return z_lo, z_hi, False
            c = np.zeros(w.shape[1])
            c[j] = sign
            res = lazy.minimize(c, remaining)
            counter.lps += 1
            if res.status is SolverStatus.INFEASIBLE:
                return z_lo, z_hi, True
            if res.status is not SolverStatus.OPTIMAL:
                continue
            value = sign * res.objective
            out_lo, out_hi = _outward(np.array([value]), np.array([value]))
            if sign > 0:
                z_lo[j] = max(z_lo[j], float(out_lo[0]))
            else:
                z_hi[j] = min(z_hi[j], float(out_hi[0]))
    return z_lo, z_hi, False


def _obbt_thresholds(bounds: _Bounds) -> np.ndarray:
    """Per stage, ``OBBT_FRACTION`` times the median magnitude of its pre-activation bounds: a unit
    ambiguous by less than that is ambiguous at the scale of the tolerance, which no LP resolves."""
    out = []
    for lo, hi in zip(bounds.lo, bounds.hi):
        mag = np.maximum(np.abs(lo), np.abs(hi))
        mag = mag[np.isfinite(mag)]
        out.append(OBBT_FRACTION * float(np.median(mag)) if mag.size else 0.0)
    return np.array(out)


def _propagate(
    stages: Sequence[_Stage],
    bounds: _Bounds,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    first: int,
    theta: np.ndarray,
) -> int | None:
    """Interval arithmetic from stage ``first`` on (intersecting), then re-classify; returns the stage
    where an interval became empty, or None."""
    if first == 0:
        h_lo, h_hi = box_lo, box_hi
    else:
        h_lo, h_hi = _act_range(stages[first - 1], bounds.lo[first - 1], bounds.hi[first - 1])
    for s in range(first, len(stages)):
        f_lo, f_hi = _forward(stages[s], h_lo, h_hi)
        lo = np.maximum(bounds.lo[s], f_lo)
        hi = np.minimum(bounds.hi[s], f_hi)
        gap = lo - hi
        if np.any(gap > 1e-9 * (1.0 + np.abs(lo) + np.abs(hi))):
            return s
        # crossing by rounding only: meet in the middle
        cross = gap > 0
        mid = 0.5 * (lo + hi)
        lo, hi = np.where(cross, mid, lo), np.where(cross, mid, hi)
        bounds.lo[s], bounds.hi[s] = lo, hi
        bounds.state[s] = (
            _classify(stages[s], lo, hi, float(theta[s]))
            if s < len(stages) - 1
            else (np.full(stages[s].n, _LINEAR, dtype=np.int8))
        )
        h_lo, h_hi = _act_range(stages[s], lo, hi)
    return None


def _symbolic(
    stages: Sequence[_Stage], bounds: _Bounds, box_lo: np.ndarray, box_hi: np.ndarray, theta: np.ndarray
) -> int | None:
    """Symbolic interval propagation from the box (intersecting, then re-classifying), like
    :func:`_propagate` but without the wrapping of interval arithmetic: each stage's pre-activations are
    kept as ``A [z; e] + a_0`` over the latent and one bounded term ``e_j`` per open unit so far (the
    zonotope relaxation of :func:`_linearize`), and bounded only at the end. Returns the stage
    where an interval became empty, or None. Stops early when the terms would make it too large."""
    k = stages[0].n_in
    var_lo, var_hi = box_lo.copy(), box_hi.copy()
    coef = np.eye(k)
    const = np.zeros(k)
    for s, st in enumerate(stages):
        a_mat = np.asarray(st.weight @ coef)
        a_off = np.asarray(st.weight @ const).reshape(-1) + st.bias
        mid, rad = 0.5 * (var_lo + var_hi), 0.5 * (var_hi - var_lo)
        centre = a_mat @ mid + a_off
        spread = np.abs(a_mat) @ rad
        fuzz = 1e-12 * (np.abs(a_mat) @ np.abs(mid) + spread + np.abs(a_off) + 1.0)
        lo = np.maximum(bounds.lo[s], centre - spread - fuzz)
        hi = np.minimum(bounds.hi[s], centre + spread + fuzz)
        gap = lo - hi
        if np.any(gap > 1e-9 * (1.0 + np.abs(lo) + np.abs(hi))):
            return s
        cross = gap > 0
        mid_b = 0.5 * (lo + hi)
        lo, hi = np.where(cross, mid_b, lo), np.where(cross, mid_b, hi)
        bounds.lo[s], bounds.hi[s] = lo, hi
        if s == len(stages) - 1:
            bounds.state[s] = np.full(st.n, _LINEAR, dtype=np.int8)
            return None
        bounds.state[s] = _classify(st, lo, hi, float(theta[s]))
        if not st.piecewise:
            coef, const = a_mat, a_off
            continue
        d, o, w = _linearize(st, lo, hi, bounds.state[s])
        coef, const = a_mat * d[:, None], a_off * d + o
        units = np.flatnonzero(w > 0)
        if units.size:
            if stages[-1].n * (coef.shape[1] + units.size) > SYMBOLIC_MAX_ENTRIES:
                return None
            extra = np.zeros((st.n, units.size))
            extra[units, np.arange(units.size)] = 1.0
            coef = np.hstack([coef, extra])
            var_lo = np.concatenate([var_lo, -w[units]])
            var_hi = np.concatenate([var_hi, w[units]])
    return None


def _obbt(work: _Work, deadline: float) -> tuple[SolverStatus, str]:
    """Optimisation-based bound tightening over the LP relaxation (module docstring, Bounds, step 3).

    Stage by stage from the latent side: ``min`` / ``max a_j`` for every candidate unit, by row generation
    on one :class:`_LazyLP` per stage (only the objective changes, so HiGHS goes on from its last basis
    and rows), then interval arithmetic forward from the new bounds, and the relaxation rebuilt with
    them for the next stage.
    """
    stages, bounds = work.stages, work.bounds
    last = len(stages) - 1
    for s in range(last):
        if not stages[s].piecewise:
            continue
        todo = work.candidates(s)
        if not todo.size:
            continue
        relax, layout = work.relaxation()
        # the same LP by row generation: each objective over the few rows near binding
        session = _LazyLP.of(relax.program(), _full_vector(stages, layout, 0.5 * (work.box_lo + work.box_hi)))
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return SolverStatus.TIME_LIMIT, "time limit during bound tightening"
        first = session.minimize(np.zeros(layout.num_cols), remaining)
        bounds.lps += 1
        if first.status is SolverStatus.INFEASIBLE:
            return SolverStatus.INFEASIBLE, ""
        if first.status is not SolverStatus.OPTIMAL:
            return (
                SolverStatus.TIME_LIMIT,
                f"the LP relaxation ended '{first.status.value}'; bounds left as they were",
            )
        a_mat, a_off = layout.expr[s]
        # the side a unit likely lies on at a point of the relaxation goes first: when the unit's sign
        # is certain, one LP proves it
        guess = a_mat @ first.x + a_off if first.x is not None else np.zeros(a_off.size)
        for j in todo.tolist():
            if time.perf_counter() >= deadline:
                return SolverStatus.TIME_LIMIT, "time limit during bound tightening"
            lo, hi = float(bounds.lo[s][j]), float(bounds.hi[s][j])
            for sign in (1.0, -1.0) if guess[j] >= 0.0 else (-1.0, 1.0):
                res = session.minimize(sign * a_mat[j], max(deadline - time.perf_counter(), 0.0))
                bounds.lps += 1
                if res.status is SolverStatus.INFEASIBLE:
                    return SolverStatus.INFEASIBLE, ""
                if res.status is not SolverStatus.OPTIMAL:
                    continue
                value = sign * res.objective + a_off[j]
                out_lo, out_hi = _outward(np.array([value]), np.array([value]))
                if sign > 0:
                    lo = max(lo, float(out_lo[0]))
                    if lo >= 0.0:
                        break
                else:
                    hi = min(hi, float(out_hi[0]))
                    if hi <= 0.0:
                        break
            if lo > hi:
                lo = hi = 0.5 * (lo + hi)
            bounds.lo[s][j], bounds.hi[s][j] = lo, hi
        if _propagate(stages, bounds, work.box_lo, work.box_hi, s, work.theta) is not None:
            return SolverStatus.INFEASIBLE, ""
        work.relax = None  # rebuilt with the new bounds on next use
    return SolverStatus.OPTIMAL, ""


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------


class _LazyLP:
    """``min cᵀx`` s.t. ``a_ub x <= b_ub``, ``lower <= x <= upper`` for many objectives ``c``, by row
    generation on one HiGHS session: the working rows start as the ``2 n + 10`` nearest to binding at
    ``x0`` and grow by the rows a solution violates (checked in numpy), so the answer is that of the
    full LP (a relaxation's optimum that satisfies every row is optimal); the rows and the basis carry
    over from one objective to the next. ``ftol``: HiGHS's feasibility tolerance, and a row counts as
    violated beyond a tenth of it (default: HiGHS's own, and ``1e-9·(1 + |b|)``)."""

    def __init__(
        self,
        a_ub: np.ndarray,
        b_ub: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        x0: np.ndarray,
        *,
        ftol: float | None = None,
    ) -> None:
        self.a_ub, self.b_ub = a_ub, b_ub
        n = a_ub.shape[1]
        margin = b_ub - a_ub @ np.clip(np.nan_to_num(x0), lower, upper)
        first = np.argsort(margin)[: min(b_ub.size, 2 * n + 10)]
        self.work = np.zeros(b_ub.size, dtype=bool)
        self.work[first] = True
        program = lp.MixedIntegerProgram.build(
            np.zeros(n), a_ub[self.work], None, b_ub[self.work], lower, upper
        )
        self.session = lp.MilpSession(program, feasibility_tolerance=ftol)
        self.tol = 1e-9 * (1.0 + np.abs(b_ub)) if ftol is None else np.full(b_ub.size, 0.1 * ftol)

    def minimize(self, c: np.ndarray, time_limit: float | None) -> lp.MilpResult:
        begin = time.perf_counter()
        self.session.set_objective(c)
        while True:
            remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - begin), 0.0)
            res = self.session.solve(time_limit=remaining)
            if res.status is not SolverStatus.OPTIMAL or res.x is None:
                # unbounded or stopped: the full LP is at least as constrained, nothing more is known
                if res.status is SolverStatus.UNBOUNDED and not self.work.all():
                    self._add(np.flatnonzero(~self.work))
                    continue
                return res
            viol = self.a_ub @ res.x - self.b_ub
            bad = np.flatnonzero((viol > self.tol) & ~self.work)
            if not bad.size:
                return res
            self._add(bad[np.argsort(-viol[bad])[: max(10, self.a_ub.shape[1])]])

    def _add(self, rows: np.ndarray) -> None:
        self.session.add_rows(self.a_ub[rows], -np.inf, self.b_ub[rows])
        self.work[rows] = True

    @classmethod
    def of(cls, program: lp.MixedIntegerProgram, x0: np.ndarray) -> _LazyLP:
        """The LP ``program`` (its rows as ``a x <= b``, its column bounds) solved by row generation:
        the same optimum, each LP over the few rows near binding instead of all of them."""
        a = program.a.toarray()
        up, dn = np.isfinite(program.row_upper), np.isfinite(program.row_lower)
        return cls(
            np.vstack([a[up], -a[dn]]),
            np.concatenate([program.row_upper[up], -program.row_lower[dn]]),
            program.lower,
            program.upper,
            x0,
        )


def _row_generation_lp(
    c: np.ndarray,
    a_ub: np.ndarray,
    b_ub: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x0: np.ndarray,
    ftol: float,
    time_limit: float | None,
) -> np.ndarray | None:
    """``min cᵀx`` s.t. ``a_ub x <= b_ub``, ``lower <= x <= upper`` for one objective, by row generation
    (:class:`_LazyLP`); None when infeasible, unbounded or stopped."""
    res = _LazyLP(a_ub, b_ub, lower, upper, x0, ftol=ftol).minimize(c, time_limit)
    return res.x if res.status is SolverStatus.OPTIMAL else None


class _Pieces:
    """``min cᵀx`` over the MILP's feasible set as the least of one LP per sign pattern of its binary
    units (each :class:`_LazyLP` over the LP relaxation with the pattern's rows added: ``a >= 0`` and
    ``r <= a`` for an active unit, ``a <= 0`` and ``r <= 0`` for an inactive one), for models with at
    most ``ENUMERATE_BINARIES`` binaries. With the binary fixed the big-M rows say exactly this, so the
    least optimum is the MILP's; a pattern whose LP is infeasible is empty and dropped for good."""

    def __init__(self, work: _Work, base: _LazyLP, layout: _Layout, x0: np.ndarray) -> None:
        units = []
        for s, st in enumerate(work.bounds.state[:-1]):
            for pos, j in enumerate(layout.r_units[s].tolist()):
                if st[j] == _AMBIGUOUS:
                    units.append((s, j, int(layout.r_cols[s][pos])))
        n = base.a_ub.shape[1]
        lower, upper = base.session.col_bounds()
        lower, upper = lower[:n], upper[:n]
        self.lps: list[_LazyLP] = []
        for pattern in range(1 << len(units)):
            rows, rhs = [], []
            up = upper.copy()
            for bit, (s, j, rc) in enumerate(units):
                a_mat, a_off = layout.expr[s]
                if pattern >> bit & 1:
                    e_r = np.zeros(n)
                    e_r[rc] = 1.0
                    rows += [-a_mat[j], e_r - a_mat[j]]
                    rhs += [a_off[j], a_off[j]]
                else:
                    rows.append(a_mat[j])
                    rhs.append(-a_off[j])
                    up[rc] = 0.0
            a_ub = np.vstack([base.a_ub, np.array(rows)])
            b_ub = np.concatenate([base.b_ub, np.array(rhs)])
            self.lps.append(_LazyLP(a_ub, b_ub, lower, up, np.clip(x0, lower, up)))

    def minimize(self, c: np.ndarray, time_limit: float) -> tuple[SolverStatus, float, np.ndarray | None]:
        """(status, least optimum, its point): ``OPTIMAL`` when every live pattern was solved,
        ``INFEASIBLE`` when none is left, else the status that stopped one (the value is then -inf)."""
        begin = time.perf_counter()
        best, x_best = float("inf"), None
        status = SolverStatus.OPTIMAL
        live = []
        for lazy in self.lps:
            res = lazy.minimize(c, max(time_limit - (time.perf_counter() - begin), 0.0))
            if res.status is SolverStatus.INFEASIBLE:
                continue
            live.append(lazy)
            if res.status is not SolverStatus.OPTIMAL or res.x is None:
                status = res.status if res.status is not SolverStatus.OPTIMAL else SolverStatus.NUMERICAL
                continue
            if res.objective < best:
                best, x_best = res.objective, res.x
        self.lps = live
        if not live:
            return SolverStatus.INFEASIBLE, float("inf"), None
        return status, (best if status is SolverStatus.OPTIMAL else float("-inf")), x_best


@dataclass(frozen=True)
class _Direction:
    """How one certify direction ended."""

    certified: bool
    witness: np.ndarray | None
    label: str
    status: SolverStatus
    nodes: int
    solves: int


def build(
    spec: PreimageSpec, *, time_limit: float = 10.0, obbt: bool = True, heuristics: bool = True
) -> MilpEngine:
    """Tighten the bounds (:func:`tighten`, within ``time_limit``) and return an engine for the uses.

    ``heuristics=False`` turns off the piece walks (:meth:`MilpEngine.walk`), leaving the LP
    relaxation, the repair LP and the MILP."""
    deadline = time.perf_counter() + max(float(time_limit), 0.0)
    tightening, work = _tighten(spec, deadline, obbt)
    return MilpEngine(spec, tightening, work, heuristics=heuristics)


class MilpEngine:
    """The whole-network MILP of one observation: :meth:`find`, :meth:`certify`, :meth:`bound`.

    Built by :func:`build`. The MILP is assembled once, on first use, from the tightened bounds and held
    in one :class:`~onnxinv.inversion.lp.MilpSession`; each use changes only the objective and the
    bounds of the latent columns. Every point it returns has been re-checked through the layer list.
    """

    def __init__(
        self, spec: PreimageSpec, tightening: Tightening, work: _Work | None, *, heuristics: bool = True
    ) -> None:
        self.spec = spec
        self.heuristics = heuristics  # piece walks before the MILP (False: relaxation, repair, MILP only)
        self.tightening = tightening
        self._work = work
        self._session: lp.MilpSession | None = None
        self._layout: _Layout | None = None
        self._best: np.ndarray | None = None  # the last re-checked latent, for warm starts

    @property
    def box(self) -> LatentBox:
        return self.tightening.box

    @property
    def binaries(self) -> int:
        return self.tightening.binaries

    def _model(self) -> tuple[lp.MilpSession, _Layout]:
        if self._session is None:
            assert self._work is not None
            w = self._work
            program, layout = _assemble(w.stages, w.bounds, w.box_lo, w.box_hi, w.obs, milp=True)
            # HiGHS's default MIP tolerances: accuracy comes from the re-check and the repair LP, and a
            # looser tolerance only makes an "infeasible" more conservative
            self._session = lp.MilpSession(program)
            self._layout = layout
        assert self._layout is not None
        return self._session, self._layout

    # -- points -------------------------------------------------------------------------------------
    def _accept(self, z: np.ndarray | None) -> tuple[np.ndarray | None, float]:
        """``z`` clipped into the box if it fits (misfit <= 1) there, else None; and its misfit."""
        if z is None:
            return None, float("nan")
        z = np.clip(np.asarray(z, dtype=np.float64), self.box.lower, self.box.upper)
        misfit = self.spec.misfit(z)
        return (z if misfit <= 1.0 else None), misfit

    def _pattern(self, z0: np.ndarray, use_bounds: bool) -> list[np.ndarray | None]:
        """Per stage, the active mask of the piece of ``z0`` (None for linear stages and the observed one).

        With ``use_bounds``, units whose sign the bounds fix keep it, and units ambiguous only at the
        tolerance's scale take their nearer side (active when ``-l < u``).
        """
        assert self._work is not None
        stages, bounds = self._work.stages, self._work.bounds
        out: list[np.ndarray | None] = []
        h = np.asarray(z0, dtype=np.float64).reshape(-1)
        for s, st in enumerate(stages[:-1]):
            a = st.pre(h)
            if not st.piecewise:
                out.append(None)
            else:
                active = a >= 0.0
                if use_bounds:
                    lo_b, hi_b, state = bounds.lo[s], bounds.hi[s], bounds.state[s]
                    small = np.minimum(hi_b, -lo_b) <= self._work.theta_obbt[s]
                    active = np.where(small, hi_b > -lo_b, active)
                    active = np.where(state == _ACTIVE, True, np.where(state == _INACTIVE, False, active))
                out.append(active)
            h = st.act(a)
        return out

    def _band(self) -> np.ndarray:
        """The band the repair LPs aim for: the noise plus ``REPAIR_FRACTION`` of the tolerance."""
        return self.spec.slack - (1.0 - REPAIR_FRACTION) * self.spec.tol

    def _piece(
        self, pattern: list[np.ndarray | None], band: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]], np.ndarray, np.ndarray] | None:
        """The piece ``pattern`` as rows over ``z``: sign rows ``S z <= t`` (and which unit each row is),
        observed rows ``O z <= o`` for ``band``; None when the band is empty."""
        assert self._work is not None
        stages = self._work.stages
        k = self.spec.latent_dim
        m_mat, m_off = np.eye(k), np.zeros(k)
        sign_a, sign_b, which = [], [], []
        for s, st in enumerate(stages[:-1]):
            m_a = np.asarray(st.weight @ m_mat)
            off = np.asarray(st.weight @ m_off).reshape(-1) + st.bias
            active = pattern[s]
            if active is None:
                d = np.ones(st.n)
            else:
                # active rows a >= 0, inactive rows a <= 0
                sign_a.append(np.where(active[:, None], -m_a, m_a))
                sign_b.append(np.where(active, off, -off))
                which.append((s, np.arange(st.n)))
                d = np.where(active, 1.0, st.slopes)
            m_mat, m_off = m_a * d[:, None], off * d
        st = stages[-1]
        m_a = np.asarray(st.weight @ m_mat)
        off = np.asarray(st.weight @ m_off).reshape(-1) + st.bias
        lo, hi, empty = _observed_interval(st, self.spec.observed, band)
        if np.any(empty):
            return None
        up, dn = np.isfinite(hi), np.isfinite(lo)
        obs_a = np.vstack([m_a[up], -m_a[dn]])
        obs_b = np.concatenate([hi[up] - off[up], off[dn] - lo[dn]])
        s_a = np.vstack(sign_a) if sign_a else np.zeros((0, k))
        s_b = np.concatenate(sign_b) if sign_b else np.zeros(0)
        return s_a, s_b, which, obs_a, obs_b

    def _z_box(self, z_lower: np.ndarray | None, z_upper: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        lo_z = self.box.lower if z_lower is None else np.maximum(self.box.lower, z_lower)
        hi_z = self.box.upper if z_upper is None else np.minimum(self.box.upper, z_upper)
        return lo_z, hi_z

    def repair(
        self,
        z0: np.ndarray,
        *,
        objective: np.ndarray | None = None,
        z_lower: np.ndarray | None = None,
        z_upper: np.ndarray | None = None,
        time_limit: float | None = None,
        use_bounds: bool = True,
    ) -> np.ndarray | None:
        """A latent on one affine piece of ``G`` that reproduces the observation within
        ``ε + REPAIR_FRACTION·tol`` (LP over ``z``; ``objective``: minimise ``objectiveᵀz``; ``z_lower`` /
        ``z_upper`` narrow the box), re-checked; None if that piece has none.

        The piece is that of ``z0`` (:meth:`_pattern`; with ``use_bounds`` the one the bounds point to
        where they fix a sign or leave it open only at the tolerance's scale).
        """
        assert self._work is not None
        z0 = np.asarray(z0, dtype=np.float64).reshape(-1)
        k = z0.size
        piece = self._piece(self._pattern(z0, use_bounds), self._band())
        if piece is None:
            return None
        s_a, s_b, _, obs_a, obs_b = piece
        lo_z, hi_z = self._z_box(z_lower, z_upper)
        if np.any(lo_z > hi_z):
            return None
        c = np.zeros(k) if objective is None else np.asarray(objective, dtype=np.float64)
        x = _row_generation_lp(
            c,
            np.vstack([s_a, obs_a]),
            np.concatenate([s_b, obs_b]),
            lo_z,
            hi_z,
            np.clip(z0, lo_z, hi_z),
            self._work.ftol,
            time_limit,
        )
        if x is None:
            return None
        z, _ = self._accept(x)
        return z

    def walk(
        self,
        z0: np.ndarray,
        *,
        z_lower: np.ndarray | None = None,
        z_upper: np.ndarray | None = None,
        time_limit: float = 5.0,
        max_steps: int = WALK_STEPS,
    ) -> np.ndarray | None:
        """Descend the misfit over the pieces of ``G`` from ``z0`` (a primal heuristic, proves nothing).

        On the current piece an LP minimises ``t`` with every observed row within ``ε + REPAIR_FRACTION·tol +
        t``; ``t <= 0`` gives a latent (re-checked). Otherwise the units whose sign rows are tight at the
        optimum block the descent: they flip, and the walk moves to that neighbouring piece, until it
        repeats a piece, finds no blocking unit (a local minimum of the misfit) or runs out of steps.
        """
        assert self._work is not None
        if not self.heuristics:
            return None
        begin = time.perf_counter()
        k = self.spec.latent_dim
        lo_z, hi_z = self._z_box(z_lower, z_upper)
        if np.any(lo_z > hi_z):
            return None
        pattern = self._pattern(np.clip(z0, lo_z, hi_z), True)
        states = self._work.bounds.state
        seen: set[bytes] = set()
        x = np.append(np.clip(z0, lo_z, hi_z), 0.0)
        for _ in range(max_steps):
            remaining = time_limit - (time.perf_counter() - begin)
            if remaining <= 0:
                return None
            key = b"".join(p.tobytes() for p in pattern if p is not None)
            if key in seen:
                return None
            seen.add(key)
            piece = self._piece(pattern, self._band())
            if piece is None:
                return None
            s_a, s_b, which, obs_a, obs_b = piece
            a_ub = np.block([[s_a, np.zeros((s_a.shape[0], 1))], [obs_a, -np.ones((obs_a.shape[0], 1))]])
            b_ub = np.concatenate([s_b, obs_b])
            c = np.zeros(k + 1)
            c[-1] = 1.0
            x0 = np.append(x[:k], max(float(np.max(obs_a @ x[:k] - obs_b)), 0.0))
            solved = _row_generation_lp(
                c, a_ub, b_ub, np.append(lo_z, 0.0), np.append(hi_z, np.inf), x0, self._work.ftol, remaining
            )
            if solved is None:
                return None
            x = solved
            if x[-1] <= 1e-12 * (1.0 + float(np.max(np.abs(obs_b)))):
                z, _ = self._accept(x[:k])
                return z
            slack = s_b - s_a @ x[:k]
            tight = slack <= 1e-9 * (1.0 + np.abs(s_b))
            if not np.any(tight):
                return None
            offset = 0
            flipped = False
            for s, units in which:
                part = tight[offset : offset + units.size] & (states[s] != _ACTIVE) & (states[s] != _INACTIVE)
                offset += units.size
                if np.any(part):
                    p = pattern[s]
                    assert p is not None
                    pattern[s] = np.where(part, ~p, p)
                    flipped = True
            if not flipped:
                return None
        return None

    def _point_from(
        self,
        x: np.ndarray | None,
        *,
        objective: np.ndarray | None = None,
        z_lower: np.ndarray | None = None,
        z_upper: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> tuple[np.ndarray | None, bool]:
        """The latent of a model point, re-checked; repaired when it misses. (z or None, repaired)."""
        if x is None:
            return None, False
        k = self.spec.latent_dim
        z, _ = self._accept(x[:k])
        inside = (
            z is not None
            and (z_lower is None or np.all(z >= z_lower))
            and (z_upper is None or np.all(z <= z_upper))
        )
        if inside and objective is None:
            return z, False
        for use_bounds in (True, False):
            limit = None if deadline is None else max(deadline - time.perf_counter(), 0.1)
            fixed = self.repair(
                x[:k],
                objective=objective,
                z_lower=z_lower,
                z_upper=z_upper,
                time_limit=limit,
                use_bounds=use_bounds,
            )
            if fixed is not None:
                if inside and objective is not None and float(objective @ z) < float(objective @ fixed):
                    return z, False  # the solver's own point is the better one
                return fixed, True
        return (z, False) if inside else (None, False)

    def _remember(self, z: np.ndarray) -> None:
        self._best = np.array(z, dtype=np.float64)

    def _direction(self, i: int, sign: float, zh: np.ndarray, delta: float, time_limit: float) -> _Direction:
        """Is there a latent of the set with ``sign·(z_i - ẑ_i) >= δ``?

        First the LP relaxation: infeasible proves the direction; a point is re-checked and repaired
        (pushed as far in the direction as its piece allows) into a witness. Without a witness and with
        binaries in the model, the MILP decides the same way.
        """
        assert self._work is not None
        begin = time.perf_counter()
        box = self.box
        k = self.spec.latent_dim
        cut = (zh[i] + delta, float(box.upper[i])) if sign > 0 else (float(box.lower[i]), zh[i] - delta)
        z_lo, z_hi = np.full(k, -np.inf), np.full(k, np.inf)
        if sign > 0:
            z_lo[i] = cut[0]
        else:
            z_hi[i] = cut[1]
        objective = np.zeros(k)
        objective[i] = -sign
        nodes = solves = 0
        status = SolverStatus.OPTIMAL
        if self._work.piece and not self._work.exact_relaxation:
            # the piece the bounds point to, pushed in this direction: a witness in one LP if it reaches
            cand = self.repair(zh, objective=objective, z_lower=z_lo, z_upper=z_hi, time_limit=time_limit)
            solves += 1
            if cand is not None and float(np.max(np.abs(cand - zh))) >= delta:
                return _Direction(False, cand, "witness", SolverStatus.OPTIMAL, nodes, solves)
        models = [("LP relaxation", self._work.relaxation()[0])]
        if self.binaries:
            models.append(("MILP", self._model()[0]))
        label = ""
        for label, session in models:
            remaining = time_limit - (time.perf_counter() - begin)
            if remaining <= 0:
                return _Direction(False, None, "time limit", SolverStatus.TIME_LIMIT, nodes, solves)
            session.set_objective(np.zeros(session.num_vars))
            session.set_col_bounds([i], cut[0], cut[1])
            res = session.solve(time_limit=remaining)
            session.set_col_bounds([i], box.lower[i], box.upper[i])
            nodes += res.nodes
            solves += 1
            if res.status is SolverStatus.INFEASIBLE:
                return _Direction(True, None, label, SolverStatus.OPTIMAL, nodes, solves)
            status = res.status
            if res.status is SolverStatus.TIME_LIMIT and res.x is None:
                break
            cand, _ = self._point_from(
                res.x, objective=objective, z_lower=z_lo, z_upper=z_hi, deadline=begin + time_limit
            )
            if cand is not None and float(np.max(np.abs(cand - zh))) >= delta:
                return _Direction(False, cand, "witness", SolverStatus.OPTIMAL, nodes, solves)
            if label == "LP relaxation" and self.binaries:
                seeds = [zh] if res.x is None else [res.x[:k], zh]
                walk_end = begin + min(time_limit, (time.perf_counter() - begin) + WALK_SHARE * remaining)
                cand = self._walks(seeds, walk_end, z_lo, z_hi)
                if cand is not None:
                    # push it as far as its piece allows in this direction
                    far = self.repair(
                        cand, objective=objective, z_lower=z_lo, z_upper=z_hi, time_limit=remaining
                    )
                    cand = far if far is not None else cand
                if cand is not None and float(np.max(np.abs(cand - zh))) >= delta:
                    return _Direction(False, cand, "witness", SolverStatus.OPTIMAL, nodes, solves)
        if status is SolverStatus.OPTIMAL:
            return _Direction(
                False, None, f"{label}: unrepaired point", SolverStatus.NUMERICAL, nodes, solves
            )
        what = "time limit" if status is SolverStatus.TIME_LIMIT else status.value
        return _Direction(False, None, f"{label}: {what}", status, nodes, solves)

    # -- find ---------------------------------------------------------------------------------------
    def find(self, *, time_limit: float = 10.0, start: np.ndarray | None = None) -> FindResult:
        """A latent reproducing the observation, or a proof that none exists in the box.

        ``start`` (e.g. the layer-wise solution) is re-checked first, then repaired on its own
        activation pattern (one LP), then handed to the MILP as a starting point.
        """
        begin = time.perf_counter()
        deadline = begin + max(float(time_limit), 0.0)
        t = self.tightening
        if t.infeasible:
            return self._found(
                None, SolverStatus.INFEASIBLE, t.proved_by, t.global_claim, 0, begin, t.message
            )
        if start is not None:
            z0 = np.asarray(start, dtype=np.float64).reshape(-1)
            z, _ = self._accept(z0)
            if z is not None and np.all(np.abs(z - z0) <= 1e-12 * (1 + np.abs(z0))):
                return self._found(z, SolverStatus.OPTIMAL, "start point", False, 0, begin, "")
            z = self.repair(z0, time_limit=max(deadline - time.perf_counter(), 0.1))
            if z is not None:
                return self._found(z, SolverStatus.OPTIMAL, "pattern LP", False, 0, begin, "")
            z = self.walk(z0, time_limit=max(WALK_SHARE * (deadline - time.perf_counter()), 0.1))
            if z is not None:
                return self._found(z, SolverStatus.OPTIMAL, "piece walk", False, 0, begin, "")
        assert self._work is not None
        if self._work.model_size() > OBBT_MAX_NNZ:
            # too large for LPs over the whole network within seconds: walk over its pieces only
            seeds = [] if start is None else [np.asarray(start, dtype=np.float64).reshape(-1)]
            z = self._walks(seeds, begin + WALK_SHARE * (deadline - begin))
            if z is not None:
                return self._found(z, SolverStatus.OPTIMAL, "piece walk", False, 0, begin, "")
        if self._work.piece:
            # every unit is fixed, or open only at the tolerance's scale: the piece the bounds point to
            z = self.repair(
                0.5 * (self.box.lower + self.box.upper), time_limit=max(deadline - time.perf_counter(), 0.1)
            )
            if z is not None:
                return self._found(z, SolverStatus.OPTIMAL, "pattern LP", False, 0, begin, "")
        models: list[tuple[str, lp.MilpSession, np.ndarray | None]] = [
            ("LP relaxation", self._work.relaxation()[0], None)
        ]
        if self.binaries:
            session, layout = self._model()
            warm = None if start is None else _full_vector(self._work.stages, layout, start)
            models.append(("MILP", session, warm))
        nodes = 0
        res = None
        what = ""
        for what, session, warm in models:
            session.set_objective(np.zeros(session.num_vars))
            res = session.solve(time_limit=max(deadline - time.perf_counter(), 0.0), start=warm)
            nodes += res.nodes
            if res.status is SolverStatus.INFEASIBLE:
                return self._found(None, res.status, what, self.box.implied, nodes, begin, "")
            z, repaired = self._point_from(res.x, deadline=deadline)
            if z is not None:
                how = f"{what} + repair" if repaired else what
                return self._found(z, SolverStatus.OPTIMAL, how, False, nodes, begin, "")
            if what == "LP relaxation" and self.binaries:
                seeds = [] if res.x is None else [res.x[: self.spec.latent_dim]]
                if start is not None:
                    seeds.append(np.asarray(start, dtype=np.float64).reshape(-1))
                z = self._walks(seeds, begin + WALK_SHARE * (deadline - begin))
                if z is not None:
                    return self._found(z, SolverStatus.OPTIMAL, "piece walk", False, nodes, begin, "")
        assert res is not None
        status = res.status if res.status is not SolverStatus.OPTIMAL else SolverStatus.NUMERICAL
        note = res.message
        if res.x is not None:
            note = (
                f"the {what}'s point misses the observation by {self.spec.misfit(res.x[: self.spec.latent_dim]):.3g} "
                "times the tolerance in float64 and the repair LP found no point on its pattern"
            )
        return self._found(None, status, what, False, nodes, begin, note)

    def _walks(
        self,
        seeds: list[np.ndarray],
        deadline: float,
        z_lower: np.ndarray | None = None,
        z_upper: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """:meth:`walk` from ``seeds``, the box centre, then random points of the box (fixed seed), until
        one reaches a latent or the deadline passes."""
        lo_z, hi_z = self._z_box(z_lower, z_upper)
        starts = [*seeds, 0.5 * (lo_z + hi_z)]
        rng = np.random.default_rng(0)
        n = 0
        while time.perf_counter() < deadline and n < WALK_STARTS:
            z0 = starts[n] if n < len(starts) else rng.uniform(lo_z, hi_z)
            n += 1
            z = self.walk(z0, z_lower=z_lower, z_upper=z_upper, time_limit=deadline - time.perf_counter())
            if z is not None:
                return z
        return None

    def _found(
        self,
        z: np.ndarray | None,
        status: SolverStatus,
        how: str,
        global_claim: bool,
        nodes: int,
        begin: float,
        note: str,
    ) -> FindResult:
        if z is not None:
            finding = Finding.FOUND
            misfit, linf = self.spec.misfit(z), self.spec.residual_linf(z)
            self._remember(z)
            message = (
                f"found a latent reproducing the observation within its tolerance (misfit {misfit:.3g} of the "
                f"band, max error {linf:.3g}) by {how}"
            )
        elif status is SolverStatus.INFEASIBLE:
            finding, misfit, linf = Finding.NO_PREIMAGE, float("nan"), float("nan")
            where = "any latent" if global_claim else self.box.describe()
            message = f"no preimage: proved by {how} for {where}" + (f" ({note})" if note else "")
        else:
            finding, misfit, linf = Finding.UNDECIDED, float("nan"), float("nan")
            message = f"undecided: {note or status.value}; nothing is claimed"
        return FindResult(
            finding=finding,
            status=status,
            z=z,
            misfit=misfit,
            residual_linf=linf,
            proved_by=how,
            global_claim=bool(global_claim) and finding is Finding.NO_PREIMAGE,
            box=self.box,
            nodes=nodes,
            seconds=time.perf_counter() - begin,
            binaries=self.binaries,
            message=message,
        )

    # -- certify ------------------------------------------------------------------------------------
    def certify(
        self, z_hat: np.ndarray, delta: float, *, time_limit: float = 30.0, stop_at_witness: bool = True
    ) -> CertifyResult:
        """Is every latent of the set within ``delta`` (``l_∞``) of ``z_hat``?

        For each coordinate ``i`` and sign, a feasibility MILP with ``z_i >= ẑ_i + δ`` (or
        ``z_i <= ẑ_i - δ``): infeasible proves that direction; a feasible point, re-checked (and repaired,
        pushing it as far as its piece allows), is a witness. ``z_hat`` must reproduce the observation.

        Raises
        ------
        InvalidArgumentError
            ``delta <= 0``, or ``z_hat`` of the wrong size or not reproducing the observation.
        """
        begin = time.perf_counter()
        deadline = begin + max(float(time_limit), 0.0)
        k = self.spec.latent_dim
        zh = np.asarray(z_hat, dtype=np.float64).reshape(-1)
        if zh.shape != (k,):
            raise InvalidArgumentError(f"z_hat has {zh.size} entries; the generator takes {k}")
        if not (math.isfinite(delta) and delta > 0):
            raise InvalidArgumentError(f"delta must be finite and > 0, got {delta}")
        misfit = self.spec.misfit(zh)
        certified = np.zeros((k, 2), dtype=bool)
        how = np.full((k, 2), "not tried", dtype=object)
        if self.tightening.infeasible:
            return self._certified(
                Finding.NO_PREIMAGE,
                SolverStatus.INFEASIBLE,
                zh,
                delta,
                None,
                certified,
                how,
                0,
                0,
                begin,
                self.tightening.message,
            )
        if misfit > 1.0:
            raise InvalidArgumentError(
                f"z_hat does not reproduce the observation (misfit {misfit:.3g} times the tolerance band); "
                "certify a latent that does (e.g. one from find())"
            )
        box = self.box
        nodes = solves = 0
        todo: list[tuple[int, int]] = []
        for i in range(k):
            for col, sign in ((0, -1.0), (1, 1.0)):
                edge = box.lower[i] if sign < 0 else box.upper[i]
                if sign * (edge - zh[i]) < delta:
                    certified[i, col], how[i, col] = True, "box"
                else:
                    todo.append((i, col))
        witness = None
        status = SolverStatus.OPTIMAL
        passes = 0
        while todo and passes < 2:
            passes += 1
            left: list[tuple[int, int]] = []
            for n_done, (i, col) in enumerate(todo):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    left += todo[n_done:]
                    for ii, cc in todo[n_done:]:
                        how[ii, cc] = "time limit"
                    status = SolverStatus.TIME_LIMIT
                    break
                # a fair share of the time, but never so little that one warm LP cannot finish
                share = (
                    remaining
                    if passes > 1
                    else min(remaining, max(2.0 * remaining / (len(todo) - n_done), 0.25 * remaining))
                )
                outcome = self._direction(i, -1.0 if col == 0 else 1.0, zh, delta, share)
                nodes += outcome.nodes
                solves += outcome.solves
                how[i, col] = outcome.label
                if outcome.certified:
                    certified[i, col] = True
                elif outcome.witness is not None:
                    witness = outcome.witness
                    if stop_at_witness:
                        return self._certified(
                            Finding.NOT_UNIQUE,
                            SolverStatus.OPTIMAL,
                            zh,
                            delta,
                            witness,
                            certified,
                            how,
                            nodes,
                            solves,
                            begin,
                            "",
                        )
                else:
                    status = outcome.status
                    left.append((i, col))
            todo = left
        if witness is not None:
            return self._certified(
                Finding.NOT_UNIQUE,
                SolverStatus.OPTIMAL,
                zh,
                delta,
                witness,
                certified,
                how,
                nodes,
                solves,
                begin,
                "",
            )
        if certified.all():
            return self._certified(
                Finding.UNIQUE,
                SolverStatus.OPTIMAL,
                zh,
                delta,
                None,
                certified,
                how,
                nodes,
                solves,
                begin,
                "",
            )
        if status is SolverStatus.OPTIMAL:
            status = SolverStatus.NUMERICAL
        return self._certified(
            Finding.UNDECIDED, status, zh, delta, None, certified, how, nodes, solves, begin, ""
        )

    def _certified(
        self,
        finding: Finding,
        status: SolverStatus,
        zh: np.ndarray,
        delta: float,
        witness: np.ndarray | None,
        certified: np.ndarray,
        how: np.ndarray,
        nodes: int,
        solves: int,
        begin: float,
        note: str,
    ) -> CertifyResult:
        box = self.box
        dist = float(np.max(np.abs(witness - zh))) if witness is not None else float("nan")
        wm = self.spec.misfit(witness) if witness is not None else float("nan")
        on_box = bool(np.any(box.touches(witness))) if witness is not None else False
        global_claim = (finding is Finding.UNIQUE and box.implied) or (
            finding is Finding.NO_PREIMAGE and self.tightening.global_claim
        )
        if finding is Finding.UNIQUE:
            message = f"unique up to {delta:g} (l_inf) among {box.describe()}: every direction proved"
        elif finding is Finding.NOT_UNIQUE:
            message = (
                f"not unique: a witness at l_inf distance {dist:.4g} >= {delta:g} from z_hat reproduces the "
                f"observation (misfit {wm:.3g} of the band)"
                + (" and lies on the assumed box's boundary" if on_box else "")
            )
        elif finding is Finding.NO_PREIMAGE:
            message = f"no preimage ({note})"
        else:
            done = int(certified.sum())
            message = (
                f"undecided: {done} of {certified.size} directions proved, the others stopped "
                f"({status.value}); nothing is claimed about them"
            )
        return CertifyResult(
            finding=finding,
            status=status,
            z_hat=zh,
            delta=float(delta),
            witness=witness,
            witness_distance=dist,
            witness_misfit=wm,
            witness_on_box=on_box,
            certified=certified,
            how=how,
            global_claim=global_claim,
            box=box,
            nodes=nodes,
            seconds=time.perf_counter() - begin,
            solves=solves,
            message=message,
        )

    # -- bound --------------------------------------------------------------------------------------
    def bound(self, *, time_limit: float = 30.0, start: np.ndarray | None = None) -> BoundResult:
        """``[min z_i, max z_i]`` over the set for every ``i`` (proved bounds, and the values reached).

        The tightened box is already a proved bound; each side is then solved: the LP relaxation when
        the model has no binary (exact then), else the MILP, whose dual bound counts even when it stops
        at its time limit. A model too large for LPs within seconds (``OBBT_MAX_NNZ``) keeps the
        tightened box. The values reached come from re-checked latents: the solvers' points, and the
        piece of ``start`` (or of the last latent found) pushed to each side by one LP.

        ``start``: a latent of the set (e.g. from :meth:`find`), also the MILPs' first incumbent.
        """
        begin = time.perf_counter()
        deadline = begin + max(float(time_limit), 0.0)
        k = self.spec.latent_dim
        box = self.box
        lower, upper = box.lower.copy(), box.upper.copy()
        reached = np.full((k, 2), np.nan)
        exact = np.zeros((k, 2), dtype=bool)
        if self.tightening.infeasible:
            return self._bounded(
                Finding.NO_PREIMAGE, SolverStatus.INFEASIBLE, lower, upper, reached, exact, 0, 0, begin
            )
        assert self._work is not None
        best = None
        if start is not None:
            best, _ = self._accept(start)
        nodes = solves = 0
        status = SolverStatus.OPTIMAL
        lazy: _LazyLP | None = None  # the LP relaxation by row generation, shared by every side
        pieces: _Pieces | None = None  # the MILP as one LP per pattern, for a few binaries
        anchor = best  # a latent of the set away from the band's edge, for _pulled
        jobs = [(i, col) for i in range(k) for col in (0, 1)]
        scale = float(np.max(np.abs(box.upper - box.lower))) or 1.0
        huge = self._work.model_size() > OBBT_MAX_NNZ
        if huge:
            status = SolverStatus.TIME_LIMIT
        gap_tol = 1e-6 * scale
        for n_done, (i, col) in enumerate(jobs):
            if huge:
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                status = SolverStatus.TIME_LIMIT
                break
            share = min(remaining, 2.0 * remaining / (len(jobs) - n_done))
            side_start = time.perf_counter()
            sign = 1.0 if col == 0 else -1.0  # minimise z_i, then minimise -z_i
            objective = np.zeros(k)
            objective[i] = sign
            # the LP relaxation first: its optimum is a proved bound, and closes the side when a
            # re-checked latent reaches it; the MILP only for the sides it leaves open
            if lazy is None:
                relax, relax_layout = self._work.relaxation()
                x0 = 0.5 * (box.lower + box.upper) if best is None else best
                lazy = _LazyLP.of(relax.program(), _full_vector(self._work.stages, relax_layout, x0))
            models: list[tuple[str, lp.MilpSession | _LazyLP | _Pieces]] = [("LP", lazy)]
            if 0 < self.binaries <= ENUMERATE_BINARIES:
                if pieces is None:
                    relax_layout = self._work.relaxation()[1]
                    x0 = 0.5 * (box.lower + box.upper) if best is None else best
                    pieces = _Pieces(
                        self._work, lazy, relax_layout, _full_vector(self._work.stages, relax_layout, x0)
                    )
                models.append(("MILP", pieces))
            elif self.binaries:
                models.append(("MILP", self._model()[0]))
            for what, session in models:
                left = share - (time.perf_counter() - side_start)
                if left <= 0:
                    status = SolverStatus.TIME_LIMIT
                    break
                if isinstance(session, _LazyLP):
                    c = np.zeros(session.a_ub.shape[1])
                    c[i] = sign
                    res = session.minimize(c, left)
                elif isinstance(session, _Pieces):
                    c = np.zeros(lazy.a_ub.shape[1])
                    c[i] = sign
                    got, value, x_p = session.minimize(c, left)
                    res = dataclasses.replace(res, status=got, x=x_p, bound=value, objective=value, nodes=0)
                else:
                    session.set_objective({i: sign})
                    warm = None if best is None else _full_vector(self._work.stages, self._model()[1], best)
                    res = session.solve(time_limit=left, start=warm, mip_abs_gap=gap_tol)
                nodes += res.nodes
                solves += 1
                if res.status is SolverStatus.INFEASIBLE:
                    return self._bounded(
                        Finding.NO_PREIMAGE,
                        SolverStatus.INFEASIBLE,
                        lower,
                        upper,
                        reached,
                        exact,
                        nodes,
                        solves,
                        begin,
                    )
                if math.isfinite(res.bound):
                    value = sign * res.bound
                    lo_v, hi_v = _outward(np.array([value]), np.array([value]))
                    if col == 0:
                        lower[i] = max(lower[i], float(lo_v[0]))
                    else:
                        upper[i] = min(upper[i], float(hi_v[0]))
                if res.x is not None:
                    z = self._pulled(res.x[:k], anchor)
                    if z is None and self.binaries:
                        z, _ = self._point_from(res.x, objective=objective, deadline=deadline)
                    if z is not None:
                        better = reached[i, col] if not np.isnan(reached[i, col]) else z[i]
                        reached[i, col] = min(better, z[i]) if col == 0 else max(better, z[i])
                        best = z
                solved = res.status is SolverStatus.OPTIMAL and math.isfinite(res.bound)
                width = float(upper[i] - lower[i])
                closed = not np.isnan(reached[i, col]) and abs(reached[i, col] - sign * res.bound) <= (
                    CLOSE_RTOL * width + 1e-12
                )
                if solved and (what == "MILP" or closed or not self.binaries):
                    exact[i, col] = True
                    break
                if what == "MILP" and res.status is not SolverStatus.OPTIMAL:
                    status = res.status if res.status is not SolverStatus.UNKNOWN else SolverStatus.NUMERICAL
        if best is None and self._best is not None:
            best, _ = self._accept(self._best)
        if best is not None:
            # values reached on the piece of a known latent, for the sides still without one
            for i, col in jobs:
                if not np.isnan(reached[i, col]) or time.perf_counter() >= deadline:
                    continue
                objective = np.zeros(k)
                objective[i] = 1.0 if col == 0 else -1.0
                z = self.repair(
                    best, objective=objective, time_limit=max(deadline - time.perf_counter(), 0.05)
                )
                if z is not None:
                    reached[i, col] = z[i]
            reached[:, 0] = np.fmin(reached[:, 0], best)
            reached[:, 1] = np.fmax(reached[:, 1], best)
        lower = np.minimum(lower, np.where(np.isnan(reached[:, 0]), lower, reached[:, 0]))
        upper = np.maximum(upper, np.where(np.isnan(reached[:, 1]), upper, reached[:, 1]))
        return self._bounded(Finding.BOUNDED, status, lower, upper, reached, exact, nodes, solves, begin)

    def _pulled(self, z: np.ndarray, best: np.ndarray | None) -> np.ndarray | None:
        """A re-checked latent of the set on the segment from ``best`` (a latent of the set) to a
        solver's point ``z``, as near ``z`` as a few steps find; None when none of them fits.

        The solver's optimum sits on the band's edge, where float64 rounding decides the re-check; a
        point a little way back toward ``best`` fits and still reaches almost as far."""
        for t in PULL_STEPS:
            cand = z if best is None or t == 1.0 else best + t * (z - best)
            got, _ = self._accept(cand)
            if got is not None:
                return got
            if best is None:
                return None
        return None

    def _bounded(
        self,
        finding: Finding,
        status: SolverStatus,
        lower: np.ndarray,
        upper: np.ndarray,
        reached: np.ndarray,
        exact: np.ndarray,
        nodes: int,
        solves: int,
        begin: float,
    ) -> BoundResult:
        box = self.box
        span = 1e-6 * (1.0 + np.abs(box.assumed_upper - box.assumed_lower))
        at_box = np.stack(
            [
                box.assumed & (lower <= box.assumed_lower + span),
                box.assumed & (upper >= box.assumed_upper - span),
            ],
            axis=1,
        )
        if finding is Finding.BOUNDED and at_box.all():
            finding = Finding.UNDECIDED
        if finding is Finding.BOUNDED:
            width = float(np.max(upper - lower))
            message = (
                f"every latent with |G(z) - y| <= s lies in the reported box (largest width {width:.3g}); "
                f"{int(exact.sum())} of {exact.size} sides solved to optimality"
                + (f", {int(at_box.sum())} sides are the assumed box" if at_box.any() else "")
                + f"; holds for {box.describe()}"
            )
        elif finding is Finding.NO_PREIMAGE:
            message = "no latent in the box reproduces the observation within the band"
        else:
            message = f"undecided: stopped ({status.value}) before any bound tighter than the assumed box was proved"
        return BoundResult(
            finding=finding,
            status=status,
            lower=lower,
            upper=upper,
            lower_reached=reached[:, 0].copy(),
            upper_reached=reached[:, 1].copy(),
            exact=exact,
            at_box=at_box,
            slack=self.spec.slack.copy(),
            global_claim=box.implied or (finding is Finding.NO_PREIMAGE and self.tightening.global_claim),
            box=box,
            nodes=nodes,
            seconds=time.perf_counter() - begin,
            solves=solves,
            message=message,
        )


def find(spec: PreimageSpec, *, time_limit: float = 20.0, start: np.ndarray | None = None) -> FindResult:
    """:func:`build` (half the time at most) then :meth:`MilpEngine.find`."""
    begin = time.perf_counter()
    engine = build(spec, time_limit=0.5 * time_limit)
    return engine.find(time_limit=max(time_limit - (time.perf_counter() - begin), 0.0), start=start)


def certify(
    spec: PreimageSpec, z_hat: np.ndarray, delta: float, *, time_limit: float = 30.0
) -> CertifyResult:
    """:func:`build` (half the time at most) then :meth:`MilpEngine.certify`."""
    begin = time.perf_counter()
    engine = build(spec, time_limit=0.5 * time_limit)
    return engine.certify(z_hat, delta, time_limit=max(time_limit - (time.perf_counter() - begin), 0.0))


def bound(spec: PreimageSpec, *, time_limit: float = 30.0, start: np.ndarray | None = None) -> BoundResult:
    """:func:`build` (half the time at most) then :meth:`MilpEngine.bound`."""
    begin = time.perf_counter()
    engine = build(spec, time_limit=0.5 * time_limit)
    return engine.bound(time_limit=max(time_limit - (time.perf_counter() - begin), 0.0), start=start)
