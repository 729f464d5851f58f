"""OpenVINO IR made from the export: fp32, and fp16-compressed weights, each validated.

The IR is made from the plain export (``model.onnx``), not ORT's fused graph: OpenVINO cannot read
ONNX Runtime's contrib ops, and does its own fusions when it compiles. fp16-compressed IR stores
weights in fp16 (half the file); on CPUs OpenVINO computes in fp32, so its speed is the fp32 IR's
and its accuracy is measured against the fp32 model like every lower-precision variant.
"""

from __future__ import annotations

import time
from pathlib import Path

from torchship import _progress
from torchship._fs import staged_file
from torchship.errors import BudgetError
from torchship.runtimes.openvino import OpenVINOPredictor, ir_bytes, require_openvino

VARIANTS = {"openvino": ("openvino", False), "openvino-fp16": ("openvino_fp16", True)}  # name -> (folder, fp16)
IR_NAME = "model.xml"
FP16_BUDGET = 0.999


def _convert(ov, src: Path, folder: Path, compress_to_fp16: bool) -> None:
    model = ov.convert_model(str(src))
    ov.save_model(model, str(folder / IR_NAME), compress_to_fp16=compress_to_fp16)


def openvino_step(build, record) -> list:
    """The OpenVINO backends' builder (optimize --openvino): the IR of the record's variant."""
    return openvino_variants(build.artifact, progress=build.progress, names=record.variants[:1])


def openvino_variants(artifact, *, progress: _progress.Progress = _progress.SILENT,
                      names: tuple[str, ...] = tuple(VARIANTS)) -> list:
    """Write ``openvino/model.xml`` (fp32) and ``openvino_fp16/model.xml`` (fp16 weights), or those of
    ``names``, each validated: fp32 against eager PyTorch at the export's tolerance, fp16 on the accuracy probe."""
    from torchship._ort import ort_runner
    from torchship.artifact import Variant, load_reference
    from torchship.manifest_sections import BuildOptions, Validation
    from torchship.exporters.spec import family_of
    from torchship.optimizers.accuracy import AccuracyProbe
    from torchship.validation import check, compare_cases

    ov = require_openvino()
    m = artifact.manifest
    src = artifact.path_of("model")
    cases = load_reference(artifact.folder)
    spec = family_of(m)
    made = []
    for name, (sub, fp16) in ((n, VARIANTS[n]) for n in names):
        start = time.perf_counter()
        final = artifact.folder / sub
        with staged_file(final) as staging:
            staging.mkdir()
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
                        raise BudgetError(f"the {name} variant misses the accuracy budget: {accuracy.describe()}")
                    validation = {**validation, **accuracy.to_json(), "passed": True}
                else:
                    check(report, what=f"the {name} variant")
        made.append(Variant(name=name, file=f"{sub}/{IR_NAME}", stage="openvino",
                            options=BuildOptions.from_json(
                                {"precision": "fp16-weights" if fp16 else "fp32", "source": src.name,
                                 "openvino": ov.__version__ if hasattr(ov, "__version__") else None}),
                            size_bytes=ir_bytes(final / IR_NAME), seconds=round(time.perf_counter() - start, 3),
                            validation=Validation.from_json(validation)))
    return made
