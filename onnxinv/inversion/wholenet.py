"""The whole-network engine in the pipeline: when the layer-wise argument runs out, the MILP of
:mod:`onnxinv.inversion.milp` finds, certifies, refutes and bounds preimages (issue 11's uses).

Every use is bounded by ``Settings.milp_time`` and the observation's deadline; an unfinished program
decides nothing and says so. The preimage set the engine reasons about is the fit rule's own: clean
observations, every observed entry within ``tol·||x||`` (which every latent the fit rule accepts meets);
bounded noise, within the fit rule's max-abs bound. A claim counts only when it holds for every
latent (the box the observation implies lies inside the engine's search box), or, when the user states a
latent box (``Settings.latent_box``), for every latent inside it — and the evidence says which.

References
----------
.. [1] V. Tjeng, K. Xiao, R. Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
   Programming", ICLR 2019.
"""

from __future__ import annotations

import time

import numpy as np

from onnxinv.errors import OnnxInvError
from onnxinv.inversion import milp
from onnxinv.inversion.framework import Problem, Settings, relative_tolerance
from onnxinv.inversion.verdict import Evidence, EvidenceKind, FitCheck

__all__ = ["applies", "bound_radius", "certify", "engine_for", "refute"]

SEARCH_RADIUS = milp.DEFAULT_RADIUS  # the box searched when the user states none (claims must be global)


def applies(problem: Problem, settings: Settings) -> str | None:
    """Why the engine is not used for ``problem`` (None: it is)."""
    if not settings.milp:
        return "the whole-network MILP is turned off (Settings.milp)"
    if problem.noise is not None and problem.noise_model != "bounded":
        return "the whole-network MILP models bounded noise, not Gaussian noise"
    return milp.applicability(problem.generator.layers, problem.measure)


def _band(problem: Problem, settings: Settings) -> tuple[float | None, float]:
    """(noise, tol) of the engine's preimage set: the fit rule's own (module docstring)."""
    obs = problem.observed
    rtol = relative_tolerance(problem, settings)
    if problem.noise is None:
        return None, max(rtol * float(np.linalg.norm(obs)), 1e-300)
    scale = float(np.max(np.abs(obs))) if obs.size else 0.0
    return float(problem.noise), max(rtol * scale, 1e-300)


def engine_for(problem: Problem, settings: Settings, deadline: float) -> tuple[milp.MilpEngine | None, str]:
    """The engine for ``problem`` (bounds tightened within the budget), or (None, why not)."""
    why = applies(problem, settings)
    if why is not None:
        return None, why
    budget = _budget(settings, deadline)
    if budget <= 0:
        return None, "no time was left for the whole-network MILP"
    try:
        return milp.build(_spec(problem, settings), time_limit=0.5 * budget), ""
    except OnnxInvError as exc:
        return None, f"the whole-network MILP could not be set up: {exc}"


def _spec(problem: Problem, settings: Settings) -> milp.PreimageSpec:
    """The engine's problem: the fit rule's band, the stated latent box or the search box."""
    noise, tol = _band(problem, settings)
    radius = settings.latent_box if settings.latent_box is not None else SEARCH_RADIUS
    return milp.PreimageSpec.create(
        problem.generator.layers,
        problem.x,
        mask=problem.mask,
        measure=problem.measure,
        noise=noise,
        tol=tol,
        precision=problem.precision,
        radius=radius,
    )


def _budget(settings: Settings, deadline: float) -> float:
    return min(settings.milp_time, deadline - time.perf_counter())


def _scope(settings: Settings, global_claim: bool, box: milp.LatentBox) -> str | None:
    """Whom a claim covers, or None when it cannot count (it holds only inside an assumed box)."""
    if global_claim or box.implied:
        return "every latent"
    if settings.latent_box is not None:
        return f"every latent with max |z_i| <= {settings.latent_box:g} (the stated latent box)"
    return None


def certify(
    problem: Problem, settings: Settings, z: np.ndarray, delta: float, deadline: float
) -> tuple[Evidence, np.ndarray | None]:
    """MILP certificate (``EvidenceKind.MILP``), or a note; and a witness candidate for the caller to
    check through onnxruntime (None when there is none)."""
    engine, why = engine_for(problem, settings, deadline)
    if engine is None:
        return Evidence(EvidenceKind.NONE, why), None
    try:
        result = engine.certify(z, delta, time_limit=max(_budget(settings, deadline), 0.0))
    except OnnxInvError as exc:
        return Evidence(EvidenceKind.NONE, f"the MILP certificate could not run: {exc}"), None
    box = result.box
    binaries = engine.tightening.binaries
    numbers = {
        "delta": delta,
        "nodes": result.nodes,
        "solves": result.solves,
        "binaries": binaries,
        "seconds": result.seconds,
    }
    if result.finding is milp.Finding.UNIQUE:
        scope = _scope(settings, result.global_claim, box)
        if scope is None:
            return (
                Evidence(
                    EvidenceKind.NONE,
                    f"the MILP shows every reproducing latent inside its search box [-{SEARCH_RADIUS:g}, "
                    f"{SEARCH_RADIUS:g}]^k within δ = {delta:.3g} of z, but the observation does not bound "
                    "the latent to that box, so it proves nothing about latents outside it (state a latent "
                    "box to accept it)",
                    numbers,
                ),
                None,
            )
        return (
            Evidence(
                EvidenceKind.MILP,
                f"the whole-network MILP (big-M, {binaries} binaries after bound tightening) proves that "
                f"{scope} reproducing the observation within max-abs {float(np.max(engine.spec.slack)):.3g} lies "
                f"within max-abs distance δ = {delta:.3g} of z.",
                numbers,
                box=None if result.global_claim or box.implied else settings.latent_box,
            ),
            None,
        )
    if result.finding is milp.Finding.NOT_UNIQUE and result.witness is not None:
        return Evidence(EvidenceKind.NONE, "the MILP found a second latent", numbers), np.asarray(
            result.witness
        )
    undecided = len(result.undecided)
    return (
        Evidence(
            EvidenceKind.NONE,
            f"the whole-network MILP did not settle uniqueness ({result.finding.value}: {result.message}; "
            f"{undecided} of {2 * z.size} directions open)",
            numbers,
        ),
        None,
    )


def refute(problem: Problem, settings: Settings, deadline: float) -> tuple[Evidence, np.ndarray | None]:
    """MILP refutation (``EvidenceKind.MILP_INFEASIBLE``) or a note; and a latent the MILP found that
    reproduces the observation (the caller checks it), if any."""
    engine, why = engine_for(problem, settings, deadline)
    if engine is None:
        return Evidence(EvidenceKind.NONE, why), None
    try:
        result = engine.find(time_limit=max(_budget(settings, deadline), 0.0))
    except OnnxInvError as exc:
        return Evidence(EvidenceKind.NONE, f"the MILP search could not run: {exc}"), None
    numbers = {
        "nodes": result.nodes,
        "binaries": result.binaries,
        "seconds": result.seconds,
        "proved_by": result.proved_by,
    }
    if result.finding is milp.Finding.NO_PREIMAGE:
        scope = _scope(settings, result.global_claim, result.box)
        if scope is not None:
            return (
                Evidence(
                    EvidenceKind.MILP_INFEASIBLE,
                    f"The whole-network program is infeasible ({result.proved_by}): no latent reproduces the "
                    f"observation within max-abs {float(np.max(engine.spec.slack)):.3g} (the claim covers {scope}).",
                    numbers,
                    box=None if result.global_claim else settings.latent_box,
                ),
                None,
            )
        return Evidence(
            EvidenceKind.NONE, "the MILP found no preimage inside its search box only", numbers
        ), None
    if result.finding is milp.Finding.FOUND and result.z is not None:
        return Evidence(EvidenceKind.NONE, "the MILP found a latent", numbers), np.asarray(result.z)
    return Evidence(
        EvidenceKind.NONE, f"the whole-network MILP decided nothing ({result.message})", numbers
    ), None


def bound_radius(
    problem: Problem, settings: Settings, z: np.ndarray, fit: FitCheck, deadline: float
) -> Evidence:
    """A noisy radius from the MILP's bounds (``EvidenceKind.MILP_BOUNDS``), or a note.

    Without a stated latent box the radius counts only when the observation bounds every latent inside
    the search box; that is settled first, from the implied bounds alone, before any bound tightening or
    MILP is paid for."""
    if settings.latent_box is None and applies(problem, settings) is None:
        try:
            implied = milp.implied_box(
                _spec(problem, settings), time_limit=max(_budget(settings, deadline), 0.0)
            )
        except OnnxInvError as exc:
            return Evidence(EvidenceKind.NONE, f"the whole-network MILP could not be set up: {exc}")
        if implied is not None and not implied.implied:
            return Evidence(
                EvidenceKind.NONE,
                "the whole-network MILP gave no radius: the observation does not bound the latent inside "
                f"its search box [-{SEARCH_RADIUS:g}, {SEARCH_RADIUS:g}]^k, so its bounds would hold only "
                "inside that box (state a latent box to get them)",
            )
    engine, why = engine_for(problem, settings, deadline)
    if engine is None:
        return Evidence(EvidenceKind.NONE, why)
    try:
        result = engine.bound(time_limit=max(_budget(settings, deadline), 0.0), start=z)
    except OnnxInvError as exc:
        return Evidence(EvidenceKind.NONE, f"the MILP bounds could not run: {exc}")
    scope = _scope(settings, result.global_claim, result.box)
    if result.finding is not milp.Finding.BOUNDED or scope is None or bool(np.any(result.at_box)):
        return Evidence(
            EvidenceKind.NONE,
            f"the whole-network MILP gave no radius ({result.finding.value}; "
            f"{int(np.count_nonzero(result.at_box))} sides at the search box)",
        )
    radius = float(result.radius(z))
    return Evidence(
        EvidenceKind.MILP_BOUNDS,
        f"the whole-network MILP bounds {scope} fitting within max-abs {fit.tolerance:.3g}: every "
        f"coordinate z'_i lies in proved bounds, all within max-abs distance {radius:.3g} of z.",
        {"radius": radius, "exact_sides": int(np.count_nonzero(result.exact)), "seconds": result.seconds},
        radius=radius,
        bounds=(np.asarray(result.lower), np.asarray(result.upper)),
    )
