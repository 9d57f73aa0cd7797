"""``audit``: can a generator's latent codes be recovered, and which layer is to blame if not?

The report is data: per-layer statistics (:class:`LayerAudit`), findings with a stable code
(:class:`Finding`), the verdicts of a real inversion of every sample, and a one-line verdict. Its
:meth:`AuditReport.describe` is the human view, :meth:`AuditReport.to_dict` the JSON one.

What is checked
---------------
Write a layer as ``h_i = act(W_i h_{i-1} + b_i)`` with ``W_i`` of shape ``(n_i, n_{i-1})`` and let ``I``
be its active rows at a point: for ReLU the rows with ``h_i > tau`` (``tau = 1e-9 max|h_i|``); for
LeakyReLU, identity, tanh and sigmoid every row.

* **Everywhere** (from the weights alone): a LeakyReLU (slope > 0), identity, tanh or sigmoid layer
  with ``rank(W) = n_{i-1}`` is injective, so invertible at every output it can produce; with
  ``rank(W) < n_{i-1}`` it is never injective. A ReLU layer with fewer outputs than inputs has
  ``|I| < n_{i-1}`` at every point, so it is never identifiable by the active-rows test (and not
  injective). A ReLU layer with ``rank(W) < n_{i-1}`` is never identifiable either.
* **At sampled points** (latents from N(0, I), or the latents recovered from real observations):
  the number of active rows, and whether the layer is identifiable there, i.e. ``W_I`` has full
  column rank (Theorem 2 of [1]_: then its input is the unique solution of ``W_I u = y_I - b_I``).
  Two conditions of [2]_ for the sparse hidden codes of non-expanding layers: cardinality growth
  ``||h_i||_0 >= 2 ||h_{i-1}||_0``, and the mutual-coherence bound
  ``||h_{i-1}||_0 < (1 + 1/mu(W_{i,I})) / 2`` with ``mu`` the largest normalized inner product of
  two columns of the active submatrix (sufficient for the sparse code to be the unique sparsest one).
* **End to end**: every sample is inverted with ``onnxinv.inversion.invert`` (method ``exact``, refined
  on the whole network where it misses; for real observations ``auto``), under the verdict contract
  of :mod:`onnxinv.inversion.verdict`. Those verdicts, not the layer statistics, decide the audit:
  *invertible* only when every sample's latent is ``unique`` with a proof; *not invertible* only with
  a concrete pair ``z ≠ z'`` with ``G(z) = G(z')`` (a witness, checked through onnxruntime), which the
  report carries; otherwise *undecided*, with the shares of each verdict.
* **Whole network**: where a layer is not identifiable, the inversion's evidence stage runs the
  whole-network MILP of :mod:`onnxinv.inversion.milp` on each sample (networks it applies to, at most
  ``milp_time`` seconds per sample): a certificate that no other latent reproduces the sample's output
  (*certified invertible at the sampled points (MILP)*, as opposed to *layer-wise identifiable*), or a
  second latent with the same output (*not injective*, the pair re-checked through onnxruntime), or,
  when the network is not piecewise linear or too large, *MILP not applicable* with the reason.

Finding codes
-------------
``unsupported-node``, ``rank-deficient``, ``relu-contracting``, ``contracting`` (a layer of another
activation with fewer outputs than inputs), ``injective``, ``identifiable``,
``not-identifiable``, ``sparse-recovery``, ``inversion-unique``, ``inversion-not-unique``,
``inversion-fits``, ``inversion-not-found``, ``inversion-no-preimage``, and for the whole network
``layerwise-identifiable``, ``milp-certified``, ``not-injective`` (with the pair in its data),
``milp-not-applicable``, ``milp-undecided``. Codes are stable; messages may
be reworded.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [2] A. Aberdam, D. Simon, M. Elad, "When and How Can Deep Generative Models be Inverted?", 2020.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxinv.errors import InvalidArgumentError, UnsupportedModelError
from onnxinv.layers import Activation, Generator, Layer

if TYPE_CHECKING:  # the inversion package is imported on first use
    from onnxinv.inversion import InversionResult, Settings

__all__ = ["AuditReport", "AuditStatus", "Finding", "LayerAudit", "Severity", "audit"]

MILP_TIME = 20.0  # seconds of whole-network MILP per sample (as Settings.milp_time)
ACTIVE_TAU = 1e-9  # active threshold relative to max |h| (never 0: round-off leaves 1e-16 for zeros)
DEFAULT_SAMPLES = 100


class Severity(str, enum.Enum):
    """How much a finding matters for inversion."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class AuditStatus(str, enum.Enum):
    """The audit's overall answer."""

    INVERTIBLE = "invertible"  # a unique latent was proved at every sampled point
    NOT_INVERTIBLE = "not invertible"  # a concrete pair z != z' with G(z) = G(z') was found
    UNDECIDED = "undecided"  # neither: some samples were not certified, and no pair was found
    UNSUPPORTED = "unsupported graph"  # the model is not a chain of layers onnxinv reads


@dataclass(frozen=True)
class Finding:
    """One diagnostic: a stable ``code``, the layer and ONNX nodes concerned, and one sentence."""

    code: str
    severity: Severity
    message: str
    layer: int | None = None
    source_nodes: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # numbers behind the sentence

    def describe(self) -> str:
        where = ""
        if self.layer is not None:
            nodes = f": {', '.join(self.source_nodes)}" if self.source_nodes else ""
            where = f" (layer {self.layer}{nodes})"
        elif self.source_nodes:
            where = f" ({', '.join(self.source_nodes)})"
        return f"[{self.severity.value}] {self.code}{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "layer": self.layer,
            "source_nodes": list(self.source_nodes),
            "message": self.message,
            **({"data": self.data} if self.data else {}),
        }


@dataclass(frozen=True)
class LayerAudit:
    """Static facts and sampled behaviour of one layer.

    Attributes
    ----------
    index, in_features, out_features, expansion, activation, source_nodes : the layer
    rank : rank of the full weight matrix (an upper bound when ``rank_known`` is False)
    active_min, active_median : active rows over the samples (every row for non-ReLU layers)
    identifiable_share : share of samples where ``W_I`` has full column rank
    growth_share : share of samples with ``||h_i||_0 >= 2 ||h_{i-1}||_0``
    coherence_share : share of samples with ``||h_{i-1}||_0 < (1 + 1/mu(W_I)) / 2``
    coherence_median : median ``mu(W_I)`` over the samples
    """

    index: int
    in_features: int
    out_features: int
    expansion: float
    activation: str
    rank: int
    source_nodes: tuple[str, ...]
    active_min: int = 0
    active_median: float = 0.0
    identifiable_share: float = 0.0
    growth_share: float = 0.0
    coherence_share: float = 0.0
    coherence_median: float = float("nan")
    rank_known: bool = True  # False: a large sparse W whose rank was only bounded (no rank claim)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["source_nodes"] = list(self.source_nodes)
        if not np.isfinite(self.coherence_median):
            out["coherence_median"] = None
        return out


@dataclass(frozen=True, eq=False)
class AuditReport:
    """Everything :func:`audit` found. ``invertible`` is True only for :attr:`AuditStatus.INVERTIBLE`.

    Attributes
    ----------
    model : the model file (None for a generator built in code)
    status : see :class:`AuditStatus`
    verdict : the one-line answer
    layers : per-layer statistics (empty for an unsupported graph)
    findings : diagnostics, errors first
    samples : how many points were examined
    source : where the points came from, in words
    inversion_verdicts : count of each inversion verdict over the samples
    unique_share : share of samples whose latent was proved unique
    witness : a pair ``(z, z')`` with ``G(z) = G(z')`` (onnxruntime), when one was found
    evidence_kinds : how many samples' verdicts rest on each kind of evidence
    failing_layer : the first layer (from the input side) that is not identifiable at every sample
    latent_dim, output_dim : the generator's sizes (0 when unsupported)
    seed : seed of the sampled latents (None with real observations)
    seconds : wall time of the audit
    """

    model: str | None
    status: AuditStatus
    verdict: str
    layers: tuple[LayerAudit, ...] = ()
    findings: tuple[Finding, ...] = ()
    samples: int = 0
    source: str = ""
    inversion_verdicts: dict[str, int] = field(default_factory=dict)
    unique_share: float = 0.0
    witness: tuple[np.ndarray, np.ndarray] | None = None
    evidence_kinds: dict[str, int] = field(default_factory=dict)
    failing_layer: int | None = None
    latent_dim: int = 0
    output_dim: int = 0
    seed: int | None = None
    seconds: float = 0.0

    @property
    def invertible(self) -> bool:
        return self.status is AuditStatus.INVERTIBLE

    def findings_with(self, code: str) -> list[Finding]:
        return [f for f in self.findings if f.code == code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "status": self.status.value,
            "invertible": self.invertible,
            "verdict": self.verdict,
            "failing_layer": self.failing_layer,
            "latent_dim": self.latent_dim,
            "output_dim": self.output_dim,
            "samples": self.samples,
            "source": self.source,
            "seed": self.seed,
            "unique_share": self.unique_share,
            "inversion_verdicts": dict(self.inversion_verdicts),
            "evidence_kinds": dict(self.evidence_kinds),
            "witness": None
            if self.witness is None
            else {"z": [float(v) for v in self.witness[0]], "z_prime": [float(v) for v in self.witness[1]]},
            "layers": [layer.to_dict() for layer in self.layers],
            "findings": [f.to_dict() for f in self.findings],
            "seconds": self.seconds,
        }

    def describe(self) -> str:
        """The human report printed by ``onnxinv audit``."""
        from onnxinv.report import format_table

        lines = [f"audit of {self.model or '(generator built in code)'}", f"verdict: {self.verdict}"]
        if self.layers:
            lines += ["", f"layers (sampled at {self.samples} points: {self.source})"]
            rows = [
                (
                    la.index,
                    f"{la.in_features} -> {la.out_features}",
                    f"{la.expansion:.2f}x",
                    la.activation,
                    la.rank if la.rank_known else "?",
                    f"{la.active_min}/{la.active_median:g}",
                    _pct(la.identifiable_share),
                    _pct(la.growth_share),
                    _pct(la.coherence_share),
                    ", ".join(la.source_nodes) or "-",
                )
                for la in self.layers
            ]
            header = (
                "#",
                "in -> out",
                "expansion",
                "activation",
                "rank W",
                "active min/median",
                "identifiable",
                "growth x2",
                "coherence",
                "source nodes",
            )
            lines += format_table(header, rows)
            lines.append(
                "  identifiable: W_I has full column rank; growth x2: ||h_i||_0 >= 2 ||h_i-1||_0; "
                "coherence: ||h_i-1||_0 < (1 + 1/mu(W_I)) / 2"
            )
        if self.inversion_verdicts:
            counts = ", ".join(f"{n} {name}" for name, n in self.inversion_verdicts.items())
            lines += ["", f"inversion of each sample: {counts} ({_pct(self.unique_share)} proved unique)"]
        if self.witness is not None:
            z, z2 = self.witness
            lines.append(
                f"a pair with the same output: z = {_vec(z)}, z' = {_vec(z2)} (max-abs distance "
                f"{float(np.max(np.abs(z - z2))):.3g})"
            )
        if self.findings:
            lines += ["", "findings"]
            lines += [f"  {f.describe()}" for f in self.findings]
        lines += ["", f"{self.seconds:.2f} s"]
        return "\n".join(lines)


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def _vec(v: np.ndarray, shown: int = 4) -> str:
    head = ", ".join(f"{float(x):.3g}" for x in v[:shown])
    return f"[{head}{', ...' if v.size > shown else ''}] ({v.size} values)"


# --------------------------------------------------------------------------------------------------
# The audit


def audit(
    generator: Generator | str | os.PathLike[str],
    samples: int = DEFAULT_SAMPLES,
    observations: np.ndarray | str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    workers: int | None = None,
    executor: object = None,
    chunk_size: int | None = None,
    time_limit: float | None = None,
    milp_time: float = MILP_TIME,
    latent_box: float | None = None,
) -> AuditReport:
    """Audit whether ``generator``'s latents can be recovered from its outputs.

    Parameters
    ----------
    generator : a loaded generator, or the path of an ONNX file. A file whose graph onnxinv cannot
        read gives a report with status ``UNSUPPORTED`` listing every refused node (not an exception).
    samples : how many latents to draw from N(0, I) (ignored when ``observations`` is given)
    observations : real observations instead of sampled latents: an array (one observation or a batch
        (N, ...)) or a file (.npy / .npz / .png); they are inverted first (method ``auto``) and the
        layers are examined at the recovered latents.
    seed : seed of the sampled latents
    workers, executor, chunk_size : where the samples' inversions run, as for :func:`onnxinv.invert`
        (local processes, or any ``concurrent.futures.Executor`` / ``distributed.Client``); the report
        does not depend on them
    time_limit : seconds per inverted observation, as for :func:`onnxinv.invert` (default: its 60 s)
    milp_time : seconds the whole-network MILP may take per sample (certificate or witness where the
        layer-wise argument runs out; only on networks :func:`onnxinv.inversion.milp.applicability`
        accepts)
    latent_box : a stated assumption ``max |z_i| <= latent_box``: MILP certificates that hold inside
        that box count (and the findings say so); None: only claims about every latent count

    Returns
    -------
    AuditReport

    Raises
    ------
    ModelLoadError, SelfCheckError, OracleError : the model could not be read or run at all.
    ObservationError : ``observations`` has the wrong size or values.
    InvalidArgumentError : ``time_limit`` is not a positive finite number.
    """
    started = time.perf_counter()
    if time_limit is not None:
        from onnxinv.inversion.api import _positive

        time_limit = _positive(time_limit, "time_limit", "seconds per observation")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InvalidArgumentError(f"samples must be an integer of at least 1, got {samples!r}")
    if not isinstance(generator, Generator):
        from onnxinv.loader import load

        try:
            generator = load(generator)
        except UnsupportedModelError as exc:
            return _unsupported_report(str(generator), exc, time.perf_counter() - started)

    from onnxinv.inversion import Settings, invert

    settings = Settings(milp_time=milp_time, latent_box=latent_box)
    if observations is None:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((samples, generator.latent_dim))
        x = generator.run_onnx(z)  # the model itself produces the observations that are inverted
        method, source, used_seed = "exact", f"latents drawn from N(0, I), seed {seed}", seed
    else:
        x, source = _observation_rows(generator, observations)
        method, used_seed, z = "auto", None, None
    where = {"workers": workers, "executor": executor, "chunk_size": chunk_size}
    grams: dict[tuple[int, int], tuple[bytes, float]] = {}  # (result, layer) -> (packed rows, mu)
    if all(v is None for v in where.values()):
        results = _invert_local(generator, x, method, settings, time_limit, grams)
    else:
        results = _invert_all(invert, generator, x, method, where, settings, time_limit)
    examined = list(range(len(results)))  # the result behind each examined point
    if z is None:  # real observations: examine the layers at the recovered latents that reproduce them
        found = [k for k, r in enumerate(results) if r.verdict.success]
        examined = found or examined
        z = np.stack([results[k].z for k in examined])
        if found and len(found) < len(results):
            source += f"; layers examined at the {len(found)} latents found"
    count = x.shape[0]

    hidden = generator.hidden_values(z)
    kept = _grams_by_layer(grams, examined, len(generator.layers))
    layers = tuple(
        _layer_audit(i, layer, hidden[i], hidden[i + 1], kept[i]) for i, layer in enumerate(generator.layers)
    )
    verdicts = _count_verdicts(results)
    unique = verdicts.get("unique", 0)
    unique_share = unique / count
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r.evidence.kind.value] = kinds.get(r.evidence.kind.value, 0) + 1
    failing = next((la.index for la in layers if la.identifiable_share < 1.0), None)
    whole, witness = _whole_network_findings(generator, results, settings)
    if unique == count:
        status = AuditStatus.INVERTIBLE
    elif witness is not None:  # a pair onnxruntime confirmed
        status = AuditStatus.NOT_INVERTIBLE
    else:
        status = AuditStatus.UNDECIDED

    findings = _static_findings(generator, layers) + _sampled_findings(generator, layers, count)
    findings += _inversion_findings(verdicts, count, method, results, generator)
    findings += whole
    findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], -1 if f.layer is None else f.layer))
    verdict = _verdict_line(status, count, verdicts, failing, generator, layers, results)
    return AuditReport(
        model=generator.path,
        status=status,
        verdict=verdict,
        layers=layers,
        findings=tuple(findings),
        samples=count,
        source=source,
        inversion_verdicts=verdicts,
        unique_share=unique_share,
        witness=witness,
        evidence_kinds=kinds,
        failing_layer=None if status is AuditStatus.INVERTIBLE else failing,
        latent_dim=generator.latent_dim,
        output_dim=generator.output_dim,
        seed=used_seed,
        seconds=time.perf_counter() - started,
    )


_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def _unsupported_report(path: str, exc: UnsupportedModelError, seconds: float) -> AuditReport:
    problems = exc.problems
    if problems:
        findings = tuple(
            Finding(
                "unsupported-node",
                Severity.ERROR,
                "; ".join(p.reasons) + (f". Try: {p.hint}" if p.hint else ""),
                None,
                (f"{p.node} ({p.op}, opset {p.opset})" if p.op else p.node,),
            )
            for p in problems
        )
    else:
        findings = (Finding("unsupported-node", Severity.ERROR, str(exc)),)
    count = len(findings)
    return AuditReport(
        model=path,
        status=AuditStatus.UNSUPPORTED,
        verdict=(
            f"not invertible: unsupported graph ({count} node{'s' if count != 1 else ''} cannot be read as "
            "dense layers; see the findings)"
        ),
        findings=findings,
        seconds=seconds,
    )


def _observation_rows(
    generator: Generator, observations: np.ndarray | str | os.PathLike[str]
) -> tuple[np.ndarray, str]:
    from onnxinv.files import read_observations, split_batch

    if isinstance(observations, (str, os.PathLike)):
        obs = read_observations(observations, generator)
        return obs.values, f"real observations from {Path(observations)}, inverted first"
    rows, _ = split_batch(np.asarray(observations, dtype=np.float64), generator.output_dim, "audit")
    return rows, "real observations, inverted first"


def _invert_all(
    invert: Callable[..., Any],
    generator: Generator,
    x: np.ndarray,
    method: str,
    where: dict[str, Any] | None = None,
    settings: Settings | None = None,
    time_limit: float | None = None,
) -> list[InversionResult]:
    options: dict[str, Any] = {"settings": settings}
    if time_limit is not None:
        options["time_limit"] = time_limit
    if x.shape[0] == 1:
        return [invert(generator, x[0], method=method, **options)]
    return list(invert(generator, x, method=method, **options, **(where or {})).results)


def _invert_local(
    generator: Generator,
    x: np.ndarray,
    method: str,
    settings: Settings,
    time_limit: float | None,
    grams: dict[tuple[int, int], tuple[bytes, float]],
) -> list[InversionResult]:
    """The samples' inversions as :func:`onnxinv.invert` runs them without an executor, by its own
    pipeline (:func:`~onnxinv.inversion.api.solve_chunk`, so the same results), leaving in ``grams``,
    for ``(sample, layer)``, the active rows whose Gram matrix the fast path factored and accepted and
    its coherence (:class:`~onnxinv.inversion.fastexact.GramLog`), for :func:`_dense_layer`.

    Off the fast path's networks: :func:`_invert_all`. On them the first sample is a probe, as in
    ``invert``: the rest go to a local pool only if they would take long enough to pay for it (no
    Gram log from there), else to one more chunk in this process (one onnxruntime run for them all).
    """
    from onnxinv.inversion import api, fastexact, invert

    if not fastexact.generator_applies(generator):
        return _invert_all(invert, generator, x, method, None, settings, time_limit)
    cfg = api._settings(settings, tol=None, time_limit=time_limit, seed=None)
    count = x.shape[0]
    obs, noises, sources = api.prepare_inputs(generator, x[0] if count == 1 else x, None, None)

    def chunk(a: int, b: int) -> list[InversionResult]:
        log = fastexact.GramLog(_coherence_from_gram)
        mask = None if obs.mask is None else obs.mask[a:b]
        values = obs.values[a:b]
        args = (values, mask, noises[a:b], sources[a:b], method, cfg, obs.precision, "bounded", None)
        done = api.solve_chunk(generator, *args, gram_log=log)
        grams.update({(a + k, i): entry for (k, i), entry in log.entries.items()})
        return done

    results = chunk(0, 1)
    if count == 1:
        return results
    procs = max(1, min(os.cpu_count() or 1, count))
    if api.pool_pays(count - 1, results[0].seconds, procs):
        # slow samples: the rest on a local pool, as invert would (no Gram matrices from there)
        rest = invert(
            generator, x[1:], method=method, settings=cfg, workers=min(procs, count - 1), batch=True
        )
        return results + list(rest.results)  # type: ignore[union-attr]  # batch=True: a batch result
    return results + chunk(1, count)


def _grams_by_layer(
    grams: dict[tuple[int, int], tuple[bytes, float]], examined: list[int], layers: int
) -> list[dict[int, tuple]]:
    """Per layer: examined point -> (active rows, coherence) that the inversion of its sample left."""
    position = {k: j for j, k in enumerate(examined)}
    out: list[dict[int, tuple]] = [{} for _ in range(layers)]
    for (k, i), kept in grams.items():
        if k in position:
            out[i][position[k]] = kept
    return out


def _count_verdicts(results: list) -> dict[str, int]:
    from onnxinv.inversion import Verdict

    return {v.value: sum(r.verdict is v for r in results) for v in Verdict}


def _is_relu(layer: Layer) -> bool:
    return layer.activation is Activation.RELU or (
        layer.activation is Activation.LEAKY_RELU and bool(np.all(layer.slopes() == 0.0))
    )


# What one sample says about a layer, given its active rows: (identifiable there, coherence there).
_SampleTest = Callable[[np.ndarray, int], tuple[bool, float]]


def _layer_audit(
    index: int, layer: Layer, h_in: np.ndarray, h_out: np.ndarray, kept: dict[int, tuple] | None = None
) -> LayerAudit:
    """Statistics of one layer at the samples: ``h_in`` (N, n_in) its inputs, ``h_out`` (N, n_out) outputs.
    ``kept``: per sample, active rows its inversion factored, and their coherence (:func:`_dense_layer`).

    Ranks use the inversion's own numerical rank (singular values above ``RANK_RTOL`` times the largest),
    so "identifiable" here and in an inversion's layer steps mean the same thing. The thresholds,
    active rows and cardinalities are computed on the stacked samples at once (the same numbers row by
    row); the rank and coherence tests by :func:`_dense_layer` or, for a sparse weight, one sample at a
    time by :func:`_sparse_tests`.
    """
    n_in = layer.in_features
    relu = _is_relu(layer)
    h_in = np.atleast_2d(h_in)
    h_out = np.atleast_2d(h_out)
    tau_out = _taus(h_out)
    active = h_out > tau_out[:, None] if relu else np.ones(h_out.shape, dtype=bool)
    counts = np.count_nonzero(active, axis=1)
    nnz_prev = _nnz_rows(h_in)
    growth = _nnz_rows(h_out, tau_out) >= 2 * nnz_prev
    if layer.sparse:
        rank, rank_known, test = _sparse_tests(layer, relu)
        tested = [test(row, int(count)) for row, count in zip(active, counts)]
        ok = np.array([t[0] for t in tested], dtype=bool)
        mus = np.array([t[1] for t in tested], dtype=np.float64)
        identifiable = ok if relu else np.full(counts.shape, rank == n_in)
    else:
        rank, identifiable, mus = _dense_layer(layer, relu, active, counts, kept)
        rank_known = True
    with np.errstate(divide="ignore"):
        coherence_ok = (mus > 0) & (nnz_prev < (1.0 + 1.0 / np.where(mus > 0, mus, 1.0)) / 2.0)
    return LayerAudit(
        index=index,
        in_features=n_in,
        out_features=layer.out_features,
        expansion=layer.expansion,
        activation=layer.describe_activation(),
        rank=rank,
        source_nodes=layer.source_nodes,
        active_min=int(counts.min()),
        active_median=float(np.median(counts)),
        identifiable_share=float(np.mean(identifiable)),
        growth_share=float(np.mean(growth)),
        coherence_share=float(np.mean(coherence_ok)),
        coherence_median=float(np.median(mus)),
        rank_known=rank_known,
    )


def _dense_layer(
    layer: Layer, relu: bool, active: np.ndarray, counts: np.ndarray, kept: dict[int, tuple] | None = None
) -> tuple[int, np.ndarray, np.ndarray]:
    """``(rank(W), identifiable per sample, mu(W_I) per sample)`` of a dense layer.

    One Gram matrix ``W_IᵀW_I`` per distinct set of active rows serves the coherence and then, factored
    in place, the rank test (:func:`~onnxinv.inversion.linear.gram_full_rank`, the Cholesky route of the
    inversion's least squares; the singular values of ``W_I`` only where it does not show full rank).
    Without ReLU every row is active at every sample: one Gram matrix in all. ``rank(W)`` is ``n_in``
    as soon as some ``W_I`` has full column rank (its rows are rows of ``W``); the singular values of
    ``W`` are computed only when no sample shows it.

    ``kept`` (sample -> packed active rows, coherence): where the sample's inversion factored and accepted the
    Gram matrix of the same active rows (:class:`onnxinv.inversion.fastexact.GramLog`), it formed the
    same product of the same rows, so the same numbers: its coherence is this one, and its acceptance
    (the same Cholesky factor and condition test as ``gram_full_rank``) shows full column rank. Nothing
    is formed or factored again there.
    """
    from onnxinv.inversion.linear import gram_full_rank, numerical_rank

    weight = layer.dense_weight()
    n_in = layer.in_features
    count = counts.shape[0]
    if not relu:
        gram = weight.T @ weight
        mu = _coherence_from_gram(gram)
        full = weight.shape[0] >= n_in and gram_full_rank(gram, overwrite=True)
        rank = n_in if full else numerical_rank(weight)
        return rank, np.full(count, rank == n_in), np.full(count, mu)
    identifiable = np.zeros(count, dtype=bool)
    mus = np.ones(count)  # no active row: coherence 1.0 (every column is zero)
    seen: dict[bytes, int] = {}  # samples with the same active rows share their answers
    for k in range(count):
        if not counts[k]:
            continue
        key = np.packbits(active[k]).tobytes()
        first = seen.setdefault(key, k)
        if first != k:
            identifiable[k], mus[k] = identifiable[first], mus[first]
            continue
        reuse = kept.get(k) if kept else None
        if reuse is not None and reuse[0] == key:  # the same active rows (the same packed mask)
            mus[k] = reuse[1]
            identifiable[k] = True  # gram_full_rank: the inversion's Cholesky route accepted it
            continue
        w_active = weight[active[k]]
        gram = w_active.T @ w_active
        mus[k] = _coherence_from_gram(gram)
        # the coherence has read the Gram matrix: the rank test may factor it in place
        identifiable[k] = counts[k] >= n_in and (
            gram_full_rank(gram, overwrite=True) or numerical_rank(w_active) == n_in
        )
    rank = n_in if identifiable.any() else numerical_rank(weight)
    return rank, identifiable, mus


def _sparse_tests(layer: Layer, relu: bool) -> tuple[int, bool, _SampleTest]:
    """The rank of a scipy.sparse weight and the per-sample test, never densifying it.

    Ranks come from :func:`~onnxinv.inversion.linear.sparse_rank` (dense singular values of blocks
    small enough, else a bound that never overstates the rank) and the active rows' test from
    :func:`~onnxinv.inversion.identifiability.active_rank` (the sparse least-squares route: a full
    rank only when its Cholesky / QR shows it); the coherence from the sparse column Gram matrix.
    """
    from onnxinv.inversion.identifiability import active_rank, mutual_coherence
    from onnxinv.inversion.linear import sparse_rank

    weight = layer.weight
    n_in = layer.in_features
    rank, rank_known = sparse_rank(weight)
    static: list[float] = []  # without ReLU every row takes part at every sample: one coherence

    def test(active: np.ndarray, count: int) -> tuple[bool, float]:
        if not relu:
            if not static:
                static.append(mutual_coherence(weight))
            return False, static[0]
        w_active = weight[np.flatnonzero(active)]
        ok = count >= n_in and active_rank(w_active) == n_in
        return bool(ok), mutual_coherence(w_active) if count else 1.0

    return rank, rank_known, test


def _coherence_from_gram(gram: np.ndarray) -> float:
    """:func:`onnxinv.inversion.identifiability.mutual_coherence` of ``A`` from its Gram matrix
    ``AᵀA``: the largest ``|g_ij| / sqrt(g_ii g_jj)`` over ``i != j`` (1.0 if a column is zero)."""
    n = gram.shape[0]
    if n < 2:
        return 0.0
    diag = gram.diagonal()
    if diag.min() <= 0:
        return 1.0
    inverse = 1.0 / np.sqrt(diag)
    cos = np.abs(gram)  # a new array, scaled in place
    cos *= inverse
    cos.flat[:: n + 1] = 0.0  # the diagonal (in any memory order)
    # the row scaling after the row maxima: rounding is monotone, so max_j fl(c_ij s_i) is
    # fl(s_i max_j c_ij) for s_i > 0 (the same number as scaling every entry first, one pass less)
    return float((cos.max(axis=1) * inverse).max())


def _taus(h: np.ndarray) -> np.ndarray:
    """Per row of ``h`` (N, n): the threshold ``ACTIVE_TAU · max |h|`` (never 0)."""
    if not h.shape[1]:
        return np.full(h.shape[0], ACTIVE_TAU * np.finfo(float).tiny)
    return ACTIVE_TAU * np.maximum(np.abs(h).max(axis=1), np.finfo(float).tiny)


def _nnz_rows(h: np.ndarray, taus: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``h``: its entries above the row's threshold in absolute value (``||h||_0``)."""
    taus = _taus(h) if taus is None else taus
    return np.count_nonzero(np.abs(h) > taus[:, None], axis=1)


def _static_findings(generator: Generator, layers: tuple[LayerAudit, ...]) -> list[Finding]:
    findings = []
    for la, layer in zip(layers, generator.layers):
        nodes = layer.source_nodes
        n_in, n_out = layer.in_features, layer.out_features
        where = f"{la.activation} layer {n_in} -> {n_out}"
        if _is_relu(layer):
            if n_out < n_in:
                findings.append(
                    Finding(
                        "relu-contracting",
                        Severity.ERROR,
                        f"This {where} has fewer outputs than inputs, so at most {n_out} of the {n_in} rows "
                        "needed are ever active: it is never identifiable by the active-rows test and not "
                        "injective.",
                        la.index,
                        nodes,
                    )
                )
            elif la.rank < n_in and la.rank_known:
                findings.append(
                    Finding(
                        "rank-deficient",
                        Severity.ERROR,
                        f"This {where} has rank(W) = {la.rank} < {n_in} inputs, so no set of active rows "
                        "has full column rank: it is never identifiable.",
                        la.index,
                        nodes,
                    )
                )
            continue
        if layer.activation is Activation.LEAKY_RELU and bool(np.any(layer.slopes() <= 0)):
            findings.append(
                Finding(
                    "rank-deficient",
                    Severity.ERROR,
                    f"This {where} has a slope <= 0 on some unit, so its activation is not injective.",
                    la.index,
                    nodes,
                )
            )
            continue
        if n_out < n_in:
            findings.append(
                Finding(
                    "contracting",
                    Severity.WARNING,
                    f"This {where} contracts {n_in} values onto {n_out}: layer-wise inversion cannot recover "
                    "its input (every output has a preimage of dimension at least "
                    f"{n_in - n_out}); the whole network may still determine the latent (invert fits it on the "
                    "whole network, and the verdict says what was proved).",
                    la.index,
                    nodes,
                )
            )
        if not la.rank_known:
            continue  # no rank claim either way (the sampled rows' test still runs)
        if la.rank == n_in:
            findings.append(
                Finding(
                    "injective",
                    Severity.INFO,
                    f"This {where} has full column rank ({n_in}) and an injective activation, so it is "
                    "invertible at every output it can produce.",
                    la.index,
                    nodes,
                )
            )
        else:
            findings.append(
                Finding(
                    "rank-deficient",
                    Severity.ERROR,
                    f"This {where} has rank(W) = {la.rank} < {n_in} inputs, so it is never injective: "
                    f"every output has a preimage of dimension {n_in - la.rank}.",
                    la.index,
                    nodes,
                )
            )
    return findings


def _sampled_findings(generator: Generator, layers: tuple[LayerAudit, ...], count: int) -> list[Finding]:
    findings = []
    for la, layer in zip(layers, generator.layers):
        if not _is_relu(layer):
            continue  # decided by the static facts above
        nodes = layer.source_nodes
        active = (
            f"active rows min {la.active_min}, median {la.active_median:g}, for {la.in_features} unknowns"
        )
        if la.identifiable_share == 1.0:
            findings.append(
                Finding(
                    "identifiable",
                    Severity.INFO,
                    f"Identifiable at all {count} sampled points ({active}).",
                    la.index,
                    nodes,
                )
            )
            continue
        if layer.out_features >= layer.in_features and (la.rank == layer.in_features or not la.rank_known):
            if la.identifiable_share == 0.0:
                severity = Severity.ERROR
                text = (
                    f"Not identifiable at any of the {count} sampled points ({active}): its input is not "
                    "determined by its output there."
                )
            else:
                severity = Severity.WARNING
                text = (
                    f"Identifiable at only {_pct(la.identifiable_share)} of the {count} sampled points "
                    f"({active}); at the others its input is not determined by its output."
                )
            findings.append(Finding("not-identifiable", severity, text, la.index, nodes))
        if la.index > 0 and la.coherence_share > 0:
            findings.append(
                Finding(
                    "sparse-recovery",
                    Severity.INFO,
                    f"The mutual-coherence condition holds at {_pct(la.coherence_share)} of the sampled points "
                    f"(cardinality growth at {_pct(la.growth_share)}): there the sparse hidden code is the "
                    "unique sparsest one; try --method sparse.",
                    la.index,
                    nodes,
                )
            )
    return findings


def _inversion_findings(
    verdicts: dict[str, int], count: int, method: str, results: list, generator: Generator
) -> list[Finding]:
    get = verdicts.get
    findings = []
    if get("unique", 0):
        kinds = sorted({r.evidence.kind.value for r in results if r.verdict.value == "unique"})
        findings.append(
            Finding(
                "inversion-unique",
                Severity.INFO,
                f"Method {method} recovered the latent and proved it unique for {get('unique')} of {count} "
                f"samples (evidence: {', '.join(kinds)}).",
            )
        )
    if get("not unique", 0):
        witnessed = [r for r in results if r.witness is not None]
        first = witnessed[0]
        findings.append(
            Finding(
                "inversion-not-unique",
                Severity.ERROR,
                f"For {get('not unique')} of {count} samples a second latent gives the same output (checked "
                f"through onnxruntime; e.g. at max-abs distance {float(np.max(np.abs(first.witness - first.z))):.3g}, "
                f"{first.evidence.kind.value}): the generator is not injective.",
                first.evidence.layer,
            )
        )
    if get("fits", 0):
        findings.append(
            Finding(
                "inversion-fits",
                Severity.WARNING,
                f"For {get('fits')} of {count} samples a latent reproducing the output was found, but its "
                "uniqueness was neither proved nor refuted.",
            )
        )
    if get("not found", 0):
        missed = [r for r in results if r.verdict.value == "not found"]
        best = min(r.residual_rel_l2 for r in missed)
        failed_steps = [s for r in missed for s in r.steps if not s.status.ok and s.status.value != "not run"]
        where = ""
        if failed_steps:
            first_step = failed_steps[0]
            where = f"; e.g. layer {first_step.layer} ended '{first_step.status.value}'"
        findings.append(
            Finding(
                "inversion-not-found",
                Severity.WARNING,
                f"Method {method} reproduced nothing for {get('not found')} of {count} samples (best relative "
                f"residual through onnxruntime {best:.1e}{where}).",
                None if not failed_steps else failed_steps[0].layer,
                () if not failed_steps else generator.layers[failed_steps[0].layer].source_nodes,
            )
        )
    if get("no preimage", 0):
        findings.append(
            Finding(
                "inversion-no-preimage",
                Severity.ERROR,
                f"For {get('no preimage')} of {count} samples the inversion proved that no latent gives the "
                "output, although the model produced it: the layer list and onnxruntime disagree there; please "
                "report the model.",
            )
        )
    return findings


def _verdict_line(
    status: AuditStatus,
    count: int,
    verdicts: dict[str, int],
    failing: int | None,
    generator: Generator,
    layers: tuple[LayerAudit, ...],
    results: list,
) -> str:
    if status is AuditStatus.INVERTIBLE:
        from onnxinv.inversion.verdict import EvidenceKind

        if all(r.evidence.kind is EvidenceKind.LAYERWISE for r in results):
            how = "layer-wise identifiable at each"
        else:
            how = "certified invertible at the sampled points: the whole-network MILP proved some of them"
        return f"invertible at all {count} sampled points (a unique latent was proved at each; {how})"
    shares = ", ".join(f"{n} {name}" for name, n in verdicts.items() if n)
    blame = ""
    if failing is not None:
        la = layers[failing]
        layer = generator.layers[failing]
        if _is_relu(layer) and layer.out_features < layer.in_features:
            why = "a ReLU layer with fewer outputs than inputs is never identifiable"
        elif la.rank < la.in_features and la.rank_known:
            why = f"rank(W) = {la.rank} < {la.in_features} inputs"
        else:
            why = (
                f"identifiable at {_pct(la.identifiable_share)} of the samples, median "
                f"{la.active_median:g} active rows for {la.in_features} unknowns"
            )
        blame = f"; first layer not identifiable everywhere: layer {failing} ({la.activation} {la.in_features} -> {la.out_features}): {why}"
    if status is AuditStatus.NOT_INVERTIBLE:
        return f"not invertible: a second latent gives the same output at some sampled points ({shares} of {count}){blame}"
    return f"undecided: not every sampled point was proved unique and no second latent was found ({shares} of {count}){blame}"


# --------------------------------------------------------------------------------------------------
# the whole network: MILP certificates and witnesses


def _whole_network_findings(
    generator: Generator, results: list, settings: Any
) -> tuple[list[Finding], tuple[np.ndarray, np.ndarray] | None]:
    """What the samples' evidence says about the whole network, and a checked pair ``(z, z')``.

    One of: ``layerwise-identifiable`` (Theorem 2 at every layer at every sample: the MILP was not
    needed), ``milp-certified`` (every sample unique, some by the whole-network certificate),
    ``not-injective`` (a pair ``z != z'`` whose outputs onnxruntime finds equal within the fit
    tolerance; the pair and the numbers are in the finding's data), ``milp-not-applicable`` (why the
    MILP could not be used on the samples left undecided), ``milp-undecided`` (it was used, within its
    time limit, and decided neither way for some samples).
    """
    from onnxinv.inversion import milp
    from onnxinv.inversion.verdict import EvidenceKind

    count = len(results)
    kinds = [r.evidence.kind for r in results]
    unique = [r for r in results if r.verdict.value == "unique"]
    layerwise = sum(k is EvidenceKind.LAYERWISE for k in kinds)
    by_milp = [r for r in unique if r.evidence.kind in (EvidenceKind.MILP, EvidenceKind.MILP_BOUNDS)]
    why = milp.applicability(generator.layers)
    findings: list[Finding] = []
    pair = _checked_pair(generator, results)
    if pair is not None:
        z, z2, data = pair
        findings.append(
            Finding(
                "not-injective",
                Severity.ERROR,
                f"Not injective: z = {_vec(z)} and z' = {_vec(z2)} (max-abs distance "
                f"{data['latent_max_abs_diff']:.3g}) give the same output: max |G(z) - G(z')| = "
                f"{data['output_max_abs_diff']:.3g} through onnxruntime ({data['output_rel_l2_diff']:.3g} "
                "relative l2).",
                data=data,
            )
        )
    if len(unique) == count and layerwise == count:
        findings.append(
            Finding(
                "layerwise-identifiable",
                Severity.INFO,
                f"Layer-wise identifiable at all {count} sampled points: the active rows of every layer have "
                "full column rank there (Theorem 2), so the whole-network MILP was not needed.",
                data={"samples": count, "layerwise": layerwise},
            )
        )
    elif len(unique) == count:
        boxes = sorted(
            {f"[-{r.evidence.box:g}, {r.evidence.box:g}]^k" for r in by_milp if r.evidence.box is not None}
        )
        within = f" (for latents in {'; '.join(boxes)}, the stated box)" if boxes else ""
        findings.append(
            Finding(
                "milp-certified",
                Severity.INFO,
                f"Certified invertible at the {count} sampled points (MILP){within}: {len(by_milp)} by the "
                f"whole-network certificate, {layerwise} layer-wise.",
                data={"samples": count, "milp": len(by_milp), "layerwise": layerwise, "boxes": boxes},
            )
        )
    left = count - len(unique) - sum(r.witness is not None for r in results)
    if left > 0 and why is not None:
        findings.append(
            Finding(
                "milp-not-applicable",
                Severity.INFO,
                f"MILP not applicable: {why}; {left} of {count} samples stay undecided.",
                data={"reason": why, "undecided": left},
            )
        )
    elif left > 0:
        inside = [r for r in results if "state a latent box" in r.message]
        hint = (
            f"; at {len(inside)} of them it proved uniqueness only inside its search box (pass latent_box / "
            "--latent-box to accept such claims)"
            if inside and settings.latent_box is None
            else ""
        )
        findings.append(
            Finding(
                "milp-undecided",
                Severity.WARNING,
                f"The whole-network MILP (at most {settings.milp_time:g} s per sample) decided neither way for "
                f"{left} of {count} samples{hint}.",
                data={"undecided": left, "milp_time": settings.milp_time, "inside_box_only": len(inside)},
            )
        )
    return findings, None if pair is None else (pair[0], pair[1])


def _checked_pair(
    generator: Generator, results: list
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """The first witness pair whose outputs onnxruntime finds equal (the inversion's fit tolerance)."""
    for r in results:
        if r.witness is None:
            continue
        z, z2 = np.asarray(r.z, dtype=np.float64), np.asarray(r.witness, dtype=np.float64)
        out, out2 = (generator.run_onnx(v).reshape(-1).astype(np.float64) for v in (z, z2))
        diff = out - out2
        scale = max(float(np.linalg.norm(out)), np.finfo(float).tiny)
        rel = float(np.linalg.norm(diff)) / scale
        # both reproduce the same observation within its tolerance, so their outputs are within twice it
        if rel > 2.0 * max(r.fit.tolerance, 1e-12) and r.fit.criterion == "relative l2":
            continue
        return (
            z,
            z2,
            {
                "z": [float(v) for v in z],
                "z_prime": [float(v) for v in z2],
                "latent_max_abs_diff": float(np.max(np.abs(z - z2))),
                "output_max_abs_diff": float(np.max(np.abs(diff))),
                "output_rel_l2_diff": rel,
                "evidence": r.evidence.kind.value,
            },
        )
    return None
