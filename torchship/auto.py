"""Auto acceleration: every variant that fits the device, validated, benchmarked, the best one named.

``run_auto`` takes a Hugging Face checkpoint (any family torchship exports) or an ONNX file and a
config in the spirit of the original Auto Acceleration ``config.yml``: a shape config (device, and
min/use/max per input) plus an accuracy budget and the precisions to try. It drives the existing
stages (export or import, optimize, quantize, the runtimes, bench) and adds no second copy of
their logic:

1. export (validated against eager PyTorch) or import the ONNX file (validated against itself);
2. CPU variants: ORT at each graph level, ORT with transformer fusion, int8 (``quantize``),
   OpenVINO fp32 and fp16 weights; GPU variants (device cuda): ORT CUDA fp32/fp16 and TensorRT
   fp32/fp16/int8. What does not fit the device or precisions is listed as skipped, with why;
3. accuracy of every variant against the fp32 original: full-tensor max abs, mean abs and cosine on
   realistic random inputs at the use shape, and the budget metric (sentence cosine for embedding
   models, label agreement for classifiers, output cosine otherwise; see optimizers/accuracy.py);
4. one interleaved benchmark of all of them (eager PyTorch too, when there is a checkpoint) at
   the use shape: latency percentiles, throughput counting the batch, file size, build time;
5. the fastest variant within the budget is chosen. The summary is written as Markdown, CSV, JSON,
   an Excel sheet and a chart of latency against error.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.errors import InputError, TorchshipError, first_line

PRECISIONS = ("fp32", "fp16", "int8")
AUTO_KEYS = ("budget", "precisions", "threads", "min_seconds")
SUMMARY = "summary.json"
MODEL_DIR = "model"

# Every variant auto knows: backend -> (precision, device, runtime, how it is made).
VARIANTS = {
    "ort": ("fp32", "cpu", "onnxruntime", "the export as written"),
    "ort-basic": ("fp32", "cpu", "onnxruntime", "ORT graph level basic"),
    "ort-extended": ("fp32", "cpu", "onnxruntime", "ORT graph level extended"),
    "ort-all": ("fp32", "cpu", "onnxruntime", "ORT graph level all"),
    "ort-optimized": ("fp32", "cpu", "onnxruntime", "ORT transformer fusion"),
    "ort-int8": ("int8", "cpu", "onnxruntime", "torchship quantize (fastest candidate within budget)"),
    "openvino": ("fp32", "cpu", "openvino", "OpenVINO IR"),
    "openvino-fp16": ("fp16", "cpu", "openvino", "OpenVINO IR, fp16 weights"),
    "ort-cuda": ("fp32", "cuda", "onnxruntime-cuda", "ORT CUDA provider, IO binding"),
    "ort-cuda-fp16": ("fp16", "cuda", "onnxruntime-cuda", "fp16 model on the CUDA provider"),
    "tensorrt": ("fp32", "cuda", "tensorrt", "TensorRT engine"),
    "tensorrt-fp16": ("fp16", "cuda", "tensorrt", "TensorRT engine, fp16"),
    "tensorrt-int8": ("int8", "cuda", "tensorrt", "TensorRT engine from the static int8 model"),
}


@dataclass(frozen=True)
class AutoConfig:
    shapes: object  # torchship.shapes.ShapeConfig
    budget: float = 0.99
    precisions: tuple[str, ...] = PRECISIONS
    threads: int | None = None
    min_seconds: float = 3.0
    source: str = "config"


def parse_auto_config(data, *, source: str = "auto config") -> AutoConfig:
    """The shape config keys (device, inputs, outputs) plus budget, precisions, threads, min_seconds."""
    from torchship.shapes import parse_shape_config

    if not isinstance(data, dict):
        raise InputError(f"{source} must be a mapping with device, inputs, and optionally {', '.join(AUTO_KEYS)}")
    rest = {k: v for k, v in data.items() if k not in AUTO_KEYS}
    try:
        shapes = parse_shape_config(rest, source=source)
    except InputError as exc:
        if "unknown key" in str(exc):
            raise InputError(f"{exc}, or {', '.join(AUTO_KEYS)}") from None
        raise
    budget = data.get("budget", 0.99)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
        raise InputError(f"{source}: budget must be a number in (0, 1] (a cosine floor), got {budget!r}")
    precisions = data.get("precisions", list(PRECISIONS))
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",")]
    if not isinstance(precisions, list) or not precisions:
        raise InputError(f"{source}: precisions must be a list drawn from {', '.join(PRECISIONS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise InputError(f"{source}: unknown precision {p!r}; use {', '.join(PRECISIONS)}")
    threads = data.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"{source}: threads must be a positive integer, got {threads!r}")
    min_seconds = data.get("min_seconds", 3.0)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)) or min_seconds < 0:
        raise InputError(f"{source}: min_seconds must be a number of seconds >= 0, got {min_seconds!r}")
    return AutoConfig(shapes, float(budget), tuple(dict.fromkeys(precisions)), threads, float(min_seconds), source)


def load_auto_config(path: str | Path) -> AutoConfig:
    from torchship.shapes import read_config_file

    return parse_auto_config(read_config_file(path, what="auto config"), source=str(path))


def check_device(device: str) -> None:
    """A GPU device in the config needs a GPU here; say so before anything is built."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"the config asks for device {device}, but this machine has no usable NVIDIA GPU "
                         "(torch.cuda.is_available() is False); set device: cpu, or run on a GPU machine")


@dataclass
class Row:
    backend: str
    precision: str
    device: str
    runtime: str
    made_by: str
    status: str = "ok"  # "ok", "skipped: ...", "failed: ...", "below budget: ..."
    file: str | None = None
    size_bytes: int | None = None
    build_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None  # samples per second, counting the batch
    speedup_vs_torch: float | None = None
    max_abs: float | None = None  # full tensors, random inputs at the use shape, against the fp32 original
    mean_abs: float | None = None
    cosine: float | None = None
    metric: str | None = None  # the budget metric, on real text where the model has a tokenizer
    metric_mean: float | None = None
    metric_min: float | None = None
    chosen: bool = False

    @property
    def usable(self) -> bool:
        return self.status == "ok"


@dataclass
class AutoReport:
    model: str
    config: dict
    shape: str
    budget: float
    rows: list[Row] = field(default_factory=list)
    torch_p50_ms: float | None = None
    chosen: str | None = None
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"model": self.model, "config": self.config, "shape": self.shape, "budget": self.budget,
                "chosen": self.chosen, "torch_p50_ms": self.torch_p50_ms, "seconds": round(self.seconds, 1),
                "environment": self.environment, "variants": [asdict(r) for r in self.rows]}


def _is_onnx_file(model: str) -> bool:
    return str(model).lower().endswith(".onnx") and Path(model).is_file()


def run_auto(model: str, config: AutoConfig, output: str | Path, *,
             progress: _progress.Progress = _progress.SILENT) -> AutoReport:
    """Build, validate and benchmark every variant of ``model`` that fits ``config``; write the summary."""
    from torchship._fs import check_output_dir, staged_dir
    from torchship.benchmarks.run import default_threads

    start = time.perf_counter()
    output = Path(output)
    check_device(config.shapes.device)
    check_output_dir(output, marker=SUMMARY)
    threads = config.threads or default_threads()
    with staged_dir(output, marker=SUMMARY) as tmp:
        folder = tmp / MODEL_DIR
        stages = 6
        progress.step(f"[1/{stages}] {'import' if _is_onnx_file(model) else 'export'} {model}")
        artifact = _source(model, folder, config, progress)
        rows = {b: Row(b, *VARIANTS[b]) for b in VARIANTS}
        progress.step(f"[2/{stages}] fp32 and fp16 variants")
        _build_float_variants(artifact, config, rows, progress)
        progress.step(f"[3/{stages}] int8")
        _build_int8(artifact, config, rows, threads, progress)
        progress.step(f"[4/{stages}] accuracy against the fp32 original")
        usable = _validate(artifact, config, rows, threads, progress)
        progress.step(f"[5/{stages}] benchmark ({len(usable)} variants{', eager PyTorch' if _has_torch(artifact) else ''})")
        report = _benchmark(artifact, config, rows, usable, threads, progress)
        report.model = str(model)
        _choose(report)
        progress.step(f"[6/{stages}] summary")
        report.seconds = time.perf_counter() - start
        write_summary(report, tmp)
    return report


def _source(model: str, folder: Path, config: AutoConfig, progress):
    if _is_onnx_file(model):
        from torchship.exporters.onnx_file import import_onnx

        return import_onnx(model, folder, config.shapes, progress=progress)
    if str(model).lower().endswith(".onnx"):
        raise InputError(f"ONNX file {model} does not exist")
    from torchship.exporters.export import ExportOptions, export

    return export(model, folder, ExportOptions(shapes=config.shapes), progress=progress)


def _has_torch(artifact) -> bool:
    return artifact.manifest.family != "onnx"


def _skip(rows: dict, backends, why: str) -> None:
    for b in backends:
        if rows[b].status == "ok":
            rows[b].status = f"skipped: {why}"


def _build_float_variants(artifact, config: AutoConfig, rows: dict, progress) -> None:
    from torchship.optimizers import OptimizeOptions, optimize

    m = artifact.manifest
    on_gpu = config.shapes.device.startswith("cuda")
    _skip(rows, [b for b, v in VARIANTS.items() if v[0] not in config.precisions], "precision not in the config")
    _skip(rows, [b for b, v in VARIANTS.items() if v[1] == "cuda" and not on_gpu], "device is cpu")
    # On a GPU config the sweep is about the GPU: CPU variants would be timed on another device.
    _skip(rows, [b for b, v in VARIANTS.items() if v[1] == "cpu" and on_gpu], f"device is {config.shapes.device}")
    if not m.ort_model_type:
        _skip(rows, ["ort-optimized"], "no transformer fusion for this model (ONNX file of unknown family)")

    def wanted(*backends) -> bool:  # build only what a row still in the running needs
        return any(rows[b].status == "ok" for b in backends)

    levels = tuple(lv for lv in ("basic", "extended", "all") if wanted(f"ort-{lv}"))
    fusion = bool(m.ort_model_type) and wanted("ort-optimized", "ort-cuda")
    optimize(artifact.folder, OptimizeOptions(levels=levels, transformer_fusion=fusion, use_gpu=on_gpu),
             progress=progress)
    if wanted("openvino", "openvino-fp16"):
        try:
            optimize(artifact.folder, OptimizeOptions(levels=(), transformer_fusion=False, openvino=True),
                     progress=progress)
        except TorchshipError as exc:
            _fail(rows, ["openvino", "openvino-fp16"], exc)
    if wanted("ort-cuda-fp16"):
        try:
            optimize(artifact.folder, OptimizeOptions(levels=(), transformer_fusion=False, fp16=True,
                                                      fp16_budget=config.budget), progress=progress)
        except TorchshipError as exc:
            _fail(rows, ["ort-cuda-fp16"], exc)


def _fail(rows: dict, backends, exc: Exception) -> None:
    first = first_line(exc)
    kind = "below budget" if "budget" in first else "failed"
    for b in backends:
        if rows[b].status == "ok":
            rows[b].status = f"{kind}: {first}"


def _build_int8(artifact, config: AutoConfig, rows: dict, threads: int, progress) -> None:
    from torchship.optimizers.quantize import QuantizeOptions, quantize

    if rows["ort-int8"].status == "ok":  # int8 in the precisions, and a CPU config
        try:
            quantize(artifact.folder, QuantizeOptions(budget=config.budget, threads=threads), progress=progress)
        except TorchshipError as exc:
            _fail(rows, ["ort-int8"], exc)
    if rows["tensorrt-int8"].status == "ok":
        int8 = artifact.manifest.variants.get("int8")
        if int8 is None or int8.options.get("method") != "static":
            rows["tensorrt-int8"].status = ("skipped: TensorRT int8 needs a static int8 (QDQ) model; "
                                            "run torchship quantize --method static --calibration FILE")


def _validate(artifact, config: AutoConfig, rows: dict, threads: int, progress) -> list[str]:
    """Accuracy of every buildable variant against the fp32 original (the export, run by ORT)."""
    from torchship.artifact import Artifact
    from torchship.compare import cosine
    from torchship._ort import ort_runner
    from torchship.optimizers.accuracy import AccuracyProbe
    from torchship.runtimes import RuntimeOptions, create_predictor

    artifact = Artifact.open(artifact.folder)
    m = artifact.manifest
    spec = m.spec()
    cfg = artifact.load_config()
    case = spec.case_for(m.resolved_shapes().sizes("use"), cfg)
    feeds = spec.sample_inputs(cfg, m.io(), case, seed=2024)
    main = m.output_names[0]
    original = ort_runner(artifact.path_of("model"), threads=threads)
    ref = np.asarray(original(feeds)[main], dtype=np.float64)
    probe = AccuracyProbe.for_artifact(artifact)
    probe.set_reference(original)
    usable = []
    for backend, row in rows.items():
        if row.status != "ok":
            continue
        try:
            predictor = create_predictor(artifact, backend, RuntimeOptions(threads=threads,
                                                                           device=config.shapes.device))
            with predictor:
                got = np.asarray(predictor.infer(feeds)[main], dtype=np.float64)
                acc = probe.measure(predictor.infer, config.budget)
        except (TorchshipError, RuntimeError) as exc:
            _fail(rows, [backend], exc)
            continue
        diff = np.abs(got - ref)
        row.max_abs, row.mean_abs, row.cosine = float(diff.max()), float(diff.mean()), cosine(ref, got)
        row.metric, row.metric_mean, row.metric_min = acc.metric, acc.mean, acc.min
        variant = _variant_of(artifact, backend)
        if variant is not None:
            # int8's build time is quantize's whole measured search, not only the kept candidate's build
            row.file, row.size_bytes = variant.file, variant.size_bytes
            row.build_s = variant.options.get("search_s", variant.seconds)
        if not acc.passed:
            row.status = f"below budget: {acc.describe()}"
            continue
        usable.append(backend)
        progress.step(f"    {backend}: cosine {row.cosine:.6f}, {acc.metric} {acc.mean:.4f}")
    return usable


def _variant_of(artifact, backend: str):
    from torchship.runtimes import backend_variants

    variants = artifact.manifest.variants
    return next((variants[n] for n in backend_variants(backend) if n in variants), None)


def _benchmark(artifact, config: AutoConfig, rows: dict, usable: list[str], threads: int, progress) -> AutoReport:
    from torchship.benchmarks.results import Environment
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.artifact import library_versions

    m = artifact.manifest
    use = m.resolved_shapes().sizes("use")
    backends = (("torch",) if _has_torch(artifact) else ()) + tuple(usable)
    plan = replace(TimingPlan(), min_seconds=config.min_seconds, min_iterations=20, max_iterations=500)
    report = AutoReport(model="", config={}, shape="", budget=config.budget, rows=list(rows.values()),
                        environment=asdict(Environment.collect(threads=threads, spin=False,
                                                               versions=library_versions())))
    report.config = {"source": config.source, "device": config.shapes.device, "budget": config.budget,
                     "precisions": list(config.precisions), "threads": threads, "use": use}
    if not backends:
        return report
    if m.spec().kind == "decoder":
        by, report.shape = _decoder_bench(artifact, use, backends, threads, plan, progress)
    else:
        bench = run_benchmark(artifact.folder, BenchOptions(backends=backends, sizes=(use,), threads=threads,
                                                            plan=plan, device=config.shapes.device), progress=progress)
        by = {x.backend: x for x in bench.measurements}
        report.shape = next(iter(by.values())).shape
    report.torch_p50_ms = by["torch"].p50_ms if "torch" in by else None
    for backend in usable:
        x, row = by[backend], rows[backend]
        row.p50_ms, row.p90_ms, row.p99_ms = x.p50_ms, x.p90_ms, x.p99_ms
        row.throughput = x.throughput
        if report.torch_p50_ms:
            row.speedup_vs_torch = report.torch_p50_ms / x.p50_ms
    return report


def _decoder_bench(artifact, use: dict, backends, threads: int, plan, progress):
    """Decoders are timed as generate() runs them: a use shape with past tokens is one decode step with
    that much past; without past, the prefill of the prompt."""
    from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
    from torchship.exporters.spec import BATCH, PAST_SEQUENCE, SEQUENCE

    past = use.get(PAST_SEQUENCE, 0)
    phase, prompt = ("decode", past) if past > 0 else ("prefill", use[SEQUENCE])
    bench = run_decoder_benchmark(artifact.folder, DecoderBenchOptions(
        backends=backends, batch_sizes=(use[BATCH],), prompt=prompt, threads=threads, plan=plan), progress=progress)
    by = {x.backend: x for x in bench.measurements if x.phase == phase}
    label = (f"decode step: batch {use[BATCH]}, 1 new token, past {past}" if phase == "decode"
             else f"prefill: batch {use[BATCH]} x {prompt} tokens")
    return by, label


def _choose(report: AutoReport) -> None:
    timed = [r for r in report.rows if r.usable and r.p50_ms is not None]
    if timed:
        best = min(timed, key=lambda r: r.p50_ms)
        best.chosen = True
        report.chosen = best.backend


# ---- the summary: Markdown, CSV, JSON, Excel, PNG -------------------------------------------------

COLUMNS = ("backend", "precision", "device", "runtime", "status", "file", "size_mb", "build_s", "p50_ms", "p90_ms",
           "p99_ms", "throughput", "speedup_vs_torch", "max_abs", "mean_abs", "cosine", "metric", "metric_mean",
           "metric_min", "chosen")


def _cells(row: Row) -> dict:
    d = asdict(row)
    d["size_mb"] = None if row.size_bytes is None else round(row.size_bytes / 1e6, 2)
    return {k: d.get(k) for k in COLUMNS}


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def markdown(report: AutoReport) -> str:
    lines = [f"# torchship auto: {report.model}", "",
             f"Use shape: {report.shape or '-'}; device {report.config.get('device', '?')}; "
             f"{report.config.get('threads', '?')} threads; budget: {report.rows[0].metric or 'metric'} mean >= "
             f"{report.budget:g} against the fp32 original; {report.seconds:.0f} s in all.", ""]
    if report.torch_p50_ms:
        lines.append(f"Eager PyTorch p50: {report.torch_p50_ms:.2f} ms.")
        lines.append("")
    lines += ["| variant | precision | runtime | p50 ms | p90 ms | samples/s | vs PyTorch | size MB | build s | "
              "cosine | max abs | budget metric | status |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    order = sorted(report.rows, key=lambda r: (not r.usable, r.p50_ms if r.p50_ms is not None else 1e18))
    for r in order:
        name = f"**{r.backend}** (chosen)" if r.chosen else r.backend
        metric = "-" if r.metric_mean is None else f"{r.metric_mean:.4f}"
        speed = "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x"
        size = "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}"
        cos = "-" if r.cosine is None else f"{r.cosine:.6f}"
        lines.append(f"| {name} | {r.precision} | {r.runtime} | {_fmt(r.p50_ms)} | {_fmt(r.p90_ms)} | "
                     f"{_fmt(r.throughput, 1)} | {speed} | {size} | {_fmt(r.build_s, 1)} | {cos} | "
                     f"{'-' if r.max_abs is None else f'{r.max_abs:.1e}'} | "
                     f"{metric} | {r.status} |")
    lines += ["", f"Chosen: **{report.chosen}**" if report.chosen else "No variant met the budget.", ""]
    return "\n".join(lines)


def write_summary(report: AutoReport, folder: Path) -> dict[str, Path]:
    from torchship._fs import write_json_atomic, write_text_atomic

    folder = Path(folder)
    paths = {"markdown": folder / "summary.md", "csv": folder / "summary.csv", "json": folder / SUMMARY,
             "xlsx": folder / "summary.xlsx", "png": folder / "latency_vs_error.png"}
    write_text_atomic(paths["markdown"], markdown(report))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in report.rows:
        writer.writerow(_cells(r))
    write_text_atomic(paths["csv"], buf.getvalue())
    _write_xlsx(report, paths["xlsx"])
    _write_chart(report, paths["png"])
    write_json_atomic(paths["json"], report.to_json())  # last: its presence marks a complete folder
    return paths


def _write_xlsx(report: AutoReport, path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "variants"
    ws.append(list(COLUMNS))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in report.rows:
        ws.append([_cells(r)[k] for k in COLUMNS])
    info = wb.create_sheet("run")
    for key, value in (("model", report.model), ("use shape", report.shape), ("budget", report.budget),
                       ("chosen", report.chosen), ("eager PyTorch p50 ms", report.torch_p50_ms),
                       ("seconds", round(report.seconds, 1)), ("cpu", report.environment.get("cpu")),
                       ("threads", report.environment.get("threads"))):
        info.append([key, value])
    tmp = path.with_name(path.name + ".tmp")
    wb.save(tmp)
    tmp.replace(path)


def _write_chart(report: AutoReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.p50_ms is not None and r.cosine is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        err = max(1.0 - r.cosine, 1e-12)
        ax.scatter(err, r.p50_ms, s=60, marker="*" if r.chosen else "o",
                   color="tab:red" if r.chosen else "tab:blue")
        ax.annotate(r.backend, (err, r.p50_ms), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if report.torch_p50_ms:
        ax.axhline(report.torch_p50_ms, color="gray", linestyle="--", linewidth=1)
        ax.text(1e-12, report.torch_p50_ms, " eager PyTorch", va="bottom", fontsize=8, color="gray")
    ax.set_xscale("log")
    ax.set_xlabel("1 - cosine against the fp32 original (full tensors, random inputs at the use shape)")
    ax.set_ylabel("p50 latency, ms")
    ax.set_title(f"{Path(report.model).name}: {report.shape}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def read_summary(folder: str | Path) -> dict:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise InputError(f"{folder} has no {SUMMARY}; it is not a torchship auto output folder")
    return json.loads(path.read_text())

