"""A closed-loop load test against a served text model: throughput, tail latency, errors, and a check of
the answers.

Each of ``concurrency`` workers sends one request, waits for its answer, and sends the next, for a warm-up
(not counted) and then ``duration`` seconds (counted). Every request sent is counted as answered or as an
error; none is dropped. The same machinery drives a Triton text model over HTTP (KServe v2 JSON) or gRPC
(tritonclient) and, for side-by-side runs, any server a ``Target`` can talk to (Infinity's OpenAI-style
``/embeddings``).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np

from torchship.errors import BackendUnavailable, InputError
from torchship.serving.answer_checks import (MAX_ERROR_SHARE, SAMPLE, SERVED_FLOOR, LoadTestFailed,  # noqa: F401
                                             ServerError, check_answers, check_answers_of, failure, first_answer,
                                             same_results)

PROTOCOLS = ("http", "grpc")
MAX_CONCURRENCY = 256
MAX_DURATION_S = 600.0

@dataclass(frozen=True)
class LoadOptions:
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    duration_s: float = 20.0
    warmup_s: float = 3.0
    texts_per_request: int = 1
    max_requests: int = 200_000  # per concurrency level: the test stops at this count even before its time
    timeout_s: float = 30.0
    unit: str = "text"  # what one item of a request is, as the report names it ("image" with --images)

    def checked(self) -> "LoadOptions":
        if not self.concurrency or any(c < 1 or c > MAX_CONCURRENCY for c in self.concurrency):
            raise InputError(f"--concurrency takes levels from 1 to {MAX_CONCURRENCY}, e.g. 1,4,8,16")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise InputError(f"--duration must be over 0 and at most {MAX_DURATION_S:.0f} seconds")
        if self.warmup_s < 0 or self.texts_per_request < 1 or self.max_requests < 1:
            raise InputError("--warmup must be 0 or more; --batch and --max-requests 1 or more")
        return self


def split_url(url: str, protocol: str) -> tuple[str, int]:
    """(host, port) of a server URL (``http://127.0.0.1:8000``, ``127.0.0.1:8001``)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; use {' or '.join(PROTOCOLS)}")
    parsed = urlparse(url if "://" in url else f"{protocol}://{url}")
    if not parsed.hostname or parsed.port is None:
        raise InputError(f"{url!r} is not host:port or http://host:port; e.g. http://127.0.0.1:8000")
    return parsed.hostname, parsed.port


class Target:
    """How one worker talks to one server: ``send(texts) -> answers`` (vectors or labels), or raises."""

    def connect(self) -> Callable[[list[str]], list]:
        raise NotImplementedError


class JSONOverHTTP(Target):
    """A JSON request per send on one kept-alive connection; a dropped connection is reopened by the next send."""

    path = ""

    def __init__(self, host: str, port: int, model: str, timeout_s: float = 30.0):
        self.host, self.port, self.model, self.timeout_s = host, port, model, timeout_s

    def body(self, texts: list[str]) -> dict:
        raise NotImplementedError

    def answers(self, data: dict) -> list:
        raise NotImplementedError

    def connect(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        path = self.path.format(model=self.model)

        def send(texts):
            try:
                conn.request("POST", path, json.dumps(self.body(texts)), {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()  # the next request reconnects
                raise
            if response.status != 200:
                raise ServerError(_error_text(data, response.status))
            return self.answers(json.loads(data))
        return send


class TritonHTTP(JSONOverHTTP):
    """Triton's KServe v2 ``POST /v2/models/NAME/infer``."""

    path = "/v2/models/{model}/infer"

    def body(self, texts):
        return {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}]}

    def answers(self, data):
        return answers_of({o["name"]: o for o in data["outputs"]})


class TritonGRPC(Target):
    """A served model over gRPC: each row of a request one BYTES element of ``input_name`` (texts as UTF-8)."""

    input_name = "TEXT"

    def __init__(self, host: str, port: int, model: str, timeout_s: float = 30.0):
        self.url, self.model, self.timeout_s = f"{host}:{port}", model, timeout_s

    @staticmethod
    def encoded(row) -> bytes:
        return row.encode("utf-8")

    def connect(self):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            raise BackendUnavailable("the gRPC client is not installed; pip install 'torchship[serve]'") from None
        client = grpcclient.InferenceServerClient(self.url)

        def send(rows):
            inp = grpcclient.InferInput(self.input_name, [len(rows), 1], "BYTES")
            inp.set_data_from_numpy(np.array([[self.encoded(r)] for r in rows], dtype=object))
            try:
                result = client.infer(self.model, [inp], client_timeout=self.timeout_s)
            except grpcclient.InferenceServerException as exc:
                raise ServerError(exc.message() or str(exc)) from None
            outputs = {o.name: {"data": result.as_numpy(o.name)} for o in result.get_response().outputs}
            return answers_of(outputs)
        return send


class InfinityHTTP(JSONOverHTTP):
    """Infinity's (and OpenAI's) ``POST /embeddings``: the side-by-side anchor."""

    path = "/embeddings"

    def body(self, texts):
        return {"model": self.model, "input": texts}

    def answers(self, data):
        return [np.asarray(d["embedding"], dtype=np.float32) for d in data["data"]]


def _error_text(data: bytes, status: int) -> str:
    try:
        message = json.loads(data).get("error") or data.decode()
    except (ValueError, UnicodeDecodeError):
        message = repr(data[:200])
    return f"HTTP {status}: {message}"


def answers_of(outputs: dict) -> list:
    """Per text: the embedding vector, or the label, from a text model's outputs."""
    if "EMBEDDING" in outputs:
        o = outputs["EMBEDDING"]
        data = np.asarray(o["data"], dtype=np.float32)
        return list(data.reshape(o["shape"]) if "shape" in o else data)
    if "LABEL" in outputs:
        labels = np.asarray(outputs["LABEL"]["data"], dtype=object).reshape(-1)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in labels]
    for name in ("ENTITIES", "MASKS"):  # one JSON list per text
        if name in outputs:
            rows = np.asarray(outputs[name]["data"], dtype=object).reshape(-1)
            return [json.loads(x.decode() if isinstance(x, bytes) else x) for x in rows]
    if "HIDDEN_STATES" in outputs:
        o = outputs["HIDDEN_STATES"]
        data = np.asarray(o["data"], dtype=np.float32)
        return list(data.reshape(o["shape"]) if "shape" in o else data)
    raise ServerError(f"the answer has none of EMBEDDING, LABEL, ENTITIES, MASKS, HIDDEN_STATES (it has "
                      f"{', '.join(outputs)})")


@dataclass(frozen=True)
class Level:
    """One concurrency level, measured."""

    concurrency: int
    seconds: float
    requests: int
    texts: int
    errors: int
    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    first_error: str = ""


@dataclass(frozen=True)
class LoadReport:
    target: str
    model: str
    protocol: str
    options: dict
    levels: tuple[Level, ...]
    check: dict = field(default_factory=dict)  # measure, worst value, texts checked, passed

    def to_json(self) -> dict:
        return {"target": self.target, "model": self.model, "protocol": self.protocol, "options": self.options,
                "levels": [asdict(level) for level in self.levels], "check": self.check}


def _texts_for(worker: int, texts: list[str], per_request: int):
    i = worker * 7919  # workers start at different texts
    while True:
        yield [texts[(i + k) % len(texts)] for k in range(per_request)]
        i += per_request


def run_level(target: Target, texts: list[str], concurrency: int, options: LoadOptions) -> Level:
    """Warm up, then count ``options.duration_s`` seconds of closed-loop requests from ``concurrency`` workers."""
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"sent": 0, "errors": 0, "texts": 0}
    errors: list[str] = []
    start_count = threading.Event()
    stop = threading.Event()

    def worker(w: int):
        try:
            send = target.connect()
        except Exception as exc:  # noqa: BLE001 - counted, reported, never lost
            with lock:
                errors.append(f"connect: {exc}")
            return
        batches = _texts_for(w, texts, options.texts_per_request)
        while not stop.is_set():
            batch = next(batches)
            counting = start_count.is_set()
            if counting:
                with lock:
                    if counts["sent"] >= options.max_requests:
                        stop.set()
                        return
                    counts["sent"] += 1
            t0 = time.perf_counter()
            try:
                send(batch)
                ok, message = True, ""
            except Exception as exc:  # noqa: BLE001
                ok, message = False, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - t0
            if counting:
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        counts["texts"] += len(batch)
                    else:
                        counts["errors"] += 1
                        if len(errors) < 5:
                            errors.append(message)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(options.warmup_s)
    start_count.set()
    began = time.perf_counter()
    stop.wait(options.duration_s)
    stop.set()
    for t in threads:
        t.join(options.timeout_s + 5)
    seconds = time.perf_counter() - began
    answered = len(latencies)
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    if answered + counts["errors"] != counts["sent"]:
        raise ServerError(f"{counts['sent']} requests sent but {answered + counts['errors']} counted")
    return Level(concurrency, seconds, counts["sent"], counts["texts"], counts["errors"], answered / seconds,
                 counts["texts"] / seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                 float(np.percentile(ms, 99)), errors[0] if errors else "")


def run_loadtest(target: Target, texts: list[str], options: LoadOptions, *, name: str, model: str, protocol: str,
                 reference: Callable[[list[str]], list] | None = None, progress=None,
                 fail_on_errors: bool = True) -> LoadReport:
    """Check one request, then the answers (against ``reference``), then each concurrency level. With
    ``fail_on_errors`` a level that lost more than MAX_ERROR_SHARE of its requests raises LoadTestFailed (the
    report rides on it); without, the caller asks ``failure(report)`` once it has written the report."""
    options = options.checked()
    if not texts:
        raise InputError("no texts to send; give --texts a file with one text per line")
    first_answer(target, texts, name=name, protocol=protocol)
    check = check_answers_of(target, texts, reference) if reference is not None else {}
    levels = []
    for c in options.concurrency:
        if progress:
            progress(f"concurrency {c}: {options.warmup_s:g} s warm-up, {options.duration_s:g} s counted")
        levels.append(run_level(target, texts, c, options))
    report = LoadReport(name, model, protocol, asdict(options), tuple(levels), check)
    problem = failure(report) if fail_on_errors else None
    if problem:
        raise LoadTestFailed(problem, report)
    return report


def markdown(report: LoadReport) -> str:
    on = report.target if report.target.endswith(f"({report.protocol})") else f"{report.target} ({report.protocol})"
    unit = report.options.get("unit", "text")
    lines = [f"# Load test: {report.model} on {on}", "",
             f"Closed loop, {report.options['texts_per_request']} {unit}(s) per request, "
             f"{report.options['warmup_s']:g} s warm-up and {report.options['duration_s']:g} s counted per level.",
             "", f"| concurrency | requests/s | {unit}s/s | p50 ms | p90 ms | p99 ms | requests | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in report.levels:
        lines.append(f"| {v.concurrency} | {v.requests_per_s:.1f} | {v.texts_per_s:.1f} | {v.p50_ms:.2f} | "
                     f"{v.p90_ms:.2f} | {v.p99_ms:.2f} | {v.requests} | {v.errors} |")
    errs = [v for v in report.levels if v.first_error]
    for v in errs:
        lines.append(f"\nFirst error at concurrency {v.concurrency}: {v.first_error}")
    if report.check:
        c = report.check
        lines.append(f"\nAnswers checked against {c.get('against', 'the local predictor')} on {c['texts']} {unit}s: "
                     f"{c['measure']} {c['value']:.6f} ({'as expected' if c['passed'] else 'MISMATCH'}).")
    return "\n".join(lines) + "\n"


def plot(reports: list[LoadReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    fig.suptitle(", ".join(dict.fromkeys(r.model for r in reports)))
    for r in reports:
        xs = [v.concurrency for v in r.levels]
        left.plot(xs, [v.texts_per_s for v in r.levels], marker="o", label=r.target)
        right.plot(xs, [v.p99_ms for v in r.levels], marker="o", label=r.target)
    left.set(xlabel="concurrency", ylabel=f"{reports[0].options.get('unit', 'text')}s/s", title="throughput")
    right.set(xlabel="concurrency", ylabel="ms", title="p99 latency")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # concurrency is a count of clients
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: LoadReport, folder: str | Path) -> dict[str, Path]:
    from torchship._fs import write_json_atomic, write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "loadtest.json", "md": folder / "loadtest.md", "png": folder / "loadtest.png"}
    write_json_atomic(paths["json"], report.to_json())
    write_text_atomic(paths["md"], markdown(report))
    plot([report], paths["png"])
    return paths
