"""Produce optimized variants of an exported folder, each validated against eager PyTorch."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from torchship import _progress
from torchship._ort import GRAPH_LEVELS, make_session
from torchship.artifact import Artifact, Variant, load_reference
from torchship.errors import ArtifactError, InputError
from torchship.optimizers.fusion import count_ops, fuse
from torchship.validation import check, run_reference_cases


@dataclass(frozen=True)
class OptimizeOptions:
    levels: tuple[str, ...] = GRAPH_LEVELS
    transformer_fusion: bool = True
    use_gpu: bool = False
    atol: float | None = None  # None: the tolerance recorded at export

    def resolved(self) -> "OptimizeOptions":
        bad = [lv for lv in self.levels if lv not in GRAPH_LEVELS]
        if bad:
            raise InputError(f"unknown graph level {bad[0]!r}; use {', '.join(GRAPH_LEVELS)}")
        return self


def _save_graph_level(src: Path, dst: Path, level: str) -> None:
    """Let ORT optimize at ``level`` and write the optimized graph (an offline-optimized model)."""
    make_session(src, level=level, optimized_model_path=dst)


def optimize(folder: str | Path, options: OptimizeOptions = OptimizeOptions(), *,
             progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Add graph-level and transformer-fusion variants to the folder; returns the updated artifact.

    Each variant is written under a temporary name, validated, then renamed into place, so a
    failure leaves the folder as it was.
    """
    opts = options.resolved()
    artifact = Artifact.open(folder)
    manifest = artifact.manifest
    src = artifact.path_of("model")
    make_session(src)  # a corrupted export fails here, before anything is written
    cases = load_reference(artifact.folder)
    atol = opts.atol or manifest.atol

    jobs: list[tuple[str, str, dict]] = [(f"ort-{lv}", "ort-graph", {"level": lv}) for lv in opts.levels]
    if opts.transformer_fusion:
        jobs.append(("optimized", "transformer-fusion",
                     {"model_type": manifest.ort_model_type, "num_heads": manifest.num_heads,
                      "hidden_size": manifest.hidden_size, "use_gpu": opts.use_gpu}))

    for i, (name, stage, job_opts) in enumerate(jobs, 1):
        progress.step(f"[{i}/{len(jobs)}] {name}")
        final = artifact.folder / f"{name.replace('-', '_')}.onnx" if name != "optimized" \
            else artifact.folder / "model_optimized.onnx"
        tmp = final.with_name(f".{final.stem}.partial.onnx")
        start = time.perf_counter()
        try:
            fusion = None
            notes: tuple[str, ...] = ()
            if stage == "ort-graph" and job_opts["level"] == "disabled":
                # Level "disabled" changes nothing: the variant is the export run without optimizations.
                final = src
                tmp = src
            if stage == "ort-graph":
                if tmp != src:
                    _save_graph_level(src, tmp, job_opts["level"])
                # The saved graph runs at the same level it was optimized at, so levels stay distinct.
                job_opts = {**job_opts, "session_level": job_opts["level"]}
                if job_opts["level"] == "all":
                    notes = ("optimized for this machine's CPU (layout transforms); re-run optimize on the target",)
                fusion = {"counts": count_ops(tmp)}
            else:
                try:
                    report = fuse(src, tmp, model_type=job_opts["model_type"], num_heads=job_opts["num_heads"],
                                  hidden_size=job_opts["hidden_size"], num_layers=manifest.num_layers,
                                  use_gpu=job_opts["use_gpu"], hint=manifest.spec().fusion_hint)
                except ArtifactError as exc:
                    # The other variants stand; this one is recorded as skipped, loudly.
                    progress.step(f"WARNING: {name} skipped: {exc}")
                    manifest = manifest.with_skipped(name, str(exc))
                    artifact.save(manifest)
                    continue
                fusion = report.to_json()
                if report.warning:
                    progress.step(report.warning)
            seconds = time.perf_counter() - start
            validation = run_reference_cases(tmp, cases, atol=atol, spec=manifest.spec())
            check(validation, what=f"the {name} variant")
            if tmp != final:
                os.replace(tmp, final)
        finally:
            if tmp != src:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        variant = Variant(name=name, file=final.name, stage=stage, options=job_opts,
                          size_bytes=final.stat().st_size, seconds=round(seconds, 3),
                          validation=validation.to_json(), fusion=fusion, notes=notes)
        manifest = manifest.with_variant(variant)
        artifact.save(manifest)
    return artifact
