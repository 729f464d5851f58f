#!/usr/bin/env python
"""The precision benchmark (issue 5's bar): int8 and OpenVINO against eager PyTorch on the packaged MiniLM.

    python scripts/precision_benchmark.py                   # writes reports/precision/
    python scripts/precision_benchmark.py --min-seconds 20  # longer timing for steadier medians

Every stage runs as a user runs it, through the CLI, in a fresh folder:

    export-bert --model <packaged MiniLM> --output M                # export + ORT levels + fusion, validated
    torchship quantize M --threads 2                                # int8 candidates; the fastest within 0.99 kept
    torchship optimize M --levels '' --no-fusion --openvino --fp16  # OpenVINO IR fp32/fp16, fp16 ONNX (for GPUs)
    torchship bench M --backends torch,ort-optimized,ort-int8,openvino,openvino-fp16 \\
        --batch-sizes 1 --seq-lens 128 --threads 2

The bar: the kept int8 variant at least 2.5x faster than eager PyTorch at the median (batch 1, sequence
128, 2 threads), with mean sentence-embedding cosine of at least 0.99 to the fp32 model over the 60
sentences in torchship/data/sentences.txt; OpenVINO fp32 beside it. SUMMARY.md says whether it was met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BACKENDS = "torch,ort-optimized,ort-int8,openvino,openvino-fp16"


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    args = parser.parse_args()

    from torchship.demo import packaged_minilm

    work = Path(tempfile.mkdtemp(prefix="torchship-precision-"))
    folder = work / "minilm"
    seconds = {}
    try:
        seconds["export-bert"] = run([str(BIN / "export-bert"), "--model", str(packaged_minilm()), "--output",
                                      str(folder)])
        seconds["quantize"] = run([str(BIN / "torchship"), "quantize", str(folder), "--threads", str(args.threads)])
        seconds["optimize --openvino --fp16"] = run([str(BIN / "torchship"), "optimize", str(folder), "--levels", "",
                                                     "--no-fusion", "--openvino", "--fp16"])
        tmp_report = work / "report"
        seconds["bench"] = run([str(BIN / "torchship"), "bench", str(folder), "--backends", BACKENDS,
                                "--batch-sizes", "1", "--seq-lens", "128", "--threads", str(args.threads),
                                "--min-seconds", str(args.min_seconds), "--report", str(tmp_report)])
        manifest = json.loads((folder / "torchship.json").read_text())
        results = json.loads((tmp_report / "results.json").read_text())
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(tmp_report, args.out)
        (args.out / "quantization.json").write_text(json.dumps(manifest["quantization"], indent=2))
        summary = summarize(manifest, results, seconds, args)
        (args.out / "SUMMARY.md").write_text(summary)
        print(summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def summarize(manifest: dict, results: dict, seconds: dict, args) -> str:
    rows = {m["backend"]: m for m in results["measurements"]}
    torch_p50 = rows["torch"]["p50_ms"]
    int8 = manifest["variants"]["int8"]
    acc = int8["validation"]
    speedup = torch_p50 / rows["ort-int8"]["p50_ms"]
    env = results["environment"]
    lines = [
        "# Precision benchmark: all-MiniLM-L6-v2, batch 1 x seq 128",
        "",
        f"`python scripts/precision_benchmark.py --threads {args.threads} --min-seconds {args.min_seconds:g}` "
        f"on {env.get('cpu', '?')}, {args.threads} threads, {os.cpu_count()} CPUs visible; every backend timed "
        "interleaved in one run.",
        "",
        "| backend | file | size MB | p50 ms | p90 ms | vs eager PyTorch | accuracy against fp32 |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    from torchship.backends import backend as record_of

    for backend in BACKENDS.split(","):
        m = rows[backend]
        names = record_of(backend).variants
        variant = manifest["variants"].get(names[0], {}) if names else {}
        size = f"{variant['size_bytes'] / 1e6:.1f}" if variant else "-"
        val = variant.get("validation") or {}
        if "metric" in val:
            ok = val["mean"] >= val["budget"]
            accuracy = (f"{val['metric'].replace('_', ' ')} mean {val['mean']:.4f}, min {val['min']:.4f}; budget "
                        f"{val['budget']:g}: {'pass' if ok else 'FAIL'}")
        elif val:
            accuracy = f"max abs {val['max_abs']:.1e} vs eager PyTorch"
        else:
            accuracy = "reference"
        lines.append(f"| {backend} | {variant.get('file', '-')} | {size} | {m['p50_ms']:.2f} | {m['p90_ms']:.2f} | "
                     f"{torch_p50 / m['p50_ms']:.2f}x | {accuracy} |")
    lines += [
        "",
        f"Kept int8 variant: `{int8['options']['name']}` (of {len(manifest['quantization']['candidates'])} "
        f"candidates; see quantization.json). Sentence cosine against the fp32 export over "
        f"{acc['samples']} sentences: mean {acc['mean']:.4f}, min {acc['min']:.4f}.",
        "",
        f"**int8: {speedup:.2f}x eager PyTorch at mean sentence cosine {acc['mean']:.4f}** (budget "
        f"{acc['budget']:g}: {'pass' if acc['mean'] >= acc['budget'] else 'FAIL'}).",
        "",
        "Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
