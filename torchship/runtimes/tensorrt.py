"""TensorRT's predictor: runs a serialized engine (a ``.plan``). TensorRT 10 or newer only.

Engines are made by :mod:`torchship.optimizers.tensorrt_build` (``torchship tensorrt``, or on first use
of a tensorrt backend, through the record's builder) and cached by :mod:`torchship.optimizers.tensorrt_cache`; this module only
runs them, through Polygraphy's ``TrtRunner``, which speaks TensorRT 10's named-tensor API
(``set_input_shape``, ``execute_async_v3``); the TensorRT 8 binding API is not supported.

Nothing here imports tensorrt, polygraphy or torch at module level, so this module imports on any
machine; asking for the backend where it cannot run raises :class:`BackendUnavailable` saying why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from torchship.errors import ArtifactError, BackendUnavailable, InputError, first_line
from torchship.runtimes.base import Predictor
from torchship.tensors import ModelIO

EXTRA = "torchship[tensorrt]"
MIN_TRT_MAJOR = 10


def gpu_visible() -> bool:
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
    if not gpu_visible():
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


class TensorRTPredictor(Predictor):
    """Runs a serialized TensorRT engine (a ``.plan`` from :func:`build_engine`) through Polygraphy's TrtRunner."""

    backend = "tensorrt"

    def __init__(self, engine_path: Path | None, io: ModelIO, *, engine: Callable[[], Path] | None = None):
        """``engine_path``: a built engine; or ``engine``, called on activation, that finds or builds one."""
        super().__init__(io)
        self.engine_path = Path(engine_path) if engine_path is not None else None
        self._engine = engine
        self._runner = None
        self._bounds: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # input -> (min, max)
        self._dtypes: dict[str, np.dtype] = {}

    def _activate(self) -> None:
        trt = require_tensorrt()
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.exception import PolygraphyException

        if self._engine is not None:
            self.engine_path = Path(self._engine())
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


def engine_predictor(artifact, record, options) -> TensorRTPredictor:
    """The backend table's factory for the tensorrt backends: the record's builder checks the folder now and
    gives what finds the engine in the folder's cache or builds it, called when the predictor is activated."""
    from torchship.backends import Build

    engine = record.step()(Build(artifact), record)
    return TensorRTPredictor(None, artifact.manifest.io(), engine=engine)
