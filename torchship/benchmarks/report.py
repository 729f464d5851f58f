"""Turn a :class:`BenchReport` into what people read: JSON, a Markdown table, a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from torchship._fs import staged_dir
from torchship.benchmarks.results import BenchReport

RESULTS_NAME = "results.json"


def markdown_table(report: BenchReport) -> str:
    if any(m.phase in ("prefill", "decode") for m in report.measurements):
        return decoder_table(report)
    if any(m.phase in ("denoise", "step") for m in report.measurements):  # "step": reports before 0.2
        return step_table(report)
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


def step_table(report: BenchReport) -> str:
    """UNets: one denoising step per row, its input shape spelled out."""
    base = report.baseline
    lines = [f"| backend | inputs | p50 ms | p90 ms | samples/s | speedup vs {base} | max abs | cosine |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in report.measurements:
        sp = report.speedup(m)
        acc = m.accuracy
        lines.append(
            f"| {m.backend} | {m.shape} | {m.p50_ms:.1f} | {m.p90_ms:.1f} | {m.throughput:.2f} | "
            f"{'-' if sp is None else f'{sp:.2f}x'} | {'-' if acc is None else f'{acc.max_abs:.2e}'} | "
            f"{'-' if acc is None else f'{acc.cosine_min:.6f}'} |")
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
        "(min cosine is per row of the last axis: per token for hidden states).",
        "",
        markdown_table(report),
        "",
    ])


def plot(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = report.keys()
    backends = report.backends()
    width = 0.8 / max(len(backends), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(keys) + 2), 4.5), dpi=110)
    for j, backend in enumerate(backends):
        for i, key in enumerate(keys):
            m = report.at(backend, key)
            if m is None:
                continue
            bar = ax.bar([i + (j - (len(backends) - 1) / 2) * width], [m.p50_ms], width,
                         label=backend, color=f"C{j}")[0]
            sp = report.speedup(m)
            if sp is not None and backend != report.baseline:
                ax.annotate(f"{sp:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.set_xticks(range(len(keys)), [_tick(k) for k in keys])
    ax.set_ylabel("median latency (ms, lower is better)")
    values = [m.p50_ms for m in report.measurements]
    if values and max(values) > 10 * min(values):  # shapes of very different cost: log scale
        ax.set_yscale("log")
    ax.set_title(f"{display_name(report.model)}: {report.environment.threads} threads, {report.environment.cpu}"[:90],
                 fontsize=9)
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def display_name(model: str) -> str:
    """A hub id as it is; a folder by its last two components (checkpoint folders are often just 'model')."""
    path = Path(model)
    return "/".join(path.parts[-2:]) if path.is_absolute() or len(path.parts) > 2 else model


def _tick(key: tuple) -> str:
    batch, sequence, phase, past, shape = key
    if phase in ("denoise", "step"):
        return shape.replace(" latents x ", "\n").replace("batch ", "b")
    return f"{phase + ' ' if phase in ('prefill', 'decode') else ''}b{batch} s{sequence}"


def write_report(report: BenchReport, folder: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and latency.png into ``folder``, all or nothing."""
    folder = Path(folder)
    with staged_dir(folder, marker=RESULTS_NAME) as tmp:
        (tmp / RESULTS_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        plot(report, tmp / "latency.png")
    return {"json": folder / RESULTS_NAME, "markdown": folder / "report.md", "png": folder / "latency.png"}
