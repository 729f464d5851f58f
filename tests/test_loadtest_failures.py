"""`torchship loadtest` against a real tritonserver (issue 27, items 1 and 8): a served int8 MiniLM gives a text the
same vector however it is batched and passes the answer check against the same variant run here; a run aimed at
the wrong port or protocol, or one that loses more than 1% of its requests, is one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from torchship.benchmarks.timing import TimingPlan
from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT, EXIT_FAILED
from torchship.optimizers.quantize import QuantizeOptions, quantize
from torchship.serving.loadtest import SERVED_FLOOR, TritonHTTP
from torchship.serving.repository import ServeOptions, write_text_repo
from torchship.serving.server import Install, Ports, Server, free_port, home
from torchship.serving.triton_repo import TritonOptions

pytestmark = pytest.mark.skipif(not Install(home()).complete(),
                                reason="the Triton server is not set up: run `torchship serve --setup` "
                                       "(make install does it)")
QUICK = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
TEXT = "A man is eating food."
LONG = " ".join(["the weather was fine and everyone walked along the river to the old mill"] * 14)  # 210 words


@pytest.fixture(scope="module")
def served(exported, minilm_export, tmp_path_factory):
    """One server: MiniLM's int8 variant (per-row, the search's MatMul candidate) and a strict tiny BERT."""
    base = tmp_path_factory.mktemp("loadtest")
    minilm = shutil.copytree(minilm_export, base / "minilm")
    quantize(minilm, QuantizeOptions(sources=("optimized",), op_types=("MatMul",), per_channel=(True,),
                                     budget=0.98, fallback="off", timing=QUICK))
    repo = base / "repo"
    write_text_repo(minilm, repo, TritonOptions(name="int8", variant="int8", max_batch_size=8))
    write_text_repo(exported("bert"), repo, TritonOptions(name="strict", max_batch_size=4), ServeOptions(strict=True))
    server = Server(repo, Ports(free_port(), free_port(), free_port()), log=base / "server.log")
    server.start()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log_tail()


def _cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_served_int8_gives_a_text_the_same_vector_however_it_is_batched(served, tmp_path):
    host, port = served.http_url.split("//")[1].split(":")
    send = TritonHTTP(host, int(port), "int8").connect()
    alone = send([TEXT])[0]
    # The served model groups texts of similar length, so the neighbours that matter are as short as TEXT.
    for batch in ([TEXT, LONG], [LONG, "hello", TEXT], [TEXT, "Stocks fell 40% after the report!!", "zebra quartz"],
                  ["WHY?! 12345 67890 ###", TEXT, "Une phrase en français, voilà."] + [LONG] * 4):
        got = send(batch)[batch.index(TEXT)]
        assert _cosine(alone, got) >= SERVED_FLOOR, batch
    r = CliRunner().invoke(main, ["loadtest", served.http_url, "--model", "int8", "--concurrency", "1,4",
                                  "--duration", "1", "--warmup", "0.2", "--output", str(tmp_path / "lt")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "lt" / "loadtest.json").read_text())
    check = report["check"]
    assert check["passed"] and check["value"] >= SERVED_FLOOR and check["floor"] == SERVED_FLOOR
    assert "ort-int8" in check["against"] and "model_int8.onnx" in check["against"]
    md = (tmp_path / "lt" / "loadtest.md").read_text()
    assert md.splitlines()[0].count("(http)") == 1 and "ort-int8 variant (model_int8.onnx)" in md


def test_grpc_aimed_at_the_http_port_is_one_line_and_exit_2(served, tmp_path):
    out = tmp_path / "lt"
    r = CliRunner().invoke(main, ["loadtest", served.http_url, "--model", "int8", "--protocol", "grpc",
                                  "--concurrency", "1", "--duration", "1", "--warmup", "0", "--output", str(out)])
    assert r.exit_code == EXIT_BAD_INPUT, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("torchship: error:")]
    assert len(errors) == 1 and "does not answer one grpc request" in errors[0] and "--protocol" in errors[0], r.output
    assert "Traceback" not in r.output and not out.exists()


def test_a_run_that_loses_over_1_percent_of_its_requests_exits_non_zero(served, tmp_path):
    """The strict model refuses a text over its maximum length: one text in ten fails, a tenth of the requests."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["a good movie", "hello world", "it is", "the dog is running", "a b c", "yes", "no",
                                "one more", "the last short one", " ".join(["word"] * 600)]) + "\n")
    r = CliRunner().invoke(main, ["loadtest", served.http_url, "--model", "strict", "--texts", str(texts),
                                  "--no-check", "--concurrency", "2", "--duration", "1", "--warmup", "0.2",
                                  "--output", str(tmp_path / "lt")])
    assert r.exit_code == EXIT_FAILED, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("torchship: error:")]
    assert len(errors) == 1 and "failed at concurrency 2" in errors[0] and "at most 1% may" in errors[0], r.output
    assert "Traceback" not in r.output
