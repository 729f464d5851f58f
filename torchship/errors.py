"""One base exception and a few typed subclasses, each with its exit code.

Every message says what is wrong and how to fix it; the CLI prints it as one line on stderr and
exits with the code below, the same for every command (docs/exit-codes.md). A traceback from the
CLI means a bug in torchship, not in the user's input.
"""

from __future__ import annotations


# The exit codes of every command.
EXIT_FAILED = 1  # the work failed on good input: an export torch cannot do, a disk that fills up
EXIT_BAD_INPUT = 2  # a flag, path, file, folder or model given is wrong (click's usage errors too)
EXIT_VALIDATION = 3  # a model does not match eager PyTorch, or misses its accuracy budget
EXIT_MISSING = 4  # an optional runtime, extra or GPU is not on this machine
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the folder is as it was


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), at most ``limit`` chars:
    what a one-line error quotes of a library's multi-line failure."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def root_cause(exc: BaseException) -> str:
    """"Type: first line" of the innermost cause: the exporter's own error, not the wrapper torch.onnx puts round it
    ("Failed to export the model with torch.export ... step 1/3")."""
    while exc.__cause__ is not None and first_line(exc.__cause__):
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # a first line that only announces what follows ("... were found:") keeps the line after it
    text = f"{lines[0]} {lines[1]}"[:300] if len(lines) > 1 and lines[0].endswith(":") else first_line(exc)
    return f"{type(exc).__name__}: {text}"


class TorchshipError(Exception):
    """Base class for every error torchship raises on purpose."""

    exit_code = EXIT_FAILED


class InputError(TorchshipError):
    """A path, option or shape given by the user is wrong."""

    exit_code = EXIT_BAD_INPUT


class ModelLoadError(TorchshipError):
    """The checkpoint could not be found or loaded."""

    exit_code = EXIT_BAD_INPUT


class UnsupportedModelError(TorchshipError):
    """The model is of a family that this command does not export."""

    exit_code = EXIT_BAD_INPUT


class ExportError(TorchshipError):
    """torch.onnx.export failed or wrote an unusable file."""


class ArtifactError(TorchshipError):
    """An ONNX file or a torchship output folder is missing, corrupted or inconsistent."""

    exit_code = EXIT_BAD_INPUT


class BackendUnavailable(TorchshipError):
    """An optional runtime (TensorRT, OpenVINO, CUDA, ...) is not installed on this machine."""

    exit_code = EXIT_MISSING


class ValidationError(TorchshipError):
    """An exported or optimized model does not match eager PyTorch within tolerance.

    ``report`` holds the full comparison (every mismatching output, not just the first).
    """

    exit_code = EXIT_VALIDATION

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class BudgetError(ValidationError):
    """A lower-precision variant misses its accuracy budget against the fp32 model."""
