"""``method="auto"``: the exact method when it applies, then fallbacks in a fixed order.

Order
-----
Clean observations (``noise`` None or 0):

1. ``exact`` (Theorem 2 / eq. (4) of [1]_). Kept if ``G(z)`` reproduces ``x`` and no hidden layer
   (index > 0) has a preimage of dimension > 0. A non-identifiable layer 0 is the information limit
   (every point of its preimage gives the same ``x``); the result is kept, verdict *not unique*.
2. ``sparse`` (layered basis pursuit, [2]_) when a hidden layer is not identifiable: kept if it
   reproduces ``x``; otherwise the exact result is kept if it reproduced ``x``.
3. ``linf`` (Algorithm 1 of [1]_, ε from ``1e-6·max|y|`` upwards): for observations that are not
   exactly realizable (rounded to float32, slightly off the range).
4. ``l1`` (Algorithm 2 of [1]_).

Noisy observations: ``linf``, then ``l1``, then ``relaxed`` (eq. (8) of [1]_).

The first result that reproduces the observation (float64 forward pass; onnxruntime verifies
afterwards) is returned; if none does, the one with the smallest residual. Every attempt is listed in
the result. The verdict is decided from the kept result's steps like for any method, so a point of
a non-unique preimage is always reported as *not unique*, never as the answer.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [2] A. Aberdam, D. Simon, M. Elad, "On the Inversion of Deep Generative Models".
"""

from __future__ import annotations

import time

from onnxinv.inversion import exact, l1, linf, relaxed, sparse
from onnxinv.inversion.layerwise import Draft, Problem, Settings, accepts
from onnxinv.inversion.result import Attempt

__all__ = ["solve"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Try the methods in the documented order; return the first that reproduces the observation."""
    tried: list[tuple[Draft, bool]] = []
    attempts: list[Attempt] = []

    def run(module, name: str) -> tuple[Draft, bool]:  # noqa: ANN001 - a method module
        draft = module.solve(problem, settings, deadline)
        ok, _ = accepts(problem, settings, problem.generator.forward(draft.z))
        dims = [s.layer for s in draft.steps if s.status.ok and s.preimage_dim > 0]
        failed = [s.layer for s in draft.steps if not s.status.ok]
        note = "reproduces x" if ok else "does not reproduce x"
        if dims:
            note += f"; preimage dimension > 0 at layer(s) {dims}"
        if failed:
            note += f"; failed at layer(s) {failed}"
        attempts.append(Attempt(name, draft.fit, note))
        tried.append((draft, ok))
        return draft, ok

    def finish(draft: Draft) -> Draft:
        draft.attempts = tuple(attempts)
        order = " -> ".join(a.method for a in attempts)
        draft.message = (f"auto tried {order}; kept {draft.method}. " + draft.message).strip()
        return draft

    def out_of_time() -> bool:
        return time.perf_counter() >= deadline

    if problem.noise is None:
        first, ok = run(exact, "exact")
        hidden = [s for s in first.steps if s.status.ok and s.preimage_dim > 0 and s.layer > 0]
        failed = any(not s.status.ok for s in first.steps)
        if ok and not failed and not hidden:
            return finish(first)
        if hidden and not out_of_time():
            second, ok2 = run(sparse, "sparse")
            if ok2:
                return finish(second)
        if ok:
            return finish(first)
        fallbacks = ((linf, "linf"), (l1, "l1"))
    else:
        fallbacks = ((linf, "linf"), (l1, "l1"), (relaxed, "relaxed"))
    for module, name in fallbacks:
        if out_of_time() and tried:
            break
        draft, ok = run(module, name)
        if ok:
            return finish(draft)
    best = min((d for d, _ in tried), key=lambda d: d.fit)
    return finish(best)
