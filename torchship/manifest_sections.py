"""The typed sections of a variant in the manifest (``torchship.json``): how it was made (``BuildOptions``), how it
was validated (``Validation``, with an ``Accuracy`` judgement and a weight-only ``DecodeJudgement``), what fused
(``FusionRecord``), the graphs it holds (``Graph``), and int8's search (``QuantizationRecord``). The dispatch table
is in ``dispatch_table.py``.

Each section has one reader (``from_json``) and one writer (``to_json``); every other module reads attributes.
The JSON is the one earlier versions wrote: a key no field types is kept in ``extra`` as written, for people
and for the round trip, and read by no code (a key that code needs becomes a field here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torchship.tensors import TensorSpec


def _rest(data: dict, typed) -> dict:
    """The keys of ``data`` no field types, as written."""
    return {k: v for k, v in data.items() if k not in typed}


def _set(**items) -> dict:
    """Optional keys: written only when set, as the builders wrote them."""
    return {k: v for k, v in items.items() if v is not None}


_ACCURACY = ("metric", "mean", "min", "samples", "budget", "passed", "batch_cosine_min", "batch_floor",
             "batch_independent", "per_tensor")


@dataclass(frozen=True)
class Accuracy:
    """An accuracy judgement against the fp32 model on real text (optimizers/accuracy.py): int8, fp16, OpenVINO's
    fp16 and weight-only variants; int8's per-candidate rows too."""

    metric: str
    mean: float
    min: float | None = None
    samples: int | None = None
    budget: float | None = None
    passed: bool | None = None  # in a validation, the validation's own verdict stands for it
    batch_cosine_min: float | None = None
    batch_floor: float | None = None
    batch_independent: bool | None = None  # False: its answers move with the batch (per-tensor activation scales)
    per_tensor: bool | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.extra, "metric": self.metric, "mean": self.mean, "min": self.min, "samples": self.samples,
                "budget": self.budget, **_set(passed=self.passed, batch_cosine_min=self.batch_cosine_min,
                                              batch_floor=self.batch_floor, batch_independent=self.batch_independent,
                                              per_tensor=self.per_tensor)}

    @classmethod
    def from_json(cls, data: dict) -> "Accuracy":
        return cls(**{k: data[k] for k in _ACCURACY if k in data}, extra=_rest(data, _ACCURACY))

    def describe(self) -> str:
        return f"{self.metric} {self.mean:.4f}" + (f" >= budget {self.budget:g}" if self.budget is not None else "")


_DECODE = ("logit_cosine_mean", "logit_cosine_min", "top1_agreement", "greedy_same_prefix", "steps",
           "max_weight_error", "mean_weight_error", "weight_error_ceiling", "quantized_matmuls", "head", "matmuls",
           "fp32_weight_ops", "layout")


@dataclass(frozen=True)
class DecodeJudgement:
    """A weight-only variant's judgement: a fixed greedy decode against the fp32 export, and each quantized
    MatMul's weight error (optimizers/weight_only.py)."""

    logit_cosine_mean: float
    logit_cosine_min: float | None = None
    top1_agreement: float | None = None
    greedy_same_prefix: int | None = None
    steps: int | None = None
    max_weight_error: float | None = None
    mean_weight_error: float | None = None
    weight_error_ceiling: float | None = None
    quantized_matmuls: int | None = None
    head: tuple[str, ...] = ()  # the head MatMuls left in fp32
    matmuls: tuple[dict, ...] = ()  # per MatMul: its weight error (a report's rows)
    fp32_weight_ops: dict | None = None  # weight ops the quantizer left in fp32: {node: op type}
    layout: dict | None = None  # how the graph was prepared (merged siblings, a shared table)

    def to_json(self) -> dict:
        return {"logit_cosine_mean": self.logit_cosine_mean, "logit_cosine_min": self.logit_cosine_min,
                "top1_agreement": self.top1_agreement, "greedy_same_prefix": self.greedy_same_prefix,
                "steps": self.steps, "max_weight_error": self.max_weight_error,
                "mean_weight_error": self.mean_weight_error, "weight_error_ceiling": self.weight_error_ceiling,
                "quantized_matmuls": self.quantized_matmuls, "head": list(self.head), "matmuls": list(self.matmuls),
                **_set(fp32_weight_ops=self.fp32_weight_ops, layout=self.layout)}

    @classmethod
    def from_json(cls, data: dict) -> "DecodeJudgement":
        typed = {k: data[k] for k in _DECODE if k in data}
        return cls(**{**typed, "head": tuple(data.get("head", ())), "matmuls": tuple(data.get("matmuls", ()))})


_VALIDATION = ("passed", "max_abs", "min_cosine", "approximate", "judged_by", "finite", "against", "summary",
               "warning")


@dataclass(frozen=True)
class Validation:
    """How a variant (or one graph of it) was checked: against eager PyTorch at the tolerance (``max_abs``,
    ``min_cosine``), and for the lower-precision and approximate ones the judgement that decided ``passed``."""

    passed: bool
    max_abs: float | None = None  # against eager PyTorch
    min_cosine: float | None = None
    accuracy: Accuracy | None = None
    decode: DecodeJudgement | None = None
    approximate: str | None = None  # what an approximate variant changed ...
    judged_by: str | None = None  # ... and the rule it was judged by
    finite: bool | None = None
    against: str | None = None
    summary: str | None = None  # one line of the judgement (weight-only)
    warning: str | None = None  # a judgement within budget that still deserves a look (weight-only: far from fp32)
    extra: dict = field(default_factory=dict)  # per-output rows and the judges' other numbers, as written

    def to_json(self) -> dict:
        return {**self.extra, **(self.accuracy.to_json() if self.accuracy else {}),
                **(self.decode.to_json() if self.decode else {}), "passed": self.passed,
                **_set(max_abs=self.max_abs, min_cosine=self.min_cosine, approximate=self.approximate,
                       judged_by=self.judged_by, finite=self.finite, against=self.against, summary=self.summary),
                **({"warning": self.warning} if self.decode or self.warning else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Validation":
        accuracy = Accuracy.from_json({k: data[k] for k in _ACCURACY if k in data and k != "passed"}) \
            if "metric" in data else None
        decode = DecodeJudgement.from_json(data) if "logit_cosine_mean" in data else None
        return cls(**{k: data[k] for k in _VALIDATION if k in data}, accuracy=accuracy, decode=decode,
                   extra=_rest(data, (*_VALIDATION, *(_ACCURACY if accuracy else ()), *(_DECODE if decode else ()))))


_FUSION = ("counts", "attention", "expected_attention", "attention_fused", "warning", "rewrites", "rewritten")


@dataclass(frozen=True)
class FusionRecord:
    """What a variant's graph holds: every op type counted (``counts``), and for a transformer-fused one how many
    attention layers fused of how many expected (optimizers/fusion.py's ``FusionReport`` writes it)."""

    counts: dict[str, int] = field(default_factory=dict)  # op type -> nodes
    attention: int | None = None  # None: no fusion report, only the counts
    expected_attention: int | None = None
    attention_fused: bool | None = None
    warning: str | None = None
    rewrites: dict | None = None  # torchship's own decoder fusions (optimizers/decoder_fusion.py)
    rewritten: int | None = None  # layers an attention-kernel variant rewrote (optimizers/attention_kernels.py)

    @property
    def reported(self) -> bool:
        """Whether a fusion report stands behind the counts (a transformer-fused variant)."""
        return self.attention is not None

    def to_json(self) -> dict:
        if not self.reported:
            return {"counts": self.counts, **_set(rewritten=self.rewritten)}
        return {"counts": self.counts, "attention": self.attention, "expected_attention": self.expected_attention,
                "attention_fused": self.attention_fused, "warning": self.warning,
                **_set(rewrites=self.rewrites, rewritten=self.rewritten)}

    @classmethod
    def from_json(cls, data: dict) -> "FusionRecord":
        return cls(**{k: data[k] for k in _FUSION if k in data})


_OPTIONS = ("level", "session_level", "disabled_optimizers", "model_type", "num_heads", "hidden_size", "use_gpu",
            "precision", "source", "method", "name", "activations", "quant_format", "shape", "speedup_vs_fp32",
            "fp32_fallback", "search_s", "machine", "timing", "approximate", "attention", "block_size",
            "accuracy_level", "embedding", "head")


@dataclass(frozen=True)
class DecodeTiming:
    """A weight-only variant's decode step timed against the fastest fp32 decoder file (optimizers/decode_timing.py)."""

    shape: str
    fp32: str  # the fp32 file it was timed against
    speedup_vs_fp32: float
    cpu: str | None = None
    extra: dict = field(default_factory=dict)  # the medians and threads, as written

    def to_json(self) -> dict:
        machine = {**self.extra.get("machine", {}), **_set(cpu=self.cpu)}
        return {**self.extra, "shape": self.shape, "fp32": self.fp32, "speedup_vs_fp32": self.speedup_vs_fp32,
                **({"machine": machine} if machine else {})}

    @classmethod
    def from_json(cls, data: dict) -> "DecodeTiming":
        return cls(shape=data.get("shape", ""), fp32=data.get("fp32", ""), speedup_vs_fp32=data.get("speedup_vs_fp32"),
                   cpu=(data.get("machine") or {}).get("cpu"), extra=_rest(data, ("shape", "fp32", "speedup_vs_fp32")))


@dataclass(frozen=True)
class BuildOptions:
    """How a variant was made: the settings its builder used and the session settings it runs with. A field is
    None where the variant's builder has no such setting."""

    level: str | None = None  # ORT graph level the file was saved at
    session_level: str | None = None  # ... and the level its sessions run at (None: "all")
    disabled_optimizers: tuple[str, ...] = ()  # ORT optimizers its sessions leave out
    model_type: str | None = None  # transformer fusion: ORT's model type, heads and width, and where it ran
    num_heads: int | None = None
    hidden_size: int | None = None
    use_gpu: bool | None = None
    precision: str | None = None
    source: str | None = None  # the file or variant it was made from
    method: str | None = None  # int8: "dynamic" or "static"
    name: str | None = None  # int8: the candidate kept
    activations: str | None = None  # int8: how activations are scaled (absent: before per-row scales)
    quant_format: str | None = None
    shape: str | None = None  # int8: where it was timed, "batch B x seq S"
    speedup_vs_fp32: float | None = None
    fp32_fallback: tuple[str, ...] = ()  # int8: nodes left in fp32
    search_s: float | None = None
    cpu: str | None = None  # the CPU ``speedup_vs_fp32`` was timed on
    timing: DecodeTiming | None = None  # weight-only
    approximate: str | None = None
    attention: str | None = None  # the attention kernel an attention-kernel variant runs
    block_size: int | None = None  # weight-only
    accuracy_level: int | None = None
    embedding: bool | None = None
    head: bool | None = None
    extra: dict = field(default_factory=dict)  # the builder's other settings, as written

    def fusion_settings(self) -> dict:
        """The transformer optimizer's arguments this variant was fused with (optimizers/fusion.fuse)."""
        return _set(model_type=self.model_type, num_heads=self.num_heads, hidden_size=self.hidden_size,
                    use_gpu=self.use_gpu)

    def to_json(self) -> dict:
        return {**self.extra, **({"disabled_optimizers": list(self.disabled_optimizers)} if self.disabled_optimizers
                                 or self.method else {}),  # int8 lists its empty ones
                **({"fp32_fallback": list(self.fp32_fallback)} if self.fp32_fallback or self.method else {}),
                **_set(level=self.level, session_level=self.session_level, model_type=self.model_type,
                       num_heads=self.num_heads, hidden_size=self.hidden_size, use_gpu=self.use_gpu,
                       precision=self.precision, source=self.source, method=self.method, name=self.name,
                       activations=self.activations, quant_format=self.quant_format, shape=self.shape,
                       speedup_vs_fp32=self.speedup_vs_fp32, search_s=self.search_s,
                       timing=self.timing.to_json() if self.timing else None, approximate=self.approximate,
                       attention=self.attention, block_size=self.block_size, accuracy_level=self.accuracy_level,
                       embedding=self.embedding, head=self.head),
                **({"machine": {**self.extra.get("machine", {}), "cpu": self.cpu}} if self.cpu else {})}

    @classmethod
    def from_json(cls, data: dict) -> "BuildOptions":
        typed: dict[str, Any] = {k: data[k] for k in _OPTIONS if k in data and data[k] is not None}
        typed.pop("machine", None)
        if "timing" in typed:
            typed["timing"] = DecodeTiming.from_json(typed["timing"])
        return cls(**{**typed, "disabled_optimizers": tuple(data.get("disabled_optimizers") or ()),
                      "fp32_fallback": tuple(data.get("fp32_fallback") or ())},
                   cpu=(data.get("machine") or {}).get("cpu"),
                   extra=_rest(data, tuple(k for k in _OPTIONS if data.get(k) is not None or k == "machine")))


@dataclass(frozen=True)
class Graph:
    """One ONNX graph of a variant: its file, inputs, outputs and validation. A variant of one file has one, named
    ``ONE``, with the manifest's inputs and outputs; a variant of several (an image-text model's two towers, an
    encoder and a decoder) lists each."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    validation: Validation | None = None
    fusion: FusionRecord | None = None  # what the graph holds (optimize's variants), attention counted where fused

    def to_json(self) -> dict:
        return {"name": self.name, "file": self.file, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs],
                "validation": self.validation.to_json() if self.validation else None,
                **({"fusion": self.fusion.to_json()} if self.fusion else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Graph":
        return cls(name=data["name"], file=data["file"],
                   inputs=tuple(TensorSpec.from_json(t) for t in data.get("inputs", ())),
                   outputs=tuple(TensorSpec.from_json(t) for t in data.get("outputs", ())),
                   validation=Validation.from_json(data["validation"]) if data.get("validation") else None,
                   fusion=FusionRecord.from_json(data["fusion"]) if data.get("fusion") else None)


ONE = "model"  # the graph of a one-file variant


_TRIAL = ("name", "method", "source", "accuracy", "p50_ms", "speedup_vs_fp32", "passed", "error", "verdict",
          "fp32_fallback")


@dataclass(frozen=True)
class Int8Trial:
    """One int8 candidate as quantize's search built, judged and timed it."""

    name: str
    accuracy: Accuracy | None = None
    p50_ms: float | None = None
    speedup_vs_fp32: float | None = None
    passed: bool = False
    error: str | None = None  # why it could not be built or run
    verdict: str | None = None  # why it was or was not kept
    method: str | None = None
    source: str | None = None
    fp32_fallback: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)  # its other settings and numbers, as written

    def to_json(self) -> dict:
        return {**self.extra, "name": self.name, "method": self.method, "source": self.source,
                "fp32_fallback": list(self.fp32_fallback), "p50_ms": self.p50_ms,
                "accuracy": self.accuracy.to_json() if self.accuracy else None, "passed": self.passed,
                "error": self.error, **_set(speedup_vs_fp32=self.speedup_vs_fp32, verdict=self.verdict)}

    @classmethod
    def from_json(cls, data: dict) -> "Int8Trial":
        typed = {k: data[k] for k in _TRIAL if data.get(k) is not None}
        return cls(**{**typed, "accuracy": Accuracy.from_json(data["accuracy"]) if data.get("accuracy") else None,
                      "fp32_fallback": tuple(data.get("fp32_fallback") or ())},
                   extra=_rest(data, (*_TRIAL, *(k for k in ("verdict", "speedup_vs_fp32") if data.get(k) is None))))


@dataclass(frozen=True)
class RankedNode:
    """A weight node and its output error when it alone is quantized (the fp32 fallback's ranking)."""

    node: str
    error: float
    op_type: str | None = None

    def to_json(self) -> dict:
        return {"node": self.node, **_set(op_type=self.op_type), "error": self.error}

    @classmethod
    def from_json(cls, data: dict) -> "RankedNode":
        return cls(node=data["node"], error=data["error"], op_type=data.get("op_type"))


@dataclass(frozen=True)
class FallbackTarget:
    """A candidate the fp32 fallback tried to rescue: its weights ranked most sensitive first, what was tried."""

    candidate: str
    ranking: tuple[RankedNode, ...] = ()  # most sensitive first
    tried: tuple[str, ...] = ()
    rescued_by: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.extra, "candidate": self.candidate, "ranking": [r.to_json() for r in self.ranking],
                "tried": list(self.tried), "rescued_by": self.rescued_by}

    @classmethod
    def from_json(cls, data: dict) -> "FallbackTarget":
        return cls(candidate=data["candidate"], ranking=tuple(RankedNode.from_json(r) for r in data.get("ranking", ())),
                   tried=tuple(data.get("tried", ())), rescued_by=data.get("rescued_by"),
                   extra=_rest(data, ("candidate", "ranking", "tried", "rescued_by")))


@dataclass(frozen=True)
class QuantizationRecord:
    """int8's measured search (optimizers/quantize.py): every candidate tried, the one kept (None: none met the
    budget), and the fp32 fallback's attempts."""

    chosen: str | None
    candidates: tuple[Int8Trial, ...] = ()
    trigger: str | None = None  # why the fp32 fallback ran (None: it did not)
    targets: tuple[FallbackTarget, ...] = ()
    fallback_extra: dict = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        return self.trigger is not None or bool(self.targets)

    def to_json(self) -> dict:
        fallback = {**self.fallback_extra, "trigger": self.trigger, "targets": [t.to_json() for t in self.targets]}
        return {"chosen": self.chosen, "candidates": [c.to_json() for c in self.candidates],
                "fallback": fallback if self.fell_back or self.fallback_extra else None}

    @classmethod
    def from_json(cls, data: dict) -> "QuantizationRecord":
        fallback = data.get("fallback") or {}
        return cls(chosen=data.get("chosen"), candidates=tuple(Int8Trial.from_json(c) for c in data["candidates"]),
                   trigger=fallback.get("trigger"), targets=tuple(FallbackTarget.from_json(t)
                                                                  for t in fallback.get("targets", ())),
                   fallback_extra=_rest(fallback, ("trigger", "targets")))
