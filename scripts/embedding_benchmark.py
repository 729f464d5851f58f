#!/usr/bin/env python
"""Sentence embeddings on the packaged all-MiniLM-L6-v2: what pooling in the graph costs, and torchship
against sentence-transformers' own ``encode`` one request at a time.

    python scripts/embedding_benchmark.py [--threads 2] [--min-seconds 10] [--out reports/embeddings]

1. Exports the model twice, through the CLI as a user would: hidden states (``export-bert``) and
   ``--task sentence-embedding`` (pooling and normalisation in the graph), each transformer-fused.
2. Times both fused graphs interleaved at batch 1 x 128 tokens: the cost of the pooling ops.
3. Encodes the 60 shipped sentences one request at a time, at their real lengths (tokenizer included),
   with sentence-transformers' ``encode`` in eager PyTorch and with torchship's predictor on the
   sentence-embedding export, interleaved by rounds; texts/s and the cosine between the two.
Writes SUMMARY.md and summary.json to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "embeddings")
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from torchship.artifact import Artifact
    from torchship.benchmarks.timing import TimingPlan, measure_interleaved
    from torchship.demo import packaged_minilm
    from torchship.exporters.spec import family_of, saved_config
    from torchship.optimizers.accuracy import DEFAULT_TEXTS, read_texts
    from torchship.runtimes import RuntimeOptions, create_predictor
    from torchship.runtimes.text import TextModel

    torch.set_num_threads(args.threads)
    src = packaged_minilm()
    texts = read_texts(DEFAULT_TEXTS, what="texts")
    with tempfile.TemporaryDirectory() as tmp:
        hidden_dir, pooled_dir = Path(tmp) / "hidden", Path(tmp) / "pooled"
        for cmd in ([str(BIN / "export-bert"), "--model", str(src), "--output", str(hidden_dir)],
                    [str(BIN / "export-bert"), "--model", str(src), "--output", str(pooled_dir),
                     "--task", "sentence-embedding"]):
            subprocess.run(cmd, check=True, capture_output=True)
        runtime = RuntimeOptions(threads=args.threads)
        arts = {"hidden states": Artifact.open(hidden_dir), "sentence embedding": Artifact.open(pooled_dir)}
        preds = {k: create_predictor(a, "ort-optimized", runtime).activate() for k, a in arts.items()}
        spec, art = family_of(arts["hidden states"].manifest), arts["hidden states"]
        config = saved_config(art)
        feeds = spec.sample_inputs(config, art.manifest.io(), spec.case_for({"batch": 1, "sequence": 128}, config),
                                   seed=0)
        plan = TimingPlan(min_seconds=args.min_seconds, min_iterations=50)
        graph = measure_interleaved({k: (lambda p=p: p.infer(feeds)) for k, p in preds.items()}, plan)
        graph_ms = {k: float(np.median(v) * 1000) for k, v in graph.items()}
        overhead = graph_ms["sentence embedding"] / graph_ms["hidden states"] - 1

        st = SentenceTransformer(str(src), device="cpu")
        text_model = TextModel.from_artifact(arts["sentence embedding"], preds["sentence embedding"])

        def st_round():
            return [st.encode(t, convert_to_numpy=True) for t in texts]

        def ours_round():
            return [text_model.predict([t]).embeddings[0] for t in texts]

        cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(st_round(), ours_round())]
        rounds = measure_interleaved({"sentence-transformers encode (eager PyTorch)": st_round,
                                      "torchship predictor (sentence-embedding export, ort-optimized)": ours_round},
                                     TimingPlan(warmup=1, min_iterations=5, min_seconds=args.min_seconds, block=1))
        rate = {k: len(texts) / float(np.median(v)) for k, v in rounds.items()}
        fusion = arts["sentence embedding"].manifest.variants["optimized"].fusion
    ratio = rate["torchship predictor (sentence-embedding export, ort-optimized)"] / \
        rate["sentence-transformers encode (eager PyTorch)"]
    summary = {"threads": args.threads, "graph_p50_ms_b1_s128": graph_ms, "pooling_overhead": overhead,
               "texts_per_s": rate, "speedup": ratio, "cosine_min": min(cos), "cosine_mean": float(np.mean(cos)),
               "texts": len(texts), "fused_attention": f"{fusion.attention}/{fusion.expected_attention}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# Sentence embeddings: all-MiniLM-L6-v2 (packaged)", "",
             f"`python scripts/embedding_benchmark.py --threads {args.threads} --min-seconds {args.min_seconds:g}`; "
             "medians of interleaved runs in one process.", "",
             "| graph (transformer-fused, batch 1 x 128 tokens) | p50 ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in graph_ms.items()]
    lines += ["", f"Pooling and normalisation in the graph cost {overhead * 100:+.1f}% (fused attention "
                  f"{summary['fused_attention']} in the sentence-embedding graph).", "",
              f"| {len(texts)} sentences, one request each, real lengths | texts/s |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in rate.items()]
    lines += ["", f"torchship: **{ratio:.2f}x** the texts/s of sentence-transformers' encode; cosine to its "
                  f"embeddings min {min(cos):.6f}, mean {np.mean(cos):.6f}.", ""]
    (args.out / "SUMMARY.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
