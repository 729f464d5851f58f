"""One row per swept variant, its status, the whole run's report, and the choice of the fastest variant
within the budget (by the winner rule of ``benchmarks/timing.py``). Numbers stay numbers here; the reporters in
:mod:`torchship.auto.summary` format them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

from torchship.benchmarks.timing import winner
from torchship.errors import BudgetError, first_line
from torchship.backends import Backend, records

__all__ = ["AutoReport", "Row", "Status", "choose"]


class Status(str, Enum):
    OK = "ok"
    SKIPPED = "skipped"  # does not fit the device, the precisions or the model
    FAILED = "failed"  # could not be built or run
    BELOW_BUDGET = "below budget"  # built and run, but misses the accuracy budget


@dataclass
class Row:
    backend: str
    precision: str
    device: str
    runtime: str
    made_by: str
    status: Status = Status.OK
    reason: str = ""  # why a row is not OK, one line
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

    @classmethod
    def of(cls, record: Backend) -> Row:
        """A fresh row, still in the running, for a backend of the table."""
        return cls(record.name, record.precision, record.device, record.runtime, record.made_by)

    @property
    def usable(self) -> bool:
        return self.status is Status.OK

    @property
    def status_text(self) -> str:
        """What every summary shows: "ok", "skipped: device is cpu", "below budget: ...", "failed: ..."."""
        return f"{self.status.value}: {self.reason}" if self.reason else self.status.value

    def skip(self, why: str) -> None:
        """Take the row out of the running, unless it is out already (the first reason stands)."""
        if self.usable:
            self.status, self.reason = Status.SKIPPED, why

    def fail(self, exc: BaseException) -> None:
        """A build or run error: below budget when a variant missed its accuracy budget, else failed."""
        if self.usable:
            self.status = Status.BELOW_BUDGET if isinstance(exc, BudgetError) else Status.FAILED
            self.reason = first_line(exc)

    def to_json(self) -> dict:
        return {**asdict(self), "status": self.status_text, "reason": self.reason}


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
    name: str = ""  # what the reports call the model (its card's title, else its folder); ``model`` is as given
    # backend -> what the winner rule reads of its benchmark (Measurement.timing: median and rounds); not written
    timings: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        from torchship.benchmarks.report import display_name

        return self.name or display_name(self.model)

    def to_json(self) -> dict:
        return {"model": self.model, "name": self.title, "config": self.config, "shape": self.shape, "budget": self.budget,
                "chosen": self.chosen, "torch_p50_ms": self.torch_p50_ms, "seconds": round(self.seconds, 1),
                "environment": self.environment, "variants": [r.to_json() for r in self.rows]}


def choose(report: AutoReport) -> None:
    """Mark the fastest timed variant still in the running (so within the budget) as the chosen one, by the winner
    rule (``timing.winner``, docs/reference.md "How optimize chooses"): the earliest in the backend table's
    preference order, then the table's order, that the fastest does not clearly beat."""
    timed = {r.backend: r for r in report.rows if r.usable and r.p50_ms is not None}
    if timed:
        times = {name: report.timings.get(name) or {"median_ms": r.p50_ms, "rounds_ms": []}
                 for name, r in timed.items()}
        ranked = sorted((b for b in records() if b.preference is not None), key=lambda b: b.preference)
        name = winner(times, tuple(b.name for b in ranked))[0]
        timed[name].chosen = True
        report.chosen = name
