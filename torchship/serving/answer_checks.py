"""What a load test checks besides speed: that the server answers at all, that its answers equal the same
variant run locally, and that few enough requests failed. Apart from loadtest.py, which measures."""

from __future__ import annotations

from typing import Callable

import numpy as np

from torchship.errors import InputError, TorchshipError

SAMPLE = 16  # texts whose answers are checked against the local predictor
SERVED_FLOOR = 0.99999  # min cosine between a served vector and the same variant run locally
MAX_ERROR_SHARE = 0.01  # a level with more failed requests than this fails the load test


class ServerError(TorchshipError):
    exit_code = 1


class LoadTestFailed(ServerError):
    """More than MAX_ERROR_SHARE of a level's requests failed; ``report`` holds every level measured."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


def same_results(got, want, atol: float = 1e-4) -> bool:
    """Two JSON-like results equal, numbers within ``atol``."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same_results(got[k], want[k], atol)
                                                                          for k in want)
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(
            same_results(g, w, atol) for g, w in zip(got, want))
    if isinstance(want, float):
        return isinstance(got, (int, float)) and abs(got - want) <= atol
    return got == want


def check_answers(target, texts: list[str], reference: Callable[[list[str]], list]) -> dict:
    """Send the first SAMPLE distinct texts one by one and compare with ``reference`` (the local predictor):
    cosine for vectors, agreement for labels."""
    sample = list(dict.fromkeys(texts))[:SAMPLE]
    send = target.connect()
    got = [send([t])[0] for t in sample]
    want = reference(sample)
    if isinstance(got[0], str):
        agree = sum(g == w for g, w in zip(got, want)) / len(sample)
        return {"measure": "label agreement", "value": agree, "texts": len(sample), "passed": agree == 1.0}
    if isinstance(got[0], list):  # entities or filled masks: the same words, spans and labels, scores to 1e-4
        agree = sum(same_results(g, w) for g, w in zip(got, want)) / len(sample)
        return {"measure": "result agreement", "value": agree, "texts": len(sample), "passed": agree == 1.0}
    cos = [float(np.dot(g.ravel(), np.asarray(w).ravel()) /
                 max(np.linalg.norm(g) * np.linalg.norm(w), 1e-12)) for g, w in zip(got, want)]
    return {"measure": "min cosine", "value": min(cos), "texts": len(sample), "passed": min(cos) >= SERVED_FLOOR,
            "floor": SERVED_FLOOR}


def check_answers_of(target, texts: list[str], reference: Callable[[list[str]], list]) -> dict:
    """check_answers, with what the answers were compared with (``reference.describe``, when it has one)."""
    check = check_answers(target, texts, reference)
    return {**check, "against": getattr(reference, "describe", "the local predictor")}


def first_answer(target, texts: list[str], *, name: str, protocol: str) -> None:
    """One request before anything is measured: a server that does not answer it (a wrong port or protocol, a
    wrong model name) is one line and exit 2 instead of a load test of failures."""
    send = target.connect()  # a missing client library is its own error (exit 4)
    try:
        send(texts[:1])
    except Exception as exc:  # noqa: BLE001 - a socket's, the server's or the gRPC library's error, in one line
        raise InputError(f"{name} does not answer one {protocol} request ({_short(exc)}); check the URL, --model "
                         "and --protocol (torchship serve prints the HTTP and the gRPC URL)") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def failure(report) -> str | None:
    """One line when a level lost more than MAX_ERROR_SHARE of its requests (or every one); else None."""
    bad = [v for v in report.levels if v.errors > MAX_ERROR_SHARE * max(v.requests, 1) or v.requests == 0]
    if not bad:
        return None
    v = bad[0]
    share = v.errors / v.requests if v.requests else 1.0
    what = "every request" if v.errors == v.requests else f"{v.errors:,} of {v.requests:,} requests ({share:.1%})"
    first = f": {_short(Exception(v.first_error))}" if v.first_error else ""
    return (f"{what} failed at concurrency {v.concurrency} against {report.target} (at most "
            f"{MAX_ERROR_SHARE:.0%} may){first}")
