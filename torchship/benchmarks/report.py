"""Turn a :class:`BenchReport` into what people read: JSON, a Markdown table, a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from torchship._fs import staged_dir
from torchship._ort import spin_label
from torchship.benchmarks.results import UNSTABLE_SPREAD, BenchReport

RESULTS_NAME = "results.json"


def markdown_table(report: BenchReport) -> str:
    if any(m.phase in ("prefill", "decode") for m in report.measurements):
        return decoder_table(report)
    if any(m.phase in ("denoise", "step") for m in report.measurements):  # "step": reports before 0.2
        return step_table(report)
    base = report.baseline
    lines = [
        f"| backend | batch | seq | p50 ms | p90 ms | p99 ms | samples/s | speedup vs {base} | max abs | min cosine "
        "| p90/p10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.measurements:
        sp = report.speedup(m)
        acc = m.accuracy
        lines.append(
            f"| {m.backend} | {m.batch} | {m.sequence} | {m.p50_ms:.2f} | {m.p90_ms:.2f} | {m.p99_ms:.2f} | "
            f"{m.throughput:.1f} | {'-' if sp is None else f'{sp:.2f}x'} | "
            f"{'-' if acc is None else f'{acc.max_abs:.2e}'} | {'-' if acc is None else f'{acc.cosine_min:.6f}'} | "
            f"{_spread(m)} |"
        )
    return "\n".join(lines) + _unstable_note(report)


def _spread(m) -> str:
    return "-" if m.spread is None else f"{m.spread:.2f}" + (" unstable" if m.unstable else "")


def _unstable_note(report: BenchReport) -> str:
    """A line under the table when a row's timings spread wide: its speedup is not to be trusted."""
    rows = [m for m in report.measurements if m.unstable]
    if not rows:
        return ""
    worst = max(rows, key=lambda m: m.spread)
    return (f"\n\nUnstable: {len(rows)} row(s) have p90 over {UNSTABLE_SPREAD:g}x their p10 (worst: {worst.backend} at "
            f"{worst.spread:.2f}x), so the machine was busy or drifting while they ran; their speedups are not "
            "reliable. Re-run on a quiet machine, or with a longer --min-seconds.")


def decoder_table(report: BenchReport) -> str:
    """Decoders: a row per backend, phase, batch and length; its file and peak memory beside it."""
    base = "eager" if report.baseline == "torch" else report.baseline
    lines = [
        f"| backend | phase | batch | new tokens | past | p50 ms | p90 ms | tokens/s | vs {base} | file MB | peak MB "
        "| logits max abs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.measurements:
        sp = report.speedup(m)
        acc = m.accuracy
        size = report.file_bytes.get(m.backend)
        peak = (report.peak_memory.get(m.backend) or {}).get("peak_mb")
        lines.append(
            f"| {m.backend} | {m.phase} | {m.batch} | {m.sequence} | {m.past} | {m.p50_ms:.2f} | {m.p90_ms:.2f} | "
            f"{m.tokens_per_s:.1f} | {'-' if sp is None else f'{sp:.2f}x'} | "
            f"{'-' if size is None else f'{size / 1e6:.1f}'} | {'-' if peak is None else f'{peak:.0f}'} | "
            f"{'-' if acc is None else f'{acc.max_abs:.2e}'} |")
    return "\n".join(lines) + _unstable_note(report)


def judged_lines(report: BenchReport) -> list[str]:
    """Weight-only variants: their accuracy against the fp32 export, judged when they were made."""
    if not report.judged:
        return []
    lines = ["Weight-only variants, judged against the fp32 export when they were made: next-token logit cosine "
             "along a fixed greedy decode, and each quantized MatMul's relative weight error (at 4 bits a model "
             "with random weights gives meaningless end-to-end logits, so its weight error is what it is judged by):",
             "", "| backend | steps | logit cosine mean | min | top-1 agreement | worst weight error | mean weight "
             "error | quantized MatMuls | |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for name, j in report.judged.items():
        lines.append(f"| {name} | {j.get('steps', '-')} | {num(j.get('logit_cosine_mean'), '.4f')} | "
                     f"{num(j.get('logit_cosine_min'), '.4f')} | {num(j.get('top1_agreement'), '.2%')} | "
                     f"{num(j.get('max_weight_error'), '.4f')} | {num(j.get('mean_weight_error'), '.4f')} | "
                     f"{j.get('quantized_matmuls', '-')} | {'pass' if j.get('passed') else 'FAIL'} |")
    return lines + [""]


def decoder_notes(report: BenchReport) -> list[str]:
    """What the decoder rows are (genai, peak memory) and what was left out, and why."""
    out = []
    genai = report.settings.get("genai")
    if genai:
        out.append(f"{genai['what']} (onnxruntime-genai {genai['version']}). Built with:")
        out += [f"- {name}: `{b['command']}`" for name, b in genai["builds"].items()]
        out.append("")
    if report.settings.get("peak_memory"):
        out += [f"Peak MB is the {report.settings['peak_memory']}. File MB is what the row loads from disk (for "
                "eager PyTorch, the checkpoint's weight files).", ""]
    if report.notes:
        out += ["Left out:", *(f"- {n}" for n in report.notes), ""]
    return out


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
        f"ORT spinning: {spin_label(env.ort_spinning)}; GPU: {env.gpu or 'none'}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env.versions.items() if k not in ("platform",) and v),
        "",
        f"Latencies are medians (p50) and tails over {report.settings['min_iterations']}+ runs per backend, "
        "backends interleaved in blocks. Accuracy compares the first output with the baseline on the same inputs "
        "(min cosine is per row of the last axis: per token for hidden states).",
        "",
        markdown_table(report),
        "",
        *judged_lines(report),
        *budget_lines(report),
        *decoder_notes(report),
    ])


def budget_lines(report: BenchReport) -> list[str]:
    """Lower-precision variants: their accuracy against the fp32 model, each against its budget."""
    budgets = {k: v for k, v in report.budgets.items() if k not in report.judged}  # judged_lines shows those
    if not budgets:
        return []
    lines = ["Accuracy of the lower-precision variants against the fp32 model, measured when they were made:", "",
             "| backend | metric | mean | worst | budget | |", "|---|---|---:|---:|---:|---|"]
    for backend, b in budgets.items():
        # A weight-only int4 variant may have no floor on this metric (it is judged by its weight error).
        floor = f">= {b['budget']:g}" if b.get("budget") is not None else "none"
        ok = b.get("passed", b["budget"] is None or b["mean"] >= b["budget"])
        lines.append(f"| {backend} | {b['metric']} | {b['mean']:.4f} | {b.get('min', float('nan')):.4f} | "
                     f"{floor} | {'pass' if ok else 'FAIL'} |")
    return lines + [""]


BACKEND_WORDS = {"torch": "eager PyTorch"}


def plot(report: BenchReport, path: Path) -> None:
    """One panel per input shape, each with its own linear scale (shapes differ in cost by orders of
    magnitude, and a shared or log scale would hide the differences between backends); every bar says
    its median and its speedup over the baseline at that shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = report.keys()
    backends = report.backends()
    base = BACKEND_WORDS.get(report.baseline, report.baseline)
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.0, 0.9 * len(backends) * len(keys) + 2), 4.6),
                             dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for j, backend in enumerate(backends):
            m = report.at(backend, key)
            if m is None:
                continue
            bar = ax.bar([j], [m.p50_ms], 0.7, color=f"C{j}", label=BACKEND_WORDS.get(backend, backend))[0]
            sp = report.speedup(m)
            label = f"{m.p50_ms:.3g} ms" + ("" if sp is None or backend == report.baseline else f"\n{sp:.2f}x")
            ax.annotate(label + (" !" if m.unstable else ""), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks([])
        ax.set_xlabel(_tick(key), fontsize=8)
        ax.margins(y=0.2)
    axes[0][0].set_ylabel("median latency, ms (lower is better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unstable = any(m.unstable for m in report.measurements)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8,
               bbox_to_anchor=(0.5, 0.04 if unstable else 0.0))
    if unstable:  # the bars marked "!" say why under the chart, as the Markdown report does under its table
        fig.text(0.5, 0.01, f"! = unstable timing: p90 over {UNSTABLE_SPREAD:g}x p10 (the machine was busy or "
                 "drifting), so that bar's speedup is not reliable", ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"{display_name(report.model)}: median latency per input shape\n"
                 f"Nx = speedup over {base} at that shape; {report.environment.threads} threads, "
                 f"{report.environment.cpu}"[:240], fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0.12 if unstable else 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def display_name(model: str) -> str:
    """A hub id as it is; a folder by its own name, or with its parent's when the name says nothing
    ('model', 'onnx'); an installed package's folder by the package."""
    path = Path(model)
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1]
    if not (path.is_absolute() or len(path.parts) > 2):
        return model
    from torchship.loading import GENERIC_FOLDERS

    return "/".join(path.parts[-2:]) if path.name.lower() in GENERIC_FOLDERS else path.name


def _tick(key: tuple) -> str:
    batch, sequence, phase, past, shape = key
    if phase in ("denoise", "step"):
        return shape.replace(" latents x ", "\n")
    if phase in ("prefill", "decode"):
        return f"{phase}: batch {batch}, {sequence} new tokens, past {past}"
    return f"batch {batch} x {sequence} tokens"


def write_report(report: BenchReport, folder: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and latency.png into ``folder``, all or nothing."""
    folder = Path(folder)
    with staged_dir(folder, marker=RESULTS_NAME) as tmp:
        (tmp / RESULTS_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        plot(report, tmp / "latency.png")
    return {"json": folder / RESULTS_NAME, "markdown": folder / "report.md", "png": folder / "latency.png"}
