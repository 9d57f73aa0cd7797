"""The normalized representation every part of onnxinv works on after parsing.

A generator is a chain ``h_i = act_i(W_i h_{i-1} + b_i)``, ``h_0 = z``. Nothing here knows about
protobufs: the parser produces these records, inversion and audit consume them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import scipy.sparse as sp

from onnxinv.errors import ObservationError

if TYPE_CHECKING:
    from onnxinv.oracle import Oracle


class Activation(str, enum.Enum):
    """Elementwise activation applied after a layer's affine map."""

    IDENTITY = "identity"
    RELU = "relu"
    LEAKY_RELU = "leaky_relu"  # also PRelu with a constant scalar slope
    TANH = "tanh"
    SIGMOID = "sigmoid"


def apply_activation(a: np.ndarray, activation: Activation, slope: float | np.ndarray = 0.0) -> np.ndarray:
    """Apply ``activation`` elementwise to pre-activations ``a`` (float64); ``slope`` is one value or one
    per unit (the last axis of ``a``)."""
    if activation is Activation.IDENTITY:
        return a
    if activation is Activation.RELU:
        return np.maximum(a, 0.0)
    if activation is Activation.LEAKY_RELU:
        return np.where(a >= 0.0, a, slope * a)
    if activation is Activation.TANH:
        return np.tanh(a)
    if activation is Activation.SIGMOID:
        # scipy's expit is stable for large |a|; imported lazily to keep import time low
        from scipy.special import expit

        return expit(a)
    raise ValueError(f"unknown activation {activation!r}")


Weight: TypeAlias = "np.ndarray | sp.csr_array"
"""A layer's ``(out, in)`` matrix: a dense float64 array, or a scipy.sparse CSR array for linear maps
that are mostly zeros (convolutions, diagonal scalings, upsampling). Never a dense copy of those."""


def is_sparse(weight: Weight) -> bool:
    """True for a scipy.sparse weight."""
    return sp.issparse(weight)


def as_weight(weight: object) -> Weight:
    """A read-only float64 weight: dense arrays stay dense, sparse ones become canonical CSR."""
    if sp.issparse(weight):
        w = sp.csr_array(weight, dtype=np.float64, copy=True)
        w.sum_duplicates()
        w.eliminate_zeros()
        for part in (w.data, w.indices, w.indptr):
            part.setflags(write=False)
        return w
    dense = np.array(weight, dtype=np.float64, copy=True)
    dense.setflags(write=False)
    return dense


def activation_derivative(
    out: np.ndarray, activation: Activation, slope: float | np.ndarray = 0.0
) -> np.ndarray:
    """``d act / d a`` written in terms of the activation's output ``out`` (at a ReLU kink: 0)."""
    if activation is Activation.RELU:
        return (out > 0).astype(np.float64)
    if activation is Activation.LEAKY_RELU:
        return np.where(out >= 0, 1.0, slope)
    if activation is Activation.TANH:
        return 1.0 - out * out
    if activation is Activation.SIGMOID:
        return out * (1.0 - out)
    return np.ones_like(out)


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer ``act(W h + b)``.

    Attributes
    ----------
    weight : (out, in) float64, dense ``np.ndarray`` or ``scipy.sparse.csr_array`` (see :data:`Weight`)
    bias : (out,) float64 array
    activation : the elementwise map applied after the affine map
    slope : negative-side slope of a leaky ReLU / PReLU: one float for every unit, or an (out,) array
        with one slope per unit (PReLU per unit or per channel); 0 for every other activation
    source_nodes : names of the ONNX nodes this layer was built from, in graph order
    """

    weight: Weight
    bias: np.ndarray
    activation: Activation = Activation.IDENTITY
    slope: float | np.ndarray = 0.0
    source_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        w = as_weight(self.weight)
        b = np.array(self.bias, dtype=np.float64, copy=True).reshape(-1)
        if w.ndim != 2:
            raise ValueError(f"layer weight must be 2-D (out, in), got shape {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"layer bias must have shape ({w.shape[0]},), got {b.shape}")
        b.setflags(write=False)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "activation", Activation(self.activation))
        object.__setattr__(self, "slope", _normalize_slope(self.slope, w.shape[0]))
        object.__setattr__(self, "source_nodes", tuple(self.source_nodes))

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def expansion(self) -> float:
        """``out / in``: above 1 the layer expands, below 1 it contracts."""
        return self.out_features / self.in_features

    @property
    def sparse(self) -> bool:
        """True when the weight is stored as a scipy.sparse CSR array."""
        return sp.issparse(self.weight)

    @property
    def nnz(self) -> int:
        """Stored entries of the weight (``out * in`` for a dense one)."""
        return int(self.weight.nnz) if sp.issparse(self.weight) else int(self.weight.size)  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union

    @property
    def per_unit_slope(self) -> bool:
        """True when a leaky ReLU / PReLU has one slope per unit rather than one for all."""
        return isinstance(self.slope, np.ndarray)

    def slopes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The negative-side slope of each output row (``rows``: a subset, by index or bool mask)."""
        full = (
            self.slope
            if isinstance(self.slope, np.ndarray)
            else np.full(self.out_features, float(self.slope))
        )
        return full if rows is None else full[rows]

    def weight_rows(self, rows: np.ndarray) -> Weight:
        """``W[rows]`` in the weight's own storage (sparse stays sparse)."""
        return self.weight[rows]

    def dense_weight(self) -> np.ndarray:
        """The weight as a dense array (a copy for sparse weights: only for small layers)."""
        return self.weight.toarray() if sp.issparse(self.weight) else self.weight  # type: ignore[union-attr]  # scipy has no stubs, so sp.issparse cannot narrow the union

    def preactivation(self, h: np.ndarray) -> np.ndarray:
        """``W h + b`` for ``h`` of shape (in,) or (N, in)."""
        if sp.issparse(self.weight):
            if h.ndim == 1:
                return self.weight @ h + self.bias
            return np.asarray((self.weight @ h.T).T) + self.bias
        return h @ self.weight.T + self.bias

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``act(W h + b)`` for ``h`` of shape (in,) or (N, in)."""
        return apply_activation(self.preactivation(h), self.activation, self.slope)

    def __repr__(self) -> str:
        storage = f", sparse nnz={self.nnz}" if self.sparse else ""
        return (
            f"Layer({self.in_features} -> {self.out_features}, {self.describe_activation()}{storage}, "
            f"source_nodes={self.source_nodes})"
        )

    def describe_activation(self) -> str:
        if self.activation is Activation.LEAKY_RELU:
            if isinstance(self.slope, np.ndarray):
                return f"prelu(per unit, {float(self.slope.min()):g}..{float(self.slope.max()):g})"
            return f"leaky_relu({self.slope:g})"
        return self.activation.value


def _normalize_slope(slope: object, out: int) -> float | np.ndarray:
    """One float when every unit shares the slope, else a read-only (out,) float64 array."""
    values = np.array(slope, dtype=np.float64, copy=True).reshape(-1)
    if values.size == 1:
        return float(values[0])
    if values.size != out:
        raise ValueError(f"layer slope must be one value or one per output ({out}), got {values.size}")
    if values.size and np.all(values == values[0]):
        return float(values[0])
    values.setflags(write=False)
    return values


@dataclass(frozen=True)
class TensorInfo:
    """Name, declared shape and dtype of a model input or output.

    ``shape`` holds ints for fixed dims, strings for named dims and None for dims with neither.
    ``dtype`` is a numpy dtype name such as "float32".
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {self.dtype}"


class FixedInputs(Mapping[str, np.ndarray]):
    """Read-only ``name -> array`` of the graph inputs held fixed (class labels, conditioning vectors).

    Each array has the input's declared rank and dtype; where the input has a batch dim it holds one
    sample (batch 1), which the oracle repeats for every latent of a batch. The arrays are read-only
    copies; the mapping pickles (a plain ``MappingProxyType`` does not).
    """

    def __init__(self, values: Mapping[str, np.ndarray] | None = None) -> None:
        frozen = {}
        for name, value in (values or {}).items():
            array = np.array(value, copy=True)
            array.setflags(write=False)
            frozen[str(name)] = array
        self._values = frozen

    def __getitem__(self, name: str) -> np.ndarray:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: array{tuple(v.shape)} {v.dtype}" for k, v in self._values.items())
        return f"FixedInputs({{{inner}}})"


@dataclass(frozen=True, eq=False)
class Generator:
    """A dense generator ``G(z) = layer_d(... layer_1(z))`` plus what is known of its ONNX file.

    Attributes
    ----------
    layers : the normalized layers, input side first
    input, output : the model's declared latent input and its output
    inputs : every graph input that is not an initializer, in graph order: the latent and the fixed ones
        (just ``(input,)`` for an unconditional generator)
    fixed : the values of the fixed inputs (see :class:`FixedInputs`); they are folded into the layers'
        biases, and the oracle feeds them to onnxruntime beside every latent
    sample_input_shape : shape of one latent as the model expects it (without the batch dim)
    batch_size : None when the model accepts any batch size, else the fixed batch it was exported with
    has_batch_dim : False when the model's input is one bare latent vector (rank 1)
    producer, opset : from the model file ("" and 0 for generators built in code)
    path : the model file, if any
    model_bytes : the inlined model, handed to onnxruntime by the oracle (None: build one from the layers)
    notes : things the parser noticed that do not stop it (checker warnings, folded ops)
    """

    layers: tuple[Layer, ...]
    input: TensorInfo
    output: TensorInfo
    sample_input_shape: tuple[int, ...] = ()
    batch_size: int | None = None
    has_batch_dim: bool = True
    producer: str = ""
    opset: int = 0
    path: str | None = None
    model_bytes: bytes | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    inputs: tuple[TensorInfo, ...] = ()
    fixed: Mapping[str, np.ndarray] = field(default_factory=FixedInputs)

    def __post_init__(self) -> None:
        inputs = tuple(self.inputs) or (self.input,)
        if self.input not in inputs:
            # a latent re-described under the same name (dataclasses.replace(input=...)) takes its place
            same = [i for i, info in enumerate(inputs) if info.name == self.input.name]
            if not same:
                raise ValueError(f"the latent input {self.input.name!r} is not among the inputs")
            inputs = tuple(self.input if i == same[0] else info for i, info in enumerate(inputs))
        object.__setattr__(self, "inputs", inputs)
        fixed = self.fixed if isinstance(self.fixed, FixedInputs) else FixedInputs(self.fixed)
        names = {info.name for info in inputs}
        unknown = [name for name in fixed if name not in names or name == self.input.name]
        if unknown:
            raise ValueError(f"fixed values {unknown} do not name a non-latent input")
        object.__setattr__(self, "fixed", fixed)
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("a generator needs at least one layer")
        for i in range(1, len(layers)):
            if layers[i].in_features != layers[i - 1].out_features:
                raise ValueError(
                    f"layer {i} takes {layers[i].in_features} inputs but layer {i - 1} "
                    f"gives {layers[i - 1].out_features}"
                )
        object.__setattr__(self, "layers", layers)
        if not self.sample_input_shape:
            object.__setattr__(self, "sample_input_shape", (layers[0].in_features,))

    @property
    def latent_dim(self) -> int:
        return self.layers[0].in_features

    @property
    def conditional(self) -> bool:
        """True when the graph has inputs besides the latent (held fixed at ``fixed``)."""
        return len(self.inputs) > 1

    @property
    def output_dim(self) -> int:
        return self.layers[-1].out_features

    def forward(self, z: np.ndarray) -> np.ndarray:
        """The layer list's forward pass in float64: (k,) -> (n,), or (N, k) -> (N, n)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim not in (1, 2) or z.shape[-1] != self.latent_dim:
            raise ObservationError(
                f"latent has shape {z.shape}; this generator takes {self.latent_dim} values per "
                f"latent, as shape ({self.latent_dim},) or (N, {self.latent_dim})"
            )
        h = z
        for layer in self.layers:
            h = layer.forward(h)
        return h

    def hidden_values(self, z: np.ndarray) -> list[np.ndarray]:
        """``[h_0 = z, h_1, ..., h_d]`` for one latent or a batch."""
        h = np.asarray(z, dtype=np.float64)
        values = [h]
        for layer in self.layers:
            h = layer.forward(h)
            values.append(h)
        return values

    @property
    def oracle(self) -> Oracle:
        """onnxruntime running this generator's model (built from the layers if there is no file).

        The session is cached by :func:`onnxinv.oracle.oracle_for`, not stored in this record, so a
        generator stays plain data (it pickles without a session; each process builds its own).
        """
        from onnxinv.oracle import oracle_for

        return oracle_for(self)

    def run_onnx(self, z: np.ndarray) -> np.ndarray:
        """Run ``z`` through onnxruntime: (k,) -> (n,), or (N, k) -> (N, n), float64."""
        return self.oracle.run(z)

    @classmethod
    def from_layers(cls, layers: list[Layer] | tuple[Layer, ...], dtype: str = "float32") -> Generator:
        """A generator built in code; its oracle model is made from the layers themselves."""
        layers = tuple(layers)
        k, n = layers[0].in_features, layers[-1].out_features
        return cls(
            layers=layers,
            input=TensorInfo("z", (None, k), dtype),
            output=TensorInfo("x", (None, n), dtype),
        )
