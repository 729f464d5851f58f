"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from torchship.errors import InputError

MANIFEST_NAME = "torchship.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_dir(output: Path, *, marker: str = MANIFEST_NAME) -> None:
    """Refuse to replace a non-empty folder that torchship did not write."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file; pass a folder path for --output")
    if output.is_dir() and any(output.iterdir()) and not (output / marker).exists():
        raise InputError(
            f"output folder {output} is not empty and was not written by torchship; "
            "choose a new or empty folder"
        )


@contextlib.contextmanager
def staged_dir(output: Path, *, marker: str = MANIFEST_NAME) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it replaces ``output`` in one rename.

    On any error the temporary folder is removed and ``output`` is left as it was.
    """
    output = Path(output).absolute()
    check_output_dir(output, marker=marker)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, old / "prev")
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
