"""The one timing engine and the one winner rule (benchmarks/timing.py) that the dispatch, auto and the int8
search go through: the rule on synthetic timings, the engine's rounds on counting functions."""

import numpy as np
import pytest

from torchship.benchmarks.timing import (MARGIN, TimingPlan, call_stats, clear_wins, measure_rounds, run_rounds,
                                         time_rounds, winner)


def _t(*ms):
    return {"median_ms": float(np.median(ms)), "rounds_ms": list(ms)}


def test_a_noisy_candidate_faster_in_the_median_but_not_by_the_sign_test_does_not_win():
    steady = _t(10.0, 10.1, 10.0, 9.9, 10.0, 10.1)
    noisy = _t(9.0, 10.5, 9.0, 10.5, 9.0, 10.5)  # median 5% lower, but faster in only 3 of 6 paired rounds
    assert noisy["median_ms"] * (1 + MARGIN) < steady["median_ms"] and not clear_wins(noisy, steady)
    assert winner({"steady": steady, "noisy": noisy}, ("steady", "noisy"))[0] == "steady"
    # a plain minimum would have taken it: the rule is what keeps noise from deciding
    assert min(("steady", "noisy"), key=lambda n: {"steady": steady, "noisy": noisy}[n]["median_ms"]) == "noisy"


def test_a_clearly_faster_candidate_wins_over_an_earlier_one():
    steady = _t(10.0, 10.1, 10.0, 9.9, 10.0, 10.1)
    fast = _t(9.5, 9.5, 9.4, 9.6, 11.0, 9.5)  # 5% faster in the median and in 5 of 6 rounds
    assert winner({"steady": steady, "fast": fast}, ("steady", "fast")) == ("fast", "steady", round(10.0 / 9.5, 4))
    # within the margin it does not, however many rounds it wins
    close = _t(9.95, 9.95, 9.95, 9.95, 9.95, 9.95)
    assert winner({"steady": steady, "close": close}, ("steady", "close"))[0] == "steady"


def test_ties_go_to_the_stated_order_whatever_the_order_of_the_timings():
    same = _t(10.0, 10.0, 10.0)
    for times in ({"a": same, "b": dict(same), "c": dict(same)}, {"c": same, "b": dict(same), "a": dict(same)}):
        assert winner(times, ("b", "a"))[0] == "b"
        assert winner(times, ("a",))[0] == "a"  # named ones first, the rest after, in the timings' order
    # a candidate the order does not name comes after those it names
    assert winner({"x": _t(10.0, 10.0, 10.0), "a": _t(10.0, 10.0, 10.0)}, ("a",))[0] == "a"


def test_rounds_are_paired_by_index_and_a_candidate_that_left_stays_out():
    calls = {"a": 0, "b": 0}

    def fn(name):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    # b leaves after 2 rounds, a runs 4: a's first two rounds are the rounds b ran in
    order = []
    rounds = run_rounds({"a": fn("a"), "b": fn("b")}, {"a": 2, "b": 1},
                        lambda r, done, _: [n for n in ("a", "b") if done < (4 if n == "a" else 2)],
                        turn=True, on_round=lambda r: order.append(len(r["a"]) + len(r["b"])))
    assert [len(x) for x in rounds["a"]] == [2] * 4 and [len(x) for x in rounds["b"]] == [1] * 2
    assert calls == {"a": 8, "b": 2} and order == [2, 4, 5, 6]
    stats = call_stats(rounds["a"])
    assert len(stats["rounds_ms"]) == 4 and stats["median_ms"] >= 0
    # the rule pairs only the rounds both ran
    assert clear_wins({"rounds_ms": [1.0, 1.0, 1.0, 9.0]}, {"rounds_ms": [2.0, 2.0, 2.0]})


def test_bench_rounds_meet_the_plan_and_dispatch_rounds_meet_their_bounds():
    plan = TimingPlan(warmup=0, min_iterations=7, min_seconds=0.0, block=3, pause_s=0.0)
    rounds = measure_rounds({"a": lambda: None, "b": lambda: None}, plan)
    assert [len(r) for r in rounds["a"]] == [3, 3, 3] == [len(r) for r in rounds["b"]]

    class Plan:  # what a dispatch.DispatchPlan gives time_rounds
        sample_s, warmup, seconds = 0.0, 0, 0.0
        min_rounds, max_rounds, final_rounds, final_max_rounds = 3, 40, 5, 100

    times = time_rounds({"a": lambda: None, "b": lambda: None}, Plan)
    assert len(times["a"]) == len(times["b"]) == 3
    assert len(time_rounds({"a": lambda: None}, Plan, final=True)["a"]) == 5


@pytest.mark.parametrize("won, expected", [(60, "late"), (55, "early")])
def test_with_many_rounds_a_smaller_share_of_wins_is_clear(won, expected):
    times = {"early": _t(*[10.0] * 100), "late": _t(*[9.8] * won + [10.2] * (100 - won))}
    assert winner(times, ("early", "late"))[0] == expected


def test_one_thread_runs_without_pauses_and_more_threads_keep_them():
    """A one-thread session has no pool whose threads spin after a run, so the engine does not pause for it."""
    from torchship.benchmarks.timing import TimingPlan

    plan = TimingPlan(pause_s=0.02)
    assert plan.for_threads(1).pause_s == 0.0 and plan.for_threads(1).min_seconds == plan.min_seconds
    assert plan.for_threads(2) == plan and plan.for_threads(None) == plan
