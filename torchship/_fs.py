"""Staging: every output is written under a temporary name beside its place, then renamed into place.

A reader never sees a half-written file or folder, and an error or Ctrl-C (any exception, even
KeyboardInterrupt) leaves the place as it was and removes the temporary files. Outputs get the
modes that a plain ``open``/``mkdir`` under the user's umask gives (``mkdtemp`` alone would leave a
folder that only its owner can read). Every writer in torchship goes through these helpers.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from torchship.errors import InputError

MANIFEST_NAME = "torchship.json"
PARTIAL = ".partial"  # the suffix of every temporary folder the staging helpers make


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: Path) -> None:
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


@contextlib.contextmanager
def scratch_dir(parent: Path, name: str = "scratch") -> Iterator[Path]:
    """A temporary folder inside ``parent`` (on the same file system as the outputs), always removed."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL, dir=parent))
        yield tmp
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class _Transaction:
    """Files replaced or created inside ``folder`` since the transaction began, with backups of what they
    replaced, so that an error or Ctrl-C can put every one back."""

    def __init__(self, folder: Path, backups: Path):
        self.folder = folder.resolve()
        self.backups = backups
        self.changed: list[tuple[Path, Path | None]] = []  # (place, backup of what was there, or None)
        self._seen: set[Path] = set()
        self._before = {p.name for p in self.folder.iterdir()}

    def before_change(self, place: Path) -> None:
        place = Path(place).absolute()
        if place in self._seen or self.folder not in place.resolve().parents:
            return
        self._seen.add(place)
        backup = None
        if place.exists():  # moved aside, not copied: the caller is about to replace it
            backup = self.backups / str(len(self.changed))
            os.replace(place, backup)
        self.changed.append((place, backup))

    def roll_back(self) -> None:
        # A temporary folder an interrupt caught between its creation and its cleanup: not the user's.
        for path in self.folder.iterdir():
            if path.name not in self._before and path.name.endswith(PARTIAL) and path != self.backups:
                shutil.rmtree(path, ignore_errors=True)
        for place, backup in reversed(self.changed):
            if place.is_dir() and not place.is_symlink():
                shutil.rmtree(place, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    place.unlink()
            if backup is not None:
                os.replace(backup, place)


_TRANSACTION: contextvars.ContextVar[_Transaction | None] = contextvars.ContextVar("torchship_transaction",
                                                                                    default=None)


def _before_change(place: Path) -> None:
    tx = _TRANSACTION.get()
    if tx is not None:
        tx.before_change(place)


@contextlib.contextmanager
def transaction(folder: Path) -> Iterator[None]:
    """For a command that adds to an existing folder (optimize, quantize): every file the staging helpers
    replace or create in ``folder`` meanwhile is put back as it was when the command is interrupted
    (Ctrl-C, SIGTERM) or stops on an unexpected error, so the folder is exactly as the command found it.
    A torchship error keeps what was completed: each file and its manifest entry were written together,
    and the manifest records why the rest was not made."""
    from torchship.errors import TorchshipError

    with scratch_dir(Path(folder), "undo") as backups:
        tx = _Transaction(Path(folder), backups)
        token = _TRANSACTION.set(tx)
        try:
            yield
        except TorchshipError:
            raise
        except BaseException:
            tx.roll_back()
            raise
        finally:
            _TRANSACTION.reset(token)


@contextlib.contextmanager
def staged_file(final: Path, companions: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a path with ``final``'s name in a scratch folder beside it; on success it replaces ``final``.

    ``companions`` are names of files written beside it that belong to it (an ONNX model's external data
    file): on success the ones written move into place first, and stale ones of an earlier version go."""
    final = Path(final)
    with scratch_dir(final.parent, final.name) as scratch:
        tmp = scratch / final.name
        yield tmp
        for name in companions:
            made, old = scratch / name, final.with_name(name)
            if made.is_file() or old.exists():
                _before_change(old)
            if made.is_file():
                os.replace(made, old)
            else:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp.name} was not written")
        _before_change(final)
        if tmp.is_dir():
            _normal_mode(tmp)
            if final.is_dir():
                os.replace(final, scratch / ".old")  # removed with the scratch folder
        os.replace(tmp, final)


def remove_file(path: Path) -> None:
    """Remove a file torchship wrote; inside a transaction it is moved aside and put back if the command stops."""
    path = Path(path)
    if not path.exists():
        return
    _before_change(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with staged_file(Path(path)) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    with staged_file(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_writable(folder: Path, *, flag: str = "--output") -> None:
    """Refuse, before any work, an output whose parent cannot hold it (a file in the way, no permission)."""
    folder = Path(folder).absolute()
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {folder} cannot be made: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {folder} cannot be written: no permission to write in {parent}; "
                         "choose a folder you can write to")


def check_output_dir(output: Path, *, marker: str = MANIFEST_NAME) -> None:
    """Refuse to replace a non-empty folder that torchship did not write, or a place it cannot write."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file; pass a folder path for --output")
    if output.is_dir() and any(output.iterdir()) and not (output / marker).exists():
        raise InputError(
            f"output folder {output} is not empty and was not written by torchship; "
            "choose a new or empty folder"
        )
    check_writable(output)


@contextlib.contextmanager
def staged_dir(output: Path, *, marker: str = MANIFEST_NAME) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it replaces ``output`` in one rename.

    On any error the temporary folder is removed and ``output`` is left as it was.
    """
    output = Path(output).absolute()
    check_output_dir(output, marker=marker)
    with scratch_dir(output.parent, output.name) as scratch:
        tmp = scratch / "new"
        tmp.mkdir()
        yield tmp
        _normal_mode(tmp)
        if output.exists():
            os.replace(output, scratch / "old")
        os.replace(tmp, output)


def hash_file(path: Path, digest=None):
    """``digest`` (a new sha256 when None) updated with the bytes of the file at ``path``, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest
