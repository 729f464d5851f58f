"""ONNX Runtime sessions made one way everywhere: threads, spinning, providers, clear errors."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from torchship._hugepages import new_memory
from torchship.errors import ArtifactError, BackendUnavailable, first_line
from torchship.external_data import check_file, data_file_name

GRAPH_LEVELS = ("disabled", "basic", "extended", "all")


def graph_level(name: str):
    import onnxruntime as ort

    return {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[name]


SPIN_MODES = ("run", "always", "off")


def spin_entries(spin: str) -> dict[str, str]:
    """ORT session config entries for a spinning mode.

    ``run`` (torchship's default): worker threads spin between the operators of a run, so that waking them
    costs nothing, and stop as soon as the run returns (ORT's ``session.force_spinning_stop``). ``always``:
    ORT's own default, threads keep spinning for a while after each run and hold a core; in a benchmark
    that alternates backends they slow the next backend down. ``off``: threads sleep between operators,
    which costs a wake-up per parallel operator (docs/measurements.md#spinning).
    """
    if spin not in SPIN_MODES:
        raise ValueError(f"spin must be one of {SPIN_MODES}, got {spin!r}")
    return {"session.intra_op.allow_spinning": "0" if spin == "off" else "1",
            "session.force_spinning_stop": "1" if spin == "run" else "0"}


def spin_label(spin) -> str:
    """How a report names a spinning mode (older manifests and results recorded a bool)."""
    return {"run": "during each run, stopped after it", "always": "on, also after each run",
            "off": "off", True: "on, also after each run", False: "off"}.get(spin, str(spin))


# Session settings the measured dispatch may choose per shape (optimizers/dispatch.py), each timed against
# ORT's defaults before it is used. dynamic-blocks: parallel loops hand out shrinking blocks of work instead of
# one fixed block per thread, so a thread that starts late does not leave the others waiting at the end of each
# operator; faster at small shapes, level at larger ones (docs/measurements.md#dynamic-blocks).
# batch-shards: the session gets one intra-op thread and the caller cuts a batch into as many equal parts as it has
# threads, run side by side (torchship/_shards.py); no config entry of its own.
BATCH_SHARDS = "batch-shards"
SESSION_TUNINGS: dict[str, dict[str, str]] = {
    "default": {},
    "dynamic-blocks": {"session.dynamic_block_base": "2"},
    BATCH_SHARDS: {},
}


def session_options(*, threads: int | None = None, spin: str = "run", level: str = "all",
                    optimized_model_path: Path | None = None, tuning: str = "default"):
    """Session options with intra-op ``threads`` (None: ORT's default; one for ``batch-shards``), spinning as
    ``spin`` says (:func:`spin_entries`) and the settings of ``tuning`` (:data:`SESSION_TUNINGS`)."""
    import onnxruntime as ort

    if tuning not in SESSION_TUNINGS:
        raise ValueError(f"tuning must be one of {tuple(SESSION_TUNINGS)}, got {tuning!r}")
    so = ort.SessionOptions()
    if tuning == BATCH_SHARDS:
        threads = 1  # the shards are the parallelism
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    for key, value in {**spin_entries(spin), **SESSION_TUNINGS[tuning]}.items():
        so.add_session_config_entry(key, value)
    so.graph_optimization_level = graph_level(level)
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    so.log_severity_level = 3
    return so


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity): the threads torchship uses when none are given
    (ORT's own default counts physical cores)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cuda_index(device: str) -> int | None:
    """The GPU index of ``cuda`` (0) or ``cuda:N``; None for any other device name."""
    index = device[len("cuda:"):] if device.startswith("cuda:") else "0" if device == "cuda" else None
    return int(index) if index is not None and index.isdigit() else None


def providers_for(device: str) -> list:
    """ORT providers for ``device``: auto, cpu, cuda or cuda:N (a shape config's device)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = cuda_index(device)
    if index is not None:
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(
                f"device {device} was asked for, but the CUDA execution provider is not available "
                "(onnxruntime-gpu and a GPU are needed); pip install 'torchship[gpu]' on a machine with an "
                "NVIDIA GPU, or use device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise BackendUnavailable(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def make_session(path: Path, *, threads: int | None = None, spin: str = "run", level: str = "all",
                 device: str = "cpu", optimized_model_path: Path | None = None,
                 disabled_optimizers: tuple[str, ...] = (), fix: str = "re-run torchship export",
                 tuning: str = "default", huge_pages: bool = True):
    """An ORT session for ``path`` (``tuning``: :data:`SESSION_TUNINGS`); ``disabled_optimizers`` names ORT graph transformers to skip (a variant
    records them when it was measured faster without, e.g. SkipLayerNormFusion). ``fix`` names the
    command that makes the file again, for the error of a missing or corrupted file. On the CPU the weights go on
    huge pages (``huge_pages``, :mod:`torchship._hugepages`)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} is missing; {fix}")
    external = bool(check_file(path, fix=fix))  # refuses data files outside the folder, before ORT reads any
    so = session_options(threads=threads, spin=spin, level=level, optimized_model_path=optimized_model_path,
                         tuning=tuning)
    if optimized_model_path is not None and external:
        # A large model saved after optimization keeps its weights in one data file beside it.
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    data_file_name(optimized_model_path))
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
        providers = providers_for(device)
        on_cpu = providers == ["CPUExecutionProvider"]
        with new_memory() if on_cpu and huge_pages else nullcontext():  # weights on huge pages: _hugepages.py
            return ort.InferenceSession(str(path), so, providers=providers, **extra)
    except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {first_line(exc)}; "
                            f"the file is corrupted or incomplete, {fix}") from None


def run_errors() -> tuple[type[BaseException], ...]:
    """What ONNX Runtime raises when a session cannot be made or run (its own classes derive from Exception
    alone)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (RuntimeError, *(getattr(state, n) for n in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel",
                                                        "EngineError", "RuntimeException", "InvalidProtobuf",
                                                        "NotImplemented", "InvalidGraph", "EPFail")
                            if hasattr(state, n)))


def ort_runner(path: Path, *, threads: int | None = None, disabled_optimizers: tuple[str, ...] = (),
               fix: str = "re-run torchship export"):
    """A function feeds -> {output name: array} over one session of ``path``; feeds may hold extra names."""
    session = make_session(path, threads=threads, disabled_optimizers=disabled_optimizers, fix=fix)
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    return lambda feeds: dict(zip(names, session.run(names, {n: feeds[n] for n in inputs})))


