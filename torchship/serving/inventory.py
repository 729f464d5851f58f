"""What a served repository holds: every model folder in it, torchship's (read back from their markers) and
anyone else's (read from their config.pbtxt and left as they are); which of them a server with given backends
can load; and the README that says how to start it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from torchship.errors import InputError, first_line
from torchship.serving.triton_repo import MARKER, parse_config, refuse_export_folder

BACKEND_OF_PLATFORM = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
                       "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow", "ensemble": None}
# the backend Triton gives a model folder without config.pbtxt, by the model file in its version folder
BACKEND_OF_FILE = {"model.py": "python", "model.onnx": "onnxruntime", "model.plan": "tensorrt", "model.pt": "pytorch",
                   "model.savedmodel": "tensorflow", "model.graphdef": "tensorflow"}
README = "README.md"
README_BESIDE = "README.torchship.md"  # where torchship writes its README when README.md is someone else's
TITLE = "# Triton model repository (written by torchship)"
CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"  # NVIDIA's image of the server release torchship serve runs
TENSORS = "tensors"
HERE_BACKENDS = ("python",)  # the backends of torchship serve's tritonserver (nvidia-pytriton's)


@dataclass(frozen=True)
class Entry:
    """One model folder of a repository."""

    name: str
    needs: str | None  # the Triton backend it runs on; None for an ensemble
    steps: tuple[str, ...] = ()  # an ensemble's models
    marker: dict | None = None  # what torchship recorded when it wrote it; None: someone else's
    problem: str = ""  # why Triton loads none of it, whatever its backends

    @property
    def ours(self) -> bool:
        return self.marker is not None

    @property
    def group(self) -> str:
        """The model clients call, of those torchship wrote together (an ensemble and its steps)."""
        return (self.marker or {}).get("entry", self.name)


def mark(model_dir: Path, extra: dict) -> None:
    data = json.loads((model_dir / MARKER).read_text())
    (model_dir / MARKER).write_text(json.dumps({**data, **extra, "files": data.get("files", [])}, indent=2) + "\n")


def _from_config(place: Path) -> tuple[str | None, tuple[str, ...], str]:
    """(backend, ensemble steps, problem) of a model folder, as Triton reads it."""
    config = place / "config.pbtxt"
    if config.is_file():
        try:
            c = parse_config(config.read_text(errors="replace"))
        except InputError as exc:
            return None, (), f"has a config.pbtxt that does not parse ({first_line(exc, 160)})"
        steps = tuple(s.model_name for s in c.ensemble_scheduling.step) if c.platform == "ensemble" else ()
        if c.backend or c.platform:
            return c.backend or BACKEND_OF_PLATFORM.get(c.platform, c.platform), steps, ""
    versions = [p for p in place.iterdir() if p.is_dir() and p.name.isdigit()]
    found = sorted({p.name for v in versions for p in v.iterdir()} & set(BACKEND_OF_FILE))
    if found:  # Triton completes a config without a backend from the model file's name
        return BACKEND_OF_FILE[found[0]], (), ""
    what = "no backend or platform in its config.pbtxt" if config.is_file() else "no config.pbtxt"
    return None, (), f"is not a Triton model ({what}, and no version folder with a model file Triton knows)"


def _entry(place: Path) -> Entry:
    needs, steps, problem = _from_config(place)
    if not problem and not any(p.is_dir() and p.name.isdigit() for p in place.iterdir()):
        problem = "has no version folder (such as 1/), so Triton loads none of it"
    if not (place / MARKER).is_file():
        return Entry(place.name, needs, steps, None, problem)
    try:
        data = json.loads((place / MARKER).read_text())
    except (OSError, ValueError):
        raise InputError(f"{place / MARKER} cannot be read; write the model again with torchship triton") from None
    missing = [f for f in ("config.pbtxt",) if not (place / f).is_file()]
    missing += [f for f in data.get("files", []) if not (place / "1" / f).is_file()]
    if missing or problem:
        raise InputError(f"{place} is missing {', '.join(missing)}; write it again with torchship triton" if missing
                         else f"{place} {problem}; write it again with torchship triton")
    return Entry(place.name, needs, steps, data)


def repository_models(repo: Path) -> dict[str, Entry]:
    """{model folder name: Entry} for every model folder of ``repo``, torchship's and anyone else's; InputError for
    a repository that is not a folder, an export folder, or holds no model folder, and for a model folder
    torchship wrote that is missing its files."""
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"{repo} is not a folder; write a repository with: torchship triton FOLDER --output {repo}")
    refuse_export_folder(repo, "")
    found = {p.name: _entry(p) for p in sorted(repo.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not found:
        raise InputError(f"{repo} holds no models; write one with: torchship triton FOLDER --output {repo}")
    return found


def _unservable(models: dict[str, Entry], backends: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """{model: (the model at fault, what is wrong with it)} for each model a server with ``backends`` cannot serve:
    a backend it lacks, a folder Triton cannot load, an ensemble with such a step or one that is not there;
    torchship's models go with the group they were written in."""
    why = {}
    for name, e in models.items():
        if e.problem:
            why[name] = (name, e.problem)
        elif e.needs is not None and e.needs not in backends:
            why[name] = (name, f"needs Triton's {e.needs} backend, which this server lacks (it has "
                               f"{', '.join(backends)})")
    changed = True
    while changed:  # an ensemble of ensembles: until nothing more falls
        changed = False
        for name, e in models.items():
            bad = next((s for s in e.steps if s not in models or s in why), None)
            if name not in why and bad is not None:
                why[name] = why[bad] if bad in why else (bad, "is not in the repository")
                changed = True
    groups = {models[n].group: fault for n, fault in why.items() if models[n].ours}
    for name, e in models.items():
        if e.ours and e.group in groups and name not in why:
            why[name] = groups[e.group]
    return why


def _line(repo: Path, e: Entry, fault: tuple[str, str]) -> str:
    leaf, reason = fault
    if e.ours:
        marker = e.marker or {}
        if marker.get("task", "tensors") == "tensors":  # token ids in: written for a native backend only
            return (f"{e.group} (written by torchship): model {leaf} {reason}; serve it in NVIDIA's container "
                    f"({CONTAINER})")
        source = shlex.quote(str(marker.get("source", "FOLDER")))
        return (f"{e.group} (written by torchship): model {leaf} {reason}; rewrite it with `torchship triton "
                f"{source} --output {shlex.quote(str(repo))} --name {shlex.quote(e.group)} --task {marker['task']} "
                f"--runtime python`, or serve it in NVIDIA's container ({CONTAINER})")
    fix = f"; serve it in NVIDIA's container ({CONTAINER})" if "backend, which" in reason else ""
    if e.needs is None and e.steps:
        return f"ensemble {e.name} (not written by torchship): its step {leaf} {reason}{fix}"
    kind = "folder" if reason.startswith("is not a Triton model") else "model"
    return f"{kind} {e.name} (not written by torchship): it {reason}{fix}"


def servable(repo: Path, backends: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the models a server with ``backends`` loads, one line per model or torchship group it leaves out, saying
    why); InputError, before anything starts, when that leaves nothing to serve."""
    models = repository_models(repo)
    why = _unservable(models, backends)
    lines = [_line(Path(repo), models[n], why[n]) for n in why if not models[n].ours or n == models[n].group]
    load = [n for n in models if n not in why]
    if not load:
        raise InputError(f"nothing in {repo} can be served by this server: " + " | ".join(lines))
    return load, lines


def readme_path(repo: Path) -> Path:
    """Where torchship writes the repository's README: README.md unless someone else wrote that one, else
    README.torchship.md beside it; InputError, before any work, when both are someone else's."""
    for name in (README, README_BESIDE):
        path = Path(repo) / name
        if not path.exists():
            return path
        try:
            if path.is_file() and path.read_text(errors="replace").startswith(TITLE):
                return path
        except OSError:
            pass
    raise InputError(f"{Path(repo) / README} and {README_BESIDE} beside it were not written by torchship, which "
                     f"writes how to serve the repository in one of them; move one of them out of {repo}")


def _curl(model: str, task: str | None, mask: str = "[MASK]") -> str:
    def column(name, texts):
        return {"name": name, "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}

    example = {"question-answering": [column("QUESTION", ["who is eating?"]),
                                      column("TEXT", ["the dog is eating the food"])],
               "fill-mask": [column("TEXT", [f"the movie was {mask}."])]}
    body = {"inputs": example.get(task, [column("TEXT", ["first text", "second text"])])}
    return f"curl -s localhost:8000/v2/models/{model}/infer -d '{json.dumps(body)}'"


def _runs_on(e: Entry) -> str:
    if e.problem:
        return f"nothing: it {e.problem}"
    return f"the {e.needs} backend" if e.needs else f"an ensemble of {', '.join(e.steps)}"


def write_readme(repo: Path) -> Path:
    from torchship._fs import write_text_atomic

    repo = Path(repo)
    path = readme_path(repo)
    where = repo.resolve()
    models = repository_models(repo)
    ours = {n: e.marker for n, e in models.items() if e.ours}
    theirs = [e for e in models.values() if not e.ours]
    entries = sorted({d.get("entry", n) for n, d in ours.items()})
    lines = [TITLE, "", "| model | task | runtime | layout | packaged | from |", "|---|---|---|---|---|---|"]
    for n in entries:
        d = ours.get(n, {})
        lines.append(f"| {n} | {d.get('task', 'tensors')} | {d.get('runtime', '-')} | {d.get('layout', '-')} | "
                     f"{d.get('variant', '-')} | {d.get('source', '-')} |")
    if theirs:
        lines += ["", "Also here, not written by torchship (torchship leaves them as they are):", "",
                  "| model | runs on |", "|---|---|"]
        lines += [f"| {e.name} | {_runs_on(e)} |" for e in theirs]
    why = _unservable(models, HERE_BACKENDS)
    pillow = " pillow" if any(d.get("inputs") == ["IMAGE"] for d in ours.values()) else ""  # images decoded there
    lines += ["", "## Start it", "", "With torchship (its tritonserver has the Python backend only):", "",
              "```", "torchship serve --setup   # once", f"torchship serve {shlex.quote(str(where))}", "```"]
    if why:
        lines += ["", f"It leaves out {', '.join(sorted(why))}, which it cannot serve; it says why, one line each, "
                      f"when it starts."]
    lines += ["", "In NVIDIA's container, which has every backend"
              + (" (the Python steps need `tokenizers` and `onnxruntime` there: `pip install tokenizers "
                 f"onnxruntime{pillow}` in the image)"
                 if any(d.get("needs") == "python" for d in ours.values()) else "")
              + ":", "", "```",
              f"docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {shlex.quote(f'{where}:/models')} "
              f"{CONTAINER} \\",
              "  tritonserver --model-repository=/models", "```"]
    image_models = [n for n in entries if ours.get(n, {}).get("inputs") == ["IMAGE"]]
    text_models = [n for n in entries if ours.get(n, {}).get("task", TENSORS) != TENSORS and n not in image_models]
    if image_models:  # JSON cannot carry an image's bytes: gRPC (or HTTP's binary extension) can
        lines += ["", "## One image", ""]
        for n in image_models:
            lines += ["```python", "import numpy as np, tritonclient.grpc as g",
                      "client = g.InferenceServerClient('localhost:8001')",
                      "image = g.InferInput('IMAGE', [1, 1], 'BYTES')",
                      "image.set_data_from_numpy(np.array([[open('cat.jpg', 'rb').read()]], dtype=object))",
                      f"print(client.infer('{n}', [image]).get_response())", "```", ""]
        lines += ["Each row of `IMAGE` is one encoded image file (PNG, JPEG, WebP, GIF) as it lies on disk; the server "
                  "decodes it and preprocesses it as the checkpoint's image processor does. `NOTES` says, per image, "
                  "what decoding did (an animated image's first frame, an EXIF turn, transparency flattened). "
                  "`torchship loadtest URL --model NAME --images DIR` measures it."]
    if text_models:
        lines += ["", "## One request", ""]
        for n in text_models:
            settings = repo / n / "1" / "serving.json"
            mask = json.loads(settings.read_text()).get("mask_token", "[MASK]") if settings.is_file() else "[MASK]"
            lines += ["```", _curl(n, ours[n].get("task"), mask), "```", ""]
        lines += ["Each row of `TEXT` is one text (for question answering, the context of the `QUESTION` in the same "
                  "row); the answer has one row per text. `TOKENS` counts the tokens the model read, `TRUNCATED` the "
                  "tokens cut off a text longer than the model's maximum."]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
