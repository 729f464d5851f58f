"""int8 variants chosen by measurement: build several, keep the fastest that meets the accuracy budget.

ONNX Runtime's quantizer has knobs that decide both speed and accuracy, and which setting wins
depends on the model and the CPU. So ``quantize`` builds a small set of candidates:

- dynamic int8 (weights int8 ahead of time, activations quantized per row at run time) from the export and from
  the transformer-fused model (where QAttention replaces Attention), per-channel and per-tensor
  weights, optionally with reduced (7-bit) range;
- static int8 (activations calibrated on the user's texts or arrays) when calibration data is given,
  with unsigned and signed activations, as QDQ pairs and as QLinear operators. MatMuls between two
  activations (attention scores) stay in fp32.

Each candidate is compared with the fp32 export on the accuracy probe (sentence cosine for
embedding models, label agreement for classifiers); one whose answer for a text changes with the rest of its
batch is dropped (the probe's batch check; dynamic candidates scale activations per row, ``int8_rows.py``, so
that only a fused op that needs one scale per tensor, QAttention, leaves one batch-dependent). All are timed
together at the use shape, and the fastest one within the budget, by the winner rule of ``benchmarks/timing.py``
(docs/reference.md, "How optimize chooses"; ties and unclear leads go to the candidate listed first), is saved as
``model_int8.onnx``. When none meets the budget (or, with ``fallback="always"``, when one below it timed faster
than the fastest within it), the fp32 fallback (``int8_fallback.py``) rebuilds the closest ones with their most
sensitive MatMuls left in fp32. Every candidate, kept or not, is recorded in the manifest with its numbers and the
reason (``verdict``); if none meets the budget nothing is saved and the command fails, naming the best one.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.manifest_sections import BuildOptions, FusionRecord, QuantizationRecord, Validation
from torchship.benchmarks.timing import call_stats, cpu_name, measure_rounds, winner
from torchship._fs import scratch_dir, transaction
from torchship.errors import ArtifactError, BudgetError, InputError, first_line
from torchship.external_data import normalize, staged_model
from torchship._ort import ort_runner, run_errors
from torchship.optimizers.accuracy import AccuracyProbe, AccuracyResult
from torchship.optimizers.fusion import op_histogram
from torchship.optimizers.int8_candidates import (DEFAULT_SOURCES, SOURCES, UNFUSED_LN, Candidate, QuantizeOptions,
                                                  build, calibration_cache, calibration_feeds, candidates, ln_sources,
                                                  matching_nodes)
from torchship.optimizers.int8_rows import is_per_row
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
    timing: dict | None = None  # the winner rule's view of its p50_ms timing (timing.call_stats); not recorded

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


def int8_step(build, record) -> None:
    """ort-int8's builder: quantize's measured search, with the run's ``quantize`` options (auto's) or the
    defaults; the search records its candidates and the kept one in the manifest itself."""
    options = (getattr(build.options, "quantize", None) or QuantizeOptions()).checked()
    _quantize(build.artifact, options, build.progress)


def _quantize(artifact: Artifact, options: QuantizeOptions, progress: _progress.Progress) -> Artifact:
    started = time.perf_counter()
    folder = artifact.folder
    m = artifact.manifest
    src_fp32 = artifact.path_of("model")
    available = {s: artifact.path_of(s) for s in SOURCES if s in m.variants}
    for s in options.sources or ():
        if s not in available and not (s in UNFUSED_LN and "optimized" in m.variants):
            raise InputError(f"{artifact.folder} has no {s!r} variant to quantize; run: torchship optimize {folder}")
    calibration = calibration_feeds(options, artifact) if "static" in options.methods else None
    probe = AccuracyProbe.for_artifact(artifact, options.eval_texts)
    with scratch_dir(artifact.folder, "int8") as scratch:
        if "optimized" in available:
            available.update(ln_sources(artifact, options.sources or DEFAULT_SOURCES, scratch))
        exclude = {s: matching_nodes(p, options.exclude) for s, p in available.items()} if options.exclude \
            else {s: () for s in available}
        progress.step(f"accuracy probe: {probe.metric} on {probe.source}")
        probe.set_reference(ort_runner(src_fp32, threads=options.threads))
        built = itertools.count(1)

        def judge(c: Candidate, label: str = "fallback") -> Outcome:
            o = Outcome(c)
            progress.step(f"[{label}] {c.name}")
            dst = scratch / f"c{next(built)}.onnx"
            start = time.perf_counter()
            try:
                build(c, available[c.source], dst, calibration=calibration,
                      calibration_method=options.calibration_method, scratch=scratch)
                o.build_s = time.perf_counter() - start
                o.accuracy = probe.measure(ort_runner(dst, threads=options.threads,
                                                      disabled_optimizers=c.disabled_optimizers), options.budget)
                if not is_per_row(dst):  # a model whose own answers move with the batch may pass the probe
                    o.accuracy = replace(o.accuracy, per_tensor=True)
                o.path = dst
            except (ArtifactError, ValueError, KeyError, IndexError, TypeError, *run_errors()) as exc:
                # The quantizer raises plain Python errors on graphs it cannot handle, ONNX Runtime its own on a
                # candidate it cannot load or run: record, go on.
                o.error = f"{type(exc).__name__}: {first_line(exc, 200)}"
                return o
            verdict = "ok" if o.accuracy.passed else "BELOW BUDGET" if o.accuracy.batch_independent \
                else "DEPENDS ON ITS BATCH"
            progress.step(f"    {o.accuracy.describe()} {verdict}")
            return o

        base = candidates(options, available, exclude)
        outcomes = [judge(c, f"{i}/{len(base)}") for i, c in enumerate(base, 1)]
        timer = _Timer(artifact, src_fp32, options, progress)
        fallback = _fall_back(outcomes, options, available, probe, scratch, judge, timer, progress)
        timer.time([o for o in outcomes if o.passed], "p50_ms")
        return _keep_best(artifact, outcomes, options, probe, started, fallback)


class _Timer:
    """Times the fp32 export and candidates together (interleaved) at the speed shape."""

    def __init__(self, artifact: Artifact, src_fp32: Path, options: QuantizeOptions, progress: _progress.Progress):
        spec = family_of(artifact.manifest)
        config = saved_config(artifact)
        sizes = speed_sizes(spec, config, artifact.manifest.resolved_shapes())
        self.case = spec.case_for(sizes, config)
        self.feeds = spec.sample_inputs(config, artifact.manifest.io(), self.case, seed=7)
        self.src_fp32, self.options, self.progress = src_fp32, options, progress

    def time(self, built: list[Outcome], key: str) -> None:
        """Sets ``o.p50_ms`` (key "p50_ms") or ``o.extra[key]`` of every outcome in ``built``."""
        if not built:
            return
        what = "candidates within budget" if key == "p50_ms" else "candidates (screening for the fp32 fallback)"
        self.progress.step(f"timing the {len(built)} {what} and the fp32 export at {self.case.label()}")
        threads = self.options.threads
        runners = {"fp32": ort_runner(self.src_fp32, threads=threads)}
        runners.update({o.candidate.name: ort_runner(o.path, threads=threads,
                                                     disabled_optimizers=o.candidate.disabled_optimizers)
                        for o in built})
        rounds = measure_rounds({k: (lambda r=r: r(self.feeds)) for k, r in runners.items()},
                               self.options.timing.for_threads(threads))
        fp32 = call_stats(rounds["fp32"])["median_ms"]
        for o in built:
            stats = call_stats(rounds[o.candidate.name])
            ms = round(stats["median_ms"], 3)
            if key != "p50_ms":
                o.extra[key] = ms
                continue
            o.p50_ms, o.timing = ms, stats
            o.extra.update({"fp32_p50_ms": round(fp32, 3), "speedup_vs_fp32": round(fp32 / ms, 3),
                            "shape": self.case.label()})


def _fall_back(outcomes: list[Outcome], options: QuantizeOptions, available: dict[str, Path], probe: AccuracyProbe,
               scratch: Path, judge, timer: _Timer, progress: _progress.Progress) -> dict | None:
    """The fp32 fallback (optimizers/int8_fallback.py): which candidates below budget it tries to rescue, and
    why; the outcomes of its tries are appended to ``outcomes``. None when it does not run."""
    if options.fallback == "off" or not options.max_fp32 or not options.fallback_candidates:
        return None
    below = [o for o in outcomes if o.error is None and o.accuracy is not None and not o.passed
             and np.isfinite(o.accuracy.mean) and o.accuracy.batch_independent]  # fp32 MatMuls cannot mend that
    passing = [o for o in outcomes if o.passed]
    if not below:
        return None
    if not passing:
        trigger = "no candidate met the budget: the closest ones are retried with their most sensitive MatMuls in fp32"
        targets = sorted(below, key=lambda o: -o.accuracy.mean)
    elif options.fallback == "always":
        timer.time(below + passing, "screen_p50_ms")
        fastest = min(o.extra["screen_p50_ms"] for o in passing)
        trigger = (f"fallback 'always': candidates below budget that timed faster than the fastest within it "
                   f"({fastest:.3f} ms) are retried with their most sensitive MatMuls in fp32")
        targets = sorted((o for o in below if o.extra["screen_p50_ms"] < fastest),
                         key=lambda o: o.extra["screen_p50_ms"])
    else:
        return None
    from torchship.optimizers.int8_fallback import RANKED, Sensitivity, calibrated_ranges, fall_back

    sensitivity: dict[str, Sensitivity] = {}
    record = {"trigger": trigger, "max_fp32": options.max_fp32, "targets": []}
    for target in targets[:options.fallback_candidates]:
        c = target.candidate
        if c.source not in sensitivity:
            progress.step(f"fp32 fallback: measuring MatMul sensitivity on {c.source}")
            sensitivity[c.source] = Sensitivity(available[c.source], probe.batches[0], scratch, threads=options.threads)
        ranges = calibrated_ranges(calibration_cache(scratch, available[c.source], options.calibration_method)) \
            if c.method == "static" else None
        ranking = sensitivity[c.source].rank(c, ranges)
        tried = fall_back(c, ranking, options.max_fp32, judge)
        outcomes.extend(tried)
        rescued = next((o.candidate.name for o in tried if o.passed), None)
        record["targets"].append({"candidate": c.name, "accuracy_mean": target.accuracy.mean,
                                  "ranking": ranking[:RANKED], "ranked": len(ranking),
                                  "tried": [o.candidate.name for o in tried], "rescued_by": rescued})
    return record


def _verdicts(outcomes: list[Outcome], chosen: str | None, images: bool = False) -> dict[str, str]:
    """Why each candidate was kept or not, in words (``images``: the probe's inputs are images)."""
    one, other = ("an image", "a full-range noise image") if images else ("a text", "a 200-word text")
    rescued = {o.extra["fallback_of"]: o.candidate.name for o in outcomes if o.passed and o.extra.get("fallback_of")}
    kept = next((o for o in outcomes if o.candidate.name == chosen), None)
    fastest = [o.p50_ms for o in outcomes if o.passed]
    out = {}
    for o in outcomes:
        name = o.candidate.name
        if o.error:
            out[name] = f"not built: {o.error}"
        elif name == chosen:
            out[name] = "kept: the fastest within budget" if o.p50_ms <= min(fastest) else \
                "kept: within budget, and no faster one was clearly faster (the winner rule)"
        elif o.passed:
            out[name] = ("slower than the kept one" if o.p50_ms >= kept.p50_ms else
                         "not clearly faster than the kept one (the winner rule)") if chosen else "within budget"
        elif o.accuracy.per_tensor:
            out[name] = ("dropped: it scales activations per tensor (QAttention or DynamicQuantizeLinear), so its "
                         f"answer for {one} depends on the rest of the batch")
        elif not o.accuracy.batch_independent:
            out[name] = (f"dropped: its answer for {one} depends on the rest of the batch (min cosine "
                         f"{o.accuracy.batch_cosine:.6f} between {one} alone and beside {other}, "
                         f"floor {o.accuracy.batch_floor:g})")
        else:
            out[name] = "below budget" + (f"; rescued by {rescued[name]}" if name in rescued else "")
    return out


def _fastest(passing: list[Outcome]) -> Outcome | None:
    """The candidate within budget the winner rule names from their one interleaved timing; the order the search
    lists them in (``int8_candidates.candidates``, then the fallback's tries) breaks ties and unclear leads."""
    if not passing:
        return None
    name = winner({o.candidate.name: o.timing for o in passing}, tuple(o.candidate.name for o in passing))[0]
    return next(o for o in passing if o.candidate.name == name)


def _calibration_name(artifact: Artifact, options: QuantizeOptions) -> str | None:
    """What static int8 was calibrated on, as the manifest says it: the user's file, or (image models) the
    generated images and the user's folder."""
    from torchship.exporters.spec import ENCODE_IMAGE
    from torchship.optimizers.image_samples import CALIBRATION_IMAGES

    if "static" not in options.methods or ENCODE_IMAGE not in family_of(artifact.manifest).phases:
        return Path(options.calibration).name if options.calibration else None
    return f"{CALIBRATION_IMAGES} generated images" + (f" + {Path(options.calibration).name}" if options.calibration
                                                        else "")


def _keep_best(artifact: Artifact, outcomes: list[Outcome], options: QuantizeOptions,
               probe: AccuracyProbe, started: float, fallback: dict | None) -> Artifact:
    passing = [o for o in outcomes if o.passed]
    chosen = _fastest(passing)
    from torchship.exporters.spec import ENCODE_IMAGE

    images = ENCODE_IMAGE in family_of(artifact.manifest).phases
    verdicts = _verdicts(outcomes, chosen.candidate.name if chosen else None, images)
    report = [{**o.to_json(), "verdict": verdicts[o.candidate.name]} for o in outcomes]
    if not passing:
        tried = [o for o in outcomes if o.accuracy is not None and o.accuracy.batch_independent]
        batchy = sum(o.accuracy is not None and not o.accuracy.batch_independent for o in outcomes)
        best = max(tried, key=lambda o: o.accuracy.mean, default=None)
        why = (f"no int8 candidate met the budget ({probe.metric} mean >= {options.budget:g}"
               + (f"; {batchy} dropped as their answers depend on the batch" if batchy else "") + ")"
               + (f"; the closest, {best.candidate.name}, reached {best.accuracy.mean:.4f}" if best else
                  "" if batchy else
                  "; none could be built: " + "; ".join(f"{o.candidate.name}: {o.error}" for o in outcomes)))
        manifest = artifact.manifest.with_skipped(VARIANT, why)
        artifact.save(replace(manifest, quantization=QuantizationRecord.from_json(
            {"chosen": None, "candidates": report, "fallback": fallback})))
        tried = (f"the fp32 fallback tried up to {options.max_fp32} MatMuls in fp32; " if fallback else "")
        fix = ("try --op-types MatMul (per-row int8), or static int8 with --calibration (calibrated ranges)"
               if batchy and best is None else "allow more fp32 MatMuls with --max-fp32, leave nodes in fp32 with "
               "--exclude, try static int8 with --calibration, or lower --budget")
        raise BudgetError(f"{why}. Every candidate's numbers are in {artifact.folder}/torchship.json; {tried}{fix}")
    best = chosen
    calibrated_on = _calibration_name(artifact, options)
    final = artifact.folder / FILE
    with staged_model(final) as tmp:
        normalize(best.path, tmp, "auto")  # one data file named after the final model, when one is needed
        against_torch = run_reference_cases(tmp, load_reference(artifact.folder), atol=float("inf"),
                                            spec=family_of(artifact.manifest))
    validation = {**best.accuracy.to_json(), "max_abs": against_torch.max_abs,
                  "min_cosine": against_torch.min_cosine, "against": "fp32 export (accuracy); eager PyTorch (max_abs)"}
    variant = Variant(name=VARIANT, file=FILE, stage="quantization", options=BuildOptions.from_json(
                      {**best.candidate.to_json(), "precision": "int8", "p50_ms": best.p50_ms, **best.extra,
                               "calibration": calibrated_on,
                               "calibration_method": options.calibration_method if calibrated_on else None,
                               "search_s": round(time.perf_counter() - started, 1),  # the whole measured search
                               "machine": {"cpu": cpu_name()}}),  # where p50_ms and speedup_vs_fp32 were timed
                      size_bytes=model_bytes(final), seconds=round(best.build_s, 3),
                      validation=Validation.from_json(validation), fusion=FusionRecord(op_histogram(final)))
    manifest = artifact.manifest.with_variant(variant)
    artifact.save(replace(manifest, quantization=QuantizationRecord.from_json(
        {"chosen": best.candidate.name, "candidates": report, "fallback": fallback})))
    return artifact
