#!/usr/bin/env python
"""Every encoder family at one size (MiniLM's: 6 layers, hidden 384, 12 heads, random weights): what ONNX
Runtime fuses for it and what that is worth against eager PyTorch.

    python scripts/family_benchmark.py [--threads 2] [--min-seconds 3] [--out reports/families]

For each family it saves a random checkpoint, runs `torchship export` and `torchship optimize --levels all`
through the library as the CLI does, and benchmarks eager PyTorch, the export (`ort`), ORT level all and
the transformer-fused model interleaved at batch 1 x 128 tokens. Families whose attention ONNX Runtime
cannot fuse show what that costs next to BERT, whose attention it fuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
            max_position_embeddings=512, vocab_size=30522)
FAMILIES = {
    "bert": dict(type_vocab_size=2),
    "mpnet": dict(),
    "albert": dict(type_vocab_size=2, embedding_size=128),
    "deberta-v2": dict(type_vocab_size=0, relative_attention=True, position_buckets=256,
                       max_relative_positions=512, pos_att_type=["p2c", "c2p"], position_biased_input=False),
    "modernbert": dict(global_attn_every_n_layers=3, local_attention=128, bos_token_id=2, eos_token_id=3,
                       cls_token_id=2, sep_token_id=3),
}
BACKENDS = ("torch", "ort", "ort-all", "ort-optimized")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "families")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModel

    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.exporters.export import export
    from torchship.optimizers import OptimizeOptions, optimize

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tokenizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, extra in FAMILIES.items():
            src = Path(tmp) / family
            torch.manual_seed(0)
            model = AutoModel.from_config(AutoConfig.for_model(family, **SIZE, **extra, pad_token_id=0)).eval()
            with torch.no_grad():  # trained checkpoints have non-zero biases; fresh initialisation zeroes them
                for name, p in model.named_parameters():
                    if name.endswith(".bias"):
                        p.normal_(0.0, 0.02)
            model.save_pretrained(src)
            make_tokenizer(src).save_pretrained(src)
            out = Path(tmp) / f"{family}-onnx"
            export(str(src), out)
            art = optimize(out, OptimizeOptions(levels=("all",)))
            fusion = art.manifest.variants["optimized"].fusion
            report = run_benchmark(out, BenchOptions(backends=BACKENDS, sizes=({"batch": 1, "sequence": 128},),
                                                     threads=args.threads,
                                                     plan=TimingPlan(min_seconds=args.min_seconds)))
            p50 = {m.backend: m.p50_ms for m in report.measurements}
            rows.append({"family": family, "fused_attention": f"{fusion.attention}/{fusion.expected_attention}",
                         "p50_ms": p50, "best": min(BACKENDS[1:], key=lambda b: p50[b]),
                         "max_abs": max(m.accuracy.max_abs for m in report.measurements if m.accuracy)})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"threads": args.threads, "size": SIZE, "rows": rows},
                                                      indent=2) + "\n")
    lines = ["# Encoder families at one size: what ONNX Runtime fuses, and what it is worth", "",
             f"`python scripts/family_benchmark.py --threads {args.threads} --min-seconds {args.min_seconds:g}`: "
             "random weights at MiniLM's size (6 layers, hidden 384, 12 heads), batch 1 x 128 tokens, "
             f"{args.threads} threads, every backend interleaved per family.", "",
             "| family | fused attention | eager PyTorch ms | ort ms | ort-all ms | ort-optimized ms | best vs PyTorch "
             "| max abs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["p50_ms"]
        lines.append(f"| {r['family']} | {r['fused_attention']} | {p['torch']:.2f} | {p['ort']:.2f} | "
                     f"{p['ort-all']:.2f} | {p['ort-optimized']:.2f} | {p['torch'] / p[r['best']]:.2f}x "
                     f"({r['best']}) | {r['max_abs']:.1e} |")
    (args.out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
