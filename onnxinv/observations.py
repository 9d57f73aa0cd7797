"""Check and normalise what users pass as observations, masks and noise levels.

Every problem raises :class:`~onnxinv.errors.ObservationError` with what is wrong, the shapes or values
involved, and what to try. Nothing here knows about inversion methods.

Rules
-----
* One observation: any shape whose size is the generator's output size ``n`` (``(n,)``, ``(1, n)``,
  ``(1, 1, 8, 8)``, ...). A batch: shape ``(N, ...)`` with ``N * n`` values, the batch on the first
  axis. ``batch=True`` / ``False`` forces the reading of a size-``n`` array.
* Values must be real floating point (float16/32/64); they are converted to float64, and the machine
  epsilon of the dtype they came in is kept as :attr:`Observations.precision` (float32 values are only
  accurate to about 1e-7 relative, whatever produced them). Integers,
  booleans, complex numbers and objects are refused rather than guessed at (images stored as uint8
  usually need scaling first).
* NaN and ±Inf are refused, except at entries a mask marks as unobserved.
* A mask is bool, or numbers that are all 0 or 1, with ``True``/1 = observed. Its size is ``n``
  (shared by every observation of a batch) or ``N * n`` (one mask per observation). Every
  observation must keep at least one observed entry.
* Noise is None or a finite number ``>= 0`` (0 means clean, like None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxinv.errors import ObservationError

if TYPE_CHECKING:  # scipy is imported lazily, on first use
    from onnxinv.layers import Weight


@dataclass(frozen=True, eq=False)
class Observations:
    """Validated observations.

    Attributes
    ----------
    values : (N, n) float64; unobserved entries are set to 0
    mask : (N, n) bool (True = observed) or None when everything is observed
    single : the input was one observation (the caller gets one result, not a batch)
    input_shape : the shape the user passed
    precision : machine epsilon of the dtype the values came in (float32: 1.19e-7; float64: 2.2e-16)
    """

    values: np.ndarray
    mask: np.ndarray | None
    single: bool
    input_shape: tuple[int, ...]
    precision: float = float(np.finfo(np.float64).eps)

    @property
    def count(self) -> int:
        return self.values.shape[0]

    def mask_of(self, i: int) -> np.ndarray | None:
        return None if self.mask is None else self.mask[i]


_EPS: dict[np.dtype, float] = {}  # machine epsilon per float dtype (np.finfo costs more than a lookup)


def prepare_observations(
    x: object,
    output_dim: int,
    mask: object = None,
    *,
    batch: bool | None = None,
) -> Observations:
    """Validate ``x`` (and ``mask``) against a generator with ``output_dim`` outputs."""
    arr = _as_float_array(x, "observation")
    precision = _EPS.get(arr.dtype) or _EPS.setdefault(arr.dtype, float(np.finfo(arr.dtype).eps))
    arr = arr.astype(np.float64, copy=False)
    n = int(output_dim)
    shape = tuple(arr.shape)
    if arr.ndim == 0:
        raise ObservationError(
            f"the observation is a 0-d array (a single number); this generator produces {n} values per "
            f"observation. Pass an array of shape ({n},) or (N, {n})."
        )
    if arr.size == 0:
        raise ObservationError(
            f"the observation is empty (shape {shape}); this generator produces {n} values per observation."
        )
    if batch is None:
        if arr.size == n:
            single = True
        elif arr.ndim >= 2 and arr.size == arr.shape[0] * n:
            single = False
        else:
            raise ObservationError(_size_message(shape, arr.size, n))
    elif batch:
        if arr.ndim < 2 or arr.size != arr.shape[0] * n:
            raise ObservationError(
                f"batch=True needs the batch on the first axis with {n} values per observation, e.g. "
                f"(N, {n}); got shape {shape} ({arr.size} values)."
            )
        single = False
    else:
        if arr.size != n:
            raise ObservationError(_size_message(shape, arr.size, n) + " (batch=False was given.)")
        single = True
    values = arr.reshape(1, n) if single else arr.reshape(arr.shape[0], n)
    count = values.shape[0]
    masks = prepare_mask(mask, n, count)
    finite = np.isfinite(values)
    if masks is not None:
        finite |= ~masks  # unobserved entries may hold anything
    if not finite.all():
        bad = ~finite
        where = np.argwhere(bad)[0]
        obs, entry = int(where[0]), int(where[1])
        kind = "NaN" if np.isnan(values[obs, entry]) else "an infinite value"
        at = f"entry {entry}" if single else f"observation {obs}, entry {entry}"
        raise ObservationError(
            f"the observation holds {kind} at {at} (flattened), {int(bad.sum())} non-finite observed "
            "value(s) in all. Inversion needs finite values; if these entries are missing, pass "
            "mask=np.isfinite(x) to leave them out."
        )
    values = np.where(masks, values, 0.0) if masks is not None else values.copy()
    if masks is not None and masks.all():
        masks = None
    return Observations(
        values=np.ascontiguousarray(values), mask=masks, single=single, input_shape=shape, precision=precision
    )


def prepare_mask(mask: object, output_dim: int, count: int = 1) -> np.ndarray | None:
    """(count, n) bool mask or None. See the module docstring for the rules."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    n = int(output_dim)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ObservationError(
            f"the mask has dtype {arr.dtype}; it must be bool (True = observed) or numbers that are all "
            "0 or 1."
        )
    if arr.dtype.kind != "b":
        with np.errstate(invalid="ignore"):
            ok = np.isin(arr, (0, 1))
        if not ok.all():
            bad = arr.reshape(-1)[~ok.reshape(-1)][0]
            raise ObservationError(
                f"the mask has dtype {arr.dtype} with a value {bad!r} that is neither 0 nor 1; pass a bool "
                "mask (True = observed) or one made of 0s and 1s."
            )
        arr = arr.astype(bool)
    if arr.ndim == 0:
        raise ObservationError(
            f"the mask is a single value; it must have {n} entries (one per output), or {count} x {n} for "
            "a batch."
        )
    if arr.size == n:
        masks = np.broadcast_to(arr.reshape(1, n), (count, n)).copy()
    elif arr.size == count * n:
        masks = arr.reshape(count, n).copy()
    else:
        per_batch = f" or {count} x {n} = {count * n} (one mask per observation)" if count > 1 else ""
        raise ObservationError(
            f"the mask has shape {arr.shape} ({arr.size} entries); it must have {n} entries (one per "
            f"output of the generator){per_batch}."
        )
    empty = ~masks.any(axis=1)
    if empty.any():
        which = int(np.flatnonzero(empty)[0])
        at = "" if count == 1 else f" for observation {which}"
        raise ObservationError(
            f"the mask observes no entry{at}; at least one output must be observed (True = observed)."
        )
    return masks


# Values on an 8-bit grid (k / 255) within this many grid steps are read as quantised.
GRID_TOLERANCE = 1e-3
_HEAD = 8  # values quantisation_step tests first
_GRIDS = ((1.0 / 255.0, 0.0), (2.0 / 255.0, -1.0))  # (step, offset): k / 255 and 2k / 255 - 1


def quantisation_step(values: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """The grid step when every observed value lies on an 8-bit grid, else None.

    Grids: ``k / 255`` (images in ``[0, 1]``) and ``2k / 255 - 1`` (images in ``[-1, 1]``), with
    ``k = 0..255``. Observations made only of the grid's ends (all 0 and 1, or all -1 and 1) are not
    taken as quantised: they carry no sign of it.
    """
    v = values if mask is None else values[mask]
    if v.size == 0:
        return None
    head = v[:_HEAD].tolist()
    for step, offset in _GRIDS:
        # the first few values usually settle it: one off the grid rules the grid out (Python floats:
        # the same IEEE operations as numpy's elementwise ones, round() halves to even like np.round)
        if any(abs(k - round(k)) > GRID_TOLERANCE for k in ((h - offset) / step for h in head)):
            continue
        k = (v - offset) / step
        if np.any(k < -GRID_TOLERANCE) or np.any(k > 255 + GRID_TOLERANCE):
            continue
        if np.max(np.abs(k - np.round(k))) > GRID_TOLERANCE:
            continue
        inner = (np.round(k) > 0) & (np.round(k) < 255)
        if inner.any():
            return step
    return None


def quantisation_steps(values: np.ndarray, mask: np.ndarray | None = None) -> list[float | None]:
    """:func:`quantisation_step` of every row of ``values`` (N, n) (``mask``: (N, n) or None), the same
    answers. Without a mask the first values of all rows are tested at once; only the rows they leave
    on a grid (quantised data, usually none or all) take the full test row by row."""
    count = values.shape[0]
    if mask is not None or count <= 1 or values.shape[1] == 0:
        return [quantisation_step(values[i], None if mask is None else mask[i]) for i in range(count)]
    maybe = np.zeros(count, dtype=bool)
    for step, offset in _GRIDS:
        # elementwise as in quantisation_step, so each row's head test gives the same answer
        head = (values[:, :_HEAD] - offset) / step
        maybe |= np.max(np.abs(head - np.round(head)), axis=1) <= GRID_TOLERANCE
    steps: list[float | None] = [None] * count
    for i in np.flatnonzero(maybe):
        steps[i] = quantisation_step(values[i])
    return steps


def prepare_measure(measure: object, output_dim: int) -> Weight | None:
    """A validated measurement matrix ``A`` (m, n) for ``y = A·G(z)``: float64, dense or scipy.sparse
    CSR; None passes through."""
    if measure is None:
        return None
    import scipy.sparse as sp

    if sp.issparse(measure):
        matrix = sp.csr_array(measure, dtype=np.float64)
        data = matrix.data
    else:
        arr = _as_float_array(measure, "measurement matrix")
        matrix = np.ascontiguousarray(arr, dtype=np.float64)
        data = matrix
    n = int(output_dim)
    if matrix.ndim != 2 or matrix.shape[1] != n or matrix.shape[0] < 1:
        raise ObservationError(
            f"the measurement matrix has shape {tuple(matrix.shape)}; it must be (m, {n}): one row per "
            f"measurement, one column per model output ({n} values), so that y = A·G(z)."
        )
    if not np.all(np.isfinite(data)):
        raise ObservationError(
            "the measurement matrix holds NaN or infinite values; every entry must be finite."
        )
    return matrix


def check_noise(noise: object) -> float | None:
    """None for clean observations, else the noise level as a positive float."""
    if noise is None:
        return None
    try:
        value = float(noise)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ObservationError(
            f"noise must be a number (the per-entry size of the observation error) or None; got {noise!r}"
        ) from None
    if not np.isfinite(value) or value < 0:
        raise ObservationError(
            f"noise must be finite and >= 0 (the per-entry size of the observation error); got {value!r}"
        )
    return value if value > 0 else None


def _as_float_array(x: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged nested lists and the like
        raise ObservationError(f"the {what} cannot be read as an array: {exc}") from exc
    kind = arr.dtype.kind
    if kind == "f":
        return arr  # the caller records the precision of this dtype, then converts to float64
    names = {"b": "bool", "i": "integer", "u": "unsigned integer", "c": "complex", "O": "object"}
    hint = {
        "b": "a bool array looks like a mask; pass it as mask= and the values as x",
        "i": "convert to float first (e.g. x.astype(np.float32) / 255 for 8-bit images, as the model expects)",
        "u": "convert to float first (e.g. x.astype(np.float32) / 255 for 8-bit images, as the model expects)",
        "c": "the generator's outputs are real; pass the real values",
    }.get(kind, "pass a float array")
    raise ObservationError(
        f"the {what} has dtype {arr.dtype} ({names.get(kind, kind)}); a float array is required. Try: {hint}."
    )


def _size_message(shape: tuple[int, ...], size: int, n: int) -> str:
    msg = (
        f"the observation has shape {shape} ({size} values) but this generator produces {n} values per "
        f"observation. Pass {n} values for one observation, or shape (N, {n}) for a batch"
    )
    if size % n == 0 and size > n:
        msg += f" (here N = {size // n}: reshape to ({size // n}, {n}))"
    return msg + "."
