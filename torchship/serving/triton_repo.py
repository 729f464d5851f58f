"""A Triton Inference Server model folder for one variant of a torchship folder, and what every repository
torchship writes shares: the options, Triton's config schema, the variant served, the checks before writing.

``write_triton_repo`` writes ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/<model file>``:

- ONNX variants (the export, ORT levels, fused, int8, fp16): platform ``onnxruntime_onnx``,
  ``model.onnx`` (with ``model.onnx.data`` for external weights, relocated under the new name);
- TensorRT engines: platform ``tensorrt_plan``, ``model.plan``;
- OpenVINO IR: backend ``openvino``, ``model.xml`` + ``model.bin``.

Inputs and outputs carry Triton data types and dims. When every input and output starts with the
``batch`` axis, batching is Triton's: ``max_batch_size`` (from the shape config's max batch, or
the flag) and dims without the batch axis; otherwise ``max_batch_size: 0`` and full dims. Dynamic
axes are -1. Dynamic batching and instance groups come from flags.

The text is parsed with Triton's own model-configuration schema (the ``model_config.proto``
definitions that the ``tritonclient`` package ships) before anything is written, so a typo cannot
reach a server; then the dims are checked against the model file.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from torchship._fs import MANIFEST_NAME
from torchship.errors import ArtifactError, BackendUnavailable, InputError

EXTRA = "torchship[triton]"
MARKER = "torchship-model.json"  # in every model folder torchship writes: what it packaged, and why
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
KINDS = ("cpu", "gpu")


@dataclass(frozen=True)
class TritonOptions:
    variant: str | None = None  # None: the one auto chose, else the folder's best validated variant
    name: str | None = None  # model name in the repository; default: the folder's name
    max_batch_size: int | None = None  # None: the shape config's max batch, else 8
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instances: int = 1
    kind: str = "cpu"  # instance group kind: cpu or gpu

    def checked(self) -> "TritonOptions":
        """Every option on its own and against the others, before anything is read or built."""
        if self.kind not in KINDS:
            raise InputError(f"unknown instance kind {self.kind!r}; use {', '.join(KINDS)}")
        if self.instances < 1:
            raise InputError(f"--instances must be 1 or more, got {self.instances}")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise InputError(f"--max-batch-size must be 0 or more, got {self.max_batch_size}")
        for b in self.preferred_batch_sizes:
            if b < 1:
                raise InputError(f"preferred batch sizes must be 1 or more, got {b}")
        if self.preferred_batch_sizes and not self.dynamic_batching:
            raise InputError("--preferred-batch-sizes needs dynamic batching; drop --no-dynamic-batching or the "
                             "preferred sizes")
        if self.preferred_batch_sizes and self.max_batch_size == 0:
            raise InputError("--preferred-batch-sizes needs Triton's batching, which --max-batch-size 0 turns off; "
                             "give a max batch size of at least the largest preferred size")
        return self


@dataclass
class TritonModel:
    name: str
    platform: str | None
    backend: str | None
    files: dict[str, Path]  # name in the version folder -> source file
    inputs: list[tuple[str, str, list[int]]] = field(default_factory=list)  # name, TYPE_*, dims
    outputs: list[tuple[str, str, list[int]]] = field(default_factory=list)
    max_batch_size: int = 0
    variant: str = ""  # what was packaged, by the name of the backend that runs it
    why: str = ""  # why that one: named by the user, chosen by auto, or the most optimized validated one


@functools.cache
def model_config_schema():
    """Triton's ``ModelConfig`` message class, from the tritonclient package (no grpc import needed)."""
    try:
        spec = importlib.util.find_spec("tritonclient")
    except (ImportError, ValueError):  # blocked or broken installs
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"tritonclient is not installed, and the config is checked with its schema; "
                                 f"pip install '{EXTRA}'")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise BackendUnavailable(f"this tritonclient has no grpc/model_config_pb2.py; pip install '{EXTRA}'")
    module_spec = importlib.util.spec_from_file_location("torchship_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.ModelConfig


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's schema; InputError naming the problem if it does not fit."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_schema()())
    except text_format.ParseError as exc:
        raise InputError(f"the Triton config does not fit Triton's schema: {exc}") from None


def default_variant(artifact) -> tuple[str, str]:
    """(variant, why) a repository serves when none is named: Triton serves one file, so the one optimize's
    measured dispatch table names at the shape config's use shape, else the one that won the most measured
    shapes, else the folder's most optimized validated variant."""
    m = artifact.manifest
    resolved = m.resolved_shapes()
    use = resolved.sizes("use") if resolved is not None else None
    if not (m.dispatch and m.dispatch.ranges):
        return artifact.best_variant(), "the most optimized validated variant of the folder"
    if use and "batch" in use and "sequence" in use:
        return artifact.measured_variant(use), \
            "the fastest fp32 variant at the shape config's use shape, as torchship optimize measured"
    return artifact.measured_variant(), "the fp32 variant torchship optimize measured fastest at the most shapes"


def pick_variant(artifact, name: str):
    """(variant name or None, the table's backend) for a backend name or a variant name."""
    from torchship.backends import backend_of_variant, find, variant_names

    variants = artifact.manifest.variants
    if name not in variants and find(name) is None:  # a variant's earlier or later name (a renamed variant)
        name = next((n for n in variant_names(name) if n in variants), name)
    if name in variants:
        _refuse_batch_dependent(artifact, name)
        return name, backend_of_variant(name)
    record = find(name)
    if record is None:
        raise InputError(f"{artifact.folder} has no variant or backend {name!r}; it has "
                         f"{', '.join(artifact.manifest.variants)}")
    if not record.serving:  # the record's serving layouts: none serves it (PyTorch, the per-shape dispatch)
        raise InputError(f"backend {name!r} cannot be served by Triton; choose one of the folder's variants: "
                         f"{', '.join(variants)}")
    names = record.variants
    chosen = next((n for n in names if n in variants), names[0]) if names else None
    if chosen in variants:
        _refuse_batch_dependent(artifact, chosen)
    return chosen, record


def _refuse_batch_dependent(artifact, variant: str) -> None:
    """An int8 file from before per-row activations answers a text according to what Triton batches with it."""
    from torchship.optimizers.int8_rows import per_tensor_file

    file = per_tensor_file(artifact, variant)
    if file:
        raise InputError(f"{file} scales its activations per tensor, so a served text's answer would depend on "
                         f"what Triton batches with it; make it again with: torchship quantize {artifact.folder} "
                         f"--int8")


def _tensors(specs, batched: bool) -> list[tuple[str, str, list[int]]]:
    out = []
    for t in specs:
        if t.dtype not in TRITON_DTYPES:
            raise InputError(f"tensor {t.name!r} has dtype {t.dtype}, which has no Triton data type here")
        axes = t.axes[1:] if batched else t.axes
        out.append((t.name, TRITON_DTYPES[t.dtype], [a if isinstance(a, int) else -1 for a in axes]))
    return out


def plan_model(folder: str | Path, options: TritonOptions = TritonOptions()) -> TritonModel:
    """What the repository entry will hold, checked, without writing anything."""
    from torchship.artifact import Artifact

    options = options.checked()
    artifact = Artifact.open(folder)  # an export folder, or an auto output (its model/ and auto's choice)
    chosen = artifact.auto_choice
    m = artifact.manifest
    if options.variant:
        pick, why = options.variant, "named with --variant"
    elif chosen:
        pick, why = chosen, "chosen by torchship auto: the fastest within its accuracy budget"
    else:
        pick, why = default_variant(artifact)
    variant, record = pick_variant(artifact, pick)
    io = m.io()
    batched = all(t.axes and t.axes[0] == "batch" for t in (*io.inputs, *io.outputs))
    resolved = m.resolved_shapes()
    if options.max_batch_size is not None:
        max_batch = options.max_batch_size
    elif batched:
        max_batch = resolved.axes["batch"][2] if resolved is not None and "batch" in resolved.axes else 8
    else:
        max_batch = 0
    if max_batch == 0:
        batched = False
    name = model_name(folder, options)
    if variant is None:  # an engine: found in the folder's cache, or built on this GPU
        from torchship.optimizers.tensorrt_build import engine_for_artifact

        files = {"model.plan": engine_for_artifact(artifact, record.engine_flags).path}
    else:
        path = artifact.path_of(variant)
        files = {"model.xml": path, "model.bin": path.with_suffix(".bin")} if path.suffix == ".xml" \
            else {"model.onnx": path}
    if record.triton is None:
        raise InputError(f"backend {record.name!r} has no Triton backend of its own to serve it; serve it with "
                         "--runtime python")
    key, value = record.triton
    platform, backend = (value, None) if key == "platform" else (None, value)
    return TritonModel(name, platform, backend, files, _tensors(io.inputs, batched), _tensors(io.outputs, batched),
                       max_batch, record.name, why)


def model_name(folder: str | Path, options: TritonOptions) -> str:
    """The model's folder name in the repository: --name, else the torchship folder's name."""
    name = options.name or Path(folder).resolve().name
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"model name {name!r} cannot be a Triton model folder name; pass --name")
    return name


def refuse_export_folder(repo: Path, flag: str) -> None:
    """A torchship export or auto output folder is not a model repository: say so, and how to write one."""
    from torchship.artifact import AUTO_MODEL_DIR

    repo = Path(repo)
    if (repo / MANIFEST_NAME).is_file() or (repo / AUTO_MODEL_DIR / MANIFEST_NAME).is_file():  # as resolve_folder
        raise InputError(f"{flag}{repo} is a torchship export folder, not a Triton model repository; write a "
                         f"repository from it with: torchship triton {repo} --output REPO, then torchship serve REPO")


def _not_written_by_us(final: Path) -> list[str]:
    """What a model folder torchship wrote holds that its marker does not list (someone else put it there)."""
    try:
        files = json.loads((final / MARKER).read_text()).get("files", [])
    except (OSError, ValueError):
        return [MARKER]
    known = {"config.pbtxt", MARKER, "1", *(f"1/{f}" for f in files), *(f"1/{f}.data" for f in files),
             *(p.as_posix() for f in files for p in Path("1", f).parents[:-2])}  # sub-folders of the version
    return sorted(p.relative_to(final).as_posix() for p in final.rglob("*")
                  if "__pycache__" not in p.parts and p.relative_to(final).as_posix() not in known)


def check_repository(repo: Path, name: str) -> None:
    """Refuse, before any work, a repository path that is a file, an export folder or cannot be written, and a
    model folder there that torchship did not write, or holding what it did not write (it would be replaced)."""
    from torchship._fs import check_writable

    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise InputError(f"--output {repo} is a file; pass a folder for the model repository")
    refuse_export_folder(repo, "--output ")
    check_writable(repo / name)
    final = repo / name
    if final.exists() and not (final / MARKER).is_file():
        raise InputError(f"{final} exists and was not written by torchship, which leaves it as it is; choose "
                         f"another --name")
    extra = _not_written_by_us(final) if final.exists() else []
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise InputError(f"{final} holds {extra[0]}{more}, which torchship did not write and would replace; move "
                         f"it out, or choose another --name")


def config_summary(text: str) -> str:
    """One line of what a config.pbtxt declares: backend, inputs, outputs, batching, instances."""
    c = parse_config(text)

    def tensors(specs):
        return ", ".join(f"{t.name} [{', '.join(map(str, t.dims))}]" for t in specs)

    parts = [f"platform {c.platform}" if c.platform else f"backend {c.backend}", f"in {tensors(c.input)}",
             f"out {tensors(c.output)}", f"max batch {c.max_batch_size}" if c.max_batch_size else "no Triton batching"]
    if c.HasField("dynamic_batching"):
        parts.append(f"dynamic batching (queue delay {c.dynamic_batching.max_queue_delay_microseconds} µs)")
    kinds = {1: "GPU", 2: "CPU"}  # Triton's KIND_GPU, KIND_CPU
    parts += [f"{g.count} {kinds.get(g.kind, 'auto')} instance{'s' if g.count > 1 else ''}" for g in c.instance_group]
    return f"{c.name}: " + "; ".join(parts)


def config_text(model: TritonModel, options: TritonOptions = TritonOptions()) -> str:
    lines = [f'name: "{model.name}"']
    lines.append(f'platform: "{model.platform}"' if model.platform else f'backend: "{model.backend}"')
    lines.append(f"max_batch_size: {model.max_batch_size}")
    for key, tensors in (("input", model.inputs), ("output", model.outputs)):
        for name, dtype, dims in tensors:
            lines.append(f'{key} {{\n  name: "{name}"\n  data_type: {dtype}\n  dims: [ {", ".join(map(str, dims))} ]\n}}')
    if options.dynamic_batching and model.max_batch_size > 0:
        preferred = "".join(f"\n  preferred_batch_size: {b}" for b in options.preferred_batch_sizes)
        lines.append(f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    kind = "KIND_GPU" if options.kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def write_triton_repo(folder: str | Path, repo: str | Path, options: TritonOptions = TritonOptions()) -> Path:
    """Write ``repo/<name>/`` for a variant of ``folder``; returns that model folder."""
    from torchship._fs import staged_file
    from torchship.external_data import copy_model

    options = options.checked()
    repo = Path(repo)
    check_repository(repo, model_name(folder, options))
    model = plan_model(folder, options)
    if any(b > model.max_batch_size for b in options.preferred_batch_sizes) and model.max_batch_size:
        raise InputError(f"preferred batch sizes {list(options.preferred_batch_sizes)} exceed max_batch_size "
                         f"{model.max_batch_size}")
    text = config_text(model, options)
    parse_config(text)  # Triton's schema, before anything is written
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / model.name
    with staged_file(final) as tmp:
        version = tmp / "1"
        version.mkdir(parents=True)
        for target, source in model.files.items():
            if not Path(source).is_file():
                raise ArtifactError(f"{source} is missing; re-run the step that made it")
            if target == "model.onnx":  # with its weights, if external, relocated as model.onnx.data
                copy_model(source, version / target)
            else:
                shutil.copyfile(source, version / target)
        (tmp / "config.pbtxt").write_text(text)
        (tmp / MARKER).write_text(json.dumps({"source": str(Path(folder).resolve()), "variant": model.variant,
                                             "why": model.why, "files": sorted(model.files)}, indent=2) + "\n")
    return final
