"""One decode step of a weight-only variant timed against the fp32 decoder files, interleaved, on this machine: the
number ``--backend auto`` reads to run the variant (runtimes/auto_backend.py), as quantize's timing is for int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship._ort import ort_runner, usable_cpus
from torchship.artifact import Artifact
from torchship.benchmarks.timing import TimingPlan, cpu_name, measure_interleaved
from torchship.exporters.decoders import past_names
from torchship.runtimes.generate import cache_heads

FP32 = ("model", "optimized")  # the fp32 decoder files a weight-only variant is measured against
PLAN = TimingPlan(warmup=3, min_iterations=20, min_seconds=1.0, max_iterations=300)


def step_feeds(artifact: Artifact, past: int) -> dict[str, np.ndarray]:
    """One new token after ``past`` cached ones (values do not change the time of a step)."""
    m = artifact.manifest
    heads, head_dim = cache_heads(m.io(), m.num_layers)
    cache = np.zeros((1, heads, past, head_dim), dtype=np.float32)
    return {"input_ids": np.ones((1, 1), np.int64), "attention_mask": np.ones((1, past + 1), np.int64),
            "position_ids": np.array([[past]], np.int64), **{name: cache for name in past_names(m.num_layers)}}


def time_decode_step(artifact: Artifact, quantized: Path, *, past: int, threads: int | None = None,
                     plan: TimingPlan = PLAN) -> dict:
    """The quantized model's decode step against each fp32 decoder file in the folder: medians, and the speed-up
    over the fastest fp32 one, with the CPU and threads they ran on."""
    threads = threads or usable_cpus()
    feeds = step_feeds(artifact, past)
    runners = {n: ort_runner(artifact.path_of(n), threads=threads) for n in FP32 if n in artifact.manifest.variants}
    runners["quantized"] = ort_runner(quantized, threads=threads)
    times = measure_interleaved({n: (lambda run=run: run(feeds)) for n, run in runners.items()},
                                plan.for_threads(threads))
    medians = {n: float(np.median(t)) * 1e3 for n, t in times.items()}
    fp32 = min((n for n in medians if n != "quantized"), key=medians.get)
    return {"shape": f"decode step after {past} tokens", "fp32": fp32,
            "median_ms": {n: round(v, 3) for n, v in medians.items()},
            "speedup_vs_fp32": round(medians[fp32] / medians["quantized"], 3),
            "machine": {"cpu": cpu_name(), "threads": threads}}
