"""onnxinv: invert dense generative models stored as ONNX files, one layer at a time."""

from onnxinv.audit import AuditReport, audit
from onnxinv.errors import (
    InvalidArgumentError,
    ModelLoadError,
    ObservationError,
    OnnxInvError,
    OracleError,
    SelfCheckError,
    SolverError,
    UnsupportedModelError,
)
from onnxinv.inversion import (
    METHODS,
    BatchInversionResult,
    InversionResult,
    LayerStep,
    Method,
    Settings,
    SolverStatus,
    Verdict,
    get_method,
    invert,
)
from onnxinv.layers import Activation, Generator, Layer, TensorInfo
from onnxinv.loader import SelfCheck, check_generator, load
from onnxinv.verify import VerifyResult, verify

__version__ = "0.1.0"

__all__ = [
    "invert",
    "verify",
    "audit",
    "InversionResult",
    "BatchInversionResult",
    "LayerStep",
    "Verdict",
    "VerifyResult",
    "AuditReport",
    "Settings",
    "SolverStatus",
    "METHODS",
    "get_method",
    "Method",
    "load",
    "check_generator",
    "SelfCheck",
    "Activation",
    "Generator",
    "Layer",
    "TensorInfo",
    "OnnxInvError",
    "InvalidArgumentError",
    "ModelLoadError",
    "ObservationError",
    "OracleError",
    "SelfCheckError",
    "SolverError",
    "UnsupportedModelError",
    "__version__",
]
