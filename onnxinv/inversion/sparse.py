"""Layered basis pursuit for layers with fewer active rows than inputs ([2]_, with eq. (4) of [1]_).

Problem
-------
A layer whose active rows are fewer than its inputs has a whole polytope of preimages, but its input
``u`` is a ReLU output and typically sparse. Aberdam, Simon and Elad [2]_ recover it by sparse coding
layer by layer; here, as an LP:

.. math::

    \\min_u\\; \\mathbf{1}^\\top u \\quad\\text{s.t.}\\quad W_I u + b_I = y_I,\\quad
    W_{I^c} u + b_{I^c} \\le 0,\\quad u \\ge 0

(``1ᵀu = ||u||_1`` since ``u >= 0``). With a noise level the equalities become
``|W_I u + b_I - y_I| <= ε`` and the inactive rows ``W_{I^c} u + b_{I^c} <= y + ε``; ε starts at the
layer's own initial value and grows by α while the LP is infeasible.

Notes
-----
* Layers whose active system has full column rank are solved as in the exact method (Theorem 2 of
  [1]_); noisy ones with the l_inf LP (Algorithm 1 of [1]_). The first layer (dense ``z``, not
  ``>= 0``) and layers fed by non-ReLU outputs get the plain system / eq. (4) LP point, as in the
  exact method.
* **What is certified.** The returned code is the minimum-l1 (sparsest-in-the-l1-sense) point of the
  layer's preimage. ``preimage_dim`` stays the dimension of the whole preimage polytope, so a layer
  solved by basis pursuit is *not* marked identifiable and the verdict stays *not unique* unless the
  polytope is a single point: other latents with denser hidden codes may give the same output, and
  layer-wise reasoning cannot rule them out. The step's ``certificate`` records what does hold:
  (a) whether the LP optimum is unique, checked by the dimension of the optimal face (the preimage
  cone with ``1ᵀd = 0`` added, see :mod:`onnxinv.inversion.linear`); (b) whether the mutual-coherence
  condition ``||u||_0 < (1 + 1/μ)/2`` holds for the active submatrix ``W_I`` (columns normalised),
  which makes ``u`` the unique sparsest solution of the active equalities ([2]_, via Donoho-Elad). On
  random weights (b) rarely holds (μ is large); (a) usually does when recovery succeeds.
* What the verdict may say is decided by the pipeline (:mod:`onnxinv.inversion.verdict`): the
  minimum-l1 code is a guess of the hidden layer; only a latent that reproduces the observation, plus a
  certificate or a witness found for it, turns into "unique" or "not unique".

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
.. [2] A. Aberdam, D. Simon, M. Elad, "On the Inversion of Deep Generative Models" (layer-wise
   sparse pursuit with uniqueness when the non-zeros grow from layer to layer).
"""

from __future__ import annotations

import numpy as np

from onnxinv.inversion import identifiability, linear, linf
from onnxinv.inversion.exact import clean_layer
from onnxinv.inversion.framework import (
    Draft,
    LayerContext,
    LayerOutcome,
    Method,
    Problem,
    Settings,
    clean_targets,
    walk,
)
from onnxinv.inversion.result import SolverStatus
from onnxinv.inversion.targets import Targets, build_targets

__all__ = ["METHOD", "solve"]


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Layered basis pursuit (see module docstring)."""
    return walk(problem, settings, _layer, "sparse", deadline)


def _relu_input(ctx: LayerContext) -> bool:
    return (
        ctx.bounds is not None
        and bool(np.all(ctx.bounds[0] == 0.0))
        and bool(np.all(np.isinf(ctx.bounds[1])))
    )


def _layer(ctx: LayerContext) -> LayerOutcome:
    n = ctx.layer.in_features
    relu_input = _relu_input(ctx)
    if ctx.noise_rel is None:
        targets = clean_targets(ctx)
        out = clean_layer(ctx, targets, objective=np.ones(n) if relu_input else None)
        if relu_input and out.status.ok and out.preimage_dim > 0:
            _certify(ctx, targets, out)
        return out
    return _noisy_layer(ctx, relu_input)


def _noisy_layer(ctx: LayerContext, relu_input: bool) -> LayerOutcome:
    n = ctx.layer.in_features
    eps = ctx.initial_eps()
    targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
    _, rank = identifiability.two_sided_rank(ctx, targets)
    if rank == n or not relu_input:
        return linf.solve_layer(ctx)
    res = None
    step = 0
    for step in range(ctx.settings.max_growth + 1):  # noqa: B007 - reported below
        targets = build_targets(ctx.layer, ctx.y, ctx.rows, eps, noisy=True)
        res = linear.layer_lp(
            ctx.layer, targets, ctx.bounds, objective=np.ones(n), slack=eps, time_limit=ctx.lp_time
        )
        if res.status is not SolverStatus.INFEASIBLE:
            break
        eps *= ctx.settings.alpha
    assert res is not None
    if not res.ok or res.x is None:
        return identifiability.noisy_outcome(
            ctx,
            targets,
            np.zeros(n),
            eps,
            res.status,
            f"noisy basis pursuit at ε = {eps:.3g} ended '{res.status.value}': {res.message}",
        )
    out = identifiability.noisy_outcome(
        ctx,
        targets,
        res.x,
        eps,
        SolverStatus.OPTIMAL,
        f"noisy basis pursuit at ε = {eps:.3g} ({step} growth step(s))",
    )
    _coherence_note(ctx, targets, out)
    return out


def _certify(ctx: LayerContext, targets: Targets, out: LayerOutcome) -> None:
    """Record whether the basis-pursuit optimum is unique and whether the coherence bound holds."""
    n = ctx.layer.in_features
    scale = max(ctx.scale, 1.0)
    face = identifiability.preimage_dimension(
        ctx.layer,
        targets,
        ctx.bounds,
        out.u,
        tight_tol=1e-6 * scale,
        extra_equalities=np.ones((1, n)),
        time_limit=ctx.lp_time,
    )
    if face.status.ok and face.dim == 0:
        out.certificate = "unique minimum-l1 code (optimal face of basis pursuit is a point)"
        out.message += "; the minimum-l1 code is unique"
    elif face.status.ok:
        out.certificate = ""
        out.message += f"; the minimum-l1 codes form a face of dimension {face.dim}"
    _coherence_note(ctx, targets, out)


def _coherence_note(ctx: LayerContext, targets: Targets, out: LayerOutcome) -> None:
    eq = (
        targets.equality if ctx.noise_rel is None else np.isfinite(targets.lower) & np.isfinite(targets.upper)
    )
    w = ctx.layer.weight[targets.rows[eq]]
    if w.shape[0] == 0:
        return
    u = np.asarray(out.u)
    support = int(np.sum(u > 1e-9 * max(float(np.max(np.abs(u))) if u.size else 0.0, 1e-300)))
    mu = identifiability.mutual_coherence(w)
    bound = 0.5 * (1.0 + 1.0 / mu) if mu > 0 else float("inf")
    if support < bound:
        text = (
            f"||u||_0 = {support} < (1 + 1/mu)/2 = {bound:.3g}: the unique sparsest solution of the "
            "active equalities"
        )
        out.certificate = f"{out.certificate}; {text}" if out.certificate else text
    out.message += f" (||u||_0 = {support}, coherence bound {bound:.3g})"


METHOD = Method(
    name="sparse",
    solve=solve,
    summary="layered basis pursuit (Aberdam, Simon, Elad) for hidden layers with fewer active rows than inputs",
    noise="any",
)
