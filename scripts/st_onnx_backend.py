#!/usr/bin/env python
"""Does sentence-transformers' own ONNX backend load a plain torchship export and give the model's vectors?

    python scripts/st_onnx_backend.py [--env ~/.cache/torchship/st-onnx-venv] [--out reports/embeddings]

sentence-transformers' ``backend="onnx"`` needs Optimum, which pins transformers < 4.58, so it cannot live
beside torchship (transformers 5). The script makes its own environment once (``--env``; the pinned CPU
torch, ``optimum[onnxruntime]``, ``transformers<4.58``, ``sentence-transformers<6``), exports the packaged
all-MiniLM-L6-v2 with ``export-bert`` as a user would (hidden states; the sentence-transformers files travel
with the folder), then, in that environment, encodes the 60 shipped sentences with
``SentenceTransformer(FOLDER, backend="onnx")`` and with the original model in PyTorch, and compares them.
Writes st-onnx-backend.md and st-onnx-backend.json to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["optimum[onnxruntime]", "transformers<4.58", "sentence-transformers<6"]
CHILD = """
import json, sys
import numpy as np
import sentence_transformers, optimum.version, transformers
from sentence_transformers import SentenceTransformer
folder, original, texts_file = sys.argv[1:4]
texts = [line for line in open(texts_file).read().splitlines() if line.strip()]
onnx = SentenceTransformer(folder, backend="onnx", device="cpu", model_kwargs={"file_name": "model.onnx"})
a = onnx.encode(texts, batch_size=16)
b = SentenceTransformer(original, device="cpu").encode(texts, batch_size=16)
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(json.dumps({"texts": len(texts), "min_cosine": float(cos.min()), "max_abs_error": float(np.abs(a - b).max()),
                  "modules": [type(m).__name__ for m in onnx],
                  "versions": {"sentence-transformers": sentence_transformers.__version__,
                               "optimum": optimum.version.__version__, "transformers": transformers.__version__}}))
"""


def ensure_env(env: Path) -> Path:
    python = env / "bin" / "python"
    if not python.is_file():
        print(f"making {env} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return python


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", type=Path, default=Path.home() / ".cache" / "torchship" / "st-onnx-venv")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "embeddings")
    args = ap.parse_args(argv)

    from torchship.demo import packaged_minilm

    python = ensure_env(args.env)
    original = packaged_minilm()
    with tempfile.TemporaryDirectory(prefix="torchship-st-onnx-") as tmp:
        folder = Path(tmp) / "minilm"
        subprocess.run([str(BIN / "export-bert"), "--model", str(original), "--output", str(folder),
                        "--no-optimize"], check=True, stdout=subprocess.DEVNULL)
        done = subprocess.run([str(python), "-c", CHILD, str(folder), str(original),
                               str(ROOT / "torchship" / "data" / "sentences.txt")],
                              check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    v = result["versions"]
    md = "\n".join([
        "# sentence-transformers' ONNX backend on a torchship export", "",
        "`python scripts/st_onnx_backend.py` (packaged all-MiniLM-L6-v2, exported with `export-bert`, hidden "
        f"states; sentence-transformers {v['sentence-transformers']}, Optimum {v['optimum']}, transformers "
        f"{v['transformers']} in their own environment)", "",
        f"- `SentenceTransformer(FOLDER, backend=\"onnx\")` loads the folder with its modules: "
        f"{' -> '.join(result['modules'])}",
        f"- against the original model in PyTorch over the {result['texts']} shipped sentences: min cosine "
        f"{result['min_cosine']:.6f}, max abs error {result['max_abs_error']:.2e}", ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "st-onnx-backend.md").write_text(md)
    (args.out / "st-onnx-backend.json").write_text(json.dumps(result, indent=2) + "\n")
    print(md)
    return 0 if result["min_cosine"] >= 0.9999 else 3


if __name__ == "__main__":
    sys.exit(main())
