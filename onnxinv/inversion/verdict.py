"""The verdict contract: what onnxinv may claim about an inversion, and the evidence each claim needs.

Problem
-------
Given a generator ``G : R^k -> R^n`` and an observation ``x`` (possibly masked: only the entries in
``M`` are observed), the question is the preimage set

.. math::

    P(x) = \\{ z \\in R^k : \\| M \\odot (G(z) - x) \\| \\le \\text{tol} \\}
    \\qquad\\text{(clean)}, \\qquad
    P_\\varepsilon(x) = \\{ z : \\| M \\odot (G(z) - x) \\|_\\infty \\le \\varepsilon \\}
    \\qquad\\text{(noise } \\|e\\|_\\infty \\le \\varepsilon\\text{)}.

An inversion returns one ``z`` and a verdict about ``P``. Each verdict is allowed only with the
evidence below; the function :func:`decide` is the one place that turns evidence into a verdict, and
:func:`render` the one place that writes the sentence for people.

Verdicts
--------
``unique``
    ``z`` reproduces ``x`` (checked through onnxruntime) **and** ``P`` is proved to be ``{z}`` (up to
    the stated radius). Proofs: Theorem 2 of [1]_ at every layer (the active rows of each layer have
    full column rank, so each layer's input is the unique solution of its active system:
    ``evidence.kind == "layerwise"``), or a whole-network certificate (``"milp"``: no point of ``P``
    inside the latent box is farther than δ from ``z``). For noisy observations "unique" means a
    radius ``r`` such that every ``z' ∈ P_ε`` has ``||z' - z||_∞ <= r``: from the stability argument
    of Theorem 3 of [1]_ (``"stability"``, see :func:`onnxinv.inversion.identifiability.stability_radius`)
    or from the whole-network bounds (``"milp-bounds"``).
``not unique``
    ``z`` reproduces ``x`` **and** a second latent ``z'`` with ``||z' - z|| >= δ`` reproduces it too,
    checked through onnxruntime (``"witness"``; ``evidence.witness`` holds ``z'``), possibly found as
    ``z + t v`` along a direction ``v`` with ``W_0 v = 0`` on layer 0's active rows
    (``"null-direction"``; ``evidence.direction`` and ``evidence.step`` hold ``v`` and ``t``). No
    witness, no "not unique".
``fits``
    ``z`` reproduces ``x`` (within the noise for noisy observations) but neither a proof of uniqueness
    nor a witness was found. A valid preimage; its uniqueness is not established either way.
``no preimage``
    proved: no latent reproduces ``x``. Proofs: the last layer's linear program, with every row widened
    by the tolerance, is infeasible (``"layer-lp"``: no input of the last layer, hence no latent, maps
    within the tolerance of the observation), or the whole-network program is infeasible
    (``"milp-infeasible"``, inside the latent box).
``not found``
    nothing reproduces ``x`` and nothing is proved. The best ``z`` and its residual are still returned.

Exit code 0 (``Verdict.success``) only for ``unique``, ``not unique`` and ``fits``: only when
onnxruntime confirmed that ``z`` reproduces the observation.

Reason codes (:class:`Reason`) are stable identifiers of *why* a verdict was given; the messages may
be reworded.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019 (Theorem 2: layer-wise uniqueness from full column rank of the active rows;
   Theorem 3: stability of the l_inf inversion under bounded noise).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Decision",
    "Evidence",
    "EvidenceKind",
    "FitCheck",
    "Reason",
    "Verdict",
    "decide",
    "render",
]


class Verdict(str, enum.Enum):
    """The answer to "which latent explains this observation, and is it the only one?" (module docstring)."""

    UNIQUE = "unique"
    NOT_UNIQUE = "not unique"
    FITS = "fits"
    NO_PREIMAGE = "no preimage"
    NOT_FOUND = "not found"

    @property
    def success(self) -> bool:
        """True when onnxruntime confirmed that ``z`` reproduces the observation (exit code 0)."""
        return self in (Verdict.UNIQUE, Verdict.NOT_UNIQUE, Verdict.FITS)


class EvidenceKind(str, enum.Enum):
    """What backs a verdict (module docstring)."""

    LAYERWISE = "layerwise"  # Theorem 2 at every layer
    MILP = "milp"  # whole-network certificate
    STABILITY = "stability"  # noisy radius from the layer-wise stability argument
    MILP_BOUNDS = "milp-bounds"  # noisy radius from the whole-network bounds
    WITNESS = "witness"  # a second latent reproducing x
    NULL_DIRECTION = "null-direction"  # z + t v reproduces x, W_0 v = 0 on the active rows
    LAYER_LP = "layer-lp"  # the last layer's widened LP is infeasible
    MILP_INFEASIBLE = "milp-infeasible"  # the whole-network program is infeasible
    NONE = "none"


class Reason(str, enum.Enum):
    """Stable codes for why a verdict was given."""

    CERTIFIED_LAYERWISE = "certified-layerwise"
    CERTIFIED_MILP = "certified-milp"
    STABLE_RADIUS = "stable-radius"
    BOUNDED_MILP = "bounded-milp"
    WITNESS = "witness"
    NULL_DIRECTION = "null-direction"
    UNDECIDED = "uniqueness-undecided"
    INFEASIBLE_LAYER = "infeasible-last-layer"
    INFEASIBLE_MILP = "infeasible-milp"
    NO_FIT = "no-fit"


@dataclass(frozen=True)
class FitCheck:
    """Whether ``G(z)`` (onnxruntime) reproduces the observation, and how that was judged.

    Attributes
    ----------
    reproduces : the residual is within :attr:`tolerance`
    rel_l2, linf, rms : ``||r|| / ||x||``, ``max |r|``, ``||r|| / sqrt(m)`` of ``r = M ⊙ (G(z) - x)``
    tolerance : the bound the residual was compared with
    criterion : ``"relative l2"`` (clean), ``"max abs"`` (bounded noise), ``"RMS"`` (Gaussian noise)
    noise : the noise level assumed (None: clean)
    noise_model : ``"bounded"``, ``"gaussian"`` or None
    """

    reproduces: bool
    rel_l2: float
    linf: float
    rms: float
    tolerance: float
    criterion: str
    noise: float | None = None
    noise_model: str | None = None

    def describe(self) -> str:
        return (
            f"residual {self.rel_l2:.3g} relative l2, {self.linf:.3g} max abs through onnxruntime "
            f"({self.criterion} tolerance {self.tolerance:.3g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reproduces": self.reproduces,
            "residual_rel_l2": _json_float(self.rel_l2),
            "residual_linf": _json_float(self.linf),
            "residual_rms": _json_float(self.rms),
            "tolerance": _json_float(self.tolerance),
            "criterion": self.criterion,
            "noise": self.noise,
            "noise_model": self.noise_model,
        }


@dataclass(frozen=True, eq=False)
class Evidence:
    """One piece of evidence about the preimage set (module docstring).

    Attributes
    ----------
    kind : what it is
    summary : one sentence for people: what was shown and how
    numbers : the figures behind it (layer, ranks, widening, radius, box, solver status, ...)
    witness : a second latent reproducing the observation (``"witness"`` / ``"null-direction"``)
    witness_residual : its relative l2 residual through onnxruntime
    distance : ``||witness - z||_2``
    direction, step : ``v`` and ``t`` of a null direction (``witness = z + t v``)
    radius : noisy "unique": every fitting latent is within this ``||.||_∞`` distance of ``z``
    bounds : ``(lower, upper)`` per latent coordinate over the fitting set (``"milp-bounds"``)
    box : half-width of the latent box a whole-network result holds in (None: unrestricted)
    layer : the layer concerned (``"layer-lp"``), if any
    """

    kind: EvidenceKind
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    witness: np.ndarray | None = None
    witness_residual: float | None = None
    distance: float | None = None
    direction: np.ndarray | None = None
    step: float | None = None
    radius: float | None = None
    bounds: tuple[np.ndarray, np.ndarray] | None = None
    box: float | None = None
    layer: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "summary": self.summary,
            "numbers": {k: _jsonable(v) for k, v in self.numbers.items()},
            "witness": None if self.witness is None else [float(v) for v in self.witness],
            "witness_residual": _json_float(self.witness_residual),
            "distance": _json_float(self.distance),
            "direction": None if self.direction is None else [float(v) for v in self.direction],
            "step": _json_float(self.step),
            "radius": _json_float(self.radius),
            "bounds": None
            if self.bounds is None
            else {"lower": [float(v) for v in self.bounds[0]], "upper": [float(v) for v in self.bounds[1]]},
            "box": _json_float(self.box),
            "layer": self.layer,
        }


NO_EVIDENCE = Evidence(EvidenceKind.NONE, "")

_KINDS = tuple(EvidenceKind)
_CERTIFICATES = (EvidenceKind.LAYERWISE, EvidenceKind.MILP)
_RADII = (EvidenceKind.STABILITY, EvidenceKind.MILP_BOUNDS)
_WITNESSES = (EvidenceKind.WITNESS, EvidenceKind.NULL_DIRECTION)
_REFUTATIONS = (EvidenceKind.LAYER_LP, EvidenceKind.MILP_INFEASIBLE)


@dataclass(frozen=True, eq=False)
class Decision:
    """What :func:`decide` concluded: the verdict, why (a stable code), and the evidence behind it."""

    verdict: Verdict
    reason: Reason
    evidence: Evidence
    message: str
    considered: tuple[Evidence, ...] = ()


def decide(fit: FitCheck, evidence: tuple[Evidence, ...] = (), *, noisy: bool = False) -> Decision:
    """The contract of the module docstring, as one rule.

    ``evidence`` may hold any mix of certificates, radii, witnesses and refutations that the pipeline
    gathered; the rule picks what the contract allows and ignores the rest (it is kept in
    :attr:`Decision.considered`). A refutation contradicted by a reproducing ``z`` is ignored (the
    onnxruntime check wins) and said so.
    """
    # the first evidence of each kind (filled from the back, so that the first one stays)
    found: dict[EvidenceKind, Evidence | None] = dict.fromkeys(_KINDS)
    for item in reversed(evidence):
        found[item.kind] = item
    if fit.reproduces:
        if noisy:
            radius = _first(found, _RADII)
            if radius is not None:
                reason = (
                    Reason.STABLE_RADIUS if radius.kind is EvidenceKind.STABILITY else Reason.BOUNDED_MILP
                )
                return _decision(Verdict.UNIQUE, reason, radius, fit, evidence)
            return _decision(Verdict.FITS, Reason.UNDECIDED, NO_EVIDENCE, fit, evidence)
        cert = _first(found, _CERTIFICATES)
        if cert is not None:
            reason = (
                Reason.CERTIFIED_LAYERWISE if cert.kind is EvidenceKind.LAYERWISE else Reason.CERTIFIED_MILP
            )
            return _decision(Verdict.UNIQUE, reason, cert, fit, evidence)
        witness = _first(found, _WITNESSES)
        if witness is not None:
            reason = Reason.WITNESS if witness.kind is EvidenceKind.WITNESS else Reason.NULL_DIRECTION
            return _decision(Verdict.NOT_UNIQUE, reason, witness, fit, evidence)
        return _decision(Verdict.FITS, Reason.UNDECIDED, NO_EVIDENCE, fit, evidence)
    refutation = _first(found, _REFUTATIONS)
    if refutation is not None:
        reason = (
            Reason.INFEASIBLE_LAYER if refutation.kind is EvidenceKind.LAYER_LP else Reason.INFEASIBLE_MILP
        )
        return _decision(Verdict.NO_PREIMAGE, reason, refutation, fit, evidence)
    return _decision(Verdict.NOT_FOUND, Reason.NO_FIT, NO_EVIDENCE, fit, evidence)


def _first(found: dict[EvidenceKind, Evidence | None], kinds: tuple[EvidenceKind, ...]) -> Evidence | None:
    return next((found[k] for k in kinds if found[k] is not None), None)


def _decision(
    verdict: Verdict, reason: Reason, evidence: Evidence, fit: FitCheck, considered: tuple[Evidence, ...]
) -> Decision:
    return Decision(verdict, reason, evidence, render(verdict, reason, evidence, fit, considered), considered)


def render(
    verdict: Verdict, reason: Reason, evidence: Evidence, fit: FitCheck, considered: tuple[Evidence, ...] = ()
) -> str:
    """The one paragraph that explains a verdict (the only place verdict sentences are written)."""
    fit_text = fit.describe()
    if verdict is Verdict.UNIQUE:
        if reason is Reason.CERTIFIED_LAYERWISE or reason is Reason.CERTIFIED_MILP:
            head = f"Unique. z reproduces the observation ({fit_text}), and {evidence.summary}"
        else:
            head = (
                f"Unique within radius {evidence.radius:.3g} (max abs, latent units). z fits the observation "
                f"within the noise ({fit_text}), and {evidence.summary}"
            )
    elif verdict is Verdict.NOT_UNIQUE:
        head = (
            f"Not unique. z reproduces the observation ({fit_text}), and so does another latent: "
            f"{evidence.summary}"
        )
    elif verdict is Verdict.FITS:
        what = "within the noise" if fit.noise is not None else "within tolerance"
        tried = [e.summary for e in considered if e.kind is EvidenceKind.NONE and e.summary]
        head = (
            f"Fits. z reproduces the observation {what} ({fit_text}); whether it is the only latent that "
            "does was neither proved nor refuted"
        )
        if tried:
            head += f" ({'; '.join(tried)})"
    elif verdict is Verdict.NO_PREIMAGE:
        head = f"No preimage. {evidence.summary} The best z found: {fit_text}"
    else:
        tried = [e.summary for e in considered if e.kind is EvidenceKind.NONE and e.summary]
        head = (
            f"Not found. The best z does not reproduce the observation ({fit_text}), and nothing was proved"
        )
        if tried:
            head += f" ({'; '.join(tried)})"
    head = head.rstrip()
    return head if head.endswith(".") else head + "."


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_float(float(value))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
