"""Benchmark results as plain frozen data; formatting happens only in the reporter."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from torchship.benchmarks.timing import call_stats, cpu_name

# A row whose p90 is this many times its p10 was measured on a busy or drifting machine: say so.
UNSTABLE_SPREAD = 1.5


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of one backend's main output against the reference backend on the same inputs."""

    reference: str
    output: str
    max_abs: float
    mean_abs: float
    cosine_min: float  # worst per-vector cosine (per token for hidden states)
    cosine_mean: float


@dataclass(frozen=True)
class Measurement:
    backend: str
    batch: int
    sequence: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    accuracy: Accuracy | None = None
    phase: str = "encode"  # the family's phase (exporters.spec): encode, prefill, decode, denoise, forward
    past: int = 0
    shape: str = ""  # the case's label, e.g. "batch 1 x 64x64 latents x 77 tokens"
    p10_ms: float | None = None  # None in reports written before torchship measured it
    # each interleaved round's mean (ms), paired by index with the other rows of its case: what the winner rule
    # reads (benchmarks/timing.py); not written to results.json
    rounds_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def key(self) -> tuple:
        """What makes two measurements comparable: the same inputs in the same phase."""
        return (self.batch, self.sequence, self.phase, self.past, self.shape)

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency, counting every row of the batch (for a decode step:
        tokens per second)."""
        return self.batch * 1000.0 / self.p50_ms

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second at the median latency: a prefill's prompt tokens, a decode step's one token,
        times the batch."""
        return self.batch * self.sequence * 1000.0 / self.p50_ms

    @property
    def spread(self) -> float | None:
        """p90 over p10: near 1 on a quiet machine."""
        return self.p90_ms / self.p10_ms if self.p10_ms else None

    @property
    def unstable(self) -> bool:
        return self.spread is not None and self.spread > UNSTABLE_SPREAD

    @classmethod
    def from_latencies(cls, backend: str, batch: int, sequence: int, seconds: list[float],
                       accuracy: Accuracy | None = None, *, phase: str = "forward", past: int = 0,
                       shape: str = "") -> "Measurement":
        ms = np.asarray(seconds) * 1000.0
        p10, p50, p90, p99 = np.percentile(ms, [10, 50, 90, 99])
        return cls(backend, batch, sequence, len(ms), float(p50), float(p90), float(p99),
                   float(ms.mean()), float(ms.min()), accuracy, phase, past, shape, float(p10))

    @classmethod
    def from_rounds(cls, backend: str, batch: int, sequence: int, rounds: list[list[float]],
                    accuracy: Accuracy | None = None, *, phase: str = "forward", past: int = 0,
                    shape: str = "") -> "Measurement":
        """From ``timing.measure_rounds``' rounds of one backend: every call's latency, and each round's mean."""
        m = cls.from_latencies(backend, batch, sequence, [s for r in rounds for s in r], accuracy, phase=phase,
                               past=past, shape=shape)
        return replace(m, rounds_ms=tuple(call_stats(rounds)["rounds_ms"]))

    @property
    def timing(self) -> dict:
        """What the winner rule reads of this row (``timing.winner``): its median and its rounds."""
        return {"median_ms": self.p50_ms, "rounds_ms": list(self.rounds_ms)}


@dataclass(frozen=True)
class Environment:
    cpu: str
    logical_cpus: int
    threads: int
    ort_spinning: str  # run, always or off (torchship._ort.spin_entries)
    versions: dict
    gpu: str | None = None

    @classmethod
    def collect(cls, *, threads: int, spin: str, versions: dict) -> "Environment":
        return cls(cpu=cpu_name(), logical_cpus=os.cpu_count() or 0, threads=threads,
                   ort_spinning=spin, versions=versions, gpu=_gpu_name())


@dataclass(frozen=True)
class BenchReport:
    model: str
    variant_files: dict
    environment: Environment
    settings: dict
    measurements: tuple[Measurement, ...] = field(default_factory=tuple)
    baseline: str = "torch"
    budgets: dict = field(default_factory=dict)  # backend -> accuracy against fp32 when made, and its budget
    # Decoders: per row, bytes on disk of what it loads, its peak memory (benchmarks/memory.py) and, for a
    # weight-only variant, its accuracy judged when it was made; notes say what was left out and why.
    file_bytes: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    judged: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def find(self, backend: str, batch: int, sequence: int, phase: str | None = None) -> Measurement | None:
        """The first measurement of ``backend`` at this batch and sequence (and phase, if given)."""
        for m in self.measurements:
            if (m.backend, m.batch, m.sequence) == (backend, batch, sequence) and phase in (None, m.phase):
                return m
        return None

    def at(self, backend: str, key: tuple) -> Measurement | None:
        return next((m for m in self.measurements if m.backend == backend and m.key == key), None)

    def speedup(self, m: Measurement) -> float | None:
        """Median latency of the baseline over this backend's median, at the same inputs and phase."""
        base = self.at(self.baseline, m.key)
        return None if base is None else base.p50_ms / m.p50_ms

    def keys(self) -> list[tuple]:
        """The distinct inputs measured (Measurement.key), in order."""
        seen = []
        for m in self.measurements:
            if m.key not in seen:
                seen.append(m.key)
        return seen

    def backends(self) -> list[str]:
        seen = []
        for m in self.measurements:
            if m.backend not in seen:
                seen.append(m.backend)
        return seen

    @classmethod
    def from_json(cls, data: dict) -> "BenchReport":
        """A report read back from its results.json (to re-plot or compare runs)."""
        fields = set(Measurement.__dataclass_fields__)  # derived keys (throughput, spread) are recomputed
        rows = []
        for row in data["measurements"]:
            acc = row.get("accuracy")
            rows.append(Measurement(**{**{k: v for k, v in row.items() if k in fields},
                                       "accuracy": Accuracy(**acc) if acc else None}))
        return cls(data["model"], data["variant_files"], Environment(**data["environment"]), data["settings"],
                   tuple(rows), data.get("baseline", "torch"), data.get("budgets", {}), data.get("file_bytes", {}),
                   data.get("peak_memory", {}), data.get("judged", {}), tuple(data.get("notes", ())))

    def to_json(self) -> dict:
        rows = []
        for m in self.measurements:
            row = asdict(m)
            del row["rounds_ms"]
            row["throughput_samples_per_s"] = m.throughput
            if m.phase in ("prefill", "decode"):
                row["tokens_per_s"] = m.tokens_per_s
            row["p90_over_p10"] = m.spread
            row["unstable"] = m.unstable
            row["speedup_vs_" + self.baseline] = self.speedup(m)
            rows.append(row)
        return {"model": self.model, "variant_files": self.variant_files,
                "environment": asdict(self.environment), "settings": self.settings,
                "baseline": self.baseline, "budgets": self.budgets, "file_bytes": self.file_bytes,
                "peak_memory": self.peak_memory, "judged": self.judged, "notes": list(self.notes),
                "measurements": rows}


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not break a CPU benchmark
        return None
    return None
