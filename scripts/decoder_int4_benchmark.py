#!/usr/bin/env python
"""Weight-only int4 / int8 decoding against eager PyTorch and onnxruntime-genai's model builder, through
torchship's own decoder benchmark.

    python scripts/decoder_int4_benchmark.py --config ../shared/data/smollm2-135m [--work DIR] [--threads 2]
        [--prompt-lengths 32,128,512] [--past-lengths 32,128,512] [--block-size 128] [--min-seconds 5]
        [--min-iterations 20]
        [--no-genai] [--no-peak-memory] [--out reports/decoder-int4]

1. Makes a checkpoint with random weights from the model config in --config (e.g. SmolLM2-135M's config.json)
   and a small generated BPE tokenizer (the builder copies a tokenizer), unless --work already holds one.
2. Exports it with ``export-decoder --no-optimize``, runs ``torchship optimize --levels ''`` (the fp32 graph
   with torchship's decoder fusion, ort-optimized) and makes the weight-only variants with ``torchship
   quantize --method weight-only`` (int8, then int4; --block-size, default 128, symmetric, accuracy level 4).
3. Runs the library's decoder benchmark (``torchship bench``'s): batch 1, prefill at each prompt length, one
   decode step after each past length, every row interleaved with the same inputs and threads: eager PyTorch
   with its DynamicCache, the fp32 export, both weight-only variants and, when onnxruntime-genai is installed,
   its model builder's fp32 / int8 / int4 graphs of the same checkpoint (built once into WORK/onnx/genai/).
   Each row's peak memory is probed alone in a fresh process.
Writes the benchmark's report (bench/report.md, results.json, latency.png) and SUMMARY.md + summary.json (the
issue's bar at past 128, the command) to --out. Timings on a shared machine are indicative: compare ratios
from one run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
BAR_PAST = 128  # the bar: a decode step after 128 cached tokens, batch 1


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
    make_bpe_tokenizer().save_pretrained(dst)


def lengths(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def bar(report, past: int) -> dict:
    """The issue's bar at one past length: int4 >= 4x eager and at least as fast as genai's int4, int8 >= 3x
    with a next-token logit cosine >= 0.99 over 64 steps."""
    def ms(name):
        m = next((m for m in report.measurements if (m.backend, m.phase, m.past) == (name, "decode", past)), None)
        return None if m is None else m.p50_ms

    eager, int4, int8, genai4 = ms("torch"), ms("ort-wo-int4"), ms("ort-wo-int8"), ms("genai-int4")
    cosine = report.judged.get("ort-wo-int8", {}).get("logit_cosine_mean")
    checks = {
        "int4 >= 4x eager": None if None in (eager, int4) else eager / int4 >= 4,
        "int4 at least as fast as genai int4": None if None in (int4, genai4) else int4 <= genai4,
        "int8 >= 3x eager": None if None in (eager, int8) else eager / int8 >= 3,
        "int8 logit cosine >= 0.99 (64 steps)": None if cosine is None else cosine >= 0.99,
    }
    return {"past": past, "eager_ms": eager, "wo_int4_ms": int4, "wo_int8_ms": int8, "genai_int4_ms": genai4,
            "int4_vs_eager": None if None in (eager, int4) else round(eager / int4, 2),
            "int4_vs_genai_int4": None if None in (int4, genai4) else round(genai4 / int4, 2),
            "int8_vs_eager": None if None in (eager, int8) else round(eager / int8, 2),
            "int8_logit_cosine_mean": cosine, "checks": checks}


def summary_md(report, command: str, checked: dict, config: Path) -> str:
    from torchship.benchmarks.report import markdown

    def word(ok):
        return "not measured" if ok is None else "met" if ok else "MISSED"

    lines = [f"# Weight-only decoding: {config.name} (random weights), batch 1, {report.environment.threads} threads",
             "", f"Command: `{command}`", "",
             f"## The bar: one decode step after {checked['past']} cached tokens", ""]
    lines += [f"- {name}: {word(ok)}" for name, ok in checked["checks"].items()]
    def ratio(key):
        return "not measured" if checked[key] is None else f"{checked[key]}x"

    lines += ["", f"int4: {ratio('int4_vs_eager')} eager, {ratio('int4_vs_genai_int4')} genai's int4 build (its "
              f"median over ours); int8: {ratio('int8_vs_eager')} eager, next-token logit cosine "
              f"{checked['int8_logit_cosine_mean']}. Random weights make a 4-bit model's end-to-end logits "
              "meaningless, so int4 is judged by each quantized MatMul's relative weight error (below).", "",
              "## The whole benchmark", "", markdown(report).split("\n", 1)[1]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True, help="folder with the model's config.json")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "decoder-int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-lengths", default="32,128,512")
    ap.add_argument("--past-lengths", default="32,128,512")
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--min-iterations", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=128, help="weight-only block size (genai builds follow it)")
    ap.add_argument("--no-genai", action="store_true")
    ap.add_argument("--no-peak-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "decoder-int4")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "scripts/decoder_int4_benchmark.py", *(sys.argv[1:] if argv is None else argv)])

    from torchship.optimizers.weight_only import file_name

    checkpoint, folder = args.work / "model", args.work / "onnx"
    if not (checkpoint / "config.json").is_file():
        make_checkpoint(args.config, checkpoint)
    if not (folder / "model.onnx").is_file():
        run(str(BIN / "export-decoder"), "--model", str(checkpoint), "--output", str(folder), "--no-optimize")
    if not (folder / "model_optimized.onnx").is_file():  # the fp32 graph with torchship's decoder fusion
        run(str(BIN / "torchship"), "optimize", str(folder), "--levels", "", "--candidates", "preset")
    for bits in (8, 4):
        if not (folder / file_name(bits)).is_file():
            run(str(BIN / "torchship"), "quantize", str(folder), "--method", "weight-only", "--bits", str(bits),
                "--block-size", str(args.block_size))

    from dataclasses import replace

    from torchship import _progress
    from torchship._fs import write_text_atomic
    from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
    from torchship.benchmarks.report import write_report
    from torchship.benchmarks.timing import TimingPlan

    pasts = lengths(args.past_lengths)
    plan = replace(TimingPlan(), min_seconds=args.min_seconds, min_iterations=args.min_iterations,
                   block=min(TimingPlan().block, args.min_iterations))
    report = run_decoder_benchmark(folder, DecoderBenchOptions(
        batch_sizes=(1,), prompt_lengths=lengths(args.prompt_lengths), past_lengths=pasts, threads=args.threads,
        plan=plan, genai=not args.no_genai, peak_memory=not args.no_peak_memory),
        progress=_progress.Progress(step=lambda text: print(f"torchship: {text}", flush=True)))
    write_report(report, args.out / "bench")
    checked = bar(report, BAR_PAST if BAR_PAST in pasts else max(pasts))
    summary = {"command": command, "config": str(args.config), "bar": checked, "report": report.to_json()}
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    text = summary_md(report, command, checked, args.config)
    write_text_atomic(args.out / "SUMMARY.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
