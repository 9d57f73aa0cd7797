"""Turn a layer's (estimated) output into constraints on its pre-activation.

For a layer ``y = act(a)``, ``a = W u + b``, every observed row ``j`` becomes

.. math::

    \\ell_j - s^\\ell_j\\,\\delta_j \\;\\le\\; a_j \\;\\le\\; h_j + s^h_j\\,\\delta_j

with ``ℓ_j = -inf`` or ``h_j = +inf`` for a missing side. ``δ_j`` is the slack a method allows: 0 for
the exact method, one shared ``δ`` for the l_inf LP (Algorithm 1 of [1]_), one ``e_j`` per row for the
l_1 LP (Algorithm 2 of [1]_). A row with ``ℓ_j = h_j`` is an equality ("active row").

* ReLU: ``y_j > θ`` gives ``a_j = y_j``; ``y_j <= θ`` gives ``a_j <= 0`` (clean) or ``a_j <= y_j + δ``
  (noisy). ``θ`` is the active threshold: ``τ`` (tiny, relative to ``max|y|``) for clean data, ``ε``
  for noisy data. This is eq. (4) / eq. (6) of [1]_.
* LeakyReLU with slope ``c``, eq. (5) of [1]_: clean data gives an equality on every row (``y/c`` where
  ``y < 0``). Noisy data follows Remark 1 of [1]_, with a lower bound that stays valid for every
  sign: ``y > ε``: ``|a - y| <= δ``; ``y <= -ε``: ``|a - y/c| <= δ/c``; otherwise
  ``min(y, 0)/c - δ/c <= a <= y + δ``.
* Identity: ``a = y`` (noisy: ``|a - y| <= δ``).
* Tanh / Sigmoid: ``a = atanh(y)`` / ``logit(y)``, the slack scaled by the derivative of the inverse
  (``1/(1-y²)``, ``1/(y(1-y))``) so that ``δ`` is measured on the output. Saturated entries
  (``|tanh| > 1 - 1e-7``; sigmoid within 1e-7 of 0 or 1) carry almost no information: for clean data
  they become one-sided inequalities (``a >= atanh(1 - 1e-7)``, ...), for noisy data they are dropped.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxinv.layers import Activation, Layer

SATURATION = 1e-7


@dataclass(frozen=True, eq=False)
class Targets:
    """Bounds on the pre-activation of the rows ``rows`` of one layer (see module docstring)."""

    rows: np.ndarray  # int indices of the layer's output rows that take part
    lower: np.ndarray
    lower_scale: np.ndarray
    upper: np.ndarray
    upper_scale: np.ndarray

    @property
    def equality(self) -> np.ndarray:
        """Bool mask over ``rows``: the row is an equality (``lower == upper``, both finite)."""
        return np.isfinite(self.lower) & (self.lower == self.upper)

    @property
    def count(self) -> int:
        return int(self.rows.size)

    def matrices(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """``(W[rows], b[rows])``."""
        return layer.weight[self.rows], layer.bias[self.rows]


def build_targets(
    layer: Layer,
    y: np.ndarray,
    rows: np.ndarray | None,
    threshold: float,
    *,
    noisy: bool,
) -> Targets:
    """Row bounds for ``layer`` given its output estimate ``y`` (full length; only ``rows`` are used).

    ``threshold`` is ``θ`` in the module docstring. ``rows=None`` uses every row.
    """
    idx = np.arange(layer.out_features) if rows is None else np.asarray(rows, dtype=np.intp)
    yv = np.asarray(y, dtype=np.float64)[idx]
    ones = np.ones_like(yv)
    act = layer.activation

    if act is Activation.IDENTITY:
        return Targets(idx, yv.copy(), ones, yv.copy(), ones.copy())

    if act is Activation.RELU:
        active = yv > threshold
        lower = np.where(active, yv, -np.inf)
        upper = np.where(active, yv, yv if noisy else 0.0)
        return Targets(idx, lower, ones, upper, ones.copy())

    if act is Activation.LEAKY_RELU:
        c = layer.slope
        if c <= 0.0:
            raise ValueError(f"leaky ReLU slope must be positive to invert, got {c}")
        centre = np.where(yv >= 0.0, yv, yv / c)
        if not noisy:
            scale = np.where(yv >= 0.0, 1.0, 1.0 / c)
            return Targets(idx, centre, scale, centre.copy(), scale.copy())
        pos = yv > threshold
        neg = yv <= -threshold
        lower = np.where(pos, yv, np.where(neg, yv / c, np.minimum(yv, 0.0) / c))
        lower_scale = np.where(pos, 1.0, 1.0 / c)
        upper = np.where(neg, yv / c, yv)
        upper_scale = np.where(neg, 1.0 / c, 1.0)
        return Targets(idx, lower, lower_scale, upper, upper_scale)

    if act in (Activation.TANH, Activation.SIGMOID):
        if act is Activation.TANH:
            lo_y, hi_y = -1.0 + SATURATION, 1.0 - SATURATION
            clipped = np.clip(yv, lo_y, hi_y)
            centre = np.arctanh(clipped)
            scale = 1.0 / (1.0 - clipped**2)
        else:
            lo_y, hi_y = SATURATION, 1.0 - SATURATION
            clipped = np.clip(yv, lo_y, hi_y)
            centre = np.log(clipped) - np.log1p(-clipped)
            scale = 1.0 / (clipped * (1.0 - clipped))
        high = yv >= hi_y
        low = yv <= lo_y
        interior = ~(high | low)
        if noisy:
            keep = interior
            return Targets(idx[keep], centre[keep], scale[keep], centre[keep].copy(), scale[keep].copy())
        lower = np.where(low, -np.inf, centre)
        upper = np.where(high, np.inf, centre)
        return Targets(idx, lower, scale, upper, scale.copy())

    raise ValueError(f"cannot invert activation {act!r}")


def input_bounds(layers: tuple[Layer, ...], index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds on the input of layer ``index`` implied by the activation that produced it.

    Layer 0's input is the latent (free). A ReLU output is ``>= 0``, a sigmoid output in ``[0, 1]``, a
    tanh output in ``[-1, 1]``; identity and leaky ReLU outputs are free (None).
    """
    if index == 0:
        return None
    prev = layers[index - 1]
    n = prev.out_features
    if prev.activation is Activation.RELU:
        return np.zeros(n), np.full(n, np.inf)
    if prev.activation is Activation.SIGMOID:
        return np.zeros(n), np.ones(n)
    if prev.activation is Activation.TANH:
        return np.full(n, -1.0), np.ones(n)
    return None


def project(u: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Clip ``u`` into ``bounds`` (no-op for None)."""
    if bounds is None:
        return u
    return np.clip(u, bounds[0], bounds[1])


def layer_residual(layer: Layer, u: np.ndarray, y: np.ndarray, rows: np.ndarray | None) -> float:
    """``||act(W u + b) - y||_inf / ||y||_inf`` over ``rows`` (absolute when ``y`` is all zero)."""
    out = layer.forward(u)
    if rows is not None:
        out, y = out[rows], y[rows]
    if out.size == 0:
        return 0.0
    err = float(np.max(np.abs(out - y)))
    scale = float(np.max(np.abs(y)))
    return err / scale if scale > 0 else err
