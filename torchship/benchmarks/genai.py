"""onnxruntime-genai's model builder as a reference in the decoder benchmark.

The builder (``python -m onnxruntime_genai.models.builder``) writes its own ONNX graph of a Hugging Face
checkpoint: GroupQueryAttention with rotary, MatMulNBits at int4 / int8. The benchmark builds the folder's
source checkpoint once per precision into ``DIR/genai/<precision>/`` (staged: the builder writes into a
temporary folder that is renamed into place; ``build.json`` records how, and a later run reuses the build
while the checkpoint, the builder's version and the options are the same), then times the builder's
graph one step at a time in a plain ONNX Runtime session with the benchmark's feeds and threads. That is
the graph's speed, not onnxruntime-genai's generation loop (its shared KV buffer, search and sampling).

Whatever keeps a build from being made (the library missing, a checkpoint that is not a local folder, an
architecture the builder does not build, the builder failing) is a :class:`GenaiSkipped` with one line
saying why; the benchmark reports it and goes on without those rows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship._fs import scratch_dir, staged_dir
from torchship.artifact import Artifact
from torchship.errors import TorchshipError, first_line
from torchship.runtimes.ort import OrtPredictor
from torchship.backends import WEIGHT_ONLY, backend

BUILDER = "onnxruntime_genai.models.builder"
INSTALL = "pip install 'torchship[genai]'"
RECORD = "build.json"
PREFIX = "genai-"
PRECISIONS = ("fp32", "int8", "int4")
# Named first when a checkpoint's architecture is refused (the builder's whole list is long).
COMMON = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
          "GemmaForCausalLM")
# What the timed graph is, for the report.
WHAT = ("genai rows: the same checkpoint built by onnxruntime-genai's model builder (-e cpu), its graph timed "
        "one step at a time in a plain ONNX Runtime session with the same feeds and threads; not onnxruntime-"
        "genai's generation loop")


class GenaiSkipped(Exception):
    """Why the genai rows (or one of them) are left out: one line for the report."""


@dataclass(frozen=True)
class GenaiBuild:
    precision: str
    model: Path  # the builder's model.onnx
    command: str
    extra_options: dict
    seconds: float  # the build's time, when it was made
    reused: bool

    @property
    def name(self) -> str:
        return PREFIX + self.precision

    def to_json(self) -> dict:
        return {"precision": self.precision, "model": str(self.model), "command": self.command,
                "extra_options": self.extra_options, "build_seconds": self.seconds, "reused": self.reused}


def available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("onnxruntime-genai")
    except md.PackageNotFoundError:
        return None


def supported_architectures() -> tuple[str, ...]:
    """The ``architectures[0]`` names the installed builder dispatches on, read from its source (importing
    it loads torch and transformers)."""
    spec = importlib.util.find_spec(BUILDER)
    if spec is None or not spec.origin:
        return ()
    text = Path(spec.origin).read_text(encoding="utf-8")
    return tuple(dict.fromkeys(re.findall(r'architectures\[0\] == "(\w+)"', text)))


def precisions_for(artifact: Artifact, backends) -> dict[str, dict]:
    """The builder precisions the benched backends call for, with the builder options that match them: fp32
    for any fp32 ONNX Runtime backend, int8 / int4 for a weight-only variant (its block size, accuracy level,
    and whether its embedding and head are quantized). The builder's own symmetric quantization is kept: at
    int4, asymmetric, it writes a tied embedding (SmolLM2's) that ONNX Runtime 1.32 cannot load."""
    out: dict[str, dict] = {}
    for name in backends:
        if name.startswith(PREFIX):
            continue
        record = backend(name)
        if record.runtime == "onnxruntime" and record.precision == "fp32" and record.variants:
            out.setdefault("fp32", {})
        elif record.builder == WEIGHT_ONLY and (variant := artifact.variant_for(name)) is not None:
            opts = variant.options
            extra = {"block_size": opts.block_size or 32,
                     "accuracy_level": 4 if opts.accuracy_level is None else opts.accuracy_level}
            if opts.embedding:
                extra["op_types_to_quantize"] = "MatMul/Gather"
            if opts.head is False:
                extra["nodes_to_exclude"] = "/lm_head/MatMul"
            out[record.precision] = extra
    return {p: out[p] for p in PRECISIONS if p in out}


def checkpoint_of(artifact: Artifact, override: str | None = None) -> Path:
    """The local checkpoint folder the export came from (or ``override``), for the builder."""
    source = override or artifact.manifest.source.get("resolved", "")
    source = source[4:] if source.startswith("hub:") else source
    path = Path(source).expanduser() if source and source != "python object" else None
    if path is None or not (path / "config.json").is_file():
        raise GenaiSkipped(f"the source checkpoint {source or '(a Python object)'} is not a local folder with a "
                           "config.json; pass one with --reference-model to build it with onnxruntime-genai")
    return path.resolve()


def check_supported(checkpoint: Path) -> str:
    """The checkpoint's architecture, refused when the installed builder does not build it."""
    data = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    arch = (data.get("architectures") or [""])[0]
    known = supported_architectures()
    if arch not in known:
        some = [a for a in COMMON if a in known]
        raise GenaiSkipped(f"onnxruntime-genai {version()}'s model builder does not build {arch or 'this model'} "
                           f"(it builds {', '.join(some)} and {len(known) - len(some)} more)")
    return arch


def prepare(artifact: Artifact, backends, *, reference_model: str | None = None,
            progress: _progress.Progress = _progress.SILENT) -> tuple[list[GenaiBuild], list[str]]:
    """The builds for ``backends``' precisions (made now or reused) and one note per build left out."""
    if not available():
        return [], [f"no genai rows: onnxruntime-genai is not installed ({INSTALL})"]
    wanted = precisions_for(artifact, backends)
    if not wanted:
        return [], ["no genai rows: no ONNX Runtime backend is benched to compare them with"]
    try:
        checkpoint = checkpoint_of(artifact, reference_model)
        check_supported(checkpoint)
    except GenaiSkipped as exc:
        return [], [f"no genai rows: {exc}"]
    builds, notes = [], []
    for precision, extra in wanted.items():
        try:
            builds.append(ensure_build(artifact.folder.resolve() / "genai" / precision, checkpoint, precision, extra,
                                       progress=progress))
        except GenaiSkipped as exc:
            notes.append(f"no {PREFIX}{precision} row: {exc}")
    return builds, notes


def _stamp(checkpoint: Path) -> dict:
    """What identifies the checkpoint's contents cheaply: its files' names, sizes and modification times."""
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    return {"path": str(checkpoint), "files": {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files}}


def ensure_build(target: Path, checkpoint: Path, precision: str, extra: dict, *,
                 progress: _progress.Progress = _progress.SILENT) -> GenaiBuild:
    """The builder's model of ``checkpoint`` at ``precision`` in ``target``, built now unless the one there
    was built the same way from the same checkpoint."""
    key = {"builder": f"onnxruntime-genai {version()}", "precision": precision, "execution_provider": "cpu",
           "extra_options": extra, "checkpoint": _stamp(checkpoint)}
    record_path = target / RECORD
    if record_path.is_file() and (target / "model.onnx").is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if {k: record.get(k) for k in key} == key:
            return GenaiBuild(precision, target / "model.onnx", record["command"], extra, record["seconds"], True)
    progress.step(f"building {checkpoint.name} with onnxruntime-genai's model builder at {precision} "
                  f"(once: kept in {target})")
    shown = shlex.join(_command("python", checkpoint, target, precision, "CACHE", extra))
    try:
        with staged_dir(target, marker=RECORD) as tmp, scratch_dir(target.parent, "genai-cache") as cache:
            log = cache / "build.log"
            start = time.perf_counter()
            with open(log, "wb") as out:
                proc = subprocess.run(_command(sys.executable, checkpoint, tmp, precision, cache, extra), stdout=out,
                                      stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            seconds = round(time.perf_counter() - start, 1)
            if proc.returncode != 0 or not (tmp / "model.onnx").is_file():
                raise GenaiSkipped(f"onnxruntime-genai's model builder failed at {precision} "
                                   f"(exit {proc.returncode}): {_last_error(log)}")
            (tmp / RECORD).write_text(json.dumps({**key, "command": shown, "seconds": seconds}, indent=2) + "\n")
    except (OSError, TorchshipError) as exc:
        raise GenaiSkipped(f"cannot write {target}: {first_line(exc)}") from None
    return GenaiBuild(precision, target / "model.onnx", shown, extra, seconds, False)


def _command(python: str, checkpoint: Path, out, precision: str, cache, extra: dict) -> list[str]:
    command = [python, "-m", BUILDER, "-i", str(checkpoint), "-o", str(out), "-p", precision, "-e", "cpu",
               "-c", str(cache)]
    return command + (["--extra_options", *(f"{k}={v}" for k, v in extra.items())] if extra else [])


def _last_error(log: Path) -> str:
    """The line of the builder's output that says what went wrong (a traceback's last line)."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return ((errors or lines or ["no output"])[-1])[:300]


class GenaiGraph(OrtPredictor):
    """The builder's graph as an ONNX Runtime predictor over the export's inputs (``io``): the benchmark's
    feeds are checked as for every other row, and the graph gets the subset it takes (the builder's models
    compute positions from the attention mask); it gives the outputs it has."""

    backend = "onnxruntime-genai graph"

    def __init__(self, model: Path, io, *, threads: int | None, spin: str = "run"):
        super().__init__(model, io, threads=threads, spin=spin,
                         fix=f"delete {Path(model).parent} and bench again to rebuild it")

    def _activate(self) -> None:
        super()._activate()
        inputs = [i.name for i in self._session.get_inputs()]
        missing = [n for n in inputs if n not in self.input_names]
        if missing:
            self._session = None
            raise GenaiSkipped(f"{self.path} takes {', '.join(missing)}, which the export's inputs do not give; "
                               "it cannot be timed on the same feeds")
        self._inputs, self._outputs = inputs, [o.name for o in self._session.get_outputs()]

    def _infer(self, feeds):
        values = self._session.run(self._outputs, {n: feeds[n] for n in self._inputs})
        return {n: np.asarray(v) for n, v in zip(self._outputs, values)}
