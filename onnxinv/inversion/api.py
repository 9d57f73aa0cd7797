"""``invert``: the public entry point. Validates input, runs a method, verifies through onnxruntime,
decides the verdict, and spreads batches over processes.

Verification
------------
Every ``z`` is fed back through the model with onnxruntime (:meth:`Generator.run_onnx`), one call per
chunk of observations, and the residual on the observed entries decides whether ``z`` reproduces
the observation (:func:`onnxinv.inversion.layerwise.accepts`).

Verdict
-------
If ``z`` reproduces the observation: **not unique** when some layer's preimage has dimension > 0
(naming the one nearest the input; layer 0 is fed by z), else **unique** when every layer's solve
ended ``optimal``, else **not found** (a layer's check failed, so ``z`` is not a certified preimage;
the message says which).

If ``z`` does not reproduce it, no preimage was found, so the verdict is **not found** with the best
residual, unless there is evidence that the latent is not determined: a clean observation whose
layers from the output down to a hidden layer (index >= 1) were all solved exactly (status optimal,
layer residual <= ``tol``), that hidden layer's preimage having a dimension strictly between 0 and
its input size. Then the observation pins down a whole polytope of that layer's inputs, the point
chosen in it did not lead to a latent, and another may: **not unique**, and the message says to try
``sparse`` or ``gd``. A positive dimension reported by a noisy method (directions without
sign-certain rows, an estimate), a layer-0 preimage (the miss is not a choice there) or a preimage
as large as the whole input space (nothing pinned down) is not such evidence.

Batches
-------
``(N, ...)`` observations are split into chunks, each solved and verified (one onnxruntime call) in a
worker process (see :func:`start_method`; BLAS limited to one thread per worker). ``workers=None``
uses ``os.cpu_count()`` processes, but only when it pays: the first observations are solved in this
process, and the pool is started only if the rest would take more than about a second. An explicit
``workers > 1`` always uses a pool for ``N > 1``; ``workers=1`` never does. One observation never
starts a pool. Results do not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from onnxinv.errors import InvalidArgumentError
from onnxinv.inversion import auto, exact, gd, l1, linf, relaxed, sparse
from onnxinv.inversion.layerwise import Draft, Problem, Settings, accepts, residual_norms
from onnxinv.inversion.result import BatchInversionResult, InversionResult, LayerStep, Verdict
from onnxinv.layers import Generator
from onnxinv.observations import Observations, check_noise, prepare_observations

METHODS: dict[str, Any] = {
    "auto": auto,
    "exact": exact,
    "sparse": sparse,
    "linf": linf,
    "l1": l1,
    "relaxed": relaxed,
    "gd": gd,
}

POOL_STARTUP_SECONDS = 1.0
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def invert(
    generator: Generator,
    x: object,
    method: str = "auto",
    noise: float | None = None,
    mask: object = None,
    *,
    tol: float | None = None,
    time_limit: float | None = None,
    workers: int | None = None,
    batch: bool | None = None,
    seed: int | None = None,
    settings: Settings | None = None,
) -> InversionResult | BatchInversionResult:
    """Find the latent(s) ``z`` with ``G(z) = x`` and say whether ``z`` is unique.

    Parameters
    ----------
    generator : the generator (its layer list and its ONNX model, used by onnxruntime to verify)
    x : one observation (any shape with ``generator.output_dim`` values) or a batch ``(N, ...)``
    method : ``"auto"`` (default), ``"exact"``, ``"sparse"``, ``"linf"``, ``"l1"``, ``"relaxed"`` or ``"gd"``
    noise : per-entry size of the observation error (a bound for bounded noise, the standard deviation
        for Gaussian noise); None or 0 for clean observations
    mask : bool array over the output, True = observed (or 0/1 numbers); one per batch or one per
        observation. Only the last layer's rows are restricted.
    tol : relative residual accepted as reproducing a clean observation (default 1e-5)
    time_limit : seconds per observation (default 60)
    workers : processes for a batch (None: ``os.cpu_count()``, used only when it pays)
    batch : force reading ``x`` as a batch (True) or one observation (False); None decides by size
    seed : seed of the random starts of ``"gd"`` (default 0)
    settings : every other knob (:class:`~onnxinv.inversion.layerwise.Settings`); ``tol``,
        ``time_limit`` and ``seed``, when given here, override it

    Returns
    -------
    InversionResult for one observation, BatchInversionResult for a batch.

    Raises
    ------
    ObservationError
        ``x``, ``mask`` or ``noise`` is malformed (size, dtype, NaN/Inf, ...).
    ValueError
        Unknown method, or a non-positive ``tol``, ``time_limit`` or ``workers``.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    obs = prepare_observations(x, generator.output_dim, mask, batch=batch)
    level = check_noise(noise)
    base = settings or Settings()
    overrides: dict[str, Any] = {}
    if time_limit is not None:
        if not time_limit > 0:
            raise ValueError(f"time_limit must be positive (seconds), got {time_limit!r}")
        overrides["time_limit"] = float(time_limit)
    if seed is not None:
        overrides["seed"] = int(seed)
    if tol is not None:
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        overrides["tol"] = float(tol)
    cfg = dataclasses.replace(base, **overrides)
    if obs.single:
        return solve_chunk(generator, obs.values, obs.mask, level, method, cfg, obs.precision)[0]
    return _invert_batch(generator, obs, level, method, cfg, workers)


def solve_chunk(
    generator: Generator,
    values: np.ndarray,
    masks: np.ndarray | None,
    noise: float | None,
    method: str,
    settings: Settings,
    precision: float = 0.0,
) -> list[InversionResult]:
    """Solve observations ``values`` (M, n) one by one, then verify all of them with one onnxruntime call.

    ``precision`` is the machine epsilon of the dtype the observations came in (0: the model's).
    """
    with _blas_threads_one():
        problems, drafts, times = _solve_rows(
            generator, values, masks, noise, METHODS[method], settings, precision
        )
    start = time.perf_counter()
    outputs = generator.run_onnx(np.stack([d.z for d in drafts]))
    share = (time.perf_counter() - start) / len(drafts)
    return [
        _finalize(p, d, outputs[i], settings, method, times[i] + share)
        for i, (p, d) in enumerate(zip(problems, drafts))
    ]


def _solve_rows(
    generator: Generator,
    values: np.ndarray,
    masks: np.ndarray | None,
    noise: float | None,
    module: Any,
    settings: Settings,
    precision: float,
) -> tuple[list[Problem], list[Draft], list[float]]:
    problems, drafts, times = [], [], []
    for i in range(values.shape[0]):
        start = time.perf_counter()
        problem = Problem(generator, values[i], None if masks is None else masks[i], noise, precision)
        drafts.append(module.solve(problem, settings, start + settings.time_limit))
        problems.append(problem)
        times.append(time.perf_counter() - start)
    return problems, drafts, times


def _finalize(
    problem: Problem, draft: Draft, output: np.ndarray, settings: Settings, requested: str, seconds: float
) -> InversionResult:
    rel, linf_err, _ = residual_norms(problem, output)
    reproduces, tolerance = accepts(problem, settings, output)
    verdict, layer, dim, message = decide(
        draft.steps, reproduces, rel, linf_err, tolerance, problem.noise, layer_tol=settings.tol
    )
    z = np.array(draft.z, dtype=np.float64)
    z.setflags(write=False)
    if draft.message:
        message = f"{message} {draft.message}"
    return InversionResult(
        z=z,
        method=draft.method,
        verdict=verdict,
        residual_rel_l2=rel,
        residual_linf=linf_err,
        steps=draft.steps,
        seconds=seconds,
        message=message,
        layer=layer,
        preimage_dim=dim,
        reproduces=reproduces,
        tolerance=tolerance,
        observed=int(problem.observed.size),
        noise=problem.noise,
        requested=requested,
        attempts=draft.attempts,
    )


def decide(
    steps: Sequence[LayerStep],
    reproduces: bool,
    rel: float,
    linf_err: float,
    tolerance: float,
    noise: float | None,
    layer_tol: float = 1e-5,
) -> tuple[Verdict, int | None, int | None, str]:
    """The verdict rule of the module docstring. Returns (verdict, layer, preimage_dim, message)."""
    failed = [s for s in steps if not s.status.ok]
    first_fail = max(failed, key=lambda s: s.layer) if failed else None
    how = "relative" if noise is None else "RMS bound"
    fit = f"residual {rel:.3g} relative l2, {linf_err:.3g} max abs through onnxruntime (tolerance {tolerance:.3g} {how})"
    fail_text = ""
    if first_fail is not None:
        fail_text = f"layer {first_fail.layer} ended '{first_fail.status.value}': {first_fail.message}"
    if reproduces:
        dims = [s for s in steps if s.preimage_dim > 0]
    elif noise is None:
        # a miss is only excused by a free choice in a hidden layer that the exact data pinned down,
        # with every layer above it solved exactly
        dims = [
            s
            for s in steps
            if 0 < s.preimage_dim < s.unknowns
            and s.layer >= 1
            and all(t.status.ok and t.residual <= layer_tol for t in steps if t.layer >= s.layer)
        ]
    else:
        dims = []
    if dims:
        step = min(dims, key=lambda s: s.layer)
        head = f"Layer {step.layer}'s preimage has dimension {step.preimage_dim} ({step.message})."
        if step.epsilon is not None:
            meaning = (
                f"Within the noise, the observation does not constrain {step.preimage_dim} direction(s) of "
                f"layer {step.layer}'s input, so many latents explain it: the latent is not determined."
            )
        elif step.layer == 0:
            meaning = (
                f"Every latent in that {step.preimage_dim}-dimensional set gives the same output of "
                "layer 0, hence the same observation: the latent is not unique."
            )
        else:
            meaning = (
                f"The input of hidden layer {step.layer} is not determined by its output, so the "
                "layer-wise argument cannot establish a unique latent."
            )
        if reproduces:
            tail = f"The returned z is one latent that reproduces the observation ({fit})."
            if fail_text:
                tail += f" Note: {fail_text}."
        else:
            tail = (
                "The point chosen in that preimage did not lead to a latent reproducing the observation"
                f"{' (' + fail_text + ')' if fail_text else ''}; {fit}. Another point may: try "
                "method='sparse' or method='gd'."
            )
        return Verdict.NOT_UNIQUE, step.layer, step.preimage_dim, f"Not unique. {head} {meaning} {tail}"
    if first_fail is None and reproduces:
        certs = "; ".join(f"layer {s.layer}: {s.certificate or 'identifiable'}" for s in steps)
        what = (
            "No other latent gives this output"
            if noise is None
            else "The estimate is determined up to the noise"
        )
        return (
            Verdict.UNIQUE,
            None,
            None,
            f"Unique. z reproduces the observation ({fit}) and every layer is identifiable ({certs}). {what}.",
        )
    if reproduces:
        reason = f"z reproduces the observation ({fit}), but {fail_text}, so it is not a certified preimage"
    elif fail_text:
        reason = f"{fail_text}. Best {fit}"
    else:
        reason = f"the best z found does not reproduce the observation: {fit}"
    message = f"Not found. {reason}."
    free = [s for s in steps if s.status.ok and 0 < s.preimage_dim < s.unknowns and s.layer >= 1]
    if not reproduces and free:
        step = min(free, key=lambda s: s.layer)
        message += (
            f" Layer {step.layer}'s input was not determined by its estimated output (dimension "
            f"{step.preimage_dim}); another choice there might lead to a latent: try method='sparse' or "
            "method='gd'."
        )
    return Verdict.NOT_FOUND, None, None, message


# ----------------------------------------------------------------------------- batches

_WORKER: dict[str, Generator] = {}


def _init_worker(payload: bytes, forked: bool) -> None:
    if forked:
        from onnxinv.inversion import lp

        lp.reset_after_fork()
    # A fresh copy: its own onnxruntime session is built on first use in this process.
    _WORKER["generator"] = pickle.loads(payload)


def _worker_chunk(
    values: np.ndarray,
    masks: np.ndarray | None,
    noise: float | None,
    method: str,
    settings: Settings,
    precision: float,
) -> list[InversionResult]:
    return solve_chunk(_WORKER["generator"], values, masks, noise, method, settings, precision)


def _invert_batch(
    generator: Generator,
    obs: Observations,
    noise: float | None,
    method: str,
    settings: Settings,
    workers: int | None,
) -> BatchInversionResult:
    start = time.perf_counter()
    count = obs.count
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    procs = (os.cpu_count() or 1) if workers is None else workers
    procs = max(1, min(procs, count))
    results: list[InversionResult] = []
    done = 0
    if workers is None and procs > 1:
        # Probe in this process: start a pool only if the rest would take long enough to pay for it.
        probe = min(count, 2)
        results += solve_chunk(
            generator, obs.values[:probe], _slice(obs.mask, 0, probe), noise, method, settings, obs.precision
        )
        done = probe
        per = sum(r.seconds for r in results) / probe
        if (count - done) * per * (1.0 - 1.0 / procs) < POOL_STARTUP_SECONDS:
            procs = 1
    if done < count:
        if procs == 1:
            results += solve_chunk(
                generator,
                obs.values[done:],
                _slice(obs.mask, done, count),
                noise,
                method,
                settings,
                obs.precision,
            )
        else:
            results += _pool_map(generator, obs, done, noise, method, settings, procs)
    return BatchInversionResult(results=tuple(results), seconds=time.perf_counter() - start, workers=procs)


def _pool_map(
    generator: Generator,
    obs: Observations,
    done: int,
    noise: float | None,
    method: str,
    settings: Settings,
    procs: int,
) -> list[InversionResult]:
    remaining = obs.count - done
    chunks = min(remaining, procs * 4)
    bounds = np.linspace(done, obs.count, chunks + 1).astype(int)
    payload = pickle.dumps(generator)
    method_name = start_method()
    pool = ProcessPoolExecutor(
        max_workers=procs,
        mp_context=multiprocessing.get_context(method_name),
        initializer=_init_worker,
        initargs=(payload, method_name == "fork"),
    )
    with _single_threaded_blas(), pool:
        futures = [
            pool.submit(
                _worker_chunk, obs.values[a:b], _slice(obs.mask, a, b), noise, method, settings, obs.precision
            )
            for a, b in zip(bounds[:-1], bounds[1:])
            if b > a
        ]
        out: list[InversionResult] = []
        for fut in futures:
            out += fut.result()
    return out


def start_method() -> str:
    """``fork`` on Linux (starts in milliseconds, and does not re-run the caller's script, so scripts
    without an ``if __name__ == "__main__"`` guard work); ``spawn`` elsewhere. Workers never use the
    parent's onnxruntime session or HiGHS scheduler: they unpickle their own generator and reset
    HiGHS's scheduler."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


def _slice(mask: np.ndarray | None, a: int, b: int) -> np.ndarray | None:
    return None if mask is None else mask[a:b]


def _blas_threads_one():
    """One BLAS thread while solving, if threadpoolctl is installed (else BLAS's own setting).

    The matrices are small (a layer's active rows), where threading costs more than it gains and, on
    a busy machine or with several worker processes, oversubscription makes BLAS calls orders of
    magnitude slower. Parallelism comes from processes instead.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        return nullcontext()
    return threadpool_limits(1, user_api="blas")


@contextmanager
def _single_threaded_blas():
    """Spawned workers read these at start-up: one BLAS thread each, so workers do not oversubscribe."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    for k in _THREAD_VARS:
        os.environ.setdefault(k, "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
