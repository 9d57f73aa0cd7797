"""onnxinv: invert dense generative models stored as ONNX files, one layer at a time."""

from onnxinv.errors import (
    ModelLoadError,
    ObservationError,
    OnnxInvError,
    OracleError,
    SelfCheckError,
    SolverError,
    UnsupportedModelError,
)
from onnxinv.layers import Activation, Generator, Layer, TensorInfo
from onnxinv.loader import SelfCheck, check_generator, load

__version__ = "0.1.0"

__all__ = [
    "load",
    "check_generator",
    "SelfCheck",
    "Activation",
    "Generator",
    "Layer",
    "TensorInfo",
    "OnnxInvError",
    "ModelLoadError",
    "ObservationError",
    "OracleError",
    "SelfCheckError",
    "SolverError",
    "UnsupportedModelError",
    "__version__",
]
