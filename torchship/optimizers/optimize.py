"""Produce optimized variants of an exported folder, each validated against eager PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torchship import _progress
from torchship._fs import transaction
from torchship._ort import GRAPH_LEVELS
from torchship.artifact import Artifact, Variant
from torchship.backends import Backend, Build, backend, records
from torchship.errors import InputError
from torchship.exporters.spec import family_of
from torchship.optimizers import rerun
from torchship.optimizers.builders import context
from torchship.optimizers.dispatch import CANDIDATE_CHOICES, DispatchPlan, candidate_variants, measure_dispatch

if TYPE_CHECKING:
    from torchship.optimizers.int8_candidates import QuantizeOptions


@dataclass(frozen=True)
class OptimizeOptions:
    levels: tuple[str, ...] = GRAPH_LEVELS
    transformer_fusion: bool = True
    use_gpu: bool = False
    atol: float | None = None  # None: the tolerance recorded at export
    fp16: bool = False  # also write model_fp16.onnx (for GPU targets)
    fp16_block: tuple[str, ...] = ()  # op types kept in fp32, beside ORT's default block list
    fp16_budget: float = 0.999  # accuracy floor of the fp16 variant against the fp32 model
    openvino: bool = False  # also write OpenVINO IR: fp32, and fp16-compressed weights
    # measured: time the fp32 variants per shape and record which runs which shape (optimizers/dispatch.py);
    # preset: no timing, no table (the backend table's preference order decides, as before)
    candidates: str = "measured"
    # None: make the measured candidates but time nothing and write no table (auto, which times them itself)
    dispatch: DispatchPlan | None = field(default_factory=DispatchPlan)  # made per options: the env var read then
    # measured only: also the fused model with tanh-approximate GELU (optimizers/approximate.py), judged by output
    # cosine >= 0.9999 against the export instead of eager's tolerance; False (--exact): exact variants only
    approximate: bool = True
    # None: the variants the flags above ask for; else exactly those these backends run (auto), each made by its
    # record's builder (ort-int8's by quantize's search, with ``quantize``: None, quantize's defaults)
    backends: tuple[str, ...] | None = None
    quantize: QuantizeOptions | None = None

    def resolved(self) -> "OptimizeOptions":
        bad = [lv for lv in self.levels if lv not in GRAPH_LEVELS]
        if bad:
            raise InputError(f"unknown graph level {bad[0]!r}; use {', '.join(GRAPH_LEVELS)}")
        if self.candidates not in CANDIDATE_CHOICES:
            raise InputError(f"unknown --candidates {self.candidates!r}; use {' or '.join(CANDIDATE_CHOICES)}")
        if self.backends is not None:
            return replace(self, backends=tuple(backend(name).name for name in self.backends))
        return self

    def asks_for(self, record: Backend, measured_encoder: bool) -> bool:
        """Whether this run makes ``record``'s variant (``measured_encoder``: the measured dispatch of an encoder,
        the only run that makes the candidates only a measured choice picks)."""
        if record.builder is None:
            return False
        if self.backends is not None:
            return record.name in self.backends
        if record.command != "optimize":  # made by its own command (quantize, tensorrt)
            return False
        if record.graph_level is not None:
            return record.graph_level in self.levels
        if record.runtime == "openvino":
            return self.openvino
        if record.precision == "fp16":
            return self.fp16
        if record.measured_only or record.approximate_gelu:
            return self.transformer_fusion and measured_encoder and (self.approximate or not record.approximate_gelu)
        return self.transformer_fusion if record.fused else True


def _measured_encoder(artifact: Artifact, opts: OptimizeOptions) -> bool:
    """The dispatch-only candidates are made only for the measured dispatch of an encoder (text or image)."""
    from torchship.optimizers.dispatch import dispatched

    return opts.candidates == "measured" and dispatched(family_of(artifact.manifest))


def optimize(folder: str | Path, options: OptimizeOptions | None = None, *,
             progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Add graph-level and transformer-fusion variants to the folder (or those of ``options.backends``);
    returns the updated artifact. Each is made by its backend record's builder, in table order. ``options``:
    None for ``OptimizeOptions()`` made at the call (its dispatch plan reads TORCHSHIP_DISPATCH_SECONDS then).

    Each variant is written under a temporary name, validated, then renamed into place, so a
    failure leaves the folder as it was. A fusion the optimizer cannot do is recorded as skipped.
    """
    opts = (options if options is not None else OptimizeOptions()).resolved()
    artifact = Artifact.open(folder)
    with transaction(artifact.folder):
        return _optimize(artifact, opts, progress)


def _optimize(artifact: Artifact, opts: OptimizeOptions, progress: _progress.Progress) -> Artifact:
    build = Build(artifact, opts, progress)
    context(build)  # a corrupted export fails here, before anything is written
    jobs = _jobs(artifact, opts)
    # A re-run keeps the variants it does not make again (files and entries); an --exact run only keeps an earlier
    # approximate one out of the table it measures.
    before = rerun.snapshot(artifact)
    asked_error = None
    made_fp32 = False
    for i, record in enumerate(jobs, 1):
        name = record.variants[0]
        progress.step(f"[{i}/{len(jobs)}] {name}")
        try:
            made = record.step()(build, record)
            if made is None:  # the step recorded what it made itself (quantize's search)
                artifact.manifest = Artifact.open(artifact.folder).manifest
            for variant in made if isinstance(made, list) else [made]:
                if isinstance(variant, Variant):  # not a file of the folder: an engine made on first use
                    artifact.manifest = artifact.manifest.with_variant(variant)
                    made_fp32 = made_fp32 or variant.name in candidate_variants()
        except record.skips as exc:
            # The other variants stand; this one is recorded as skipped, loudly (a dispatch-only candidate that
            # does not apply to this graph is a note: nothing the user asked for is missing). An earlier run's
            # variant of that name stays, file and entry: staging left its file as it was.
            level = "note" if record.measured_only else "WARNING"
            if name in artifact.manifest.variants:
                progress.step(f"{level}: {name} not made again ({exc}); kept the earlier "
                              f"{artifact.manifest.variants[name].file}")
            else:
                progress.step(f"{level}: {name} skipped: {exc}")
                artifact.manifest = artifact.manifest.with_skipped(name, str(exc))
            if not (record.fused or record.measured_only):  # not a fusion the optimizer may not manage: asked for
                asked_error = exc
        artifact.save(artifact.manifest)
    rerun.link_identical(artifact, progress)
    if made_fp32 or _names_left_out(artifact.manifest.dispatch, _left_out(opts)):
        _dispatch_table(artifact, opts, before, progress)
    if asked_error is not None:
        raise asked_error  # asked for and not made: the command fails, the reason is in the manifest too
    return artifact


def _jobs(artifact: Artifact, opts: OptimizeOptions) -> list[Backend]:
    """The records whose variants this run makes, from the backend table: the graph levels first, in the order
    asked, then the rest in table order; one per variant (ort-cuda runs ort-optimized's file). A transformer-fused
    variant of a family ONNX Runtime's optimizer does not know is recorded as skipped instead."""
    measured = _measured_encoder(artifact, opts)
    wanted = [b for b in records() if opts.asks_for(b, measured)]
    levels = list(opts.levels)
    wanted.sort(key=lambda b: levels.index(b.graph_level) if b.graph_level in levels else len(levels))
    jobs, seen = [], set()
    m = artifact.manifest
    for record in wanted:
        name = record.variants[0]
        if name in seen:
            continue
        seen.add(name)
        if record.fused and not m.ort_model_type:
            if not (record.measured_only or record.approximate_gelu):
                artifact.manifest = artifact.manifest.with_skipped(
                    name, f"ONNX Runtime's transformer optimizer has nothing for the {m.family} family")
            continue
        jobs.append(record)
    return jobs


def _dispatch_table(artifact: Artifact, opts: OptimizeOptions, before: dict, progress: _progress.Progress) -> None:
    """After fp32 variants were made: measure the table (--candidates measured), or keep the earlier one while
    every file it timed is byte for byte unchanged, else measure it again and say why; never drop it silently."""
    old = artifact.manifest.dispatch
    leave_out = _left_out(opts)
    if opts.dispatch is None:  # auto: it times the candidates itself; an earlier table is left as it is
        return
    if opts.candidates == "measured":
        table = measure_dispatch(artifact, opts.dispatch, progress=progress, leave_out=leave_out)
    elif not old:
        return
    else:
        changed = rerun.changed_since(artifact, old, before)
        if _names_left_out(old, leave_out):  # --exact: a table that can run the approximate variant is not kept
            changed = [*changed, *(n for n in leave_out if n not in changed)]
        if not changed:
            progress.step(f"kept the measured dispatch table: the {len(rerun.timed_variants(old))} files it timed "
                          "are byte for byte unchanged")
            return
        progress.step(f"note: measuring the dispatch table again although --candidates {opts.candidates}: this run "
                      f"changed {', '.join(changed)}, which it timed")
        table = measure_dispatch(artifact, opts.dispatch or DispatchPlan(), progress=progress, leave_out=leave_out)
    if table is None and old:
        progress.step("note: no dispatch table now (fewer than two fp32 variants to time); predict's auto and "
                      "triton use the preference order")
    rounds = None
    if table is not None:
        table, rounds = rerun.split_rounds(table)
    artifact.save(replace(artifact.manifest, dispatch=table))
    rerun.save_rounds(artifact, rounds)


def _left_out(opts: OptimizeOptions) -> dict[str, str]:
    """Variants this run keeps out of any table it measures, with the reason the table records."""
    return {} if opts.approximate else {b.variants[0]: "left out: --exact" for b in records() if b.approximate_gelu}


def _names_left_out(table, leave_out: dict[str, str]) -> bool:
    """Whether ``table`` could run a variant this run leaves out (a candidate, a winner, a range's variant)."""
    if not table or not leave_out:
        return False
    return any(n in table.names() for n in leave_out)
