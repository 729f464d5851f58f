"""Predictors with one interface, built by backend name from an exported folder."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.artifact import Artifact
from torchship.errors import InputError
from torchship.runtimes.base import Predictor

# Backend name -> the folder variant it runs. "ort" is the export as written, run with ONNX
# Runtime's defaults; "ort-optimized" is the transformer-fused model.
ORT_BACKENDS = {
    "ort": "model",
    "ort-optimized": "optimized",
    "ort-disabled": "ort-disabled",
    "ort-basic": "ort-basic",
    "ort-extended": "ort-extended",
    "ort-all": "ort-all",
    "ort-int8": "int8",  # torchship quantize
    "ort-fp16": "fp16",  # torchship optimize --fp16 (for GPUs; ONNX Runtime's CPU provider runs it slowly)
}
TORCH_BACKENDS = {"torch": "eager", "torchscript": "torchscript", "torch-compile": "compile"}
# ONNX Runtime with the CUDA provider and IO binding: backend -> the variants it runs, first present wins.
ORT_CUDA_BACKENDS = {"ort-cuda": ("optimized", "model"), "ort-cuda-fp16": ("fp16",)}
OPENVINO_BACKENDS = {"openvino": "openvino", "openvino-fp16": "openvino-fp16"}  # torchship optimize --openvino
# TensorRT engines built (or found in DIR/tensorrt/) from the export on first use: backend -> precision flags.
TENSORRT_BACKENDS = {"tensorrt": (), "tensorrt-fp16": ("fp16",), "tensorrt-int8": ("fp16", "int8")}
BACKENDS = (*TORCH_BACKENDS, *ORT_BACKENDS, *ORT_CUDA_BACKENDS, *OPENVINO_BACKENDS, *TENSORRT_BACKENDS)


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int | None = None
    spin: bool = False
    device: str = "cpu"
    reference_model: str | None = None  # checkpoint for the torch backends; None: the export's source


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"no backends given; choose from {', '.join(BACKENDS)}")
    for name in names:
        if name not in BACKENDS:
            raise InputError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return names


_MAKES = {"int8": "torchship quantize {folder} --int8", "fp16": "torchship optimize {folder} --fp16",
          "openvino": "torchship optimize {folder} --openvino", "openvino-fp16": "torchship optimize {folder} --openvino"}


def backend_variants(backend: str) -> tuple[str, ...]:
    """The folder variants ``backend`` runs, first present wins; empty for the backends that bring their own
    model (PyTorch, TensorRT engines)."""
    if backend in ORT_BACKENDS:
        return (ORT_BACKENDS[backend],)
    if backend in OPENVINO_BACKENDS:
        return (OPENVINO_BACKENDS[backend],)
    return ORT_CUDA_BACKENDS.get(backend, ())


def _require_variant(artifact: Artifact, backend: str, *names: str) -> str:
    """The first of ``names`` the folder holds, or an error that says which command makes it."""
    manifest = artifact.manifest
    for name in names:
        if name in manifest.variants:
            return name
    name = names[0]
    if name in manifest.skipped:
        step = "quantize" if name == "int8" else "optimize"
        raise InputError(f"{artifact.folder} has no {name!r} variant for backend {backend}: {step} skipped it "
                         f"({manifest.skipped[name]}); choose another backend")
    make = _MAKES.get(name, "torchship optimize {folder}").format(folder=artifact.folder)
    raise InputError(f"{artifact.folder} has no {name!r} variant for backend {backend}; run: {make}")


def create_predictor(artifact: Artifact, backend: str, options: RuntimeOptions = RuntimeOptions()) -> Predictor:
    manifest = artifact.manifest
    if backend in ORT_CUDA_BACKENDS:
        from torchship.runtimes.ort import OrtCudaPredictor

        name = _require_variant(artifact, backend, *backend_variants(backend))
        device = options.device if options.device.startswith("cuda") else "cuda"
        return OrtCudaPredictor(artifact.path_of(name), manifest.io(), threads=options.threads, device=device)
    if backend in OPENVINO_BACKENDS:
        from torchship.runtimes.openvino import OpenVINOPredictor

        name = _require_variant(artifact, backend, *backend_variants(backend))
        return OpenVINOPredictor(artifact.path_of(name), manifest.io(), threads=options.threads)
    if backend in TENSORRT_BACKENDS:
        from torchship.runtimes.tensorrt import EngineBackedPredictor

        return EngineBackedPredictor.for_artifact(artifact, TENSORRT_BACKENDS[backend])
    if backend in ORT_BACKENDS:
        from torchship.runtimes.ort import OrtPredictor

        name = _require_variant(artifact, backend, *backend_variants(backend))
        variant = manifest.variants[name]
        return OrtPredictor(artifact.path_of(name), manifest.io(),
                            threads=options.threads, spin=options.spin, device=options.device,
                            session_level=variant.options.get("session_level", "all"),
                            disabled_optimizers=tuple(variant.options.get("disabled_optimizers", ())))
    if backend in TORCH_BACKENDS:
        from torchship.runtimes.torch_runtime import TorchPredictor

        return TorchPredictor(_torch_builder(artifact, options.reference_model), manifest.io(),
                              mode=TORCH_BACKENDS[backend], threads=options.threads)
    raise InputError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def source_model_loader(artifact: Artifact, override: str | None = None):
    """A function that loads the export's source checkpoint (or ``override``) the way a PyTorch user
    would: the family's model class, default attention, eval mode."""
    from torchship import loading

    manifest = artifact.manifest
    source = override or manifest.source.get("resolved", "")
    if source.startswith("hub:"):
        source = source[4:]
    if not source or source == "python object":
        raise InputError(f"{artifact.folder} was exported from a Python object; pass the checkpoint "
                         "for the PyTorch backends with --reference-model")
    spec = manifest.spec()

    def load():
        _, ref = loading.peek(loading.resolve(source))
        return spec.load_model(ref, spec.load_config(ref), manifest.task)

    return load


def _torch_builder(artifact: Artifact, override: str | None):
    """Loads the source model wrapped by its family's spec, with example inputs (for tracing)."""
    load = source_model_loader(artifact, override)
    spec = artifact.manifest.spec()
    io = artifact.manifest.io()

    def build():
        model = load()
        return spec.wrapper(model, io), spec.sample_inputs(model.config, io, spec.dummy_case, seed=0)

    return build
