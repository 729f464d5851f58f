#!/usr/bin/env python
"""torchship's int8 against eager PyTorch on the packaged all-MiniLM-L6-v2 (issue 17's int8 bar).

    python scripts/int8_benchmark.py                  # writes reports/int8/SUMMARY.md and summary.json
    python scripts/int8_benchmark.py --seconds 30     # longer interleaved timing for steadier medians
    python scripts/int8_benchmark.py --quantize-args "--calibration torchship/data/calibration.txt"

The stages run as a user runs them, through the CLI, in a fresh folder:

    torchship export --model <packaged MiniLM> --output M
    torchship optimize M --levels '' --candidates preset     # the transformer-fused model quantize starts from
    torchship quantize M --threads 2 [--quantize-args ...]   # the measured int8 search; the fastest within 0.99

Then, in this one process: eager PyTorch (torchship's torch backend), the fp32 fused model and the kept int8
model are timed at batch 1 x 128 tokens (held-out text), --threads threads each, ORT threads spinning during
each run only, interleaved in blocks until each has run --seconds (medians compared). The int8 model's sentence embeddings are compared
with sentence-transformers' own eager fp32 ``encode`` on 40 held-out sentences (scripts/int8_heldout.txt: none
of them is in the accuracy probe's torchship/data/sentences.txt or in torchship/data/calibration.txt).

The bar: int8 at least 2.5x faster than eager PyTorch (median) at mean sentence cosine >= 0.99. The machine's
load average before and after is recorded: numbers from a busy machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HELD_OUT = Path(__file__).resolve().parent / "int8_heldout.txt"
BAR_SPEEDUP, BAR_COSINE = 2.5, 0.99
BACKENDS = ("torch", "ort-optimized", "ort-int8")


def run(cmd: list[str]) -> float:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def held_out_texts() -> list[str]:
    from torchship.optimizers.accuracy import DEFAULT_TEXTS, read_texts

    texts = read_texts(HELD_OUT, what="held-out sentences")
    seen = set(read_texts(DEFAULT_TEXTS, what="probe sentences"))
    seen |= set(read_texts(ROOT / "torchship" / "data" / "calibration.txt", what="calibration sentences"))
    overlap = [t for t in texts if t in seen]
    if overlap:
        raise SystemExit(f"held-out sentences also used by quantize: {overlap[:3]}")
    return texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per backend, at least")
    ap.add_argument("--quantize-args", default="", help="extra flags for torchship quantize")
    args = ap.parse_args(argv)
    command = "python scripts/int8_benchmark.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    load_before = os.getloadavg()

    import torch
    from sentence_transformers import SentenceTransformer

    from torchship.artifact import Artifact
    from torchship.benchmarks.timing import TimingPlan, cpu_name, measure_interleaved
    from torchship.demo import packaged_minilm
    from torchship.runtimes import RuntimeOptions, create_predictor
    from torchship.runtimes.text import TextModel, load_tokenizer, tokenize

    torch.set_num_threads(args.threads)
    src = packaged_minilm()
    texts = held_out_texts()
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="torchship-int8-") as tmp:
        folder = Path(tmp) / "minilm"
        ts = str(BIN / "torchship")
        seconds["export"] = run([ts, "export", "--model", str(src), "--output", str(folder)])
        seconds["optimize"] = run([ts, "optimize", str(folder), "--levels", "", "--candidates", "preset"])
        seconds["quantize"] = run([ts, "quantize", str(folder), "--threads", str(args.threads),
                                   *shlex.split(args.quantize_args)])
        art = Artifact.open(folder)
        m = art.manifest

        # One batch of 128 real tokens: the held-out sentences run together, cut at 128.
        feeds, _ = tokenize(load_tokenizer(art), [" ".join(texts)], m.input_names, 128)
        assert feeds["input_ids"].shape == (1, 128), feeds["input_ids"].shape
        runtime = RuntimeOptions(threads=args.threads, spin="run")
        preds = {b: create_predictor(art, b, runtime).activate() for b in BACKENDS}
        try:
            plan = TimingPlan(warmup=10, min_iterations=50, min_seconds=args.seconds, max_iterations=100_000,
                              block=5, pause_s=0.01)
            print(f"timing {', '.join(BACKENDS)} interleaved at batch 1 x 128, {args.threads} threads", flush=True)
            times = measure_interleaved({b: (lambda p=p: p.infer(feeds)) for b, p in preds.items()}, plan)
            ref = SentenceTransformer(str(src), device="cpu").encode(texts, normalize_embeddings=True)
            got = TextModel.from_artifact(art, preds["ort-int8"]).predict(texts).embeddings
        finally:
            for p in preds.values():
                p.deactivate()
        cos = (ref * got).sum(axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        int8 = m.variants["int8"]
        q = m.quantization
        probe = int8.validation.accuracy
    timing = {b: {"median_ms": float(np.median(t) * 1000), "p10_ms": float(np.percentile(t, 10) * 1000),
                  "p90_ms": float(np.percentile(t, 90) * 1000), "runs": len(t)} for b, t in times.items()}
    speedup = timing["torch"]["median_ms"] / timing["ort-int8"]["median_ms"]
    summary = {
        "command": command,
        "machine": {"cpu": cpu_name(), "cpus_visible": len(os.sched_getaffinity(0)), "threads": args.threads,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
                    "versions": _versions()},
        "shape": "batch 1 x 128 tokens", "spin": "run", "timing": timing,
        "int8_vs_eager": round(speedup, 3),
        "held_out": {"file": str(HELD_OUT.relative_to(ROOT)), "sentences": len(texts),
                     "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                     "against": "sentence-transformers encode, eager fp32"},
        "kept": {"name": int8.options.name, "size_mb": round(int8.size_bytes / 1e6, 1),
                 "probe": {"metric": probe.metric, "mean": probe.mean, "min": probe.min, "samples": probe.samples,
                           "budget": probe.budget},
                 "fp32_fallback": list(int8.options.fp32_fallback), "search_s": int8.options.search_s},
        "candidates": [{"name": c.name, "accuracy_mean": c.accuracy.mean if c.accuracy else None, "p50_ms": c.p50_ms,
                        "verdict": c.verdict} for c in q.candidates],
        "fallback": q.to_json()["fallback"],
        "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "bar": {"speedup": BAR_SPEEDUP, "cosine": BAR_COSINE,
                "met": bool(speedup >= BAR_SPEEDUP and cos.mean() >= BAR_COSINE)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    from torchship._fs import write_text_atomic

    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    text = summarize(summary)
    write_text_atomic(args.out / "SUMMARY.md", text)
    print(text)
    return 0


def _versions() -> dict:
    from importlib.metadata import version

    from torchship.artifact import library_versions

    return {**library_versions(), "sentence-transformers": version("sentence-transformers")}


def summarize(s: dict) -> str:
    t, held, mach = s["timing"], s["held_out"], s["machine"]
    eager = t["torch"]["median_ms"]
    lines = [
        "# int8 against eager PyTorch: all-MiniLM-L6-v2, batch 1 x 128 tokens",
        "",
        f"`{s['command'].strip()}` on {mach['cpu']}, {mach['threads']} threads ({mach['cpus_visible']} CPUs visible), "
        "ORT threads spinning during each run, stopped after it; every backend interleaved in one process. "
        f"Load average before "
        f"{mach['load_average_before'][0]:.2f}, after {mach['load_average_after'][0]:.2f}.",
        "",
        "| backend | median ms | p10 ms | p90 ms | runs | vs eager PyTorch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for b, r in t.items():
        lines.append(f"| {b} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | {r['runs']} | "
                     f"{eager / r['median_ms']:.2f}x |")
    kept = s["kept"]
    lines += [
        "",
        f"Kept int8 candidate: `{kept['name']}` ({kept['size_mb']} MB; quantize's probe: {kept['probe']['metric']} "
        f"mean {kept['probe']['mean']:.4f} against the fp32 export on {kept['probe']['samples']} sentences"
        + (f"; {len(kept['fp32_fallback'])} MatMuls left in fp32 by the fallback" if kept["fp32_fallback"] else "")
        + f"; search {kept['search_s']} s, of {len(s['candidates'])} candidates).",
        "",
        f"Held-out sentences ({held['sentences']}, {held['file']}): int8 sentence-embedding cosine against "
        f"{held['against']}: mean {held['cosine_mean']:.4f}, min {held['cosine_min']:.4f}.",
        "",
        f"**int8: {s['int8_vs_eager']:.2f}x eager PyTorch at mean held-out cosine {held['cosine_mean']:.4f}** "
        f"(bar: >= {s['bar']['speedup']}x at >= {s['bar']['cosine']}: {'met' if s['bar']['met'] else 'NOT met'}).",
        "",
        "Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in s["stage_seconds"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
