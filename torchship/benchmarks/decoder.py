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
from torchship.benchmarks.run import accuracy_of, default_threads
from torchship.benchmarks.timing import TimingPlan, measure_interleaved
from torchship.errors import InputError
from torchship.exporters.decoders import DecoderShape, past_names
from torchship.runtimes import ORT_BACKENDS, TORCH_BACKENDS, RuntimeOptions, create_predictor, source_model_loader


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


class _TorchCacheStep:
    """Eager PyTorch forward with a transformers DynamicCache, as generate() runs it."""

    def __init__(self, builder_source, threads: int):
        self._source = builder_source
        self.threads = threads
        self.model = None

    def activate(self):
        import torch

        torch.set_num_threads(self.threads)
        self.model = self._source().eval()
        return self

    def step_fn(self, feeds: dict[str, np.ndarray], layers: int, phase: str):
        """A callable running one timed forward; it returns the logits."""
        import torch

        from torchship._torch import cache_from_past

        args = {k: torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "position_ids")}
        model = self.model
        if phase == "prefill":  # no past: the model starts its own cache, as generate() does
            def prefill():
                with torch.inference_mode():
                    return model(**args, use_cache=True).logits
            return prefill
        new_tokens = feeds["input_ids"].shape[1]
        cache = cache_from_past([torch.from_numpy(feeds[n]) for n in past_names(layers)], layers)

        def decode():
            with torch.inference_mode():
                logits = model(**args, past_key_values=cache, use_cache=True).logits
            cache.crop(-new_tokens)  # back to the same past for the next timed step
            return logits
        return decode


def run_decoder_benchmark(folder, options: DecoderBenchOptions = DecoderBenchOptions(), *,
                          progress: _progress.Progress = _progress.SILENT) -> BenchReport:
    artifact = Artifact.open(folder).require_kind("decoder", "use torchship bench")
    manifest = artifact.manifest
    spec = manifest.spec()
    config = artifact.load_config()
    limit = spec.max_positions(config)
    if not 1 <= options.prompt < limit:
        raise InputError(f"--prompt-length must be between 1 and {limit - 1} (the model's positions), got {options.prompt}")
    if options.threads < 1 or any(b < 1 for b in options.batch_sizes):
        raise InputError("--threads and batch sizes must be 1 or more")
    for backend in options.backends:
        if backend in TORCH_BACKENDS and backend != "torch":
            raise InputError(f"backend {backend!r} is not available for decoders; use torch (eager, with its KV "
                             "cache) or an ONNX backend")
    io = manifest.io()
    layers = manifest.num_layers
    runtime = RuntimeOptions(threads=options.threads, spin=options.spin)
    # Creating a predictor loads nothing; a missing variant fails here, before anything runs.
    ort_preds = {b: create_predictor(artifact, b, runtime) for b in options.backends if b != "torch"}
    for pred in ort_preds.values():
        pred.activate()
    torch_step = None
    if "torch" in options.backends:
        progress.step("loading torch")
        torch_step = _TorchCacheStep(source_model_loader(artifact, options.reference_model), options.threads).activate()

    measurements = []
    phases = [("prefill", options.prompt, 0), ("decode", 1, options.prompt)]
    total = len(phases) * len(options.batch_sizes)
    n = 0
    for batch in options.batch_sizes:
        for phase, seq, past in phases:
            n += 1
            feeds = spec.sample_inputs(config, io, DecoderShape(batch, seq, past), seed=options.seed + n)
            fns, logits = {}, {}
            for backend in options.backends:
                if backend == "torch":
                    fns[backend] = torch_step.step_fn(feeds, layers, phase)
                    logits[backend] = fns[backend]().numpy()
                else:
                    pred = ort_preds[backend]
                    fns[backend] = lambda pred=pred: pred.infer(feeds)
                    logits[backend] = pred.infer(feeds)["logits"]
            label = f"[{n}/{total}] {phase}: batch {batch}, {seq} new tokens, past {past}"
            progress.step(label)
            times = measure_interleaved(fns, options.plan)
            ref = options.backends[0]
            for backend in options.backends:
                acc = None if backend == ref else accuracy_of(logits[ref][:, -1], logits[backend][:, -1],
                                                              reference=ref, output="logits (last token)")
                measurements.append(Measurement.from_latencies(backend, batch, seq, times[backend], acc,
                                                               phase=phase, past=past))
    for pred in ort_preds.values():
        pred.deactivate()
    return BenchReport(
        model=manifest.source.get("model", str(artifact.folder)),
        variant_files={b: manifest.variants[ORT_BACKENDS[b]].file for b in options.backends if b in ORT_BACKENDS},
        environment=Environment.collect(threads=options.threads, spin=options.spin, versions=library_versions()),
        settings={"backends": list(options.backends), "batch_sizes": list(options.batch_sizes),
                  "prompt": options.prompt, "warmup": options.plan.warmup,
                  "min_iterations": options.plan.min_iterations, "min_seconds": options.plan.min_seconds,
                  "torch": "transformers model with a DynamicCache, cropped to the past length after each step",
                  "inputs": "random token ids and random past tensors, seeded"},
        measurements=tuple(measurements),
        baseline=options.backends[0],
    )
