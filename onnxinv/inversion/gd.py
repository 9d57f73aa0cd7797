"""Gradient-descent baseline: what users would otherwise run ([1]_ Sec. 5 compares against it).

Problem
-------
.. math::

    \\min_z\\; \\tfrac12 \\| M \\odot (G(z) - x) \\|_2^2

with ``M`` the mask (1 = observed). ``restarts`` random starts ``z ~ N(0, I)`` run side by side:
half with plain gradient descent (step ``lr``, 1.0 as in [1]_; a step that raises the loss is
rejected and the step halved), half with Adam (step ``adam_lr``). Each stops after ``iterations``
steps (1000 as in [1]_) or when its gradient norm drops below ``grad_tol`` (1e-9 as in [1]_) or its
relative residual below ``1e-3 · tol``. The lowest loss is kept. Gradients are analytic, through the
layer list in numpy (backpropagation), for all restarts at once.

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
"""

from __future__ import annotations

import time

import numpy as np

from onnxinv.inversion.framework import Draft, LayerContext, LayerOutcome, Method, Problem, Settings, walk
from onnxinv.inversion.identifiability import analyse_at
from onnxinv.layers import Layer, activation_derivative

__all__ = ["METHOD", "solve"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-12


def solve(problem: Problem, settings: Settings, deadline: float) -> Draft:
    """Gradient descent from random starts, then the layer-wise analysis at the best point."""
    z, summary = _descend(problem, settings, deadline)
    hidden = problem.generator.hidden_values(z)
    last = len(problem.generator.layers) - 1

    def analyse(ctx: LayerContext) -> LayerOutcome:
        return analyse_at(ctx, hidden[ctx.index], "the GD point", last=ctx.index == last)

    draft = walk(problem, settings, analyse, "gd", deadline)
    draft.z = np.asarray(z, dtype=np.float64)
    draft.message = summary
    return draft.with_fit(problem)


def _descend(problem: Problem, settings: Settings, deadline: float) -> tuple[np.ndarray, str]:
    layers = problem.generator.layers
    k = problem.generator.latent_dim
    restarts = max(1, int(settings.restarts))
    rng = np.random.default_rng(settings.seed)
    z = rng.standard_normal((restarts, k))
    plain = np.arange(restarts) < (restarts + 1) // 2
    x = problem.x
    mask = None if problem.mask is None else problem.mask.astype(np.float64)
    obs_norm = float(np.linalg.norm(problem.observed))
    stop_loss = 0.5 * (1e-3 * settings.tol * max(obs_norm, 1e-300)) ** 2
    lr = np.full(restarts, float(settings.lr))
    m1 = np.zeros_like(z)
    m2 = np.zeros_like(z)
    adam_t = 0
    loss, grad = _loss_grad(layers, z, x, mask)
    best_loss, best_z = loss.copy(), z.copy()
    running = np.ones(restarts, dtype=bool)
    iterations = 0
    timed_out = False
    for it in range(int(settings.iterations)):
        gnorm = np.linalg.norm(grad, axis=1)
        running &= ~((gnorm <= settings.grad_tol) | (loss <= stop_loss) | ~np.isfinite(loss))
        if not running.any():
            break
        if it % 25 == 0 and time.perf_counter() > deadline:
            timed_out = True
            break
        iterations = it + 1
        z_new = z.copy()
        p = running & plain
        z_new[p] -= lr[p, None] * grad[p]
        a = running & ~plain
        if a.any():
            adam_t += 1
            m1[a] = _BETA1 * m1[a] + (1 - _BETA1) * grad[a]
            m2[a] = _BETA2 * m2[a] + (1 - _BETA2) * grad[a] ** 2
            m_hat = m1[a] / (1 - _BETA1**adam_t)
            v_hat = m2[a] / (1 - _BETA2**adam_t)
            z_new[a] -= settings.adam_lr * m_hat / (np.sqrt(v_hat) + _ADAM_EPS)
        loss_new, grad_new = _loss_grad(layers, z_new, x, mask)
        reject = p & ~(loss_new <= loss)
        lr[reject] *= 0.5
        take = running & ~reject
        z[take], loss[take], grad[take] = z_new[take], loss_new[take], grad_new[take]
        better = loss < best_loss
        best_loss[better], best_z[better] = loss[better], z[better]
    j = int(np.argmin(best_loss))
    kind = "plain gradient descent" if plain[j] else "Adam"
    converged = not running[j]
    summary = (
        f"gradient descent: best of {restarts} restart(s) ({int(plain.sum())} plain, "
        f"{restarts - int(plain.sum())} Adam) is {kind} with loss {best_loss[j]:.3g} after {iterations} "
        f"iteration(s); {'converged' if converged else 'stopped before converging'}"
        f"{' (time limit)' if timed_out else ''}. The verdict comes from the layer-wise analysis at this point."
    )
    return best_z[j], summary


def _loss_grad(
    layers: tuple[Layer, ...], z: np.ndarray, x: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Loss ``½||M(G(z) - x)||²`` per row of ``z`` (R, k) and its gradient (R, k)."""
    outs = []
    h = z
    with np.errstate(over="ignore", invalid="ignore"):
        for layer in layers:
            h = layer.forward(h)
            outs.append(h)
        r = h - x
        if mask is not None:
            r = r * mask
        loss = 0.5 * np.sum(r * r, axis=1)
        g = r
        for i in reversed(range(len(layers))):
            layer = layers[i]
            g = g * activation_derivative(outs[i], layer.activation, layer.slope)
            g = g @ layer.weight
    loss = np.where(np.isfinite(loss), loss, np.inf)
    return loss, np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


METHOD = Method(
    name="gd",
    solve=solve,
    summary="gradient descent / Adam from random starts (the baseline users would otherwise run)",
    noise="any",
)
