"""OpenVINO: the export converted to OpenVINO IR (fp32, and fp16-compressed weights) and a predictor.

The IR is made from the plain export (``model.onnx``), not ORT's fused graph: OpenVINO cannot read
ONNX Runtime's contrib ops, and does its own fusions when it compiles. ``openvino`` is an optional
extra (``pip install 'torchship[openvino]'``), imported only here.

fp16-compressed IR stores weights in fp16 (half the file); on CPUs OpenVINO computes in fp32 (or
bf16 where the CPU has it, which torchship turns off so results stay comparable), so its speed is
the fp32 IR's and its accuracy is measured against the fp32 model like every lower-precision variant.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.errors import ArtifactError, BackendUnavailable, ValidationError, first_line
from torchship.runtimes.base import Predictor

EXTRA = "torchship[openvino]"
VARIANTS = {"openvino": ("openvino", False), "openvino-fp16": ("openvino_fp16", True)}  # name -> (folder, fp16)
IR_NAME = "model.xml"
FP16_BUDGET = 0.999


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


def _convert(ov, src: Path, folder: Path, compress_to_fp16: bool) -> None:
    model = ov.convert_model(str(src))
    ov.save_model(model, str(folder / IR_NAME), compress_to_fp16=compress_to_fp16)


def openvino_variants(artifact, *, progress: _progress.Progress = _progress.SILENT) -> list:
    """Write ``openvino/model.xml`` (fp32) and ``openvino_fp16/model.xml`` (fp16 weights), each validated:
    fp32 against eager PyTorch at the export's tolerance, fp16 on the accuracy probe."""
    from torchship.artifact import Variant, load_reference
    from torchship._ort import ort_runner
    from torchship.optimizers.accuracy import AccuracyProbe
    from torchship.validation import check, compare_cases

    ov = require_openvino()
    m = artifact.manifest
    src = artifact.path_of("model")
    cases = load_reference(artifact.folder)
    spec = m.spec()
    made = []
    for name, (sub, fp16) in VARIANTS.items():
        start = time.perf_counter()
        final = artifact.folder / sub
        staging = Path(tempfile.mkdtemp(prefix=f".{sub}.", suffix=".partial", dir=artifact.folder))
        try:
            progress.step(f"{name}: converting {src.name} to OpenVINO IR")
            _convert(ov, src, staging, fp16)
            predictor = OpenVINOPredictor(staging / IR_NAME, m.io())
            with predictor:
                run = predictor.infer
                report = compare_cases(run, cases, atol=float("inf") if fp16 else m.atol, spec=spec)
                validation = report.to_json()
                if fp16:
                    probe = AccuracyProbe.for_artifact(artifact)
                    probe.set_reference(ort_runner(src))
                    accuracy = probe.measure(run, FP16_BUDGET)
                    if not accuracy.passed:
                        raise ValidationError(f"the {name} variant misses the accuracy budget: {accuracy.describe()}")
                    validation = {**validation, **accuracy.to_json(), "passed": True}
                else:
                    check(report, what=f"the {name} variant")
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        made.append(Variant(name=name, file=f"{sub}/{IR_NAME}", stage="openvino",
                            options={"precision": "fp16-weights" if fp16 else "fp32", "source": src.name,
                                     "openvino": ov.__version__ if hasattr(ov, "__version__") else None},
                            size_bytes=ir_bytes(final / IR_NAME), seconds=round(time.perf_counter() - start, 3),
                            validation=validation))
    return made
