#!/usr/bin/env python
"""The README's benchmark: eager PyTorch vs ONNX Runtime (fp32) on the packaged all-MiniLM-L6-v2 and on a
model of bert-base-cased's size (its architecture from ../shared/data, random weights).

    python scripts/benchmark.py                 # both models, writes reports/benchmark/
    python scripts/benchmark.py --models minilm --threads 2

For each model: export (validated), optimize (ORT 'all' level + transformer fusion, validated), then
time every backend interleaved at batch 1 x seq 128, batch 8 x seq 128 and batch 1 x seq 16 with the
same thread count. One report folder per model, and SUMMARY.md with the speedup of the best fp32 ORT
variant over eager PyTorch.
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
SHAPES = ((1, 128), (8, 128), (1, 16))
BACKENDS = ("torch", "ort", "ort-all", "ort-optimized")


def random_bert_base(folder: Path, config_path: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = json.loads(config_path.read_text())
    config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
    torch.manual_seed(0)
    AutoModel.from_config(config).eval().save_pretrained(folder)
    return folder


def run_model(name: str, source: Path, work: Path, out: Path, threads: int, min_seconds: float, min_iterations: int,
              progress) -> dict:
    from torchship.benchmarks.report import write_report
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.exporters.export import export
    from torchship.optimizers import OptimizeOptions, optimize

    folder = work / name
    export(str(source), folder, progress=progress)
    artifact = optimize(folder, OptimizeOptions(levels=("all",)), progress=progress)
    plan = replace(TimingPlan(), min_seconds=min_seconds, min_iterations=min_iterations)
    report = run_benchmark(folder, BenchOptions(backends=BACKENDS, shapes=SHAPES, threads=threads, plan=plan),
                           progress=progress)
    write_report(report, out / name)
    rows = []
    for batch, seq in SHAPES:
        torch_m = report.find("torch", batch, seq)
        best = min((report.find(b, batch, seq) for b in BACKENDS[1:]), key=lambda m: m.p50_ms)
        rows.append({"batch": batch, "sequence": seq, "torch_p50_ms": torch_m.p50_ms,
                     "best_ort": best.backend, "best_ort_p50_ms": best.p50_ms,
                     "speedup": torch_m.p50_ms / best.p50_ms, "cosine_min": best.accuracy.cosine_min,
                     "max_abs": best.accuracy.max_abs})
    fusion = artifact.manifest.variants["optimized"].fusion
    return {"model": name, "threads": threads, "fusion": fusion, "rows": rows,
            "environment": report.environment.cpu}


def summary_markdown(results: list[dict]) -> str:
    lines = ["| model | batch | seq | eager PyTorch p50 ms | best fp32 ORT | ORT p50 ms | speedup | min cosine | max abs |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['model']} | {r['batch']} | {r['sequence']} | {r['torch_p50_ms']:.2f} | {r['best_ort']} | "
                         f"{r['best_ort_p50_ms']:.2f} | {r['speedup']:.2f}x | {r['cosine_min']:.6f} | {r['max_abs']:.1e} |")
    first = results[0]
    lines += ["", f"CPU: {first['environment']}; {first['threads']} threads for every backend; ORT spinning off; "
              "medians of interleaved runs."]
    for res in results:
        f = res["fusion"]
        lines.append(f"- {res['model']}: fused Attention {f['attention']}/{f['expected_attention']}, "
                     f"EmbedLayerNormalization {f['counts']['EmbedLayerNormalization']}, "
                     f"SkipLayerNormalization {f['counts']['SkipLayerNormalization']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from torchship._progress import Progress
    from torchship.benchmarks.run import default_threads
    from torchship.demo import packaged_minilm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,bert-base", help="comma-separated: minilm, bert-base")
    ap.add_argument("--output", type=Path, default=ROOT / "reports" / "benchmark")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--bert-base-config", type=Path, default=BERT_BASE_CONFIG)
    args = ap.parse_args(argv)
    progress = Progress(step=lambda t: print(f"benchmark: {t}", file=sys.stderr, flush=True))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"minilm", "bert-base"}
    if unknown:
        print(f"benchmark: error: unknown model {sorted(unknown)[0]!r}; use minilm, bert-base", file=sys.stderr)
        return 2
    if "bert-base" in models and not args.bert_base_config.is_file():
        print(f"benchmark: error: {args.bert_base_config} is missing; pass --bert-base-config", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="torchship-bench-") as tmp:
        work = Path(tmp)
        for name in models:
            if name == "minilm":
                results.append(run_model("all-MiniLM-L6-v2", packaged_minilm(), work, args.output, args.threads,
                                         args.min_seconds, 30, progress))
            else:
                source = random_bert_base(work / "bert-base-src", args.bert_base_config)
                results.append(run_model("bert-base-cased-size", source, work, args.output, args.threads,
                                         args.min_seconds, 10, progress))
    args.output.mkdir(parents=True, exist_ok=True)
    text = summary_markdown(results)
    (args.output / "SUMMARY.md").write_text(text)
    (args.output / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    print(f"reports: {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
