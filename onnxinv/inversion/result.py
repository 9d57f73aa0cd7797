"""What an inversion returns: per-layer records, the verdict with its evidence, and batches of results.

Everything here is plain data (no solver imports), so results pickle cheaply between worker processes
and turn into JSON with :meth:`InversionResult.to_dict`. The verdict types and their contract live in
:mod:`onnxinv.inversion.verdict`.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxinv.inversion.verdict import NO_EVIDENCE, Evidence, FitCheck, Reason, Verdict


class SolverStatus(str, enum.Enum):
    """How a layer's (or an LP's) solve ended. Only ``OPTIMAL`` counts as success.

    ``OPTIMAL`` also covers least-squares solves that ran to completion with acceptable conditioning.
    ``NUMERICAL`` covers a solver's numerical failure and a reported optimum that failed onnxinv's own
    re-check of the constraints. ``NOT_RUN`` marks a layer that was never reached.
    """

    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    INFEASIBLE_OR_UNBOUNDED = "infeasible or unbounded"
    TIME_LIMIT = "time limit"
    ITERATION_LIMIT = "iteration limit"
    NUMERICAL = "numerical trouble"
    UNKNOWN = "unknown"
    NOT_RUN = "not run"

    @property
    def ok(self) -> bool:
        return self is SolverStatus.OPTIMAL


@dataclass(frozen=True)
class LayerStep:
    """What happened when one layer was inverted.

    Attributes
    ----------
    layer : index of the layer (0 is fed by z)
    activation : the layer's activation, e.g. ``"relu"`` or ``"leaky_relu(0.2)"``
    active_rows : rows used as equalities (two-sided rows in the noisy methods)
    observed_rows : rows that entered the layer's system (masked-out rows excluded)
    unknowns : the layer's input size
    rank : rank of the active system ``W_I``
    preimage_dim : dimension of the set of inputs mapping to the layer's (estimated) output;
        0 means a single point. See :func:`onnxinv.inversion.linear.preimage_dimension`.
    identifiable : ``preimage_dim == 0`` and the solve succeeded
    status : how the layer's solve ended
    residual : ``||act(W u + b) - y||_inf / ||y||_inf`` on the observed rows, for the returned ``u``
    seconds : wall time spent on this layer
    message : one sentence for people: what was done and, on failure, why
    certificate : how uniqueness (or its absence) was established, e.g. ``"full column rank"``
    epsilon : the final noise threshold of the noisy methods (``None`` otherwise)
    """

    layer: int
    activation: str
    active_rows: int
    observed_rows: int
    unknowns: int
    rank: int
    preimage_dim: int
    identifiable: bool
    status: SolverStatus
    residual: float
    seconds: float
    message: str = ""
    certificate: str = ""
    epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "activation": self.activation,
            "active_rows": self.active_rows,
            "observed_rows": self.observed_rows,
            "unknowns": self.unknowns,
            "rank": self.rank,
            "preimage_dim": self.preimage_dim,
            "identifiable": self.identifiable,
            "status": self.status.value,
            "residual": _json_float(self.residual),
            "seconds": self.seconds,
            "message": self.message,
            "certificate": self.certificate,
            "epsilon": _json_float(self.epsilon),
        }


@dataclass(frozen=True)
class Attempt:
    """One method tried by ``method="auto"`` and the relative residual it reached (float64 forward pass)."""

    method: str
    residual: float
    verdict_hint: str = ""


@dataclass(frozen=True, eq=False)
class InversionResult:
    """The inversion of one observation.

    Attributes
    ----------
    z : (k,) float64 latent, flat (:meth:`model_z` gives it in the model's own input shape and dtype)
    verdict : see :class:`~onnxinv.inversion.verdict.Verdict` (the contract)
    reason : stable code of why the verdict was given
    evidence : what backs the verdict (kind, summary, numbers, witness, radius, ...)
    fit : the onnxruntime check of ``G(z)`` against the observation
    reconstruction : ``G(z)`` from onnxruntime, (n,) float64 (all entries, observed or not)
    method : the method that produced ``z`` (for ``"auto"``, the one that was kept)
    steps : one :class:`LayerStep` per layer, layer 0 first: how the method inverted each layer
    analysis : the analysis of every layer at ``z``'s own hidden values (active rows, rank, preimage
        dimension), when the evidence needed it: ``z`` came from a method whose steps are not a
        certificate, or was refined on the whole network; empty otherwise
    seconds : wall time for this observation (solve, refine, verification, evidence)
    message : one paragraph explaining the verdict
    noise : the noise level assumed (None: clean); ``noise_model`` its kind; ``noise_source`` where it
        came from (``"given"``, ``"quantisation"``, ``"estimate"``)
    noise_estimate : the noise level Algorithm 1 needed when none was given (``method="linf"``)
    latent_std : per-coordinate standard deviations of a least-squares latent, ``σ²(JᵀJ + λI)⁻¹``
        (``method="lsq"``; a Laplace approximation, not a bound), else None
    observed : number of observed entries
    requested : the method asked for
    attempts : methods tried by ``"auto"``, in order
    considered : every piece of evidence gathered (also what was tried and did not settle anything)
    refined : ``z`` came from the whole-network refinement of the method's estimate
    latent_shape, latent_dtype : the model's input shape for one latent and its dtype
    """

    z: np.ndarray
    verdict: Verdict
    reason: Reason
    fit: FitCheck
    method: str
    steps: tuple[LayerStep, ...]
    seconds: float
    message: str
    evidence: Evidence = NO_EVIDENCE
    analysis: tuple[LayerStep, ...] = ()
    reconstruction: np.ndarray | None = None
    noise: float | None = None
    noise_model: str | None = None
    noise_source: str | None = None
    noise_estimate: float | None = None
    latent_std: np.ndarray | None = None
    observed: int = 0
    requested: str = ""
    attempts: tuple[Attempt, ...] = ()
    considered: tuple[Evidence, ...] = ()
    refined: bool = False
    latent_shape: tuple[int, ...] = ()
    latent_dtype: str = "float32"

    @property
    def residual_rel_l2(self) -> float:
        """``||G(z) - x|| / ||x||`` on the observed entries (onnxruntime)."""
        return self.fit.rel_l2

    @property
    def residual_linf(self) -> float:
        """``max |G(z) - x|`` on the observed entries (onnxruntime)."""
        return self.fit.linf

    @property
    def reproduces(self) -> bool:
        """``G(z)`` matches the observation within :attr:`tolerance` (onnxruntime)."""
        return self.fit.reproduces

    @property
    def tolerance(self) -> float:
        return self.fit.tolerance

    @property
    def best_residual(self) -> float:
        """The relative l2 residual reached (the quantity reported for ``not found``)."""
        return self.fit.rel_l2

    @property
    def witness(self) -> np.ndarray | None:
        """A second latent reproducing the observation (``not unique``), else None."""
        return self.evidence.witness

    @property
    def radius(self) -> float | None:
        """Noisy ``unique``: every latent fitting within the noise is this close to ``z`` (max abs)."""
        return self.evidence.radius

    @property
    def layer(self) -> int | None:
        """The layer the evidence concerns (e.g. the last layer of a ``no preimage`` proof), if any."""
        return self.evidence.layer

    def model_z(self) -> np.ndarray:
        """``z`` in the model's own input shape (without the batch dim) and dtype."""
        shape = self.latent_shape or (self.z.size,)
        return np.asarray(self.z, dtype=self.latent_dtype).reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists and plain numbers; non-finite floats become None)."""
        return {
            "verdict": self.verdict.value,
            "reason": self.reason.value,
            "success": self.verdict.success,
            "method": self.method,
            "requested": self.requested,
            "z": [float(v) for v in self.z],
            "residual_rel_l2": _json_float(self.fit.rel_l2),
            "residual_linf": _json_float(self.fit.linf),
            "reproduces": self.fit.reproduces,
            "tolerance": _json_float(self.fit.tolerance),
            "fit": self.fit.to_dict(),
            "evidence": self.evidence.to_dict(),
            "considered": [e.to_dict() for e in self.considered],
            "noise": self.noise,
            "noise_model": self.noise_model,
            "noise_source": self.noise_source,
            "noise_estimate": _json_float(self.noise_estimate),
            "latent_std": None if self.latent_std is None else [float(v) for v in self.latent_std],
            "observed": self.observed,
            "refined": self.refined,
            "seconds": self.seconds,
            "message": self.message,
            "steps": [s.to_dict() for s in self.steps],
            "analysis": [s.to_dict() for s in self.analysis],
            "attempts": [
                {"method": a.method, "residual": _json_float(a.residual), "note": a.verdict_hint}
                for a in self.attempts
            ],
        }


@dataclass(frozen=True, eq=False)
class BatchInversionResult:
    """The inversions of a batch of observations, in input order.

    Iterable and indexable like a sequence of :class:`InversionResult`.
    """

    results: tuple[InversionResult, ...]
    seconds: float
    workers: int
    _z: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        results = tuple(self.results)
        object.__setattr__(self, "results", results)
        z = np.stack([r.z for r in results]) if results else np.zeros((0, 0))
        z.setflags(write=False)
        object.__setattr__(self, "_z", z)

    @property
    def z(self) -> np.ndarray:
        """(N, k) latents."""
        return self._z

    def model_z(self) -> np.ndarray:
        """The latents in the model's own input shape and dtype: ``(N, *latent_shape)``."""
        if not self.results:
            return self._z
        first = self.results[0]
        shape = first.latent_shape or (self._z.shape[1],)
        return np.asarray(self._z, dtype=first.latent_dtype).reshape((len(self.results), *shape))

    @property
    def reconstructions(self) -> np.ndarray:
        """(N, n) ``G(z)`` from onnxruntime."""
        return np.stack([r.reconstruction for r in self.results if r.reconstruction is not None])

    @property
    def verdicts(self) -> list[Verdict]:
        return [r.verdict for r in self.results]

    @property
    def counts(self) -> dict[str, int]:
        """How many observations got each verdict."""
        counter = Counter(r.verdict.value for r in self.results)
        return {v.value: counter.get(v.value, 0) for v in Verdict}

    @property
    def residuals(self) -> np.ndarray:
        """(N,) relative l2 residuals (onnxruntime)."""
        return np.array([r.residual_rel_l2 for r in self.results])

    @property
    def solve_seconds(self) -> float:
        """Sum of the per-observation times (compare with :attr:`seconds`, the wall time)."""
        return float(sum(r.seconds for r in self.results))

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[InversionResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> InversionResult:
        return self.results[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": len(self.results),
            "success": all(r.verdict.success for r in self.results),
            "verdicts": self.counts,
            "seconds": self.seconds,
            "workers": self.workers,
            "results": [r.to_dict() for r in self.results],
        }


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
