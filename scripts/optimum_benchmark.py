#!/usr/bin/env python
"""torchship's measured choice against Optimum's O1-O3 exports of the packaged MiniLM (issue 17's bar).

    python scripts/optimum_benchmark.py                  # writes reports/optimum/
    python scripts/optimum_benchmark.py --seconds-per-shape 60   # more rounds for steadier medians

Optimum pins transformers < 4.58, so it is installed only for this script, in its own environment
(~/.cache/torchship/optimum-venv, made on the first run: optimum[onnxruntime], the same torch and
onnxruntime pins as torchship). There it exports the packaged all-MiniLM-L6-v2 and writes its O1, O2 and O3
optimizations (ORTOptimizer with AutoOptimizationConfig). torchship exports the same checkpoint with
export-bert (graph levels, transformer fusion, and optimize's measured dispatch table).

All of them are then timed here, in one process, on this environment's onnxruntime: per shape of the grid
(batch 1 and 8 x sequence 16, 128 and 384), every model runs once per round, in an order that turns each
round, 2 intra-op threads, ORT threads spinning during each run and stopped after it; the median over the
rounds is compared. torchship's entry is its predictor (``ort-measured``, called as ``predict`` and ``bench`` call
it, input checks included), which runs the variant and session settings its dispatch table chose for the shape
(ORT's defaults, dynamic-blocks, or batch-shards: the batch cut into one part per thread). Optimum's models run
with ORT's defaults, as Optimum runs them; two more columns run O3 with dynamic-blocks and O3 with its weights on
huge pages (as torchship's sessions put theirs, torchship/_hugepages.py), to show what each setting alone gives
it. Each output is compared with the torchship export's (fp32, unoptimized) last hidden
state on the same inputs: the smallest cosine over the tokens.

SUMMARY.md says whether torchship's choice was at least as fast as O3 (ratio >= 1.0) at every shape, at cosine
>= 0.9999; results.json keeps every number.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torchship" / "optimum-venv"
PINS = ["torch==2.13.0", "optimum[onnxruntime]", "transformers<4.58", "onnxruntime==1.32.0"]
LEVELS = ("O1", "O2", "O3")
GRID = [(b, s) for b in (1, 8) for s in (16, 128, 384)]

# Run inside the Optimum environment: export the checkpoint, then write O1-O3 beside it.
OPTIMUM_EXPORT = r"""
import sys
from pathlib import Path
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig

src, out = sys.argv[1], Path(sys.argv[2])
model = ORTModelForFeatureExtraction.from_pretrained(src, export=True)
model.save_pretrained(out / "export")
for level in ("O1", "O2", "O3"):
    optimizer = ORTOptimizer.from_pretrained(model)
    config = getattr(AutoOptimizationConfig, level)()
    optimizer.optimize(save_dir=out / level, optimization_config=config)
from importlib.metadata import version
print({d: version(d) for d in ("optimum", "optimum-onnx", "transformers", "torch", "onnxruntime")})
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def optimum_python() -> Path:
    """The Optimum environment's python, made on first use."""
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").is_file():
        run([sys.executable, "-m", "venv", str(VENV)])
        run([str(python), "-m", "pip", "install", "-q", *PINS])
        (VENV / ".installed").write_text(" ".join(PINS) + "\n")
    return python


def optimum_exports(src: Path, out: Path) -> dict:
    """O1-O3 ONNX files of ``src`` made by Optimum, with the versions it ran."""
    script = out / "optimum_export.py"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text(OPTIMUM_EXPORT)
    proc = run([str(optimum_python()), str(script), str(src), str(out)], capture_output=True, text=True)
    versions = proc.stdout.strip().splitlines()[-1]
    files = {}
    for level in LEVELS:
        found = sorted((out / level).glob("*.onnx"))
        if not found:
            raise SystemExit(f"Optimum wrote no ONNX file for {level} in {out / level}")
        files[level] = found[0]
    return {"files": files, "versions": versions}


def feeds_for(batch: int, sequence: int, names, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 29000, size=(batch, sequence), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    all_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: all_feeds[n] for n in names}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine over the token vectors."""
    from torchship.compare import rowwise_cosine

    return float(rowwise_cosine(a, b).min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "optimum")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds per shape, at most")
    parser.add_argument("--seconds-per-shape", type=float, default=30.0,
                        help="fewer rounds (5 at least) where one round of all models takes longer than this / rounds")
    parser.add_argument("--work", type=Path, default=None, help="keep the exports here (default: a temp folder)")
    args = parser.parse_args()

    from torchship._ort import make_session
    from torchship.artifact import Artifact
    from torchship.demo import packaged_minilm
    from torchship.runtimes import RuntimeOptions, create_predictor

    work = args.work or Path(tempfile.mkdtemp(prefix="torchship-optimum-"))
    src = packaged_minilm()
    try:
        folder = work / "torchship"
        if not (folder / "torchship.json").is_file():
            run([str(BIN / "export-bert"), "--model", str(src), "--output", str(folder)])
        optimum = optimum_exports(src, work / "optimum") if not (work / "optimum" / "O3").is_dir() else \
            {"files": {lv: sorted((work / "optimum" / lv).glob("*.onnx"))[0] for lv in LEVELS}, "versions": "reused"}
        art = Artifact.open(folder)
        table = art.manifest.dispatch
        if not table:
            raise SystemExit(f"{folder} has no dispatch table; run torchship optimize {folder}")
        sessions = {lv: make_session(path, threads=args.threads, huge_pages=False)
                    for lv, path in optimum["files"].items()}
        sessions["O3+dynamic-blocks"] = make_session(optimum["files"]["O3"], threads=args.threads,
                                                     tuning="dynamic-blocks", huge_pages=False)
        sessions["O3+huge-pages"] = make_session(optimum["files"]["O3"], threads=args.threads)
        reference = make_session(art.path_of("model"), threads=args.threads, level="disabled")
        predictor = create_predictor(art, "ort-measured", RuntimeOptions(threads=args.threads)).activate()
        rows = []
        for i, (batch, sequence) in enumerate(GRID):
            ref = reference.run(None, feeds_for(batch, sequence, [x.name for x in reference.get_inputs()], seed=i))[0]
            feeds = feeds_for(batch, sequence, art.manifest.io().input_names, seed=i)
            runners = {"torchship": lambda f=feeds: predictor.infer(f)["last_hidden_state"]}
            for name, s in sessions.items():
                f = feeds_for(batch, sequence, [x.name for x in s.get_inputs()], seed=i)
                runners[name] = lambda s=s, f=f: s.run(None, f)[0]
            for run_once in runners.values():
                run_once()  # warm-up (loads the predictor's session for this shape)
            pick, tuning = predictor.last_variant, predictor.last_session
            start = time.perf_counter()
            cos = {name: cosine(ref, run_once()) for name, run_once in runners.items()}
            one_round = time.perf_counter() - start
            rounds = max(5, min(args.rounds, int(args.seconds_per_shape / max(one_round, 1e-6))))
            names = list(runners)
            times = {n: [] for n in names}
            for r in range(rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    start = time.perf_counter()
                    runners[name]()
                    times[name].append(time.perf_counter() - start)
            med = {n: float(np.median(t)) * 1000 for n, t in times.items()}
            rows.append({"batch": batch, "sequence": sequence, "torchship_variant": pick, "session": tuning,
                         "rounds": rounds,
                         "median_ms": med,
                         "p10_ms": {n: float(np.percentile(t, 10)) * 1000 for n, t in times.items()},
                         "p90_ms": {n: float(np.percentile(t, 90)) * 1000 for n, t in times.items()},
                         "cosine": cos, "ratio_vs_O3": med["O3"] / med["torchship"]})
            print(f"b{batch} s{sequence}: torchship ({pick}, {tuning}) {med['torchship']:.2f} ms, "
                  + ", ".join(f"{lv} {med[lv]:.2f}" for lv in LEVELS) + f"; vs O3 {rows[-1]['ratio_vs_O3']:.3f}x",
                  flush=True)
        predictor.deactivate()
        summary = summarize(rows, optimum["versions"], args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(
            {"rows": rows, "optimum": optimum["versions"], "threads": args.threads, "rounds": args.rounds,
             "dispatch": table.to_json()}, indent=2))
        (args.out / "SUMMARY.md").write_text(summary)
        print(summary)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def summarize(rows: list[dict], versions: str, args) -> str:
    from torchship.benchmarks.results import Environment

    env = Environment.collect(threads=args.threads, spin="run", versions={})
    met = all(r["ratio_vs_O3"] >= 1.0 and r["cosine"]["torchship"] >= 0.9999 for r in rows)
    lines = [
        "# torchship's measured choice against Optimum O1-O3 (all-MiniLM-L6-v2)",
        "",
        f"{env.cpu}, {args.threads} threads, ORT spinning during each run only, "
        f"median of {min(r['rounds'] for r in rows)}-"
        f"{max(r['rounds'] for r in rows)} interleaved rounds per shape; "
        f"Optimum environment: {versions}.",
        "",
        f"Command: `python scripts/optimum_benchmark.py{''.join(' ' + a for a in sys.argv[1:])}`.",
        "",
        "| batch | seq | torchship variant | session | torchship ms | O1 ms | O2 ms | O3 ms | vs O3 | "
        "O3 dynamic-blocks ms | O3 huge pages ms | cosine torchship | cosine O3 |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["median_ms"]
        lines.append(f"| {r['batch']} | {r['sequence']} | {r['torchship_variant']} | {r.get('session', 'default')} | "
                     f"{m['torchship']:.2f} | "
                     f"{m['O1']:.2f} | {m['O2']:.2f} | {m['O3']:.2f} | {r['ratio_vs_O3']:.3f}x | "
                     f"{m['O3+dynamic-blocks']:.2f} | {m['O3+huge-pages']:.2f} | "
                     f"{r['cosine']['torchship']:.6f} | {r['cosine']['O3']:.6f} |")
    lines += ["", f"torchship at least as fast as O3 at every shape, at cosine >= 0.9999: {'yes' if met else 'no'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
