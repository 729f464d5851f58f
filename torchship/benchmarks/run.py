"""Benchmark backends on an exported folder (encoders and UNets) at one or more input shapes.

Shapes are named axis sizes (``{"batch": 1, "sequence": 128}``), from flags, from the shape config
the folder was exported with (its ``use`` shape), or the family's defaults; the family's spec turns
them into inputs, so the harness knows nothing of any one family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from torchship import _progress
from torchship._ort import usable_cpus
from torchship.artifact import Artifact, library_versions
from torchship.benchmarks.image_preprocess import PHASE, PREPROCESS, image_preprocessing
from torchship.benchmarks.results import Accuracy, BenchReport, Environment, Measurement
from torchship.benchmarks.timing import TimingPlan, measure_rounds
from torchship.compare import rowwise_cosine
from torchship.errors import InputError
from torchship.exporters.spec import BATCH, DECODE, SEQUENCE, family_of, saved_config
from torchship.runtimes import RuntimeOptions, create_predictor


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] | None = None  # None: eager PyTorch and every variant in the folder (folder_backends)
    shapes: tuple[tuple[int, int], ...] | None = None  # encoders: (batch, sequence) pairs
    sizes: tuple[dict, ...] | None = None  # any family: named axis sizes; None: shapes, else bench_sizes()
    device: str = "cpu"
    threads: int = field(default_factory=usable_cpus)
    spin: str = "run"
    plan: TimingPlan = TimingPlan()
    reference_model: str | None = None
    seed: int = 0


def accuracy_of(ref: np.ndarray, got: np.ndarray, *, reference: str, output: str) -> Accuracy:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    cos = rowwise_cosine(ref, got)
    return Accuracy(reference, output, float(diff.max()), float(diff.mean()),
                    float(cos.min()), float(cos.mean()))


def bench_sizes(spec, config, resolved=None, *, batch_sizes=None, seq_lens=None) -> tuple[dict, ...]:
    """The shapes to measure: a resolved shape config's ``use`` shape, else the family's defaults;
    ``batch_sizes`` and ``seq_lens`` (from flags) replace the batch and sequence axes."""
    base = (resolved.sizes("use"),) if resolved is not None else tuple(spec.bench_sizes(config))
    if batch_sizes:
        base = tuple({**b, BATCH: n} for b in base for n in batch_sizes)
    if seq_lens:
        base = tuple({**b, SEQUENCE: n} for n in seq_lens for b in base)
    unique = []
    for sizes in base:
        if sizes not in unique:
            unique.append(sizes)
    return tuple(unique)


def _cases(spec, config, opts: BenchOptions, artifact: Artifact) -> list:
    if opts.threads < 1:
        raise InputError(f"--threads must be 1 or more, got {opts.threads}")
    if opts.sizes is not None:
        sizes = opts.sizes
    elif opts.shapes is not None:
        sizes = tuple({BATCH: b, SEQUENCE: s} for b, s in opts.shapes)
    else:
        sizes = bench_sizes(spec, config, artifact.manifest.resolved_shapes())
    if not sizes or any(v < 1 for sz in sizes for k, v in sz.items() if k in (BATCH, SEQUENCE)):
        raise InputError(f"benchmark shapes must have positive batch and sequence sizes, got {list(sizes)}")
    return [spec.case_for(sz, config) for sz in sizes]


def run_benchmark(folder, options: BenchOptions = BenchOptions(), *,
                  progress: _progress.Progress = _progress.SILENT) -> BenchReport:
    artifact = Artifact.open(folder)
    manifest = artifact.manifest
    spec = family_of(manifest)
    if DECODE in spec.phases:
        raise InputError(f"{artifact.folder} holds {spec.group.one}; benchmark it with run_decoder_benchmark "
                         "(torchship bench picks it for decoders)")
    config = saved_config(artifact)
    cases = _cases(spec, config, options, artifact)
    io = manifest.io()
    runtime = RuntimeOptions(threads=options.threads, spin=options.spin, reference_model=options.reference_model,
                             device=options.device)
    backends = options.backends or folder_backends(artifact)
    # Creating a predictor loads nothing; a missing variant fails here, before anything runs.
    predictors = {b: create_predictor(artifact, b, runtime) for b in backends}
    for name, p in predictors.items():
        progress.step(f"loading {name}")
        p.activate()
    reference = "torch" if "torch" in predictors else backends[0]
    main_output = manifest.output_names[0]
    phase = spec.phases[0]
    prep = image_preprocessing(artifact, spec)  # images: the processor's own cost, on a row of its own
    measurements = []
    dispatched: dict[str, list[str]] = {}  # ort-measured: the file it ran at each shape
    try:
        for i, case in enumerate(cases, 1):
            feeds = spec.sample_inputs(config, io, case, seed=options.seed + i)
            outputs = {name: p.infer(feeds)[main_output] for name, p in predictors.items()}
            for name, p in predictors.items():
                if getattr(p, "last_variant", None):
                    tuning = getattr(p, "last_session", None)
                    dispatched.setdefault(name, []).append(
                        f"{case.label()}: {artifact.variant(p.last_variant).file}"
                        + (f" ({tuning})" if tuning and tuning != "default" else ""))
            label = f"[{i}/{len(cases)}] {case.label()}"
            progress.step(label)
            runs = {name: (lambda p=p: p.infer(feeds)) for name, p in predictors.items()}
            if prep is not None:
                runs[PREPROCESS] = prep.runner(case.batch)
            times = measure_rounds(
                runs, options.plan.for_threads(options.threads),
                on_block=lambda done, total: progress.advance(label, done, total))
            for name in predictors:
                acc = None if name == reference else accuracy_of(
                    outputs[reference], outputs[name], reference=reference, output=main_output)
                measurements.append(Measurement.from_rounds(name, case.batch, case.sequence, times[name], acc,
                                                            phase=phase, shape=case.label()))
            if prep is not None:
                measurements.append(Measurement.from_rounds(PREPROCESS, case.batch, case.sequence, times[PREPROCESS],
                                                            phase=PHASE, shape=prep.shape(case.batch)))
    finally:
        for p in predictors.values():
            p.deactivate()
    return BenchReport(
        model=manifest.source.get("name") or manifest.source.get("model", str(artifact.folder)),
        variant_files={**variant_files(artifact, backends), **{n: "; ".join(v) for n, v in dispatched.items()}},
        budgets=variant_budgets(artifact, backends),
        environment=Environment.collect(threads=options.threads, spin=options.spin, versions=library_versions()),
        settings={"backends": list(backends), "shapes": [c.label() for c in cases],
                  "device": options.device, "warmup": options.plan.warmup,
                  "min_iterations": options.plan.min_iterations, "min_seconds": options.plan.min_seconds,
                  "interleaved_blocks": options.plan.block, "inputs": spec.bench_inputs,
                  **({"preprocess": prep.describe()} if prep is not None else {})},
        measurements=tuple(measurements),
        baseline=reference,
    )


def folder_backends(artifact: Artifact) -> tuple[str, ...]:
    """What bench times when no --backends are given: eager PyTorch, the backend of every variant in the folder
    (int8, fp16, approximate and other-kernel ones included) and, with optimize's dispatch table, ort-measured,
    which predict's auto may run; those the family cannot run are left out."""
    from torchship.backends import backend, backend_of_variant

    spec = family_of(artifact.manifest)
    names = ["torch"]
    for variant in artifact.manifest.variants:
        try:
            names.append(backend_of_variant(variant).name)
        except InputError:  # a variant no CPU backend runs on its own
            continue
    if artifact.manifest.dispatch and artifact.manifest.dispatch.ranges:
        names.append("ort-measured")
    return tuple(n for n in dict.fromkeys(names) if not spec.backend_problem(backend(n)))


def variant_files(artifact: Artifact, backends) -> dict[str, str]:
    """The file each backend ran, for the report (backends that bring their own model have none)."""
    return {name: variant.file for name in backends if (variant := artifact.variant_for(name)) is not None}


def variant_budgets(artifact: Artifact, backends) -> dict[str, dict]:
    """For each lower-precision backend, the accuracy its variant measured against the fp32 model when it
    was made, with the budget it was held to (int8, fp16): what the report shows beside its speed."""
    out = {}
    for name in backends:
        variant = artifact.variant_for(name)
        validation = variant.validation if variant is not None else None
        accuracy = validation.accuracy if validation else None
        if accuracy is not None:
            out[name] = {"metric": accuracy.metric, "mean": accuracy.mean, "min": accuracy.min,
                         "budget": accuracy.budget, "passed": validation.passed}
    return out
