"""``method="auto"``: the methods in a fixed order, each estimate refined on the whole network, until
one reproduces the observation.

Order
-----
Clean observations:

1. ``exact`` (Theorem 2 / eq. (4) of [1]_). Its steps are a layer-wise certificate when every layer is
   identifiable.
2. ``sparse`` (layered basis pursuit, [2]_) when a hidden layer is not identifiable: another choice of
   that layer's input, the sparsest one.
3. the best of those refined on the whole network (:mod:`onnxinv.inversion.refine`): a point picked in
   a non-identifiable hidden layer may not be reachable from below, and rounded float32 data can
   leave the layer-wise latent just outside the tolerance.
4. ``linf`` (Algorithm 1 of [1]_ from ``ε = 1e-6·max|y|`` upwards), refined: observations that are not
   exactly realizable (rounded, slightly off the range).
5. ``milp``: the exact whole-network search (:mod:`onnxinv.inversion.search`) where the engine
   applies (piecewise-linear hidden layers, small enough).
6. ``lsq``: whole-network least squares from the zero latent and random restarts.
7. ``gd`` (gradient descent with restarts), refined: where everything else fails.

Bounded noise: ``linf``, ``l1``, ``relaxed``, then ``gd``, each refined. Gaussian noise
(``noise_model="gaussian"``, with or without a measurement matrix): ``lsq``, the MAP fit (prior
``λ = σ²``) from Algorithm 1's estimate, the zero latent, a short Adam descent and random restarts; if it does not reproduce
the observation, ``gd`` polished by the same MAP fit; the kept estimate is one that reproduces the
observation if any does, the lowest MAP objective ``½‖M ⊙ (G(z) − x)‖² + ½σ²‖z‖²`` among those (the
criterion the estimate is defined by; the smallest residual would favour the maximum-likelihood fit,
which is worse where the data say little, e.g. with 50% of the pixels masked). The verdict is "fits"
at best: Gaussian errors are unbounded, so no radius is proved. A clean measurement matrix (``y = A·G(z)``, where no layer-wise method can start): ``lsq`` from random
restarts, then ``gd``.

The first estimate that reproduces the observation (float64 forward pass; onnxruntime verifies
afterwards) is returned; if none does, the one with the smallest residual. Every attempt is listed in
the result. ``auto`` composes the other methods and the refine stage; the verdict comes from the
pipeline's evidence stage like for any method (:mod:`onnxinv.inversion.verdict`).

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [2] A. Aberdam, D. Simon, M. Elad, "On the Inversion of Deep Generative Models".
"""

from __future__ import annotations

import time
from collections.abc import Callable

from onnxinv.inversion import exact, gd, l1, linf, lsq, refine, relaxed, search, sparse, wholenet
from onnxinv.inversion.framework import Draft, Method, Problem, Settings, accepts
from onnxinv.inversion.result import Attempt

__all__ = ["METHOD", "solve"]

Solver = Callable[[Problem, Settings, float], Draft]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Try the methods in the documented order; return the first estimate that reproduces the observation."""
    tried: list[Draft] = []
    attempts: list[Attempt] = []

    def fits(draft: Draft) -> bool:
        return accepts(problem, settings, problem.generator.forward(draft.z))

    def note(draft: Draft, name: str) -> bool:
        ok = fits(draft)
        text = "reproduces x" if ok else "does not reproduce x"
        loose = [s.layer for s in draft.steps if s.status.ok and s.preimage_dim > 0]
        failed = [s.layer for s in draft.steps if not s.status.ok]
        if loose:
            text += f"; preimage dimension > 0 at layer(s) {loose}"
        if failed:
            text += f"; failed at layer(s) {failed}"
        attempts.append(Attempt(name, draft.fit, text))
        tried.append(draft)
        return ok

    def run(module_solve: Solver, name: str) -> tuple[Draft, bool]:
        draft = module_solve(problem, settings, deadline)
        return draft, note(draft, name)

    def refined(draft: Draft) -> tuple[Draft, bool]:
        better = refine.refine(problem, settings, draft, deadline)
        if better is draft:
            return draft, False
        return better, note(better, f"{draft.method} + refine")

    def finish(draft: Draft) -> Draft:
        draft.attempts = tuple(attempts)
        order = " -> ".join(a.method for a in attempts)
        draft.message = (f"auto tried {order}; kept {draft.method}. " + draft.message).strip()
        return draft

    def out_of_time() -> bool:
        return time.perf_counter() >= deadline

    if problem.noise is not None and problem.noise_model == "gaussian":
        return finish(_gaussian(problem, settings, deadline, run, note))
    if problem.measure is not None:
        fallbacks: tuple[tuple[Solver, str], ...] = ((lsq.solve, "lsq"), (gd.solve, "gd"))
        if wholenet.applies(problem, settings) is None:
            fallbacks = ((lsq.solve, "lsq"), (search.solve, "milp"), (gd.solve, "gd"))
    elif problem.noise is None:
        first, ok = run(exact.solve, "exact")
        if ok:
            return finish(first)
        candidates = [first]
        hidden = [s for s in first.steps if s.status.ok and s.preimage_dim > 0 and s.layer > 0]
        if hidden and not out_of_time():
            second, ok = run(sparse.solve, "sparse")
            if ok:
                return finish(second)
            candidates.append(second)
        for draft in sorted(candidates, key=lambda d: d.fit):
            if out_of_time():
                break
            better, ok = refined(draft)
            if ok:
                return finish(better)
        fallbacks = ((linf.solve, "linf"), (lsq.solve, "lsq"), (gd.solve, "gd"))
        if wholenet.applies(problem, settings) is None:
            fallbacks = ((search.solve, "milp"), *fallbacks)
    else:
        fallbacks = ((linf.solve, "linf"), (l1.solve, "l1"), (relaxed.solve, "relaxed"), (gd.solve, "gd"))
    for module_solve, name in fallbacks:
        if out_of_time() and tried:
            break
        draft, ok = run(module_solve, name)
        if ok:
            return finish(draft)
        if not out_of_time():
            better, ok = refined(draft)
            if ok:
                return finish(better)
    best = min(tried, key=lambda d: d.fit)
    return finish(best)


def _gaussian(
    problem: Problem,
    settings: Settings,
    deadline: float,
    run: Callable[[Solver, str], tuple[Draft, bool]],
    note: Callable[[Draft, str], bool],
) -> Draft:
    """Gaussian noise: the MAP fit (``lsq``, ``λ = σ²``); if it does not reproduce the observation,
    gradient descent polished by the same MAP fit; kept: the candidates that reproduce it first, then
    the lowest MAP objective (:func:`onnxinv.inversion.lsq.map_objective`).

    The refine stage is not used here: it minimises the residual alone and would undo the prior, which
    is what makes the estimate better than gradient descent's where the data say little (masks).
    """
    first, ok = run(lsq.solve, "lsq")
    if ok or time.perf_counter() >= deadline:
        return first
    candidates: list[tuple[Draft, bool]] = [(first, ok)]
    second, ok = run(gd.solve, "gd")
    candidates.append((second, ok))
    polished = lsq.polish(problem, settings, second, deadline)
    if polished is not second:
        candidates.append((polished, note(polished, "gd + lsq")))
    return min(candidates, key=lambda c: (not c[1], lsq.map_objective(problem, c[0].z)))[0]


METHOD = Method(
    name="auto",
    solve=solve,
    summary="pick by the observation: exact, then sparse, linf and gradient descent, each refined",
    noise="any",
    refine=False,  # it refines its candidates itself
    measure=True,
)
