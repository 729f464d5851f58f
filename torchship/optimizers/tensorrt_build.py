"""Building TensorRT engines: ONNX -> engine through Polygraphy's loaders, cached, on first use.

The build goes ``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork`` (TensorRT 10
API). ``engine_step`` is the backend table's builder for the tensorrt backends: what finds the engine in the
folder's cache or builds it, which their predictor (``runtimes.tensorrt.engine_predictor``) calls on activation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship.errors import ArtifactError, BackendUnavailable, InputError, first_line
from torchship.optimizers.tensorrt_cache import EngineCache, engine_cache_key, model_digest, normalize_precision
from torchship.optimizers.tensorrt_profiles import InputProfile, artifact_profiles
from torchship.runtimes.tensorrt import gpu_visible, require_tensorrt

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def gpu_identity(device: int = 0) -> dict:
    """The GPU an engine is built for: its name and compute capability ("9.0")."""
    if not gpu_visible():
        raise BackendUnavailable("no NVIDIA GPU is visible (torch.cuda.is_available() is False); TensorRT "
                                 "engines are built for a GPU: run on a machine with one")
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


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
    from torchship.onnx_io import load_onnx
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


def engine_source(artifact, precision) -> Path:
    """The ONNX file an engine is built from: the plain export (TensorRT fuses itself and cannot read ORT's
    contrib ops), or for int8 the folder's static int8 (QDQ) variant."""
    if "int8" in normalize_precision(precision):
        int8 = artifact.manifest.variants.get("int8")
        options = int8.options if int8 is not None else None
        if options is None or options.method != "static" or (options.quant_format or "qdq") != "qdq":  # QOperator: not read
            raise InputError(f"TensorRT int8 needs a static int8 (QDQ) model in {artifact.folder}; make one "
                             f"with: torchship quantize {artifact.folder} --method static --calibration FILE "
                             "--quant-format qdq")
        return artifact.path_of("int8")
    return artifact.path_of("model")


def engine_for_artifact(artifact, precision, profiles=None, progress=None) -> BuiltEngine:
    """The engine for a folder's model at ``precision``: from ``DIR/tensorrt/``, else built (minutes)."""
    source = engine_source(artifact, precision)
    return build_engine(source, profiles or artifact_profiles(artifact), precision=precision,
                        cache=EngineCache.beside(artifact.folder), progress=progress)


def engine_step(build, record):
    """The tensorrt backends' builder: checks now that the folder can make the engine (a missing int8 (QDQ)
    variant fails here, not at activation) and returns what finds it in the folder's cache or builds it (minutes);
    the predictor calls that on activation. Nothing is written to the manifest."""
    artifact, flags = build.artifact, record.engine_flags
    engine_source(artifact, flags)
    profiles = artifact_profiles(artifact)
    return lambda: engine_for_artifact(artifact, flags, profiles, progress=build.progress).path
