"""The one table of backends: what each runs, how its model is made, and who may use it.

A *backend* is a name a user types (``--backends ort-int8``); it runs one *variant*, a model in the
folder recorded in the manifest (``int8`` -> ``model_int8.onnx``), or brings its own model
(PyTorch runs the checkpoint, TensorRT builds an engine). Every consumer reads this table and
nothing else: the CLI's choices and help, ``create_predictor``, auto's sweep and its build plan,
Triton's platform, the order in which torchship picks a variant by itself, the files a report
names, and the command that makes a missing variant.

Adding a backend is one record here, one predictor module (its ``predictor`` factory) and its tests.
This module imports nothing heavy: factories are named as ``"module:function"`` and imported only
when a predictor is made.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from torchship.errors import InputError

# How a variant is made; auto groups the backends it wants by these to call each step once.
EXPORT, CHECKPOINT, GRAPH_LEVEL, FUSION, INT8, FP16, OPENVINO, ENGINE, DISPATCH, WEIGHT_ONLY = (
    "export", "checkpoint", "graph-level", "fusion", "int8", "fp16", "openvino", "engine", "dispatch", "weight-only")


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # "pytorch", "onnxruntime", "onnxruntime-cuda", "openvino", "tensorrt"
    precision: str  # "fp32", "fp16", "int8"
    device: str  # "cpu" or "cuda"
    made_by: str  # one line for summaries
    builder: str  # how its model is made: one of the constants above
    predictor: str  # "module:function" taking (artifact, backend, RuntimeOptions) -> Predictor
    variants: tuple[str, ...] = ()  # the folder variants it runs, first present wins; () brings its own model
    files: tuple[str, ...] = ()  # what the variant writes into the folder
    make: str = ""  # the command that makes the variant ({folder} is filled in)
    extra: str | None = None  # the pip extra its runtime needs
    preference: int | None = None  # order when torchship picks a variant itself (lower first); None: never
    swept: bool = True  # auto builds and times it
    triton: tuple[str, str] | None = None  # ("platform" or "backend", value) in a Triton config
    settings: dict = field(default_factory=dict)  # backend-specific: torch mode, graph level, engine flags

    @property
    def needs_gpu(self) -> bool:
        return self.device == "cuda"

    def make_command(self, folder) -> str:
        return self.make.format(folder=folder)

    def factory(self):
        module, _, function = self.predictor.partition(":")
        return getattr(importlib.import_module(module), function)


_ORT = "torchship.runtimes.ort:ort_predictor"
_ORT_CUDA = "torchship.runtimes.ort:ort_cuda_predictor"
_ORT_MEASURED = "torchship.runtimes.ort:ort_measured_predictor"
_OPENVINO = "torchship.runtimes.openvino:openvino_predictor"
_TORCH = "torchship.runtimes.torch_runtime:torch_predictor"
_TENSORRT = "torchship.optimizers.tensorrt_build:engine_predictor"
_ONNX_PLATFORM = ("platform", "onnxruntime_onnx")
_OPTIMIZE = "torchship optimize {folder}"


def _level(level: str, preference: int | None) -> Backend:
    return Backend(f"ort-{level}", "onnxruntime", "fp32", "cpu", f"ORT graph level {level}", GRAPH_LEVEL, _ORT,
                   (f"ort-{level}",), (f"ort_{level}.onnx",), _OPTIMIZE, preference=preference,
                   triton=_ONNX_PLATFORM, settings={"level": level})


TABLE: tuple[Backend, ...] = (
    Backend("torch", "pytorch", "fp32", "cpu", "eager PyTorch", CHECKPOINT, _TORCH, swept=False,
            settings={"mode": "eager"}),
    Backend("torchscript", "pytorch", "fp32", "cpu", "TorchScript trace", CHECKPOINT, _TORCH, swept=False,
            settings={"mode": "torchscript"}),
    Backend("torch-compile", "pytorch", "fp32", "cpu", "torch.compile", CHECKPOINT, _TORCH, swept=False,
            settings={"mode": "compile"}),
    Backend("ort", "onnxruntime", "fp32", "cpu", "the export as written", EXPORT, _ORT, ("model",),
            ("model.onnx",), "torchship export --model MODEL --output {folder}", preference=4,
            triton=_ONNX_PLATFORM),
    Backend("ort-optimized", "onnxruntime", "fp32", "cpu", "ORT transformer fusion", FUSION, _ORT, ("optimized",),
            ("model_optimized.onnx",), _OPTIMIZE, preference=0, triton=_ONNX_PLATFORM),
    Backend("ort-disabled", "onnxruntime", "fp32", "cpu", "the export, ORT graph optimizations off", GRAPH_LEVEL,
            _ORT, ("ort-disabled",), ("model.onnx",), _OPTIMIZE, swept=False, triton=_ONNX_PLATFORM,
            settings={"level": "disabled"}),
    _level("basic", 3),
    _level("extended", 2),
    _level("all", 1),
    # Approximate: GELU as tanh (FastGelu), as Optimum's O3; judged by output cosine against the fp32 export, not
    # by eager PyTorch's tolerance. Never picked by preference: only the measured dispatch, where it is faster, or
    # auto, which times it with the rest and judges it by the config's budget.
    Backend("ort-optimized-approx", "onnxruntime", "fp32", "cpu", "ORT transformer fusion, tanh-approximate GELU",
            FUSION, _ORT, ("optimized-approx",), ("model_optimized_approx.onnx",), _OPTIMIZE,
            triton=_ONNX_PLATFORM, settings={"approximate": "GELU as its tanh approximation (FastGelu)"}),
    # Exact, with another attention kernel of ONNX Runtime (optimizers/attention_kernels.py): ONNX's Attention
    # operator with the K bias dropped and the V bias folded; MultiHeadAttention's flash kernel for batches without
    # padding. Never picked by preference: only the measured dispatch, at the shapes where they are faster, or auto,
    # which times them with the rest at its use shape.
    Backend("ort-optimized-sdpa", "onnxruntime", "fp32", "cpu", "ORT transformer fusion, ONNX Attention operator",
            FUSION, _ORT, ("optimized-sdpa",), ("model_optimized_sdpa.onnx",), _OPTIMIZE,
            triton=_ONNX_PLATFORM, settings={"attention": "ONNX Attention (opset 24), K/V biases folded",
                                             "measured_only": True}),
    Backend("ort-optimized-flash", "onnxruntime", "fp32", "cpu",
            "ORT transformer fusion, flash attention without padding", FUSION, _ORT, ("optimized-flash",),
            ("model_optimized_flash.onnx",), _OPTIMIZE, triton=_ONNX_PLATFORM,
            settings={"attention": "MultiHeadAttention, flash kernel when the batch has no padding",
                      "measured_only": True}),
    # Not a file: per call, the fp32 variant that torchship optimize measured fastest for the call's shape (the
    # manifest's dispatch table). auto times the variants themselves, these candidates included; Triton serves one
    # file.
    Backend("ort-measured", "onnxruntime", "fp32", "cpu", "fastest fp32 variant per shape, as optimize measured",
            DISPATCH, _ORT_MEASURED, make=_OPTIMIZE, swept=False),
    Backend("ort-int8", "onnxruntime", "int8", "cpu", "torchship quantize (fastest candidate within budget)", INT8,
            _ORT, ("int8",), ("model_int8.onnx",), "torchship quantize {folder} --int8", triton=_ONNX_PLATFORM),
    # Decoders: weights in 8 or 4 bits (MatMulNBits), activations in fp32; judged by a 64-token decode.
    Backend("ort-wo-int8", "onnxruntime", "int8", "cpu", "weight-only int8 (MatMulNBits)", WEIGHT_ONLY, _ORT,
            ("wo-int8",), ("model_wo_int8.onnx",), "torchship quantize {folder} --method weight-only --bits 8",
            swept=False, triton=_ONNX_PLATFORM),
    Backend("ort-wo-int4", "onnxruntime", "int4", "cpu", "weight-only int4 (MatMulNBits)", WEIGHT_ONLY, _ORT,
            ("wo-int4",), ("model_wo_int4.onnx",), "torchship quantize {folder} --method weight-only --bits 4",
            swept=False, triton=_ONNX_PLATFORM),
    # fp16 for GPUs; ONNX Runtime's CPU provider runs it through casts, so auto does not time it on a CPU.
    Backend("ort-fp16", "onnxruntime", "fp16", "cpu", "fp16 model on the CPU provider", FP16, _ORT, ("fp16",),
            ("model_fp16.onnx",), "torchship optimize {folder} --fp16", swept=False, triton=_ONNX_PLATFORM),
    Backend("openvino", "openvino", "fp32", "cpu", "OpenVINO IR", OPENVINO, _OPENVINO, ("openvino",),
            ("openvino/model.xml", "openvino/model.bin"), "torchship optimize {folder} --openvino",
            extra="torchship[openvino]", triton=("backend", "openvino")),
    Backend("openvino-fp16", "openvino", "fp16", "cpu", "OpenVINO IR, fp16 weights", OPENVINO, _OPENVINO,
            ("openvino-fp16",), ("openvino_fp16/model.xml", "openvino_fp16/model.bin"),
            "torchship optimize {folder} --openvino", extra="torchship[openvino]", triton=("backend", "openvino")),
    Backend("ort-cuda", "onnxruntime-cuda", "fp32", "cuda", "ORT CUDA provider, IO binding", FUSION, _ORT_CUDA,
            ("optimized", "model"), (), _OPTIMIZE, extra="torchship[gpu]", triton=_ONNX_PLATFORM),
    Backend("ort-cuda-fp16", "onnxruntime-cuda", "fp16", "cuda", "fp16 model on the CUDA provider", FP16, _ORT_CUDA,
            ("fp16",), (), "torchship optimize {folder} --fp16", extra="torchship[gpu]", triton=_ONNX_PLATFORM),
    Backend("tensorrt", "tensorrt", "fp32", "cuda", "TensorRT engine", ENGINE, _TENSORRT,
            files=("tensorrt/",), make="torchship tensorrt {folder} --precision fp32", extra="torchship[tensorrt]",
            triton=("platform", "tensorrt_plan"), settings={"flags": ()}),
    Backend("tensorrt-fp16", "tensorrt", "fp16", "cuda", "TensorRT engine, fp16", ENGINE, _TENSORRT,
            files=("tensorrt/",), make="torchship tensorrt {folder} --precision fp16", extra="torchship[tensorrt]",
            triton=("platform", "tensorrt_plan"), settings={"flags": ("fp16",)}),
    Backend("tensorrt-int8", "tensorrt", "int8", "cuda", "TensorRT engine from the static int8 model", ENGINE,
            _TENSORRT, files=("tensorrt/",), make="torchship tensorrt {folder} --precision int8",
            extra="torchship[tensorrt]", triton=("platform", "tensorrt_plan"), settings={"flags": ("fp16", "int8")}),
)

BY_NAME: dict[str, Backend] = {b.name: b for b in TABLE}
BACKENDS: tuple[str, ...] = tuple(BY_NAME)


def backend(name: str) -> Backend:
    if name not in BY_NAME:
        raise InputError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BY_NAME[name]


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"no backends given; choose from {', '.join(BACKENDS)}")
    for name in names:
        backend(name)
    return names


def backend_variants(name: str) -> tuple[str, ...]:
    """The folder variants backend ``name`` runs, first present wins; empty for the backends that bring their
    own model (PyTorch, TensorRT engines)."""
    return backend(name).variants


def backend_of_variant(variant: str) -> Backend:
    """The CPU backend that runs the folder variant ``variant`` (``optimized`` -> ``ort-optimized``)."""
    for b in TABLE:
        if b.variants == (variant,) and b.device == "cpu":
            return b
    raise InputError(f"no backend runs the variant {variant!r}")


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
