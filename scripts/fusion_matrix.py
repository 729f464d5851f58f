#!/usr/bin/env python
"""Which export path fuses? Export the packaged all-MiniLM-L6-v2 through every path, run the
transformer optimizer, and print the fused-operator counts (the table in the README).

    python scripts/fusion_matrix.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PATHS = [
    ("torchscript", "eager", 17),
    ("torchscript", "sdpa", 17),
    ("dynamo", "eager", 23),
    ("dynamo", "sdpa", 23),
]


def main() -> int:
    from torchship.demo import packaged_minilm
    from torchship.exporters.export import ExportOptions, export
    from torchship.optimizers import OptimizeOptions, optimize
    from torchship.optimizers.fusion import count_ops

    print("| export | raw ONNX Attention ops | fused Attention | EmbedLayerNorm | SkipLayerNorm | BiasGelu | max abs vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for exporter, attn, opset in PATHS:
            out = Path(tmp) / f"{exporter}-{attn}"
            export(str(packaged_minilm()), out, ExportOptions(exporter=exporter, attn_implementation=attn, opset=opset))
            art = optimize(out, OptimizeOptions(levels=()))
            v = art.manifest.variants["optimized"]
            c = v.fusion.counts
            raw = count_ops(out / "model.onnx")["Attention"]
            print(f"| {exporter}, {attn} attention, opset {opset} | {raw} | {v.fusion.attention}/"
                  f"{v.fusion.expected_attention} | "
                  f"{c['EmbedLayerNormalization']} | {c['SkipLayerNormalization']} | {c['BiasGelu']} | "
                  f"{v.validation.max_abs:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
