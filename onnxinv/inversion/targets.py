"""Turn a layer's (estimated) output into constraints on its pre-activation.

For a layer ``y = act(a)``, ``a = W u + b``, every observed row ``j`` becomes

.. math::

    \\ell_j - s^\\ell_j\\,\\delta_j \\;\\le\\; a_j \\;\\le\\; h_j + s^h_j\\,\\delta_j

with ``ℓ_j = -inf`` or ``h_j = +inf`` for a missing side. ``δ_j`` is the slack a method allows: 0 for
the exact method, one shared ``δ`` for the l_inf LP (Algorithm 1 of [1]_), one ``e_j`` per row for the
l_1 LP (Algorithm 2 of [1]_). A row with ``ℓ_j = h_j`` is an equality ("active row").

* ReLU: ``y_j > θ`` gives ``a_j = y_j``; ``y_j <= θ`` gives ``a_j <= max(y_j, 0)`` (clean) or
  ``a_j <= y_j + δ`` (noisy). ``θ`` is the active threshold: ``τ`` (tiny, relative to ``max|y|``)
  for clean data, ``ε`` for noisy data. This is eq. (4) / eq. (6) of [1]_.
* LeakyReLU with slope ``c``, eq. (5) of [1]_: clean data gives an equality on every row (``y/c`` where
  ``y < 0``). Noisy data follows Remark 1 of [1]_, with a lower bound that stays valid for every
  sign: ``y > ε``: ``|a - y| <= δ``; ``y <= -ε``: ``|a - y/c| <= δ/c``; otherwise
  ``min(y, 0)/c - δ/c <= a <= y + δ``.
* Identity: ``a = y`` (noisy: ``|a - y| <= δ``).
* Tanh / Sigmoid, range ``(L, H)`` = ``(-1, 1)`` / ``(0, 1)``, inverse ``f`` = ``atanh`` / ``logit``.
  The scale ``s_j`` is the derivative of the inverse, ``f'(y) = 1/(1-y²)`` / ``1/(y(1-y))``, so that
  ``δ`` (and any misfit divided by ``s_j``) is measured on the output. ``y`` is first clipped into
  ``[L, H]``. An entry near an end of the range carries almost no information (its derivative is
  tiny), and ``f`` of it is not even finite at the end itself (a float32 sigmoid returns exactly 0.0
  below about -17.5), so it becomes one-sided:

  - clean data, with the band ``β`` (the exact method passes its tolerance ``δ``): ``y - L <= β``
    gives ``a <= f(y + β)``, ``H - y <= β`` gives ``a >= f(y - β)``; other entries give
    ``a = f(y)``;
  - noisy data at threshold ``ε``: ``|act(a) - y| <= ε`` is the interval
    ``f(y - ε) <= a <= f(y + ε)`` (a side beyond the range is dropped). A two-sided row is written
    ``|a - c| <= δ s`` with ``c`` and ``s`` chosen so that ``δ = ε`` gives exactly that interval
    (the secant of ``f``); a one-sided row ``a <= f(y + ε) + (δ - ε) f'(y + ε)`` (and its mirror
    image) is exact at ``δ = ε`` and stricter below. So ``δ* <= ε`` in Algorithm 1 means exactly
    ``|act(a) - y| <= ε`` on every row.

References
----------
.. [1] Q. Lei, A. Jalal, I. S. Dhillon, A. G. Dimakis, "Inverting Deep Generative Models, One Layer
   at a Time", NeurIPS 2019.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from onnxinv.errors import UnsupportedModelError
from onnxinv.layers import Activation, Layer

SATURATION = 1e-7  # smallest band of the one-sided tanh / sigmoid rows, relative to the range


@dataclass(frozen=True, eq=False)
class Targets:
    """Bounds on the pre-activation of the rows ``rows`` of one layer (see module docstring)."""

    rows: np.ndarray  # int indices of the layer's output rows that take part
    lower: np.ndarray
    lower_scale: np.ndarray
    upper: np.ndarray
    upper_scale: np.ndarray

    @functools.cached_property
    def equality(self) -> np.ndarray:
        """Bool mask over ``rows``: the row is an equality (``lower == upper``, both finite); read-only."""
        mask = np.isfinite(self.lower) & (self.lower == self.upper)
        mask.setflags(write=False)
        return mask

    @property
    def count(self) -> int:
        return int(self.rows.size)

    def covers(self, layer: Layer) -> bool:
        """True when the targets take every row of ``layer`` in order (``rows`` is ``0..out-1``)."""
        n = layer.out_features
        rows = self.rows
        return rows.size == n and (n == 0 or (int(rows[0]) == 0 and bool(np.all(np.diff(rows) == 1))))

    def matrices(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """``(W[rows], b[rows])``: the layer's own read-only arrays (no copy) when every row takes part."""
        if self.covers(layer):
            return layer.weight, layer.bias
        return layer.weight[self.rows], layer.bias[self.rows]

    def weight_rows(self, layer: Layer, select: np.ndarray | None = None) -> np.ndarray:
        """``W[rows[select]]`` gathered from the layer's weight in one copy (``select``: a bool mask or
        indices over ``rows``; None: all of them, no copy when they are every row)."""
        if select is None:
            return self.matrices(layer)[0]
        return layer.weight[self.rows[select]]


def build_targets(
    layer: Layer,
    y: np.ndarray,
    rows: np.ndarray | None,
    threshold: float,
    *,
    noisy: bool,
    band: float = 0.0,
) -> Targets:
    """Row bounds for ``layer`` given its output estimate ``y`` (full length; only ``rows`` are used).

    ``threshold`` is ``θ`` in the module docstring (``ε`` for noisy data); ``band`` is ``β``, the width
    of the one-sided zone at the ends of a tanh / sigmoid range for clean data (at least
    ``SATURATION`` times the range). ``rows=None`` uses every row.
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
        # relu(a) = y implies a <= y: an inactive row with a tiny positive y keeps that bound
        upper = np.where(active, yv, yv if noisy else np.maximum(yv, 0.0))
        return Targets(idx, lower, ones, upper, ones.copy())

    if act is Activation.LEAKY_RELU:
        c = layer.slopes(idx)
        if np.any(c <= 0.0):
            raise UnsupportedModelError(
                f"a leaky ReLU / PReLU slope must be positive to invert it unit by unit; the smallest is {float(np.min(c)):g}"
            )
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
        if noisy:
            return _invertible_noisy(act, idx, yv, threshold)
        return _invertible_clean(act, idx, yv, band)

    raise ValueError(f"cannot invert activation {act!r}")


def _inverse(act: Activation) -> tuple[float, float]:
    """The range ``(L, H)`` of tanh / sigmoid."""
    return (-1.0, 1.0) if act is Activation.TANH else (0.0, 1.0)


def _f(act: Activation, t: np.ndarray) -> np.ndarray:
    """``atanh`` / ``logit`` (``±inf`` at the ends of the range)."""
    with np.errstate(divide="ignore"):
        if act is Activation.TANH:
            return np.arctanh(t)
        return np.log(t) - np.log1p(-t)


def _fprime(act: Activation, t: np.ndarray) -> np.ndarray:
    """Derivative of ``atanh`` / ``logit`` (``inf`` at the ends of the range)."""
    with np.errstate(divide="ignore"):
        if act is Activation.TANH:
            return 1.0 / ((1.0 - t) * (1.0 + t))
        return 1.0 / (t * (1.0 - t))


def _invertible_clean(act: Activation, idx: np.ndarray, yv: np.ndarray, band: float) -> Targets:
    lo_r, hi_r = _inverse(act)
    width = hi_r - lo_r
    beta = min(max(float(band), SATURATION * width), 0.5 * width)
    y = np.clip(yv, lo_r, hi_r)
    low = y - lo_r <= beta
    high = (hi_r - y <= beta) & ~low
    inner = ~(low | high)
    centre = np.where(inner, y, 0.5 * (lo_r + hi_r))
    c = _f(act, centre)
    s = _fprime(act, centre)
    up_y = np.where(low, np.minimum(y + beta, hi_r - SATURATION * width), 0.5 * (lo_r + hi_r))
    dn_y = np.where(high, np.maximum(y - beta, lo_r + SATURATION * width), 0.5 * (lo_r + hi_r))
    lower = np.where(inner, c, np.where(high, _f(act, dn_y), -np.inf))
    upper = np.where(inner, c, np.where(low, _f(act, up_y), np.inf))
    lower_scale = np.where(inner, s, _fprime(act, dn_y))
    upper_scale = np.where(inner, s, _fprime(act, up_y))
    return Targets(idx, lower, lower_scale, upper, upper_scale)


def _invertible_noisy(act: Activation, idx: np.ndarray, yv: np.ndarray, eps: float) -> Targets:
    lo_r, hi_r = _inverse(act)
    mid = 0.5 * (lo_r + hi_r)
    eps = float(eps)
    y = np.clip(yv, lo_r, hi_r)
    dn, up = y - eps, y + eps
    has_lo = dn > lo_r  # the lower side of |act(a) - y| <= eps is a real constraint
    has_up = up < hi_r
    two = has_lo & has_up
    # secant of f over [y - eps, y + eps]; the tangent where eps is tiny against the distance to an end
    dist = np.minimum(y - lo_r, hi_r - y)
    tangent = two & (eps <= 1e-4 * dist)
    safe_dn = np.where(has_lo, dn, mid)
    safe_up = np.where(has_up, up, mid)
    f_dn, f_up = _f(act, safe_dn), _f(act, safe_up)
    centre = np.where(tangent, _f(act, np.where(two, y, mid)), 0.5 * (f_dn + f_up))
    scale = np.where(tangent, _fprime(act, np.where(two, y, mid)), (f_up - f_dn) / (2.0 * max(eps, 1e-300)))
    d_dn, d_up = _fprime(act, safe_dn), _fprime(act, safe_up)
    lower = np.where(two, centre, np.where(has_lo, f_dn + eps * d_dn, -np.inf))
    upper = np.where(two, centre, np.where(has_up, f_up - eps * d_up, np.inf))
    lower_scale = np.where(two, scale, d_dn)
    upper_scale = np.where(two, scale, d_up)
    keep = has_lo | has_up
    return Targets(idx[keep], lower[keep], lower_scale[keep], upper[keep], upper_scale[keep])


def row_misfit(w: np.ndarray, b: np.ndarray, targets: Targets, u: np.ndarray) -> np.ndarray:
    """Per row of ``targets``, how far ``a = W u + b`` is outside its bounds, measured on the layer's
    output: ``max((ℓ - a)/s^ℓ, (a - h)/s^h, 0)``, so ``|act(a) - y|`` to first order on an active row.
    """
    if targets.count == 0:
        return np.zeros(0)
    pre = w @ u + b
    with np.errstate(invalid="ignore"):
        below = np.where(np.isfinite(targets.lower), (targets.lower - pre) / targets.lower_scale, 0.0)
        above = np.where(np.isfinite(targets.upper), (pre - targets.upper) / targets.upper_scale, 0.0)
    return np.maximum(np.maximum(below, above), 0.0)


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
