"""The fp32 fallback of int8: leave the MatMuls that quantization hurts most in fp32, judged by the task.

Which MatMuls matter is measured, not guessed, but rebuilding and probing the model once per MatMul would cost
one quantization per node (MiniLM: 24 to 37 builds of about 1.5 s). So sensitivity is estimated from one fp32
run instead: the activation input of every node the candidate quantizes is captured on the first probe texts,
and each node's own output error under the candidate's scheme is computed in numpy, per token (row), then
averaged over the tokens:

    mean over rows r of ||Q(x_r) Q(W) - x_r W|| / ||x_r W||

with activations 8-bit (dynamic int8: per row, symmetric over the row's own peak, as ``int8_rows`` writes it;
static: per tensor over the calibrated range, so values outside it clip as they will at run time) and weights
int8 symmetric, per channel or per tensor, 7-bit with reduce-range. Per token, not over the whole tensor: one scale per tensor is
set by a few outlier tokens, which then quantize well while every other token loses its resolution; a
tensor-wide norm is dominated by the outliers and hides that (on MiniLM it ranked the FFN output MatMuls, whose
fp32 fallback moves static int8 from 0.943 to 0.991 sentence cosine, below the FFN inputs; the per-token mean
ranks them first).

The candidate is then rebuilt with the k most sensitive nodes left in fp32, k = 1, 2, 4, ... up to
``max_fp32``, each try judged by the task's own accuracy probe against the budget; the first that meets it ends
the ladder. Every try, and the ranking it came from, is recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from torchship.external_data import save_model, uses_external_data
from torchship.onnx_io import load_onnx
from torchship.optimizers.int8_candidates import STATIC_OPS, Candidate

# Nodes with a weight: op type -> (index of the activation input, index of the weight input).
WEIGHT_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "Attention": (0, 1)}
DYNAMIC_OPS = ("MatMul", "Attention")  # of ORT's dynamic defaults, the ones with a weight matrix
SAMPLES = 16  # probe samples the activations are captured on
ROWS = 4096  # at most this many activation rows per node enter the error (evenly spaced)
RANKED = 16  # nodes kept in the manifest's record of a ranking


@dataclass(frozen=True)
class WeightNode:
    name: str
    op_type: str
    activation: str  # the input tensor's name
    weight: str  # the initializer's name
    transposed: bool  # Gemm with transB: the weight is stored (N, K)


def quantized_ops(c: Candidate) -> tuple[str, ...]:
    """Op types with a weight that candidate ``c`` quantizes."""
    ops = c.op_types or (DYNAMIC_OPS if c.method == "dynamic" else STATIC_OPS)
    return tuple(op for op in ops if op in WEIGHT_OPS)


class Sensitivity:
    """The activations of one source graph on probe inputs, and per-candidate rankings of its weight nodes."""

    def __init__(self, src: Path, feeds: dict, scratch: Path, *, threads: int | None = None):
        from onnx import TensorProto, helper, numpy_helper

        from torchship._ort import ort_runner

        model = load_onnx(src, load_external_data=True)
        graph = model.graph
        inits = {i.name: i for i in graph.initializer}
        self.nodes: list[WeightNode] = []
        for n in graph.node:
            if n.op_type not in WEIGHT_OPS or not n.name:
                continue
            a, w = WEIGHT_OPS[n.op_type]
            if len(n.input) <= w or n.input[w] not in inits or len(inits[n.input[w]].dims) != 2:
                continue
            trans = n.op_type == "Gemm" and any(at.name == "transB" and at.i for at in n.attribute)
            self.nodes.append(WeightNode(n.name, n.op_type, n.input[a], n.input[w], trans))
        self.weights = {}
        for node in self.nodes:
            w = numpy_helper.to_array(inits[node.weight]).astype(np.float32)
            self.weights[node.name] = w.T if node.transposed else w
        wanted = list(dict.fromkeys(n.activation for n in self.nodes))
        present = {o.name for o in graph.output}
        graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                            for t in wanted if t not in present)
        path = scratch / f"sensitivity_{src.stem}.onnx"
        save_model(model, path, external=uses_external_data(src))
        del model
        outputs = ort_runner(path, threads=threads)(_first_samples(feeds))
        self.activations = {t: _rows(np.asarray(outputs[t], dtype=np.float32)) for t in wanted}
        self.ranges = {t: (float(min(0.0, a.min())), float(max(0.0, a.max()))) for t, a in self.activations.items()}

    def rank(self, c: Candidate, calibrated: dict[str, tuple[float, float]] | None = None) -> list[dict]:
        """The weight nodes ``c`` quantizes, most sensitive first: {"node", "op_type", "error"}. ``calibrated``:
        static int8's activation ranges by tensor name (else the ranges seen on the probe)."""
        ops, skip = quantized_ops(c), set(c.exclude) | set(c.fp32_nodes)
        out = []
        for node in self.nodes:
            if node.op_type not in ops or node.name in skip:
                continue
            x, w = self.activations[node.activation], self.weights[node.name]
            exact = x @ w
            if c.method == "dynamic":  # int8_rows: one symmetric scale per row
                xq = _fake_quant_rows(x)
            else:
                xq = _fake_quant_activation(x, (calibrated or {}).get(node.activation, self.ranges[node.activation]))
            got = xq @ _fake_quant_weight(
                w, per_channel=c.per_channel, reduce_range=c.reduce_range)
            norms = np.linalg.norm(exact, axis=1)
            rows = norms > 0
            error = float(np.mean(np.linalg.norm((got - exact)[rows], axis=1) / norms[rows])) if rows.any() else 0.0
            out.append({"node": node.name, "op_type": node.op_type, "error": round(error, 6)})
        return sorted(out, key=lambda r: -r["error"])


def calibrated_ranges(cache: Path) -> dict[str, tuple[float, float]]:
    """Activation ranges from ORT's calibration cache (``quantize_static(calibration_cache_path=...)``), each
    widened to hold 0 as ORT does; {} when there is no cache."""
    if not cache.is_file():
        return {}
    from onnxruntime.quantization.calibrate import load_tensors_data

    out = {}
    for name, data in load_tensors_data(cache).data.items():
        try:
            lo, hi = data.range_value
        except AttributeError:
            continue
        out[name] = (min(0.0, float(np.min(lo))), max(0.0, float(np.max(hi))))
    return out


def ladder(max_fp32: int, available: int) -> list[int]:
    """How many nodes each try leaves in fp32: 1, 2, 4, ... and the cap itself."""
    cap = min(max_fp32, available)
    ks, k = [], 1
    while k < cap:
        ks.append(k)
        k *= 2
    return ks + [cap] if cap > 0 else []


def fall_back(base: Candidate, ranking: list[dict], max_fp32: int, judge: Callable) -> list:
    """Rebuild ``base`` with the k most sensitive nodes in fp32 for each k of the ladder, judging each with
    ``judge(candidate) -> Outcome``; stops at the first that passes. The outcomes, in order."""
    tried = []
    for k in ladder(max_fp32, len(ranking)):
        outcome = judge(replace(base, fp32_nodes=tuple(r["node"] for r in ranking[:k])))
        outcome.extra["fallback_of"] = base.name
        tried.append(outcome)
        if outcome.passed:
            break
    return tried


def _first_samples(feeds: dict) -> dict:
    """The first ``SAMPLES`` samples of a batch (all of it when an input has no sample axis)."""
    if any(np.ndim(v) == 0 for v in feeds.values()):
        return feeds
    return {k: v[:SAMPLES] for k, v in feeds.items()}


def _rows(a: np.ndarray) -> np.ndarray:
    """An activation as (rows, features), at most ``ROWS`` rows, evenly spaced."""
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
    if len(a) > ROWS:
        a = a[np.linspace(0, len(a) - 1, ROWS).astype(np.int64)]
    return a


def _fake_quant_activation(x: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """8-bit, asymmetric, one scale for the tensor over ``span`` (which holds 0, as ORT's ranges do)."""
    lo, hi = span
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_rows(x: np.ndarray) -> np.ndarray:
    """8-bit, symmetric, one scale per row (dynamic int8 as int8_rows writes it)."""
    peak = np.abs(x).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return np.round(x / scale) * scale


def _fake_quant_weight(w: np.ndarray, *, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """int8 symmetric (ORT's -127..127, or -64..64 with reduce-range), one scale per output column or one in all."""
    top = 64.0 if reduce_range else 127.0
    peak = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(peak > 0, peak / top, 1.0)
    return np.clip(np.round(w / scale), -top, top) * scale
