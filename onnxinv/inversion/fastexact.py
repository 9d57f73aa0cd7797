"""The exact method's fast path: the same answer as :func:`onnxinv.inversion.exact.solve` followed by
the refine stage's fit test, for the common case, with none of the generic walk's fixed cost.

Problem
-------
A clean observation ``x = G(z*)`` of a dense ReLU network, every entry observed, no measurement
matrix. Layer by layer from the output (Theorem 2 of [1]_, as in :mod:`onnxinv.inversion.exact`):

.. math::

    I = \\{j : y_j > \\tau\\}, \\qquad u = \\arg\\min_u \\|W_I u - (y_I - b_I)\\|_2,

by the Cholesky route of :func:`onnxinv.inversion.linear.solve_rows` (the same kernel, so the same
``u``, condition estimate and spread), then the checks of :func:`onnxinv.inversion.exact.clean_layer`
on the branch where they all pass: the active rows are consistent (RMS misfit ``<= δ``) and every other
row and the input bound hold at the projected ``u`` within ``δ`` (or within the widened tolerance
``δ + c_e·sqrt(n)·e_u·max_j ||w_j||``). For ReLU rows the row bounds of
:func:`onnxinv.inversion.targets.build_targets` are ``y_j`` on the active rows and ``a_j <= max(y_j,
0)`` on the others, all with unit scale, so the misfit is computed from one product ``W u + b`` that
also gives the layer's residual.

Whenever a layer leaves that branch (too few active rows, rank or conditioning, an inconsistent
system, a violated row) or the float64 forward pass of the latent misses the fit rule, :func:`solve`
returns None and the caller runs the generic pipeline, which then takes the branch that applies: this
path decides nothing the generic walk would decide otherwise. The hidden values of the returned latent
(one float64 forward pass) are returned with it, so that the fit, the refine stage's test and the
certificate's margin check (:func:`onnxinv.inversion.evidence.margin_failure`) share that pass.

Chunks
------
:func:`solve_many` takes a chunk's observations at once: each one's least squares is its own (the
active rows differ), everything else runs on the stacked rows (the elementwise tests and maxima as
they are, the products ``W u`` and the norms as stacked ``matmul``, one BLAS matrix-vector product or
dot per row, so every observation gets the numbers it gets alone, whatever its chunk).
:func:`clean_fits` and :func:`margin_clear` make the pipeline's fit check and the margin test of the
evidence stage on the same stacked rows; a row near zero sends the observation to
``margin_failure`` itself, which then reuses the Cholesky factor of that layer's solve (kept for the
observations with active rows near the margin, within a memory budget; without it the check forms
the Gram matrix again and reaches the same answer). One observation takes the same steps on plain
vectors (stacking one row costs more than it saves).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxinv.inversion import linear
from onnxinv.inversion.evidence import MARGIN_FACTOR
from onnxinv.inversion.framework import ERROR_FACTOR, ROUNDING_FACTOR, Draft, Problem, Settings
from onnxinv.inversion.result import LayerStep, SolverStatus
from onnxinv.inversion.verdict import FitCheck
from onnxinv.layers import Activation, Generator, Layer

__all__ = [
    "FastDraft",
    "GramLog",
    "applies",
    "clean_fits",
    "generator_applies",
    "margin_clear",
    "solve",
    "solve_many",
]

_CERTIFICATE = "full column rank (Theorem 2)"
# solve_many keeps a layer's factor where an active row of its estimated output lies within this many
# certificate margins of zero (the estimate is not quite the latent's hidden values)
_KEEP_FACTOR = 4.0
# ... and at most this many bytes of factors per chunk (beyond, the margin check forms the Gram)
_FACTOR_BYTES = 64 << 20


class GramLog:
    """An opt-in record of the active systems the fast path's Cholesky route accepted (it factored,
    condition estimate within ``linear.COND_LIMIT``): ``entries[(k, i)] = (rows, measure(G))`` for
    observation ``k`` of the chunk and layer ``i``, with ``G = W_IᵀW_I`` the Gram matrix of the active
    rows ``I``, read before it is factored in place, and ``rows`` the mask of ``I`` over the layer's
    outputs as ``np.packbits(mask).tobytes()`` (an eighth of a byte per row). Also for observations
    that later leave the fast path. Only that and what ``measure`` returns is kept, not ``n²`` floats
    per observation (the audit's layer statistics take the coherence of ``G`` there instead of forming
    it again)."""

    __slots__ = ("entries", "measure")

    def __init__(self, measure: Callable[[np.ndarray], Any]) -> None:
        self.measure = measure
        self.entries: dict[tuple[int, int], tuple[bytes, Any]] = {}


class FastDraft:
    """A draft of the fast path and the float64 hidden values ``[z, h_1, ..., G(z)]`` of its latent."""

    __slots__ = ("draft", "hidden")

    def __init__(self, draft: Draft, hidden: list[np.ndarray]) -> None:
        self.draft = draft
        self.hidden = hidden


def applies(problem: Problem) -> bool:
    """True when the fast path may try ``problem``: clean, fully observed, no measurement matrix, and a
    generator of dense ReLU layers."""
    return _problem_applies(problem) and generator_applies(problem.generator)


def _problem_applies(problem: Problem) -> bool:
    return problem.noise is None and problem.mask is None and problem.measure is None


def generator_applies(generator: Generator) -> bool:
    """True when every layer of ``generator`` is a dense ReLU layer (the fast path's networks)."""
    return all(
        layer.activation is Activation.RELU and isinstance(layer.weight, np.ndarray)
        for layer in generator.layers
    )


def solve(problem: Problem, settings: Settings, deadline: float) -> FastDraft | None:
    """The exact method's draft of ``problem`` when every layer takes the certified branch and the
    latent reproduces the observation in float64 (the module docstring); None otherwise, and always
    for a problem outside :func:`applies` or once ``deadline`` (a ``time.perf_counter()`` value) has
    passed (the generic walk then records the time limit)."""
    if not applies(problem):
        return None
    return _solve_one(problem, settings, deadline)


def _solve_one(
    problem: Problem, settings: Settings, deadline: float, log: GramLog | None = None
) -> FastDraft | None:
    """:func:`solve` for a problem known to be in :func:`applies` (``log``: as :func:`solve_many`'s,
    observation 0)."""
    # one observation: the steps of solve_many on plain vectors (its stacked arrays cost more here),
    # with array methods and Python floats where numpy's function wrappers would cost more than the
    # arithmetic (the same operations, so the same numbers)
    layers = problem.generator.layers
    precision = problem.precision
    rtol = max(settings.tol, ROUNDING_FACTOR * precision)
    active_rtol = settings.active_rtol
    y = problem.x
    y_error = 0.0
    steps: list[LayerStep] = []
    factors: dict[int, linear.RowsFactor] = {}
    perf_counter = time.perf_counter
    for i in range(len(layers) - 1, -1, -1):
        start = perf_counter()
        if start >= deadline:
            return None
        layer = layers[i]
        w, b = layer.weight, layer.bias
        n = w.shape[1]
        scale = float(_max(_abs(y))) if y.size else 0.0
        delta = max(rtol * scale + ERROR_FACTOR * y_error, 1e-300)
        tau = max(active_rtol * scale, 10.0 * y_error, 1e-300)
        active = y > tau
        idx = active.nonzero()[0]
        n_eq = idx.size
        if n_eq < n:
            return None
        solved = _least_squares(w, idx, y[idx] - b[idx], None if log is None else log.measure)
        if solved is None:
            return None
        if log is not None and solved.measured is not None:
            log.entries[(0, i)] = (np.packbits(active).tobytes(), solved.measured[0])
        u, rms = solved.u, solved.rms
        if solved.factor is not None:
            factors[i] = linear.RowsFactor(idx, solved.factor, solved.cond)
        if not rms <= delta:
            return None
        if i > 0:
            u = u.clip(0.0, _INF)
        pre = w @ u + b
        worst = _largest_misfit(pre, y, active)
        delta_all = delta
        u_error = 0.0
        # the error of u: for the next layer's thresholds, and here when a row needs the wider bound
        # (layer 0's is used by neither, so its spread is not made)
        if i > 0 or worst > delta:
            prior = y_error + precision * scale
            seen = rms * math.sqrt(n_eq / max(n_eq - n, 1))
            u_error = _error(prior, seen, solved)
        if worst > delta:
            gain = float(np.max(linear.row_norms(w))) if w.shape[0] else 0.0
            delta_all += ERROR_FACTOR * math.sqrt(n) * u_error * gain
        if not worst <= delta_all:
            return None
        err = float(_max(_abs(_maximum(pre, 0.0) - y))) if pre.size else 0.0
        residual = err / scale if scale > 0 else err
        steps.append(
            _certified_step(
                layer,
                i,
                layer.describe_activation(),
                n_eq,
                residual,
                perf_counter() - start,
                solved.how,
                delta_all,
                worst,
            )
        )
        y = u
        y_error = u_error
    # the float64 forward pass of the latent, as generator.hidden_values (dense ReLU layers)
    hidden = [y]
    h = y
    for layer in layers:
        h = _maximum(h @ layer.weight.T + layer.bias, 0.0)
        hidden.append(h)
    fit = _relative_l2_one(h, problem.x)
    if not fit <= rtol:  # the refine stage would run: leave it to the generic pipeline
        return None
    steps.reverse()
    return FastDraft(Draft(z=y, method="exact", steps=tuple(steps), fit=fit, factors=factors), hidden)


# the ufuncs themselves (a vector's max and any as the reduce ndarray.max and .any call, without their wrappers)
_abs, _maximum, _where, _max, _any, _INF = (
    np.abs,
    np.maximum,
    np.where,
    np.maximum.reduce,
    np.logical_or.reduce,
    np.inf,
)


def solve_many(
    problems: Sequence[Problem],
    settings: Settings,
    deadlines: Sequence[float],
    log: GramLog | None = None,
    xs: np.ndarray | None = None,
) -> list[FastDraft | None]:
    """:func:`solve` for observations of one generator at once, with the same answers one by one.

    Each observation's least squares is its own (the active rows differ); everything else runs on the
    stacked observations: the elementwise tests and maxima directly, the products ``W u`` and the
    norms as stacked ``matmul`` (one BLAS matrix-vector product or dot per observation, so each
    observation's numbers are the ones it gets alone, whatever the chunk). ``log``: records each
    accepted system's active rows and a measure of its Gram matrix (:class:`GramLog`). ``xs``: the
    problems' observations already stacked (M, n) float64, row ``k`` equal to ``problems[k].x`` (a
    chunk's values; saves stacking them again).
    """
    count = len(problems)
    out: list[FastDraft | None] = [None] * count
    if count == 0:
        return out
    generator = problems[0].generator
    if not generator_applies(generator):
        return out
    if count == 1:
        one = problems[0]
        return [_solve_one(one, settings, deadlines[0], log) if _problem_applies(one) else None]
    alive = np.array([_problem_applies(p) and p.generator is generator for p in problems], dtype=bool)
    if not alive.any():
        return out
    layers = generator.layers
    precision = np.array([p.precision for p in problems])
    rtol = np.maximum(settings.tol, ROUNDING_FACTOR * precision)
    xs = ys = np.stack([p.x for p in problems]) if xs is None else xs
    y_error = np.zeros(count)
    steps: list[list[LayerStep]] = [[] for _ in range(count)]
    factors: list[dict[int, linear.RowsFactor]] = [{} for _ in range(count)]
    kept_bytes = 0
    measure = None if log is None else log.measure
    for i in reversed(range(len(layers))):
        start = time.perf_counter()
        alive &= np.array([start < d for d in deadlines], dtype=bool)
        layer = layers[i]
        w, b = layer.weight, layer.bias
        n = layer.in_features
        scale = np.max(np.abs(ys), axis=1) if ys.shape[1] else np.zeros(count)
        delta = np.maximum(rtol * scale + ERROR_FACTOR * y_error, 1e-300)
        tau = np.maximum(np.maximum(settings.active_rtol * scale, 10.0 * y_error), 1e-300)
        active = ys > tau[:, None]
        n_eq = np.count_nonzero(active, axis=1)
        alive &= n_eq >= n
        us = np.zeros((count, n))
        rms = np.zeros(count)
        solves: list[_Solved | None] = [None] * count
        # the factors the certificate's margin check may reuse: kept where an active row of the
        # layer's output lies near the margin (elsewhere margin_clear settles it; a factor not kept
        # only costs the check a Gram matrix, with the same answer)
        high = (_KEEP_FACTOR * MARGIN_FACTOR * settings.tol) * scale
        near: np.ndarray = np.any(active & (ys <= high[:, None]), axis=1)
        # the right-hand sides y - b of every observation at once (the same subtraction per entry),
        # each system's taken from its row
        targets = ys - b
        for k in alive.nonzero()[0].tolist():  # Python ints index the lists and rows faster
            idx = active[k].nonzero()[0]
            solved = _least_squares(w, idx, targets[k].take(idx), measure)
            if solved is None:
                alive[k] = False
                continue
            if log is not None and solved.measured is not None:
                log.entries[(int(k), i)] = (np.packbits(active[k]).tobytes(), solved.measured[0])
            solves[k] = solved
            us[k] = solved.u
            rms[k] = solved.rms
            if near[k] and solved.factor is not None and kept_bytes + solved.factor.nbytes <= _FACTOR_BYTES:
                factors[k][i] = solved.held()  # type: ignore[assignment]  # a factor: not None
                kept_bytes += solved.factor.nbytes
        prior = y_error + precision * scale
        seen = rms * np.sqrt(n_eq / np.maximum(n_eq - n, 1))
        alive &= rms <= delta
        if i > 0:
            us = us.clip(0.0, np.inf)
        pre = np.matmul(w, us[:, :, None])[:, :, 0] + b
        worst = _largest_misfits(pre, ys, active)
        delta_all = delta.copy()
        wide = worst > delta
        # the error of u: for the next layer's thresholds, and where a row needs the wider bound
        # (layer 0's is used by neither, so its spread is not made)
        u_error = np.zeros(count)
        prior_k, seen_k = prior.tolist(), seen.tolist()
        for k in (alive if i > 0 else alive & wide).nonzero()[0].tolist():
            u_error[k] = _error(prior_k[k], seen_k[k], solves[k])  # type: ignore[arg-type]  # solved where alive
        if wide.any():
            gain = float(np.max(linear.row_norms(w))) if w.shape[0] else 0.0
            delta_all[wide] += ERROR_FACTOR * math.sqrt(n) * u_error[wide] * gain
        alive &= worst <= delta_all
        if ys.shape[1]:
            scratch = np.maximum(pre, 0.0)
            np.subtract(scratch, ys, out=scratch)
            err = np.abs(scratch, out=scratch).max(axis=1)
        else:
            err = np.zeros(count)
        residual = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), err)
        seconds = (time.perf_counter() - start) / max(int(alive.sum()), 1)
        activation = layer.describe_activation()
        # Python numbers per observation (the same values as the arrays' entries)
        n_eq_k, residual_k, delta_k, worst_k = (
            n_eq.tolist(),
            residual.tolist(),
            delta_all.tolist(),
            worst.tolist(),
        )
        for k in alive.nonzero()[0].tolist():
            steps[k].append(
                _certified_step(
                    layer,
                    i,
                    activation,
                    n_eq_k[k],
                    residual_k[k],
                    seconds,
                    solves[k].how,  # type: ignore[union-attr]  # solved where alive
                    delta_k[k],
                    worst_k[k],
                )
            )
        if not alive.any():
            return out
        ys = us
        y_error = u_error
    # the float64 forward pass of every latent, [z, h_1, ..., G(z)], as generator.hidden_values
    hidden = [ys]
    h = ys
    for layer in layers:
        h = np.maximum(np.matmul(h[:, None, :], layer.weight.T)[:, 0, :] + layer.bias, 0.0)
        hidden.append(h)
    fit = _relative_l2(hidden[-1], xs)
    fit_k = fit.tolist()
    for k in (alive & (fit <= rtol)).nonzero()[0].tolist():  # otherwise the refine stage would run
        steps[k].reverse()
        draft = Draft(
            z=ys[k], method="exact", steps=tuple(steps[k]), fit=fit_k[k], factors=factors[k] or None
        )
        out[k] = FastDraft(draft, [v[k] for v in hidden])
    return out


def _largest_misfit(pre: np.ndarray, y: np.ndarray, active: np.ndarray) -> float:
    """The largest violation of the clean ReLU row bounds (:func:`onnxinv.inversion.targets.build_targets`)
    by the pre-activations ``pre = W u + b``: ``pre_j = y_j`` on the active rows (``y_j > τ > 0``),
    ``pre_j <= max(y_j, 0)`` on the others; 0 when none is violated, NaN when ``pre`` holds one.

    With ``d = pre - max(y, 0)`` (``= pre - y`` where active) the misfit of a row is ``|d_j|`` where
    active and ``max(d_j, 0)`` elsewhere, so the largest is ``max(|d| on the active rows, d elsewhere,
    0)``: the largest of the rows' ``max(lower_j - pre_j, pre_j - upper_j, 0)`` (``lower_j = y_j``
    where active), from three operations on the rows instead of six."""
    if not y.size:
        return 0.0
    d = pre - _maximum(y, 0.0)
    worst = float(_max(_where(active, _abs(d), d)))
    return 0.0 if worst <= 0.0 else worst  # the bounds' 0 (+0.0); NaN stays


def _largest_misfits(pre: np.ndarray, ys: np.ndarray, active: np.ndarray) -> np.ndarray:
    """:func:`_largest_misfit` of each row of the stacked ``pre``, ``ys``, ``active`` (M, n)."""
    if not ys.shape[1]:
        return np.zeros(ys.shape[0])
    # the same elementwise operations as _largest_misfit, in one scratch array (a chunk's rows are
    # megabytes: fresh temporaries cost more than the arithmetic)
    d = np.maximum(ys, 0.0)
    np.subtract(pre, d, out=d)
    np.copyto(d, np.abs(d), where=active)
    worst = d.max(axis=1)
    worst[worst <= 0.0] = 0.0
    return worst


def clean_fits(
    problems: Sequence[Problem], settings: Settings, outputs: np.ndarray, xs: np.ndarray | None = None
) -> list[FitCheck]:
    """:func:`~onnxinv.inversion.framework.fit_check` of clean, fully observed ``problems`` (the fast
    path's) against their onnxruntime ``outputs`` (M, n), on the stacked rows; the same numbers (for
    one problem, the same operations on plain vectors: stacking one row costs more). ``xs``: the
    problems' observations already stacked, as :func:`solve_many`'s."""
    if len(problems) == 1:
        return [_clean_fit_one(problems[0], settings, outputs[0])]
    x = _rows([p.x for p in problems]) if xs is None else xs
    with np.errstate(over="ignore", invalid="ignore"):
        # in float64 (a float32 output converts exactly), without a converted copy of the outputs
        diff = np.subtract(outputs, x, dtype=np.float64)
        err = np.sqrt(np.matmul(diff[:, None, :], diff[:, :, None])[:, 0, 0])
        scale = np.sqrt(np.matmul(x[:, None, :], x[:, :, None])[:, 0, 0])
        # |diff| in place: the norms above are made
        linf = np.abs(diff, out=diff).max(axis=1) if diff.shape[1] else np.zeros(len(problems))
    size = diff.shape[1]
    checks = []
    # Python floats per observation (the arrays' entries), not numpy scalars one by one
    err_k, scale_k, linf_k = err.tolist(), scale.tolist(), linf.tolist()
    root = math.sqrt(size) if size else 0.0
    for k, problem in enumerate(problems):
        e = err_k[k]
        if not math.isfinite(e):  # a non-finite residual entry makes the norm non-finite too
            rel = lin = rms = float("inf")
        else:
            rel = e / scale_k[k] if scale_k[k] > 0 else e
            lin = linf_k[k] if size else 0.0
            rms = e / root if size else 0.0
        tol = max(settings.tol, ROUNDING_FACTOR * problem.precision)
        checks.append(FitCheck(rel <= tol, rel, lin, rms, tol, "relative l2"))
    return checks


def margin_clear(
    problems: Sequence[Problem],
    settings: Settings,
    hidden: Sequence[list[np.ndarray]],
    xs: np.ndarray | None = None,
) -> np.ndarray:
    """Per problem, True when no ReLU row of any layer lies within the certificate's margin of zero,
    so that :func:`onnxinv.inversion.evidence.margin_failure` is None without a rank test (the same
    test on stacked rows; False means: ask ``margin_failure`` itself). ``xs``: the problems'
    observations already stacked, as :func:`solve_many`'s."""
    count = len(problems)
    if count == 1:
        return np.array([_margin_clear_one(problems[0], settings, hidden[0])])
    clear = np.ones(count, dtype=bool)
    layers = problems[0].generator.layers if count else ()
    last = len(layers) - 1
    for index in range(len(layers)):
        if index == last and xs is not None:
            out = xs
        else:
            out = _rows([p.x for p in problems] if index == last else [h[index + 1] for h in hidden])
        if not out.shape[1]:
            continue
        scale = np.max(np.abs(out), axis=1)
        tau = settings.active_rtol * scale
        margin = MARGIN_FACTOR * settings.tol * scale
        near = ((out > tau[:, None]) & (out <= margin[:, None])).any(axis=1)
        clear &= ~(near & (scale > 0.0))
    return clear


def _margin_clear_one(problem: Problem, settings: Settings, hidden: list[np.ndarray]) -> bool:
    """:func:`margin_clear` of one problem, on plain vectors."""
    layers = problem.generator.layers
    last = len(layers) - 1
    active_rtol, margin_rtol = settings.active_rtol, MARGIN_FACTOR * settings.tol
    for index in range(len(layers)):
        out = problem.x if index == last else hidden[index + 1]
        if not out.size:
            continue
        scale = float(_max(_abs(out)))
        if not scale > 0.0:
            continue
        tau = active_rtol * scale
        margin = margin_rtol * scale
        if _any((out > tau) & (out <= margin)):
            return False
    return True


def _clean_fit_one(problem: Problem, settings: Settings, output: np.ndarray) -> FitCheck:
    """:func:`~onnxinv.inversion.framework.fit_check` of one clean, fully observed problem without a
    measurement matrix (the fast path's), by the same operations: ``||d||`` as ``sqrt(d·d)`` (what
    ``np.linalg.norm`` of a vector computes), inf when a residual entry or the norm is not finite."""
    x = problem.x
    with np.errstate(over="ignore", invalid="ignore"):
        diff = output - x
        sq = float(diff.dot(diff)) if diff.size else 0.0
    tol = max(settings.tol, ROUNDING_FACTOR * problem.precision)
    if not math.isfinite(sq):  # a non-finite entry, or an overflowing norm: fit_check's inf
        inf = float("inf")
        return FitCheck(inf <= tol, inf, inf, inf, tol, "relative l2")
    err = math.sqrt(sq)
    scale = math.sqrt(float(x.dot(x))) if x.size else 0.0
    rel = err / scale if scale > 0 else err
    size = diff.size
    linf = float(_max(_abs(diff))) if size else 0.0
    rms = err / math.sqrt(size) if size else 0.0
    return FitCheck(rel <= tol, rel, linf, rms, tol, "relative l2")


def _relative_l2_one(output: np.ndarray, x: np.ndarray) -> float:
    """:func:`_relative_l2` of one row, by the dot products the stacked version makes per row."""
    with np.errstate(over="ignore", invalid="ignore"):
        diff = output - x
        err = math.sqrt(diff.dot(diff)) if diff.size else 0.0
        scale = math.sqrt(x.dot(x)) if x.size else 0.0
    err = err if math.isfinite(err) else math.inf
    return err / scale if scale > 0 else err


def _rows(vectors: list[np.ndarray]) -> np.ndarray:
    """The vectors as the rows of one array (a view for a single one)."""
    return vectors[0][None, :] if len(vectors) == 1 else np.stack(vectors)


def _relative_l2(output: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row, :func:`~onnxinv.inversion.framework.residual_norms`' relative l2 of ``output - x``
    (inf when not finite), by stacked dot products: the numbers one row gets alone."""
    with np.errstate(over="ignore", invalid="ignore"):
        diff = output - x
        err = np.sqrt(np.matmul(diff[:, None, :], diff[:, :, None])[:, 0, 0])
        scale = np.sqrt(np.matmul(x[:, None, :], x[:, :, None])[:, 0, 0])
    err = np.where(np.isfinite(err), err, np.inf)
    return np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), err)


def _certified_step(
    layer: Layer,
    index: int,
    activation: str,
    active_rows: int,
    residual: float,
    seconds: float,
    how: str,
    delta: float,
    worst: float,
) -> LayerStep:
    """The step the exact walk records for a layer inverted on the certified branch (full column rank,
    every row within ``delta``)."""
    n = layer.in_features
    return LayerStep(
        layer=index,
        activation=activation,
        active_rows=active_rows,
        observed_rows=layer.out_features,
        unknowns=n,
        rank=n,
        preimage_dim=0,
        identifiable=True,
        status=SolverStatus.OPTIMAL,
        residual=residual,
        seconds=seconds,
        message=(
            f"least squares ({how}) on {active_rows} active rows; every row holds within "
            f"{delta:.2g} on the layer's output (largest misfit {worst:.3g})"
        ),
        certificate=_CERTIFICATE,
    )


class _Solved:
    """One active system's solution by :func:`_least_squares`: ``u``, the RMS residual, the condition
    estimate, how it was solved, and the Cholesky factor (None from the QR route); the spread is made
    on first use (the walk needs it only where the error of ``u`` is used)."""

    __slots__ = ("_spread", "cond", "factor", "measured", "method", "rms", "rows", "u")

    def __init__(
        self,
        u: np.ndarray,
        rms: float,
        cond: float,
        method: str,
        rows: np.ndarray,
        factor: np.ndarray | None,
        spread: float | None = None,
        measured: tuple[Any] | None = None,
    ) -> None:
        self.u, self.rms, self.cond, self.method = u, rms, cond, method
        self.rows, self.factor, self._spread = rows, factor, spread
        self.measured = measured  # (measure(Gram),) when asked for, on the gathered route

    @property
    def spread(self) -> float:
        if self._spread is None:
            self._spread = linear._spread(self.factor) if self.factor is not None else float("inf")
        return self._spread

    @property
    def how(self) -> str:
        return f"{self.method}, condition ~{self.cond:.2g}"

    def held(self) -> linear.RowsFactor | None:
        return None if self.factor is None else linear.RowsFactor(self.rows, self.factor, self.cond)


def _error(prior: float, seen: float, solved: _Solved) -> float:
    """The typical error of a layer's ``u``: the larger of the error carried from above and the misfit
    seen, times the spread (0 when not finite), as :func:`onnxinv.inversion.exact.clean_layer`."""
    value = max(prior, seen) * solved.spread  # Python floats: an overflow gives inf, not an error
    return value if math.isfinite(value) else 0.0


def _least_squares(
    w: np.ndarray, idx: np.ndarray, t: np.ndarray, measure: Callable[[np.ndarray], Any] | None = None
) -> _Solved | None:
    """The active system ``W[idx] u = t`` by the Cholesky route of
    :func:`onnxinv.inversion.linear.solve_rows`, the same LAPACK calls in the same order (factor,
    ``pocon`` condition estimate, solve, one step of iterative refinement, Hutchinson's spread), without
    its general plumbing; a system too large to gather goes through ``solve_rows`` itself. None when
    that route does not give full column rank (the generic walk then takes the pivoted QR, or the LP).
    ``measure``: called on the Gram matrix (C order) before it is factored; the result carries its value
    (on the gathered route only)."""
    m, n = idx.size, w.shape[1]
    if m * n > linear.BLOCK_ENTRIES or n == 0:
        ls = linear.solve_rows(w, idx, t)
        if ls.rank != n:
            return None
        return _Solved(ls.u, ls.rms, ls.cond, ls.method, idx, ls.factor, ls.spread)
    a = w.take(idx, axis=0)  # = w[idx], a C-ordered copy of the rows, without fancy indexing's overhead
    gram = a.T @ a
    measured = None if measure is None else (measure(gram),)  # before potrf overwrites it
    gram_f = gram.T  # symmetric: the transpose is the same matrix in Fortran order
    rhs = a.T @ t
    anorm = float(linear._lange("1", gram_f))
    factor, info = linear._potrf(gram_f, lower=0, clean=1, overwrite_a=1)
    # a non-finite diagonal entry makes the trace non-finite (an overflowing sum only sends the
    # system to the generic route)
    if info != 0 or not (math.isfinite(anorm) and math.isfinite(factor.trace())):
        return None
    rcond, info = linear._pocon(factor, anorm, uplo="U")
    rcond = float(rcond)
    if info != 0 or not rcond > 0:
        return None
    cond = math.sqrt(1.0 / rcond)
    if not cond <= linear.COND_LIMIT:
        return None
    u, info = linear._potrs(factor, rhs, lower=0)
    if info != 0:
        return None
    step, info = linear._potrs(factor, a.T @ (t - a @ u), lower=0)
    u = u + step
    r = a @ u - t
    rw = math.sqrt(r.dot(r))  # np.linalg.norm of a vector, without its dispatch
    return _Solved(u, rw / math.sqrt(m), cond, "cholesky", idx, factor, measured=measured)
