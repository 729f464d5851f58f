"""OpenVINO's predictor: OpenVINO IR (``model.xml`` + ``model.bin``) compiled for the CPU.

The IR is made by :mod:`torchship.optimizers.openvino` (``torchship optimize --openvino``).
``openvino`` is an optional extra (``pip install 'torchship[openvino]'``), imported only when used.
OpenVINO computes in fp32 on CPUs (bf16 where the CPU has it is turned off, so results stay
comparable), whatever precision the weights are stored in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship.errors import ArtifactError, BackendUnavailable, first_line
from torchship.runtimes.base import Predictor

EXTRA = "torchship[openvino]"


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"OpenVINO is not installed; pip install '{EXTRA}'") from None
    return openvino


def ir_bytes(xml: Path) -> int:
    xml = Path(xml)
    weights = xml.with_suffix(".bin")
    return xml.stat().st_size + (weights.stat().st_size if weights.is_file() else 0)


class OpenVINOPredictor(Predictor):
    backend = "openvino"

    def __init__(self, xml: Path, io, *, threads: int | None = None, device: str = "CPU"):
        super().__init__(io)
        self.xml = Path(xml)
        self.threads = threads
        self.device = device
        self._compiled = None
        self._request = None

    def _activate(self) -> None:
        ov = require_openvino()
        if not self.xml.is_file() or not self.xml.with_suffix(".bin").is_file():
            raise ArtifactError(f"OpenVINO IR {self.xml} (or its .bin) is missing; re-run torchship optimize --openvino")
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        core = ov.Core()
        try:
            self._compiled = core.compile_model(core.read_model(str(self.xml)), self.device, config)
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot load {self.xml}: {first_line(exc)}") from None
        self._request = self._compiled.create_infer_request()

    def _infer(self, feeds):
        results = self._request.infer(feeds)
        return {name: np.array(results[self._compiled.output(name)]) for name in self.output_names}

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None




def openvino_predictor(artifact, record, options) -> OpenVINOPredictor:
    """The table's factory for the OpenVINO backends."""
    from torchship.runtimes import require_variant

    return OpenVINOPredictor(artifact.path_of(require_variant(artifact, record)), artifact.manifest.io(),
                             threads=options.threads)
