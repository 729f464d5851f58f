"""Produce optimized variants of an exported folder, each validated against eager PyTorch."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from torchship import _progress
from torchship._fs import transaction
from torchship._ort import GRAPH_LEVELS, make_session
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.external_data import staged_model, uses_external_data
from torchship.manifest_sections import BuildOptions, FusionRecord, Validation
from torchship.errors import ArtifactError, InputError, ValidationError
from torchship.optimizers import rerun
from torchship.optimizers.dispatch import CANDIDATE_CHOICES, DispatchPlan, candidate_variants, measure_dispatch
from torchship.optimizers.attention_kernels import mha_fused
from torchship.optimizers.fusion import NO_SKIP_LN, FusionReport, count_ops, fuse, reported, save_graph_level
from torchship.variants import backend_of_variant
from torchship.validation import check, run_reference_cases
from torchship.exporters.spec import family_of


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
    dispatch: DispatchPlan | None = DispatchPlan()
    # measured only: also the fused model with tanh-approximate GELU (optimizers/approximate.py), judged by output
    # cosine >= 0.9999 against the export instead of eager's tolerance; False (--exact): exact variants only
    approximate: bool = True

    def resolved(self) -> "OptimizeOptions":
        bad = [lv for lv in self.levels if lv not in GRAPH_LEVELS]
        if bad:
            raise InputError(f"unknown graph level {bad[0]!r}; use {', '.join(GRAPH_LEVELS)}")
        if self.candidates not in CANDIDATE_CHOICES:
            raise InputError(f"unknown --candidates {self.candidates!r}; use {' or '.join(CANDIDATE_CHOICES)}")
        return self


class _Context:
    """What every variant needs: the export, the reference cases, the tolerance, the family."""

    def __init__(self, artifact: Artifact, atol: float, progress: _progress.Progress):
        self.folder = artifact.folder
        self.manifest = artifact.manifest
        self.src = artifact.path_of("model")
        make_session(self.src)  # a corrupted export fails here, before anything is written
        self.external = uses_external_data(self.src)  # large models keep external data in every variant
        self.cases = load_reference(artifact.folder)
        self.atol = atol
        self.spec = family_of(artifact.manifest)
        self.progress = progress

    def validated(self, path: Path, name: str):
        report = run_reference_cases(path, self.cases, atol=self.atol, spec=self.spec)
        check(report, what=f"the {name} variant")
        return report


def _summary(report) -> Validation:
    """A validation as the manifest keeps it: the verdict, the largest error, the smallest cosine, and of the
    per-output rows (one per output and case: thousands of KV-cache ones for a decoder) those with a problem and
    the one furthest off; the manifest stays small."""
    data = report.to_json()
    rows = data.get("outputs") or []
    if rows:
        worst = max(rows, key=lambda r: r.get("max_abs") or 0.0)
        data["outputs"] = [r for r in rows if r.get("problem") or r is worst]
        data["rows_checked"] = len(rows)
    return Validation.from_json(data)


def _graph_level_variant(ctx: _Context, level: str) -> Variant:
    """ORT's own graph optimizations at ``level``, saved offline; the file runs at that level too."""
    name = f"ort-{level}"
    start = time.perf_counter()
    notes: tuple[str, ...] = ()
    if level == "disabled":  # changes nothing: the export itself, run without optimizations
        path = ctx.src
        validation = ctx.validated(path, name)
    else:
        path = ctx.folder / f"ort_{level}.onnx"
        with staged_model(path) as tmp:
            save_graph_level(ctx.src, tmp, level)
            validation = ctx.validated(tmp, name)
        if level == "all":
            notes = ("optimized for this machine's CPU (layout transforms); re-run optimize on the target",)
    return Variant(name=name, file=path.name, stage="ort-graph", options=BuildOptions(level=level, session_level=level),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=_summary(validation), fusion=FusionRecord(count_ops(path)), notes=notes)


def _fusion_variant(ctx: _Context, use_gpu: bool) -> Variant:
    """onnxruntime.transformers' fusion optimizer for the family's ORT model type, with a fusion report."""
    m = ctx.manifest
    options = {"model_type": m.ort_model_type, "num_heads": m.num_heads, "hidden_size": m.hidden_size,
               "use_gpu": use_gpu}
    path = ctx.folder / "model_optimized.onnx"
    start = time.perf_counter()
    with staged_model(path) as tmp:
        report = fuse(ctx.src, tmp, num_layers=m.num_layers, hint=ctx.spec.fusion_hint,
                      external_data=ctx.external, **options)
        if report.warning:
            ctx.progress.step(report.warning)
        validation = ctx.validated(tmp, "optimized")
    return Variant(name="optimized", file=path.name, stage="transformer-fusion", options=BuildOptions(**options),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=_summary(validation), fusion=FusionRecord.from_json(report.to_json()))


def _approximate_variant(ctx: _Context, manifest_now) -> Variant:
    """The fused model with GELU as FastGelu, judged by output cosine against the export (see approximate.py)."""
    from torchship.optimizers import approximate

    fused = manifest_now().variants.get("optimized")
    if fused is None:
        raise ArtifactError("no transformer-fused model to approximate")
    path = ctx.folder / approximate.FILE
    start = time.perf_counter()
    with staged_model(path) as tmp:
        changed = approximate.approximate_gelu(ctx.folder / fused.file, tmp, external=ctx.external)
        validation = Validation.from_json(approximate.judge(tmp, ctx.src, ctx.cases))
        if not validation.passed:
            raise ValidationError(f"{approximate.WHAT} moved the outputs too far: smallest cosine "
                                  f"{validation.min_cosine:.6f} against the export, below {approximate.MIN_COSINE}")
        report = FusionReport(count_ops(tmp), expected_attention=(fused.fusion and fused.fusion.expected_attention) or 0)
    return Variant(name=approximate.VARIANT, file=path.name, stage="transformer-fusion",
                   options=replace(fused.options, approximate=approximate.WHAT,
                                   extra={**fused.options.extra, "approximated_nodes": changed}),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=validation, fusion=FusionRecord.from_json(report.to_json()),
                   notes=(f"approximate: {approximate.WHAT}; judged by output cosine against the fp32 export",))


def _kernel_variant(ctx: _Context, name: str, mha_model) -> Variant:
    """optimized-sdpa or optimized-flash: the fusion with MultiHeadAttention and unfused layer norms
    (``mha_model()``, made once for both), rewritten for another attention kernel
    (optimizers/attention_kernels.py), validated as exact; its sessions run without SkipLayerNormFusion."""
    import copy

    from torchship.optimizers import attention_kernels as ak

    start = time.perf_counter()
    model = copy.deepcopy(mha_model())
    # the report counts operators per layer: for flash, the graph before its attention moves into If branches
    counts = reported(Counter(n.op_type for n in model.graph.node))
    if name == ak.SDPA:
        layers = ak.to_onnx_attention(model)
        counts = None
    else:
        layers = ak.to_flash_when_unpadded(model, "attention_mask")
    record = backend_of_variant(name)
    path = ctx.folder / record.files[0]
    with staged_model(path) as tmp:
        ak.write(model, tmp, external=ctx.external)
        validation = ctx.validated(tmp, name)
    return Variant(name=name, file=path.name, stage="transformer-fusion",
                   options=BuildOptions(model_type=ctx.manifest.ort_model_type, attention=record.settings["attention"],
                                        disabled_optimizers=tuple(NO_SKIP_LN),
                                        extra={"layer_norm": "residual Add + LayerNormalization, unfused"}),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=_summary(validation), fusion=FusionRecord.from_json({**FusionReport(
                       counts or count_ops(path), expected_attention=ctx.manifest.num_layers).to_json(),
                       "rewritten": layers}))


# Failures that skip a variant instead of failing the command: the fusion optimizer's crashes on graphs it
# does not expect, and an fp16 model that cannot be made or misses its budget (recorded, then reported).
_SKIPPABLE = {"optimized": ArtifactError, "fp16": (ArtifactError, ValidationError),
              "optimized-approx": (ArtifactError, ValidationError),
              "optimized-sdpa": (ArtifactError, ValidationError), "optimized-flash": (ArtifactError, ValidationError)}
MEASURED_ONLY = ("optimized-sdpa", "optimized-flash")  # exact, other attention kernels: only a table chooses them


def _measured_encoder(artifact: Artifact, opts: OptimizeOptions) -> bool:
    """The dispatch-only candidates are made only for the measured dispatch of an encoder."""
    from torchship.exporters.spec import ENCODE

    return opts.candidates == "measured" and ENCODE in family_of(artifact.manifest).phases


def _wants_approximate(artifact: Artifact, opts: OptimizeOptions) -> bool:
    """The approximate candidate is made only for the measured dispatch, which alone may choose it."""
    return opts.approximate and _measured_encoder(artifact, opts)


def _once(make):
    """``make()``, made on first use and kept (a failed one is tried again by the next call)."""
    kept: list = []

    def get():
        if not kept:
            kept.append(make())
        return kept[0]
    return get


def optimize(folder: str | Path, options: OptimizeOptions = OptimizeOptions(), *,
             progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Add graph-level and transformer-fusion variants to the folder; returns the updated artifact.

    Each variant is written under a temporary name, validated, then renamed into place, so a
    failure leaves the folder as it was. A fusion the optimizer cannot do is recorded as skipped.
    """
    opts = options.resolved()
    artifact = Artifact.open(folder)
    with transaction(artifact.folder):
        return _optimize(artifact, opts, progress)


def _optimize(artifact: Artifact, opts: OptimizeOptions, progress: _progress.Progress) -> Artifact:
    ctx = _Context(artifact, opts.atol or artifact.manifest.atol, progress)
    jobs = [(f"ort-{lv}", lambda lv=lv: _graph_level_variant(ctx, lv)) for lv in opts.levels]
    if opts.transformer_fusion and not artifact.manifest.ort_model_type:
        artifact.manifest = artifact.manifest.with_skipped(
            "optimized", f"ONNX Runtime's transformer optimizer has nothing for the {artifact.manifest.family} family")
    elif opts.transformer_fusion:
        jobs.append(("optimized", lambda: _fusion_variant(ctx, opts.use_gpu)))
        if _wants_approximate(artifact, opts):
            jobs.append(("optimized-approx", lambda: _approximate_variant(ctx, lambda: artifact.manifest)))
        if _measured_encoder(artifact, opts):
            mha = _once(lambda: mha_fused(ctx.src, model_type=artifact.manifest.ort_model_type,
                                          num_heads=artifact.manifest.num_heads,
                                          hidden_size=artifact.manifest.hidden_size, skip_layer_norm=False))
            jobs += [(name, lambda name=name: _kernel_variant(ctx, name, mha)) for name in MEASURED_ONLY]
    # A re-run keeps the variants it does not make again (files and entries); an --exact run only keeps an earlier
    # approximate one out of the table it measures.
    before = rerun.snapshot(artifact)
    if opts.fp16:
        from torchship.optimizers.fp16 import fp16_variant

        jobs.append(("fp16", lambda: fp16_variant(artifact, op_block_list=opts.fp16_block, budget=opts.fp16_budget,
                                                  progress=progress)))
    if opts.openvino:
        from torchship.optimizers.openvino import openvino_variants

        jobs.append(("openvino", lambda: openvino_variants(artifact, progress=progress)))
    fp16_error = None
    made_fp32 = False
    for i, (name, make) in enumerate(jobs, 1):
        progress.step(f"[{i}/{len(jobs)}] {name}")
        try:
            made = make()
            for variant in made if isinstance(made, list) else [made]:
                artifact.manifest = artifact.manifest.with_variant(variant)
                made_fp32 = made_fp32 or variant.name in candidate_variants()
        except _SKIPPABLE.get(name, ()) as exc:
            # The other variants stand; this one is recorded as skipped, loudly (a dispatch-only candidate that
            # does not apply to this graph is a note: nothing the user asked for is missing). An earlier run's
            # variant of that name stays, file and entry: staging left its file as it was.
            level = "note" if name in MEASURED_ONLY else "WARNING"
            if name in artifact.manifest.variants:
                progress.step(f"{level}: {name} not made again ({exc}); kept the earlier "
                              f"{artifact.manifest.variants[name].file}")
            else:
                progress.step(f"{level}: {name} skipped: {exc}")
                artifact.manifest = artifact.manifest.with_skipped(name, str(exc))
            if name == "fp16":
                fp16_error = exc
        artifact.save(artifact.manifest)
    rerun.link_identical(artifact, progress)
    if made_fp32 or _names_left_out(artifact.manifest.dispatch, _left_out(opts)):
        _dispatch_table(artifact, opts, before, progress)
    if fp16_error is not None:
        raise fp16_error  # asked for and not made: the command fails, the reason is in the manifest too
    return artifact


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
    return {} if opts.approximate else {"optimized-approx": "left out: --exact"}


def _names_left_out(table, leave_out: dict[str, str]) -> bool:
    """Whether ``table`` could run a variant this run leaves out (a candidate, a winner, a range's variant)."""
    if not table or not leave_out:
        return False
    return any(n in table.names() for n in leave_out)
