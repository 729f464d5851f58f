"""ONNX Runtime predictor (CPU, or the CUDA provider when asked for and present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship._ort import make_session
from torchship.runtimes.base import Predictor


class OrtPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, io, *, threads: int | None = None,
                 spin: bool = False, session_level: str = "all", device: str = "cpu"):
        super().__init__(io)
        self.path = Path(path)
        self.threads = threads
        self.spin = spin
        self.session_level = session_level
        self.device = device
        self._session = None

    def _activate(self) -> None:
        self._session = make_session(self.path, threads=self.threads, spin=self.spin,
                                     level=self.session_level, device=self.device)

    def _infer(self, feeds):
        values = self._session.run(list(self.output_names), feeds)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values)}

    def _deactivate(self) -> None:
        self._session = None
