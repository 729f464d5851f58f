#!/usr/bin/env python
"""An image classifier at a size users run, through torchship as a user runs it: export, optimize (the measured
dispatch), quantize --int8 (judged by top-1 agreement on held-out images), then one interleaved bench of eager
PyTorch, the plain dynamo export under ONNX Runtime (`ort`), torchship's measured choice (`ort-measured`) and int8,
with the preprocessing on its own row.

    python scripts/image_benchmark.py [--model ../shared/data/vit-base-patch16-224] [--threads 2]
                                      [--batch-sizes 1,8] [--min-seconds 3] [--out reports/images]

`--model` is a folder with a transformers image-classification config.json and its preprocessor_config.json
(architecture only: the weights are random, seeded; trained checkpoints have non-zero biases, so biases are drawn
too). Every step is the CLI's own command, run in this process. Writes summary.json and SUMMARY.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def _checkpoint(config_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(out)
    shutil.copyfile(config_dir / "preprocessor_config.json", out / "preprocessor_config.json")
    return out


def _cli(*args: str) -> float:
    from click.testing import CliRunner

    from torchship.cli import main

    start = time.perf_counter()
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    print(result.output, flush=True)
    if result.exit_code:
        raise SystemExit(f"torchship {' '.join(args)} exited {result.exit_code}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DATA / "vit-base-patch16-224")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "images")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="torchship-images-") as tmp:
        src = _checkpoint(args.model, Path(tmp) / "model")
        out = Path(tmp) / "onnx"
        steps = {"export": _cli("export", "--model", str(src), "-o", str(out), "--task", "image-classification",
                                "--no-optimize")}
        steps["optimize"] = _cli("optimize", str(out))
        steps["quantize"] = _cli("quantize", str(out), "--int8")
        from torchship.artifact import Artifact

        manifest = Artifact.open(out).manifest
        backends = ["torch", "ort", "ort-measured"] + (["ort-int8"] if "int8" in manifest.variants else [])
        report_dir = Path(tmp) / "bench"
        steps["bench"] = _cli("bench", str(out), "--backends", ",".join(backends), "--batch-sizes", args.batch_sizes,
                              "--threads", str(args.threads), "--min-seconds", str(args.min_seconds),
                              "--report", str(report_dir))
        bench = json.loads(next(report_dir.glob("*.json")).read_text())
        quantization = manifest.quantization.to_json() if manifest.quantization else None
        dispatch = manifest.dispatch.to_json() if manifest.dispatch else None
    rows = bench["measurements"]
    p50 = {(r["backend"], r["batch"]): r["p50_ms"] for r in rows}
    batches = sorted({r["batch"] for r in rows})
    summary = {"model": str(args.model), "threads": args.threads, "cpu": bench["environment"].get("cpu"),
               "step_seconds": {k: round(v, 1) for k, v in steps.items()}, "p50_ms": {f"{b}@{n}": v for (b, n), v
                                                                                     in p50.items()},
               "quantization": quantization, "dispatch": dispatch, "bench": bench}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {args.model.name}: eager PyTorch, the plain export, torchship's choice and int8", "",
             f"`python scripts/image_benchmark.py --model {args.model} --threads {args.threads} --batch-sizes "
             f"{args.batch_sizes} --min-seconds {args.min_seconds:g}` on {summary['cpu']}: random weights, "
             "every backend interleaved in one bench run (median ms per batch).", "",
             "| backend | " + " | ".join(f"batch {b} ms | vs eager" for b in batches) + " |",
             "|---|" + "---:|---:|" * len(batches)]
    for backend in ["preprocess", *backends]:
        cells = []
        for b in batches:
            ms = p50.get((backend, b))
            eager = p50.get(("torch", b))
            cells.append("" if ms is None else f"{ms:.2f}")
            cells.append("" if ms is None or backend == "preprocess" or not eager else f"{eager / ms:.2f}x")
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    if "ort-int8" in backends:
        lines.append("")
        lines.append("int8 vs torchship's fp32 choice: " + ", ".join(
            f"batch {b} {p50[('ort-measured', b)] / p50[('ort-int8', b)]:.2f}x" for b in batches))
    (args.out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
