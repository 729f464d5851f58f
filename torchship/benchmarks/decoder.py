"""Benchmark a decoder: prefill latency at several prompt lengths, per-token decode latency at several past
lengths, tokens per second, file size and peak memory per row.

Eager PyTorch runs the way transformers' own generation loop does: the model with its ``DynamicCache``
object carried between calls (cropped back to the past length after each timed step, a few tensor views,
so every step sees the same past). ONNX Runtime runs the exported model and its variants with
``past_key_values.*`` inputs; onnxruntime-genai's builder graph of the same checkpoint (``genai``) runs in
a plain ONNX Runtime session. Every row gets the same inputs and thread count, interleaved per case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, library_versions
from torchship.benchmarks import genai as genai_builds
from torchship.benchmarks import memory
from torchship.benchmarks.decoder_runners import default_backends, file_bytes, judged, make_runner, timed
from torchship.benchmarks.results import BenchReport, Environment, Measurement
from torchship._ort import usable_cpus
from torchship.benchmarks.run import accuracy_of, variant_budgets, variant_files
from torchship.benchmarks.timing import TimingPlan, measure_rounds
from torchship.errors import InputError, TorchshipError, first_line
from torchship.exporters.spec import BATCH, DECODE, PAST_SEQUENCE, PREFILL, SEQUENCE, require_family, saved_config
from torchship.backends import WEIGHT_ONLY, backend

DEFAULT_PROMPTS = (32, 128)
DEFAULT_PASTS = (32, 128)


@dataclass(frozen=True)
class DecoderBenchOptions:
    backends: tuple[str, ...] | None = None  # None: default_backends (eager, fp32 ORT, every weight-only variant)
    batch_sizes: tuple[int, ...] = (1,)
    prompt_lengths: tuple[int, ...] | None = None  # prefill lengths; None: 32 and 128, within the positions
    past_lengths: tuple[int, ...] | None = None  # decode steps after this many cached tokens; None: 32 and 128
    prompt: int | None = None  # one length for both the prefill and the decode step's past (older callers)
    threads: int = field(default_factory=usable_cpus)
    spin: str = "run"
    plan: TimingPlan = TimingPlan()
    reference_model: str | None = None
    seed: int = 0
    genai: bool = False  # add onnxruntime-genai's builds of the checkpoint at the benched precisions
    peak_memory: bool = False  # probe each row's peak memory in a fresh process (benchmarks/memory.py)


def lengths(options: DecoderBenchOptions, limit: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The prompt (prefill) and past (decode) lengths to measure, checked against the model's positions: a
    prompt may fill them, a past must leave one for the decoded token."""
    if options.prompt is not None:
        if not 1 <= options.prompt < limit:
            raise InputError(f"--prompt-length must be between 1 and {limit - 1} (the model's positions), "
                             f"got {options.prompt}")
        return (options.prompt,), (options.prompt,)
    prompts = options.prompt_lengths or tuple(min(n, limit) for n in DEFAULT_PROMPTS)
    pasts = options.past_lengths or tuple(min(n, limit - 1) for n in DEFAULT_PASTS)
    for n in prompts:
        if not 1 <= n <= limit:
            raise InputError(f"--prompt-length {n} is outside the model's {limit} positions; give lengths from 1 "
                             f"to {limit}")
    for n in pasts:
        if not 1 <= n < limit:
            raise InputError(f"--past-length {n} leaves no position for the decoded token (the model has {limit}); "
                             f"give lengths from 1 to {limit - 1}")
    return tuple(sorted(set(prompts))), tuple(sorted(set(pasts)))


def run_decoder_benchmark(folder, options: DecoderBenchOptions = DecoderBenchOptions(), *,
                          progress: _progress.Progress = _progress.SILENT) -> BenchReport:
    artifact = Artifact.open(folder)
    spec = require_family(artifact, "use torchship bench", phase=DECODE)
    manifest = artifact.manifest
    config = saved_config(artifact)
    prompts, pasts = lengths(options, spec.normalized(config).max_positions)
    if options.threads < 1 or not options.batch_sizes or any(b < 1 for b in options.batch_sizes):
        raise InputError("--threads and batch sizes must be 1 or more")
    names = list(options.backends or default_backends(artifact))
    kw = dict(threads=options.threads, spin=options.spin, reference_model=options.reference_model)
    # Creating a runner loads nothing; a missing variant or a backend the family cannot run fails here.
    runners = {b: make_runner(artifact, b, **kw) for b in names}
    notes: list[str] = []
    builds = []
    if options.genai:
        builds, more = genai_builds.prepare(artifact, names, reference_model=options.reference_model,
                                            progress=progress)
        notes += more
        for build in builds:
            runners[build.name] = make_runner(artifact, build.name, **kw, genai_model=build.model)
            names.insert(_genai_place(names, build.precision), build.name)
    genai_models = {b.name: b.model for b in builds}
    batches = tuple(dict.fromkeys(options.batch_sizes))
    cases = [(batch, PREFILL, n, 0) for batch in batches for n in prompts]
    cases += [(batch, DECODE, 1, n) for batch in batches for n in pasts]
    peak = {}
    if options.peak_memory:
        largest = [[max(batches), max(prompts), 0], [max(batches), 1, max(pasts)]]
        jobs = {n: {"threads": options.threads, "reference_model": options.reference_model, "seed": options.seed,
                    "genai_model": str(genai_models[n]) if n in genai_models else None, "cases": largest}
                for n in names}
        peak, more = memory.measure(artifact.folder, jobs, progress=progress)
        notes += more
    baseline = "torch" if "torch" in names else names[0]
    measurements = []
    failed: dict[str, tuple[str, list[str]]] = {}  # a genai row that failed on some cases: why, and where
    try:
        for name in names:
            progress.step(f"loading {name}")
            try:
                runners[name].activate()
            except (genai_builds.GenaiSkipped, TorchshipError) as exc:
                if name not in genai_models:
                    raise
                notes.append(f"no {name} row: {first_line(exc)}")
                del runners[name]
        names = [n for n in names if n in runners]
        io = manifest.io()
        for n, (batch, phase, seq, past) in enumerate(cases, 1):
            case = spec.case_for({BATCH: batch, SEQUENCE: seq, PAST_SEQUENCE: past}, config)
            feeds = spec.sample_inputs(config, io, case, seed=options.seed + n)
            fns, logits = {}, {}
            for name in names:
                try:
                    fns[name] = timed(runners[name], feeds)
                    logits[name] = np.asarray(fns[name]())
                except Exception as exc:  # only the builder's graph may fail on a case; it is left out of it
                    if name not in genai_models:
                        raise
                    fns.pop(name, None)
                    failed.setdefault(name, (first_line(exc), []))[1].append(f"{phase} batch {batch} past {past}")
            label = f"[{n}/{len(cases)}] {phase}: batch {batch}, {seq} new tokens, past {past}"
            progress.step(label)
            times = measure_rounds(fns, options.plan.for_threads(options.threads),
                                   on_block=lambda done, total: progress.advance(label, done, total))
            for name in fns:
                acc = None if name == baseline or baseline not in logits else accuracy_of(
                    logits[baseline][:, -1], logits[name][:, -1], reference=baseline, output="logits (last token)")
                measurements.append(Measurement.from_rounds(name, batch, seq, times[name], acc,
                                                            phase=phase, past=past))
    finally:
        for runner in runners.values():
            runner.deactivate()
    notes += [f"{name} left out of {len(where)} of {len(cases)} cases ({', '.join(where)}): {why}"
              for name, (why, where) in failed.items()]
    ort_names = [n for n in names if n not in genai_models]
    settings = {"backends": names, "batch_sizes": list(batches), "prompt_lengths": list(prompts),
                "past_lengths": list(pasts), "warmup": options.plan.warmup,
                "min_iterations": options.plan.min_iterations, "min_seconds": options.plan.min_seconds,
                "interleaved_blocks": options.plan.block,
                "torch": "transformers model with a DynamicCache, cropped to the past length after each step",
                "inputs": "random token ids and random past tensors, seeded; the same for every row"}
    if options.peak_memory:
        settings["peak_memory"] = memory.WHAT
    if builds:
        settings["genai"] = {"what": genai_builds.WHAT, "version": genai_builds.version(),
                             "builds": {b.name: b.to_json() for b in builds}}
    return BenchReport(
        model=manifest.source.get("name") or manifest.source.get("model", str(artifact.folder)),
        variant_files={**variant_files(artifact, ort_names),
                       **{b.name: str(b.model.relative_to(artifact.folder.resolve())) for b in builds}},
        budgets=variant_budgets(artifact, ort_names),
        environment=Environment.collect(threads=options.threads, spin=options.spin, versions=_versions(builds)),
        settings=settings,
        measurements=tuple(measurements),
        baseline=baseline,
        file_bytes={n: file_bytes(artifact, n, reference_model=options.reference_model,
                                  genai_model=genai_models.get(n)) for n in names},
        peak_memory={n: peak[n] for n in names if n in peak},
        judged={n: j for n in ort_names if (j := judged(artifact, n)) is not None},
        notes=tuple(notes),
    )


def _genai_place(names: list[str], precision: str) -> int:
    """Where the builder's row of ``precision`` goes: after the last benched row of that precision."""
    def matches(name: str) -> bool:
        if name.startswith(genai_builds.PREFIX):
            return name == genai_builds.PREFIX + precision
        record = backend(name)
        same = record.precision == precision and record.runtime == "onnxruntime"
        return same and (precision == "fp32" or record.builder == WEIGHT_ONLY)

    places = [i for i, n in enumerate(names) if matches(n)]
    return places[-1] + 1 if places else len(names)


def _versions(builds) -> dict:
    versions = library_versions()
    if builds:
        versions["onnxruntime-genai"] = genai_builds.version()
    return versions
