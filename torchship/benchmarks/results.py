"""Benchmark results as plain frozen data; formatting happens only in the reporter."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field

import numpy as np


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
    phase: str = "forward"  # "forward" for encoders; "prefill" or "decode" for decoders
    past: int = 0

    @property
    def throughput(self) -> float:
        """Samples per second counting every row of the batch (for a decode step: tokens per second)."""
        return self.batch * 1000.0 / self.mean_ms

    @classmethod
    def from_latencies(cls, backend: str, batch: int, sequence: int, seconds: list[float],
                       accuracy: Accuracy | None = None, *, phase: str = "forward", past: int = 0) -> "Measurement":
        ms = np.asarray(seconds) * 1000.0
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(backend, batch, sequence, len(ms), float(p50), float(p90), float(p99),
                   float(ms.mean()), float(ms.min()), accuracy, phase, past)


@dataclass(frozen=True)
class Environment:
    cpu: str
    logical_cpus: int
    threads: int
    ort_spinning: bool
    versions: dict
    gpu: str | None = None

    @classmethod
    def collect(cls, *, threads: int, spin: bool, versions: dict) -> "Environment":
        return cls(cpu=_cpu_name(), logical_cpus=os.cpu_count() or 0, threads=threads,
                   ort_spinning=spin, versions=versions, gpu=_gpu_name())


@dataclass(frozen=True)
class BenchReport:
    model: str
    variant_files: dict
    environment: Environment
    settings: dict
    measurements: tuple[Measurement, ...] = field(default_factory=tuple)
    baseline: str = "torch"

    def find(self, backend: str, batch: int, sequence: int, phase: str = "forward") -> Measurement | None:
        for m in self.measurements:
            if (m.backend, m.batch, m.sequence, m.phase) == (backend, batch, sequence, phase):
                return m
        return None

    def speedup(self, m: Measurement) -> float | None:
        """Median latency of the baseline over this backend's median, at the same shape and phase."""
        base = self.find(self.baseline, m.batch, m.sequence, m.phase)
        return None if base is None else base.p50_ms / m.p50_ms

    def shapes(self) -> list[tuple[int, int]]:
        seen = []
        for m in self.measurements:
            if (m.batch, m.sequence) not in seen:
                seen.append((m.batch, m.sequence))
        return seen

    def backends(self) -> list[str]:
        seen = []
        for m in self.measurements:
            if m.backend not in seen:
                seen.append(m.backend)
        return seen

    def to_json(self) -> dict:
        rows = []
        for m in self.measurements:
            row = asdict(m)
            row["throughput_samples_per_s"] = m.throughput
            row["speedup_vs_" + self.baseline] = self.speedup(m)
            rows.append(row)
        return {"model": self.model, "variant_files": self.variant_files,
                "environment": asdict(self.environment), "settings": self.settings,
                "baseline": self.baseline, "measurements": rows}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not break a CPU benchmark
        return None
    return None
