"""The pipeline's evidence stage: what can be shown about the preimage set, given the returned ``z``.

After onnxruntime has checked ``G(z)`` against the observation (:func:`~onnxinv.inversion.framework.fit_check`),
this stage gathers the evidence the verdict contract (:mod:`onnxinv.inversion.verdict`) asks for:

* ``z`` reproduces a clean observation: a **certificate** — Theorem 2 of [1]_ at every layer, either
  from the exact method's own chain of layer solves (computed from the observation down) or from the
  analysis of every layer at ``z``'s hidden values (:func:`onnxinv.inversion.identifiability.analyse_at`)
  — else a **witness**: a second latent that reproduces the observation at distance ``>= δ``, looked
  for along layer 0's null directions (:func:`onnxinv.inversion.identifiability.null_direction`) and
  by following other points of a non-identifiable hidden layer's preimage down with the exact layer
  solves. Every witness is checked through onnxruntime. A certificate needs every ReLU row it uses
  clear of zero by more than the fit tolerance (:func:`margin_failure`): a unit at round-off level may
  be off for another latent that reproduces the observation just as well.
* ``z`` fits a noisy observation (bounded noise): a **radius** from the stability argument
  (:func:`onnxinv.inversion.identifiability.stability_radius`).
* ``z`` reproduces nothing: a **refutation** — the last layer's l_inf LP (Algorithm 1 of [1]_ at the
  tolerance, as one LP: ``min δ`` with the rows of the observation widened by ``δ``) proves that no
  input of the last layer, hence no latent, comes within the tolerance of the observation; or the
  observation lies outside the output activation's range.

What was tried and settled nothing is recorded too (``EvidenceKind.NONE`` with a summary), so the
verdict's message can say so.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from onnxinv.inversion import exact, linear, linf, refine, wholenet
from onnxinv.inversion.framework import (
    Draft,
    LayerContext,
    Problem,
    Settings,
    clean_targets,
    fit_check,
    walk,
)
from onnxinv.inversion.identifiability import (
    analyse_latent,
    null_direction,
    stability_radius,
)
from onnxinv.inversion.result import LayerStep
from onnxinv.inversion.targets import build_targets, input_bounds
from onnxinv.inversion.verdict import Evidence, EvidenceKind, FitCheck
from onnxinv.layers import Activation

__all__ = ["gather", "layerwise_certificate", "refutation", "witness_distance"]

Oracle = Callable[[np.ndarray], np.ndarray]
# a whole-network LP optimum must exceed the tolerance by this factor to count as a proof
PROOF_MARGIN = 1.01
WITNESS_POINTS = 4  # other points of a hidden layer's preimage followed down per layer


def witness_distance(settings: Settings, z: np.ndarray) -> float:
    """δ of the contract: ``settings.distance · max(1, ||z||_∞)``."""
    scale = float(np.max(np.abs(z))) if np.size(z) else 0.0
    return settings.distance * max(1.0, scale)


def gather(
    problem: Problem,
    settings: Settings,
    draft: Draft,
    fit: FitCheck,
    deadline: float,
    oracle: Oracle,
    certifies: bool,
    hidden: list[np.ndarray] | None = None,
) -> tuple[tuple[Evidence, ...], tuple[LayerStep, ...]]:
    """The evidence for ``draft`` (module docstring), and the analysis of every layer at the returned
    ``z`` when it was needed (empty when the method's own steps are the certificate).

    ``certifies`` says that the method's steps are a layer-wise proof when every layer is identifiable
    (the exact method's chain, not refined). ``oracle`` runs latents through onnxruntime. ``hidden``:
    the float64 hidden values of ``z`` when the caller has them already (:func:`margin_failure`).
    """
    z = np.asarray(draft.z, dtype=np.float64)
    if problem.measure is not None:
        return _through_measurements(problem, settings, z, fit, deadline, oracle)
    if not fit.reproduces:
        if problem.noise is not None and problem.noise_model != "bounded":
            return (
                Evidence(
                    EvidenceKind.NONE, "no refutation is attempted under Gaussian noise (unbounded errors)"
                ),
            ), ()
        first = refutation(problem, settings, fit, deadline)
        if first.kind is not EvidenceKind.NONE:
            return (first,), ()
        return (first, *_whole_network_refutation(problem, settings, deadline, oracle)), ()
    if problem.noise is not None:
        if problem.noise_model != "bounded":
            return (Evidence(EvidenceKind.NONE, "no radius under Gaussian noise (unbounded errors)"),), ()
        radius = _radius(problem, z, fit, deadline)
        if radius.kind is not EvidenceKind.NONE:
            return (radius,), ()
        return (radius, wholenet.bound_radius(problem, settings, z, fit, deadline)), ()

    found: list[Evidence] = []
    margin = margin_failure(problem, settings, z, hidden, draft.factors)
    if margin is not None:
        found.append(margin)
    elif certifies and not draft.refined:
        cert = layerwise_certificate(draft.steps, "from the observation down")
        if cert is not None:
            return (cert,), ()
    steps = analyse_latent(problem, settings, z, deadline)
    cert = None if margin is not None else layerwise_certificate(steps, "at the returned latent")
    if cert is not None:
        return (cert,), steps
    if settings.witness_search:
        found.append(_witness(problem, settings, z, steps, deadline, oracle))
        if found[-1].kind is not EvidenceKind.NONE:
            return tuple(found), steps
    found.extend(_whole_network_certificate(problem, settings, z, deadline, oracle))
    return tuple(found), steps


def _whole_network_certificate(
    problem: Problem,
    settings: Settings,
    z: np.ndarray,
    deadline: float,
    oracle: Oracle,
    judge: Problem | None = None,
) -> tuple[Evidence, ...]:
    """The MILP's certificate, or its witness once onnxruntime confirms it (``judge``: the problem the
    witness must reproduce, default ``problem``)."""
    judge = judge or problem
    delta = witness_distance(settings, z)
    evidence, candidate = wholenet.certify(judge, settings, z, delta, deadline)
    if candidate is None:
        return (evidence,)
    ev = _check(judge, settings, z, candidate, delta, oracle)
    if ev is None and time.perf_counter() < deadline:
        # the MILP's point meets the float64 constraints up to its feasibility tolerance, which
        # a float32 model's output may miss: polish it by least squares from where it is, and check again
        polished = refine.least_squares(judge, settings, candidate, deadline)
        ev = _check(judge, settings, z, polished, delta, oracle)
        candidate = polished if ev is not None else candidate
    if ev is None:
        return (
            Evidence(
                EvidenceKind.NONE,
                "the MILP's second latent did not reproduce the observation through onnxruntime",
            ),
        )
    return (
        Evidence(
            EvidenceKind.WITNESS,
            f"the whole-network MILP found a second latent z' that reproduces the observation (relative l2 "
            f"{ev[0]:.3g} through onnxruntime) at max-abs distance {ev[1]:.3g} >= δ = {delta:.3g} from z.",
            {**evidence.numbers, "delta": delta},
            witness=candidate,
            witness_residual=ev[0],
            distance=float(np.linalg.norm(candidate - z)),
        ),
    )


def _whole_network_refutation(
    problem: Problem, settings: Settings, deadline: float, oracle: Oracle
) -> tuple[Evidence, ...]:
    """The MILP's proof of no preimage, or what it found instead."""
    evidence, candidate = wholenet.refute(problem, settings, deadline)
    if candidate is None:
        return (evidence,)
    output = oracle(candidate[None, :])[0]
    check = fit_check(problem, settings, output)
    if check.reproduces:
        return (
            Evidence(
                EvidenceKind.NONE,
                f"the whole-network MILP found a latent that does reproduce the observation (relative l2 "
                f"{check.rel_l2:.3g} through onnxruntime); method='milp' or 'auto' returns it",
            ),
        )
    return (
        Evidence(
            EvidenceKind.NONE, "the MILP's latent did not reproduce the observation through onnxruntime"
        ),
    )


def _through_measurements(
    problem: Problem, settings: Settings, z: np.ndarray, fit: FitCheck, deadline: float, oracle: Oracle
) -> tuple[tuple[Evidence, ...], tuple[LayerStep, ...]]:
    """Observations ``y = A·G(z)``: the layer-wise certificate and refutation need ``G(z)`` itself, so
    neither applies; a second latent with the same output ``G(z)`` (found as for a clean observation
    of ``G(z)``) also gives the same measurements, so the witness search does."""
    note = Evidence(
        EvidenceKind.NONE,
        "through a measurement matrix the layer-wise certificate does not apply (other outputs may give "
        "the same measurements)",
    )
    if not fit.reproduces:
        note = Evidence(EvidenceKind.NONE, "no layer-wise refutation through a measurement matrix")
        return (note, *_whole_network_refutation(problem, settings, deadline, oracle)), ()
    if problem.noise is not None or not settings.witness_search:
        return (note,), ()
    proxy = Problem(problem.generator, problem.generator.forward(z), None, None, problem.precision)
    steps = analyse_latent(proxy, settings, z, deadline)
    witness = _witness(proxy, settings, z, steps, deadline, oracle, judge=problem)
    if witness.kind is not EvidenceKind.NONE:
        return (witness, note), steps
    return (witness, *_whole_network_certificate(problem, settings, z, deadline, oracle)), steps


def layerwise_certificate(steps: tuple[LayerStep, ...], where: str) -> Evidence | None:
    """Theorem 2 at every layer: every step solved (``optimal``) with a preimage of dimension 0."""
    if not steps:
        return None
    parts: list[str] = []
    active_rows: list[int] = []
    ranks: list[int] = []
    unknowns: list[int] = []
    for s in steps:  # one pass: the test, the sentence and the numbers
        if not (s.status.ok and s.preimage_dim == 0):
            return None
        part = f"layer {s.layer}: {s.active_rows} active rows, rank {s.rank} of {s.unknowns}"
        parts.append(part + f", {s.certificate}" if s.certificate and s.rank < s.unknowns else part)
        active_rows.append(s.active_rows)
        ranks.append(s.rank)
        unknowns.append(s.unknowns)
    return Evidence(
        EvidenceKind.LAYERWISE,
        f"Theorem 2 holds at every layer ({where}): each layer's output determines its input "
        f"({'; '.join(parts)}), so no other latent gives this output.",
        {
            "layers": len(steps),
            "active_rows": active_rows,
            "ranks": ranks,
            "unknowns": unknowns,
            "where": where,
        },
    )


# Theorem 2 reads each ReLU layer's active rows off values that are known only up to the fit
# tolerance; a row this close to zero (relative to the layer's largest value) may be inactive for
# another latent that reproduces the observation as well.
MARGIN_FACTOR = 10.0


def margin_failure(
    problem: Problem,
    settings: Settings,
    z: np.ndarray,
    hidden: list[np.ndarray] | None = None,
    factors: dict[int, linear.RowsFactor] | None = None,
) -> Evidence | None:
    """Why the layer-wise certificate cannot stand at ``z``, or None when it may.

    The certificate uses the rows of each ReLU layer whose output is positive as equations for the
    layer's input. The observation and ``z``'s hidden values are known only up to the fit tolerance
    ``tol``: another latent that reproduces the observation within it may have a row at ``1e-7``
    exactly at zero, and then the equation it contributes does not hold for that latent. So a row
    counts only if its value exceeds ``MARGIN_FACTOR · tol · max`` of its layer; a layer whose rows
    within that margin of zero are needed for full column rank gets no certificate (the witness
    search and the whole-network MILP decide instead). On most layers no row lies in the margin and
    this costs one forward pass (none when ``hidden``, the float64 hidden values
    ``generator.hidden_values(z)``, is given). ``factors``: the Cholesky factors of the rows the
    solve used, per layer (:class:`~onnxinv.inversion.linear.RowsFactor`); where one covers the clear
    rows, their rank follows from it without a new Gram matrix
    (:func:`~onnxinv.inversion.linear.full_rank_without`).
    """
    generator = problem.generator
    if hidden is None:
        hidden = generator.hidden_values(z)
    last = len(generator.layers) - 1
    for index, layer in enumerate(generator.layers):
        if layer.activation is not Activation.RELU:
            continue
        # seen: the observed entries (None: all of them, no mask to apply)
        seen: np.ndarray | None = None
        if index == last:
            out = np.asarray(problem.x, dtype=np.float64)
            if problem.mask is not None:
                seen = np.asarray(problem.mask, bool)
        else:
            out = hidden[index + 1]
        if seen is None:
            scale = float(np.max(np.abs(out))) if out.size else 0.0
        else:
            scale = float(np.max(np.abs(out[seen]))) if seen.any() else 0.0
        if scale <= 0.0:
            continue
        tau = settings.active_rtol * scale
        margin = MARGIN_FACTOR * settings.tol * scale
        near = (out > tau) & (out <= margin)
        if seen is not None:
            near &= seen
        if not near.any():
            continue
        clear = np.flatnonzero(out > margin if seen is None else seen & (out > margin))
        n = layer.in_features
        known = None if factors is None else factors.get(index)
        if known is not None and clear.size >= n and linear.full_rank_without(known, layer.weight, clear):
            continue
        # the rank by solve_rows: a large layer's Gram accumulated block by block, no copy of the rows
        rank = (
            linear.solve_rows(layer.weight, clear, np.zeros(clear.size)).rank
            if clear.size >= n
            else clear.size
        )
        if rank >= n:
            continue
        return Evidence(
            EvidenceKind.NONE,
            f"no layer-wise certificate: layer {index} has {int(near.sum())} active row(s) within "
            f"{margin:.3g} of zero (the fit tolerance cannot tell them from inactive ones), and without "
            f"them its {clear.size} rows have rank {rank} < {n}",
            {"layer": index, "rows_near_zero": int(near.sum()), "rank_without": int(rank), "margin": margin},
        )
    return None


# ----------------------------------------------------------------------------- witnesses


def _witness(
    problem: Problem,
    settings: Settings,
    z: np.ndarray,
    steps: tuple[LayerStep, ...],
    deadline: float,
    oracle: Oracle,
    judge: Problem | None = None,
) -> Evidence:
    """A second latent reproducing the observation, or a note of what was tried; ``steps`` is the
    analysis of every layer at ``z``; ``judge`` is the problem a witness must reproduce (default:
    ``problem``)."""
    judge = judge or problem
    delta = witness_distance(settings, z)
    rng = np.random.default_rng([settings.seed, 2])
    tried: list[str] = []
    generator = problem.generator
    layer0 = generator.layers[0]
    hidden = generator.hidden_values(z)
    scale = max(float(np.max(np.abs(hidden[1]))) if hidden[1].size else 0.0, 1e-300)
    # rows within the certificate's margin of zero count as off: a direction that turns them off
    # while keeping the clear rows fixed changes the output by no more than the tolerance (checked)
    tau = max(max(settings.active_rtol, MARGIN_FACTOR * settings.tol) * scale, 1e-300)
    candidate: np.ndarray | None  # step 2's other points may not exist

    # 1. layer 0's null directions at z, for an objective and then its negative: a latent from a
    # layer LP sits at a vertex of layer 0's preimage, so on a one-dimensional null space (one row
    # short, the common case) the set reaches out from z on one side only, and two random objectives
    # would both point the other way in a quarter of the cases
    reach = max(1.0, float(np.max(np.abs(z))))
    objective = rng.standard_normal(layer0.in_features)
    for c in (-objective, objective):
        if time.perf_counter() >= deadline:
            break
        remaining = max(deadline - time.perf_counter(), 0.0)
        nd = null_direction(layer0, z, reach=reach, objective=c, tau=tau, time_limit=remaining)
        if nd is None:
            tried.append("layer 0's active rows have full column rank at z, so it has no null direction")
            break
        t = nd.step
        if nd.failure is not None:
            tried.append(f"layer 0's null-direction LP gave no direction ({nd.failure})")
            continue
        if t < delta:
            tried.append(
                f"layer 0's null directions reach only {t:.3g} (< δ = {delta:.3g}) before a row turns on"
            )
            continue
        candidate = z + t * nd.direction
        ev = _check(judge, settings, z, candidate, delta, oracle)
        if ev is not None:
            return Evidence(
                EvidenceKind.NULL_DIRECTION,
                f"z' = z + t·v with t = {t:.3g} along a direction v of layer 0's null space ({nd.active_rows} "
                f"active rows of rank {nd.rank} < {layer0.in_features} at z, every inactive row kept off) leaves "
                f"layer 0's active rows as they are; onnxruntime confirms G(z') reproduces the observation (relative l2 "
                f"{ev[0]:.3g}) at max-abs distance {ev[1]:.3g} >= δ = {delta:.3g} from z.",
                {"active_rows": nd.active_rows, "rank": nd.rank, "t": t, "delta": delta},
                witness=candidate,
                witness_residual=ev[0],
                distance=float(np.linalg.norm(candidate - z)),
                direction=nd.direction,
                step=t,
            )
        tried.append(f"z + {t:.3g}·v along layer 0's null direction did not reproduce the observation")

    # 2. other points of a non-identifiable hidden layer's preimage, followed down exactly
    loose = [s.layer for s in steps if s.layer >= 1 and s.preimage_dim > 0]
    for i in sorted(loose, reverse=True):
        for _ in range(WITNESS_POINTS):
            if time.perf_counter() >= deadline:
                break
            candidate = _follow_other_point(problem, settings, hidden, i, rng, deadline)
            if candidate is None:
                continue
            ev = _check(judge, settings, z, candidate, delta, oracle)
            if ev is not None:
                return Evidence(
                    EvidenceKind.WITNESS,
                    f"another point of hidden layer {i}'s preimage (a vertex of its eq. (4) polytope), followed "
                    f"down by the exact layer solves, gives a second latent z'; onnxruntime confirms G(z') "
                    f"reproduces the observation (relative l2 {ev[0]:.3g}) at max-abs distance {ev[1]:.3g} "
                    f">= δ = {delta:.3g} from z.",
                    {"layer": i, "delta": delta},
                    witness=candidate,
                    witness_residual=ev[0],
                    distance=float(np.linalg.norm(candidate - z)),
                    layer=i,
                )
        tried.append(f"{WITNESS_POINTS} other points of layer {i}'s preimage led to no second preimage")
    if not loose and not tried:
        tried.append("no layer is free at z")
    return Evidence(EvidenceKind.NONE, "witness search: " + "; ".join(tried) if tried else "")


def _follow_other_point(
    problem: Problem,
    settings: Settings,
    hidden: list[np.ndarray],
    index: int,
    rng: np.random.Generator,
    deadline: float,
) -> np.ndarray | None:
    """A vertex of layer ``index``'s preimage of ``z``'s value there (random objective), followed down to
    a latent by the exact method's layer solves; None if the LP or the walk gives nothing."""
    layers = problem.generator.layers
    layer = layers[index]
    ctx = LayerContext(
        index=index,
        layer=layer,
        y=hidden[index + 1],
        rows=problem.rows if index == len(layers) - 1 else None,
        bounds=input_bounds(layers, index),
        y_error=0.0,
        noise_rel=None,
        deadline=deadline,
        settings=settings,
        precision=problem.precision,
    )
    targets = clean_targets(ctx)
    res = linear.layer_lp(
        layer,
        targets,
        ctx.bounds,
        objective=rng.standard_normal(layer.in_features),
        time_limit=ctx.remaining,
    )
    if not res.ok or res.x is None:
        return None
    if index == 0:
        return np.asarray(res.x, dtype=np.float64)
    draft = walk(problem, settings, exact.solve_layer, "exact", deadline, top=index - 1, y_top=res.x)
    return np.asarray(draft.z, dtype=np.float64)


def _check(
    problem: Problem, settings: Settings, z: np.ndarray, candidate: np.ndarray, delta: float, oracle: Oracle
) -> tuple[float, float] | None:
    """(relative residual, max-abs distance) when ``candidate`` is a witness: finite, at least δ from
    ``z``, and reproducing the observation through onnxruntime; else None."""
    if not np.all(np.isfinite(candidate)):
        return None
    distance = float(np.max(np.abs(candidate - z)))
    if distance < delta:
        return None
    output = oracle(candidate[None, :])[0]
    check = fit_check(problem, settings, output)
    if not check.reproduces:
        return None
    return check.rel_l2, distance


# ----------------------------------------------------------------------------- radius


def _radius(problem: Problem, z: np.ndarray, fit: FitCheck, deadline: float) -> Evidence:
    """The stability radius at the fit rule's bound (every latent that fits is within it)."""
    radius, why = stability_radius(
        problem.generator,
        z,
        problem.x,
        problem.mask,
        fit.tolerance,
        time_limit=max(deadline - time.perf_counter(), 0.0),
    )
    if radius is None:
        return Evidence(EvidenceKind.NONE, f"no stability radius: {why}")
    return Evidence(
        EvidenceKind.STABILITY,
        f"every latent z' with max |G(z') - x| <= {fit.tolerance:.3g} on the observed entries lies within "
        f"max-abs distance {radius.radius:.3g} of z (stability argument of Theorem 3 of Lei et al.: at each "
        f"layer the sign-certain rows, {', '.join(str(r) for r in radius.rows)} from layer 0 up, have full "
        "column rank).",
        {
            "radius": radius.radius,
            "per_layer": list(radius.per_layer),
            "rows": list(radius.rows),
            "eps": fit.tolerance,
        },
        radius=radius.radius,
    )


# ----------------------------------------------------------------------------- refutation


def refutation(problem: Problem, settings: Settings, fit: FitCheck, deadline: float) -> Evidence:
    """A proof that no latent reproduces the observation within the fit rule's tolerance, or a note.

    The tolerance as a bound on every entry: clean, ``tol·||x||`` (a latent with relative l2 residual
    ``<= tol`` misses no entry by more); bounded noise, the fit rule's max-abs bound.
    """
    layers = problem.generator.layers
    last = layers[-1]
    obs = problem.observed
    bound = fit.tolerance * float(np.linalg.norm(obs)) if problem.noise is None else fit.tolerance
    out_of_range = _outside_range(last.activation, obs, bound)
    if out_of_range is not None:
        return Evidence(
            EvidenceKind.LAYER_LP,
            f"The observation has {out_of_range} observed entries outside the range of the last layer's "
            f"{last.activation.value} output by more than {bound:.3g}, so no latent produces it.",
            {"entries": out_of_range, "bound": bound},
            layer=len(layers) - 1,
        )
    if time.perf_counter() >= deadline:
        return Evidence(EvidenceKind.NONE, "no time was left to look for a proof that no preimage exists")
    ctx = LayerContext(
        index=len(layers) - 1,
        layer=last,
        y=problem.x,
        rows=problem.rows,
        bounds=input_bounds(layers, len(layers) - 1),
        y_error=0.0,
        noise_rel=None,
        deadline=deadline,
        settings=settings,
        precision=problem.precision,
    )
    targets = build_targets(last, problem.x, problem.rows, bound, noisy=True)
    scale = float(np.max(np.abs(obs))) if obs.size else 0.0
    threshold = PROOF_MARGIN * bound + 1e-7 * (1.0 + scale)
    # the threshold sends a δ* near it from the interior point method to HiGHS (ipm.DenseSession)
    res = linf.min_delta(ctx, targets, threshold=threshold)
    if not res.ok or res.x is None:
        return Evidence(
            EvidenceKind.NONE,
            f"the last layer's l_inf LP ended '{res.status.value}' ({res.message}), so nothing was proved",
        )
    t_star = float(res.x[-1])
    if t_star > threshold:
        return Evidence(
            EvidenceKind.LAYER_LP,
            f"Every input of the last layer (layer {len(layers) - 1}) misses some observed entry by at least "
            f"{t_star:.3g} (its l_inf LP, Algorithm 1 of Lei et al. as one LP, is optimal there), more than "
            f"the tolerance {bound:.3g}: no latent reproduces the observation.",
            {"t_star": t_star, "bound": bound, "rows": int(targets.count)},
            layer=len(layers) - 1,
        )
    return Evidence(
        EvidenceKind.NONE,
        f"the last layer alone can come within {t_star:.3g} of the observation (tolerance {bound:.3g}), so it "
        "does not rule a preimage out; the layers below may",
    )


def _outside_range(act: Activation, obs: np.ndarray, bound: float) -> int | None:
    if act is Activation.RELU:
        bad = obs < -bound
    elif act is Activation.SIGMOID:
        bad = (obs < -bound) | (obs > 1.0 + bound)
    elif act is Activation.TANH:
        bad = np.abs(obs) > 1.0 + bound
    else:
        return None
    count = int(np.count_nonzero(bad))
    return count or None
