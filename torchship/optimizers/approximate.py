"""An approximate fp32 candidate for the measured dispatch: the fused model with GELU as its tanh form.

Optimum's O3 is the transformer-fused model with ``FusionOptions.enable_gelu_approximation``: ONNX Runtime's
Gelu and BiasGelu (erf) become FastGelu (tanh approximation, bias folded in). That changes the outputs by more
than the 1e-4 every exact variant is held to against eager PyTorch (MiniLM: max abs ~5e-3), so this variant is
judged differently, and says so wherever it appears: the cosine of every output vector (per token for hidden
states) against the fp32 export on the stored validation inputs must be at least ``MIN_COSINE``; the largest
absolute difference, against the export and against eager PyTorch, is recorded beside it. The dispatch may
choose it only where it is clearly faster than every exact variant (it comes last in the preference order),
and ``optimize --exact`` leaves it out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship.compare import rowwise_cosine
from torchship.errors import ArtifactError
from torchship.external_data import save_model
from torchship.onnx_io import load_onnx
from torchship.backends import backend

_RECORD = backend("ort-optimized-approx")  # the backend table says what the variant is called and holds
VARIANT = _RECORD.variants[0]
FILE = _RECORD.files[0]
WHAT = _RECORD.approximate_gelu
MIN_COSINE = 0.9999
GELU_OPS = ("Gelu", "BiasGelu")  # ONNX Runtime's contrib ops (com.microsoft), as the fusion writes them


def approximate_gelu(src: Path, dst: Path, *, external: bool) -> int:
    """Write ``src`` with every contrib Gelu and BiasGelu as FastGelu (same inputs: x, and the bias if any) to
    ``dst``; the number of nodes changed. Raises ArtifactError when there is none."""
    model = load_onnx(src, load_external_data=True)
    changed = 0
    for node in model.graph.node:
        if node.op_type in GELU_OPS and node.domain == "com.microsoft":
            node.op_type = "FastGelu"
            changed += 1
    if not changed:
        raise ArtifactError(f"nothing to approximate: {src.name} has no fused GELU")
    save_model(model, dst, external=external)
    return changed


def judge(path: Path, export: Path, cases, *, threads: int | None = None) -> dict:
    """The approximate variant's validation: every output vector's cosine against the fp32 export on the
    validation cases, and the largest absolute differences; ``passed`` when the smallest cosine is at least
    ``MIN_COSINE`` and every value is finite."""
    from torchship._ort import ort_runner

    exact, approx = ort_runner(export, threads=threads), ort_runner(path, threads=threads)
    low, max_abs, max_abs_eager, finite = 1.0, 0.0, 0.0, True
    for case in cases:
        want, got = exact(case.inputs), approx(case.inputs)
        for name, ref in want.items():
            ref, out = np.asarray(ref, dtype=np.float64), np.asarray(got[name], dtype=np.float64)
            finite = finite and bool(np.isfinite(out).all())
            if ref.ndim:
                low = min(low, float(rowwise_cosine(ref.reshape(-1, ref.shape[-1]),
                                                    out.reshape(-1, out.shape[-1])).min()))
            max_abs = max(max_abs, float(np.abs(out - ref).max(initial=0.0)))
            if name in case.outputs:
                eager = np.asarray(case.outputs[name], dtype=np.float64)
                if eager.shape == out.shape:
                    max_abs_eager = max(max_abs_eager, float(np.abs(out - eager).max(initial=0.0)))
    return {"passed": finite and low >= MIN_COSINE, "approximate": WHAT, "min_cosine": round(low, 8),
            "max_abs": max_abs, "max_abs_vs_eager": max_abs_eager, "cases": len(cases),
            "judged_by": f"smallest per-vector output cosine >= {MIN_COSINE} against the fp32 export "
                         "(not eager PyTorch at atol: the approximation moves values by more)"}
