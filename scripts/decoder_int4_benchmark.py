#!/usr/bin/env python
"""Weight-only int4 / int8 decoding against eager PyTorch and onnxruntime-genai's model builder.

    python scripts/decoder_int4_benchmark.py --config DIR [--work DIR] [--threads 2] [--past 128]
        [--genai-python PATH] [--min-seconds 5] [--out reports/decoder-int4]

1. Makes a checkpoint with random weights from the model config in --config (e.g. SmolLM2-135M's
   config.json) and a small generated BPE tokenizer, unless --work already holds one.
2. Exports it with ``export-decoder --no-optimize`` and makes the weight-only variants with
   ``torchship quantize --method weight-only`` (int8, then int4; block 32, accuracy level 4, head included).
3. With --genai-python (a Python where ``onnxruntime_genai`` imports), builds the same checkpoint with
   ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` (GroupQueryAttention with rotary,
   MatMulNBits, quantized embedding).
4. Times one decode step (batch 1, one new token after --past cached ones, same random past for all) of
   eager PyTorch with its DynamicCache, the fp32 export, both weight-only variants and the builder's graph,
   interleaved, each ONNX graph in a plain ONNX Runtime session with the same threads.
Writes SUMMARY.md and summary.json (ms/token, tokens/s, file sizes, the variants' judged accuracy) to --out.
Timings on a shared machine are indicative: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(list(cmd), check=True)


def make_checkpoint(config_dir: Path, dst: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tiny import make_bpe_tokenizer

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(dst)
    make_bpe_tokenizer().save_pretrained(dst)  # the genai builder saves a tokenizer; any will do


def size_of(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True, help="folder with the model's config.json")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "decoder-int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--genai-python", default=None)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "decoder-int4")
    args = ap.parse_args(argv)

    checkpoint, folder, genai = args.work / "model", args.work / "onnx", args.work / "genai-int4"
    if not (checkpoint / "config.json").is_file():
        make_checkpoint(args.config, checkpoint)
    if not (folder / "model.onnx").is_file():
        run(str(BIN / "export-gpt2"), "--model", str(checkpoint), "--output", str(folder), "--no-optimize")
    for bits in (8, 4):
        if not (folder / f"model_wo_int{bits}.onnx").is_file():
            run(str(BIN / "torchship"), "quantize", str(folder), "--method", "weight-only", "--bits", str(bits),
                "--block-size", "32")
    if args.genai_python and not (genai / "model.onnx").is_file():
        run(args.genai_python, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(genai),
            "-p", "int4", "-e", "cpu", "-c", str(args.work / "genai-cache"))

    from torchship._ort import ort_runner
    from torchship.artifact import Artifact
    from torchship.benchmarks.timing import TimingPlan, measure_interleaved
    from torchship.exporters.spec import BATCH, PAST_SEQUENCE, SEQUENCE, family_of, saved_config
    from torchship.runtimes import source_model_loader
    from torchship.runtimes.torch_runtime import TorchCachedDecoder

    art = Artifact.open(folder)
    m = art.manifest
    spec, config = family_of(m), saved_config(art)
    case = spec.case_for({BATCH: 1, SEQUENCE: 1, PAST_SEQUENCE: args.past}, config)
    feeds = spec.sample_inputs(config, m.io(), case, seed=0)
    files = {"ort-fp32": folder / "model.onnx", "wo-int8": folder / "model_wo_int8.onnx",
             "wo-int4": folder / "model_wo_int4.onnx"}
    if (genai / "model.onnx").is_file():
        files["genai-int4"] = genai / "model.onnx"
    eager = TorchCachedDecoder(source_model_loader(art), m.io(), num_layers=m.num_layers, threads=args.threads)
    eager.activate()
    fns = {"torch": eager.timed_step(feeds)}
    fns.update({name: (lambda r=ort_runner(path, threads=args.threads): r(feeds)) for name, path in files.items()})
    print(f"timing one decode step after {args.past} cached tokens, {args.threads} threads", flush=True)
    times = measure_interleaved(fns, TimingPlan(warmup=5, min_iterations=30, min_seconds=args.min_seconds))
    rows = {}
    for name, t in times.items():
        ms = float(np.median(t) * 1000)
        rows[name] = {"ms_per_token": round(ms, 2), "p90_ms": round(float(np.percentile(t, 90) * 1000), 2),
                      "tokens_per_s": round(1000 / ms, 1), "iterations": len(t),
                      "bytes": size_of(files[name]) if name in files else None}
    for name in ("wo-int8", "wo-int4"):
        v = m.variants[name].validation
        rows[name]["judged"] = {k: v[k] for k in ("logit_cosine_mean", "logit_cosine_min", "top1_agreement",
                                                  "max_weight_error", "mean_weight_error", "quantized_matmuls")}
    base = rows["torch"]["ms_per_token"]
    for r in rows.values():
        r["speedup_vs_eager"] = round(base / r["ms_per_token"], 2)
    summary = {"model": str(args.config), "past": args.past, "threads": args.threads, "batch": 1,
               "machine": platform.processor() or platform.machine(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Decode step, batch 1, past {args.past}, {args.threads} threads ({args.config.name}, random weights)",
             "", "| model | ms/token | p90 | tokens/s | vs eager | file MB | logit cosine (64 steps) | worst weight error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        judged = r.get("judged", {})
        lines.append(f"| {name} | {r['ms_per_token']:.2f} | {r['p90_ms']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['speedup_vs_eager']:.2f}x | {r['bytes'] / 1e6 if r['bytes'] else 0:.0f} | "
                     f"{judged.get('logit_cosine_mean', '-')} | {judged.get('max_weight_error', '-')} |")
    (args.out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
