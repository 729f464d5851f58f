"""A real tritonserver (nvidia-pytriton's, set up by `torchship serve --setup`; `make install` does it) serving
text-in repositories written by `torchship triton`: answers over HTTP and gRPC equal the local predictor,
every fault gets an error answer and the server keeps serving, nothing is lost, and the server stops clean."""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hand_models import snapshot, write_hand_models
from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT
from torchship.serving.client import local_reference
from torchship.serving.loadtest import LoadOptions, TritonGRPC, TritonHTTP, check_answers, run_level, same_results
from torchship.serving.repository import ServeOptions, write_text_repo
from torchship.serving.server import Install, Ports, Server, free_port, home
from torchship.serving.triton_repo import TritonOptions

pytestmark = pytest.mark.skipif(not Install(home()).complete(),
                                reason="the Triton server is not set up: run `torchship serve --setup` "
                                       "(make install does it)")
TEXTS = ["the dog is running", "a good movie", "hello world this is a test", "it is"]


def _ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


@pytest.fixture(scope="module")
def served(exported, minilm_export, tmp_path_factory):
    """One server for the module: MiniLM, a tiny BERT (single, strict, ensemble) and a tiny classifier, written
    into a shared repository beside hand-written models (tests/hand_models.py)."""
    repo = tmp_path_factory.mktemp("serving") / "repo"
    bert = exported("bert")
    hand = write_hand_models(repo, bert / "model.onnx")
    write_text_repo(minilm_export, repo, TritonOptions(name="minilm"))
    write_text_repo(bert, repo, TritonOptions(name="bert", max_batch_size=4))
    write_text_repo(bert, repo, TritonOptions(name="strict", max_batch_size=4), ServeOptions(strict=True))
    write_text_repo(bert, repo, TritonOptions(name="ens", max_batch_size=4), ServeOptions(layout="ensemble"))
    write_text_repo(exported("bert", "text-classification"), repo, TritonOptions(name="cls", max_batch_size=4))
    tasks = {"ner": exported("bert", "token-classification"), "fill": exported("bert", "fill-mask"),
             "qa": exported("bert", "question-answering")}
    for name, folder in tasks.items():
        write_text_repo(folder, repo, TritonOptions(name=name, max_batch_size=4))
    write_text_repo(tasks["ner"], repo, TritonOptions(name="ner_first", max_batch_size=4),
                    ServeOptions(aggregation="first"))
    server = Server(repo, _ports(), log=tmp_path_factory.mktemp("log") / "server.log")
    server.start()
    try:
        yield server, {"minilm": minilm_export, "bert": bert, "cls": exported("bert", "text-classification"),
                       **tasks, "hand": hand}
    finally:
        code = server.stop()
        assert code == 0, server.log_tail()
        assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def _post(server, model: str, body) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.ports.http, timeout=30)
    conn.request("POST", f"/v2/models/{model}/infer", body if isinstance(body, (bytes, str)) else json.dumps(body))
    response = conn.getresponse()
    data = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, data


def _text_body(texts, name="TEXT", datatype="BYTES", shape=None):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape or [len(texts), 1], "data": texts}]}


def _still_serves(server, model="bert"):
    status, data = _post(server, model, _text_body(["still serving"]))
    assert status == 200, data


def _cosines(got, want):
    return [float(np.dot(g, w) / (np.linalg.norm(g) * np.linalg.norm(w))) for g, w in zip(got, want)]


def test_hand_written_models_are_served_as_they_are(served):
    """The repository is shared: the hand-written Python model and its ensemble answer as their author wrote
    them; the onnxruntime model (a backend this server lacks) and the ensemble over it are left out, one line
    each naming it and the backend; nothing of theirs changed, their README.md included."""
    server, folders = served
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1.5, -2]}]}
    for model in ("hand", "hand_ens"):
        status, data = _post(server, model, body)
        assert status == 200 and data["outputs"][0]["data"] == [3.0, -4.0], (model, data)
    assert {"hand", "hand_ens", "bert", "minilm"} <= set(server.models)
    assert not {"theirs", "theirs_ens", "notes"} & set(server.models)
    assert len(server.skipped) == 3
    assert any(line.startswith("model theirs ") and "needs Triton's onnxruntime backend" in line
               for line in server.skipped), server.skipped
    assert any(line.startswith("ensemble theirs_ens ") and "its step theirs needs Triton's onnxruntime" in line
               for line in server.skipped), server.skipped
    assert snapshot(server.repo, ("README.md", "hand", "hand_ens", "theirs", "theirs_ens", "notes")) == folders["hand"]
    conn = http.client.HTTPConnection("127.0.0.1", server.ports.http, timeout=30)
    conn.request("POST", "/v2/repository/models/hand/unload", "{}")  # no client loads or unloads models
    assert conn.getresponse().status != 200
    conn.close()
    assert _post(server, "hand", body)[0] == 200  # still loaded
    _still_serves(server)


@pytest.mark.parametrize("target", [TritonHTTP, TritonGRPC])
def test_answers_equal_the_local_predictor(served, target):
    server, folders = served
    port = server.ports.http if target is TritonHTTP else server.ports.grpc
    for model, folder, backend in (("minilm", folders["minilm"], "ort-optimized"), ("bert", folders["bert"], None),
                                   ("ens", folders["bert"], None)):
        send = target("127.0.0.1", port, model).connect()
        got = send(TEXTS)
        want = local_reference(folder, backend)(TEXTS)
        assert min(_cosines(got, want)) >= 0.9999, model
    labels = target("127.0.0.1", port, "cls").connect()(TEXTS)
    assert labels == local_reference(folders["cls"])(TEXTS)


def test_minilm_matches_sentence_transformers(served, minilm_dir):
    from sentence_transformers import SentenceTransformer

    server, _ = served
    texts = [line for line in Path(__file__).parents[1].joinpath("torchship/data/sentences.txt")
             .read_text().splitlines() if line.strip()][:24]
    send = TritonHTTP("127.0.0.1", server.ports.http, "minilm").connect()
    got = [v for i in range(0, len(texts), 8) for v in send(texts[i:i + 8])]  # max_batch_size 8
    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    assert min(_cosines(got, want)) >= 0.9999


def test_classifier_returns_labels_and_scores(served):
    server, _ = served
    status, data = _post(server, "cls", _text_body(TEXTS[:2]))
    assert status == 200
    out = {o["name"]: o for o in data["outputs"]}
    assert out["LABEL"]["shape"] == [2, 1] and all(isinstance(x, str) for x in out["LABEL"]["data"])
    scores = np.asarray(out["SCORES"]["data"]).reshape(out["SCORES"]["shape"])
    assert np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(np.asarray(out["SCORE"]["data"]), scores.max(axis=1), atol=1e-6)


@pytest.mark.parametrize("target", [TritonHTTP, TritonGRPC])
def test_entities_and_masks_equal_torchship_predict(served, target):
    from torchship.artifact import Artifact
    from torchship.runtimes import create_predictor
    from torchship.runtimes.text import TextModel

    server, folders = served
    port = server.ports.http if target is TritonHTTP else server.ports.grpc
    texts = ["the dog is running in the park", "a good movie about hello world", "it is"]
    for model, folder, aggregation in (("ner", folders["ner"], "simple"), ("ner_first", folders["ner"], "first")):
        got = target("127.0.0.1", port, model).connect()(texts)
        art = Artifact.open(folder)
        want = TextModel.from_artifact(art, create_predictor(art, "ort")).predict(texts, aggregation=aggregation)
        assert any(got) and same_results(got, json.loads(json.dumps(list(want.entities)))), (model, got)
    mask_texts = ["the dog is [MASK] in the park", "a [MASK] movie about [MASK] world"]
    got = target("127.0.0.1", port, "fill").connect()(mask_texts)
    assert [len(g) for g in got] == [1, 2] and all(len(c) == 5 for g in got for c in g)
    assert same_results(got, local_reference(folders["fill"])(mask_texts))
    check = check_answers(target("127.0.0.1", port, "ner"), texts, local_reference(folders["ner"]))
    assert check["passed"] and check["measure"] == "result agreement"


def _qa_body(questions, contexts):
    return {"inputs": [_text_body(questions, name="QUESTION")["inputs"][0], _text_body(contexts)["inputs"][0]]}


def test_question_answering_answers_as_torchship_predict(served):
    from torchship.artifact import Artifact
    from torchship.runtimes import create_predictor
    from torchship.runtimes.text import TextModel

    server, folders = served
    question = "who is eating the food?"
    contexts = ["the dog is eating the food at the cafe",
                " ".join(["the cat was running in the world and a man was eating good food"] * 20)]  # > 128 tokens
    status, data = _post(server, "qa", _qa_body([question] * 2, contexts))
    assert status == 200, data
    out = {o["name"]: o["data"] for o in data["outputs"]}
    art = Artifact.open(folders["qa"])
    want = TextModel.from_artifact(art, create_predictor(art, "ort")).predict(contexts, question=question).answers
    assert out["ANSWER"] == [w["answer"] for w in want]
    assert out["START"] == [w["start"] for w in want] and out["END"] == [w["end"] for w in want]
    assert np.allclose(out["SCORE"], [w["score"] for w in want], atol=1e-5)
    assert out["WINDOWS"][0] == 1 and out["WINDOWS"][1] > 1  # the long context read in overlapping windows
    assert all(c[s:e] == a for c, s, e, a in zip(contexts, out["START"], out["END"], out["ANSWER"]))


@pytest.mark.parametrize("model, body, words", [
    ("fill", _text_body(["no mask here"]), "row 0 has no [MASK] token"),
    ("qa", _qa_body(["who?"], ["   "]), "TEXT row 0 is empty"),
    ("qa", _qa_body(["who?", "what?"], ["a context"]), "batch size does not match"),  # Triton's own answer
    ("qa", _text_body(["a context"]), ""),  # no QUESTION: Triton's own answer
    ("qa", _qa_body([" ".join(["why"] * 200)], ["a context"]), "ask a shorter question"),
])
def test_task_faults_get_an_error_and_the_server_keeps_serving(served, model, body, words):
    server, _ = served
    status, data = _post(server, model, body)
    assert status == 400 and words in data.get("error", ""), data
    if model == "qa":
        status, data = _post(server, "qa", _qa_body(["who?"], ["the dog is eating"]))
        assert status == 200, data
    else:
        _still_serves(server, model if model != "fill" else "bert")


@pytest.mark.parametrize("body, words", [
    (_text_body([], shape=[0, 1]), ""),  # an empty batch
    (_text_body([""]), "empty"),  # an empty string
    (_text_body(["fine", "   "]), "row 1 is empty"),
    (_text_body(["a"] * 5), ""),  # over max_batch_size 4: Triton's own answer
    (_text_body(["a"], name="TEXTS"), ""),  # wrong input name
    (_text_body([1], datatype="INT64"), ""),  # wrong dtype
    (_text_body(["a"], shape=[1]), ""),  # wrong rank
])
def test_bad_requests_get_an_error_and_the_server_keeps_serving(served, body, words):
    server, _ = served
    for model in ("bert", "ens"):
        status, data = _post(server, model, body)
        assert status == 400, (model, data)
        assert words in data.get("error", ""), data
        _still_serves(server, model)


def test_bytes_that_are_not_utf8_are_refused(served):
    import tritonclient.grpc as grpcclient

    server, _ = served
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")
    inp = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"good"], [b"\xff\xfe bad"]], dtype=object))
    with pytest.raises(grpcclient.InferenceServerException, match="row 1 is not UTF-8"):
        client.infer("bert", [inp])
    _still_serves(server)


def test_a_long_text_is_truncated_and_says_so_unless_strict(served):
    server, folders = served
    long = " ".join(["dog"] * 20000)
    status, data = _post(server, "bert", _text_body([long, "it is"]))
    assert status == 200, data
    out = {o["name"]: o["data"] for o in data["outputs"]}
    max_length = json.loads((folders["bert"] / "torchship.json").read_text())["text"]["max_length"]
    assert out["TOKENS"] == [max_length, 4] and out["TRUNCATED"][0] == 20002 - max_length and out["TRUNCATED"][1] == 0
    status, data = _post(server, "strict", _text_body(["it is", long]))
    assert status == 400 and "row 1 has 20002 tokens" in data["error"]
    _still_serves(server, "strict")


def test_a_client_that_disconnects_mid_request_does_not_hurt(served):
    server, _ = served
    body = json.dumps(_text_body([" ".join(["dog"] * 5000)] * 4)).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.ports.http)) as s:
            s.sendall(f"POST /v2/models/bert/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                      .encode() + body[: len(body) // 2])  # half a request, then gone
        with socket.create_connection(("127.0.0.1", server.ports.http)) as s:
            s.sendall(f"POST /v2/models/bert/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                      .encode() + body)  # a whole request, gone before the answer
    _still_serves(server)


def test_64_concurrent_clients_lose_nothing(served):
    server, _ = served
    level = run_level(TritonHTTP("127.0.0.1", server.ports.http, "bert"), TEXTS, 64,
                      LoadOptions(concurrency=(64,), duration_s=3, warmup_s=0.5))
    assert level.errors == 0 and level.requests > 64 and level.texts == level.requests  # sent = answered
    _still_serves(server)


def test_loadtest_command_reports_and_checks(served, tmp_path):
    server, _ = served
    r = CliRunner().invoke(main, ["loadtest", server.http_url, "--model", "bert", "--concurrency", "1,2",
                                  "--duration", "1", "--warmup", "0.2", "--output", str(tmp_path / "lt")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "lt" / "loadtest.json").read_text())
    assert [v["concurrency"] for v in report["levels"]] == [1, 2]
    assert all(v["errors"] == 0 and v["requests"] > 0 and v["p99_ms"] >= v["p50_ms"] for v in report["levels"])
    assert report["check"]["passed"] and report["check"]["measure"] == "min cosine"
    assert (tmp_path / "lt" / "loadtest.png").stat().st_size > 0


def test_serve_refuses_bad_repositories_before_start(exported, tmp_path):
    bert = exported("bert")
    native = tmp_path / "native"
    write_text_repo(bert, native, TritonOptions(name="b"), ServeOptions(runtime="onnxruntime"))
    r = CliRunner().invoke(main, ["serve", str(native), "--check"])
    assert r.exit_code == EXIT_BAD_INPUT
    assert "model b_model needs Triton's onnxruntime backend" in r.output and "--runtime python" in r.output
    foreign = tmp_path / "foreign"
    (foreign / "theirs").mkdir(parents=True)
    r = CliRunner().invoke(main, ["serve", str(foreign), "--check"])
    assert r.exit_code == EXIT_BAD_INPUT and "folder theirs (not written by torchship): it is not a Triton model" \
        in r.output
    ours = tmp_path / "ours"
    write_text_repo(bert, ours, TritonOptions(name="b"))
    (ours / "b" / "1" / "tokenizer.json").unlink()
    r = CliRunner().invoke(main, ["serve", str(ours), "--check"])
    assert r.exit_code == EXIT_BAD_INPUT and "missing tokenizer.json" in r.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", str(native.parent / "none"), "--check"])
        assert r.exit_code == EXIT_BAD_INPUT
        write_text_repo(bert, tmp_path / "good", TritonOptions(name="b"))
        r = CliRunner().invoke(main, ["serve", str(tmp_path / "good"), "--check", "--http-port", str(port)])
        assert r.exit_code == EXIT_BAD_INPUT and f"port {port} on 127.0.0.1 is taken" in r.output


def test_serve_check_starts_answers_and_stops_clean(exported, tmp_path):
    repo = tmp_path / "repo"
    write_text_repo(exported("bert"), repo, TritonOptions(name="b"))
    p = _ports()
    r = CliRunner().invoke(main, ["serve", str(repo), "--check", "--http-port", p.http, "--grpc-port", p.grpc,
                                  "--metrics-port", p.metrics])
    assert r.exit_code == 0, r.output
    assert "check: b answered 2 texts (vector of" in r.output and "curl -s http://127.0.0.1:" in r.output
    time.sleep(0.5)
    Ports(p.http, p.grpc, p.metrics).checked("127.0.0.1")  # every port free again (InputError if not)


def test_serve_reports_the_model_that_failed_to_load(exported, tmp_path):
    repo = tmp_path / "repo"
    write_text_repo(exported("bert"), repo, TritonOptions(name="broken"))
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    p = _ports()
    r = CliRunner().invoke(main, ["serve", str(repo), "--check", "--http-port", p.http, "--grpc-port", p.grpc,
                                  "--metrics-port", p.metrics])
    assert r.exit_code == 1 and "model broken failed to load" in r.output, r.output


def test_sigterm_stops_serve_and_its_server(exported, tmp_path):
    repo = tmp_path / "repo"
    write_text_repo(exported("bert"), repo, TritonOptions(name="b"))
    p = _ports()
    proc = subprocess.Popen([sys.executable, "-c", "from torchship.cli import main; main()", "serve", str(repo),
                             "--http-port", str(p.http), "--grpc-port", str(p.grpc), "--metrics-port", str(p.metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    seen = []
    try:
        # serve says "serving" once its own readiness check is done: a SIGTERM before that stops it while
        # starting (exit 130), which is not what this test is about
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("serving; Ctrl-C stops it" in line for line in seen):
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
        TritonHTTP("127.0.0.1", p.http, "b").connect()(["hello"])  # it answers
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert proc.returncode == 0 and "stopped the server (exit 0)" in out, out
    left = subprocess.run(["pgrep", "-f", f"--http-port={p.http}"], capture_output=True, text=True).stdout
    assert not left.strip()
    assert Ports(p.http, p.grpc, p.metrics).checked("127.0.0.1")
