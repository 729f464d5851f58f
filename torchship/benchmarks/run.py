"""Benchmark backends on an exported folder across batch sizes and sequence lengths."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, library_versions
from torchship.benchmarks.results import Accuracy, BenchReport, Environment, Measurement
from torchship.benchmarks.timing import TimingPlan, measure_interleaved
from torchship.compare import rowwise_cosine
from torchship.errors import InputError
from torchship.exporters.inputs import TextShape
from torchship.runtimes import ORT_BACKENDS, RuntimeOptions, create_predictor


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = ("torch", "ort", "ort-optimized")
    shapes: tuple[tuple[int, int], ...] = ((1, 16), (8, 16), (1, 128), (8, 128))  # (batch, sequence)
    threads: int = field(default_factory=default_threads)
    spin: bool = False
    plan: TimingPlan = TimingPlan()
    reference_model: str | None = None
    seed: int = 0


def grid(batch_sizes, seq_lens) -> tuple[tuple[int, int], ...]:
    """Every (batch, sequence) pair, shorter sequences first."""
    return tuple((b, s) for s in seq_lens for b in batch_sizes)


def accuracy_of(ref: np.ndarray, got: np.ndarray, *, reference: str, output: str) -> Accuracy:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    cos = rowwise_cosine(ref, got)
    return Accuracy(reference, output, float(diff.max()), float(diff.mean()),
                    float(cos.min()), float(cos.mean()))


def _check(artifact: Artifact, config, opts: BenchOptions) -> None:
    if opts.threads < 1:
        raise InputError(f"--threads must be 1 or more, got {opts.threads}")
    limit = artifact.manifest.spec().max_positions(config)
    if not opts.shapes or any(b < 1 or s < 1 for b, s in opts.shapes):
        raise InputError(f"benchmark shapes must be positive (batch, sequence) pairs, got {list(opts.shapes)}")
    too_long = [s for _, s in opts.shapes if s > limit]
    if too_long:
        raise InputError(f"sequence length {too_long[0]} exceeds the model's limit of {limit} positions")


def run_benchmark(folder, options: BenchOptions = BenchOptions(), *,
                  progress: _progress.Progress = _progress.SILENT) -> BenchReport:
    artifact = Artifact.open(folder).require_kind(
        "encoder", "benchmark it with run_decoder_benchmark (torchship bench picks it for decoders)")
    manifest = artifact.manifest
    spec = manifest.spec()
    config = artifact.load_config()
    _check(artifact, config, options)
    io = manifest.io()
    runtime = RuntimeOptions(threads=options.threads, spin=options.spin, reference_model=options.reference_model)
    # Creating a predictor loads nothing; a missing variant fails here, before anything runs.
    predictors = {b: create_predictor(artifact, b, runtime) for b in options.backends}
    for name, p in predictors.items():
        progress.step(f"loading {name}")
        p.activate()
    reference = "torch" if "torch" in predictors else options.backends[0]
    main_output = manifest.output_names[0]
    shapes = list(options.shapes)
    measurements = []
    try:
        for i, (batch, seq) in enumerate(shapes, 1):
            feeds = spec.sample_inputs(config, io, TextShape(batch, seq), seed=options.seed + i)
            outputs = {name: p.infer(feeds)[main_output] for name, p in predictors.items()}
            label = f"[{i}/{len(shapes)}] batch {batch} x seq {seq}"
            progress.step(label)
            times = measure_interleaved(
                {name: (lambda p=p: p.infer(feeds)) for name, p in predictors.items()}, options.plan,
                on_block=lambda done, total: progress.advance(label, done, total))
            for name in predictors:
                acc = None if name == reference else accuracy_of(
                    outputs[reference], outputs[name], reference=reference, output=main_output)
                measurements.append(Measurement.from_latencies(name, batch, seq, times[name], acc))
    finally:
        for p in predictors.values():
            p.deactivate()
    files = {b: manifest.variants[ORT_BACKENDS[b]].file for b in options.backends if b in ORT_BACKENDS}
    return BenchReport(
        model=manifest.source.get("model", str(artifact.folder)),
        variant_files=files,
        environment=Environment.collect(threads=options.threads, spin=options.spin, versions=library_versions()),
        settings={"backends": list(options.backends), "shapes": [list(sh) for sh in shapes], "warmup": options.plan.warmup,
                  "min_iterations": options.plan.min_iterations, "min_seconds": options.plan.min_seconds,
                  "interleaved_blocks": options.plan.block, "inputs": "random token ids, full length, seeded"},
        measurements=tuple(measurements),
        baseline=reference,
    )
