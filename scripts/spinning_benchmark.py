#!/usr/bin/env python
"""ORT's spinning modes on one decoder step, each followed by an eager PyTorch workload, interleaved.

    python scripts/spinning_benchmark.py build/decoder-int4/onnx [--backend ort-wo-int4] [--past 128] [--rounds 40]

For each mode of ``torchship._ort.spin_entries`` (run: spin during a run, stop when it returns, torchship's
default; always: ORT's own default; off), the backend's predictor on the exported decoder FOLDER runs a decode
step after ``--past`` cached tokens (batch 1, the benchmark's seeded inputs), then a stack of PyTorch linear
layers runs on the same threads: the step's median, the median of the PyTorch work right after it (a spinning
thread left behind slows it down) and the CPU time the process burns in the 200 ms after a run, when it should
be idle. FOLDER is any decoder export, e.g. what scripts/decoder_int4_benchmark.py leaves in
build/decoder-int4/onnx/.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--backend", default="ort-wo-int4")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    import torch

    from torchship._ort import SPIN_MODES
    from torchship.artifact import Artifact
    from torchship.errors import TorchshipError
    from torchship.exporters.spec import BATCH, DECODE, PAST_SEQUENCE, SEQUENCE, family_of, saved_config
    from torchship.runtimes import RuntimeOptions, create_predictor

    try:  # a wrong folder, backend or length: one line, as the CLI says it
        artifact = Artifact.open(args.folder)
        spec, config = family_of(artifact.manifest), saved_config(artifact)
        if DECODE not in spec.phases:
            raise SystemExit(f"spinning_benchmark: {args.folder} holds {spec.group.one}, not a decoder")
        case = spec.case_for({BATCH: 1, SEQUENCE: 1, PAST_SEQUENCE: args.past}, config)
        feeds = spec.sample_inputs(config, artifact.manifest.io(), case, seed=0)
        predictors = {mode: create_predictor(artifact, args.backend, RuntimeOptions(threads=args.threads, spin=mode))
                      .activate() for mode in SPIN_MODES}
    except TorchshipError as exc:
        raise SystemExit(f"spinning_benchmark: {exc}") from None
    torch.set_num_threads(args.threads)
    layers = [torch.nn.Linear(576, 1536) for _ in range(20)]
    x = torch.randn(1, 576)

    def eager():
        with torch.inference_mode():
            for layer in layers:
                layer(x)

    step = {m: [] for m in SPIN_MODES}
    after = {m: [] for m in SPIN_MODES}
    for _ in range(args.rounds):
        for mode, predictor in predictors.items():
            for _ in range(3):
                start = time.perf_counter()
                predictor.infer(feeds)
                step[mode].append(time.perf_counter() - start)
            for _ in range(3):
                start = time.perf_counter()
                eager()
                after[mode].append(time.perf_counter() - start)
    print(f"{args.folder} ({args.backend}), decode step after {args.past} tokens, {args.threads} threads, "
          f"{args.rounds} rounds")
    print("| ORT spinning | step median ms | PyTorch work right after, median ms | CPU ms burnt in 200 ms idle |")
    print("|---|---:|---:|---:|")
    for mode in SPIN_MODES:
        time.sleep(0.5)  # no other predictor's thread still spins while this one is measured
        predictors[mode].infer(feeds)
        start = time.process_time()
        time.sleep(0.2)
        burnt = time.process_time() - start
        print(f"| {mode} | {np.median(step[mode]) * 1e3:.2f} | {np.median(after[mode]) * 1e3:.2f} | "
              f"{burnt * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
