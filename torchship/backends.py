"""The one table of backends: what each runs, how its model is made, and who may use it.

A *backend* is a name a user types (``--backends ort-int8``); it runs one *variant*, a model in the
folder recorded in the manifest (``int8`` -> ``model_int8.onnx``), or brings its own model
(PyTorch runs the checkpoint, TensorRT builds an engine). Every consumer reads this table and
nothing else: the CLI's choices and help, ``create_predictor``, ``optimize`` and auto (which call each
record's builder), the serving layouts and Triton's platform, the order in which torchship picks a variant
by itself, the files a report names, and the command that makes a missing variant.

Adding a backend is one record (here, or ``register(record)``), one predictor (its ``predictor`` factory) and
one builder (its ``builder`` step). This module imports nothing heavy: both are named as ``"module:function"``
and imported only when used.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torchship.errors import ArtifactError, InputError, ValidationError

# Serving layouts: a Python-backend model that runs the file with ONNX Runtime, or one of Triton's own backends.
PYTHON, ONNXRUNTIME, TENSORRT, OPENVINO = "python", "onnxruntime", "tensorrt", "openvino"
SERVING_LAYOUTS = (PYTHON, ONNXRUNTIME, TENSORRT, OPENVINO)
TRITON_PLATFORMS = {ONNXRUNTIME: ("platform", "onnxruntime_onnx"), TENSORRT: ("platform", "tensorrt_plan"),
                    OPENVINO: ("backend", "openvino")}


def _resolve(reference: str):
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


@dataclass
class Build:
    """What a builder step is given: the folder (``artifact``, whose manifest the caller keeps current), the
    run's options (``OptimizeOptions``), the progress, and ``once`` for what several steps share."""

    artifact: Any
    options: Any = None
    progress: Any = None  # a torchship._progress.Progress (optimize always gives one); None: silent
    shared: dict = field(default_factory=dict)

    def once(self, key: str, make):
        """``make()``, made on first use and kept for the other steps of this run (a failed one is tried
        again by the next)."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # "pytorch", "onnxruntime", "onnxruntime-cuda", "openvino", "tensorrt"
    precision: str  # "fp32", "fp16", "int8", "int4"
    device: str  # "cpu" or "cuda"
    made_by: str  # one line for summaries
    # "module:function" taking (Build, Backend): makes the variant and returns it (or a list, or None where the
    # step recorded it itself); None: nothing in a folder makes it (the export, the checkpoint, the dispatch table)
    builder: str | None
    predictor: str  # "module:function" taking (artifact, backend, RuntimeOptions) -> Predictor
    # the folder variants it runs, first present wins (a renamed variant's earlier name comes after it); the
    # first is the one its builder writes; () brings its own model
    variants: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # what the variant writes into the folder
    make: str = ""  # the command that makes the variant ({folder} is filled in)
    extra: str | None = None  # the pip extra its runtime needs
    preference: int | None = None  # order when torchship picks a variant itself (lower first); None: never
    swept: bool = True  # auto builds and times it
    serving: tuple[str, ...] = ()  # the serving layouts that can serve it (SERVING_LAYOUTS); (): none
    skips: tuple[type[Exception], ...] = ()  # failures of its builder that skip the variant, not the command
    fused: bool = False  # made from ONNX Runtime's transformer fusion (needs the family's ORT model type)
    torch_mode: str | None = None  # PyTorch: "eager", "torchscript" or "compile"
    graph_level: str | None = None  # ONNX Runtime's graph level the file is saved and run at
    approximate_gelu: str | None = None  # what the approximation is; judged by output cosine, not eager's tolerance
    attention: str | None = None  # the attention kernel, where not ORT's packed Attention
    measured_only: bool = False  # exact, but only a measured choice picks it (optimize makes it for one)
    engine_flags: tuple[str, ...] = ()  # TensorRT builder precision flags
    aliases: tuple[str, ...] = ()  # earlier names, still accepted wherever a user types one

    @property
    def needs_gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def command(self) -> str:
        """The torchship command that makes its variant ("optimize", "quantize", ...); "" for none."""
        words = self.make.split()
        return words[1] if len(words) > 1 else ""

    @property
    def triton(self) -> tuple[str, str] | None:
        """("platform" or "backend", value) of the Triton backend that serves its file natively; None: none."""
        return next((TRITON_PLATFORMS[s] for s in self.serving if s in TRITON_PLATFORMS), None)

    def serves(self, layout: str) -> bool:
        return layout in self.serving

    def make_command(self, folder) -> str:
        return self.make.format(folder=folder)

    def factory(self):
        return _resolve(self.predictor)

    def step(self):
        """Its builder, or None when nothing in a folder makes it."""
        return _resolve(self.builder) if self.builder else None


_ORT = "torchship.runtimes.ort:ort_predictor"
_ORT_CUDA = "torchship.runtimes.ort:ort_cuda_predictor"
_ORT_MEASURED = "torchship.runtimes.ort:ort_measured_predictor"
_OPENVINO = "torchship.runtimes.openvino:openvino_predictor"
_TORCH = "torchship.runtimes.torch_runtime:torch_predictor"
_TENSORRT = "torchship.runtimes.tensorrt:engine_predictor"
_LEVEL = "torchship.optimizers.builders:graph_level"
_FUSION = "torchship.optimizers.builders:fusion"
_FP16 = "torchship.optimizers.fp16:fp16_step"
_OV = "torchship.optimizers.openvino:openvino_step"
_ENGINE = "torchship.optimizers.tensorrt_build:engine_step"
_WO = "torchship.optimizers.weight_only:weight_only_step"
WEIGHT_ONLY = _WO  # the weight-only builder: its variants are judged on a decode, so only decoders have them
_ORT_FILE = (PYTHON, ONNXRUNTIME)  # a CPU ONNX file: Triton's onnxruntime backend, or ORT in a Python model
_OPTIMIZE = "torchship optimize {folder}"
_CANDIDATE = (ArtifactError, ValidationError)  # a candidate only a measured choice picks: skipped, with a note


def _level(level: str, preference: int | None) -> Backend:
    return Backend(f"ort-{level}", "onnxruntime", "fp32", "cpu", f"ORT graph level {level}", _LEVEL, _ORT,
                   (f"ort-{level}",), (f"ort_{level}.onnx",), _OPTIMIZE, preference=preference, serving=_ORT_FILE,
                   graph_level=level)


_BUILT_IN: tuple[Backend, ...] = (
    Backend("torch", "pytorch", "fp32", "cpu", "eager PyTorch", None, _TORCH, swept=False, torch_mode="eager"),
    Backend("torchscript", "pytorch", "fp32", "cpu", "TorchScript trace", None, _TORCH, swept=False,
            torch_mode="torchscript"),
    Backend("torch-compile", "pytorch", "fp32", "cpu", "torch.compile", None, _TORCH, swept=False,
            torch_mode="compile"),
    Backend("ort", "onnxruntime", "fp32", "cpu", "the export as written", None, _ORT, ("model",),
            ("model.onnx",), "torchship export --model MODEL --output {folder}", preference=4, serving=_ORT_FILE),
    Backend("ort-optimized", "onnxruntime", "fp32", "cpu", "ORT transformer fusion", _FUSION, _ORT, ("optimized",),
            ("model_optimized.onnx",), _OPTIMIZE, preference=0, serving=_ORT_FILE, skips=(ArtifactError,),
            fused=True),
    Backend("ort-disabled", "onnxruntime", "fp32", "cpu", "the export, ORT graph optimizations off", _LEVEL,
            _ORT, ("ort-disabled",), ("model.onnx",), _OPTIMIZE, swept=False, serving=_ORT_FILE,
            graph_level="disabled"),
    _level("basic", 3),
    _level("extended", 2),
    _level("all", 1),
    # Approximate: GELU as tanh (FastGelu), as Optimum's O3; judged by output cosine against the fp32 export, not
    # by eager PyTorch's tolerance. Never picked by preference: only the measured dispatch, where it is faster, or
    # auto, which times it with the rest and judges it by the config's budget.
    Backend("ort-optimized-approx", "onnxruntime", "fp32", "cpu", "ORT transformer fusion, tanh-approximate GELU",
            "torchship.optimizers.builders:approximate", _ORT, ("optimized-approx",),
            ("model_optimized_approx.onnx",), _OPTIMIZE, serving=_ORT_FILE, skips=_CANDIDATE, fused=True,
            approximate_gelu="GELU as its tanh approximation (FastGelu)"),
    # Exact, with another attention kernel of ONNX Runtime (optimizers/attention_kernels.py): ONNX's Attention
    # operator with the K bias dropped and the V bias folded; MultiHeadAttention, whose flash kernel runs on batches
    # without padding. Never picked by preference: only the measured dispatch, at the shapes where they are faster,
    # or auto, which times them with the rest at its use shape. Called -sdpa and -flash before.
    Backend("ort-optimized-onnx-attention", "onnxruntime", "fp32", "cpu",
            "ORT transformer fusion, ONNX Attention operator", "torchship.optimizers.builders:onnx_attention", _ORT,
            ("optimized-onnx-attention", "optimized-sdpa"), ("model_optimized_onnx_attention.onnx",), _OPTIMIZE,
            serving=_ORT_FILE, skips=_CANDIDATE, fused=True, attention="ONNX Attention (opset 24), K/V biases folded",
            measured_only=True, aliases=("ort-optimized-sdpa",)),
    Backend("ort-optimized-mha", "onnxruntime", "fp32", "cpu",
            "ORT transformer fusion, MultiHeadAttention (flash without padding)",
            "torchship.optimizers.builders:multi_head_attention", _ORT, ("optimized-mha", "optimized-flash"),
            ("model_optimized_mha.onnx",), _OPTIMIZE, serving=_ORT_FILE, skips=_CANDIDATE, fused=True,
            attention="MultiHeadAttention, flash kernel when the batch has no padding", measured_only=True,
            aliases=("ort-optimized-flash",)),
    # Not a file: per call, the fp32 variant that torchship optimize measured fastest for the call's shape (the
    # manifest's dispatch table). auto times the variants themselves, these candidates included; Triton serves one
    # file.
    Backend("ort-measured", "onnxruntime", "fp32", "cpu", "fastest fp32 variant per shape, as optimize measured",
            None, _ORT_MEASURED, make=_OPTIMIZE, swept=False),
    Backend("ort-int8", "onnxruntime", "int8", "cpu", "torchship quantize (fastest candidate within budget)",
            "torchship.optimizers.quantize:int8_step", _ORT, ("int8",), ("model_int8.onnx",),
            "torchship quantize {folder} --int8", serving=_ORT_FILE),
    # Decoders: weights in 8 or 4 bits (MatMulNBits), activations in fp32; judged by a 64-token decode.
    Backend("ort-wo-int8", "onnxruntime", "int8", "cpu", "weight-only int8 (MatMulNBits)", _WO, _ORT,
            ("wo-int8",), ("model_wo_int8.onnx",), "torchship quantize {folder} --method weight-only --bits 8",
            swept=False, serving=_ORT_FILE),
    Backend("ort-wo-int4", "onnxruntime", "int4", "cpu", "weight-only int4 (MatMulNBits)", _WO, _ORT,
            ("wo-int4",), ("model_wo_int4.onnx",), "torchship quantize {folder} --method weight-only --bits 4",
            swept=False, serving=_ORT_FILE),
    # fp16 for GPUs; ONNX Runtime's CPU provider runs it through casts, so auto does not time it on a CPU.
    Backend("ort-fp16", "onnxruntime", "fp16", "cpu", "fp16 model on the CPU provider", _FP16, _ORT, ("fp16",),
            ("model_fp16.onnx",), "torchship optimize {folder} --fp16", swept=False, serving=_ORT_FILE,
            skips=_CANDIDATE),
    Backend("openvino", "openvino", "fp32", "cpu", "OpenVINO IR", _OV, _OPENVINO, ("openvino",),
            ("openvino/model.xml", "openvino/model.bin"), "torchship optimize {folder} --openvino",
            extra="torchship[openvino]", serving=(OPENVINO,)),
    Backend("openvino-fp16", "openvino", "fp16", "cpu", "OpenVINO IR, fp16 weights", _OV, _OPENVINO,
            ("openvino-fp16",), ("openvino_fp16/model.xml", "openvino_fp16/model.bin"),
            "torchship optimize {folder} --openvino", extra="torchship[openvino]", serving=(OPENVINO,)),
    Backend("ort-cuda", "onnxruntime-cuda", "fp32", "cuda", "ORT CUDA provider, IO binding", _FUSION, _ORT_CUDA,
            ("optimized", "model"), (), _OPTIMIZE, extra="torchship[gpu]", serving=(ONNXRUNTIME,),
            skips=(ArtifactError,), fused=True),
    Backend("ort-cuda-fp16", "onnxruntime-cuda", "fp16", "cuda", "fp16 model on the CUDA provider", _FP16,
            _ORT_CUDA, ("fp16",), (), "torchship optimize {folder} --fp16", extra="torchship[gpu]",
            serving=(ONNXRUNTIME,), skips=_CANDIDATE),
    Backend("tensorrt", "tensorrt", "fp32", "cuda", "TensorRT engine", _ENGINE, _TENSORRT,
            files=("tensorrt/",), make="torchship tensorrt {folder} --precision fp32", extra="torchship[tensorrt]",
            serving=(TENSORRT,)),
    Backend("tensorrt-fp16", "tensorrt", "fp16", "cuda", "TensorRT engine, fp16", _ENGINE, _TENSORRT,
            files=("tensorrt/",), make="torchship tensorrt {folder} --precision fp16", extra="torchship[tensorrt]",
            serving=(TENSORRT,), engine_flags=("fp16",)),
    Backend("tensorrt-int8", "tensorrt", "int8", "cuda", "TensorRT engine from the static int8 model", _ENGINE,
            _TENSORRT, files=("tensorrt/",), make="torchship tensorrt {folder} --precision int8",
            extra="torchship[tensorrt]", serving=(TENSORRT,), engine_flags=("fp16", "int8")),
)

# The table as it stands: the built-in records and any registered since (register / unregister). Read it through
# records() or backend() at call time, so that a registered record is seen.
TABLE: tuple[Backend, ...] = _BUILT_IN
BY_NAME: dict[str, Backend] = {b.name: b for b in TABLE}
ALIASES: dict[str, str] = {a: b.name for b in TABLE for a in b.aliases}  # earlier name -> name
BACKENDS: tuple[str, ...] = tuple(BY_NAME)


def _set(table: tuple[Backend, ...]) -> None:
    global TABLE, BY_NAME, ALIASES, BACKENDS
    TABLE = table
    BY_NAME = {b.name: b for b in table}
    ALIASES = {a: b.name for b in table for a in b.aliases}
    BACKENDS = tuple(BY_NAME)


def records() -> tuple[Backend, ...]:
    """Every backend record, the registered ones included, in table order."""
    return TABLE


def register(record: Backend) -> Backend:
    """Add ``record`` to the table (after the built-in ones); undo with ``unregister(record.name)``."""
    taken = [n for n in (record.name, *record.aliases) if n in BY_NAME or n in ALIASES]
    if taken:
        raise InputError(f"backend name {taken[0]!r} is taken")
    unknown = [s for s in record.serving if s not in SERVING_LAYOUTS]
    if unknown:
        raise InputError(f"unknown serving layout {unknown[0]!r}; use {', '.join(SERVING_LAYOUTS)}")
    _set(TABLE + (record,))
    return record


def unregister(name: str) -> None:
    """Take a registered record out of the table again; the built-in ones stay."""
    if any(b.name == name for b in _BUILT_IN):
        raise InputError(f"backend {name!r} is built in and stays")
    _set(tuple(b for b in TABLE if b.name != name))


@contextmanager
def registered(record: Backend):
    """``register(record)`` for the duration of a with block (a test's backend)."""
    register(record)
    try:
        yield record
    finally:
        unregister(record.name)


def canonical(name: str) -> str:
    """The backend's name for ``name``, which may be an earlier one (an alias)."""
    return ALIASES.get(name, name)


def find(name: str) -> Backend | None:
    """The record of backend ``name`` (or of an alias), None when there is none."""
    return BY_NAME.get(canonical(name))


def backend(name: str) -> Backend:
    record = find(name)
    if record is None:
        raise InputError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return record


def parse_backends(text: str) -> tuple[str, ...]:
    """The backend names in a comma-separated list, each as the table names it (aliases resolved)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"no backends given; choose from {', '.join(BACKENDS)}")
    return tuple(backend(name).name for name in names)


def backend_variants(name: str) -> tuple[str, ...]:
    """The folder variants backend ``name`` runs, first present wins; empty for the backends that bring their
    own model (PyTorch, TensorRT engines)."""
    return backend(name).variants


def backend_of_variant(variant: str) -> Backend:
    """The CPU backend that runs the folder variant ``variant`` (``optimized`` -> ``ort-optimized``), an earlier
    name of a variant included (``optimized-sdpa`` -> ``ort-optimized-onnx-attention``)."""
    for b in TABLE:
        if variant in b.variants and b.device == "cpu":
            return b
    raise InputError(f"no backend runs the variant {variant!r}")


def variant_names(variant: str) -> tuple[str, ...]:
    """Every name of the folder variant ``variant``: its name now, then its earlier ones (``optimized-sdpa`` ->
    ``optimized-onnx-attention``, ``optimized-sdpa``); ``(variant,)`` for a name no CPU backend runs."""
    record = next((b for b in TABLE if variant in b.variants and b.device == "cpu"), None)
    return record.variants if record is not None else (variant,)


def remake_command(variant: str, folder) -> str:
    """The command that makes the folder variant ``variant`` again."""
    return backend_of_variant(variant).make_command(folder)


def preference_order() -> tuple[str, ...]:
    """Variants torchship picks by itself when none is named, most optimized first."""
    ranked = sorted((b for b in TABLE if b.preference is not None), key=lambda b: b.preference)
    return tuple(b.variants[0] for b in ranked)


def choices_help() -> str:
    """The backend names for a --backends help text, CPU ones first."""
    cpu = [b.name for b in TABLE if not b.needs_gpu]
    gpu = [b.name for b in TABLE if b.needs_gpu]
    return f"{', '.join(cpu)}; on a GPU: {', '.join(gpu)}"
