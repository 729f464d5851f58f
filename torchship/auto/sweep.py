"""The sweep: build every variant of the backend table that fits the config, validate each against the fp32
original, benchmark the ones within the budget, choose the fastest and write the summary.

What is built is read from the table (:mod:`torchship.variants`): the rows still in the running are
grouped by their record's ``builder``, and each build step (graph levels and fusion, OpenVINO, fp16,
int8) is called once for its group.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.auto.choice import AutoReport, Row, Status, choose
from torchship.auto.config import AutoConfig, check_device
from torchship.auto.summary import MODEL_DIR, SUMMARY, write_summary
from torchship.errors import InputError, TorchshipError
from torchship.variants import ENGINE, EXPORT, FP16, FUSION, GRAPH_LEVEL, INT8, OPENVINO, TABLE, Backend

# Every variant auto sweeps, in table order: backend name -> its record.
VARIANTS: dict[str, Backend] = {b.name: b for b in TABLE if b.swept}
_EXPORTED = {v for b in TABLE if b.builder == EXPORT for v in b.variants}  # the export as written ("model")

__all__ = ["VARIANTS", "run_auto"]


def _is_onnx_file(model: str) -> bool:
    return str(model).lower().endswith(".onnx") and Path(model).is_file()


def run_auto(model: str, config: AutoConfig, output: str | Path, *,
             progress: _progress.Progress = _progress.SILENT) -> AutoReport:
    """Build, validate and benchmark every variant of ``model`` that fits ``config``; write the summary."""
    from torchship._fs import check_output_dir, staged_dir
    from torchship._ort import usable_cpus

    start = time.perf_counter()
    output = Path(output)
    check_device(config.shapes.device)
    check_output_dir(output, marker=SUMMARY)
    threads = config.threads or usable_cpus()
    with staged_dir(output, marker=SUMMARY) as tmp:
        folder = tmp / MODEL_DIR
        stages = 6
        progress.step(f"[1/{stages}] {'import' if _is_onnx_file(model) else 'export'} {model}")
        artifact = _source(model, folder, config, progress)
        rows = {name: Row.of(b) for name, b in VARIANTS.items()}
        progress.step(f"[2/{stages}] fp32 and fp16 variants")
        _build_float_variants(artifact, config, rows, progress)
        progress.step(f"[3/{stages}] int8")
        _build_int8(artifact, config, rows, threads, progress)
        progress.step(f"[4/{stages}] accuracy against the fp32 original")
        usable = _validate(artifact, config, rows, threads, progress)
        progress.step(f"[5/{stages}] benchmark ({len(usable)} variants{', eager PyTorch' if _has_torch(artifact) else ''})")
        report = _benchmark(artifact, config, rows, usable, threads, progress)
        report.model, report.name = str(model), artifact.manifest.source.get("name") or ""
        choose(report)
        progress.step(f"[6/{stages}] summary")
        report.seconds = time.perf_counter() - start
        write_summary(report, tmp)
    return report


def _source(model: str, folder: Path, config: AutoConfig, progress):
    if _is_onnx_file(model):
        from torchship.exporters.onnx_file import import_onnx

        return import_onnx(model, folder, config.shapes, progress=progress)
    if str(model).lower().endswith(".onnx"):
        raise InputError(f"ONNX file {model} does not exist")
    from torchship.exporters.export import ExportOptions, export

    return export(model, folder, ExportOptions(shapes=config.shapes), progress=progress)


def _has_torch(artifact) -> bool:
    from torchship.exporters.spec import family_of

    return family_of(artifact.manifest).has_checkpoint


def _wanted(rows: dict[str, Row], builder: str) -> list[Row]:
    """The rows still in the running whose model is made by ``builder``: build only what they need."""
    return [r for r in rows.values() if r.usable and VARIANTS[r.backend].builder == builder]


def _attempt(wanted: list[Row], make) -> None:
    """Run one build step for the rows that need it; its error fails (or puts below budget) those rows."""
    if not wanted:
        return
    try:
        make()
    except TorchshipError as exc:
        for r in wanted:
            r.fail(exc)


def _build_float_variants(artifact, config: AutoConfig, rows: dict[str, Row], progress) -> None:
    from torchship.exporters.spec import ENCODE, family_of
    from torchship.optimizers import OptimizeOptions, optimize

    m = artifact.manifest
    spec = family_of(m)
    device = config.shapes.device
    on_gpu = device.startswith("cuda")
    for name, b in VARIANTS.items():
        problem = spec.backend_problem(b) or (None if b.precision in spec.precisions
                                               else f"{spec.family} models take no {b.precision} variants")
        if problem:
            rows[name].skip(problem)
        elif b.precision not in config.precisions:
            rows[name].skip("precision not in the config")
        elif b.needs_gpu and not on_gpu:
            rows[name].skip("device is cpu")
        elif not b.needs_gpu and on_gpu:
            # On a GPU config the sweep is about the GPU: CPU variants would be timed on another device.
            rows[name].skip(f"device is {device}")
    if not m.ort_model_type:
        for r in _wanted(rows, FUSION):
            if not _EXPORTED & set(VARIANTS[r.backend].variants):  # no fallback to the export as written
                r.skip("no transformer fusion for this model (ONNX file of unknown family)")

    for r in _wanted(rows, FUSION):
        if _measured_candidate(VARIANTS[r.backend]) and ENCODE not in spec.phases:
            r.skip("made only for an encoder's attention")
    levels = tuple(VARIANTS[r.backend].settings["level"] for r in _wanted(rows, GRAPH_LEVEL))
    fusion = bool(m.ort_model_type) and bool(_wanted(rows, FUSION))
    if levels or fusion:
        # The other attention kernels and the FastGelu model are made as for optimize's measured dispatch, but auto
        # times every variant itself at the config's use shape, so optimize's own per-shape timing is skipped.
        wanted = {r.backend for r in _wanted(rows, FUSION)}
        measured = any(_measured_candidate(VARIANTS[name]) for name in wanted)
        made = optimize(artifact.folder, OptimizeOptions(
            levels=levels, transformer_fusion=fusion, use_gpu=on_gpu, candidates="measured" if measured else "preset",
            dispatch=None, approximate=any(VARIANTS[name].settings.get("approximate") for name in wanted)),
            progress=progress).manifest
        for r in _wanted(rows, FUSION):  # none of the row's variants made (a kernel this graph cannot take): why
            names = VARIANTS[r.backend].variants
            why = next((made.skipped[v] for v in names if v in made.skipped), None)
            if why and not any(v in made.variants for v in names):
                r.skip(f"not made: {why}")
    _attempt(_wanted(rows, OPENVINO), lambda: optimize(
        artifact.folder, OptimizeOptions(levels=(), transformer_fusion=False, openvino=True), progress=progress))
    _attempt(_wanted(rows, FP16), lambda: optimize(
        artifact.folder, OptimizeOptions(levels=(), transformer_fusion=False, fp16=True, fp16_budget=config.budget),
        progress=progress))


def _measured_candidate(record: Backend) -> bool:
    """One of the fp32 variants optimize makes only for a measured choice (other attention kernels, FastGelu)."""
    return bool(record.settings.get("measured_only") or record.settings.get("approximate"))


def _build_int8(artifact, config: AutoConfig, rows: dict[str, Row], threads: int, progress) -> None:
    from torchship.artifact import Artifact
    from torchship.optimizers.quantize import QuantizeOptions, quantize

    # int8 in the precisions, and a CPU config; the search times its candidates no longer than the config's
    # min_seconds when that is shorter than quantize's own default (a quick auto run is quick throughout)
    search = QuantizeOptions(budget=config.budget, threads=threads)
    search = replace(search, timing=replace(search.timing, min_seconds=min(search.timing.min_seconds,
                                                                           config.min_seconds)))
    _attempt(_wanted(rows, INT8), lambda: quantize(artifact.folder, search, progress=progress))
    engines = [r for r in _wanted(rows, ENGINE) if r.precision == "int8"]
    if engines:
        int8 = Artifact.open(artifact.folder).manifest.variants.get("int8")
        if int8 is None or int8.options.method != "static":
            for r in engines:
                r.skip("TensorRT int8 needs a static int8 (QDQ) model; "
                       "run torchship quantize --method static --calibration FILE")


def _validate(artifact, config: AutoConfig, rows: dict[str, Row], threads: int, progress) -> list[str]:
    """Accuracy of every buildable variant against the fp32 original (the export, run by ORT)."""
    from torchship._ort import ort_runner
    from torchship.artifact import Artifact
    from torchship.compare import cosine
    from torchship.exporters.spec import family_of, saved_config
    from torchship.optimizers.accuracy import AccuracyProbe
    from torchship.runtimes import RuntimeOptions, create_predictor

    artifact = Artifact.open(artifact.folder)
    m = artifact.manifest
    spec = family_of(m)
    cfg = saved_config(artifact)
    case = spec.case_for(m.resolved_shapes().sizes("use"), cfg)
    feeds = spec.sample_inputs(cfg, m.io(), case, seed=2024)
    main = m.output_names[0]
    original = ort_runner(artifact.path_of("model"), threads=threads)
    ref = np.asarray(original(feeds)[main], dtype=np.float64)
    probe = AccuracyProbe.for_artifact(artifact)
    probe.set_reference(original)
    usable = []
    for backend, row in rows.items():
        if not row.usable:
            continue
        try:
            predictor = create_predictor(artifact, backend, RuntimeOptions(threads=threads,
                                                                           device=config.shapes.device))
            with predictor:
                got = np.asarray(predictor.infer(feeds)[main], dtype=np.float64)
                acc = probe.measure(predictor.infer, config.budget)
        except (TorchshipError, RuntimeError) as exc:
            row.fail(exc)
            continue
        diff = np.abs(got - ref)
        row.max_abs, row.mean_abs, row.cosine = float(diff.max()), float(diff.mean()), cosine(ref, got)
        row.metric, row.metric_mean, row.metric_min = acc.metric, acc.mean, acc.min
        variant = artifact.variant_for(backend)
        if variant is not None:
            # int8's build time is quantize's whole measured search, not only the kept candidate's build
            row.file, row.size_bytes = variant.file, variant.size_bytes
            row.build_s = variant.options.search_s if variant.options.search_s is not None else variant.seconds
        if not acc.passed:
            row.status, row.reason = Status.BELOW_BUDGET, acc.describe()
            continue
        usable.append(backend)
        progress.step(f"    {backend}: cosine {row.cosine:.6f}, {acc.metric} {acc.mean:.4f}")
    return usable


def _benchmark(artifact, config: AutoConfig, rows: dict[str, Row], usable: list[str], threads: int,
               progress) -> AutoReport:
    from torchship.artifact import library_versions
    from torchship.benchmarks.results import Environment
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.exporters.spec import DECODE, family_of

    m = artifact.manifest
    spec = family_of(m)
    use = m.resolved_shapes().sizes("use")
    backends = (("torch",) if spec.has_checkpoint else ()) + tuple(usable)
    plan = replace(TimingPlan(), min_seconds=config.min_seconds, min_iterations=20, max_iterations=500)
    report = AutoReport(model="", config={}, shape="", budget=config.budget, rows=list(rows.values()),
                        environment=asdict(Environment.collect(threads=threads, spin="run",
                                                               versions=library_versions())))
    report.config = {"source": config.source, "device": config.shapes.device, "budget": config.budget,
                     "precisions": list(config.precisions), "threads": threads, "use": use}
    if not backends:
        return report
    if DECODE in spec.phases:
        by, report.shape = _decoder_bench(artifact, use, backends, threads, plan, progress)
    else:
        bench = run_benchmark(artifact.folder, BenchOptions(backends=backends, sizes=(use,), threads=threads,
                                                            plan=plan, device=config.shapes.device), progress=progress)
        by = {x.backend: x for x in bench.measurements}
        report.shape = next(iter(by.values())).shape
    report.torch_p50_ms = by["torch"].p50_ms if "torch" in by else None
    for backend in usable:
        x, row = by[backend], rows[backend]
        row.p50_ms, row.p90_ms, row.p99_ms = x.p50_ms, x.p90_ms, x.p99_ms
        row.throughput = x.throughput
        if report.torch_p50_ms:
            row.speedup_vs_torch = report.torch_p50_ms / x.p50_ms
    return report


def _decoder_bench(artifact, use: dict, backends, threads: int, plan, progress):
    """Decoders are timed as generate() runs them: a use shape with past tokens is one decode step with
    that much past; without past, the prefill of the prompt."""
    from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
    from torchship.exporters.spec import BATCH, DECODE, PAST_SEQUENCE, PREFILL, SEQUENCE

    past = use.get(PAST_SEQUENCE, 0)
    phase, prompt = (DECODE, past) if past > 0 else (PREFILL, use[SEQUENCE])
    bench = run_decoder_benchmark(artifact.folder, DecoderBenchOptions(
        backends=backends, batch_sizes=(use[BATCH],), prompt=prompt, threads=threads, plan=plan), progress=progress)
    by = {x.backend: x for x in bench.measurements if x.phase == phase}
    label = (f"decode step: batch {use[BATCH]}, 1 new token, past {past}" if phase == DECODE
             else f"prefill: batch {use[BATCH]} x {prompt} tokens")
    return by, label
