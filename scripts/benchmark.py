#!/usr/bin/env python
"""The README's benchmark: eager PyTorch vs ONNX Runtime (fp32) on the packaged all-MiniLM-L6-v2 and on a
model of bert-base-cased's size (its architecture from ../shared/data, random weights).

    python scripts/benchmark.py                 # both models, writes reports/benchmark/
    python scripts/benchmark.py --models minilm --threads 2

For each encoder: export (validated), `optimize` as a user runs it (every graph level, transformer fusion,
the measured dispatch table), then time eager PyTorch, three fixed ORT variants and `ort-measured` (what
`predict` runs: the file and session the table names for the shape) interleaved at batch 1 x seq 128,
batch 8 x seq 128 and batch 1 x seq 16 with the same thread count. One report folder per model, and
SUMMARY.md with the speedup of `ort-measured` over eager PyTorch, beside the best fixed variant. The decoder
(gpt2-small-size) is timed per phase with its fixed variants.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BERT_BASE_CONFIG = ROOT.parent / "shared" / "data" / "bert-base-cased" / "config.json"
GPT2_CONFIG = ROOT.parent / "shared" / "data" / "gpt2" / "config.json"
SHAPES = ((1, 128), (8, 128), (1, 16))
FIXED = ("ort", "ort-all", "ort-optimized")
BACKENDS = ("torch", *FIXED, "ort-measured")


def random_model(folder: Path, config_path: Path, auto_class: str = "AutoModel") -> Path:
    """The architecture in ``config_path`` with random weights, saved as a model folder."""
    import torch
    import transformers
    from transformers import AutoConfig

    cfg = json.loads(config_path.read_text())
    config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(config).eval()
    with torch.no_grad():  # as in a trained checkpoint, biases are not all zero (the initializers zero them)
        for name, param in model.named_parameters():
            if name.endswith(".bias") and "LayerNorm" not in name and ".ln_" not in name:
                param.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    return folder


def run_decoder(name: str, source: Path, work: Path, out: Path, threads: int, min_seconds: float, progress) -> dict:
    from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
    from torchship.benchmarks.report import write_report
    from torchship.benchmarks.timing import TimingPlan
    from torchship.exporters.export import ExportOptions, export
    from torchship.optimizers import OptimizeOptions, optimize

    folder = work / name
    export(str(source), folder, ExportOptions(kind="decoder"), progress=progress)
    artifact = optimize(folder, OptimizeOptions(levels=("all",)), progress=progress)
    plan = replace(TimingPlan(), min_seconds=min_seconds, min_iterations=20)
    backends = ("torch", "ort", "ort-all", "ort-optimized")
    report = run_decoder_benchmark(folder, DecoderBenchOptions(backends=backends, batch_sizes=(1,), prompt=128,
                                                               threads=threads, plan=plan), progress=progress)
    write_report(report, out / name)
    rows = []
    for phase, seq in (("prefill", 128), ("decode", 1)):
        t = report.find("torch", 1, seq, phase)
        best = min((report.find(b, 1, seq, phase) for b in backends[1:]), key=lambda m: m.p50_ms)
        rows.append({"phase": phase, "torch_p50_ms": t.p50_ms, "best_ort": best.backend, "best_ort_p50_ms": best.p50_ms,
                     "speedup": t.p50_ms / best.p50_ms, "max_abs": best.accuracy.max_abs,
                     "per_backend_p50_ms": {b: report.find(b, 1, seq, phase).p50_ms for b in backends}})
    return {"model": name, "threads": threads, "fusion": artifact.manifest.variants["optimized"].fusion.to_json(),
            "decoder_rows": rows, "environment": report.environment.cpu}


def run_model(name: str, source: Path, work: Path, out: Path, threads: int, min_seconds: float, min_iterations: int,
              progress) -> dict:
    from torchship.benchmarks.report import write_report
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.exporters.export import export
    from torchship.optimizers import OptimizeOptions, optimize

    folder = work / name
    export(str(source), folder, progress=progress)
    artifact = optimize(folder, OptimizeOptions(), progress=progress)
    plan = replace(TimingPlan(), min_seconds=min_seconds, min_iterations=min_iterations)
    report = run_benchmark(folder, BenchOptions(backends=BACKENDS, shapes=SHAPES, threads=threads, plan=plan),
                           progress=progress)
    write_report(report, out / name)
    ran = dict(part.split(": ", 1) for part in report.variant_files["ort-measured"].split("; "))
    rows = []
    for batch, seq in SHAPES:
        torch_m = report.find("torch", batch, seq)
        ours = report.find("ort-measured", batch, seq)
        best = min((report.find(b, batch, seq) for b in FIXED), key=lambda m: m.p50_ms)
        rows.append({"batch": batch, "sequence": seq, "torch_p50_ms": torch_m.p50_ms,
                     "measured_ran": ran[f"batch {batch} x seq {seq}"], "measured_p50_ms": ours.p50_ms,
                     "speedup": torch_m.p50_ms / ours.p50_ms, "cosine_min": ours.accuracy.cosine_min,
                     "max_abs": ours.accuracy.max_abs, "best_fixed": best.backend, "best_fixed_p50_ms": best.p50_ms})
    fusion = artifact.manifest.variants["optimized"].fusion.to_json()  # as the manifest writes it, for the JSON
    return {"model": name, "threads": threads, "fusion": fusion, "rows": rows,
            "environment": report.environment.cpu}


def decoder_markdown(results: list[dict]) -> str:
    lines = ["| model | phase (batch 1, 128 tokens) | eager PyTorch p50 ms | best fp32 ORT | ORT p50 ms | speedup | logits max abs |",
             "|---|---|---:|---|---:|---:|---:|"]
    for res in results:
        for r in res["decoder_rows"]:
            what = "prefill: 128-token prompt" if r["phase"] == "prefill" else "decode: 1 token, 128 past"
            lines.append(f"| {res['model']} | {what} | {r['torch_p50_ms']:.2f} | {r['best_ort']} | {r['best_ort_p50_ms']:.2f} | "
                         f"{r['speedup']:.2f}x | {r['max_abs']:.1e} |")
    for res in results:
        f = res["fusion"]
        lines.append(f"\n- {res['model']}: fused attention {f['attention']}/{f['expected_attention']} in `ort-optimized`; "
                     "p50 per backend (ms): " + "; ".join(
                         f"{r['phase']} " + ", ".join(f"{b} {v:.2f}" for b, v in r["per_backend_p50_ms"].items())
                         for r in res["decoder_rows"]))
    return "\n".join(lines) + "\n"


def summary_markdown(results: list[dict]) -> str:
    if not results:
        return ""
    lines = ["| model | batch | seq | eager PyTorch p50 ms | `ort-measured` ran | its p50 ms | speedup | min cosine "
             "| max abs | best fixed variant | its p50 ms |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['model']} | {r['batch']} | {r['sequence']} | {r['torch_p50_ms']:.2f} | "
                         f"{r['measured_ran']} | {r['measured_p50_ms']:.2f} | {r['speedup']:.2f}x | "
                         f"{r['cosine_min']:.6f} | {r['max_abs']:.1e} | {r['best_fixed']} | "
                         f"{r['best_fixed_p50_ms']:.2f} |")
    first = results[0]
    lines += ["", f"CPU: {first['environment']}; {first['threads']} threads for every backend; "
              "ORT threads spinning during each run only; "
              "medians of interleaved runs."]
    for res in results:
        f = res["fusion"]
        lines.append(f"- {res['model']}: fused Attention {f['attention']}/{f['expected_attention']}, "
                     f"EmbedLayerNormalization {f['counts']['EmbedLayerNormalization']}, "
                     f"SkipLayerNormalization {f['counts']['SkipLayerNormalization']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from torchship._progress import Progress
    from torchship._ort import usable_cpus
    from torchship.demo import packaged_minilm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,bert-base,gpt2", help="comma-separated: minilm, bert-base, gpt2")
    ap.add_argument("--output", type=Path, default=ROOT / "reports" / "benchmark")
    ap.add_argument("--threads", type=int, default=usable_cpus())
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--bert-base-config", type=Path, default=BERT_BASE_CONFIG)
    ap.add_argument("--gpt2-config", type=Path, default=GPT2_CONFIG)
    args = ap.parse_args(argv)
    progress = Progress(step=lambda t: print(f"benchmark: {t}", file=sys.stderr, flush=True))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"minilm", "bert-base", "gpt2"}
    if unknown:
        print(f"benchmark: error: unknown model {sorted(unknown)[0]!r}; use minilm, bert-base, gpt2", file=sys.stderr)
        return 2
    for name, path, flag in (("bert-base", args.bert_base_config, "--bert-base-config"),
                             ("gpt2", args.gpt2_config, "--gpt2-config")):
        if name in models and not path.is_file():
            print(f"benchmark: error: {path} is missing; pass {flag}", file=sys.stderr)
            return 2
    results, decoders = [], []
    with tempfile.TemporaryDirectory(prefix="torchship-bench-") as tmp:
        work = Path(tmp)
        for name in models:
            if name == "minilm":
                results.append(run_model("all-MiniLM-L6-v2", packaged_minilm(), work, args.output, args.threads,
                                         args.min_seconds, 30, progress))
            elif name == "bert-base":
                source = random_model(work / "bert-base-src", args.bert_base_config)
                results.append(run_model("bert-base-cased-size", source, work, args.output, args.threads,
                                         args.min_seconds, 10, progress))
            else:
                source = random_model(work / "gpt2-src", args.gpt2_config, "AutoModelForCausalLM")
                decoders.append(run_decoder("gpt2-small-size", source, work, args.output, args.threads,
                                            args.min_seconds, progress))
    args.output.mkdir(parents=True, exist_ok=True)
    text = summary_markdown(results) + ("\n" + decoder_markdown(decoders) if decoders else "")
    suffix = "" if set(models) == {"minilm", "bert-base", "gpt2"} else "-" + "-".join(models)
    (args.output / f"SUMMARY{suffix}.md").write_text(text)
    (args.output / f"summary{suffix}.json").write_text(json.dumps(results + decoders, indent=2) + "\n")
    print(text)
    print(f"reports: {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
