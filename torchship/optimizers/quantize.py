"""int8 variants chosen by measurement: build several, keep the fastest that meets the accuracy budget.

ONNX Runtime's quantizer has knobs that decide both speed and accuracy, and which setting wins
depends on the model and the CPU. So ``quantize`` builds a small set of candidates:

- dynamic int8 (weights int8 ahead of time, activations quantized per run) from the export and from
  the transformer-fused model (where QAttention replaces Attention), per-channel and per-tensor
  weights, optionally with reduced (7-bit) range;
- static int8 (QDQ, activations calibrated on the user's texts or arrays) when calibration data is
  given. MatMuls between two activations (attention scores) stay in fp32 by default.

Each candidate is compared with the fp32 export on the accuracy probe (sentence cosine for
embedding models, label agreement for classifiers), all are timed together at the use shape, and
the fastest one within the budget is saved as ``model_int8.onnx``. Every candidate, kept or not,
is recorded in the manifest with its numbers; if none meets the budget nothing is saved and the
command fails, naming the best one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.benchmarks.timing import measure_interleaved
from torchship._fs import scratch_dir, transaction
from torchship.errors import ArtifactError, BudgetError, InputError, first_line
from torchship.external_data import normalize, staged_model
from torchship._ort import ort_runner
from torchship.optimizers.accuracy import AccuracyProbe, AccuracyResult
from torchship.optimizers.fusion import op_histogram
from torchship.optimizers.int8_candidates import (SOURCES, Candidate, QuantizeOptions, build, calibration_feeds,
                                                  candidates, fused_without_skip_ln, matching_nodes)
from torchship.validation import run_reference_cases
from torchship.exporters.spec import family_of, saved_config

__all__ = ["FILE", "VARIANT", "QuantizeOptions", "quantize"]

VARIANT = "int8"
FILE = "model_int8.onnx"


@dataclass
class Outcome:
    candidate: Candidate
    path: Path | None = None
    accuracy: AccuracyResult | None = None
    build_s: float = 0.0
    p50_ms: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and self.accuracy is not None and self.accuracy.passed

    def to_json(self) -> dict:
        return {**self.candidate.to_json(), "build_s": round(self.build_s, 2), "p50_ms": self.p50_ms,
                "accuracy": self.accuracy.to_json() if self.accuracy else None, "passed": self.passed,
                "error": self.error, **self.extra}


def speed_sizes(spec, config, resolved) -> dict:
    """The shape speed is judged at: the shape config's use shape, else the family's batch-1 bench shape
    with the most work."""
    if resolved is not None:
        return resolved.sizes("use")
    sizes = spec.bench_sizes(config)
    smallest = min(s.get("batch", 1) for s in sizes)
    pool = [s for s in sizes if s.get("batch", 1) == smallest]
    return max(pool, key=lambda s: int(np.prod(list(s.values()))))


def quantize(folder: str | Path, options: QuantizeOptions = QuantizeOptions(), *,
             progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Build int8 candidates, measure them, and save the fastest within the budget as ``model_int8.onnx``."""
    options = options.checked()
    artifact = Artifact.open(folder)
    with transaction(artifact.folder):
        return _quantize(artifact, options, progress)


def _quantize(artifact: Artifact, options: QuantizeOptions, progress: _progress.Progress) -> Artifact:
    started = time.perf_counter()
    folder = artifact.folder
    m = artifact.manifest
    spec = family_of(m)
    src_fp32 = artifact.path_of("model")
    available = {s: artifact.path_of(s) for s in SOURCES if s in m.variants}
    for s in options.sources or ():
        if s not in available and not (s == "optimized-ln" and "optimized" in m.variants):
            raise InputError(f"{artifact.folder} has no {s!r} variant to quantize; run: torchship optimize {folder}")
    calibration = calibration_feeds(options, artifact) if "static" in options.methods else None
    probe = AccuracyProbe.for_artifact(artifact, options.eval_texts)
    with scratch_dir(artifact.folder, "int8") as scratch:
        if "optimized" in available and "optimized-ln" in (options.sources or SOURCES):
            available["optimized-ln"] = fused_without_skip_ln(artifact, scratch)
        exclude = {s: matching_nodes(p, options.exclude) for s, p in available.items()} if options.exclude \
            else {s: () for s in available}
        progress.step(f"accuracy probe: {probe.metric} on {probe.source}")
        probe.set_reference(ort_runner(src_fp32, threads=options.threads))
        outcomes = [Outcome(c) for c in candidates(options, available, exclude)]
        for i, o in enumerate(outcomes, 1):
            progress.step(f"[{i}/{len(outcomes)}] {o.candidate.name}")
            dst = scratch / f"c{i}.onnx"
            start = time.perf_counter()
            try:
                build(o.candidate, available[o.candidate.source], dst, calibration=calibration,
                       calibration_method=options.calibration_method, scratch=scratch)
                o.build_s = time.perf_counter() - start
                o.accuracy = probe.measure(ort_runner(dst, threads=options.threads,
                                                      disabled_optimizers=o.candidate.disabled_optimizers),
                                           options.budget)
                o.path = dst
            except (ArtifactError, ValueError, RuntimeError, KeyError, IndexError, TypeError) as exc:
                # The quantizer raises plain Python errors on graphs it cannot handle: record, go on.
                o.error = f"{type(exc).__name__}: {first_line(exc, 200)}"
                continue
            progress.step(f"    {o.accuracy.describe()} {'ok' if o.accuracy.passed else 'BELOW BUDGET'}")
        _time(artifact, spec, src_fp32, [o for o in outcomes if o.passed], options, progress)
        return _keep_best(artifact, outcomes, options, probe, started)


def _time(artifact: Artifact, spec, src_fp32: Path, built: list[Outcome], options: QuantizeOptions,
          progress: _progress.Progress) -> None:
    """Time the fp32 export and every built candidate together (interleaved) at the speed shape."""
    if not built:
        return
    config = saved_config(artifact)
    sizes = speed_sizes(spec, config, artifact.manifest.resolved_shapes())
    case = spec.case_for(sizes, config)
    feeds = spec.sample_inputs(config, artifact.manifest.io(), case, seed=7)
    progress.step(f"timing the {len(built)} candidates within budget and the fp32 export at {case.label()}")
    runners = {"fp32": ort_runner(src_fp32, threads=options.threads)}
    runners.update({o.candidate.name: ort_runner(o.path, threads=options.threads,
                                                 disabled_optimizers=o.candidate.disabled_optimizers) for o in built})
    times = measure_interleaved({k: (lambda r=r: r(feeds)) for k, r in runners.items()}, options.timing)
    fp32 = float(np.median(times["fp32"]) * 1000)
    for o in built:
        o.p50_ms = round(float(np.median(times[o.candidate.name]) * 1000), 3)
        o.extra = {"fp32_p50_ms": round(fp32, 3), "speedup_vs_fp32": round(fp32 / o.p50_ms, 3),
                   "shape": case.label()}


def _keep_best(artifact: Artifact, outcomes: list[Outcome], options: QuantizeOptions,
               probe: AccuracyProbe, started: float) -> Artifact:
    passing = sorted((o for o in outcomes if o.passed), key=lambda o: o.p50_ms)
    report = [o.to_json() for o in outcomes]
    if not passing:
        tried = [o for o in outcomes if o.accuracy is not None]
        best = max(tried, key=lambda o: o.accuracy.mean, default=None)
        why = (f"no int8 candidate met the budget ({probe.metric} mean >= {options.budget:g})"
               + (f"; the closest, {best.candidate.name}, reached {best.accuracy.mean:.4f}" if best else
                  "; none could be built: " + "; ".join(f"{o.candidate.name}: {o.error}" for o in outcomes)))
        manifest = artifact.manifest.with_skipped(VARIANT, why)
        artifact.save(replace(manifest, quantization={"chosen": None, "candidates": report}))
        raise BudgetError(f"{why}. Every candidate's numbers are in {artifact.folder}/torchship.json; "
                              "leave sensitive nodes in fp32 with --exclude, try --static with calibration text, "
                              "or lower --budget")
    best = passing[0]
    final = artifact.folder / FILE
    with staged_model(final) as tmp:
        normalize(best.path, tmp, "auto")  # one data file named after the final model, when one is needed
        against_torch = run_reference_cases(tmp, load_reference(artifact.folder), atol=float("inf"),
                                            spec=family_of(artifact.manifest))
    validation = {**best.accuracy.to_json(), "max_abs": against_torch.max_abs,
                  "min_cosine": against_torch.min_cosine, "against": "fp32 export (accuracy); eager PyTorch (max_abs)"}
    variant = Variant(name=VARIANT, file=FILE, stage="quantization",
                      options={**best.candidate.to_json(), "precision": "int8", "p50_ms": best.p50_ms, **best.extra,
                               "calibration": Path(options.calibration).name if options.calibration else None,
                               "calibration_method": options.calibration_method if options.calibration else None,
                               "search_s": round(time.perf_counter() - started, 1)},  # the whole measured search
                      size_bytes=model_bytes(final), seconds=round(best.build_s, 3), validation=validation,
                      fusion={"counts": op_histogram(final)})
    manifest = artifact.manifest.with_variant(variant)
    artifact.save(replace(manifest, quantization={"chosen": best.candidate.name, "candidates": report}))
    return artifact
