"""int8 variants chosen by measurement: build several, keep the fastest that meets the accuracy budget.

ONNX Runtime's quantizer has knobs that decide both speed and accuracy, and which setting wins
depends on the model and the CPU. So ``quantize`` builds a small set of candidates:

- dynamic int8 (weights int8 ahead of time, activations quantized per run) from the export and from
  the transformer-fused model (where QAttention replaces Attention), per-channel and per-tensor
  weights, optionally with reduced (7-bit) range;
- static int8 (QDQ, activations calibrated on the user's texts or arrays) when calibration data is
  given. MatMuls between two activations (attention scores) stay in fp32 by default.

Each candidate is compared with the fp32 export on the accuracy probe (sentence cosine for
embedding models, label agreement for classifiers), all are timed together at the use shape, and
the fastest one within the budget is saved as ``model_int8.onnx``. Every candidate, kept or not,
is recorded in the manifest with its numbers; if none meets the budget nothing is saved and the
command fails, naming the best one.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.artifact import Artifact, Variant, load_reference, model_bytes
from torchship.benchmarks.timing import TimingPlan, measure_interleaved
from torchship._fs import scratch_dir, transaction
from torchship.errors import ArtifactError, BudgetError, InputError, first_line
from torchship.onnx_io import load_onnx
from torchship.external_data import normalize, staged_model, uses_external_data
from torchship._ort import ort_runner
from torchship.optimizers.accuracy import AccuracyProbe, AccuracyResult, read_texts
from torchship.optimizers.fusion import op_histogram
from torchship.validation import run_reference_cases
from torchship.exporters.spec import family_of, saved_config

VARIANT = "int8"
FILE = "model_int8.onnx"
METHODS = ("dynamic", "static")
# "optimized-ln": the transformer-fused graph with residual Add + LayerNormalization left unfused and ORT's
# SkipLayerNormFusion off in the session (ORT 1.32's CPU SkipLayerNormalization measured ~2x slower than
# the pair on MiniLM); built by quantize itself from the export.
SOURCES = ("model", "optimized", "optimized-ln")
NO_SKIP_LN = ("SkipLayerNormFusion",)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeOptions:
    methods: tuple[str, ...] = ("dynamic",)  # "static" needs calibration data
    per_channel: tuple[bool, ...] = (True, False)  # each value is tried
    reduce_range: tuple[bool, ...] = (False,)
    sources: tuple[str, ...] | None = None  # variants to quantize; None: the export and the fused model
    op_types: tuple[str, ...] | None = None  # None: ORT's defaults for the method
    exclude: tuple[str, ...] = ()  # node-name patterns (fnmatch) left in fp32
    calibration: str | None = None  # text file (one text per line) or .npz of input arrays
    calibration_method: str = "minmax"
    eval_texts: str | None = None  # None: torchship/data/sentences.txt
    budget: float = 0.99  # floor on the mean of the accuracy metric
    threads: int | None = None
    # max_iterations bounds a sub-millisecond model, whose 2,000 runs would be mostly the pauses between blocks
    timing: TimingPlan = TimingPlan(warmup=3, min_iterations=20, min_seconds=1.0, max_iterations=300)

    def checked(self) -> "QuantizeOptions":
        for m in self.methods:
            if m not in METHODS:
                raise InputError(f"unknown quantization method {m!r}; use {', '.join(METHODS)}")
        if "static" in self.methods and not self.calibration:
            raise InputError("static int8 needs calibration data: pass --calibration FILE (one text per line, "
                             "or an .npz with one array per model input)")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"unknown calibration method {self.calibration_method!r}; "
                             f"use {', '.join(CALIBRATION_METHODS)}")
        if not 0.0 < self.budget <= 1.0:
            raise InputError(f"the accuracy budget must be in (0, 1], got {self.budget:g}")
        if not self.per_channel or not self.reduce_range:
            raise InputError("give at least one per-channel and one reduce-range setting to try")
        for s in self.sources or ():
            if s not in SOURCES:
                raise InputError(f"unknown source variant {s!r}; quantize from {', '.join(SOURCES)}")
        return self


@dataclass(frozen=True)
class Candidate:
    method: str
    source: str
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...] | None
    exclude: tuple[str, ...]

    @property
    def name(self) -> str:
        ops = "default-ops" if not self.op_types else "+".join(self.op_types)
        parts = [self.method, self.source, ops, "per-channel" if self.per_channel else "per-tensor"]
        if self.reduce_range:
            parts.append("reduce-range")
        return "/".join(parts)

    @property
    def disabled_optimizers(self) -> tuple[str, ...]:
        return NO_SKIP_LN if self.source == "optimized-ln" else ()

    def to_json(self) -> dict:
        return {"name": self.name, "method": self.method, "source": self.source, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "op_types": list(self.op_types) if self.op_types else "default",
                "exclude": list(self.exclude), "disabled_optimizers": list(self.disabled_optimizers)}


@dataclass
class Outcome:
    candidate: Candidate
    path: Path | None = None
    accuracy: AccuracyResult | None = None
    build_s: float = 0.0
    p50_ms: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and self.accuracy is not None and self.accuracy.passed

    def to_json(self) -> dict:
        return {**self.candidate.to_json(), "build_s": round(self.build_s, 2), "p50_ms": self.p50_ms,
                "accuracy": self.accuracy.to_json() if self.accuracy else None, "passed": self.passed,
                "error": self.error, **self.extra}


def candidates(options: QuantizeOptions, available: dict[str, Path], exclude_nodes: dict[str, tuple[str, ...]]):
    out = []
    for method in options.methods:
        for source in (options.sources or SOURCES):
            if source not in available:
                continue
            if method == "static" and source != "model":
                continue  # static calibration needs the plain graph: ORT cannot type the fused contrib ops
            for ops in _op_sets(options, method):
                for pc in options.per_channel:
                    for rr in options.reduce_range:
                        out.append(Candidate(method, source, pc, rr, ops, exclude_nodes[source]))
    return out


def _op_sets(options: QuantizeOptions, method: str) -> tuple:
    """The op types to try: the user's, else (dynamic) ORT's defaults and weight MatMuls alone, which on
    some CPUs is faster (attention and embeddings stay fp32)."""
    if options.op_types:
        return (options.op_types,)
    return (None, ("MatMul",)) if method == "dynamic" else (None,)


def _matching_nodes(path: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    names = [n.name for n in load_onnx(path).graph.node if n.name]
    picked = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            example = ", ".join(names[:3])
            raise InputError(f"--exclude {pattern!r} matches no node of {path.name}; node names look like {example}")
        picked.extend(h for h in hits if h not in picked)
    return tuple(picked)


def _activation_matmuls(path: Path) -> list[str]:
    """MatMuls whose both inputs are activations (attention scores and context)."""
    graph = load_onnx(path).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(x in weights for x in n.input)]


def _calibration_feeds(options: QuantizeOptions, artifact: Artifact) -> list[dict]:
    """One feed per calibration sample, all padded to one length (some calibrators need equal shapes)."""
    path = Path(options.calibration)
    m = artifact.manifest
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
    if not m.export.get("tokenizer"):
        raise InputError(f"{artifact.folder} has no tokenizer, so calibration text cannot be used; "
                         "give an .npz with one array per model input")
    from torchship.runtimes.text import encode_texts, load_tokenizer

    texts = read_texts(path, what="calibration file")
    feeds = encode_texts(load_tokenizer(artifact), texts, m.input_names, m.text["max_length"])
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(len(texts))]


def _build(c: Candidate, src: Path, dst: Path, *, calibration: list[dict] | None, calibration_method: str,
           scratch: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType

    external = uses_external_data(src)
    # DefaultTensorType: the fused model's contrib ops have no type inference, which the quantizer
    # otherwise needs (it fails on the transformer-fused MiniLM without it).
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if c.method == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=c.per_channel,
                         reduce_range=c.reduce_range, op_types_to_quantize=list(c.op_types) if c.op_types else None,
                         nodes_to_exclude=list(c.exclude), use_external_data_format=external, extra_options=extra)
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
    quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=c.per_channel, reduce_range=c.reduce_range,
                    op_types_to_quantize=list(c.op_types) if c.op_types else ["MatMul", "Gemm"],
                    nodes_to_exclude=list(dict.fromkeys([*c.exclude, *_activation_matmuls(pre)])),
                    calibrate_method=method, use_external_data_format=external, extra_options=extra)


def _fused_without_skip_ln(artifact: Artifact, scratch: Path) -> Path:
    """The export through the transformer optimizer as ``optimize`` runs it, but with residual Add +
    LayerNormalization left as they are."""
    from torchship.optimizers.fusion import fuse

    m = artifact.manifest
    options = {k: v for k, v in m.variants["optimized"].options.items()
               if k in ("model_type", "num_heads", "hidden_size", "use_gpu")}
    dst = scratch / "optimized_ln.onnx"
    src = artifact.path_of("model")
    fuse(src, dst, num_layers=m.num_layers, external_data=uses_external_data(src), skip_layer_norm=False, **options)
    return dst


def speed_sizes(spec, config, resolved) -> dict:
    """The shape speed is judged at: the shape config's use shape, else the family's batch-1 bench shape
    with the most work."""
    if resolved is not None:
        return resolved.sizes("use")
    sizes = spec.bench_sizes(config)
    smallest = min(s.get("batch", 1) for s in sizes)
    pool = [s for s in sizes if s.get("batch", 1) == smallest]
    return max(pool, key=lambda s: int(np.prod(list(s.values()))))


def quantize(folder: str | Path, options: QuantizeOptions = QuantizeOptions(), *,
             progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Build int8 candidates, measure them, and save the fastest within the budget as ``model_int8.onnx``."""
    options = options.checked()
    artifact = Artifact.open(folder)
    with transaction(artifact.folder):
        return _quantize(artifact, options, progress)


def _quantize(artifact: Artifact, options: QuantizeOptions, progress: _progress.Progress) -> Artifact:
    started = time.perf_counter()
    folder = artifact.folder
    m = artifact.manifest
    spec = family_of(m)
    src_fp32 = artifact.path_of("model")
    available = {s: artifact.path_of(s) for s in SOURCES if s in m.variants}
    for s in options.sources or ():
        if s not in available and not (s == "optimized-ln" and "optimized" in m.variants):
            raise InputError(f"{artifact.folder} has no {s!r} variant to quantize; run: torchship optimize {folder}")
    calibration = _calibration_feeds(options, artifact) if "static" in options.methods else None
    probe = AccuracyProbe.for_artifact(artifact, options.eval_texts)
    with scratch_dir(artifact.folder, "int8") as scratch:
        if "optimized" in available and "optimized-ln" in (options.sources or SOURCES):
            available["optimized-ln"] = _fused_without_skip_ln(artifact, scratch)
        exclude = {s: _matching_nodes(p, options.exclude) for s, p in available.items()} if options.exclude \
            else {s: () for s in available}
        progress.step(f"accuracy probe: {probe.metric} on {probe.source}")
        probe.set_reference(ort_runner(src_fp32, threads=options.threads))
        outcomes = [Outcome(c) for c in candidates(options, available, exclude)]
        for i, o in enumerate(outcomes, 1):
            progress.step(f"[{i}/{len(outcomes)}] {o.candidate.name}")
            dst = scratch / f"c{i}.onnx"
            start = time.perf_counter()
            try:
                _build(o.candidate, available[o.candidate.source], dst, calibration=calibration,
                       calibration_method=options.calibration_method, scratch=scratch)
                o.build_s = time.perf_counter() - start
                o.accuracy = probe.measure(ort_runner(dst, threads=options.threads,
                                                      disabled_optimizers=o.candidate.disabled_optimizers),
                                           options.budget)
                o.path = dst
            except (ArtifactError, ValueError, RuntimeError, KeyError, IndexError, TypeError) as exc:
                # The quantizer raises plain Python errors on graphs it cannot handle: record, go on.
                o.error = f"{type(exc).__name__}: {first_line(exc, 200)}"
                continue
            progress.step(f"    {o.accuracy.describe()} {'ok' if o.accuracy.passed else 'BELOW BUDGET'}")
        _time(artifact, spec, src_fp32, [o for o in outcomes if o.passed], options, progress)
        return _keep_best(artifact, outcomes, options, probe, started)


def _time(artifact: Artifact, spec, src_fp32: Path, built: list[Outcome], options: QuantizeOptions,
          progress: _progress.Progress) -> None:
    """Time the fp32 export and every built candidate together (interleaved) at the speed shape."""
    if not built:
        return
    config = saved_config(artifact)
    sizes = speed_sizes(spec, config, artifact.manifest.resolved_shapes())
    case = spec.case_for(sizes, config)
    feeds = spec.sample_inputs(config, artifact.manifest.io(), case, seed=7)
    progress.step(f"timing the {len(built)} candidates within budget and the fp32 export at {case.label()}")
    runners = {"fp32": ort_runner(src_fp32, threads=options.threads)}
    runners.update({o.candidate.name: ort_runner(o.path, threads=options.threads,
                                                 disabled_optimizers=o.candidate.disabled_optimizers) for o in built})
    times = measure_interleaved({k: (lambda r=r: r(feeds)) for k, r in runners.items()}, options.timing)
    fp32 = float(np.median(times["fp32"]) * 1000)
    for o in built:
        o.p50_ms = round(float(np.median(times[o.candidate.name]) * 1000), 3)
        o.extra = {"fp32_p50_ms": round(fp32, 3), "speedup_vs_fp32": round(fp32 / o.p50_ms, 3),
                   "shape": case.label()}


def _keep_best(artifact: Artifact, outcomes: list[Outcome], options: QuantizeOptions,
               probe: AccuracyProbe, started: float) -> Artifact:
    passing = sorted((o for o in outcomes if o.passed), key=lambda o: o.p50_ms)
    report = [o.to_json() for o in outcomes]
    if not passing:
        tried = [o for o in outcomes if o.accuracy is not None]
        best = max(tried, key=lambda o: o.accuracy.mean, default=None)
        why = (f"no int8 candidate met the budget ({probe.metric} mean >= {options.budget:g})"
               + (f"; the closest, {best.candidate.name}, reached {best.accuracy.mean:.4f}" if best else
                  "; none could be built: " + "; ".join(f"{o.candidate.name}: {o.error}" for o in outcomes)))
        manifest = artifact.manifest.with_skipped(VARIANT, why)
        artifact.save(replace(manifest, quantization={"chosen": None, "candidates": report}))
        raise BudgetError(f"{why}. Every candidate's numbers are in {artifact.folder}/torchship.json; "
                              "leave sensitive nodes in fp32 with --exclude, try --static with calibration text, "
                              "or lower --budget")
    best = passing[0]
    final = artifact.folder / FILE
    with staged_model(final) as tmp:
        normalize(best.path, tmp, "auto")  # one data file named after the final model, when one is needed
        against_torch = run_reference_cases(tmp, load_reference(artifact.folder), atol=float("inf"),
                                            spec=family_of(artifact.manifest))
    validation = {**best.accuracy.to_json(), "max_abs": against_torch.max_abs,
                  "min_cosine": against_torch.min_cosine, "against": "fp32 export (accuracy); eager PyTorch (max_abs)"}
    variant = Variant(name=VARIANT, file=FILE, stage="quantization",
                      options={**best.candidate.to_json(), "precision": "int8", "p50_ms": best.p50_ms, **best.extra,
                               "calibration": Path(options.calibration).name if options.calibration else None,
                               "calibration_method": options.calibration_method if options.calibration else None,
                               "search_s": round(time.perf_counter() - started, 1)},  # the whole measured search
                      size_bytes=model_bytes(final), seconds=round(best.build_s, 3), validation=validation,
                      fusion={"counts": op_histogram(final)})
    manifest = artifact.manifest.with_variant(variant)
    artifact.save(replace(manifest, quantization={"chosen": best.candidate.name, "candidates": report}))
    return artifact
