"""ONNX graph -> normalized layer list. See :func:`parse_model`."""

from onnxinv.parser.graph import Problem
from onnxinv.parser.handlers import HANDLERS, SUPPORTED_OPS
from onnxinv.parser.parse import parse_model

__all__ = ["HANDLERS", "SUPPORTED_OPS", "Problem", "parse_model"]
