#!/usr/bin/env python
"""CLIP at a size users run, served by torchship: the served image and text embeddings against the local predictor,
and images/s when clients send encoded photos.

    python scripts/image_serving_benchmark.py [--model ../shared/data/clip-vit-base-patch32] [--concurrency 1,8]
                                              [--duration 15] [--images 32] [--out reports/image-serving]

1. Builds the checkpoint with random weights (seeded) from the folder's config and image processor, with a
   byte-level BPE tokenizer of its own (the folder has none; timing does not depend on which tokens).
2. Runs `torchship export` (which optimizes: each tower fused and measured), `torchship triton` and starts
   `torchship serve`'s tritonserver on loopback, all in this process as the CLI does.
3. Sends ``--images`` generated 640x480 JPEGs and 32 sentences to the served model and compares the embeddings with
   `ImageModel` on the same folder (cosine per row).
4. `torchship loadtest --images` at each ``--concurrency``: images/s and latency percentiles, one image per request.
Writes SUMMARY.md and summary.json.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def _checkpoint(config_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, CLIPModel

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_bpe_tokenizer

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(out)
    tokenizer = make_bpe_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # CLIP's tokenizers pad (with "!" or the end token); this one must too
    tokenizer.save_pretrained(out)
    shutil.copyfile(config_dir / "preprocessor_config.json", out / "preprocessor_config.json")
    return out


def _jpegs(n: int, folder: Path) -> list[bytes]:
    from PIL import Image

    from torchship.optimizers.image_samples import generated_images

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, pixels in enumerate(generated_images(n, seed=7, size=(480, 640))):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        (folder / f"photo{i:02d}.jpg").write_bytes(buffer.getvalue())
        out.append(buffer.getvalue())
    return out


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    from torchship.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    print(result.output, flush=True)
    if result.exit_code:
        raise SystemExit(f"torchship {' '.join(args)} exited {result.exit_code}")
    return result.output


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DATA / "clip-vit-base-patch32")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "image-serving")
    args = ap.parse_args(argv)

    from torchship.artifact import Artifact
    from torchship.benchmarks.timing import cpu_name
    from torchship.runtimes.images import ImageModel
    from torchship.serving.image_client import ImageHTTP
    from torchship.serving.loadtest import TritonHTTP
    from torchship.serving.server import Ports, Server, free_port

    sentences = (ROOT / "torchship" / "data" / "sentences.txt").read_text().splitlines()[:32]
    with tempfile.TemporaryDirectory(prefix="torchship-image-serving-") as tmp:
        tmp = Path(tmp)
        src = _checkpoint(args.model, tmp / "model")
        out = tmp / "onnx"
        _cli("export", "--model", str(src), "-o", str(out))
        _cli("triton", str(out), "--output", str(tmp / "repo"), "--name", "clip")
        images = _jpegs(args.images, tmp / "photos")
        manifest = Artifact.open(out).manifest
        chosen = {g: c.variant for g, c in (manifest.graph_dispatch or {}).items()}
        server = Server(tmp / "repo", Ports(free_port(), free_port(), free_port()), log=tmp / "server.log").start()
        try:
            send_images = ImageHTTP("127.0.0.1", server.ports.http, "clip").connect()
            send_texts = TritonHTTP("127.0.0.1", server.ports.http, "clip").connect()
            served_images = np.stack([np.asarray(send_images([b])[0], dtype=np.float64) for b in images])
            served_texts = np.stack([np.asarray(send_texts([t])[0], dtype=np.float64) for t in sentences])
            with ImageModel.from_artifact(Artifact.open(out)) as local:
                local_images = local.embed_images(images).embeddings.astype(np.float64)
                local_texts = local.embed_texts(sentences).embeddings.astype(np.float64)

            def cos(a, b):
                return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

            agreement = {"image_cosine_min": float(cos(served_images, local_images).min()),
                         "text_cosine_min": float(cos(served_texts, local_texts).min()),
                         "images": len(images), "texts": len(sentences)}
            print(agreement, flush=True)
            _cli("loadtest", server.http_url, "--model", "clip", "--images", str(tmp / "photos"), "--concurrency",
                 args.concurrency, "--duration", str(args.duration), "--warmup", "3", "--output",
                 str(tmp / "loadtest"))
            load = json.loads(next((tmp / "loadtest").glob("*.json")).read_text())
        finally:
            server.stop()
    summary = {"model": str(args.model), "cpu": cpu_name(), "served_variants": chosen, "agreement": agreement,
               "loadtest": load}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    levels = load.get("levels", [])
    lines = [f"# {args.model.name} served by torchship", "",
             f"`python scripts/image_serving_benchmark.py --model {args.model} --concurrency {args.concurrency} "
             f"--duration {args.duration:g} --images {args.images}` on {summary['cpu']}: random weights, one 640x480 "
             "JPEG per request, decoded and preprocessed in the server.", "",
             f"Served against the local predictor: image embeddings min cosine {agreement['image_cosine_min']:.6f} "
             f"over {agreement['images']} photos, text embeddings {agreement['text_cosine_min']:.6f} over "
             f"{agreement['texts']} sentences.", "",
             "| clients | images/s | p50 ms | p90 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        lines.append(f"| {level['concurrency']} | {level['texts_per_s']:.1f} | {level['p50_ms']:.1f} | "
                     f"{level['p90_ms']:.1f} | {level['p99_ms']:.1f} | {level['errors']} |")
    (args.out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
