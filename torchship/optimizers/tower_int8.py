"""quantize --int8 on a folder of several graphs (an image-text model's ``text`` and ``vision`` towers).

Each tower is quantized as the text path's dynamic int8 (weights int8 per channel, activations per row:
``int8_rows.py``, so an image's or a text's embedding does not depend on the rest of its batch) and judged against
its fp32 export: the mean embedding cosine on held-out inputs (generated photos through the checkpoint's image
processor, of another seed than calibration's; the package's sentences through the folder's tokenizer), the
budget a floor on it for each tower; zero-shot top-1 agreement (each held-out image against the first sentences
as labels, fp32 towers against int8 towers) is recorded beside it. Batch independence: an input alone against the
same input beside a full-range noise image (a 200-word text). Both towers within budget: the ``int8`` variant of
two graphs is kept; else nothing is, the measures recorded and the command fails naming the tower.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from torchship import _progress
from torchship._fs import scratch_dir
from torchship._ort import ort_runner
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.compare import rowwise_cosine
from torchship.errors import BudgetError, InputError
from torchship.exporters.spec import family_of, saved_config
from torchship.external_data import normalize, staged_model
from torchship.manifest_sections import Accuracy, BuildOptions, FusionRecord, Graph, QuantizationRecord, Validation
from torchship.optimizers.accuracy import BATCH_FLOOR
from torchship.optimizers.fusion import op_histogram
from torchship.optimizers.int8_candidates import Candidate, build
from torchship.optimizers.towers import EXPORT, tower_file
from torchship.validation import run_reference_cases

VARIANT = "int8"
PROBE_TEXTS = 48
LABELS = 8  # zero-shot: the first sentences are the labels each held-out image is scored against
SPEED_BATCH = 8


def probe_inputs(artifact: Artifact) -> dict[str, dict[str, np.ndarray]]:
    """Held-out feeds per graph: generated photos preprocessed by the folder's processor; the package's sentences
    tokenized as predict tokenizes prompts (the manifest's zero-shot padding)."""
    from PIL import Image

    from torchship.exporters.image_text import ZeroShotSettings
    from torchship.optimizers.accuracy import DEFAULT_TEXTS, read_texts
    from torchship.optimizers.image_samples import GENERATED_SIZE, PROBE_IMAGES, PROBE_SEED, generated_images
    from torchship.processing.image import preprocess
    from torchship.runtimes.images import image_settings
    from torchship.runtimes.text import load_tokenizer

    settings = image_settings(artifact)
    pixels = preprocess([Image.fromarray(a) for a in generated_images(PROBE_IMAGES, seed=PROBE_SEED,
                                                                      size=GENERATED_SIZE)], settings)
    text = ZeroShotSettings.from_json(artifact.manifest.text)
    enc = load_tokenizer(artifact)(read_texts(DEFAULT_TEXTS, what="evaluation text file")[:PROBE_TEXTS], padding=text.padding, truncation=True,
                                   max_length=text.max_length, return_tensors="np")
    return {"vision": {"pixel_values": pixels},
            "text": {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in ("input_ids", "attention_mask")}}


def _rows(feeds: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in feeds.items()}


def _loud(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One input beside which a per-tensor activation scale would move a quiet one's answer: full-range noise (an
    image), a text of every token id at full length (a text)."""
    rng = np.random.default_rng(3)
    if graph == "vision":
        x = feeds["pixel_values"]
        return {"pixel_values": rng.uniform(float(x.min()), float(x.max()), (1, *x.shape[1:])).astype(np.float32)}
    return _rows(feeds, slice(0, 1)) | {"input_ids": np.maximum(feeds["input_ids"][:1], 1)}


def batch_cosine(run, graph: str, feeds: dict[str, np.ndarray], output: str) -> float:
    """The worst cosine between four inputs run alone and the same four in one batch with a loud one."""
    together = {k: np.concatenate([v[:4], _loud(graph, feeds)[k]]) for k, v in feeds.items()}
    both = run(together)[output][:4]
    alone = np.concatenate([run(_rows(feeds, slice(i, i + 1)))[output] for i in range(4)])
    return float(rowwise_cosine(alone, both).min())


def quantize_towers(artifact: Artifact, options, progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """quantize --int8's run on a folder of several graphs (``quantize`` calls it)."""
    from torchship.benchmarks.timing import TimingPlan, call_stats, cpu_name, measure_rounds

    started = time.perf_counter()
    m = artifact.manifest
    if options.methods != ("dynamic",) and "dynamic" not in options.methods:
        raise InputError("an image-text folder is quantized with dynamic int8 per row (activations per text and "
                         "per image); drop --method static")
    if "static" in options.methods:
        progress.step("an image-text folder gets dynamic int8 only (per row, one candidate per tower); static "
                      "int8 is not tried on towers")
    graphs = m.variants[EXPORT].graphs
    probes = probe_inputs(artifact)
    per_channel = options.per_channel[0] if options.per_channel else True
    candidate = Candidate("dynamic", EXPORT, per_channel=per_channel, reduce_range=False, op_types=("MatMul",),
                          exclude=())
    spec, config = family_of(m), saved_config(artifact)
    trials, made, embeds = [], {}, {}
    with scratch_dir(artifact.folder, "int8") as scratch:
        for g in graphs:
            src, out = artifact.folder / g.file, g.outputs[0].name
            dst = scratch / tower_file(g.file, VARIANT)
            progress.step(f"[{g.name}] {candidate.name}")
            start = time.perf_counter()
            build(candidate, src, dst, calibration=None, calibration_method="minmax", scratch=scratch)
            built_s = time.perf_counter() - start
            fp32, int8 = ort_runner(src, threads=options.threads), ort_runner(dst, threads=options.threads)
            feeds = probes[g.name]
            ref, got = fp32(feeds)[out], int8(feeds)[out]
            embeds[g.name] = (ref, got)
            cos = rowwise_cosine(ref, got)
            floor = min(BATCH_FLOOR, batch_cosine(fp32, g.name, feeds, out))
            batch = batch_cosine(int8, g.name, feeds, out)
            independent = batch >= floor
            passed = bool(float(cos.mean()) >= options.budget and independent)
            io_case = spec.graph_cases(config, g.name)[1]  # batch 8: the speed shape
            from torchship.tensors import ModelIO

            speed_feeds = spec.sample_inputs(config, ModelIO(g.inputs, g.outputs), replace(io_case, batch=SPEED_BATCH),
                                             seed=7)
            rounds = measure_rounds({"fp32": lambda: fp32(speed_feeds), "int8": lambda: int8(speed_feeds)},
                                    options.timing.for_threads(options.threads))
            fp32_ms, int8_ms = (call_stats(rounds[k])["median_ms"] for k in ("fp32", "int8"))
            accuracy = Accuracy("embedding_cosine", float(cos.mean()), float(cos.min()), len(cos), options.budget,
                                passed, batch, floor, independent)
            verdict = "within budget" if passed else "BELOW BUDGET" if independent else "DEPENDS ON ITS BATCH"
            progress.step(f"    {accuracy.describe()} {verdict}; {fp32_ms / int8_ms:.2f}x fp32")
            trials.append({**candidate.to_json(), "name": f"{g.name}: {candidate.name}", "graph": g.name,
                           "accuracy": accuracy.to_json(), "p50_ms": round(int8_ms, 3), "fp32_p50_ms": round(fp32_ms, 3),
                           "speedup_vs_fp32": round(fp32_ms / int8_ms, 3), "passed": passed, "error": None,
                           "build_s": round(built_s, 2), "verdict": verdict,
                           "shape": f"batch {SPEED_BATCH}" + (" images" if g.name == "vision" else
                                                              f" x seq {io_case.sequence}")})
            made[g.name] = (dst, accuracy)
        agreement = _zero_shot_agreement(embeds)
        for t in trials:
            t["zero_shot_top1_agreement"] = agreement
        failed = [t for t in trials if not t["passed"]]
        if failed:
            why = "; ".join(f"the {t['graph']} tower's {t['accuracy']['metric']} mean "
                            f"{t['accuracy']['mean']:.4f} (budget {options.budget:g})"
                            + ("" if t["accuracy"].get("batch_independent") else ", its answers depend on the batch")
                            for t in failed)
            manifest = artifact.manifest.with_skipped(VARIANT, f"int8 below budget: {why}")
            artifact.save(replace(manifest, quantization=QuantizationRecord.from_json(
                {"chosen": None, "candidates": trials, "fallback": None})))
            raise BudgetError(f"no int8 model kept: {why}; zero-shot top-1 agreement {agreement:.4f}. The numbers are "
                              f"in {artifact.folder}/torchship.json; lower --budget to keep it")
        kept = []
        reference = load_reference(artifact.folder)
        for g in graphs:
            dst, accuracy = made[g.name]
            final = artifact.folder / tower_file(g.file, VARIANT)
            with staged_model(final) as tmp:
                normalize(dst, tmp, "auto")
                cases = [c for c in reference if c.label.startswith(f"{g.name}: ")]
                against = run_reference_cases(tmp, cases, atol=float("inf"), spec=spec)
            kept.append(Graph(g.name, final.name, g.inputs, g.outputs, Validation.from_json(
                {**accuracy.to_json(), "passed": True, "max_abs": against.max_abs, "min_cosine": against.min_cosine,
                 "against": "fp32 export (accuracy); eager PyTorch (max_abs)"}), FusionRecord(op_histogram(final))))
    worst = min((made[g.name][1] for g in graphs), key=lambda a: a.mean)
    worst = replace(worst, extra={"zero_shot_top1_agreement": agreement, "towers": "the worst tower's"})
    speedups = {t["graph"]: t["speedup_vs_fp32"] for t in trials}
    variant = Variant(name=VARIANT, file=kept[0].file, stage="quantization", options=BuildOptions.from_json(
        {**candidate.to_json(), "precision": "int8", "activations": "per-row", "speedup_vs_fp32": min(speedups.values()),
         "speedup_per_graph": speedups, "zero_shot_top1_agreement": agreement,
         "shape": "; ".join(f"{t['graph']}: {t['shape']}" for t in trials), "search_s": round(time.perf_counter() - started, 1),
         "machine": {"cpu": cpu_name()}}),
        size_bytes=sum(model_bytes(artifact.folder / g.file) for g in kept), validation=Validation.from_json(
            {**worst.to_json(), "passed": True, "max_abs": max(g.validation.max_abs for g in kept),
             "min_cosine": min(g.validation.min_cosine for g in kept)}), graphs=tuple(kept))
    chosen = " + ".join(t["name"] for t in trials)
    for t in trials:
        t["verdict"] = "kept: within budget"
    artifact.save(replace(artifact.manifest.with_variant(variant), quantization=QuantizationRecord.from_json(
        {"chosen": chosen, "candidates": trials, "fallback": None})))
    return artifact


def _zero_shot_agreement(embeds: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """How often an image's best label (of the first LABELS texts) is the same from the int8 towers as from fp32."""
    (image_ref, image_got), (text_ref, text_got) = embeds["vision"], embeds["text"]

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    best_ref = (unit(image_ref) @ unit(text_ref[:LABELS]).T).argmax(-1)
    best_got = (unit(image_got) @ unit(text_got[:LABELS]).T).argmax(-1)
    return float((best_ref == best_got).mean())
