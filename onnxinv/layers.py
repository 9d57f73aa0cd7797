"""The normalized representation every part of onnxinv works on after parsing.

A generator is a chain ``h_i = act_i(W_i h_{i-1} + b_i)``, ``h_0 = z``. Nothing here knows about
protobufs: the parser produces these records, inversion and audit consume them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

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


def apply_activation(a: np.ndarray, activation: Activation, slope: float = 0.0) -> np.ndarray:
    """Apply ``activation`` elementwise to pre-activations ``a`` (float64)."""
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


@dataclass(frozen=True, eq=False)
class Layer:
    """One dense layer ``act(W h + b)``.

    Attributes
    ----------
    weight : (out, in) float64 array
    bias : (out,) float64 array
    activation : the elementwise map applied after the affine map
    slope : negative-side slope of a leaky ReLU (0 for every other activation)
    source_nodes : names of the ONNX nodes this layer was built from, in graph order
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: Activation = Activation.IDENTITY
    slope: float = 0.0
    source_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        w = np.array(self.weight, dtype=np.float64, copy=True)
        b = np.array(self.bias, dtype=np.float64, copy=True).reshape(-1)
        if w.ndim != 2:
            raise ValueError(f"layer weight must be 2-D (out, in), got shape {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"layer bias must have shape ({w.shape[0]},), got {b.shape}")
        w.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "activation", Activation(self.activation))
        object.__setattr__(self, "slope", float(self.slope))
        object.__setattr__(self, "source_nodes", tuple(self.source_nodes))

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def expansion(self) -> float:
        """``out / in``: above 1 the layer expands, below 1 it contracts."""
        return self.out_features / self.in_features

    def preactivation(self, h: np.ndarray) -> np.ndarray:
        """``W h + b`` for ``h`` of shape (in,) or (N, in)."""
        return h @ self.weight.T + self.bias

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``act(W h + b)`` for ``h`` of shape (in,) or (N, in)."""
        return apply_activation(self.preactivation(h), self.activation, self.slope)

    def __repr__(self) -> str:
        return (
            f"Layer({self.in_features} -> {self.out_features}, {self.describe_activation()}, "
            f"source_nodes={self.source_nodes})"
        )

    def describe_activation(self) -> str:
        if self.activation is Activation.LEAKY_RELU:
            return f"leaky_relu({self.slope:g})"
        return self.activation.value


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


@dataclass(frozen=True, eq=False)
class Generator:
    """A dense generator ``G(z) = layer_d(... layer_1(z))`` plus what is known of its ONNX file.

    Attributes
    ----------
    layers : the normalized layers, input side first
    input, output : the model's declared input and output
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
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
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

    def __getstate__(self) -> dict:
        # The cached onnxruntime session cannot be pickled; worker processes build their own.
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    @property
    def latent_dim(self) -> int:
        return self.layers[0].in_features

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
        """onnxruntime running this generator's model (built from the layers if there is no file)."""
        if "oracle" not in self._cache:
            from onnxinv.oracle import Oracle

            self._cache["oracle"] = Oracle.for_generator(self)
        return self._cache["oracle"]

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
