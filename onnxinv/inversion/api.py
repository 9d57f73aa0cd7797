"""``invert``: the public entry point, a pipeline **validate → solve → refine → verify → evidence → decide**.

* **validate** the arguments and the observations (:mod:`onnxinv.observations`); every problem raises
  an :class:`~onnxinv.errors.OnnxInvError`.
* **solve** with the method's record from :mod:`onnxinv.inversion.registry`.
* **refine** the estimate on the whole network when it misses (:mod:`onnxinv.inversion.refine`).
* **verify**: every ``z`` is fed back through the model with onnxruntime, one call per chunk of
  observations, and judged by the fit rule (:func:`~onnxinv.inversion.framework.fit_check`).
* **evidence**: certificates, witnesses (checked through onnxruntime), radii, refutations
  (:mod:`onnxinv.inversion.evidence`).
* **decide**: the verdict contract (:func:`onnxinv.inversion.verdict.decide`) turns fit and evidence into
  the verdict and its message.

Batches
-------
``(N, ...)`` observations are split into chunks, each solved and verified in a worker process
(:mod:`onnxinv.inversion.parallel`). ``workers=None`` uses ``os.cpu_count()`` processes, but only when
it pays: the first observations are solved in this process, and the pool is started only if the rest
would take more than about a second. An explicit ``workers > 1`` always uses a pool for ``N > 1``;
``workers=1`` never does. ``executor=`` runs the chunks elsewhere instead: a thread pool, a process
pool, or a Dask cluster (``distributed.Client``), which receives the generator once per worker;
``chunk_size`` fixes the chunks' size; by default the local pool's chunks shrink towards the end
(:func:`guided_spans`), so that its workers finish together. Results do not depend on the number of
workers, the executor or the chunking. Files larger than memory, written chunk by chunk and resumable: :mod:`onnxinv.stream`.

Fast path
---------
For ``exact`` and ``auto`` on clean, fully observed observations of a dense ReLU network, each chunk
first goes through :mod:`onnxinv.inversion.fastexact`: the exact method's drafts without the generic
walk's fixed cost, their fit checks and certificate margins on the stacked rows. Wherever it is not
sure (a layer off the certified branch, a row near zero, a latent that misses the fit in float64) the
observation takes the generic pipeline; the results are the same either way, and onnxruntime still
verifies every one.

Noise
-----
``noise=None`` with observations whose observed values all lie on an 8-bit grid (``k/255``, or
``2k/255 - 1`` for a ``[-1, 1]`` output) is read as quantised data: bounded noise of half a grey level
(``noise_source="quantisation"``). ``noise=0`` means clean, without that test.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxinv.errors import InvalidArgumentError
from onnxinv.inversion import evidence as evidence_stage
from onnxinv.inversion import fastexact, parallel
from onnxinv.inversion.framework import NOISE_MODELS, Draft, Problem, Settings, fit_check
from onnxinv.inversion.refine import refine
from onnxinv.inversion.registry import METHODS, get_method
from onnxinv.inversion.result import Attempt, BatchInversionResult, InversionResult, LayerStep
from onnxinv.inversion.verdict import Evidence, FitCheck, decide
from onnxinv.layers import Generator
from onnxinv.observations import (
    Observations,
    check_noise,
    prepare_measure,
    prepare_observations,
    quantisation_steps,
)

__all__ = ["default_chunk_size", "guided_spans", "invert", "prepare_inputs", "solve_chunk"]

POOL_STARTUP_SECONDS = 1.0
MAX_CHUNK = 500  # observations per chunk at most, by default (see default_chunk_size)


def pool_pays(remaining: int, seconds_each: float, procs: int) -> bool:
    """Would ``remaining`` observations of ``seconds_each`` (measured on a probe) finish sooner on a
    pool of ``procs`` processes than here, once the pool's start-up (``POOL_STARTUP_SECONDS``) is paid?"""
    return procs > 1 and remaining * seconds_each * (1.0 - 1.0 / procs) >= POOL_STARTUP_SECONDS


def invert(
    generator: Generator,
    x: object,
    method: str = "auto",
    noise: float | None = None,
    mask: object = None,
    *,
    noise_model: str | None = None,
    measure: object = None,
    tol: float | None = None,
    time_limit: float | None = None,
    workers: int | None = None,
    batch: bool | None = None,
    seed: int | None = None,
    settings: Settings | None = None,
    progress: parallel.Progress | None = None,
    executor: object = None,
    chunk_size: int | None = None,
) -> InversionResult | BatchInversionResult:
    """Find the latent(s) ``z`` with ``G(z) = x`` and say, with evidence, whether ``z`` is unique.

    Parameters
    ----------
    generator : the generator (``onnxinv.load(path)``): its layer list, and its ONNX model that
        onnxruntime runs to verify every answer
    x : one observation (any shape with ``generator.output_dim`` values) or a batch ``(N, ...)``
    method : a name from ``onnxinv.inversion.METHODS`` (default ``"auto"``)
    noise : size of the observation error: a bound on every entry (``noise_model="bounded"``, the
        default) or the standard deviation (``"gaussian"``); None for clean observations (8-bit
        quantised values then imply half a grey level, see the module docstring); 0 for clean without
        that test
    mask : bool array over the output, True = observed (or 0/1 numbers); one per batch or one per
        observation. Only the last layer's rows are restricted.
    noise_model : ``"bounded"`` or ``"gaussian"`` (only with ``noise``)
    measure : a measurement matrix ``A`` of shape ``(m, n)`` (dense or scipy.sparse): the observations
        are of ``A·G(z)`` and have ``m`` entries (compressed sensing). Only the methods whose record
        says ``measure=True`` (``auto``, ``lsq``, ``gd``) can start there.
    tol : relative l2 residual accepted as reproducing a clean observation (default 1e-5)
    time_limit : seconds per observation (default 60)
    workers : processes for a batch (None: ``os.cpu_count()``, used only when it pays)
    batch : force reading ``x`` as a batch (True) or one observation (False); None decides by size
    seed : seed of the random starts of ``"gd"`` and of the witness search (default 0)
    settings : every other knob (:class:`~onnxinv.inversion.framework.Settings`); ``tol``,
        ``time_limit`` and ``seed``, when given here, override it
    progress : called with the number of observations finished, as they finish (batches)
    executor : where a batch's chunks run instead of the local pool: any
        ``concurrent.futures.Executor`` (a ``ThreadPoolExecutor``, a ``ProcessPoolExecutor``, a
        ``distributed.Client``'s ``get_executor()``) or a ``distributed.Client``
        (:mod:`onnxinv.inversion.parallel`); not with ``workers``. The results are the same.
    chunk_size : observations per chunk (one task, one onnxruntime call); None chooses (an executor:
        about four chunks per worker, at most ``MAX_CHUNK``; the local pool: :func:`guided_spans`,
        smaller chunks towards the end)

    Returns
    -------
    InversionResult for one observation, BatchInversionResult for a batch. ``result.verdict.success``
    is True only when onnxruntime confirmed the fit (:mod:`onnxinv.inversion.verdict`).

    Raises
    ------
    InvalidArgumentError
        An argument outside its allowed values (an unknown method, a non-positive ``tol``, ...).
    ObservationError
        ``x``, ``mask`` or ``noise`` is malformed (size, dtype, NaN/Inf, ...).
    """
    if not isinstance(generator, Generator):
        hint = (
            " (a path: load it first with onnxinv.load(path))"
            if isinstance(generator, (str, os.PathLike))
            else ""
        )
        raise InvalidArgumentError(
            f"invert() needs an onnxinv Generator as its first argument, got {type(generator).__name__}{hint}"
        )
    record = get_method(method)
    cfg = _settings(settings, tol=tol, time_limit=time_limit, seed=seed)
    if noise_model is not None and noise_model not in NOISE_MODELS:
        raise InvalidArgumentError(
            f"noise_model must be one of {', '.join(NOISE_MODELS)}, got {noise_model!r}"
        )
    if progress is not None and not callable(progress):
        raise InvalidArgumentError(
            f"progress must be callable (it gets the number of finished observations), got {progress!r}"
        )
    _check_batch_options(workers, executor, chunk_size)
    matrix = prepare_measure(measure, generator.output_dim)
    if matrix is not None and not record.measure:
        able = ", ".join(m.name for m in METHODS.values() if m.measure)
        raise InvalidArgumentError(
            f"method {record.name!r} inverts the generator's output itself and cannot start from "
            f"measurements y = A·G(z); use one of {able}"
        )
    size = generator.output_dim if matrix is None else int(matrix.shape[0])
    obs, noises, sources = prepare_inputs(generator, x, mask, noise, batch=batch, size=size)
    model = noise_model or "bounded"
    if obs.single:
        return solve_chunk(
            generator, obs.values, obs.mask, noises, sources, record.name, cfg, obs.precision, model, matrix
        )[0]
    return _invert_batch(
        generator,
        obs,
        noises,
        sources,
        record.name,
        cfg,
        workers,
        model,
        progress,
        executor,
        chunk_size,
        matrix,
    )


def _check_batch_options(workers: object, executor: object, chunk_size: object) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidArgumentError(f"workers must be a positive integer or None, got {workers!r}")
    parallel.check_executor(executor)
    if executor is not None and workers is not None:
        raise InvalidArgumentError(
            "give workers (processes of a local pool) or executor (where chunks run), not both"
        )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise InvalidArgumentError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def prepare_inputs(
    generator: Generator,
    x: object,
    mask: object,
    noise: float | None,
    *,
    batch: bool | None = None,
    size: int | None = None,
) -> tuple[Observations, list[float | None], list[str | None]]:
    """Validated observations and, per observation, the noise level and where it came from (the
    module docstring's Noise). The same for :func:`invert` and for each chunk of a streamed run, so both
    read an observation the same way. ``size``: values per observation when not the model's output size
    (measurements through a matrix)."""
    obs = prepare_observations(x, generator.output_dim if size is None else size, mask, batch=batch)
    level = check_noise(noise)
    explicit_clean = noise is not None and level is None
    noises, sources = _noise_levels(obs, level, explicit_clean)
    return obs, noises, sources


def _settings(base: Settings | None, *, tol: object, time_limit: object, seed: object) -> Settings:
    if base is not None and not isinstance(base, Settings):
        raise InvalidArgumentError(f"settings must be an onnxinv Settings, got {type(base).__name__}")
    overrides: dict[str, Any] = {}
    if time_limit is not None:
        overrides["time_limit"] = _positive(time_limit, "time_limit", "seconds")
    if tol is not None:
        overrides["tol"] = _positive(tol, "tol", "a relative residual")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise InvalidArgumentError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        overrides["seed"] = int(seed)
    if not overrides:
        return base if base is not None else _DEFAULT_SETTINGS  # frozen: sharing one is safe
    return dataclasses.replace(base or _DEFAULT_SETTINGS, **overrides)


_DEFAULT_SETTINGS = Settings()


def _positive(value: object, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a positive number ({what}), got {value!r}")
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise InvalidArgumentError(f"{name} must be a positive finite number ({what}), got {value!r}")
    return number


def _noise_levels(
    obs: Observations, level: float | None, explicit_clean: bool
) -> tuple[list[float | None], list[str | None]]:
    """Per observation: the noise level and where it came from (module docstring, Noise)."""
    if level is not None:
        return [level] * obs.count, ["given"] * obs.count
    if explicit_clean:
        return [None] * obs.count, [None] * obs.count
    steps = quantisation_steps(obs.values, obs.mask)
    noises = [None if step is None else 0.5 * step for step in steps]
    sources: list[str | None] = [None if step is None else "quantisation" for step in steps]
    return noises, sources


def solve_chunk(
    generator: Generator,
    values: np.ndarray,
    masks: np.ndarray | None,
    noises: Sequence[float | None],
    sources: Sequence[str | None],
    method: str,
    settings: Settings,
    precision: float = 0.0,
    noise_model: str = "bounded",
    measure: object = None,
    gram_log: fastexact.GramLog | None = None,
) -> list[InversionResult]:
    """The pipeline for observations ``values`` (M, n): solve and refine each, verify all with one
    onnxruntime call, then gather evidence and decide each. ``precision`` is the machine epsilon of the
    dtype the observations came in (0: the model's). ``gram_log``: filled by the fast path
    (:class:`~onnxinv.inversion.fastexact.GramLog`); the results do not depend on it."""
    record = get_method(method)
    problems: list[Problem] = []
    drafts: list[Draft] = []
    started: list[float] = []
    hidden: list[list[np.ndarray] | None] = []
    fast = record.name in FAST_METHODS and fastexact.generator_applies(generator)
    with parallel.blas_single_thread():
        for i in range(values.shape[0]):
            problems.append(
                Problem(
                    generator,
                    values[i],
                    None if masks is None else masks[i],
                    noises[i],
                    precision,
                    noise_model,
                    measure,
                )
            )
        # the fast path first (fastexact: the same drafts as the exact method and the refine stage's
        # test, where it applies); the rest go through the method's record
        pending: list[int] = []
        stacked: np.ndarray | None = None
        start = time.perf_counter()
        if fast and len(problems) == 1 and gram_log is None:
            # one observation: the same steps as below without the chunk's bookkeeping
            found = fastexact.solve(problems[0], settings, start + settings.time_limit)
            if found is not None:
                return [_decide_fast(problems[0], found, settings, record.name, method, start, sources[0])]
            quick: list[fastexact.FastDraft | None] = [None]
        elif fast:
            # the problems' x are the rows of values: solve_many's stacked observations as they are
            stacked = values if values.dtype == np.float64 and values.flags.c_contiguous else None
            quick = fastexact.solve_many(
                problems, settings, [start + settings.time_limit] * len(problems), gram_log, stacked
            )
        else:
            quick = [None] * len(problems)
        share = (time.perf_counter() - start) / max(len(problems), 1)
        for i, found in enumerate(quick):
            if found is None:
                pending.append(i)
                drafts.append(None)  # type: ignore[arg-type]  # filled below
                hidden.append(None)
                started.append(start)
                continue
            drafts.append(_as_method(found.draft, record.name))
            hidden.append(found.hidden)
            started.append(time.perf_counter() - share)
        rest = [problems[i] for i in pending]
        if record.solve_batch is not None and len(rest) > 1:
            start = time.perf_counter()
            batch = record.solve_batch(rest, settings, [start + settings.time_limit] * len(rest))
            share = (time.perf_counter() - start) / len(rest)
            for i, problem, draft in zip(pending, rest, batch):
                began = time.perf_counter() - share
                if record.refine:
                    draft = refine(problem, settings, draft, began + settings.time_limit)
                drafts[i] = draft
                started[i] = began
        else:
            for i, problem in zip(pending, rest):
                start = time.perf_counter()
                deadline = start + settings.time_limit
                draft = record.solve(problem, settings, deadline)
                if record.refine:
                    draft = refine(problem, settings, draft, deadline)
                drafts[i] = draft
                started[i] = start
        outputs = generator.run_onnx(np.stack([d.z for d in drafts]))
        # the fast path's drafts: their fit checks and certificate margins on the stacked rows
        quick_rows = [i for i in range(len(drafts)) if hidden[i] is not None]
        fits: dict[int, FitCheck] = {}
        clear: dict[int, bool] = {}
        if quick_rows:
            chosen = [problems[i] for i in quick_rows]
            # the chunk's values are the problems' x stacked (the fast path's rows, most often all)
            xs = None
            if stacked is not None:
                xs = stacked if len(quick_rows) == len(problems) else stacked[quick_rows]
            checks = fastexact.clean_fits(chosen, settings, outputs[quick_rows], xs)
            margins = fastexact.margin_clear(chosen, settings, [hidden[i] for i in quick_rows], xs)  # type: ignore[misc]  # not None on these rows
            fits = dict(zip(quick_rows, checks))
            clear = {i: bool(m) for i, m in zip(quick_rows, margins)}
        return [
            _decide(
                problems[i],
                drafts[i],
                outputs[i],
                settings,
                method,
                started[i],
                sources[i],
                hidden[i],
                fits.get(i),
                clear.get(i, False),
            )
            for i in range(len(drafts))
        ]


# Methods whose answer the fast path gives where it applies: the exact method, and auto, whose first
# attempt is the exact method (kept when it reproduces the observation, as the fast path's drafts do).
FAST_METHODS = ("exact", "auto")


def _decide_fast(
    problem: Problem,
    found: fastexact.FastDraft,
    settings: Settings,
    name: str,
    requested: str,
    start: float,
    source: str | None,
) -> InversionResult:
    """:func:`solve_chunk`'s answer for one observation that the fast path solved: the onnxruntime
    run of its latent, the fit check and the certificate's margin test of its hidden values, then
    :func:`_decide`."""
    draft = _as_method(found.draft, name)
    outputs = problem.generator.run_onnx(draft.z[None, :])
    fit = fastexact.clean_fits((problem,), settings, outputs)[0]
    clear = bool(fastexact.margin_clear((problem,), settings, (found.hidden,))[0])
    return _decide(problem, draft, outputs[0], settings, requested, start, source, found.hidden, fit, clear)


def _as_method(draft: Draft, method: str) -> Draft:
    """The fast path's exact draft as ``method`` returns it: ``auto`` records its one attempt and says
    that it kept the exact method (:func:`onnxinv.inversion.auto.solve`)."""
    if method == "auto":
        draft.attempts = (Attempt("exact", draft.fit, "reproduces x"),)
        draft.message = "auto tried exact; kept exact."
    return draft


def _decide(
    problem: Problem,
    draft: Draft,
    output: np.ndarray,
    settings: Settings,
    requested: str,
    start: float,
    source: str | None,
    hidden: list[np.ndarray] | None = None,
    fit: FitCheck | None = None,
    margin_clear: bool = False,
) -> InversionResult:
    """Evidence, verdict and result of one draft. ``hidden``: the float64 hidden values of its latent;
    ``fit``: its fit check, when already made; ``margin_clear``: no ReLU row near zero
    (:func:`~onnxinv.inversion.fastexact.margin_clear`), so that for the exact method's unrefined chain
    that reproduces the observation the evidence stage's answer is its own steps' certificate."""
    if fit is None:
        fit = fit_check(problem, settings, output)
    deadline = start + settings.time_limit
    origin = METHODS.get(draft.method)
    certifies = origin is not None and origin.certifies == "layer-wise"
    cert = None
    if margin_clear and fit.reproduces and certifies and not draft.refined and problem.noise is None:
        # evidence.gather's own first answer there (no measurement matrix on the fast path)
        cert = evidence_stage.layerwise_certificate(draft.steps, "from the observation down")
    if cert is not None and problem.measure is None:
        found: tuple[Evidence, ...] = (cert,)
        analysis: tuple[LayerStep, ...] = ()
    else:
        found, analysis = evidence_stage.gather(
            problem, settings, draft, fit, deadline, problem.generator.run_onnx, certifies, hidden
        )
    decision = decide(fit, found, noisy=problem.noise is not None)
    z = np.array(draft.z, dtype=np.float64)
    z.setflags(write=False)
    recon = np.array(output, dtype=np.float64)
    recon.setflags(write=False)
    message = decision.message
    failed = [s for s in draft.steps if not s.status.ok]
    if failed and not decision.verdict.success:
        first = max(failed, key=lambda s: s.layer)
        message += f" Layer {first.layer} ended '{first.status.value}': {first.message}."
    if draft.message:
        message = f"{message} {draft.message}"
    generator = problem.generator
    return InversionResult(
        z=z,
        verdict=decision.verdict,
        reason=decision.reason,
        fit=fit,
        method=draft.method,
        steps=draft.steps,
        analysis=analysis,
        seconds=time.perf_counter() - start,
        message=message,
        evidence=decision.evidence,
        reconstruction=recon,
        noise=problem.noise,
        noise_model=problem.noise_model if problem.noise is not None else None,
        noise_source=source if problem.noise is not None else None,
        noise_estimate=draft.noise_estimate,
        latent_std=draft.latent_std,
        observed=int(problem.observed.size),
        requested=requested,
        attempts=draft.attempts,
        considered=decision.considered,
        refined=draft.refined,
        latent_shape=tuple(generator.sample_input_shape),
        latent_dtype=generator.input.dtype,
    )


def default_chunk_size(count: int, slots: int) -> int:
    """Observations per chunk for ``count`` observations on ``slots`` workers: about four chunks per
    worker (for balance), at most :data:`MAX_CHUNK` (so a chunk's task and results stay small)."""
    return max(1, min(MAX_CHUNK, math.ceil(count / (4 * max(1, slots)))))


def _spans(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(stop, a + size)) for a in range(start, stop, size)]


GUIDED_MIN = 32  # observations per chunk at least in guided_spans (a chunk's fixed cost stays small)


def guided_spans(start: int, stop: int, slots: int) -> list[tuple[int, int]]:
    """Chunks ``[a, b)`` of ``start..stop`` for ``slots`` local workers, each a ``1 / (2·slots)`` share of
    what is left, between :data:`GUIDED_MIN` and :data:`MAX_CHUNK`: small ones at the end, so that the
    workers finish together and the last results to collect are small (guided self-scheduling,
    Polychronopoulos & Kuck 1987). The results do not depend on the chunking."""
    spans = []
    a = start
    while a < stop:
        size = min(MAX_CHUNK, max(GUIDED_MIN, math.ceil((stop - a) / (2 * max(1, slots)))))
        b = min(stop, a + size)
        spans.append((a, b))
        a = b
    return spans


def _invert_batch(
    generator: Generator,
    obs: Observations,
    noises: list[float | None],
    sources: list[str | None],
    method: str,
    settings: Settings,
    workers: int | None,
    noise_model: str,
    progress: parallel.Progress | None,
    executor: object = None,
    chunk_size: int | None = None,
    measure: object = None,
) -> BatchInversionResult:
    start = time.perf_counter()
    count = obs.count

    def chunk(a: int, b: int) -> tuple[Any, ...]:
        mask = None if obs.mask is None else obs.mask[a:b]
        return (
            obs.values[a:b],
            mask,
            noises[a:b],
            sources[a:b],
            method,
            settings,
            obs.precision,
            noise_model,
            measure,
        )

    def run(spans: list[tuple[int, int]], **where: Any) -> list[InversionResult]:
        return parallel.map_chunks(
            generator,
            solve_chunk,
            [chunk(a, b) for a, b in spans],
            progress=progress,
            sizes=[b - a for a, b in spans],
            **where,
        )

    if executor is not None:
        slots = parallel.executor_slots(executor)
        size = int(chunk_size) if chunk_size is not None else default_chunk_size(count, slots)
        results = run(_spans(0, count, size), executor=executor)
        return BatchInversionResult(
            results=tuple(results), seconds=time.perf_counter() - start, workers=slots
        )

    procs = (os.cpu_count() or 1) if workers is None else workers
    procs = max(1, min(procs, count))
    results = []
    done = 0
    if workers is None and procs > 1:
        # Probe in this process: start a pool only if the rest would take long enough to pay for it.
        probe = min(count, 2)
        results += solve_chunk(generator, *chunk(0, probe))
        done = probe
        if progress is not None:
            progress(probe)
        per = sum(r.seconds for r in results) / probe
        if not pool_pays(count - done, per, procs):
            procs = 1
    if done < count:
        if procs == 1:
            if chunk_size is not None:
                step = int(chunk_size)
            else:
                step = max(1, math.ceil((count - done) / 50)) if progress is not None else count - done
            results += run(_spans(done, count, step))
        else:
            if chunk_size is not None:
                spans = _spans(done, count, int(chunk_size))
            else:
                spans = guided_spans(done, count, procs)
            results += run(spans, workers=procs)
    return BatchInversionResult(results=tuple(results), seconds=time.perf_counter() - start, workers=procs)
