"""The sweep: build every variant of the backend table that fits the config, validate each against the fp32
original, benchmark the ones within the budget, choose the fastest and write the summary.

What is built is read from the table (:mod:`torchship.backends`): the rows still in the running are
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
from torchship.backends import Backend, records
from torchship.errors import InputError, TorchshipError, first_line


def swept() -> dict[str, Backend]:
    """Every variant auto sweeps, in table order (registered records included): backend name -> its record."""
    return {b.name: b for b in records() if b.swept}


VARIANTS: dict[str, Backend] = swept()  # the built-in table's

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
        table = swept()
        rows = {name: Row.of(b) for name, b in table.items()}
        progress.step(f"[2/{stages}] fp32 and fp16 variants")
        _filter(artifact, config, rows, table)
        _build(artifact, config, rows, table, threads, lambda r: r.precision != "int8", progress)
        progress.step(f"[3/{stages}] int8")
        _build(artifact, config, rows, table, threads, lambda r: r.precision == "int8", progress)
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


def _wanted(rows: dict[str, Row], table: dict[str, Backend]) -> list[Row]:
    """The rows still in the running whose model some builder makes (not the export itself)."""
    return [r for r in rows.values() if r.usable and table[r.backend].builder is not None]


def _attempt(wanted: list[Row], make) -> None:
    """Run one build step for the rows that need it; its error fails (or puts below budget) those rows, or
    skips them where the folder cannot make them (an InputError, e.g. no static int8 model for an engine)."""
    if not wanted:
        return
    try:
        make()
    except InputError as exc:
        for r in wanted:
            r.skip(first_line(exc))
    except TorchshipError as exc:
        for r in wanted:
            r.fail(exc)


def _filter(artifact, config: AutoConfig, rows: dict[str, Row], table: dict[str, Backend]) -> None:
    """Skip, before anything is built, the rows the family, the config or the device rule out."""
    from torchship.exporters.spec import ENCODE, family_of

    m = artifact.manifest
    spec = family_of(m)
    device = config.shapes.device
    on_gpu = device.startswith("cuda")
    for name, b in table.items():
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
    exported = {v for b in records() if b.builder is None for v in b.variants}  # the export as written ("model")
    for r in _wanted(rows, table):
        b = table[r.backend]
        if b.fused and not m.ort_model_type and not exported & set(b.variants):  # no fallback to the export
            r.skip("no transformer fusion for this model (ONNX file of unknown family)")
        elif (b.measured_only or b.approximate_gelu) and ENCODE not in spec.phases:
            r.skip("made only for an encoder's attention")


def _build(artifact, config: AutoConfig, rows: dict[str, Row], table: dict[str, Backend], threads: int, which,
           progress) -> None:
    """Make the variants of the rows still in the running that ``which`` selects: one optimize run per builder,
    in table order, for the rows whose record names it; the transformer-fused ones share one run (their failures
    are recorded as skips, and the kernels' common model is made once). The candidates only a measured choice
    picks are made as for optimize's measured dispatch, but auto times every variant itself at the config's use
    shape, so optimize's own per-shape timing is skipped (``dispatch=None``)."""
    from torchship.artifact import Artifact
    from torchship.optimizers import OptimizeOptions, optimize

    base = OptimizeOptions(use_gpu=config.shapes.device.startswith("cuda"), dispatch=None,
                           fp16_budget=config.budget, quantize=_int8_search(config, threads))
    groups: dict[str, list[Row]] = {}
    for r in _wanted(rows, table):
        if which(table[r.backend]):
            record = table[r.backend]
            groups.setdefault("fused" if record.fused else record.builder, []).append(r)
    for group in groups.values():
        names = tuple(r.backend for r in group)
        _attempt(group, lambda: optimize(artifact.folder, replace(base, backends=names), progress=progress))
        made = Artifact.open(artifact.folder).manifest
        for r in group:  # none of the row's variants made (a kernel this graph cannot take): why
            variants = table[r.backend].variants
            why = next((made.skipped[v] for v in variants if v in made.skipped), None)
            if why and not any(v in made.variants for v in variants):
                r.skip(f"not made: {why}")


def _int8_search(config: AutoConfig, threads: int):
    """quantize's search as auto runs it: the config's budget, and its candidates timed no longer than the
    config's min_seconds when that is shorter than quantize's own default (a quick auto run is quick throughout)."""
    from torchship.optimizers.quantize import QuantizeOptions

    search = QuantizeOptions(budget=config.budget, threads=threads)
    return replace(search, timing=replace(search.timing, min_seconds=min(search.timing.min_seconds,
                                                                         config.min_seconds)))


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
        report.timings[backend] = x.timing
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
