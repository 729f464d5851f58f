"""ONNX Runtime predictor (CPU, or the CUDA provider when asked for and present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship._ort import BATCH_SHARDS, SESSION_TUNINGS, cuda_index, make_session, usable_cpus
from torchship._shards import BatchShards, batch_axes, shardable, splits
from torchship.errors import InputError
from torchship.runtimes.base import Predictor
from torchship.tensors import BATCH, SEQUENCE
from torchship.backends import backend_of_variant


class OrtPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, io, *, threads: int | None = None,
                 spin: str = "run", session_level: str = "all", device: str = "cpu",
                 disabled_optimizers: tuple[str, ...] = (), fix: str = "re-run torchship export",
                 tuning: str = "default"):
        super().__init__(io)
        self.fix = fix
        self.tuning = tuning
        self.disabled_optimizers = tuple(disabled_optimizers)
        self.path = Path(path)
        self.threads = threads
        self.spin = spin
        self.session_level = session_level
        self.device = device
        self._session = None
        self._shards: BatchShards | None = None
        self._whole = None  # batch-shards: the session for a batch that does not cut evenly, opened when one comes

    def _open(self, tuning: str):
        return make_session(self.path, threads=self.threads, spin=self.spin, level=self.session_level,
                            device=self.device, disabled_optimizers=self.disabled_optimizers, fix=self.fix,
                            tuning=tuning)

    def _activate(self) -> None:
        shards = self.threads or usable_cpus()
        if self.tuning != BATCH_SHARDS:
            self._session = self._open(self.tuning)
        elif shards < 2 or not shardable(self.io):  # nothing to cut: the whole batch on every thread
            self._session = self._open("default")
        else:
            self._session = self._open(BATCH_SHARDS)
            self._shards = BatchShards(self._session, shards, batch_axes(self.io.inputs),
                                       batch_axes(self.io.outputs))

    def _infer(self, feeds):
        names = self.output_names
        if self._shards is None:  # the common case first, and nothing more per call than it needs
            return dict(zip(names, self._session.run(names, feeds)))
        if splits(self._shards.batch_of(feeds), self._shards.shards):
            return dict(zip(names, self._shards.run(names, feeds)))
        if self._whole is None:
            self._whole = self._open("default")
        return dict(zip(names, self._whole.run(names, feeds)))

    def _deactivate(self) -> None:
        if self._shards is not None:
            self._shards.close()
        self._session = self._whole = self._shards = None


class OrtCudaPredictor(OrtPredictor):
    """ONNX Runtime on the CUDA provider with IO binding: inputs copied to the GPU once per run, outputs
    left on the GPU until the run ends, then copied back (what a GPU server does per request)."""

    backend = "onnxruntime-cuda"

    def __init__(self, path: Path, io, *, threads: int | None = None, device: str = "cuda",
                 fix: str = "re-run torchship export"):
        super().__init__(path, io, threads=threads, device=device, fix=fix)
        self.device_id = cuda_index(device) or 0

    def _infer(self, feeds):
        binding = self._session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self._session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return {n: np.asarray(v) for n, v in zip(self.output_names, values)}


def _session_of(artifact, record, variant: str, graph: str | None = None) -> dict:
    """Where a variant's file (or its graph ``graph``) is and how ORT runs it, with the command that remakes it."""
    from torchship.runtimes import graph_io

    return {"path": artifact.graph_path(variant, graph) if graph else artifact.path_of(variant),
            "io": graph_io(artifact, variant, graph), "fix": "re-run " + record.make_command(artifact.folder)}


def ort_predictor(artifact, record, options, tuning: str = "default") -> OrtPredictor:
    """The table's factory for ONNX Runtime CPU backends: the variant's file at the level it was saved for
    (``tuning``: the session settings a dispatch table chose, _ort.SESSION_TUNINGS)."""
    from torchship.runtimes import require_variant

    name = require_variant(artifact, record)
    variant = artifact.manifest.variants[name]
    return OrtPredictor(**_session_of(artifact, record, name, options.graph), threads=options.threads, spin=options.spin,
                        device=options.device, session_level=variant.options.session_level or "all",
                        disabled_optimizers=variant.options.disabled_optimizers, tuning=tuning)


class OrtMeasuredPredictor(Predictor):
    """Per call, the fp32 variant and session settings the folder's dispatch table names for the call's
    batch x sequence (measured by torchship optimize); each session is loaded the first time a call needs it."""

    backend = "onnxruntime-measured"

    def __init__(self, artifact, record, options):
        super().__init__(artifact.manifest.io())
        self.table = artifact.manifest.dispatch
        used = self.table.choices()
        missing = [n for n, _ in used if n not in artifact.manifest.variants]
        if missing:
            raise InputError(f"{artifact.folder}: the dispatch table names variant {missing[0]!r}, which the folder "
                             f"no longer has; run: {record.make_command(artifact.folder)}")
        unknown = [t for _, t in used if t not in SESSION_TUNINGS]
        if unknown:  # a hand-edited table, or one a newer torchship wrote
            raise InputError(f"{artifact.folder}: the dispatch table names session tuning {unknown[0]!r}, which this "
                             f"torchship does not know ({', '.join(SESSION_TUNINGS)}); run: "
                             f"{record.make_command(artifact.folder)}")
        self.variants = {(n, t): ort_predictor(artifact, backend_of_variant(n), options, tuning=t) for n, t in used}
        self.axes = _batch_sequence_axes(self.io)
        self.last_variant: str | None = None  # which variant ran the last call
        self.last_session: str | None = None  # with which session tuning (_ort.SESSION_TUNINGS)
        self._ran: dict[str, None] = {}  # every variant a call has run, in the order first used

    def choice_for(self, feeds) -> tuple[str, str]:
        """(variant, session tuning) the table names for these feeds' batch x sequence."""
        (name, b_axis), (_, s_axis) = self.axes
        shape = feeds[name].shape  # checked feeds: arrays
        return self.table.choice(shape[b_axis], 0 if s_axis is None else shape[s_axis])

    def variant_for(self, feeds) -> str:
        return self.choice_for(feeds)[0]

    def _activate(self) -> None:
        pass  # sessions load on first use

    def _infer(self, feeds):
        choice = self.choice_for(feeds)
        predictor = self.variants[choice].activate()
        self.last_variant, self.last_session = choice
        self._ran[choice[0]] = None
        return predictor._infer(feeds)  # feeds were checked once, by this predictor

    def _deactivate(self) -> None:
        for predictor in self.variants.values():
            predictor.deactivate()

    @property
    def ran(self) -> tuple[str, ...]:
        """The variants calls have run (each one's session was loaded by the first of them)."""
        return tuple(self._ran)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The variants whose sessions are loaded now."""
        return tuple(dict.fromkeys(n for (n, _), p in self.variants.items() if p.active))


def _batch_sequence_axes(io) -> tuple[tuple[str, int], tuple[str, int | None]]:
    """(input name, axis index) of the batch and of the sequence axis: where a call's shape is read. A model
    whose inputs have no sequence axis (images at one size) reads its sequence as 0 (axis None), as its table
    was measured."""
    for spec in io.inputs:
        if BATCH in spec.axes and SEQUENCE in spec.axes:
            return (spec.name, spec.axes.index(BATCH)), (spec.name, spec.axes.index(SEQUENCE))
    if not any(SEQUENCE in spec.axes for spec in io.inputs):
        spec = next((s for s in io.inputs if BATCH in s.axes), None)
        if spec is not None:
            return (spec.name, spec.axes.index(BATCH)), (spec.name, None)
    raise InputError("the model has no input with batch and sequence axes; a dispatch table cannot apply")


def ort_measured_predictor(artifact, record, options) -> Predictor:
    """The table's factory for ort-measured: the dispatch table's variants, or, for a folder without a table
    or a non-CPU device, the single most optimized validated variant."""
    if not artifact.manifest.dispatch or options.graph or options.device not in ("cpu", "auto") or \
            (options.device == "auto" and "CUDAExecutionProvider" in _available_providers()):
        return ort_predictor(artifact, backend_of_variant(artifact.best_variant()), options)
    return OrtMeasuredPredictor(artifact, record, options)


ort_predictor.runs_graphs = True  # create_predictor: it runs one graph of a variant of several
ort_measured_predictor.runs_graphs = True


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def ort_cuda_predictor(artifact, record, options) -> "OrtCudaPredictor":
    from torchship.runtimes import require_variant

    name = require_variant(artifact, record)
    device = options.device if options.device.startswith("cuda") else "cuda"
    return OrtCudaPredictor(**_session_of(artifact, record, name), threads=options.threads, device=device)
