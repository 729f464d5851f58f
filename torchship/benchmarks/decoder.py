"""Benchmark a decoder: prompt (prefill) latency, per-token decode latency and tokens per second.

Eager PyTorch runs the way transformers' own generation loop does: the model with its
``DynamicCache`` object carried between calls (cropped back to the past length after each timed
step, a few tensor views, so every step sees the same past). ONNX Runtime runs the exported model
with ``past_key_values.*`` inputs. Both get the same inputs and thread count, interleaved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, library_versions
from torchship.benchmarks.results import BenchReport, Environment, Measurement
from torchship.benchmarks.run import accuracy_of, default_threads, variant_budgets, variant_files
from torchship.benchmarks.timing import TimingPlan, measure_interleaved
from torchship.errors import InputError
from torchship.exporters.spec import BATCH, DECODE, PAST_SEQUENCE, PREFILL, SEQUENCE, require_family, saved_config
from torchship.runtimes import RuntimeOptions, check_backend, create_predictor, source_model_loader
from torchship.runtimes.torch_runtime import TorchCachedDecoder


@dataclass(frozen=True)
class DecoderBenchOptions:
    backends: tuple[str, ...] = ("torch", "ort", "ort-optimized")
    batch_sizes: tuple[int, ...] = (1,)
    prompt: int = 128  # prefill length, and the past length of the decode step
    threads: int = field(default_factory=default_threads)
    spin: bool = False
    plan: TimingPlan = TimingPlan()
    reference_model: str | None = None
    seed: int = 0


def run_decoder_benchmark(folder, options: DecoderBenchOptions = DecoderBenchOptions(), *,
                          progress: _progress.Progress = _progress.SILENT) -> BenchReport:
    artifact = Artifact.open(folder)
    spec = require_family(artifact, "use torchship bench", phase=DECODE)
    manifest = artifact.manifest
    config = saved_config(artifact)
    limit = spec.normalized(config).max_positions
    if not 1 <= options.prompt < limit:
        raise InputError(f"--prompt-length must be between 1 and {limit - 1} (the model's positions), got {options.prompt}")
    if options.threads < 1 or any(b < 1 for b in options.batch_sizes):
        raise InputError("--threads and batch sizes must be 1 or more")
    io = manifest.io()
    runtime = RuntimeOptions(threads=options.threads, spin=options.spin)
    # Creating a predictor loads nothing; a missing variant or a backend the family cannot run fails here.
    predictors = {b: create_predictor(artifact, b, runtime) for b in options.backends if b != "torch"}
    if "torch" in options.backends:
        check_backend(artifact, "torch")
        predictors["torch"] = TorchCachedDecoder(source_model_loader(artifact, options.reference_model), io,
                                                 num_layers=manifest.num_layers, threads=options.threads)
    predictors = {b: predictors[b] for b in options.backends}
    measurements = []
    phases = [(PREFILL, options.prompt, 0), (DECODE, 1, options.prompt)]
    total = len(phases) * len(options.batch_sizes)
    n = 0
    try:
        for name, pred in predictors.items():
            progress.step(f"loading {name}")
            pred.activate()
        for batch in options.batch_sizes:
            for phase, seq, past in phases:
                n += 1
                case = spec.case_for({BATCH: batch, SEQUENCE: seq, PAST_SEQUENCE: past}, config)
                feeds = spec.sample_inputs(config, io, case, seed=options.seed + n)
                fns = {b: _timed(p, feeds) for b, p in predictors.items()}
                logits = {b: np.asarray(fn()) for b, fn in fns.items()}
                label = f"[{n}/{total}] {phase}: batch {batch}, {seq} new tokens, past {past}"
                progress.step(label)
                times = measure_interleaved(fns, options.plan)
                ref = options.backends[0]
                for backend in options.backends:
                    acc = None if backend == ref else accuracy_of(logits[ref][:, -1], logits[backend][:, -1],
                                                                  reference=ref, output="logits (last token)")
                    measurements.append(Measurement.from_latencies(backend, batch, seq, times[backend], acc,
                                                                   phase=phase, past=past))
    finally:
        for pred in predictors.values():
            pred.deactivate()
    return BenchReport(
        model=manifest.source.get("name") or manifest.source.get("model", str(artifact.folder)),
        variant_files=variant_files(artifact, options.backends),
        budgets=variant_budgets(artifact, options.backends),
        environment=Environment.collect(threads=options.threads, spin=options.spin, versions=library_versions()),
        settings={"backends": list(options.backends), "batch_sizes": list(options.batch_sizes),
                  "prompt": options.prompt, "warmup": options.plan.warmup,
                  "min_iterations": options.plan.min_iterations, "min_seconds": options.plan.min_seconds,
                  "torch": "transformers model with a DynamicCache, cropped to the past length after each step",
                  "inputs": "random token ids and random past tensors, seeded"},
        measurements=tuple(measurements),
        baseline=options.backends[0],
    )


def _timed(predictor, feeds):
    """A callable running one timed step and returning the logits: eager PyTorch on its carried cache,
    any other backend through ``infer``."""
    if isinstance(predictor, TorchCachedDecoder):
        return predictor.timed_step(feeds)
    return lambda: predictor.infer(feeds)["logits"]
