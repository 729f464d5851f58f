"""The measured dispatch table, as the manifest keeps it (``Manifest.dispatch``): which fp32 variant, with which
session tuning, runs which (batch, sequence) range on this machine. ``optimizers/dispatch.py`` measures it (how:
its docstring); this module is its one reader (``from_json``), its one writer (``to_json``) and the lookups every
reader uses (``choice``, ``variant_at``, ``most_wins``).

A table holds the candidates timed (the ``excluded`` ones with the reason, the ``same_as`` ones timed under an
identical file's name), per measured shape every runner's timing in the screen and in the final with the winner,
and the ranges of shapes each winner serves. Tables of version 1 have no final and no session tunings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT = "default"  # ORT's own session settings (_ort.SESSION_TUNINGS)


def runner_key(variant: str, tuning: str) -> str:
    """How the final names a variant run with a session tuning: the variant alone for ORT's defaults."""
    return variant if tuning == DEFAULT else f"{variant}@{tuning}"


def split_key(key: str) -> tuple[str, str]:
    variant, _, tuning = key.partition("@")
    return variant, tuning or DEFAULT


@dataclass(frozen=True)
class RoundTimes:
    """One runner's timing at one shape, over interleaved rounds (optimizers/rounds.round_stats)."""

    median_ms: float
    p10_ms: float | None = None
    p90_ms: float | None = None
    spread: float | None = None  # p90 / p10
    rounds: int | None = None
    rounds_ms: tuple[float, ...] | None = None  # each round; a saved table keeps them in its side file

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "spread": self.spread,
                "rounds": self.rounds, **({"rounds_ms": list(self.rounds_ms)} if self.rounds_ms is not None else {})}

    @classmethod
    def from_json(cls, data: dict) -> "RoundTimes":
        rounds_ms = data.get("rounds_ms")
        return cls(median_ms=data["median_ms"], p10_ms=data.get("p10_ms"), p90_ms=data.get("p90_ms"),
                   spread=data.get("spread"), rounds=data.get("rounds"),
                   rounds_ms=tuple(rounds_ms) if rounds_ms is not None else None)


def _times_json(times: dict[str, RoundTimes]) -> dict:
    return {k: t.to_json() for k, t in times.items()}


def _times(data: dict | None) -> dict[str, RoundTimes]:
    return {k: RoundTimes.from_json(t) for k, t in (data or {}).items()}


@dataclass(frozen=True)
class Settled:
    """A final's fastest runner and the kept one, run head to head for more rounds (optimizers/rounds.settle)."""

    between: tuple[str, str]
    rounds: int
    winner: str


@dataclass(frozen=True)
class ShapeTimes:
    """One measured shape: every candidate in the screen (ORT's default session; batch shards too where they
    apply), the final's runners (``runner_key`` names), the winner and its session tuning."""

    batch: int
    sequence: int
    times: dict[str, RoundTimes]
    winner: str
    final: dict[str, RoundTimes] = field(default_factory=dict)
    session: str = DEFAULT
    runner_up: str | None = None  # a runner_key
    ratio: float | None = None  # the runner-up's median over the winner's
    settled: Settled | None = None

    @property
    def winner_key(self) -> str:
        return runner_key(self.winner, self.session)

    def timing(self, key: str) -> RoundTimes:
        """A runner's timing here: the final's where it ran in the final, else the screen's."""
        return self.final.get(key) or self.times[split_key(key)[0]]

    def to_json(self) -> dict:
        settled = None if self.settled is None else {
            "between": list(self.settled.between), "rounds": self.settled.rounds, "winner": self.settled.winner}
        return {"batch": self.batch, "sequence": self.sequence, "times": _times_json(self.times),
                "final": _times_json(self.final), "winner": self.winner, "session": self.session,
                "runner_up": self.runner_up, "ratio": self.ratio, "settled": settled}

    @classmethod
    def from_json(cls, data: dict) -> "ShapeTimes":
        s = data.get("settled")
        return cls(batch=data["batch"], sequence=data["sequence"], times=_times(data["times"]), winner=data["winner"],
                   final=_times(data.get("final")), session=data.get("session", DEFAULT),
                   runner_up=data.get("runner_up"), ratio=data.get("ratio"),
                   settled=Settled(tuple(s["between"]), s["rounds"], s["winner"]) if s else None)


@dataclass(frozen=True)
class ShapeRange:
    """The shapes one winner serves: ``batch`` and ``sequence`` as (lo, hi), hi None for no upper bound."""

    batch: tuple[int, int | None]
    sequence: tuple[int, int | None]
    variant: str
    session: str = DEFAULT  # tables before version 2 name no tuning
    measured_at: tuple[int, int] | None = None  # the (batch, sequence) it was judged at

    def holds(self, batch: int, sequence: int) -> bool:
        (b_lo, b_hi), (s_lo, s_hi) = self.batch, self.sequence
        return b_lo <= batch <= (b_hi or batch) and s_lo <= sequence <= (s_hi or sequence)

    def to_json(self) -> dict:
        return {"batch": list(self.batch), "sequence": list(self.sequence), "variant": self.variant,
                "session": self.session, **({"measured_at": list(self.measured_at)} if self.measured_at else {})}

    @classmethod
    def from_json(cls, data: dict) -> "ShapeRange":
        at = data.get("measured_at")
        return cls(batch=tuple(data["batch"]), sequence=tuple(data["sequence"]), variant=data["variant"],
                   session=data.get("session", DEFAULT), measured_at=tuple(at) if at else None)


@dataclass(frozen=True)
class Candidate:
    """A variant the table timed: its file and validation; an approximate one says so, with its cosine."""

    file: str
    passed: bool | None = None
    max_abs: float | None = None
    approximate: str | None = None
    min_cosine: float | None = None
    judged_by: str | None = None

    def to_json(self) -> dict:
        validation = {"passed": self.passed, "max_abs": self.max_abs}
        if self.approximate:
            validation.update(min_cosine=self.min_cosine, judged_by=self.judged_by)
        return {"file": self.file, "validation": validation,
                **({"approximate": self.approximate} if self.approximate else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Candidate":
        v = data.get("validation") or {}
        return cls(file=data["file"], passed=v.get("passed"), max_abs=v.get("max_abs"),
                   approximate=data.get("approximate"), min_cosine=v.get("min_cosine"), judged_by=v.get("judged_by"))


@dataclass(frozen=True)
class Machine:
    cpu: str | None = None
    threads: int | None = None
    spin: str | bool = False  # how ORT's threads spun while timed (_ort.spin_label)


@dataclass(frozen=True)
class Plan:
    """How the table was timed (optimizers/dispatch.DispatchPlan, as recorded)."""

    margin: float
    max_rounds: int
    min_rounds: int | None = None
    seconds_per_shape: float | None = None
    sample_s: float | None = None
    finalists: int | None = None  # None: a table before version 2, without a final
    final_rounds: int | None = None
    final_max_rounds: int | None = None
    tunings: dict[str, dict] = field(default_factory=dict)  # session tuning -> its settings


_PLAN = ("margin", "max_rounds", "min_rounds", "seconds_per_shape", "sample_s", "finalists", "final_rounds",
         "final_max_rounds", "tunings")


@dataclass(frozen=True)
class DispatchTable:
    candidates: dict[str, Candidate]
    shapes: tuple[ShapeTimes, ...]
    ranges: tuple[ShapeRange, ...]
    machine: Machine
    plan: Plan
    version: int = 2
    grid: str = "default"  # "shape config": the shape config's min/use/max; else the default grid
    excluded: dict[str, str] = field(default_factory=dict)  # variant -> why it was not timed
    same_as: dict[str, str] = field(default_factory=dict)  # variant -> the name its identical file was timed under
    rounds_file: str | None = None  # the side file beside the manifest with every round's time

    def range_at(self, batch: int, sequence: int) -> ShapeRange | None:
        return next((r for r in self.ranges if r.holds(batch, sequence)), None)

    def choice(self, batch: int, sequence: int) -> tuple[str, str]:
        """(variant, session tuning) for a call of ``batch`` x ``sequence``: the range that holds it. The ranges
        cover every shape; a hand-edited table with a hole gives the overall winner, never an error mid-request."""
        r = self.range_at(batch, sequence)
        return (r.variant, r.session) if r is not None else (self.most_wins(), DEFAULT)

    def variant_at(self, batch: int, sequence: int) -> str:
        return self.choice(batch, sequence)[0]

    def choices(self) -> tuple[tuple[str, str], ...]:
        """Every (variant, session tuning) a range names, once each."""
        return tuple(dict.fromkeys((r.variant, r.session) for r in self.ranges))

    def most_wins(self) -> str:
        """The variant that won the most measured shapes (ties: the one listed first among the candidates)."""
        wins = [s.winner for s in self.shapes]
        order = list(self.candidates)
        return max(order, key=lambda name: (wins.count(name), -order.index(name)))

    def shape(self, batch: int, sequence: int) -> ShapeTimes | None:
        return next((s for s in self.shapes if (s.batch, s.sequence) == (batch, sequence)), None)

    def timed_variants(self) -> tuple[str, ...]:
        """Every variant the numbers stand for: the candidates and those timed under an identical file's name."""
        return (*self.candidates, *self.same_as)

    def names(self) -> set[str]:
        """Every variant the table may run or names: candidates, winners, ranges' variants."""
        return {*self.candidates, *(r.variant for r in self.ranges), *(s.winner for s in self.shapes)}

    def to_json(self) -> dict:
        p = self.plan
        plan = {k: v for k, v in (("min_rounds", p.min_rounds), ("max_rounds", p.max_rounds),
                                  ("seconds_per_shape", p.seconds_per_shape), ("sample_s", p.sample_s),
                                  ("margin", p.margin), ("finalists", p.finalists), ("final_rounds", p.final_rounds),
                                  ("final_max_rounds", p.final_max_rounds)) if v is not None}
        return {"version": self.version,
                "machine": {"cpu": self.machine.cpu, "threads": self.machine.threads, "spin": self.machine.spin},
                "plan": {**plan, **({"tunings": p.tunings} if p.tunings else {})}, "grid": self.grid,
                "candidates": {k: c.to_json() for k, c in self.candidates.items()}, "excluded": self.excluded,
                "same_as": self.same_as, "shapes": [s.to_json() for s in self.shapes],
                "ranges": [r.to_json() for r in self.ranges],
                **({"rounds_file": self.rounds_file} if self.rounds_file else {})}

    @classmethod
    def from_json(cls, data: dict) -> "DispatchTable":
        machine, plan = data.get("machine") or {}, data.get("plan") or {}
        return cls(candidates={k: Candidate.from_json(c) for k, c in data.get("candidates", {}).items()},
                   shapes=tuple(ShapeTimes.from_json(s) for s in data.get("shapes", ())),
                   ranges=tuple(ShapeRange.from_json(r) for r in data.get("ranges", ())),
                   machine=Machine(machine.get("cpu"), machine.get("threads"), machine.get("spin", False)),
                   plan=Plan(**{k: plan[k] for k in _PLAN if k in plan}), version=data.get("version", 1),
                   grid=data.get("grid", "default"), excluded=dict(data.get("excluded", {})),
                   same_as=dict(data.get("same_as", {})), rounds_file=data.get("rounds_file"))


@dataclass(frozen=True)
class GraphChoice:
    """The measured choice of one graph of a folder of several (an image-text model's ``text`` or ``vision``
    tower): its fp32 variants timed at a few shapes on this machine, the winner rule's pick at each, and the
    variant that runs the graph (the most wins; ties to the earlier in ``order``). The manifest's ``graph_dispatch``
    holds one per graph; ``ort-measured`` and auto read ``variant``."""

    graph: str
    variant: str
    shapes: tuple[dict, ...] = ()  # {"shape", "batch", "sequence", "median_ms": {variant: ms}, "winner"}
    rule: str = ""
    machine: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"graph": self.graph, "variant": self.variant, "shapes": list(self.shapes), "rule": self.rule,
                "machine": self.machine}

    @classmethod
    def from_json(cls, data: dict) -> "GraphChoice":
        return cls(graph=data["graph"], variant=data["variant"], shapes=tuple(data.get("shapes", ())),
                   rule=data.get("rule", ""), machine=dict(data.get("machine") or {}))
