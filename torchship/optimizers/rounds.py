"""Interleaved rounds of timing, and the rule that names a winner from them (optimizers/dispatch.py's).

Every candidate runs once per round, in an order that turns each round, so the drift of a busy machine falls
on all of them alike; a winner is judged on paired rounds (a sign test) as well as on medians. ``plan`` is a
``dispatch.DispatchPlan`` (its rounds, seconds and margins)."""

from __future__ import annotations

import math
import time

import numpy as np


def samples_per_run(fn, plan) -> int:
    """Runs per sample so that one sample lasts about ``plan.sample_s`` (after ``plan.warmup`` runs)."""
    for _ in range(max(1, plan.warmup)):
        fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, math.ceil(plan.sample_s / max(once, 1e-6)))


def time_rounds(runners: dict, plan, final: bool = False) -> dict[str, list[float]]:
    """Seconds per run of every candidate, one value per round, candidates interleaved (a final: at least
    ``plan.final_rounds`` rounds)."""
    repeats = {name: samples_per_run(fn, plan) for name, fn in runners.items()}
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    least, most = (plan.final_rounds, plan.final_max_rounds) if final else (plan.min_rounds, plan.max_rounds)
    start = time.perf_counter()
    for r in range(max(most, least)):
        if r >= least and time.perf_counter() - start >= plan.seconds:
            break
        _one_round(runners, repeats, names, r, times)
    return times


def _one_round(runners: dict, repeats: dict[str, int], names, turn: int, times: dict[str, list[float]]) -> None:
    """Every runner of ``names`` once (``repeats`` runs per sample), the order turned by ``turn``; seconds per run
    appended to ``times``."""
    for name in names[turn % len(names):] + names[:turn % len(names)]:
        t0 = time.perf_counter()
        for _ in range(repeats[name]):
            runners[name]()
        times[name].append((time.perf_counter() - t0) / repeats[name])


def round_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    p10, p50, p90 = (float(v) for v in np.percentile(ms, [10, 50, 90]))
    return {"median_ms": round(p50, 4), "p10_ms": round(p10, 4), "p90_ms": round(p90, 4),
            "spread": round(p90 / p10, 4) if p10 > 0 else None, "rounds": len(seconds),
            "rounds_ms": [round(float(v), 4) for v in ms]}


SIGN_TEST_Z = 1.28  # one-sided, 90%: how far above half of the rounds a clear win must be


def clear_wins(fast: dict, slow: dict) -> bool:
    """Whether ``fast`` ran faster than ``slow`` in more rounds than chance would give: a sign test over the
    rounds, paired (both ran in every round, one right after the other, so the drift of a busy machine cancels
    out of each pair). The wins needed: all of 3 rounds, 5 of 6, 7 of 9, 25 of 40, 57 of 100."""
    pairs = list(zip(fast["rounds_ms"], slow["rounds_ms"], strict=True))
    wins = sum(x < y for x, y in pairs)
    return wins > len(pairs) / 2 + SIGN_TEST_Z * math.sqrt(len(pairs)) / 2


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


def winner(times: dict[str, dict], order: tuple[str, ...], margin: float) -> tuple[str, str | None, float | None]:
    """(winner, runner-up, runner-up median / winner median). The winner is the earliest candidate in the
    preference order that the fastest one does not clearly beat; clearly: a median faster by more than
    ``margin`` and faster in clearly more than half of the rounds, paired round by round (``clearly_beats``).
    Noise does not flip the choice: where the rounds disagree the preferred variant stays (today's fixed choice);
    a real win shows in most rounds, and the more rounds, the smaller a lead that can show."""
    fastest = min(times, key=lambda n: times[n]["median_ms"])
    best = next(n for n in (*[o for o in order if o in times], fastest)
                if not clearly_beats(times[fastest], times[n], margin))
    return (best, *runner_up(times, best))


def settle(runners: dict, raw: dict[str, list[float]], kept: str, fastest: str, plan) -> int:
    """Run ``kept`` and ``fastest`` head to head, one after the other in turn, appending to their rounds in
    ``raw``, until the fastest wins clearly (``clear_wins``), or ``plan.settle_rounds`` rounds in all, or
    ``plan.settle_seconds``; the rounds run here. A real lead shows in most pairs and the sign test needs a
    smaller share of wins the more pairs there are; a lead that was noise fades."""
    limit = plan.settle_seconds if plan.settle_seconds is not None else 10 * plan.seconds
    pair = (kept, fastest)
    repeats = {k: samples_per_run(runners[k], plan) for k in pair}
    start, added = time.perf_counter(), 0
    while len(raw[kept]) < plan.settle_rounds and time.perf_counter() - start < limit:
        _one_round(runners, repeats, pair, added, raw)
        added += 1
        if clear_wins({"rounds_ms": raw[fastest]}, {"rounds_ms": raw[kept]}):
            break
    return added
