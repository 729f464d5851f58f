"""The builders of optimize's fp32 variants, one step per backend record (``builder`` in the backend table).

Every step has one signature, ``step(build, record) -> Variant``: ``build`` is the run (:class:`Build`: the
folder, ``OptimizeOptions``, the progress, what steps share), ``record`` the backend whose variant it makes; the
variant is named by the record (``record.variants[0]``, ``record.files[0]``). Each writes its file staged,
validates it and returns the manifest entry; ``optimize`` records it. The fp16, OpenVINO, int8 and weight-only
steps live beside the code they call (``fp16.fp16_step``, ``openvino.openvino_step``, ``quantize.int8_step``,
``weight_only.weight_only_step``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from torchship import _progress
from torchship._ort import make_session
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.backends import Backend, Build, backend_of_variant
from torchship.errors import ArtifactError, ValidationError
from torchship.exporters.spec import family_of
from torchship.external_data import staged_model, uses_external_data
from torchship.manifest_sections import BuildOptions, FusionRecord, Validation
from torchship.optimizers.fusion import NO_SKIP_LN, FusionReport, count_ops, fuse, reported, save_graph_level
from torchship.validation import check, run_reference_cases


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


def context(build: Build) -> _Context:
    """The run's context, made once (the export opened and checked, the reference cases read)."""
    atol = build.options.atol if build.options is not None else None
    return build.once("context", lambda: _Context(build.artifact, atol or build.artifact.manifest.atol,
                                                  build.progress))


def summary(report) -> Validation:
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


def graph_level(build: Build, record: Backend) -> Variant:
    """ORT's own graph optimizations at the record's level, saved offline; the file runs at that level too."""
    ctx, level, name = context(build), record.graph_level, record.variants[0]
    start = time.perf_counter()
    notes: tuple[str, ...] = ()
    if level == "disabled":  # changes nothing: the export itself, run without optimizations
        path = ctx.src
        validation = ctx.validated(path, name)
    else:
        path = ctx.folder / record.files[0]
        with staged_model(path) as tmp:
            save_graph_level(ctx.src, tmp, level)
            validation = ctx.validated(tmp, name)
        if level == "all":
            notes = ("optimized for this machine's CPU (layout transforms); re-run optimize on the target",)
    return Variant(name=name, file=path.name, stage="ort-graph", options=BuildOptions(level=level, session_level=level),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=summary(validation), fusion=FusionRecord(count_ops(path)), notes=notes)


def fusion(build: Build, record: Backend) -> Variant:
    """onnxruntime.transformers' fusion optimizer for the family's ORT model type, with a fusion report."""
    ctx, m = context(build), build.artifact.manifest
    use_gpu = build.options.use_gpu if build.options is not None else False
    options = {"model_type": m.ort_model_type, "num_heads": m.num_heads, "hidden_size": m.hidden_size,
               "use_gpu": use_gpu}
    name = record.variants[0]
    path = ctx.folder / backend_of_variant(name).files[0]  # ort-cuda runs the CPU record's file
    start = time.perf_counter()
    with staged_model(path) as tmp:
        report = fuse(ctx.src, tmp, num_layers=m.num_layers, hint=ctx.spec.fusion_hint,
                      external_data=ctx.external, **options)
        if report.warning:
            ctx.progress.step(report.warning)
        validation = ctx.validated(tmp, name)
    return Variant(name=name, file=path.name, stage="transformer-fusion", options=BuildOptions(**options),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=summary(validation), fusion=FusionRecord.from_json(report.to_json()))


def approximate(build: Build, record: Backend) -> Variant:
    """The fused model with GELU as FastGelu, judged by output cosine against the export (see approximate.py)."""
    from torchship.optimizers import approximate as approx

    ctx = context(build)
    fused = build.artifact.manifest.variants.get("optimized")
    if fused is None:
        raise ArtifactError("no transformer-fused model to approximate")
    path = ctx.folder / record.files[0]
    start = time.perf_counter()
    with staged_model(path) as tmp:
        changed = approx.approximate_gelu(ctx.folder / fused.file, tmp, external=ctx.external)
        validation = Validation.from_json(approx.judge(tmp, ctx.src, ctx.cases))
        if not validation.passed:
            raise ValidationError(f"{record.approximate_gelu} moved the outputs too far: smallest cosine "
                                  f"{validation.min_cosine:.6f} against the export, below {approx.MIN_COSINE}")
        report = FusionReport(count_ops(tmp), expected_attention=(fused.fusion and fused.fusion.expected_attention) or 0)
    return Variant(name=record.variants[0], file=path.name, stage="transformer-fusion",
                   options=replace(fused.options, approximate=record.approximate_gelu,
                                   extra={**fused.options.extra, "approximated_nodes": changed}),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=validation, fusion=FusionRecord.from_json(report.to_json()),
                   notes=(f"approximate: {record.approximate_gelu}; judged by output cosine against the fp32 export",))


def onnx_attention(build: Build, record: Backend) -> Variant:
    """The fusion with ONNX's own Attention operator (opset 24) per layer (attention_kernels.to_onnx_attention)."""
    from torchship.optimizers import attention_kernels as ak

    return _kernel(build, record, ak.to_onnx_attention, per_layer_counts=False)


def multi_head_attention(build: Build, record: Backend) -> Variant:
    """The fusion with MultiHeadAttention per layer, its flash kernel on batches without padding
    (attention_kernels.to_flash_when_unpadded)."""
    from torchship.optimizers import attention_kernels as ak

    return _kernel(build, record, lambda model: ak.to_flash_when_unpadded(model, "attention_mask"),
                   per_layer_counts=True)


def _kernel(build: Build, record: Backend, rewrite, *, per_layer_counts: bool) -> Variant:
    """The fusion with MultiHeadAttention and unfused layer norms (made once for every kernel of the run),
    rewritten for another attention kernel, validated as exact; its sessions run without SkipLayerNormFusion."""
    import copy

    from torchship.optimizers import attention_kernels as ak

    ctx, m = context(build), build.artifact.manifest
    mha = build.once("mha-fused", lambda: ak.mha_fused(ctx.src, model_type=m.ort_model_type, num_heads=m.num_heads,
                                                       hidden_size=m.hidden_size, skip_layer_norm=False))
    name = record.variants[0]
    start = time.perf_counter()
    model = copy.deepcopy(mha)
    # the report counts operators per layer: for flash, the graph before its attention moves into If branches
    counts = reported(Counter(n.op_type for n in model.graph.node)) if per_layer_counts else None
    layers = rewrite(model)
    path = ctx.folder / record.files[0]
    with staged_model(path) as tmp:
        ak.write(model, tmp, external=ctx.external)
        validation = ctx.validated(tmp, name)
    return Variant(name=name, file=path.name, stage="transformer-fusion",
                   options=BuildOptions(model_type=m.ort_model_type, attention=record.attention,
                                        disabled_optimizers=tuple(NO_SKIP_LN),
                                        extra={"layer_norm": "residual Add + LayerNormalization, unfused"}),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=summary(validation), fusion=FusionRecord.from_json({**FusionReport(
                       counts or count_ops(path), expected_attention=m.num_layers).to_json(), "rewritten": layers}))
