"""Latency measurement that treats every backend alike.

Backends run in alternating blocks, so slow drift of a noisy machine (frequency, neighbours)
lands on all of them equally; a short pause between blocks lets any thread that still spins from
the previous backend go idle before the next one starts.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 5
    min_iterations: int = 30
    min_seconds: float = 2.0  # per backend
    max_iterations: int = 2000
    block: int = 10
    pause_s: float = 0.02


def measure_interleaved(fns: dict[str, Callable[[], object]], plan: TimingPlan,
                        on_block: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Latencies in seconds per name; every function runs at least ``plan.min_iterations`` times."""
    for fn in fns.values():
        for _ in range(plan.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = {name: 0.0 for name in fns}

    def done(name: str) -> bool:
        n = len(times[name])
        return n >= plan.max_iterations or (n >= plan.min_iterations and spent[name] >= plan.min_seconds)

    blocks = 0
    while not all(done(n) for n in fns):
        for name, fn in fns.items():
            if done(name):
                continue
            time.sleep(plan.pause_s)
            for _ in range(plan.block):
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                times[name].append(elapsed)
                spent[name] += elapsed
        blocks += 1
        if on_block:
            finished = sum(done(n) for n in fns)
            on_block(finished, len(fns))
    return times


def cpu_name() -> str:
    """The processor's model name, as /proc/cpuinfo says it (what every timing report names its machine by)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
