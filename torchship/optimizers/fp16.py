"""fp16 for GPU targets: half-precision weights and compute, fp32 inputs and outputs, overflow guarded.

fp16 holds values up to 65504. Transformers overflow it in a few places (LayerNorm sums, large
pre-activation outputs, attention scores of long sequences), which turns outputs into inf or NaN.
So before converting, torchship runs the fp32 model on the stored validation inputs with every
intermediate tensor exposed and leaves in fp32 every node whose output comes within half of the
fp16 range (and every node of an op type on the block list: ORT's default list, plus the user's).
After converting it checks the outputs for NaN and inf and measures accuracy against the fp32
model with the same probe as int8 (sentence cosine for embedding models).

The fp16 model is for GPUs (ONNX Runtime's CUDA provider, TensorRT). ONNX Runtime's CPU provider
runs it by casting to fp32 around ops without fp16 kernels: correct, used for validation, slow.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.manifest_sections import BuildOptions, FusionRecord, Validation
from torchship._fs import scratch_dir
from torchship._ort import ort_runner
from torchship.errors import BudgetError
from torchship.external_data import save_model, staged_model, uses_external_data
from torchship.optimizers.accuracy import AccuracyProbe
from torchship.optimizers.fusion import op_histogram
from torchship.validation import run_reference_cases
from torchship.exporters.spec import family_of

VARIANT = "fp16"
FILE = "model_fp16.onnx"
FP16_MAX = 65504.0
HEADROOM = 0.5  # a node whose fp32 output reaches half the fp16 range stays in fp32
DEFAULT_BUDGET = 0.999
# Ops of the fused graphs whose outputs are not all float (EmbedLayerNormalization's mask index).
_INT_OUTPUTS = {("EmbedLayerNormalization", 1)}


def _float_outputs(model) -> list[str]:
    """Names of every float intermediate tensor; contrib ops that onnx cannot type are taken as float."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    graph_outputs = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        for i, out in enumerate(node.output):
            if not out or out in graph_outputs:
                continue
            dtype = known.get(out)
            if dtype == onnx.TensorProto.FLOAT or (dtype is None and (node.op_type, i) not in _INT_OUTPUTS
                                                   and node.domain == "com.microsoft"):
                names.append(out)
    return names


def activation_peaks(src: Path, feeds: list[dict], scratch: Path) -> dict[str, float]:
    """Largest absolute fp32 value each node produces on ``feeds`` (node name -> peak)."""
    import onnx

    from torchship._ort import make_session
    from torchship.onnx_io import load_onnx

    model = load_onnx(src, load_external_data=True)
    exposed = _float_outputs(model)
    producer = {o: n.name or f"{n.op_type}_{k}" for k, n in enumerate(model.graph.node) for o in n.output}
    for out in exposed:
        model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    path = scratch / "peaks.onnx"
    save_model(model, path, external=uses_external_data(src))
    del model
    session = make_session(path, level="disabled")  # unoptimized, so every exposed tensor still exists
    inputs = [i.name for i in session.get_inputs()]
    peaks: dict[str, float] = {}
    for f in feeds:
        values = session.run(exposed, {n: f[n] for n in inputs})
        for name, v in zip(exposed, values):
            v = np.asarray(v)
            if v.size and np.issubdtype(v.dtype, np.floating):
                node = producer[name]
                peaks[node] = max(peaks.get(node, 0.0), float(np.nanmax(np.abs(v))))
    return peaks


def fp16_variant(artifact: Artifact, *, source: str | None = None, op_block_list: tuple[str, ...] = (),
                 budget: float = DEFAULT_BUDGET, progress: _progress.Progress = _progress.SILENT) -> Variant:
    """Convert ``source`` (default: the fused model if there is one, else the export) to fp16 and validate."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    from torchship.onnx_io import load_onnx

    m = artifact.manifest
    source = source or ("optimized" if "optimized" in m.variants else "model")
    src = artifact.path_of(source)
    cases = load_reference(artifact.folder)
    start = time.perf_counter()
    with scratch_dir(artifact.folder, "fp16") as scratch:
        progress.step("fp16: scanning fp32 activations for values fp16 cannot hold")
        peaks = activation_peaks(src, [c.inputs for c in cases], scratch)
        risky = {n: p for n, p in peaks.items() if not np.isfinite(p) or p >= HEADROOM * FP16_MAX}
        blocked_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
        model = OnnxModel(load_onnx(src, load_external_data=True))
        # onnx's own shape inference: ORT's symbolic one gives up on some exports (and then writes
        # a scratch file into the working directory).
        model.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True,
                                       op_block_list=blocked_ops, node_block_list=sorted(risky))
        final = artifact.folder / FILE
        with staged_model(final) as tmp:
            save_model(model.model, tmp, external=uses_external_data(src))
            del model
            progress.step("fp16: validating (NaN/inf, accuracy against the fp32 model)")
            against_torch = run_reference_cases(tmp, cases, atol=float("inf"), spec=family_of(m))
            probe = AccuracyProbe.for_artifact(artifact)
            probe.set_reference(ort_runner(artifact.path_of("model")))
            accuracy = probe.measure(ort_runner(tmp), budget)
            if not accuracy.passed:
                raise BudgetError(f"the fp16 variant misses the accuracy budget: {accuracy.describe()}"
                                  + (f" ({accuracy.extra['problem']})" if "problem" in accuracy.extra else "")
                                  + "; leave more op types in fp32 with --fp16-block, or lower --fp16-budget")
    counts = op_histogram(final)
    validation = {**accuracy.to_json(), "max_abs": against_torch.max_abs, "min_cosine": against_torch.min_cosine,
                  "finite": True, "against": "fp32 export (accuracy); eager PyTorch (max_abs)"}
    options = {"precision": "fp16", "source": source, "keep_io_types": True, "target": "gpu",
               "op_block_list": blocked_ops, "kept_fp32_nodes": {n: round(p, 1) for n, p in sorted(risky.items())},
               "largest_activation": round(max(peaks.values()), 3) if peaks else None,
               "scanned_nodes": len(peaks), "headroom": HEADROOM}
    notes = ("for GPUs (ORT CUDA, TensorRT); ONNX Runtime's CPU provider runs it through casts, slowly",)
    return Variant(name=VARIANT, file=FILE, stage="fp16", options=BuildOptions.from_json(options),
                   size_bytes=model_bytes(final), seconds=round(time.perf_counter() - start, 3),
                   validation=Validation.from_json(validation), fusion=FusionRecord(counts), notes=notes)


def fp16_step(build, record) -> Variant:
    """The fp16 backends' builder (optimize --fp16): ``fp16_variant`` with the run's block list and budget."""
    opts = build.options
    return fp16_variant(build.artifact, op_block_list=opts.fp16_block, budget=opts.fp16_budget,
                        progress=build.progress)
