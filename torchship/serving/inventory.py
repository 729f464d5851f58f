"""What a served repository holds: the models torchship wrote into it (read back from their markers), whether
a server with given backends can serve them, and the README that says how to start it."""

from __future__ import annotations

import json
from pathlib import Path

from torchship.errors import InputError
from torchship.triton import MARKER

BACKEND_OF_PLATFORM = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "ensemble": None}
README = "README.md"
CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"  # NVIDIA's image of the server release torchship serve runs
TENSORS = "tensors"


def mark(model_dir: Path, extra: dict) -> None:
    data = json.loads((model_dir / MARKER).read_text())
    (model_dir / MARKER).write_text(json.dumps({**data, **extra, "files": data.get("files", [])}, indent=2) + "\n")


def repository_models(repo: Path) -> dict[str, dict]:
    """{model name: its marker} for every model folder of ``repo``; InputError for a folder torchship did not
    write or one missing its files."""
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"{repo} is not a folder; write a repository with: torchship triton FOLDER --output {repo}")
    found = {}
    for place in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        marker = place / MARKER
        if not marker.is_file() or not (place / "config.pbtxt").is_file():
            raise InputError(f"{place} was not written by torchship (no {MARKER} or config.pbtxt); move it out of "
                             f"the repository, or write it with torchship triton")
        data = json.loads(marker.read_text())
        missing = [f for f in data.get("files", []) if not (place / "1" / f).is_file()]
        if missing:
            raise InputError(f"{place} is missing {', '.join(missing)}; write it again with torchship triton")
        if "needs" not in data:  # a tensor model: its backend is its platform's
            text = (place / "config.pbtxt").read_text()
            platform = next((line.split('"')[1] for line in text.splitlines()
                             if line.startswith(("platform:", "backend:"))), "")
            data["needs"] = BACKEND_OF_PLATFORM.get(platform, platform)
        found[place.name] = data
    if not found:
        raise InputError(f"{repo} holds no models; write one with: torchship triton FOLDER --output {repo}")
    return found


def check_servable(repo: Path, backends: tuple[str, ...]) -> list[str]:
    """The names of the repository's models, once each is known to need only ``backends``."""
    models = repository_models(repo)
    for name, data in models.items():
        need = data.get("needs")
        if need and need not in backends:
            raise InputError(
                f"model {name} needs Triton's {need} backend, which this server lacks (it has "
                f"{', '.join(backends)}); rewrite the repository with `torchship triton {data.get('source', 'FOLDER')} "
                f"--output {repo} --runtime python`, or serve it in NVIDIA's container ({CONTAINER})")
    return list(models)


def _curl(model: str, task: str | None, mask: str = "[MASK]") -> str:
    def column(name, texts):
        return {"name": name, "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}

    example = {"question-answering": [column("QUESTION", ["who is eating?"]),
                                      column("TEXT", ["the dog is eating the food"])],
               "fill-mask": [column("TEXT", [f"the movie was {mask}."])]}
    body = {"inputs": example.get(task, [column("TEXT", ["first text", "second text"])])}
    return f"curl -s localhost:8000/v2/models/{model}/infer -d '{json.dumps(body)}'"


def write_readme(repo: Path) -> Path:
    models = repository_models(repo)
    entries = sorted({d.get("entry", n) for n, d in models.items()})
    lines = ["# Triton model repository (written by torchship)", "",
             "| model | task | runtime | layout | packaged | from |", "|---|---|---|---|---|---|"]
    for n in entries:
        d = models.get(n, {})
        lines.append(f"| {n} | {d.get('task', 'tensors')} | {d.get('runtime', '-')} | {d.get('layout', '-')} | "
                     f"{d.get('variant', '-')} | {d.get('source', '-')} |")
    python_only = all(d.get("needs") in ("python", None) for d in models.values())
    lines += ["", "## Start it", "", "With torchship (its tritonserver has the Python backend only):", "",
              "```", "torchship serve --setup   # once", f"torchship serve {repo}", "```", "",
              "In NVIDIA's container, which has every backend"
              + (" (the Python steps need `tokenizers` and `onnxruntime` there: `pip install tokenizers "
                 "onnxruntime` in the image)" if any(d.get("needs") == "python" for d in models.values()) else "")
              + ":", "", "```",
              f"docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v \"$PWD/{repo.name}:/models\" {CONTAINER} \\",
              "  tritonserver --model-repository=/models", "```"]
    if not python_only:
        lines += ["", "Some models here need a native backend (onnxruntime, TensorRT or OpenVINO): only the "
                  "container serves those."]
    text_models = [n for n in entries if models.get(n, {}).get("task", TENSORS) != TENSORS]
    if text_models:
        lines += ["", "## One request", ""]
        for n in text_models:
            settings = Path(repo) / n / "1" / "serving.json"
            mask = json.loads(settings.read_text()).get("mask_token", "[MASK]") if settings.is_file() else "[MASK]"
            lines += ["```", _curl(n, models[n].get("task"), mask), "```", ""]
        lines += ["Each row of `TEXT` is one text (for question answering, the context of the `QUESTION` in the same "
                  "row); the answer has one row per text. `TOKENS` counts the tokens the model read, `TRUNCATED` the "
                  "tokens cut off a text longer than the model's maximum."]
    path = Path(repo) / README
    path.write_text("\n".join(lines) + "\n")
    return path
