"""The int8 candidates ``quantize`` chooses from: what each one is, and how it is built.

A candidate is one setting of ONNX Runtime's quantizer: the method (dynamic, its activations scaled per row by
``int8_rows``, or static with calibrated activations), the graph it starts from (the export, the transformer-fused model, or the fused model with
residual Add + LayerNorm left unfused), the op types quantized, per-channel or per-tensor weights, 7-bit
(reduced) weight range, and the nodes left in fp32; static ones also choose signed or unsigned activations
and the format (QuantizeLinear/DequantizeLinear pairs that ORT fuses at load, or QLinear* operators written
out). ``quantize`` builds each, judges it, times it; ``int8_fallback`` derives candidates that leave the most
sensitive MatMuls of one in fp32.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from torchship.loading import has_tokenizer_files
from torchship.artifact import Artifact
from torchship.errors import InputError
from torchship.onnx_io import load_onnx
from torchship.external_data import data_file_name, uses_external_data
from torchship.optimizers.accuracy import read_texts
from torchship.optimizers import approximate
from torchship.optimizers.fusion import NO_SKIP_LN
from torchship.benchmarks.timing import TimingPlan

METHODS = ("dynamic", "static")
# "optimized-unfused-ln" ("optimized-unfused-ln" before): the transformer-fused graph with residual Add + LayerNormalization left unfused and ORT's
# SkipLayerNormFusion off in the session (ORT's CPU SkipLayerNormalization is slower than the pair:
# docs/measurements.md#skip-layer-norm); built by quantize itself from the export.
# "optimized-unfused-ln-approx": that graph with GELU as its tanh approximation (FastGelu; optimizers/approximate.py),
# a little faster (docs/measurements.md#int8-approx); asked for (--approximate-gelu), its accuracy judged by the
# probe like any other.
SOURCES = ("model", "optimized", "optimized-unfused-ln", "optimized-unfused-ln-approx")
DEFAULT_SOURCES = ("model", "optimized", "optimized-unfused-ln")
UNFUSED_LN = ("optimized-unfused-ln", "optimized-unfused-ln-approx")
SOURCE_ALIASES = {"optimized-ln": "optimized-unfused-ln", "optimized-ln-approx": "optimized-unfused-ln-approx"}
STATIC_OPS = ("MatMul", "Gemm")  # what static int8 quantizes unless --op-types says otherwise
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")  # static: QUInt8 or QInt8 activations (weights are always QInt8)
QUANT_FORMATS = ("qdq", "qoperator")  # static: QDQ pairs, or QLinearMatMul & co.
# How each method scales activations: both give a row the same answer whatever else is in its batch.
ACTIVATIONS = {"dynamic": "per-row (per token), at run time", "static": "calibrated ranges"}
# fp32 fallback of the most sensitive MatMuls: "auto" when no candidate meets the budget; "always" also for
# candidates below budget that timed faster than the fastest within it; "off" never.
FALLBACKS = ("auto", "always", "off")

@dataclass(frozen=True)
class QuantizeOptions:
    methods: tuple[str, ...] = ("dynamic",)  # "static" needs calibration data
    per_channel: tuple[bool, ...] = (True, False)  # each value is tried
    reduce_range: tuple[bool, ...] = (False,)
    sources: tuple[str, ...] | None = None  # variants to quantize; None: the export and the fused model
    op_types: tuple[str, ...] | None = None  # None: ORT's defaults for the method
    exclude: tuple[str, ...] = ()  # node-name patterns (fnmatch) left in fp32
    calibration: str | None = None  # text file (one text per line), .npz of input arrays, or (images) a folder
    calibration_method: str = "minmax"
    activation_types: tuple[str, ...] = ACTIVATION_TYPES  # static only; each value is tried
    quant_formats: tuple[str, ...] = QUANT_FORMATS  # static only; each value is tried
    fallback: str = "auto"
    max_fp32: int = 8  # the most MatMuls a fallback leaves in fp32; it tries 1, 2, 4, ... up to this
    fallback_candidates: int = 2  # how many candidates below budget the fallback tries to rescue
    eval_texts: str | None = None  # None: torchship/data/sentences.txt
    budget: float = 0.99  # floor on the mean of the accuracy metric
    threads: int | None = None
    # max_iterations bounds a sub-millisecond model, whose 2,000 runs would be mostly the pauses between blocks
    timing: TimingPlan = TimingPlan(warmup=3, min_iterations=20, min_seconds=1.0, max_iterations=300)

    def checked(self) -> "QuantizeOptions":
        for m in self.methods:
            if m not in METHODS:
                raise InputError(f"unknown quantization method {m!r}; use {', '.join(METHODS)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"unknown calibration method {self.calibration_method!r}; "
                             f"use {', '.join(CALIBRATION_METHODS)}")
        if not 0.0 < self.budget <= 1.0:
            raise InputError(f"the accuracy budget must be in (0, 1], got {self.budget:g}")
        if not self.per_channel or not self.reduce_range:
            raise InputError("give at least one per-channel and one reduce-range setting to try")
        sources = None if self.sources is None else \
            tuple(dict.fromkeys(SOURCE_ALIASES.get(s, s) for s in self.sources))  # earlier names accepted
        for s in sources or ():
            if s not in SOURCES:
                raise InputError(f"unknown source variant {s!r}; quantize from {', '.join(SOURCES)}")
        for values, allowed, what in ((self.activation_types, ACTIVATION_TYPES, "activation type"),
                                      (self.quant_formats, QUANT_FORMATS, "quantization format"),
                                      ((self.fallback,), FALLBACKS, "fp32 fallback")):
            if not values:
                raise InputError(f"give at least one {what} to try; use {', '.join(allowed)}")
            for v in values:
                if v not in allowed:
                    raise InputError(f"unknown {what} {v!r}; use {', '.join(allowed)}")
        if self.max_fp32 < 0 or self.fallback_candidates < 0:
            raise InputError("the fp32 fallback's limits must be 0 or more")
        return self if sources == self.sources else replace(self, sources=sources)


@dataclass(frozen=True)
class Candidate:
    method: str
    source: str
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...] | None
    exclude: tuple[str, ...]  # the user's --exclude, resolved to node names
    activation_type: str | None = None  # static: "uint8" or "int8"
    quant_format: str | None = None  # static: "qdq" or "qoperator"
    fp32_nodes: tuple[str, ...] = ()  # left in fp32 by the fallback, most sensitive first

    @property
    def name(self) -> str:
        ops = "default-ops" if not self.op_types else "+".join(self.op_types)
        parts = [self.method, self.source, ops, "per-channel" if self.per_channel else "per-tensor"]
        if self.reduce_range:
            parts.append("reduce-range")
        if self.method == "static":
            parts += [f"{'s8' if self.activation_type == 'int8' else 'u8'}-act", self.quant_format]
        if self.fp32_nodes:
            parts.append(f"fp32x{len(self.fp32_nodes)}")
        return "/".join(parts)

    @property
    def disabled_optimizers(self) -> tuple[str, ...]:
        return NO_SKIP_LN if self.source in UNFUSED_LN else ()

    def to_json(self) -> dict:
        return {"name": self.name, "method": self.method, "source": self.source, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "op_types": list(self.op_types) if self.op_types else "default",
                "exclude": list(self.exclude), "disabled_optimizers": list(self.disabled_optimizers),
                "activation_type": self.activation_type, "quant_format": self.quant_format,
                "fp32_fallback": list(self.fp32_nodes), "activations": ACTIVATIONS[self.method],
                **({"approximate": approximate.WHAT} if self.source.endswith("-approx") else {})}


def candidates(options: QuantizeOptions, available: dict[str, Path], exclude_nodes: dict[str, tuple[str, ...]]):
    out = []
    for method in options.methods:
        for source in (options.sources or DEFAULT_SOURCES):
            if source not in available:
                continue
            if method == "static" and source != "model":
                continue  # static calibration needs the plain graph: ORT cannot type the fused contrib ops
            static = [(a, f) for f in options.quant_formats for a in options.activation_types] \
                if method == "static" else [(None, None)]
            for ops in _op_sets(options, method):
                for pc in options.per_channel:
                    for rr in options.reduce_range:
                        out += [Candidate(method, source, pc, rr, ops, exclude_nodes[source], act, fmt)
                                for act, fmt in static]
    return out


def _op_sets(options: QuantizeOptions, method: str) -> tuple:
    """The op types to try: the user's, else (dynamic) ORT's defaults and weight MatMuls alone, which on
    some CPUs is faster (attention and embeddings stay fp32)."""
    if options.op_types:
        return (options.op_types,)
    return (None, ("MatMul",)) if method == "dynamic" else (None,)


def matching_nodes(path: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    names = [n.name for n in load_onnx(path).graph.node if n.name]
    picked = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            example = ", ".join(names[:3])
            raise InputError(f"--exclude {pattern!r} matches no node of {path.name}; node names look like {example}")
        picked.extend(h for h in hits if h not in picked)
    return tuple(picked)


def activation_matmuls(path: Path) -> list[str]:
    """MatMuls whose both inputs are activations (attention scores and context)."""
    graph = load_onnx(path).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(x in weights for x in n.input)]


def calibration_feeds(options: QuantizeOptions, artifact: Artifact) -> list[dict]:
    """One feed per calibration sample, all padded to one length (some calibrators need equal shapes). An image
    model calibrates on generated images, plus the user's folder of images (or .npz) when given; a text model needs
    the user's texts or arrays."""
    from torchship.exporters.spec import ENCODE_IMAGE, family_of

    m = artifact.manifest
    images = ENCODE_IMAGE in family_of(m).phases
    if not options.calibration and not images:
        raise InputError("static int8 needs calibration data: pass --calibration FILE (one text per line, "
                         "or an .npz with one array per model input)")
    if images and (not options.calibration or Path(options.calibration).is_dir()):
        from torchship.optimizers.image_samples import calibration_pixels

        pixels = calibration_pixels(artifact.folder, m, options.calibration)
        return [{m.input_names[0]: pixels[i:i + 1]} for i in range(len(pixels))]
    path = Path(options.calibration)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise InputError(f"calibration file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"calibration file {path} cannot be read: {exc}") from None
        missing = [n for n in m.input_names if n not in arrays]
        if missing:
            raise InputError(f"calibration file {path} has no array {missing[0]!r}; it needs one per input: "
                             f"{', '.join(m.input_names)}")
        rows = {len(arrays[n]) for n in m.input_names}
        if len(rows) != 1:
            raise InputError(f"calibration arrays in {path} differ in their first (sample) axis: {sorted(rows)}")
        dtypes = {i["name"]: i["dtype"] for i in m.inputs}
        return [{n: arrays[n][i:i + 1].astype(dtypes[n]) for n in m.input_names} for i in range(rows.pop())]
    if images:
        raise InputError(f"calibration {path}: an image model calibrates on a folder of images or an .npz of "
                         "pixel_values, not a text file")
    if not has_tokenizer_files(artifact.folder):
        raise InputError(f"{artifact.folder} has no tokenizer, so calibration text cannot be used; "
                         "give an .npz with one array per model input")
    from torchship.runtimes.text import encode_texts, load_tokenizer

    texts = read_texts(path, what="calibration file")
    feeds = encode_texts(load_tokenizer(artifact), texts, m.input_names, m.text["max_length"])
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(len(texts))]


def build(c: Candidate, src: Path, dst: Path, *, calibration: list[dict] | None, calibration_method: str,
          scratch: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType

    external = uses_external_data(src)
    # DefaultTensorType: the fused model's contrib ops have no type inference, which the quantizer
    # otherwise needs (it fails on the transformer-fused MiniLM without it).
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if c.method == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        from torchship.optimizers.int8_rows import per_row

        # ORT's per-tensor activation scale spans the whole batch; per_row makes each row's answer its own.
        per_tensor = scratch / f"per_tensor_{dst.name}"
        quantize_dynamic(src, per_tensor, weight_type=QuantType.QInt8, per_channel=c.per_channel,
                         reduce_range=c.reduce_range, op_types_to_quantize=list(c.op_types) if c.op_types else None,
                         nodes_to_exclude=list(dict.fromkeys([*c.exclude, *c.fp32_nodes])),
                         use_external_data_format=external, extra_options=extra)
        per_row(per_tensor, dst)
        for f in (per_tensor, per_tensor.with_name(data_file_name(per_tensor))):
            f.unlink(missing_ok=True)
        return
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    pre = scratch / f"pre_{src.name}"  # one pre-processed graph per source, shared by its static candidates
    if not pre.is_file():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=external)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration_method]
    # The ranges are calibrated once per source and method, and read back by every other static candidate.
    cache = calibration_cache(scratch, src, calibration_method)
    quantize_static(pre, dst, Reader(), calibration_cache_path=cache,
                    quant_format=QuantFormat.QOperator if c.quant_format == "qoperator" else QuantFormat.QDQ,
                    activation_type=QuantType.QInt8 if c.activation_type == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=c.per_channel, reduce_range=c.reduce_range,
                    op_types_to_quantize=list(c.op_types) if c.op_types else list(STATIC_OPS),
                    nodes_to_exclude=list(dict.fromkeys([*c.exclude, *c.fp32_nodes, *activation_matmuls(pre)])),
                    calibrate_method=method, use_external_data_format=external, extra_options=extra)


def ln_sources(artifact: Artifact, wanted: tuple[str, ...], scratch: Path) -> dict[str, Path]:
    """The sources quantize builds itself from the fused model: residual Add + LayerNorm unfused, and that
    with GELU approximated, as far as ``wanted`` asks for them."""
    if not set(wanted) & set(UNFUSED_LN):
        return {}
    ln = fused_without_skip_ln(artifact, scratch)
    out = {"optimized-unfused-ln": ln} if "optimized-unfused-ln" in wanted else {}
    if "optimized-unfused-ln-approx" in wanted:
        from torchship.errors import ArtifactError
        from torchship.optimizers.approximate import approximate_gelu

        out["optimized-unfused-ln-approx"] = scratch / "optimized_unfused_ln_approx.onnx"
        try:
            approximate_gelu(ln, out["optimized-unfused-ln-approx"], external=uses_external_data(ln))
        except ArtifactError as exc:
            raise InputError(f"--approximate-gelu: {exc}") from None
    return out


def calibration_cache(scratch: Path, src: Path, calibration_method: str) -> Path:
    """Where static int8 keeps the calibrated activation ranges of ``src`` (JSON, ORT's format)."""
    return scratch / f"ranges_{src.stem}_{calibration_method}.json"


def fused_without_skip_ln(artifact: Artifact, scratch: Path) -> Path:
    """The export through the transformer optimizer as ``optimize`` runs it, but with residual Add +
    LayerNormalization left as they are."""
    from torchship.optimizers.fusion import fuse

    m = artifact.manifest
    options = m.variants["optimized"].options.fusion_settings()
    dst = scratch / "optimized_unfused_ln.onnx"
    src = artifact.path_of("model")
    fuse(src, dst, num_layers=m.num_layers, external_data=uses_external_data(src), skip_layer_norm=False, **options)
    return dst
