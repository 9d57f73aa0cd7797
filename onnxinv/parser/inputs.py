"""Which graph input is the latent, and the values of the inputs held fixed.

A conditional generator takes inputs besides the latent (a class label, a conditioning vector, a
distance). The user fixes them (``load(path, fixed={"y": array})``, ``--fix y=Y.npy``); the parser then
treats them as constants, so ``Concat(z, onehot)``, ``Add(h, condition)`` and ``Gather(table, label)``
fold into the layers' biases, and the oracle feeds the same values to onnxruntime.

Shapes of fixed values: an input whose first declared dim is not a number (``[N, 5]``, ``[batch]``)
has a batch axis; its value is one sample, given with or without that axis (``(5,)`` or ``(1, 5)``),
and it is repeated for every latent of a batch. Any other input takes a value of its declared shape;
for a fixed first dim (``[2, 5]``, a fixed-batch export) one sample ``(5,)`` or ``(1, 5)`` is repeated
to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxinv.errors import InvalidArgumentError, UnsupportedModelError
from onnxinv.layers import TensorInfo
from onnxinv.parser.graph import GraphView, Problem, float_dtype_name


@dataclass(frozen=True)
class Interface:
    """The graph's endpoints once the latent is chosen and the other inputs are fixed.

    ``fixed`` holds the values as the oracle feeds them for one sample (batch 1 where the input has
    a batch axis); ``probe`` holds them repeated to the probe batch, as the parser's constants.
    """

    latent: TensorInfo
    output: TensorInfo
    inputs: tuple[TensorInfo, ...]
    fixed: dict[str, np.ndarray]
    probe: dict[str, np.ndarray]


def resolve_interface(
    view: GraphView,
    where: str,
    fixed: Mapping[str, object] | None = None,
    latent: str | None = None,
) -> Interface:
    """Choose the latent among the graph's real inputs and check the fixed values against the others.

    Raises InvalidArgumentError for a ``fixed`` or ``latent`` argument that does not fit the graph, and
    UnsupportedModelError when inputs are left without a value (naming each, and how to fix it).
    """
    graph = view.graph
    if len(graph.output) != 1:
        names = ", ".join(f"'{o.name}'" for o in graph.output)
        hint = "keep only the generated sample as output, e.g. with onnx.utils.extract_model"
        raise UnsupportedModelError(
            f"{where}: a generator has one output but this graph has {len(graph.output)}: {names}. "
            f"Try: {hint}.",
            (Problem("graph outputs", "", view.opset, (f"{len(graph.output)} outputs: {names}",), hint),),
        )
    output = tensor_info(graph.output[0], where)
    fixed = dict(fixed or {})
    real = {v.name: v for v in view.real_inputs}
    infos = {name: tensor_info(value, where, any_dtype=True) for name, value in real.items()}
    listing = ", ".join(_describe(info) for info in infos.values()) or "none"
    for name in fixed:
        if name in real:
            continue
        if name in view.initializers or name in view.sparse_initializers:
            raise InvalidArgumentError(
                f"{where}: fixed input '{name}' is an initializer (a constant stored in the file), not an "
                f"input to fix. The graph's inputs are: {listing}."
            )
        raise InvalidArgumentError(
            f"{where}: fixed input '{name}' is not an input of the graph. Its inputs are: {listing}."
        )
    if latent is not None:
        if latent not in real:
            raise InvalidArgumentError(
                f"{where}: latent '{latent}' is not an input of the graph. Its inputs are: {listing}."
            )
        if latent in fixed:
            raise InvalidArgumentError(
                f"{where}: input '{latent}' is named as the latent and also given a fixed value; the latent "
                "is what onnxinv inverts, so leave it out of the fixed values."
            )
    free = [name for name in real if name not in fixed]
    if latent is None and len(free) == 1:
        latent = free[0]
    unfixed = [name for name in free if name != latent]
    if latent is None or unfixed:
        raise _needs_fixing(view, where, infos, free, latent)
    latent_info = tensor_info(real[latent], where)  # refuses a non-float latent with its reason
    batch = _probe_batch(latent_info)
    latent_batch = batch if len(latent_info.shape) >= 2 and isinstance(latent_info.shape[0], int) else None
    values: dict[str, np.ndarray] = {}
    probe: dict[str, np.ndarray] = {}
    for name, value in fixed.items():
        info = infos[name]
        values[name] = fixed_value(info, value, where, latent_batch)
        batched = bool(info.shape) and not isinstance(info.shape[0], int)
        probe[name] = np.repeat(values[name], batch, axis=0) if batched and batch > 1 else values[name]
    inputs = tuple(latent_info if name == latent else infos[name] for name in real)
    return Interface(latent_info, output, inputs, values, probe)


def _probe_batch(latent: TensorInfo) -> int:
    """The batch the shape probe runs: a fixed batch the latent was exported with, else 1."""
    if len(latent.shape) >= 2 and isinstance(latent.shape[0], int) and latent.shape[0] > 0:
        return int(latent.shape[0])
    return 1


def _needs_fixing(
    view: GraphView, where: str, infos: dict[str, TensorInfo], free: list[str], latent: str | None
) -> UnsupportedModelError:
    described = ", ".join(_describe(infos[n]) for n in infos) or "none"
    if not free:
        reason = f"every input is given a fixed value ({described}), so none is left to be the latent"
        hint = "leave the latent out of the fixed values (--latent NAME names it)"
    else:
        if latent is None:  # for the message only: the one float input that does not feed a weight
            weights = set(_weight_operands(view, free))
            floats = [n for n in free if float_dtype_name(_elem(view, n)) is not None and n not in weights]
            latent = floats[0] if len(floats) == 1 else None
        others = [n for n in free if n != latent]
        if latent is not None:
            need = ", ".join(f"'{n}'" for n in others)
            reason = (
                f"the graph has {len(infos)} inputs ({described}); onnxinv inverts the latent '{latent}' "
                f"and needs a fixed value for {need}"
            )
            hint = " ".join(f"--fix {n}={_stem(n)}.npy" for n in others)
            hint += f" (Python: onnxinv.load(path, fixed={{{', '.join(repr(n) + ': ...' for n in others)}}}))"
        else:
            reason = (
                f"the graph has {len(infos)} inputs ({described}) and {len(free)} of them have no fixed "
                "value, so which one is the latent is ambiguous"
            )
            example = free[0]
            rest = " ".join(f"--fix {n}={_stem(n)}.npy" for n in free[1:])
            hint = (
                f"name the latent with --latent and fix every other input with --fix, e.g. --latent "
                f"{example} {rest} (Python: onnxinv.load(path, latent={example!r}, fixed={{...}}))"
            )
        weight_inputs = ", ".join(f"'{n}'" for n in _weight_operands(view, free) if n != latent)
        if weight_inputs:
            hint += (
                f"; {weight_inputs} feed(s) the weight of a dense node: if they hold weights, store them as "
                "initializers (re-export with the weights as constants, e.g. torch.onnx.export(..., "
                "keep_initializers_as_inputs=False))"
            )
    problem = Problem("graph inputs", "", view.opset, (reason,), hint)
    return UnsupportedModelError(f"{where}: {problem.describe()}.", (problem,))


def _weight_operands(view: GraphView, names: list[str]) -> list[str]:
    """The inputs among ``names`` that look like weights: a fixed 2-D shape, feeding Gemm or MatMul."""
    shapes = {v.name: v.type.tensor_type.shape.dim for v in view.real_inputs}
    wanted = {n for n in names if len(shapes[n]) == 2 and all(d.HasField("dim_value") for d in shapes[n])}
    found: list[str] = []
    for node in view.graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            found.extend(n for n in node.input if n in wanted and n not in found)
    return found


def _elem(view: GraphView, name: str) -> int:
    value = next(v for v in view.real_inputs if v.name == name)
    return value.type.tensor_type.elem_type


def _describe(info: TensorInfo) -> str:
    return f"'{info.name}' {_dims(info.shape)} {info.dtype}"


def _stem(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return cleaned.upper() or "VALUE"


def tensor_info(value: onnx.ValueInfoProto, where: str, *, any_dtype: bool = False) -> TensorInfo:
    """Name, declared shape and dtype; a non-float tensor is refused unless ``any_dtype``."""
    tensor_type = value.type.tensor_type
    dtype = float_dtype_name(tensor_type.elem_type)
    code = tensor_type.elem_type
    # a number outside onnx's enum (a damaged or future file) has no name to print
    if not code:
        name = "no type"
    elif code in onnx.TensorProto.DataType.values():
        name = onnx.TensorProto.DataType.Name(code)
    else:
        name = f"number {code} (not an ONNX type)"
    if dtype is None and any_dtype and tensor_type.elem_type:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = name.lower()
    if dtype is None:
        raise UnsupportedModelError(
            f"{where}: tensor '{value.name}' has element type {name}; onnxinv reads float32 and float64 "
            "models. Re-export in float32."
        )
    dims: list[int | str | None] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(value.name, tuple(dims), dtype)


def fixed_value(info: TensorInfo, value: object, where: str, latent_batch: int | None = None) -> np.ndarray:
    """``value`` checked against ``info`` and cast to its dtype, shaped as the oracle feeds it.

    ``latent_batch`` is the latent's fixed batch size, if it has one: an input whose first dim is that
    number is batched too, and takes one sample's value.

    Raises InvalidArgumentError naming the input, the shape or dtype given and the one expected.
    """
    what = f"{where}: fixed input '{info.name}' ({info.describe()})"
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and other objects numpy cannot turn into an array
        raise InvalidArgumentError(f"{what}: the value is not an array ({exc}).") from None
    if array.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            f"{what}: the value has dtype {array.dtype}; give a numeric array (float, int or bool)."
        )
    declared = info.shape
    batched = bool(declared) and not isinstance(declared[0], int)
    per_sample = batched or (bool(declared) and latent_batch is not None and declared[0] == latent_batch)
    sample = declared[1:]
    fixed_batch = 1 if batched or not declared else int(declared[0])  # type: ignore[arg-type]  # an int when not batched
    if _fits(declared, array.shape):
        shaped = array
    elif per_sample and _fits(declared[1:], array.shape):
        shaped = np.repeat(array[None], fixed_batch, axis=0)  # one sample, without its batch axis
    elif (
        per_sample
        and array.ndim == len(declared)
        and array.shape[0] == 1
        and _fits(declared[1:], array.shape[1:])
    ):
        shaped = np.repeat(array, fixed_batch, axis=0)  # one sample for a fixed-batch export
    else:
        expected = _dims(declared) + (f" or one sample {_dims(sample)}" if per_sample else "")
        raise InvalidArgumentError(
            f"{what}: the value has shape {tuple(array.shape)}, which does not fit {expected}."
        )
    if batched and shaped.shape[0] != 1:
        raise InvalidArgumentError(
            f"{what}: the value holds {shaped.shape[0]} samples along the batch axis; onnxinv holds one "
            f"value fixed for every latent, so give one sample of shape {_dims(sample)}."
        )
    dtype = np.dtype(info.dtype) if _numeric(info.dtype) else None
    if dtype is None:
        raise UnsupportedModelError(f"{what}: onnxinv can only fix numeric inputs, not {info.dtype} ones.")
    if array.dtype.kind == "f" and not np.all(np.isfinite(shaped)):
        raise InvalidArgumentError(f"{what}: the value holds NaN or infinite entries.")
    if dtype.kind in "iub":
        if shaped.dtype.kind == "f" and not np.all(shaped == np.round(shaped)):
            raise InvalidArgumentError(
                f"{what}: the input takes {dtype} values but the value holds non-integer floats."
            )
        low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if shaped.size and (shaped.min() < low or shaped.max() > high):
            raise InvalidArgumentError(
                f"{what}: the value's entries ({shaped.min()} to {shaped.max()}) do not fit {dtype}."
            )
    with np.errstate(over="ignore"):
        cast = shaped.astype(dtype)
    if dtype.kind == "f" and not np.all(np.isfinite(cast)):
        raise InvalidArgumentError(f"{what}: the value has entries too large for {dtype}.")
    cast.setflags(write=False)
    return cast


def _numeric(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def _fits(declared: tuple, shape: tuple) -> bool:
    if len(declared) != len(shape):
        return False
    return all(s == d if isinstance(d, int) else s > 0 for d, s in zip(declared, shape))


def _dims(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
