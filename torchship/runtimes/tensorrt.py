"""TensorRT engines: shape profiles, a build cache, and a predictor. TensorRT 10 or newer only.

An engine is built once per (model bytes, shape profiles, precision, GPU, TensorRT version, builder
options) and kept in a cache folder, by default ``DIR/tensorrt/`` beside the export. The build goes
through Polygraphy's loaders (``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork``)
and the predictor through its ``TrtRunner``, which speaks TensorRT 10's named-tensor API
(``set_input_shape``, ``execute_async_v3``); the TensorRT 8 binding API is not supported.

Nothing here imports tensorrt, polygraphy or torch at module level, so this module imports on any
machine; asking for the backend where it cannot run raises :class:`BackendUnavailable` saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship._fs import write_json_atomic
from torchship.errors import ArtifactError, BackendUnavailable, InputError, first_line
from torchship.exporters.spec import ModelIO
from torchship.external_data import data_file_name
from torchship.runtimes.base import Predictor
from torchship.shapes import ResolvedShapes, ShapeConfig, parse_shape_config

EXTRA = "torchship[tensorrt]"
MIN_TRT_MAJOR = 10
CACHE_DIR = "tensorrt"  # the cache folder inside an export folder
TIMING_CACHE = "timing.cache"
PRECISIONS = ("fp16", "bf16", "int8", "tf32")  # flags on top of fp32; "fp32" alone means none of them
KEY_VERSION = 1  # bump when the key's contents change, so old entries are not reused
FLAG_EXAMPLE = "input_ids:1x16,attention_mask:1x16"
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Availability


def _gpu_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _import_tensorrt():
    """(module, problem): the tensorrt module when it is usable, else None and what is wrong."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, "the tensorrt package is not installed"
    version = str(getattr(trt, "__version__", "0"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < MIN_TRT_MAJOR:
        return None, (f"TensorRT {version} is installed, but torchship needs TensorRT >= {MIN_TRT_MAJOR} "
                      "(the TensorRT 8 API of build_cuda_engine, bindings and execute_async_v2 is not supported)")
    return trt, None


def _polygraphy_problem() -> str | None:
    try:
        import polygraphy.backend.trt  # noqa: F401
    except ImportError:
        return "polygraphy is not installed"
    return None


def require_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable naming everything that is missing and the fix."""
    problems = []
    if not _gpu_visible():
        problems.append("no NVIDIA GPU is visible (torch.cuda.is_available() is False)")
    trt, trt_problem = _import_tensorrt()
    packages = [p for p in (trt_problem, _polygraphy_problem()) if p]
    problems.extend(packages)
    if not problems:
        return trt
    fixes = []
    if packages:
        fixes.append(f"pip install '{EXTRA}'" + (" (it brings tensorrt>=10 and polygraphy)" if trt_problem else ""))
    if len(problems) > len(packages):
        fixes.append("run on a machine with an NVIDIA GPU, its driver and a CUDA build of torch")
    raise BackendUnavailable(f"the tensorrt backend cannot run here: {'; '.join(problems)}; "
                             f"to fix: {' and '.join(fixes)}")


def gpu_identity(device: int = 0) -> dict:
    """The GPU an engine is built for: its name and compute capability ("9.0")."""
    if not _gpu_visible():
        raise BackendUnavailable("no NVIDIA GPU is visible (torch.cuda.is_available() is False); TensorRT "
                                 "engines are built for a GPU: run on a machine with one")
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


# ---------------------------------------------------------------------------------------------
# Shape profiles


@dataclass(frozen=True)
class InputProfile:
    """The shapes one input must accept: TensorRT's min, opt (the shape it tunes for) and max."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        for which in ("min", "opt", "max"):
            object.__setattr__(self, which, tuple(int(v) for v in getattr(self, which)))
        if not len(self.min) == len(self.opt) == len(self.max):
            raise InputError(f"profile for {self.name!r} has min, opt and max of different ranks "
                             f"({list(self.min)}, {list(self.opt)}, {list(self.max)})")
        for axis, (a, b, c) in enumerate(zip(self.min, self.opt, self.max)):
            if a < 0 or not a <= b <= c:
                raise InputError(f"profile for {self.name!r} needs 0 <= min <= opt <= max at axis {axis}; "
                                 f"got min {list(self.min)}, opt {list(self.opt)}, max {list(self.max)}")

    def to_json(self) -> dict:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> "InputProfile":
        return cls(data["name"], tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def profiles_from_shapes(resolved: ResolvedShapes, io: ModelIO) -> tuple[InputProfile, ...]:
    """One profile per model input from a resolved shape config; its ``use`` sizes become ``opt``."""
    out = []
    for spec in io.inputs:
        bounds = {"min": [], "opt": [], "max": []}
        for axis in spec.axes:
            if isinstance(axis, int):
                values = (axis, axis, axis)
            elif axis in resolved.axes:
                values = resolved.axes[axis]
            else:
                raise InputError(f"input {spec.name!r} has axis {axis!r}, which the shape config gives no "
                                 f"size for (it names {', '.join(resolved.axes) or 'no axes'}); add {axis} to it")
            for which, value in zip(bounds, values):
                bounds[which].append(value)
        out.append(InputProfile(spec.name, tuple(bounds["min"]), tuple(bounds["opt"]), tuple(bounds["max"])))
    return tuple(out)


def _parse_flag(text: str | None, flag: str) -> dict[str, list[int]]:
    """``"input_ids:1x16,attention_mask:1x16"`` -> {name: [sizes]}."""
    if text is None or not text.strip():
        return {}

    def bad(why: str):
        return InputError(f"{flag} {text!r} is not valid: {why}; write it as {flag} {FLAG_EXAMPLE}")

    out: dict[str, list[int]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name:
            raise bad(f"{item!r} needs NAME:SIZES")
        sizes = [d.strip() for d in dims.lower().split("x")]
        if not all(s.isdigit() for s in sizes):
            raise bad(f"the sizes of {name!r} must be whole numbers joined by x, e.g. 1x16")
        if name in out:
            raise bad(f"input {name!r} is given twice")
        out[name] = [int(s) for s in sizes]
    if not out:
        raise bad("it names no input")
    return out


def shape_config_from_flags(min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None,
                            device: str = "cuda") -> ShapeConfig:
    """trtexec-style ``--min/--opt/--max-shapes`` flags as a shape config (min and max default to opt)."""
    given = {"min": _parse_flag(min_shapes, "--min-shapes"), "use": _parse_flag(opt_shapes, "--opt-shapes"),
             "max": _parse_flag(max_shapes, "--max-shapes")}
    if not any(given.values()):
        raise InputError(f"no shapes given; pass --opt-shapes (and --min-shapes, --max-shapes for a range), "
                         f"e.g. --opt-shapes {FLAG_EXAMPLE}")
    names = list(dict.fromkeys([*given["use"], *given["min"], *given["max"]]))
    inputs = {}
    for name in names:
        if name not in given["use"]:
            raise InputError(f"input {name!r} is in --min-shapes or --max-shapes but not in --opt-shapes; give "
                             f"its opt shape too, e.g. --opt-shapes {name}:1x16")
        inputs[name] = {w: shapes[name] for w, shapes in given.items() if name in shapes}
    return parse_shape_config({"device": device, "inputs": inputs}, source="--min/--opt/--max-shapes")


# ---------------------------------------------------------------------------------------------
# Cache keys and the engine cache


def model_digest(path: Path) -> str:
    """sha256 of an ONNX file and, when it has one, its external data file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} is missing")
    digest = hashlib.sha256()
    for part in (path, path.with_name(data_file_name(path))):
        if not part.is_file():
            continue
        digest.update(f"{part.name}\0{part.stat().st_size}\0".encode())
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def normalize_precision(precision) -> tuple[str, ...]:
    """Sorted, distinct precision flags; "fp32" (TensorRT's base precision) is dropped."""
    if isinstance(precision, str):
        precision = (precision,)
    out = set()
    for p in precision:
        p = str(p).strip().lower()
        if p == "fp32":
            continue
        if p not in PRECISIONS:
            raise InputError(f"unknown TensorRT precision {p!r}; choose from fp32, {', '.join(PRECISIONS)}")
        out.add(p)
    return tuple(sorted(out))


def engine_cache_key(*, model_digest: str, profiles, precision: tuple[str, ...], gpu: dict,
                     trt_version: str, builder_options: dict | None = None) -> str:
    """sha256 of everything an engine depends on, as canonical JSON."""
    payload = {
        "version": KEY_VERSION,
        "model": model_digest,
        "profiles": [[p.name, list(p.min), list(p.opt), list(p.max)] for p in sorted(profiles, key=lambda p: p.name)],
        "precision": list(normalize_precision(precision)),
        "gpu": gpu,
        "tensorrt": str(trt_version),
        "builder": builder_options or {},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class EngineCache:
    """Serialized engines in one folder: ``<key[:16]>.plan`` with ``<key[:16]>.plan.json`` beside it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def beside(cls, export_folder: Path) -> "EngineCache":
        """The default cache of an export folder: ``DIR/tensorrt/``."""
        return cls(Path(export_folder) / CACHE_DIR)

    @property
    def timing(self) -> Path:
        """TensorRT's tactic timing cache, shared by every build in this folder."""
        return self.folder / TIMING_CACHE

    def path_for(self, key: str) -> Path:
        if len(key) < 16 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not an engine cache key: {key!r}")
        return self.folder / f"{key[:16]}.plan"

    def meta_path(self, key: str) -> Path:
        plan = self.path_for(key)
        return plan.with_name(plan.name + ".json")

    def meta(self, key: str) -> dict | None:
        """The entry's meta data, or None when there is no complete entry for exactly this key."""
        try:
            data = json.loads(self.meta_path(key).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) and data.get("key") == key else None

    def get(self, key: str) -> Path | None:
        plan = self.path_for(key)
        return plan if plan.is_file() and self.meta(key) is not None else None

    def put(self, key: str, data: bytes, meta: dict) -> Path:
        """Write the engine, then its meta data, each atomically; the meta file marks the entry complete."""
        plan = self.path_for(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_bytes_atomic(plan, bytes(data))
        write_json_atomic(self.meta_path(key), {**meta, "key": key, "file": plan.name, "bytes": len(data)})
        return plan


# ---------------------------------------------------------------------------------------------
# Building


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    key: str
    seconds: float  # this call: the build, or near zero on a cache hit (the build time is in the meta file)
    from_cache: bool
    precision: tuple[str, ...]
    profiles: tuple[InputProfile, ...]


def _graph_inputs(model) -> dict[str, list[int | None]]:
    """Graph inputs that are not initializers: name -> sizes (None where the size is dynamic)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    return out


def _has_qdq(graph) -> bool:
    """Whether a graph (or any subgraph) holds QuantizeLinear/DequantizeLinear nodes."""
    for node in graph.node:
        if node.op_type in _QDQ_OPS:
            return True
        for attr in node.attribute:
            if attr.HasField("g") and _has_qdq(attr.g):
                return True
            if any(_has_qdq(g) for g in attr.graphs):
                return True
    return False


def _check_profiles(path: Path, model, profiles) -> None:
    graph_inputs = _graph_inputs(model)
    names = [p.name for p in profiles]
    for p in profiles:
        if names.count(p.name) > 1:
            raise InputError(f"input {p.name!r} has more than one profile; give one per input")
        if p.name not in graph_inputs:
            raise InputError(f"profile names input {p.name!r}, which {path.name} does not have; its inputs are "
                             f"{', '.join(graph_inputs)}")
        sizes = graph_inputs[p.name]
        fixed_ok = all(s is None or (a == s and c == s) for s, a, c in zip(sizes, p.min, p.max))
        if len(sizes) != len(p.opt) or not fixed_ok:
            shown = ["?" if s is None else s for s in sizes]
            raise InputError(f"profile for {p.name!r} (min {list(p.min)}, max {list(p.max)}) does not fit its "
                             f"shape {shown} in {path.name}")
    missing = [n for n, sizes in graph_inputs.items() if n not in names and None in sizes]
    if missing:
        raise InputError(f"{path.name} input {missing[0]!r} has dynamic axes but no profile; give min/opt/max "
                         "shapes for every dynamic input")


def _check_calibration(feeds: list[dict], profiles) -> None:
    """TensorRT calibrates at the profile's opt shapes: every batch must have exactly those."""
    if not feeds:
        raise InputError("calibration_feeds is empty; give at least one batch of inputs, or none for a QDQ model")
    for i, feed in enumerate(feeds):
        for p in profiles:
            if p.name not in feed:
                raise InputError(f"calibration batch {i} has no input {p.name!r}")
            shape = tuple(np.shape(feed[p.name]))
            if shape != p.opt:
                raise InputError(f"calibration batch {i} input {p.name!r} has shape {list(shape)}; TensorRT "
                                 f"calibrates at the opt shape {list(p.opt)}")


def _feeds_digest(feeds: list[dict] | None) -> str | None:
    if feeds is None:
        return None
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            arr = np.ascontiguousarray(feed[name])
            digest.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def _check_request(onnx_path: Path, profiles, precision, calibration_feeds, workspace_bytes) -> None:
    """Everything about a build that can be checked without TensorRT."""
    from torchship._ort import load_onnx
    from torchship.external_data import check_locations, external_locations

    model = load_onnx(onnx_path)
    check_locations(onnx_path, external_locations(model))
    if not profiles:
        raise InputError("no shape profiles given; build them with profiles_from_shapes")
    _check_profiles(onnx_path, model, profiles)
    if workspace_bytes is not None and (isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int)
                                        or workspace_bytes <= 0):
        raise InputError(f"workspace_bytes must be a positive number of bytes; got {workspace_bytes!r}")
    if "int8" not in precision:
        return
    if calibration_feeds is None and not _has_qdq(model.graph):
        raise InputError(f"int8 needs calibration: {onnx_path.name} has no QuantizeLinear/DequantizeLinear nodes; "
                         "pass calibration data (calibration_feeds) or a static-int8 (QDQ) model")
    if calibration_feeds is not None:
        _check_calibration(calibration_feeds, profiles)


def build_engine(onnx_path: Path, profiles, *, precision=("fp16",), cache: EngineCache,
                 calibration_feeds: list[dict] | None = None, workspace_bytes: int | None = None,
                 progress: _progress.Progress | None = None) -> BuiltEngine:
    """The engine for this model, profiles and precision on this GPU: from ``cache``, else built and cached."""
    start = time.perf_counter()
    progress = progress or _progress.SILENT
    onnx_path = Path(onnx_path)
    profiles = tuple(profiles)
    precision = normalize_precision(precision)
    _check_request(onnx_path, profiles, precision, calibration_feeds, workspace_bytes)
    trt = require_tensorrt()
    gpu = gpu_identity()
    options = {"workspace_bytes": workspace_bytes, "calibration": _feeds_digest(calibration_feeds)}
    key = engine_cache_key(model_digest=model_digest(onnx_path), profiles=profiles, precision=precision,
                           gpu=gpu, trt_version=trt.__version__, builder_options=options)
    found = cache.get(key)
    if found is not None:
        progress.step(f"TensorRT engine from cache: {found}")
        return BuiltEngine(found, key, time.perf_counter() - start, True, precision, profiles)
    label = "+".join(precision) or "fp32"
    progress.step(f"building a TensorRT {label} engine for {onnx_path.name} on {gpu['name']} (minutes)")
    data, seconds = _build_bytes(trt, onnx_path, profiles, precision, cache, calibration_feeds, workspace_bytes)
    meta = {"onnx": onnx_path.name, "precision": list(precision), "profiles": [p.to_json() for p in profiles],
            "gpu": gpu, "trt_version": trt.__version__, "builder_options": options, "build_seconds": seconds}
    path = cache.put(key, data, meta)
    return BuiltEngine(path, key, time.perf_counter() - start, False, precision, profiles)


def _build_bytes(trt, onnx_path, profiles, precision, cache, calibration_feeds, workspace_bytes):
    """Serialized engine bytes and build seconds, through Polygraphy's loaders (its info lines kept quiet)."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    cache.folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            build = _engine_loader(trt, onnx_path, profiles, precision, cache, calibration_feeds, workspace_bytes)
            data = build()
    except PolygraphyException as exc:
        raise ArtifactError(f"TensorRT cannot build an engine from {onnx_path}: {first_line(exc)}") from None
    return bytes(data), time.perf_counter() - start


def _engine_loader(trt, onnx_path, profiles, precision, cache, calibration_feeds, workspace_bytes):
    """Polygraphy's lazy loader chain: ONNX parser -> builder config (profile, precision, timing cache) -> bytes.

    TF32 stays off unless asked for (Polygraphy clears TensorRT's default), so "fp32" means fp32."""
    from polygraphy.backend.trt import (Calibrator, CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath,
                                        Profile)

    profile = Profile()
    for p in profiles:
        profile.add(p.name, min=p.min, opt=p.opt, max=p.max)
    int8 = "int8" in precision
    config = CreateConfig(
        tf32="tf32" in precision, fp16="fp16" in precision, bf16="bf16" in precision, int8=int8,
        calibrator=Calibrator(calibration_feeds) if int8 and calibration_feeds is not None else None,
        profiles=[profile], load_timing_cache=str(cache.timing),
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes} if workspace_bytes else None,
    )
    return EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config,
                                  save_timing_cache=str(cache.timing))


# ---------------------------------------------------------------------------------------------
# Running


class TensorRTPredictor(Predictor):
    """Runs a serialized TensorRT engine (a ``.plan`` from :func:`build_engine`) through Polygraphy's TrtRunner."""

    backend = "tensorrt"

    def __init__(self, engine_path: Path, io: ModelIO):
        super().__init__(io)
        self.engine_path = Path(engine_path)
        self._runner = None
        self._bounds: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # input -> (min, max)
        self._dtypes: dict[str, np.dtype] = {}

    def _activate(self) -> None:
        trt = require_tensorrt()
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.exception import PolygraphyException

        if not self.engine_path.is_file():
            raise ArtifactError(f"TensorRT engine {self.engine_path} is missing; build it again with build_engine")
        runner = TrtRunner(EngineFromBytes(self.engine_path.read_bytes()))
        try:
            runner.activate()  # deserializes the engine, then makes its execution context
        except PolygraphyException as exc:
            raise ArtifactError(f"TensorRT cannot load the engine {self.engine_path}: {first_line(exc)}; it is "
                                "corrupted or was built by another TensorRT version or for another GPU, rebuild "
                                "it") from None
        try:
            self._read_engine_io(trt, runner.engine)
        except BaseException:
            runner.deactivate()
            raise
        self._runner = runner

    def _read_engine_io(self, trt, engine) -> None:
        """Check the engine's tensors against the model's; keep each input's profile bounds and dtype.

        TensorRT may drop an input the graph never reads; such an input is checked but not fed."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outputs = set(names) - inputs
        if not inputs <= set(self.input_names) or not set(self.output_names) <= outputs:
            raise ArtifactError(f"TensorRT engine {self.engine_path} has inputs {sorted(inputs)} and outputs "
                                f"{sorted(outputs)}; the model has {list(self.input_names)} and "
                                f"{list(self.output_names)}: it was built from another model, rebuild it")
        self._bounds, self._dtypes = {}, {}
        for name in sorted(inputs):
            lo, _, hi = engine.get_tensor_profile_shape(name, 0)
            self._bounds[name] = (tuple(lo), tuple(hi))
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))

    def _infer(self, feeds):
        feeds = {n: a for n, a in feeds.items() if n in self._bounds}
        for name, arr in feeds.items():
            lo, hi = self._bounds[name]
            if not all(a <= s <= b for a, s, b in zip(lo, arr.shape, hi)):
                raise InputError(f"{self.backend}: input {name!r} has shape {list(arr.shape)}; the engine accepts "
                                 f"{list(lo)} to {list(hi)}; rebuild it with a wider profile")
        feeds = {n: np.ascontiguousarray(a, dtype=self._dtypes[n]) for n, a in feeds.items()}
        out = self._runner.infer(feeds)
        # The runner reuses its output buffers between calls: copy them out.
        return {n: np.array(out[n], copy=True) for n in self.output_names}

    def _deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
        self._runner = None


def artifact_profiles(artifact) -> tuple[InputProfile, ...]:
    """Profiles for an exported folder: its shape config (min/use/max) when it has one, else from 1 up to
    the largest of the family's benchmark shapes, optimized for that largest shape."""
    m = artifact.manifest
    spec = m.spec()
    if spec.kind not in ("encoder", "unet"):
        raise InputError(f"{artifact.folder} holds {spec.kind} model; TensorRT engines are built for encoders "
                         "and UNets (decoders with a KV cache are not supported yet)")
    resolved = m.resolved_shapes()
    if resolved is None:
        sizes = spec.bench_sizes(artifact.load_config())
        axes = {a: (1, max(s[a] for s in sizes), max(s[a] for s in sizes)) for a in sizes[0]}
        resolved = ResolvedShapes("cuda", axes, {}, {})
    return profiles_from_shapes(resolved, m.io())


class EngineBackedPredictor(TensorRTPredictor):
    """A folder's model on TensorRT: the engine comes from the folder's engine cache, or is built on
    first activation (minutes) from the export, or from the static int8 (QDQ) variant for int8."""

    def __init__(self, onnx_path: Path, io: ModelIO, profiles, precision, cache: EngineCache,
                 progress: _progress.Progress | None = None):
        super().__init__(cache.folder / "unbuilt.plan", io)
        self.onnx_path = Path(onnx_path)
        self.profiles = tuple(profiles)
        self.precision = normalize_precision(precision)
        self.cache = cache
        self.progress = progress

    @classmethod
    def for_artifact(cls, artifact, precision, progress=None) -> "EngineBackedPredictor":
        precision = normalize_precision(precision)
        source = artifact.path_of("model")  # TensorRT fuses itself and cannot read ORT's contrib ops
        if "int8" in precision:
            int8 = artifact.manifest.variants.get("int8")
            if int8 is None or int8.options.get("method") != "static":
                raise InputError(f"TensorRT int8 needs a static int8 (QDQ) model in {artifact.folder}; make one "
                                 f"with: torchship quantize {artifact.folder} --method static --calibration FILE")
            source = artifact.path_of("int8")
        return cls(source, artifact.manifest.io(), artifact_profiles(artifact), precision,
                   EngineCache.beside(artifact.folder), progress)

    def _activate(self) -> None:
        require_tensorrt()
        built = build_engine(self.onnx_path, self.profiles, precision=self.precision, cache=self.cache,
                             progress=self.progress)
        self.engine_path = built.path
        super()._activate()
