"""Turn a :class:`BenchReport` into what people read: JSON, a Markdown table, a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from torchship._fs import staged_dir
from torchship.benchmarks.results import BenchReport

RESULTS_NAME = "results.json"


def markdown_table(report: BenchReport) -> str:
    if any(m.phase != "forward" for m in report.measurements):
        return decoder_table(report)
    base = report.baseline
    lines = [
        f"| backend | batch | seq | p50 ms | p90 ms | p99 ms | samples/s | speedup vs {base} | max abs | min cosine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.measurements:
        sp = report.speedup(m)
        acc = m.accuracy
        lines.append(
            f"| {m.backend} | {m.batch} | {m.sequence} | {m.p50_ms:.2f} | {m.p90_ms:.2f} | {m.p99_ms:.2f} | "
            f"{m.throughput:.1f} | {'-' if sp is None else f'{sp:.2f}x'} | "
            f"{'-' if acc is None else f'{acc.max_abs:.2e}'} | {'-' if acc is None else f'{acc.cosine_min:.6f}'} |"
        )
    return "\n".join(lines)


def decoder_table(report: BenchReport) -> str:
    base = report.baseline
    lines = [
        f"| backend | phase | batch | new tokens | past | p50 ms | p90 ms | tokens/s | speedup vs {base} | logits max abs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.measurements:
        sp = report.speedup(m)
        tokens_per_s = m.batch * m.sequence * 1000.0 / m.mean_ms
        acc = m.accuracy
        lines.append(
            f"| {m.backend} | {m.phase} | {m.batch} | {m.sequence} | {m.past} | {m.p50_ms:.2f} | {m.p90_ms:.2f} | "
            f"{tokens_per_s:.1f} | {'-' if sp is None else f'{sp:.2f}x'} | {'-' if acc is None else f'{acc.max_abs:.2e}'} |")
    return "\n".join(lines)


def markdown(report: BenchReport) -> str:
    env = report.environment
    return "\n".join([
        f"# torchship benchmark: {report.model}",
        "",
        f"CPU: {env.cpu} ({env.logical_cpus} logical CPUs); threads for every backend: {env.threads}; "
        f"ORT spinning: {'on' if env.ort_spinning else 'off'}; GPU: {env.gpu or 'none'}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env.versions.items() if k not in ("platform",) and v),
        "",
        f"Latencies are medians (p50) and tails over {report.settings['min_iterations']}+ runs per backend, "
        "backends interleaved in blocks. Accuracy compares the first output with the baseline on the same inputs "
        "(min cosine is per token for hidden states).",
        "",
        markdown_table(report),
        "",
    ])


def plot(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = report.shapes()
    backends = report.backends()
    phased = any(m.phase != "forward" for m in report.measurements)
    width = 0.8 / max(len(backends), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(shapes) + 2), 4.5), dpi=110)
    for j, backend in enumerate(backends):
        xs, ys = [], []
        for i, (b, s) in enumerate(shapes):
            m = report.find(backend, b, s, _phase(report, b, s))
            if m is not None:
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(m.p50_ms)
        bars = ax.bar(xs, ys, width, label=backend)
        for bar, (b, s) in zip(bars, [sh for sh in shapes if report.find(backend, *sh, _phase(report, *sh))]):
            sp = report.speedup(report.find(backend, b, s, _phase(report, b, s)))
            if sp is not None and backend != report.baseline:
                ax.annotate(f"{sp:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(shapes)), [f"{_phase(report, b, s) + ' ' if phased else ''}b{b} s{s}" for b, s in shapes])
    ax.set_ylabel("median latency (ms, lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"{display_name(report.model)}: {report.environment.threads} threads, {report.environment.cpu}"[:90],
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def display_name(model: str) -> str:
    """A hub id as it is; a folder by its last two components (checkpoint folders are often just 'model')."""
    path = Path(model)
    return "/".join(path.parts[-2:]) if path.is_absolute() or len(path.parts) > 2 else model


def _phase(report: BenchReport, batch: int, sequence: int) -> str:
    return next((m.phase for m in report.measurements if (m.batch, m.sequence) == (batch, sequence)), "forward")


def write_report(report: BenchReport, folder: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and latency.png into ``folder``, all or nothing."""
    folder = Path(folder)
    with staged_dir(folder, marker=RESULTS_NAME) as tmp:
        (tmp / RESULTS_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        plot(report, tmp / "latency.png")
    return {"json": folder / RESULTS_NAME, "markdown": folder / "report.md", "png": folder / "latency.png"}
