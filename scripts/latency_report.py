#!/usr/bin/env python
"""The scripted latency report: eager PyTorch vs ONNX Runtime vs OpenVINO vs TensorRT, from one command.

    python scripts/latency_report.py                       # packaged MiniLM, scripts/auto_minilm.yml
    python scripts/latency_report.py --model bert-base-cased --config my.yml --out reports/bert

It runs `torchship auto --model MODEL --config CONFIG --output <scratch>` as a user would (every variant
that fits the device built, validated against the fp32 original, benchmarked interleaved at the use
shape), times the whole command, copies the summary (Markdown, CSV, JSON, Excel, chart) to --out, and
writes REPORT.md: one line per runtime family (its fastest variant within the budget, or why there is
none, e.g. TensorRT on a machine without a GPU), the chosen variant and how long auto took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAMILIES = (("eager PyTorch", None), ("ONNX Runtime", "onnxruntime"), ("OpenVINO", "openvino"),
            ("ONNX Runtime CUDA", "onnxruntime-cuda"), ("TensorRT", "tensorrt"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--config", type=Path, default=ROOT / "scripts" / "auto_minilm.yml")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "auto")
    args = parser.parse_args()
    args.label = Path(args.model).name if args.model else "all-MiniLM-L6-v2 (packaged)"
    if args.model is None:
        from torchship.demo import packaged_minilm

        args.model = str(packaged_minilm())
    work = Path(tempfile.mkdtemp(prefix="torchship-auto-"))
    try:
        cmd = [str(BIN / "torchship"), "auto", "--model", args.model, "--config", str(args.config),
               "--output", str(work / "auto")]
        print("$", " ".join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        summary = json.loads((work / "auto" / "summary.json").read_text())
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        for name in ("summary.md", "summary.csv", "summary.json", "summary.xlsx", "latency_vs_error.png"):
            shutil.copyfile(work / "auto" / name, args.out / name)
        shutil.copyfile(args.config, args.out / "config.yml")
        report = render(summary, wall, args)
        (args.out / "REPORT.md").write_text(report)
        print(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(summary: dict, wall: float, args) -> str:
    rows = summary["variants"]
    torch_p50 = summary["torch_p50_ms"]
    lines = [f"# Latency report: {args.label}", "",
             f"`python scripts/latency_report.py --config {args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}`"
             f": `torchship auto` took {wall:.0f} s ({wall / 60:.1f} min) on {summary['environment'].get('cpu')}, "
             f"{summary['config']['threads']} threads; use shape {summary['shape']}; budget "
             f"{summary['budget']:g} ({rows[0].get('metric') or 'metric'} against the fp32 model).", "",
             "| runtime | fastest variant within budget | p50 ms | vs eager PyTorch | budget metric | note |",
             "|---|---|---:|---:|---:|---|"]
    for label, runtime in FAMILIES:
        if runtime is None:
            lines.append(f"| {label} | torch (eager, inference_mode) | {torch_p50:.2f} | 1.00x | reference | |"
                         if torch_p50 else f"| {label} | - | - | - | - | no checkpoint (ONNX file input) |")
            continue
        family = [r for r in rows if r["runtime"] == runtime]
        ok = sorted((r for r in family if r["status"] == "ok" and r["p50_ms"]), key=lambda r: r["p50_ms"])
        if ok:
            r = ok[0]
            speed = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
            lines.append(f"| {label} | {r['backend']} ({r['precision']}) | {r['p50_ms']:.2f} | {speed} | "
                         f"{r['metric_mean']:.4f} >= {summary['budget']:g}: pass | |")
        else:
            why = "; ".join(sorted({r["status"] for r in family})) or "not tried"
            lines.append(f"| {label} | - | - | - | - | {why} |")
    chosen = next((r for r in rows if r["chosen"]), None)
    if chosen and chosen["speedup_vs_torch"]:
        lines += ["", f"Chosen: **{chosen['backend']}**, {chosen['speedup_vs_torch']:.2f}x eager PyTorch at "
                      f"{chosen['metric']} {chosen['metric_mean']:.4f} (budget {summary['budget']:g}), after "
                      f"{wall / 60:.1f} minutes of `torchship auto`."]
    lines += ["", "Every variant, with size, build time, full-tensor accuracy and status: summary.md "
                  "(CSV, JSON and Excel beside it; latency_vs_error.png).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
