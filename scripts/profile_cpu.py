#!/usr/bin/env python
"""Where the time goes at batch 1 x seq 128 on the packaged MiniLM, and what the CPU's GEMM allows.

    python scripts/profile_cpu.py [--threads 2]

Prints: the share of eager PyTorch's time in addmm and its GEMM throughput; ORT's time per operator
type on the transformer-fused model; the throughput of a standalone ORT (MLAS) MatMul at the
model's GEMM shapes; and the effect of a few ORT session settings, timed interleaved with PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

SEQ = 128


def gemm_flops(hidden: int, inter: int, layers: int, seq: int = SEQ) -> float:
    per_layer = 2 * seq * (4 * hidden * hidden + 2 * hidden * inter)  # QKV + output projection + FFN
    return per_layer * layers


def main(argv=None) -> int:
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from torchship.benchmarks.timing import TimingPlan, measure_interleaved
    from torchship.demo import packaged_minilm
    from torchship.exporters.export import export
    from torchship.exporters.inputs import TextShape, make_text_inputs
    from torchship.optimizers import OptimizeOptions, optimize
    from torchship.runtimes import RuntimeOptions, create_predictor

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "minilm"
        export(str(packaged_minilm()), folder)
        art = optimize(folder, OptimizeOptions(levels=()))
        m = art.manifest
        cfg = json.loads((folder / "config.json").read_text())
        flops = gemm_flops(m.hidden_size, cfg["intermediate_size"], m.num_layers)
        feeds = make_text_inputs(m.input_names, TextShape(1, SEQ), vocab_size=cfg["vocab_size"], seed=1)

        # 1. eager PyTorch under the profiler
        from torch.profiler import ProfilerActivity, profile

        tp = create_predictor(art, "torch", RuntimeOptions(threads=args.threads)).activate()
        for _ in range(10):
            tp.infer(feeds)
        runs = 30
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                tp.infer(feeds)
        events = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        total = sum(events.values())
        addmm = events.get("aten::addmm", 0.0) + events.get("aten::mm", 0.0)
        print(f"eager PyTorch: addmm/mm {100 * addmm / total:.0f}% of CPU time, "
              f"{flops / (addmm / runs / 1e6) / 1e9:.0f} GFLOP/s over the model's {flops / 1e9:.2f} GFLOP of GEMMs")

        # 2. ORT per operator type (fused model)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ortprof")
        sess = ort.InferenceSession(str(folder / "model_optimized.onnx"), so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feeds)
        per_op = defaultdict(float)
        for e in json.load(open(sess.end_profiling())):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op[e["args"]["op_name"]] += e["dur"]
        ort_total = sum(per_op.values())
        print("ORT (fused model) time per operator type:")
        for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:6]:
            print(f"  {op:24s} {us / runs / 1000:6.2f} ms/run  {100 * us / ort_total:4.0f}%")
        gemm_ms = (per_op["MatMul"] + per_op["Attention"]) / runs / 1000
        print(f"  MatMul + Attention: {flops / (gemm_ms / 1e3) / 1e9:.0f} GFLOP/s (upper bound: attention's own math counted in)")

        # 3. standalone MLAS MatMul at the model's shapes
        h, i = m.hidden_size, cfg["intermediate_size"]
        print("standalone ORT MatMul (constant weights):")
        for k, n in ((h, 3 * h), (h, i), (i, h), (h, h)):
            x = np.random.rand(SEQ, k).astype(np.float32)
            w = np.random.rand(k, n).astype(np.float32)
            g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [SEQ, n])],
                                  [numpy_helper.from_array(w, "w")])
            model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
            s = ort.InferenceSession(model.SerializeToString(), so_plain(ort, args.threads),
                                     providers=["CPUExecutionProvider"])
            t = measure_interleaved({"mm": lambda: s.run(None, {"x": x})},
                                    TimingPlan(warmup=20, min_iterations=200, min_seconds=1.0, pause_s=0))["mm"]
            print(f"  {SEQ}x{k}x{n}: {2 * SEQ * k * n / np.median(t) / 1e9:.0f} GFLOP/s")

        # 3b. a matrix too big for the cache: GPT-2's LM head (768 x 50257), one token -> memory bandwidth
        x = np.random.rand(1, 768).astype(np.float32)
        w = np.random.rand(768, 50257).astype(np.float32)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 768])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 50257])],
                              [numpy_helper.from_array(w, "w")])
        s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                 so_plain(ort, args.threads), providers=["CPUExecutionProvider"])
        t = measure_interleaved({"mm": lambda: s.run(None, {"x": x})},
                                TimingPlan(warmup=10, min_iterations=50, min_seconds=1.0, pause_s=0))["mm"]
        print(f"  1x768x50257 (GPT-2's LM head, {w.nbytes / 1e6:.0f} MB): {w.nbytes / np.median(t) / 1e9:.1f} GB/s "
              "(memory-bound: a decode step reads every weight once)")

        # 4. ORT session settings, interleaved with eager PyTorch
        settings = {
            "spinning off": {"session.intra_op.allow_spinning": "0"},
            "spinning during each run (torchship default)": {"session.intra_op.allow_spinning": "1",
                                                             "session.force_spinning_stop": "1"},
            "spinning on": {"session.intra_op.allow_spinning": "1"},
            "spinning on + denormals as zero": {"session.intra_op.allow_spinning": "1",
                                                "session.set_denormal_as_zero": "1"},
            "spinning on + dynamic_block_base 4": {"session.intra_op.allow_spinning": "1",
                                                   "session.dynamic_block_base": "4"},
        }
        fns = {"eager PyTorch": lambda: tp.infer(feeds)}
        for name, entries in settings.items():
            o = so_plain(ort, args.threads)
            for k, v in entries.items():
                o.add_session_config_entry(k, v)
            s = ort.InferenceSession(str(folder / "model_optimized.onnx"), o, providers=["CPUExecutionProvider"])
            fns[name] = lambda s=s: s.run(None, feeds)
        times = measure_interleaved(fns, TimingPlan(min_iterations=40, min_seconds=4.0))
        base = np.median(times["eager PyTorch"])
        print(f"b1 x s{SEQ}, {args.threads} threads, medians of interleaved runs:")
        for name, t in times.items():
            print(f"  {name:36s} {np.median(t) * 1000:6.2f} ms  {base / np.median(t):.2f}x")
    return 0


def so_plain(ort, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    return so


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
