"""Reading ONNX files: one place, one clear error for a missing or corrupted file."""

from __future__ import annotations

from pathlib import Path

from torchship.errors import ArtifactError, first_line


def load_onnx(path: Path, *, load_external_data: bool = False, fix: str = "re-run torchship export"):
    """``onnx.load`` with a clear error for missing or corrupted files; ``fix`` names the command that
    makes the file again."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} is missing; {fix}")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError, OSError) as exc:
        raise ArtifactError(f"cannot read {path}: {first_line(exc, 200)}; the file is corrupted or incomplete, "
                            f"{fix}") from None
