"""ONNX Runtime's transformer optimizer, with fusion measured from the written graph.

Fusion depends on the export path (TorchScript from eager attention fuses fully; SDPA exports do
not), so torchship never assumes it: it counts the fused operators in the saved model and warns
loudly when attention did not fuse in every layer.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torchship.onnx_io import load_onnx
from torchship.optimizers.decoder_fusion import decoder_fusions, graph_kv_heads
from torchship.optimizers.tied_weights import retie_file
from torchship.errors import ArtifactError

# Operators the fusion report counts, grouped as the report shows them.
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention")
REPORTED_OPS = (
    "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
    "LayerNormalization", "Gelu", "FastGelu", "BiasGelu", "BiasFastGelu", "Softmax", "MatMul", "RotaryEmbedding",
    "RMSNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MatMulNBits",
)


@dataclass(frozen=True)
class FusionReport:
    counts: dict[str, int]
    expected_attention: int  # one per transformer layer
    hint: str = ""  # how to get full fusion for this family
    rewrites: dict | None = None  # torchship's own decoder fusions (optimizers/decoder_fusion.py), when any

    @property
    def attention(self) -> int:
        return sum(self.counts.get(op, 0) for op in ATTENTION_OPS)

    @property
    def attention_fused(self) -> bool:
        return self.attention >= self.expected_attention

    @property
    def warning(self) -> str | None:
        if self.attention_fused:
            return None
        return (f"WARNING: attention fused in {self.attention} of {self.expected_attention} layers; "
                f"the unfused layers run as plain MatMul/Softmax{'. ' + self.hint if self.hint else ''}")

    def to_json(self) -> dict:
        return {"counts": self.counts, "attention": self.attention,
                "expected_attention": self.expected_attention,
                "attention_fused": self.attention_fused, "warning": self.warning,
                **({"rewrites": self.rewrites} if self.rewrites else {})}


def op_histogram(path: Path) -> dict[str, int]:
    """Every op type in the graph with its count, most frequent first."""
    return dict(Counter(node.op_type for node in load_onnx(path).graph.node).most_common())


def count_ops(path: Path) -> dict[str, int]:
    return reported(op_histogram(path))


def reported(counts: dict[str, int]) -> dict[str, int]:
    """The fusion report's operators out of a histogram of op types."""
    return {op: counts.get(op, 0) for op in REPORTED_OPS}


# Fusions whose operators ONNX Runtime implements only for CUDA (NhwcConv, GroupNorm, SkipGroupNorm,
# BiasSplitGelu, BiasAdd); a CPU session cannot load a model that has them. ORT enables them for "unet".
_CUDA_ONLY_FUSIONS = ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                      "enable_bias_add")


# ORT's graph transformer that fuses residual Add + LayerNormalization back into SkipLayerNormalization when a
# session loads the model; a variant left unfused records it in ``disabled_optimizers`` (every predictor honours it)
NO_SKIP_LN = ("SkipLayerNormFusion",)


def transformer_optimizer(src: Path, *, model_type: str, num_heads: int, hidden_size: int, use_gpu: bool = False,
                          skip_layer_norm: bool = True, multi_head_attention: bool = False):
    """``onnxruntime.transformers.optimizer`` on ``src``, quietly: its OnnxModel, or ArtifactError naming the
    failure. ``skip_layer_norm=False`` leaves residual Add + LayerNormalization unfused (ORT's CPU
    SkipLayerNormalization is slower than the pair: docs/measurements.md#skip-layer-norm);
    ``multi_head_attention`` fuses attention into MultiHeadAttention on separate Q, K and V projections instead
    of the packed Attention."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    if not skip_layer_norm:
        options.enable_skip_layer_norm = False
        options.enable_bias_skip_layer_norm = False
    options.use_multi_head_attention = multi_head_attention
    if not use_gpu:
        for flag in _CUDA_ONLY_FUSIONS:
            if hasattr(options, flag):
                setattr(options, flag, False)
    quiet = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base", "onnx_model")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            return optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                  opt_level=0, optimization_options=options, use_gpu=use_gpu)
    except OSError:  # a full disk or an unwritable folder is the machine's problem, said as such
        raise
    except Exception as exc:  # the optimizer raises assorted errors on graphs it does not expect
        raise ArtifactError(f"the transformer optimizer failed on {src.name}: {exc}") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fuse(src: Path, dst: Path, *, model_type: str, num_heads: int, hidden_size: int,
         num_layers: int, use_gpu: bool = False, hint: str = "", external_data: bool = False,
         skip_layer_norm: bool = True) -> FusionReport:
    """Run ``onnxruntime.transformers.optimizer`` on ``src`` (:func:`transformer_optimizer`) and save the
    result to ``dst`` (with its weights in ``dst.data`` when ``external_data``)."""
    optimized = transformer_optimizer(src, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                      use_gpu=use_gpu, skip_layer_norm=skip_layer_norm)
    # torchship's own decoder pass (it finds nothing to do in an encoder), outside the optimizer's handler: a failure
    # there is torchship's, not the optimizer's
    kv = graph_kv_heads(optimized.model)
    rewrites = decoder_fusions(optimized.model, heads=(num_heads, kv) if kv else None)
    optimized.save_model_to_file(str(dst), use_external_data_format=external_data, all_tensors_to_one_file=True)
    if not rewrites["attention_layers"] and not rewrites["skip_rms_norm"]:
        rewrites = {}
    return FusionReport(count_ops(dst), expected_attention=num_layers, hint=hint, rewrites=rewrites)


def save_graph_level(src: Path, dst: Path, level: str) -> list[str]:
    """ONNX Runtime's own graph optimizations at ``level`` on ``src``, saved to ``dst`` (with its weights in
    ``dst.data`` when ``src`` has external data); a head tied to the token embedding then reads the table again
    instead of the transposed copy constant folding made (:func:`tied_weights.retie_file`). Returns the tables
    re-tied."""
    from torchship._ort import make_session

    make_session(src, level=level, optimized_model_path=dst)
    return retie_file(dst)
