"""bench on a folder of several graphs (an image-text model): each graph its own phase, ``encode-image`` (the
vision tower on image batches at the processor's size, images/s) and ``encode-text`` (the text tower on batches of
prompts, texts/s), eager PyTorch (``get_image_features`` / ``get_text_features``) against every variant, each
graph run alone through ``create_predictor(..., graph=NAME)``; the image processor's cost on its own row beside
the vision phase, as for one-graph image models."""

from __future__ import annotations

from torchship import _progress
from torchship.artifact import Artifact, library_versions
from torchship.benchmarks.image_preprocess import PHASE, PREPROCESS, ImagePreprocessing
from torchship.benchmarks.results import BenchReport, Environment, Measurement
from torchship.benchmarks.timing import measure_rounds
from torchship.exporters.spec import BATCH, SEQUENCE, family_of, saved_config
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.tensors import ModelIO

TEXT_TOKENS = 16  # a prompt's length ("a photo of a dog." is under 10 tokens)


def tower_cases(spec, config, graph: str, sizes) -> list:
    """The cases of one graph: the batches asked (images at the model's size; prompts of the sequence asked, else
    TEXT_TOKENS, at most the model's positions)."""
    cap = spec.max_positions(config)
    return [spec.case_for({BATCH: s[BATCH], SEQUENCE: min(s.get(SEQUENCE, TEXT_TOKENS), cap)}, config) for s in sizes]


def run_towers_benchmark(artifact: Artifact, options, backends: tuple[str, ...], sizes, accuracy_of,
                         progress: _progress.Progress = _progress.SILENT) -> BenchReport:
    """``run_benchmark``'s run on a folder of several graphs (it calls this, with its ``accuracy_of``)."""
    from torchship.exporters.image_text import PHASE_OF, VISION
    from torchship.runtimes.images import image_settings

    m = artifact.manifest
    spec, config = family_of(m), saved_config(artifact)
    runtime = RuntimeOptions(threads=options.threads, spin=options.spin, reference_model=options.reference_model,
                             device=options.device)
    reference = "torch" if "torch" in backends else backends[0]
    prep = ImagePreprocessing(image_settings(artifact)) if (artifact.folder / "preprocessor_config.json").is_file() \
        else None
    measurements, shapes, files = [], [], {}
    for g in m.variants["model"].graphs:
        io, phase, out = ModelIO(g.inputs, g.outputs), PHASE_OF[g.name], g.outputs[0].name
        predictors = {b: create_predictor(artifact, b, runtime, graph=g.name) for b in backends}
        try:
            for name, p in predictors.items():
                progress.step(f"loading {name} ({g.name})")
                p.activate()
            for i, case in enumerate(tower_cases(spec, config, g.name, sizes), 1):
                feeds = spec.sample_inputs(config, io, case, seed=options.seed + i)
                outputs = {name: p.infer(feeds)[out] for name, p in predictors.items()}
                shape = f"batch {case.batch} images" if g.name == VISION else case.label()
                shapes.append(f"{phase}: {shape}")
                label = f"[{phase}] {shape}"
                progress.step(label)
                runs = {name: (lambda p=p: p.infer(feeds)) for name, p in predictors.items()}
                if prep is not None and g.name == VISION:
                    runs[PREPROCESS] = prep.runner(case.batch)
                times = measure_rounds(runs, options.plan.for_threads(options.threads),
                                       on_block=lambda done, total: progress.advance(label, done, total))
                sequence = 0 if g.name == VISION else case.sequence
                for name in predictors:
                    acc = None if name == reference else accuracy_of(outputs[reference], outputs[name],
                                                                     reference=reference, output=out)
                    measurements.append(Measurement.from_rounds(name, case.batch, sequence, times[name], acc,
                                                                phase=phase, shape=shape))
                if PREPROCESS in runs:
                    measurements.append(Measurement.from_rounds(PREPROCESS, case.batch, 0, times[PREPROCESS],
                                                                phase=PHASE, shape=prep.shape(case.batch)))
            for name, p in predictors.items():
                path = getattr(p, "path", None)
                if path is not None:
                    files[name] = "; ".join(filter(None, (files.get(name), f"{g.name}: {path.name}")))
        finally:
            for p in predictors.values():
                p.deactivate()
    return BenchReport(
        model=m.source.get("name") or m.source.get("model", str(artifact.folder)),
        variant_files=files, budgets={},
        environment=Environment.collect(threads=options.threads, spin=options.spin, versions=library_versions()),
        settings={"backends": list(backends), "shapes": shapes, "device": options.device,
                  "warmup": options.plan.warmup, "min_iterations": options.plan.min_iterations,
                  "min_seconds": options.plan.min_seconds, "interleaved_blocks": options.plan.block,
                  "inputs": spec.bench_inputs, "graphs": {g.name: PHASE_OF[g.name] for g in m.variants["model"].graphs},
                  **({"preprocess": prep.describe()} if prep is not None else {})},
        measurements=tuple(measurements), baseline=reference)

