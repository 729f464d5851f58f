"""Auto's summary of a run: Markdown, CSV, JSON, an Excel sheet and a chart of latency against error.

Every file is written under a temporary name and renamed into place; ``summary.json`` goes last, so its
presence marks a complete output folder.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from torchship.artifact import AUTO_MODEL_DIR as MODEL_DIR, AUTO_SUMMARY as SUMMARY  # one layout, one home
from torchship.auto.choice import AutoReport, Row
from torchship.errors import InputError
COLUMNS = ("backend", "precision", "device", "runtime", "status", "file", "size_mb", "build_s", "p50_ms", "p90_ms",
           "p99_ms", "throughput", "speedup_vs_torch", "max_abs", "mean_abs", "cosine", "metric", "metric_mean",
           "metric_min", "chosen")

__all__ = ["COLUMNS", "MODEL_DIR", "SUMMARY", "markdown", "read_summary", "write_summary"]


def _cells(row: Row) -> dict:
    d = row.to_json()
    d["size_mb"] = None if row.size_bytes is None else round(row.size_bytes / 1e6, 2)
    return {k: d.get(k) for k in COLUMNS}


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def markdown(report: AutoReport) -> str:
    lines = [f"# torchship auto: {report.title}", "",
             *([f"Model: `{report.model}`", ""] if report.model != report.title else []),
             f"Use shape: {report.shape or '-'}; device {report.config.get('device', '?')}; "
             f"{report.config.get('threads', '?')} threads; budget: {report.rows[0].metric or 'metric'} mean >= "
             f"{report.budget:g} against the fp32 original; {report.seconds:.0f} s in all.", ""]
    if report.torch_p50_ms:
        lines.append(f"Eager PyTorch p50: {report.torch_p50_ms:.2f} ms.")
        lines.append("")
    lines += ["| variant | precision | runtime | p50 ms | p90 ms | samples/s | vs PyTorch | size MB | build s | "
              "cosine | max abs | budget metric vs budget | status |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    order = sorted(report.rows, key=lambda r: (not r.usable, r.p50_ms if r.p50_ms is not None else 1e18))
    for r in order:
        name = f"**{r.backend}** (chosen)" if r.chosen else r.backend
        metric = "-" if r.metric_mean is None else \
            f"{r.metric_mean:.4f} {'>=' if r.metric_mean >= report.budget else '<'} {report.budget:g}: " \
            f"{'pass' if r.metric_mean >= report.budget else 'fail'}"
        speed = "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x"
        size = "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}"
        cos = "-" if r.cosine is None else f"{r.cosine:.6f}"
        lines.append(f"| {name} | {r.precision} | {r.runtime} | {_fmt(r.p50_ms)} | {_fmt(r.p90_ms)} | "
                     f"{_fmt(r.throughput, 1)} | {speed} | {size} | {_fmt(r.build_s, 1)} | {cos} | "
                     f"{'-' if r.max_abs is None else f'{r.max_abs:.1e}'} | "
                     f"{metric} | {r.status_text} |")
    lines += ["", f"Chosen: **{report.chosen}**" if report.chosen else "No variant met the budget.", ""]
    return "\n".join(lines)


def _csv(report: AutoReport) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in report.rows:
        writer.writerow(_cells(r))
    return buf.getvalue()


def write_summary(report: AutoReport, folder: Path) -> dict[str, Path]:
    from torchship._fs import write_json_atomic, write_text_atomic

    folder = Path(folder)
    paths = {"markdown": folder / "summary.md", "csv": folder / "summary.csv", "json": folder / SUMMARY,
             "xlsx": folder / "summary.xlsx", "png": folder / "latency_vs_error.png"}
    write_text_atomic(paths["markdown"], markdown(report))
    write_text_atomic(paths["csv"], _csv(report))
    _write_xlsx(report, paths["xlsx"])
    _write_chart(report, paths["png"])
    write_json_atomic(paths["json"], report.to_json())  # last: its presence marks a complete folder
    return paths


def _write_xlsx(report: AutoReport, path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    from torchship._fs import staged_file

    wb = Workbook()
    ws = wb.active
    ws.title = "variants"
    ws.append(list(COLUMNS))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in report.rows:
        ws.append([_cells(r)[k] for k in COLUMNS])
    info = wb.create_sheet("run")
    for key, value in (("model", report.title), ("source", report.model), ("use shape", report.shape),
                       ("budget", report.budget),
                       ("chosen", report.chosen), ("eager PyTorch p50 ms", report.torch_p50_ms),
                       ("seconds", round(report.seconds, 1)), ("cpu", report.environment.get("cpu")),
                       ("threads", report.environment.get("threads"))):
        info.append([key, value])
    with staged_file(path) as tmp:
        wb.save(tmp)


def _write_chart(report: AutoReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchship._fs import staged_file

    rows = sorted((r for r in report.rows if r.p50_ms is not None and r.cosine is not None), key=lambda r: r.p50_ms)
    fig, ax = plt.subplots(figsize=(10, 5))
    markers = "osD^vP<>Xhp"
    try:
        # variants often share a point (every fp32 file: the same error, close latencies), so a legend names them
        # instead of labels that would pile up; each has its own marker and colour, the chosen one a large star
        for i, r in enumerate(rows):
            err = max(1.0 - r.cosine, 1e-12)
            label = f"{r.backend}{' (chosen)' if r.chosen else ''}: {r.p50_ms:.2f} ms, 1-cos {1.0 - r.cosine:.1e}"
            ax.scatter(err, r.p50_ms, s=160 if r.chosen else 50, marker="*" if r.chosen else markers[i % len(markers)],
                       color=f"C{i % 10}", alpha=0.8, zorder=3 if r.chosen else 2, label=label)
        if rows:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
        if report.torch_p50_ms:
            ax.axhline(report.torch_p50_ms, color="gray", linestyle="--", linewidth=1)
            ax.text(1e-12, report.torch_p50_ms, " eager PyTorch", va="bottom", fontsize=8, color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("1 - cosine against the fp32 original (full tensors, random inputs at the use shape)")
        ax.set_ylabel("p50 latency, ms")
        ax.set_title(f"{report.title}: latency against error at {report.shape}\n"
                     "(lower left is better; * = chosen)", fontsize=9)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        with staged_file(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def read_summary(folder: str | Path) -> dict:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise InputError(f"{folder} has no {SUMMARY}; it is not a torchship auto output folder")
    return json.loads(path.read_text())
