#!/usr/bin/env python
"""ORT's spinning modes on one decoder step, each followed by an eager PyTorch workload, interleaved.

    python scripts/spinning_benchmark.py build/decoder-int4/onnx/model_wo_int4.onnx [--past 128] [--rounds 40]

For each mode of ``torchship._ort.spin_entries`` (run: spin during a run, stop when it returns, torchship's
default; always: ORT's own default; off), one session of the given decoder graph runs a decode step after
``--past`` cached tokens, then a stack of PyTorch linear layers runs on the same threads: the step's median,
the median of the PyTorch work right after it (a spinning thread left behind slows it down) and the CPU time
the process burns in the 200 ms after a run, when it should be idle. The graph is any decoder export with
``input_ids``, ``attention_mask``, ``position_ids`` (if it takes them) and ``past_key_values.*`` inputs, e.g.
what scripts/decoder_int4_benchmark.py leaves in build/decoder-int4/onnx/.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def feeds_for(session, past: int) -> dict:
    feeds = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = np.array([[5]], np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, past + 1), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.array([[past]], np.int64)
        else:
            heads, dim = i.shape[1], i.shape[3]
            feeds[i.name] = np.random.default_rng(0).random((1, heads, past, dim), dtype=np.float32)
    return feeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    import torch

    from torchship._ort import SPIN_MODES, make_session

    torch.set_num_threads(args.threads)
    sessions = {mode: make_session(args.model, threads=args.threads, spin=mode) for mode in SPIN_MODES}
    feeds = feeds_for(sessions["run"], args.past)
    layers = [torch.nn.Linear(576, 1536) for _ in range(20)]
    x = torch.randn(1, 576)

    def eager():
        with torch.inference_mode():
            for layer in layers:
                layer(x)

    step = {m: [] for m in SPIN_MODES}
    after = {m: [] for m in SPIN_MODES}
    for _ in range(args.rounds):
        for mode, session in sessions.items():
            for _ in range(3):
                start = time.perf_counter()
                session.run(None, feeds)
                step[mode].append(time.perf_counter() - start)
            for _ in range(3):
                start = time.perf_counter()
                eager()
                after[mode].append(time.perf_counter() - start)
    print(f"{args.model}, decode step after {args.past} tokens, {args.threads} threads, {args.rounds} rounds")
    print("| ORT spinning | step median ms | PyTorch work right after, median ms | CPU ms burnt in 200 ms idle |")
    print("|---|---:|---:|---:|")
    for mode in SPIN_MODES:
        for other in sessions.values():  # no other session's threads may spin while this one is measured
            other.run(None, feeds)
        time.sleep(0.5)
        sessions[mode].run(None, feeds)
        start = time.process_time()
        time.sleep(0.2)
        burnt = time.process_time() - start
        print(f"| {mode} | {np.median(step[mode]) * 1e3:.2f} | {np.median(after[mode]) * 1e3:.2f} | "
              f"{burnt * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
