"""optimize on a folder of several graphs (an image-text model's ``text`` and ``vision`` towers).

Each graph is optimized as a one-graph folder's file is (ORT's graph levels; ONNX Runtime's transformer optimizer
with the family's model type, ``clip``, and each tower's own heads and width, attention counted per graph) and
validated alone against the export's reference for that graph; a variant holds the same graphs as the export
(``text_model_optimized.onnx`` beside ``text_model.onnx``). Then each graph's fp32 variants are timed at the
family's shapes for it (``graph_cases``: image batches 1, 8, 32; text batches of 16-token prompts) and the winner
rule names one per shape; the variant with the most wins runs the graph (``Manifest.graph_dispatch``). One
variant per graph, not a table per shape: a table's ranges and session tunings are a one-graph folder's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from torchship import _progress
from torchship._ort import make_session
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.backends import Backend, backend_of_variant, preference_order, records
from torchship.compare import ComparisonReport
from torchship.dispatch_table import GraphChoice
from torchship.errors import ValidationError
from torchship.exporters.spec import family_of, saved_config
from torchship.external_data import staged_model, uses_external_data
from torchship.manifest_sections import BuildOptions, FusionRecord, Graph
from torchship.optimizers.builders import summary
from torchship.optimizers.fusion import count_ops, fuse, save_graph_level
from torchship.validation import check, run_reference_cases

EXPORT = "model"


def several_graphs(artifact: Artifact) -> bool:
    """Whether the folder's export is a variant of several graphs (the steps here, not the one-graph ones)."""
    export = artifact.manifest.variants.get(EXPORT)
    return bool(export is not None and export.graphs)


def tower_file(graph_file: str, variant: str) -> str:
    """The file of a graph of an optimized variant: ``text_model.onnx`` -> ``text_model_optimized.onnx``."""
    return f"{Path(graph_file).stem}_{variant.replace('-', '_')}.onnx"


def graph_cases(artifact: Artifact, graph: str):
    """The export's reference cases of one graph (towers.py labels them ``graph: shape``)."""
    return [c for c in load_reference(artifact.folder) if c.label.startswith(f"{graph}: ")]


def tower_records(opts) -> tuple[list[Backend], dict[str, str]]:
    """(the records whose variants this run makes per graph, {variant: why not} for those asked and not made)."""
    made, not_made = [], {}
    for record in records():
        if record.builder is None or record.precision not in ("fp32", "fp16") or \
                (record.command != "optimize" and opts.backends is None):
            continue
        if opts.backends is not None and record.name not in opts.backends:
            continue
        name = record.variants[0]
        if record.graph_level is not None:
            if opts.backends is not None or record.graph_level in opts.levels:
                made.append(record)
        elif record.fused and not (record.measured_only or record.approximate_gelu) and record.device == "cpu":
            if opts.transformer_fusion or opts.backends is not None:
                made.append(record)
        elif opts.backends is not None or (record.precision == "fp16" and opts.fp16) or \
                (record.runtime == "openvino" and opts.openvino):
            not_made[name] = "not made for a folder of several graphs (text and vision) yet"
    levels = list(opts.levels)
    made.sort(key=lambda b: levels.index(b.graph_level) if b.graph_level in levels else len(levels))
    return made, not_made


def optimize_towers(artifact: Artifact, opts, progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """optimize's run on a folder of several graphs (``optimize`` calls it): every asked fp32 variant made per
    graph and validated per graph, then each graph's variant measured (``opts.dispatch``; None: none)."""
    m = artifact.manifest
    export = m.variants[EXPORT]
    for g in export.graphs:
        make_session(artifact.folder / g.file)  # a corrupted export fails here, before anything is written
    made, not_made = tower_records(opts)
    asked_error = None
    for i, record in enumerate(made, 1):
        name = record.variants[0]
        progress.step(f"[{i}/{len(made)}] {name} (graphs {', '.join(g.name for g in export.graphs)})")
        try:
            variant = _make(artifact, record, opts, progress)
            artifact.manifest = artifact.manifest.with_variant(variant)
        except record.skips as exc:
            progress.step(f"WARNING: {name} skipped: {exc}")
            artifact.manifest = artifact.manifest.with_skipped(name, str(exc))
        except ValidationError as exc:
            asked_error = exc
            artifact.manifest = artifact.manifest.with_skipped(name, str(exc))
        artifact.save(artifact.manifest)
    for name, why in not_made.items():
        progress.step(f"note: {name} {why}")
        artifact.save(artifact.manifest.with_skipped(name, why))
    if opts.dispatch is not None and opts.candidates == "measured":
        choices = measure_graphs(artifact, opts.dispatch, progress)
        artifact.save(replace(artifact.manifest, graph_dispatch=choices or None))
    if asked_error is not None:
        raise asked_error
    return artifact


def _make(artifact: Artifact, record: Backend, opts, progress) -> Variant:
    """One variant of every graph of the export, each graph validated alone."""
    m, folder, name = artifact.manifest, artifact.folder, record.variants[0]
    spec, config = family_of(m), saved_config(artifact)
    atol = opts.atol or m.atol
    start = time.perf_counter()
    graphs, reports, fusions = [], [], []
    options = BuildOptions(level=record.graph_level, session_level=record.graph_level)
    for g in m.variants[EXPORT].graphs:
        src = folder / g.file
        cases = graph_cases(artifact, g.name)
        path = src if record.graph_level == "disabled" else folder / tower_file(g.file, name)
        fusion = None
        if path == src:
            report = run_reference_cases(path, cases, atol=atol, spec=spec)
        else:
            with staged_model(path) as tmp:
                if record.graph_level is not None:
                    save_graph_level(src, tmp, record.graph_level)
                else:
                    settings = spec.graph_fusion(config, g.name)
                    fused = fuse(src, tmp, model_type=m.ort_model_type, hint=spec.fusion_hint,
                                 external_data=uses_external_data(src), **settings)
                    if fused.warning:
                        progress.step(f"{g.name}: {fused.warning}")
                    fusion = FusionRecord.from_json(fused.to_json())
                    options = BuildOptions(model_type=m.ort_model_type, extra={"per_graph": "graphs[].fusion"})
                report = run_reference_cases(tmp, cases, atol=atol, spec=spec)
                check(report, what=f"the {name} variant's {g.name} graph")  # before the file takes its place
        check(report, what=f"the {name} variant's {g.name} graph")
        reports.append(report)
        fusions.append(fusion)
        graphs.append(Graph(g.name, path.name, g.inputs, g.outputs, summary(report),
                            fusion or FusionRecord(count_ops(path))))
    return Variant(name=name, file=graphs[0].file, stage="ort-graph" if record.graph_level else "transformer-fusion",
                   options=options, size_bytes=sum(model_bytes(folder / g.file) for g in graphs),
                   seconds=round(time.perf_counter() - start, 3),
                   validation=summary(ComparisonReport(tuple(i for r in reports for i in r.items))),
                   fusion=_whole(fusions), graphs=tuple(graphs))


def _whole(fusions: list[FusionRecord | None]) -> FusionRecord | None:
    """The variant's fusion: attention summed over its graphs (each graph's own is in ``graphs[].fusion``)."""
    if any(f is None for f in fusions):
        return None
    counts: dict[str, int] = {}
    for f in fusions:
        for op, n in f.counts.items():
            counts[op] = counts.get(op, 0) + n
    attention, expected = sum(f.attention or 0 for f in fusions), sum(f.expected_attention or 0 for f in fusions)
    warnings = [f.warning for f in fusions if f.warning]
    return FusionRecord(counts, attention, expected, attention >= expected, "; ".join(warnings) or None)


def fp32_variants(artifact: Artifact) -> list[str]:
    """The folder's validated fp32 variants of several graphs, in preference order, one per distinct set of files
    and session level (ort-disabled's files are the export's, run without ORT's optimizations)."""
    m = artifact.manifest
    order = [*preference_order(), *m.variants]
    seen, out = set(), []
    for name in dict.fromkeys(order):
        v = m.variants.get(name)
        if v is None or not v.graphs or v.stage == "quantization" or not (v.validation and v.validation.passed):
            continue
        key = (tuple(g.file for g in v.graphs), v.options.session_level or "all")
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def measure_graphs(artifact: Artifact, plan, progress: _progress.Progress) -> dict[str, GraphChoice]:
    """Each graph's fp32 variants timed together (interleaved rounds) at the family's shapes for it; the winner rule
    per shape; the variant with the most wins (ties: the preference order) runs the graph."""
    from torchship.benchmarks.timing import TimingPlan, call_stats, cpu_name, measure_rounds, winner

    names = fp32_variants(artifact)
    if len(names) < 2:
        return {}
    m = artifact.manifest
    spec, config = family_of(m), saved_config(artifact)
    timing = TimingPlan(warmup=plan.warmup, min_iterations=plan.min_rounds, min_seconds=plan.seconds / len(names),
                        max_iterations=max(plan.max_rounds, plan.min_rounds), block=1, pause_s=0.0)
    out = {}
    for g in m.variants[EXPORT].graphs:
        from torchship.tensors import ModelIO

        io = ModelIO(g.inputs, g.outputs)
        sessions = {n: _session(artifact, n, g.name, plan.threads) for n in names}
        rows, wins = [], {n: 0 for n in names}
        for i, case in enumerate(spec.graph_cases(config, g.name)):
            feeds = spec.sample_inputs(config, io, case, seed=11 + i)
            shape = _label(g.name, case)
            progress.step(f"timing {len(names)} variants of the {g.name} graph at {shape}")
            rounds = measure_rounds({n: (lambda s=s: s.run(None, feeds)) for n, s in sessions.items()}, timing)
            stats = {n: call_stats(rounds[n]) for n in names}
            best = winner(stats, tuple(names), plan.margin)[0]
            wins[best] += 1
            rows.append({"shape": shape, "batch": case.batch, "sequence": case.sequence if g.name != "vision" else 0,
                         "median_ms": {n: round(s["median_ms"], 4) for n, s in stats.items()}, "winner": best})
        chosen = max(names, key=lambda n: (wins[n], -names.index(n)))
        progress.step(f"{g.name}: {chosen} ({wins[chosen]} of {len(rows)} shapes)")
        out[g.name] = GraphChoice(g.name, chosen, tuple(rows),
                                  rule="the winner rule per shape (benchmarks/timing.py); the most wins runs the "
                                       "graph, ties to the preference order",
                                  machine={"cpu": cpu_name(), "threads": plan.threads})
    return out


def _label(graph: str, case) -> str:
    return f"batch {case.batch} images" if graph == "vision" else f"batch {case.batch} x seq {case.sequence}"


def _session(artifact: Artifact, variant: str, graph: str, threads: int | None):
    v = artifact.variant(variant)
    return make_session(artifact.graph_path(variant, graph), threads=threads, level=v.options.session_level or "all",
                        disabled_optimizers=v.options.disabled_optimizers,
                        fix="re-run " + backend_of_variant(variant).make_command(artifact.folder))

