"""What the decoder benchmark runs, made one way for the timed run and for the peak-memory probes.

A runner has ``activate`` / ``infer`` / ``deactivate``: a predictor from the backend table, eager PyTorch
with its carried ``DynamicCache`` (:class:`TorchCachedDecoder`), or onnxruntime-genai's graph
(:class:`~torchship.benchmarks.genai.GenaiGraph`, rows named ``genai-<precision>``).
"""

from __future__ import annotations

from pathlib import Path

from torchship.artifact import Artifact, model_bytes
from torchship.benchmarks.genai import PREFIX, GenaiGraph
from torchship.runtimes import RuntimeOptions, check_backend, create_predictor, source_model_loader
from torchship.runtimes.torch_runtime import TorchCachedDecoder


def default_backends(artifact: Artifact) -> tuple[str, ...]:
    """Eager PyTorch with its cache and every variant the folder holds, as bench times an encoder's folder."""
    from torchship.benchmarks.run import folder_backends

    return folder_backends(artifact)


def make_runner(artifact: Artifact, name: str, *, threads: int, spin: str = "run",
                reference_model: str | None = None, genai_model: Path | None = None):
    """The runner of row ``name``; nothing is loaded until it is activated."""
    manifest = artifact.manifest
    if name.startswith(PREFIX):
        return GenaiGraph(genai_model, manifest.io(), threads=threads, spin=spin)
    if name == "torch":
        check_backend(artifact, "torch")
        return TorchCachedDecoder(source_model_loader(artifact, reference_model), manifest.io(),
                                  num_layers=manifest.num_layers, threads=threads)
    return create_predictor(artifact, name, RuntimeOptions(threads=threads, spin=spin))


def timed(runner, feeds):
    """A callable running one step and returning the logits: eager PyTorch on its carried cache, any other
    runner through ``infer``."""
    if isinstance(runner, TorchCachedDecoder):
        return runner.timed_step(feeds)
    return lambda: runner.infer(feeds)["logits"]


def file_bytes(artifact: Artifact, name: str, *, reference_model: str | None = None,
               genai_model: Path | None = None) -> int | None:
    """Bytes on disk of what row ``name`` loads: the ONNX file and its data, the builder's model, or for eager
    PyTorch the checkpoint's weight files (None when the checkpoint is not a local folder)."""
    if genai_model is not None:
        return model_bytes(genai_model)
    if name == "torch":
        source = reference_model or artifact.manifest.source.get("resolved", "")
        folder = Path(source) if source and not source.startswith("hub:") else None
        if folder is None or not folder.is_dir():
            return None
        weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
        return sum(p.stat().st_size for p in weights) or None
    variant = artifact.variant_for(name)
    path = artifact.folder / variant.file if variant is not None else None
    return model_bytes(path) if path is not None and path.is_file() else None


def judged(artifact: Artifact, name: str) -> dict | None:
    """A weight-only variant's accuracy as judged when it was made (logit cosine over a fixed decode, worst
    weight error), for the report; None for other rows."""
    variant = artifact.variant_for(name) if not name.startswith(PREFIX) else None
    if variant is None or variant.stage != "weight-only" or not variant.validation or not variant.validation.decode:
        return None
    v, d = variant.validation, variant.validation.decode
    return {"logit_cosine_mean": d.logit_cosine_mean, "logit_cosine_min": d.logit_cosine_min,
            "top1_agreement": d.top1_agreement, "greedy_same_prefix": d.greedy_same_prefix, "steps": d.steps,
            "max_weight_error": d.max_weight_error, "mean_weight_error": d.mean_weight_error,
            "weight_error_ceiling": d.weight_error_ceiling, "quantized_matmuls": d.quantized_matmuls,
            "budget": v.accuracy.budget if v.accuracy else None, "passed": v.passed}
