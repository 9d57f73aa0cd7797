"""What an inversion returns: per-layer records, the verdict, and batches of results.

Everything here is plain data (no solver imports), so results pickle cheaply between worker processes
and turn into JSON with :meth:`InversionResult.to_dict`.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Verdict(str, enum.Enum):
    """The answer to "which latent explains this observation, and is it the only one?".

    * ``UNIQUE``: a latent reproducing the observation was found, and every layer was identifiable at it
      (the layer's preimage of its output is a single point), so no other latent gives the same output.
    * ``NOT_UNIQUE``: some layer's preimage has dimension > 0. :attr:`InversionResult.layer` names the
      first such layer from the input side (layer 0 is the one fed by z) and
      :attr:`InversionResult.preimage_dim` its dimension. ``z`` is still returned; check
      :attr:`InversionResult.reproduces` to see whether it reproduces the observation.
    * ``NOT_FOUND``: no latent reproducing the observation within tolerance was found;
      :attr:`InversionResult.residual_rel_l2` is the best residual reached.
    """

    UNIQUE = "unique"
    NOT_UNIQUE = "not unique"
    NOT_FOUND = "not found"


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
    z : (k,) float64 latent
    method : the method that produced ``z`` (for ``"auto"``, the one that was kept)
    verdict : see :class:`Verdict`
    residual_rel_l2 : ``||G(z) - x|| / ||x||`` on the observed entries, with ``G(z)`` computed by
        onnxruntime from the model itself
    residual_linf : ``max |G(z) - x|`` on the observed entries (onnxruntime)
    steps : one :class:`LayerStep` per layer, layer 0 first
    seconds : wall time for this observation (solve and verification)
    message : one paragraph explaining the verdict
    layer, preimage_dim : for ``NOT_UNIQUE``: the first layer from the input side whose preimage has
        dimension > 0, and that dimension
    reproduces : ``G(z)`` matches the observation within :attr:`tolerance`
    tolerance : the residual accepted as a match (relative l2 for clean observations; for noisy ones
        the root-mean-square residual must stay below ``noise_factor * noise`` plus that)
    observed : number of observed entries
    noise : the noise level the inversion assumed (``None`` for clean observations)
    requested : the method asked for (``"auto"`` or a method name)
    attempts : methods tried by ``"auto"``, in order
    """

    z: np.ndarray
    method: str
    verdict: Verdict
    residual_rel_l2: float
    residual_linf: float
    steps: tuple[LayerStep, ...]
    seconds: float
    message: str
    layer: int | None = None
    preimage_dim: int | None = None
    reproduces: bool = False
    tolerance: float = 0.0
    observed: int = 0
    noise: float | None = None
    requested: str = ""
    attempts: tuple[Attempt, ...] = ()

    @property
    def best_residual(self) -> float:
        """The relative l2 residual reached (the quantity reported for ``NOT_FOUND``)."""
        return self.residual_rel_l2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists and plain numbers; non-finite floats become None)."""
        return {
            "verdict": self.verdict.value,
            "method": self.method,
            "requested": self.requested,
            "z": [float(v) for v in self.z],
            "residual_rel_l2": _json_float(self.residual_rel_l2),
            "residual_linf": _json_float(self.residual_linf),
            "reproduces": self.reproduces,
            "tolerance": self.tolerance,
            "layer": self.layer,
            "preimage_dim": self.preimage_dim,
            "observed": self.observed,
            "noise": self.noise,
            "seconds": self.seconds,
            "message": self.message,
            "steps": [s.to_dict() for s in self.steps],
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
