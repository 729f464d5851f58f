"""One timing engine and one rule for "which is fastest", for every measured choice torchship makes.

The engine (``run_rounds``) runs candidates interleaved in rounds: in each round every candidate still timed
runs one sample (a few calls back to back, each call timed), so the drift of a busy machine (frequency,
neighbours) falls on all of them alike. ORT sessions made by torchship stop their threads' spinning when a run
returns (``_ort.spin_entries``, "run"), and a plan may pause before each sample so that any thread still spinning
goes idle before the next candidate starts. Two ways of bounding the rounds share that one loop:
``measure_rounds`` (bench, auto, the int8 search, weight-only's decode step: each candidate at least
``min_iterations`` calls and ``min_seconds``) and ``time_rounds`` (optimize's dispatch: every candidate in every
round, for a number of rounds and seconds), with ``settle`` for a dispatch final's close call.

The rule (``winner``): the earliest candidate in a stated order that the fastest does not clearly beat; clearly:
a median faster by more than a margin and faster in clearly more than half of the paired rounds (a sign test).
It is explained once, in docs/reference.md, "How optimize chooses".
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

import numpy as np

# Per candidate, per round, the seconds of each call of that round's sample.
Rounds = dict[str, list[list[float]]]

MARGIN = 0.01  # a candidate displaces an earlier one only when its median is faster by more than this
SIGN_TEST_Z = 1.28  # one-sided, 90%: how far above half of the rounds a clear win must be


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 5
    min_iterations: int = 30
    min_seconds: float = 2.0  # per backend
    max_iterations: int = 2000
    block: int = 10
    pause_s: float = 0.02  # before each sample, so that a pool's threads still spinning go idle

    def for_threads(self, threads: int | None) -> "TimingPlan":
        """The plan for sessions of ``threads`` threads: one thread has no pool to spin, so no pause."""
        return replace(self, pause_s=0.0) if threads == 1 else self


def run_rounds(fns: Mapping[str, Callable[[], object]], calls: Mapping[str, int],
               more: Callable[[Rounds, int, float], Iterable[str]], *, pause_s: float = 0.0, turn: bool = False,
               on_round: Callable[[Rounds], None] | None = None) -> Rounds:
    """The one timing loop. Before each round ``more(rounds so far, rounds done, seconds since the start)`` names
    the candidates that run in it (none: the end); each runs ``calls[name]`` times back to back after a pause of
    ``pause_s``, every call timed; the order turns by one each round when ``turn``. A candidate that ``more``
    leaves out must stay out, so that round i of every candidate is the same round (what the rule pairs)."""
    rounds: Rounds = {name: [] for name in fns}
    start, done = time.perf_counter(), 0
    while names := list(more(rounds, done, time.perf_counter() - start)):
        if turn:
            names = names[done % len(names):] + names[:done % len(names)]
        for name in names:
            if pause_s:
                time.sleep(pause_s)
            fn, laps = fns[name], []
            for _ in range(calls[name]):
                t0 = time.perf_counter()
                fn()
                laps.append(time.perf_counter() - t0)
            rounds[name].append(laps)
        done += 1
        if on_round:
            on_round(rounds)
    return rounds


def measure_rounds(fns: Mapping[str, Callable[[], object]], plan: TimingPlan,
                   on_block: Callable[[int, int], None] | None = None) -> Rounds:
    """Rounds of ``plan.block`` calls per function, after ``plan.warmup`` calls, each pausing ``plan.pause_s``
    first; a function leaves the rounds once it has ``plan.min_iterations`` calls and ``plan.min_seconds``, or
    ``plan.max_iterations`` calls. ``on_block(finished, total)`` after each round."""
    for fn in fns.values():
        for _ in range(plan.warmup):
            fn()

    def done(laps: list[list[float]]) -> bool:
        n = sum(len(r) for r in laps)
        return n >= plan.max_iterations or (n >= plan.min_iterations and sum(map(sum, laps)) >= plan.min_seconds)

    def report(rounds: Rounds) -> None:
        on_block(sum(done(r) for r in rounds.values()), len(fns))

    return run_rounds(fns, {name: plan.block for name in fns},
                      lambda rounds, _, __: [n for n in fns if not done(rounds[n])], pause_s=plan.pause_s,
                      on_round=report if on_block else None)


def measure_interleaved(fns: dict[str, Callable[[], object]], plan: TimingPlan,
                        on_block: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Latencies in seconds per name (``measure_rounds``, its rounds joined); every function runs at least
    ``plan.min_iterations`` times."""
    return {name: [s for r in laps for s in r] for name, laps in measure_rounds(fns, plan, on_block).items()}


def calls_per_sample(fn: Callable[[], object], sample_s: float, warmup: int) -> int:
    """Calls per sample so that one sample lasts about ``sample_s`` (after ``warmup`` calls)."""
    for _ in range(max(1, warmup)):
        fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, math.ceil(sample_s / max(once, 1e-6)))


def time_rounds(runners: dict, plan, final: bool = False) -> dict[str, list[float]]:
    """Seconds per call of every candidate, one value per round, every candidate in every round, the order turned
    each round; a sample lasts about ``plan.sample_s``. Rounds run until ``plan.seconds`` are spent, at least
    ``plan.min_rounds`` and at most ``plan.max_rounds`` (a final: ``final_rounds``, ``final_max_rounds``).
    ``plan``: a ``dispatch.DispatchPlan``."""
    calls = {name: calls_per_sample(fn, plan.sample_s, plan.warmup) for name, fn in runners.items()}
    least, most = (plan.final_rounds, plan.final_max_rounds) if final else (plan.min_rounds, plan.max_rounds)
    names = list(runners)

    def more(_, done: int, elapsed: float):
        return names if done < max(most, least) and (done < least or elapsed < plan.seconds) else ()

    return {name: [_mean(r) for r in laps] for name, laps in run_rounds(runners, calls, more, turn=True).items()}


def settle(runners: dict, raw: dict[str, list[float]], kept: str, fastest: str, plan) -> int:
    """Run ``kept`` and ``fastest`` head to head, in turn, appending to their rounds in ``raw``, until the fastest
    wins clearly (``clear_wins``), or ``plan.settle_rounds`` rounds in all, or ``plan.settle_seconds`` (None: 10 x
    ``plan.seconds``); the rounds run here. A real lead shows in most pairs, and the sign test needs a smaller share
    of wins the more pairs there are; a lead that was noise fades."""
    limit = plan.settle_seconds if plan.settle_seconds is not None else 10 * plan.seconds
    pair = (kept, fastest)
    calls = {k: calls_per_sample(runners[k], plan.sample_s, plan.warmup) for k in pair}

    def more(rounds: Rounds, done: int, elapsed: float):
        if done:
            for k in pair:
                raw[k].append(_mean(rounds[k][-1]))
            if clear_wins({"rounds_ms": raw[fastest]}, {"rounds_ms": raw[kept]}):
                return ()
        return pair if len(raw[kept]) < plan.settle_rounds and elapsed < limit else ()

    return len(run_rounds({k: runners[k] for k in pair}, calls, more, turn=True)[kept])


def _mean(laps: list[float]) -> float:
    return sum(laps) / len(laps)


def round_stats(seconds: list[float]) -> dict:
    """What the rule reads of one value per round (``time_rounds``): the median and spread, in ms."""
    ms = np.asarray(seconds) * 1000.0
    p10, p50, p90 = (float(v) for v in np.percentile(ms, [10, 50, 90]))
    return {"median_ms": round(p50, 4), "p10_ms": round(p10, 4), "p90_ms": round(p90, 4),
            "spread": round(p90 / p10, 4) if p10 > 0 else None, "rounds": len(seconds),
            "rounds_ms": [round(float(v), 4) for v in ms]}


def call_stats(laps: list[list[float]]) -> dict:
    """What the rule reads of ``measure_rounds``' rounds of one candidate: the median of every call, and each
    round's mean, in ms."""
    return {"median_ms": float(np.median([s for r in laps for s in r])) * 1000.0,
            "rounds_ms": [_mean(r) * 1000.0 for r in laps]}


def clear_wins(fast: dict, slow: dict) -> bool:
    """Whether ``fast`` ran faster than ``slow`` in more rounds than chance would give: a sign test over the rounds
    both ran, paired (round i of each ran one right after the other, so the drift of a busy machine cancels out of
    each pair). The wins needed: all of 3 rounds, 5 of 6, 7 of 9, 25 of 40, 57 of 100."""
    pairs = list(zip(fast["rounds_ms"], slow["rounds_ms"]))
    wins = sum(x < y for x, y in pairs)
    return bool(pairs) and wins > len(pairs) / 2 + SIGN_TEST_Z * math.sqrt(len(pairs)) / 2


def leads(fast: dict, slow: dict, margin: float) -> bool:
    """Whether ``fast``'s median is faster than ``slow``'s by more than ``margin``."""
    return fast["median_ms"] * (1 + margin) < slow["median_ms"]


def clearly_beats(fast: dict, slow: dict, margin: float) -> bool:
    """A lead in the median (``leads``) that the paired rounds show too (``clear_wins``)."""
    return leads(fast, slow, margin) and clear_wins(fast, slow)


def runner_up(times: dict[str, dict], best: str) -> tuple[str | None, float | None]:
    """The fastest candidate other than ``best`` and its median over ``best``'s; (None, None) when alone."""
    others = [n for n in times if n != best]
    if not others:
        return None, None
    second = min(others, key=lambda n: times[n]["median_ms"])
    return second, round(times[second]["median_ms"] / times[best]["median_ms"], 4)


def winner(times: dict[str, dict], order: tuple[str, ...],
           margin: float = MARGIN) -> tuple[str, str | None, float | None]:
    """The rule every measured choice goes through: (winner, runner-up, runner-up median / winner median).
    ``times``: per candidate its ``median_ms`` and ``rounds_ms`` (one value per round, rounds paired by index).
    The winner is the earliest candidate in ``order`` (candidates it does not name come after, in ``times``'
    order) that the fastest does not clearly beat (``clearly_beats``: a median faster by more than ``margin`` and
    faster in clearly more than half of the paired rounds). Noise does not flip the choice: where the rounds
    disagree the earlier candidate stays; equal medians go to the earlier one. docs/reference.md, "How optimize
    chooses"."""
    ranked = [*(o for o in order if o in times), *(n for n in times if n not in order)]
    fastest = min(ranked, key=lambda n: times[n]["median_ms"])  # the first of equal medians
    best = next(n for n in ranked if not clearly_beats(times[fastest], times[n], margin))
    return (best, *runner_up(times, best))


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
