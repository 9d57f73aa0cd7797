"""The package's exceptions: one base class, one subclass per kind of failure.

Exceptions are for "could not run at all". Negative answers (a layer that is not identifiable, an
observation outside the generator's range) are results, not exceptions.
"""

from __future__ import annotations


class OnnxInvError(Exception):
    """Base class of every error onnxinv raises on purpose.

    The message is one paragraph: what failed, where (file / node / op / layer), why, and what to try.
    """


class ModelLoadError(OnnxInvError):
    """The model file cannot be read safely (size, format, external data)."""


class UnsupportedModelError(OnnxInvError):
    """The graph is readable but is not a chain of dense layers onnxinv understands.

    ``problems`` lists every refused node (as ``onnxinv.parser.Problem`` records), not just the first.
    """

    def __init__(self, message: str, problems: tuple = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class SelfCheckError(OnnxInvError):
    """The parsed layer list disagrees with onnxruntime on the same latents."""


class ObservationError(OnnxInvError):
    """An observation, latent or mask has the wrong size, dtype or values."""


class SolverError(OnnxInvError):
    """A solver could not run at all (as opposed to reporting infeasible or a time limit)."""


class OracleError(OnnxInvError):
    """onnxruntime refused the model or failed to run it."""


class InvalidArgumentError(OnnxInvError, ValueError):
    """A Python caller passed an argument outside its allowed values (an unknown method name, say)."""
