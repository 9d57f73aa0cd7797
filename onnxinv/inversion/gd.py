"""Gradient-descent baseline: what users would otherwise run ([1]_ Sec. 5 compares against it).

Problem
-------
.. math::

    \\min_z\\; \\tfrac12 \\| M \\odot (A\\,G(z) - x) \\|_2^2

with ``M`` the mask (1 = observed) and ``A`` an optional measurement matrix, by Adam (step
``adam_lr``) from ``restarts`` random starts ``z ~ N(0, I)`` (as in CSGM [2]_), for at most
``iterations`` steps (1000 as in [1]_), each observation stopping once its relative residual is a
tenth of the clean tolerance (converged, for the verdict). The lowest loss is kept. Gradients are
analytic, for every observation of a chunk and every restart at once
(:func:`onnxinv.inversion.network.descend`); the random starts are the same draws for every
observation, so results do not depend on how a batch is split.

Notes
-----
**What the verdict means for this method.** Gradient descent alone cannot show that a latent is the
only one. Its steps are the analysis of every layer at the hidden values of the found ``z``
(:func:`onnxinv.inversion.identifiability.analyse_at`: active rows, rank, preimage dimension); the
verdict comes from the pipeline's evidence stage like every other method's
(:mod:`onnxinv.inversion.verdict`): a certificate at ``z``, a witness, or neither.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [2] A. Bora, A. Jalal, E. Price, A. G. Dimakis, "Compressed Sensing using Generative Models",
   ICML 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxinv.inversion import network
from onnxinv.inversion.framework import Draft, LayerContext, LayerOutcome, Method, Problem, Settings, walk
from onnxinv.inversion.identifiability import analyse_at

__all__ = ["METHOD", "solve", "solve_batch"]

# GD stops once its relative residual is this fraction of the clean tolerance: converged for the verdict
GD_TOL_FACTOR = 0.1


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Gradient descent from random starts, then the layer-wise analysis at the best point."""
    return solve_batch([problem], settings, [deadline])[0]


def solve_batch(problems: Sequence[Problem], settings: Settings, deadlines: Sequence[float]) -> list[Draft]:
    """:func:`solve` for a chunk of observations of one generator at once (one batched forward and
    backward pass per iteration for every observation and restart); the same answers as one by one.

    Observations with different masks, measurement matrices or noise settings are grouped.
    """
    drafts: list[Draft | None] = [None] * len(problems)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault((id(p.measure), p.mask is None), []).append(i)
    for members in groups.values():
        first = problems[members[0]]
        y = np.stack([problems[i].x for i in members])
        # every member of a group has a mask when the first has one (the group key)
        masks = None if first.mask is None else np.stack([problems[i].mask for i in members])  # type: ignore[misc]
        z, losses, info = network.descend(
            first.generator.layers,
            y,
            masks=masks,
            measure=first.measure,
            restarts=max(1, int(settings.restarts)),
            iterations=int(settings.iterations),
            lr=settings.adam_lr if settings.gd_optimizer == "adam" else settings.lr,
            adam=settings.gd_optimizer == "adam",
            seed=settings.seed,
            indices=np.zeros(len(members), dtype=int),  # every observation starts from the same draws
            deadline=min(deadlines[i] for i in members),
            tol=GD_TOL_FACTOR * settings.tol,
        )
        for row, i in enumerate(members):
            problem = problems[i]
            kind = "Adam" if settings.gd_optimizer == "adam" else "plain gradient descent"
            summary = (
                f"gradient descent ({kind}, {max(1, int(settings.restarts))} restart(s)): best restart "
                f"{int(info.restart[row])} with relative residual {float(info.relative[row]):.3g} after "
                f"{int(info.iterations[row])} iteration(s) ({info.status[row]})."
            )
            drafts[i] = _analysed_draft(problem, settings, z[row], summary, deadlines[i])
    return [d for d in drafts if d is not None]


def _analysed_draft(
    problem: Problem, settings: Settings, z: np.ndarray, summary: str, deadline: float
) -> Draft:
    hidden = problem.generator.hidden_values(z)
    last = len(problem.generator.layers) - 1

    def analyse(ctx: LayerContext) -> LayerOutcome:
        return analyse_at(ctx, hidden[ctx.index], "the GD point", last=ctx.index == last)

    if problem.measure is not None:  # the layer-wise analysis needs the output itself
        draft = Draft(z=np.asarray(z, dtype=np.float64), method="gd", steps=())
    else:
        draft = walk(problem, settings, analyse, "gd", deadline)
        draft.z = np.asarray(z, dtype=np.float64)
    draft.message = summary
    return draft.with_fit(problem)


METHOD = Method(
    name="gd",
    solve=solve,
    summary="gradient descent (Adam) from random starts: the baseline users would otherwise run",
    noise="any",
    measure=True,
    solve_batch=solve_batch,
)
