#!/usr/bin/env python
"""The packaged all-MiniLM-L6-v2 served by torchship (Triton) and by Infinity, side by side in one run.

    python scripts/serving_benchmark.py [--concurrency 8] [--duration 20] [--rounds 2]
        [--infinity-env ~/.cache/torchship/infinity-env] [--queue-delays 0,100,1000] [--out reports/serving]

1. Exports the model and writes a text-in repository through the CLI, as a user would (``export-bert``,
   ``torchship triton``), and starts ``torchship serve``'s tritonserver on loopback.
2. Starts Infinity (``infinity-emb`` 0.0.78, ``--engine torch``, CPU) on the same model folder, from its own
   environment (built on first use with this environment's torch; its ``[all]`` extra would pull a CUDA torch).
3. Checks both servers' answers on the 60 shipped sentences against sentence-transformers' ``encode``.
4. Runs the same closed-loop client (``torchship.serving.loadtest``) against each, interleaved by rounds,
   ``--concurrency`` clients for ``--duration`` seconds a round, one text per request.
5. With ``--queue-delays``: the same load on torchship's repository rewritten with each dynamic-batching delay.
Writes SUMMARY.md, summary.json and throughput.png to --out. Both servers stay up during the whole run, idle
when the other is measured.
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
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
INFINITY = "infinity-emb[server,torch]==0.0.78"


def infinity_env(path: Path) -> Path:
    python = path / "bin" / "python"
    if (path / "bin" / "infinity_emb").exists():
        return path
    from importlib.metadata import version

    print(f"building Infinity's environment in {path} (torch {version('torch')}, {INFINITY})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={version('torch')}"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", INFINITY], check=True)
    return path


def start_infinity(env: Path, model: Path, port: int, log: Path) -> subprocess.Popen:
    environ = dict(os.environ, HF_HUB_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
    proc = subprocess.Popen([str(env / "bin" / "infinity_emb"), "v2", "--model-id", str(model), "--engine", "torch",
                             "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=environ, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"Infinity exited: {log.read_text()[-800:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("Infinity was not ready after 180 s")


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cosines(send, texts, reference) -> float:
    got = [v for i in range(0, len(texts), 8) for v in send(texts[i:i + 8])]
    return float(min(np.dot(g, r) / (np.linalg.norm(g) * np.linalg.norm(r)) for g, r in zip(got, reference)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--infinity-env", type=Path, default=Path.home() / ".cache" / "torchship" / "infinity-env")
    ap.add_argument("--queue-delays", default="", help="comma-separated microseconds, e.g. 0,100,1000")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "serving")
    args = ap.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from torchship.benchmarks.results import Environment
    from torchship.demo import packaged_minilm
    from torchship.serving.client import load_texts
    from torchship.serving.loadtest import InfinityHTTP, LoadOptions, LoadReport, TritonHTTP, plot, run_level
    from torchship.serving.server import Ports, Server, free_port

    texts = load_texts(None)
    model_dir = packaged_minilm()
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(texts)
    env = infinity_env(args.infinity_env)
    options = LoadOptions((args.concurrency,), args.duration, args.warmup).checked()
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    infinity = server = None
    try:
        folder, repo = work / "minilm", work / "repo"
        subprocess.run([str(BIN / "export-bert"), "--model", str(model_dir), "--output", str(folder)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([str(BIN / "torchship"), "triton", str(folder), "--output", str(repo), "--name", "minilm"],
                       check=True, stdout=subprocess.DEVNULL)
        server = Server(repo, Ports(free_port(), free_port(), free_port())).start()
        port = free_port()
        infinity = start_infinity(env, model_dir, port, work / "infinity.log")
        targets = {"torchship (Triton)": TritonHTTP("127.0.0.1", server.ports.http, "minilm"),
                   "Infinity (torch)": InfinityHTTP("127.0.0.1", port, str(model_dir))}
        check = {name: cosines(t.connect(), texts, reference) for name, t in targets.items()}
        rounds = {name: [] for name in targets}
        for r in range(args.rounds):
            for name, target in (targets.items() if r % 2 == 0 else reversed(list(targets.items()))):
                level = run_level(target, texts, args.concurrency, options)
                rounds[name].append(level)
                print(f"round {r + 1} {name}: {level.texts_per_s:.1f} texts/s, p99 {level.p99_ms:.1f} ms, "
                      f"{level.errors} errors", file=sys.stderr)
        delays = []
        for delay in [int(d) for d in args.queue_delays.split(",") if d.strip()]:
            server.stop()
            subprocess.run([str(BIN / "torchship"), "triton", str(folder), "--output", str(repo), "--name", "minilm",
                            "--max-queue-delay-us", str(delay)], check=True, stdout=subprocess.DEVNULL)
            server = Server(repo, Ports(free_port(), free_port(), free_port())).start()
            level = run_level(TritonHTTP("127.0.0.1", server.ports.http, "minilm"), texts, args.concurrency, options)
            delays.append((delay, level))
            print(f"queue delay {delay} us: {level.texts_per_s:.1f} texts/s, p99 {level.p99_ms:.1f} ms",
                  file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        if infinity is not None:
            stop(infinity)
        shutil.rmtree(work, ignore_errors=True)

    from dataclasses import asdict

    from torchship.artifact import library_versions

    environment = Environment.collect(threads=2, spin="off", versions=library_versions())
    summary = {"command": "python scripts/serving_benchmark.py " + " ".join(argv or sys.argv[1:]),
               "environment": asdict(environment),
               "concurrency": args.concurrency, "duration_s": args.duration, "rounds": args.rounds,
               "min_cosine_vs_sentence_transformers": check,
               "servers": {name: [vars(v) for v in levels] for name, levels in rounds.items()},
               "queue_delays": [{"delay_us": d, **vars(v)} for d, v in delays]}
    mean = {name: float(np.mean([v.texts_per_s for v in levels])) for name, levels in rounds.items()}
    worst_p99 = {name: float(max(v.p99_ms for v in levels)) for name, levels in rounds.items()}
    p50 = {name: float(np.median([v.p50_ms for v in levels])) for name, levels in rounds.items()}
    ours, theirs = list(rounds)
    summary["ratio_texts_per_s"] = mean[ours] / mean[theirs]
    lines = ["# Serving the packaged all-MiniLM-L6-v2: torchship on Triton against Infinity", "",
             f"Command: `{summary['command']}`", "",
             f"Machine: {environment.cpu}, {environment.logical_cpus} logical CPUs. One text per request, {args.concurrency} "
             f"closed-loop clients, {args.duration:g} s per round after {args.warmup:g} s of warm-up, {args.rounds} "
             f"rounds interleaved; both servers up the whole time, on loopback, same client code.", "",
             "| server | texts/s (mean of rounds) | p50 ms (median) | p99 ms (worst round) | errors | min cosine vs "
             "sentence-transformers |", "|---|---:|---:|---:|---:|---:|"]
    for name in rounds:
        lines.append(f"| {name} | {mean[name]:.1f} | {p50[name]:.1f} | {worst_p99[name]:.1f} | "
                     f"{sum(v.errors for v in rounds[name])} | {check[name]:.6f} |")
    lines += ["", f"torchship delivers {summary['ratio_texts_per_s']:.2f}x Infinity's texts/s."]
    if delays:
        lines += ["", "## Dynamic-batching delay (torchship)", "", "| max_queue_delay_microseconds | texts/s | "
                  "p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
        lines += [f"| {d} | {v.texts_per_s:.1f} | {v.p50_ms:.1f} | {v.p99_ms:.1f} |" for d, v in delays]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plot([LoadReport(name, "minilm", "http", {}, tuple(levels)) for name, levels in rounds.items()],
         args.out / "throughput.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
