"""One base exception and a few typed subclasses.

Every message says what is wrong and how to fix it; the CLI prints it as one line on stderr and
exits non-zero. A traceback from the CLI means a bug in torchship, not in the user's input.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), at most ``limit`` chars:
    what a one-line error quotes of a library's multi-line failure."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class TorchshipError(Exception):
    """Base class for every error torchship raises on purpose."""

    exit_code = 1


class InputError(TorchshipError):
    """A path, option or shape given by the user is wrong."""

    exit_code = 2


class ModelLoadError(TorchshipError):
    """The checkpoint could not be found or loaded."""


class UnsupportedModelError(TorchshipError):
    """The model is of a family that this command does not export."""


class ExportError(TorchshipError):
    """torch.onnx.export failed or wrote an unusable file."""


class ArtifactError(TorchshipError):
    """An ONNX file or a torchship output folder is missing, corrupted or inconsistent."""


class BackendUnavailable(TorchshipError):
    """An optional runtime (TensorRT, OpenVINO, CUDA, ...) is not installed on this machine."""


class ValidationError(TorchshipError):
    """An exported or optimized model does not match eager PyTorch within tolerance.

    ``report`` holds the full comparison (every mismatching output, not just the first).
    """

    exit_code = 3

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class BudgetError(ValidationError):
    """A lower-precision variant misses its accuracy budget against the fp32 model."""
