"""ONNX Runtime predictor (CPU, or the CUDA provider when asked for and present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship._ort import cuda_index, make_session
from torchship.runtimes.base import Predictor


class OrtPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, io, *, threads: int | None = None,
                 spin: bool = False, session_level: str = "all", device: str = "cpu",
                 disabled_optimizers: tuple[str, ...] = (), fix: str = "re-run torchship export"):
        super().__init__(io)
        self.fix = fix
        self.disabled_optimizers = tuple(disabled_optimizers)
        self.path = Path(path)
        self.threads = threads
        self.spin = spin
        self.session_level = session_level
        self.device = device
        self._session = None

    def _activate(self) -> None:
        self._session = make_session(self.path, threads=self.threads, spin=self.spin,
                                     level=self.session_level, device=self.device,
                                     disabled_optimizers=self.disabled_optimizers, fix=self.fix)

    def _infer(self, feeds):
        values = self._session.run(list(self.output_names), feeds)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values)}

    def _deactivate(self) -> None:
        self._session = None


class OrtCudaPredictor(OrtPredictor):
    """ONNX Runtime on the CUDA provider with IO binding: inputs copied to the GPU once per run, outputs
    left on the GPU until the run ends, then copied back (what a GPU server does per request)."""

    backend = "onnxruntime-cuda"

    def __init__(self, path: Path, io, *, threads: int | None = None, device: str = "cuda",
                 fix: str = "re-run torchship export"):
        super().__init__(path, io, threads=threads, device=device, fix=fix)
        self.device_id = cuda_index(device) or 0

    def _infer(self, feeds):
        binding = self._session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self._session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return {n: np.asarray(v) for n, v in zip(self.output_names, values)}


def _session_of(artifact, record, variant: str) -> dict:
    """Where a variant's file is and how ORT runs it, with the command that remakes it in errors."""
    return {"path": artifact.path_of(variant), "io": artifact.manifest.io(),
            "fix": "re-run " + record.make_command(artifact.folder)}


def ort_predictor(artifact, record, options) -> OrtPredictor:
    """The table's factory for ONNX Runtime CPU backends: the variant's file at the level it was saved for."""
    from torchship.runtimes import require_variant

    name = require_variant(artifact, record)
    variant = artifact.manifest.variants[name]
    return OrtPredictor(**_session_of(artifact, record, name), threads=options.threads, spin=options.spin,
                        device=options.device, session_level=variant.options.get("session_level", "all"),
                        disabled_optimizers=tuple(variant.options.get("disabled_optimizers", ())))


def ort_cuda_predictor(artifact, record, options) -> "OrtCudaPredictor":
    from torchship.runtimes import require_variant

    name = require_variant(artifact, record)
    device = options.device if options.device.startswith("cuda") else "cuda"
    return OrtCudaPredictor(**_session_of(artifact, record, name), threads=options.threads, device=device)
