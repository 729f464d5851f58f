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
                 disabled_optimizers: tuple[str, ...] = ()):
        super().__init__(io)
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
                                     disabled_optimizers=self.disabled_optimizers)

    def _infer(self, feeds):
        values = self._session.run(list(self.output_names), feeds)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values)}

    def _deactivate(self) -> None:
        self._session = None


class OrtCudaPredictor(OrtPredictor):
    """ONNX Runtime on the CUDA provider with IO binding: inputs copied to the GPU once per run, outputs
    left on the GPU until the run ends, then copied back (what a GPU server does per request)."""

    backend = "onnxruntime-cuda"

    def __init__(self, path: Path, io, *, threads: int | None = None, device: str = "cuda"):
        super().__init__(path, io, threads=threads, device=device)
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
