"""What a re-run of ``optimize`` keeps: the dispatch table while the files it timed are unchanged, one copy of
byte-identical files (hard links), and the per-round timings in a side file beside the manifest.

A re-run with narrower flags only adds or replaces the variants it makes; the others stay with their files. The
measured table stays valid (its files are byte for byte the ones it timed) or is measured again; it is never
dropped without a line that says so.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from torchship import _progress
from torchship._fs import hash_file, remove_file, staged_file, write_json_atomic
from torchship.artifact import Artifact
from torchship.dispatch_table import DispatchTable
from torchship.external_data import data_file_name

ROUNDS_FILE = "dispatch_rounds.json"  # every runner's time per round, per shape; the manifest keeps the statistics


def _files(artifact: Artifact, name: str) -> list[Path]:
    """The files of variant ``name``: each graph's and its external data file, if any (a folder variant: none)."""
    out = []
    for graph in artifact.manifest.variants[name].all_graphs:
        path = artifact.folder / graph.file
        if path.is_file():
            data = path.with_name(data_file_name(path))
            out += [path, data] if data.is_file() else [path]
    return out


def _digest(artifact: Artifact, name: str) -> str | None:
    files = _files(artifact, name)
    if not files:
        return None
    digest = None
    for path in files:
        digest = hash_file(path, digest)
    return digest.hexdigest()


def timed_variants(table: DispatchTable | None) -> tuple[str, ...]:
    """Every variant a table's numbers stand for: its candidates and those timed under an identical file's name."""
    return table.timed_variants() if table else ()


def snapshot(artifact: Artifact) -> dict[str, str | None]:
    """The digest of every file the folder's dispatch table timed, taken before a run changes any."""
    return {n: _digest(artifact, n) for n in timed_variants(artifact.manifest.dispatch)
            if n in artifact.manifest.variants}


def changed_since(artifact: Artifact, table: DispatchTable | None, before: dict[str, str | None]) -> list[str]:
    """The variants ``table`` timed whose files are gone or no longer byte for byte what was timed."""
    changed = []
    for n in timed_variants(table):
        now = _digest(artifact, n) if n in artifact.manifest.variants else None
        if now is None or before.get(n) is None or now != before[n]:  # a file gone before or now is no match
            changed.append(n)
    return changed


def split_rounds(table: DispatchTable) -> tuple[DispatchTable, dict]:
    """(the table without per-round times, those times by shape and runner): the manifest stays small."""
    rounds: dict = {}

    def kept(key: str, stage: str, times: dict) -> dict:
        for runner, t in times.items():
            if t.rounds_ms is not None:
                rounds.setdefault(key, {}).setdefault(stage, {})[runner] = list(t.rounds_ms)
        return {runner: replace(t, rounds_ms=None) for runner, t in times.items()}

    shapes = tuple(replace(s, times=kept(f"b{s.batch} s{s.sequence}", "times", s.times),
                           final=kept(f"b{s.batch} s{s.sequence}", "final", s.final)) for s in table.shapes)
    return replace(table, shapes=shapes, rounds_file=ROUNDS_FILE), rounds


def save_rounds(artifact: Artifact, rounds: dict | None) -> None:
    """Write the side file of a new table, or remove the one of a table that is gone."""
    path = artifact.folder / ROUNDS_FILE
    if rounds is not None:
        write_json_atomic(path, rounds)
    else:
        remove_file(path)


def link_identical(artifact: Artifact, progress: _progress.Progress = _progress.SILENT) -> int:
    """Hard-link every variant file that is byte for byte an earlier one (``ort_all.onnx`` and
    ``ort_extended.onnx`` on transformer graphs, external data files alike): one copy on disk, every reader
    unchanged. Only files of equal size are hashed. Returns the bytes saved."""
    by_size: dict[int, list[Path]] = {}
    for name in artifact.manifest.variants:
        for path in _files(artifact, name):
            group = by_size.setdefault(path.stat().st_size, [])
            if path not in group:
                group.append(path)
    saved = 0
    for size, paths in by_size.items():
        if len(paths) < 2:  # a file alone in its size cannot be another's copy: not read at all
            continue
        first: dict[str, Path] = {}
        for path in paths:
            digest = hash_file(path).hexdigest()
            same = first.setdefault(digest, path)
            if same == path or os.path.samefile(same, path):
                continue
            try:
                with staged_file(path) as tmp:
                    os.link(same, tmp)
            except OSError as exc:  # a file system without hard links keeps both copies
                progress.step(f"note: {path.name} is byte for byte {same.name}; both copies kept ({exc})")
                continue
            saved += size
            progress.step(f"{path.name} is byte for byte {same.name}: one copy on disk (hard link)")
    return saved
