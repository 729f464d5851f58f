#!/usr/bin/env python
"""Which export path is fastest for a GPT-2 decoder? Export GPT-2-small's architecture (random weights)
with TorchScript and with dynamo, run the transformer fusion pass on each, and time one prompt
(prefill, 128 tokens) and one decode step (1 token, 128 past) of every variant, interleaved with
eager PyTorch (the model with its DynamicCache).

    python scripts/decoder_paths.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from benchmark import GPT2_CONFIG, random_model

    from torchship.artifact import Artifact
    from torchship.benchmarks.timing import TimingPlan, measure_interleaved
    from torchship.exporters.decoders import DecoderShape
    from torchship.exporters.export import ExportOptions, export
    from torchship.exporters.spec import family_of, saved_config
    from torchship.optimizers import OptimizeOptions, optimize
    from torchship.optimizers.fusion import count_ops
    from torchship.runtimes import RuntimeOptions, create_predictor, source_model_loader
    from torchship.runtimes.torch_runtime import TorchCachedDecoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = random_model(Path(tmp) / "src", GPT2_CONFIG, "AutoModelForCausalLM")
        arts = {}
        for exporter in ("torchscript", "dynamo"):
            out = Path(tmp) / exporter
            export(str(src), out, ExportOptions(exporter=exporter))
            arts[exporter] = optimize(out, OptimizeOptions(levels=()))
            m = arts[exporter].manifest
            fused = m.variants["optimized"].fusion.attention if "optimized" in m.variants else "skipped"
            print(f"{exporter}: model.onnx {m.variants['model'].size_bytes / 1e6:.0f} MB, "
                  f"Attention ops {count_ops(out / 'model.onnx')['Attention']}, after fusion pass {fused}")
        ts = arts["torchscript"]
        cfg, io, spec = saved_config(ts), ts.manifest.io(), family_of(ts.manifest)
        runtime = RuntimeOptions(threads=args.threads)
        preds = {}
        for exporter, art in arts.items():
            for backend, label in (("ort", exporter), ("ort-optimized", f"{exporter} + fusion pass")):
                if (backend == "ort") or "optimized" in art.manifest.variants:
                    preds[label] = create_predictor(Artifact.open(art.folder), backend, runtime).activate()
        torch_step = TorchCachedDecoder(source_model_loader(ts), io, num_layers=ts.manifest.num_layers,
                                        threads=args.threads).activate()
        print(f"\n| phase | {' | '.join(['eager PyTorch', *preds])} |")
        print("|---|" + "---:|" * (len(preds) + 1))
        for phase, seq, past in (("prefill: 128-token prompt", 128, 0), ("decode: 1 token, 128 past", 1, 128)):
            feeds = spec.sample_inputs(cfg, io, DecoderShape(1, seq, past), seed=1)
            fns = {"torch": torch_step.timed_step(feeds)}
            fns.update({k: (lambda p=p: p.infer(feeds)) for k, p in preds.items()})
            t = measure_interleaved(fns, TimingPlan(min_seconds=5, min_iterations=30))
            base = np.median(t["torch"])
            cells = [f"{np.median(v) * 1e3:.2f} ms ({base / np.median(v):.2f}x)" for v in t.values()]
            print(f"| {phase} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
