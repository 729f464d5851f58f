#!/usr/bin/env python
"""The README's UNet benchmark: Stable Diffusion 2 inpainting's UNet (its architecture from
../shared/data/sd2-inpainting-unet, random weights: 866M parameters, 3.5 GB in fp32) through the
commands a user runs, with the peak memory and time of every stage.

    python scripts/unet_benchmark.py                     # writes reports/unet/
    python scripts/unet_benchmark.py --work /big/disk    # where the 3.5 GB model and its exports go

Stages, each a separate process so its peak memory (resident set, process tree) is its own:
  1. build the UNet from the config with random weights and save it (diffusers save_pretrained)
  2. export-unet --config shapes.yml --no-optimize   (ONNX with external data, validated at the
     config's min, use and max shapes against eager PyTorch)
  3. torchship optimize --levels all                 (ORT 'all' level + ORT's unet fusion, validated)
  4. eager PyTorch vs ORT at the config's use shape: batch 1, 64x64 latents, 77 tokens, interleaved
Then: move the exported folder and run it from its new place (relocation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SD2_CONFIG = ROOT.parent / "shared" / "data" / "sd2-inpainting-unet" / "config.json"
BIN = Path(sys.executable).parent

SHAPES_YML = """\
# The shapes an SD2 inpainting pipeline feeds its UNet at 512x512 (64x64 latents), batch 1 or 2
# (classifier-free guidance doubles the batch), with the 77-token text encoder output.
device: cpu
inputs:
  sample:                {min: [1, 9, 32, 32], use: [1, 9, 64, 64], max: [2, 9, 64, 64]}
  timestep:              {min: [1], use: [1], max: [2]}
  encoder_hidden_states: {min: [1, 77, 1024], use: [1, 77, 1024], max: [2, 77, 1024]}
outputs:
  out_sample: {use: [1, 4, 64, 64]}
"""

BUILD = """
import json, sys, torch
from diffusers import UNet2DConditionModel
cfg = json.load(open(sys.argv[1]))
torch.manual_seed(0)
model = UNet2DConditionModel.from_config(cfg).eval()
print(sum(p.numel() for p in model.parameters()))
model.save_pretrained(sys.argv[2])
"""

BENCH = """
import json, sys
from dataclasses import replace
from torchship.benchmarks.run import BenchOptions, run_benchmark
from torchship.benchmarks.report import write_report
from torchship.benchmarks.timing import TimingPlan
plan = TimingPlan(warmup=int(sys.argv[3]), min_iterations=int(sys.argv[4]), min_seconds=0.0, block=2, pause_s=0.5)
report = run_benchmark(sys.argv[1], BenchOptions(backends=tuple(sys.argv[5].split(",")), threads=int(sys.argv[6]),
                                                 plan=plan))
write_report(report, sys.argv[2])
"""


def run_measured(cmd: list[str], label: str) -> dict:
    """Run ``cmd``; its wall time and the peak resident memory of its process tree, polled."""
    import psutil

    print(f"== {label}: {' '.join(str(c) for c in cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd])
    peak = 0
    done = threading.Event()

    def poll():
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                    peak = max(peak, rss)
                except psutil.Error:
                    pass
                time.sleep(0.2)
        except psutil.Error:
            pass

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    rc = proc.wait()
    done.set()
    thread.join()
    seconds = time.perf_counter() - start
    if rc != 0:
        sys.exit(f"{label} failed with exit code {rc}")
    print(f"== {label}: {seconds:.0f} s, peak memory {peak / 2**30:.1f} GiB", flush=True)
    return {"stage": label, "seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2)}


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=SD2_CONFIG, help="diffusers UNet config.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (needs about 15 GB)")
    ap.add_argument("--report", type=Path, default=ROOT / "reports" / "unet")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=6, help="timed runs per backend")
    ap.add_argument("--backends", default="torch,ort,ort-optimized")
    args = ap.parse_args()
    if not args.config.is_file():
        sys.exit(f"{args.config} is missing; pass --config with a diffusers UNet config.json")
    work = Path(tempfile.mkdtemp(prefix="torchship-unet-", dir=args.work))
    try:
        src, out, moved = work / "sd2-unet", work / "onnx", work / "elsewhere" / "onnx"
        shapes = work / "shapes.yml"
        shapes.write_text(SHAPES_YML)
        stages = [run_measured([sys.executable, "-c", BUILD, args.config, src], "build and save the UNet")]
        stages.append(run_measured([BIN / "export-unet", "--model", src, "--output", out, "--config", shapes,
                                    "--no-optimize"], "export-unet (export + validation)"))
        stages.append(run_measured([BIN / "torchship", "optimize", out, "--levels", "all"],
                                   "torchship optimize (ORT all + unet fusion, validated)"))
        moved.parent.mkdir(parents=True)
        shutil.move(str(out), str(moved))  # relocation: the benchmark runs the moved folder
        bench_dir = work / "bench"
        stages.append(run_measured([sys.executable, "-c", BENCH, moved, bench_dir, args.warmup, args.iterations,
                                    args.backends, args.threads], "bench (moved folder)"))
        manifest = json.loads((moved / "torchship.json").read_text())
        results = json.loads((bench_dir / "results.json").read_text())
        args.report.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "report.md", "latency.png"):
            shutil.copy(bench_dir / name, args.report / name)
        summary = {
            "model": "Stable Diffusion 2 inpainting UNet architecture, random weights",
            "parameters_m": 866,
            "files": {name: v["size_bytes"] for name, v in manifest["variants"].items()},
            "folder_bytes": folder_size(moved),
            "validation": {name: {"max_abs": v["validation"]["max_abs"], "min_cosine": v["validation"]["min_cosine"],
                                  "cases": [o["case"] for o in v["validation"]["outputs"]]}
                           for name, v in manifest["variants"].items()},
            "fusion": manifest["variants"].get("optimized", {}).get("fusion"),
            "skipped": manifest["skipped"],
            "stages": stages,
            "speedups": {m["backend"]: m.get("speedup_vs_torch") for m in results["measurements"]},
            "p50_ms": {m["backend"]: m["p50_ms"] for m in results["measurements"]},
        }
        (args.report / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        lines = ["| stage | wall s | peak memory GiB |", "|---|---:|---:|"]
        lines += [f"| {s['stage']} | {s['seconds']:.0f} | {s['peak_rss_gib']:.1f} |" for s in stages]
        lines += ["", (args.report / "report.md").read_text()]
        (args.report / "SUMMARY.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
