"""``method="milp"``: exact search over the whole network (*ours*; big-M MILP of Tjeng et al. [1]_).

Problem
-------
Find ``z`` with ``|A·G(z) - y|_i <= s_i`` on the observed entries (``A`` the identity without a
measurement matrix; ``s`` the fit rule's band), where the layer-wise argument fails: a hidden layer with
fewer active units than inputs picks one point of a polytope that the layers below may not reach. The
engine (:mod:`onnxinv.inversion.milp`) tightens every hidden unit's bounds from the observation, keeps
binaries only for the units whose sign stays open, and searches: the start's own piece, piece walks,
then branch and bound, warm-started from the exact method's latent (when there is one). A time limit
ends the search with the start's latent, and nothing is decided.

Notes
-----
The verdict comes from the pipeline's evidence stage like for any method; for a network the engine
applies to, that stage also runs the MILP certificate (``EvidenceKind.MILP``) or refutation.

References
----------
.. [1] V. Tjeng, K. Xiao, R. Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
   Programming", ICLR 2019.
"""

from __future__ import annotations

import time

import numpy as np

from onnxinv.inversion import exact, wholenet
from onnxinv.inversion.framework import Draft, Method, Problem, Settings

__all__ = ["METHOD", "solve"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """The search of the module docstring; the exact method's estimate when the engine does not apply."""
    start = None
    first: Draft | None = None
    if problem.measure is None:
        first = exact.solve(problem, settings, deadline)
        start = np.asarray(first.z, dtype=np.float64)
    k = problem.generator.latent_dim
    engine, why = wholenet.engine_for(problem, settings, deadline)
    if engine is None:
        base = first or Draft(z=np.zeros(k), method="milp", steps=())
        base.method = "milp"
        base.message = f"{base.message} The whole-network MILP was not used: {why}.".strip()
        return base.with_fit(problem)
    budget = max(min(settings.milp_time, deadline - time.perf_counter()), 0.0)
    result = engine.find(time_limit=budget, start=start)
    z = result.z if result.z is not None else (start if start is not None else np.zeros(k))
    message = (
        f"whole-network MILP search ({engine.tightening.binaries} binaries after bound tightening): "
        f"{result.finding.value}, {result.proved_by or 'no proof'} ({result.message})."
    )
    return Draft(
        z=np.asarray(z, dtype=np.float64),
        method="milp",
        steps=first.steps if first is not None and result.z is None else (),
        message=message,
    ).with_fit(problem)


METHOD = Method(
    name="milp",
    solve=solve,
    summary="exact search over the whole network (big-M MILP in HiGHS) for small piecewise-linear nets "
    "where the layer-wise argument runs out",
    noise="any",
    measure=True,
)
