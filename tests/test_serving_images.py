"""A real tritonserver serving image folders written by `torchship triton`: PNG and JPEG bytes over HTTP and gRPC
answered as torchship's own steps answer them on this machine (the same decoding, preprocessing and heads on the
same variant file), each bad image refused in its own answer while the other requests of the batch are answered,
and the server keeps serving. One server for the module: a tiny ViT classifier, a tiny DINOv2 feature extractor, and
tiny CLIP and SigLIP (two graphs: IMAGE or TEXT in, zero-shot with LABELS)."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from tiny import LABELS
from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT, InputError
from torchship.serving.image_client import (ImageGRPC, ImageHTTP, binary_body, image_reference, local_image_results)
from torchship.serving.image_repo import write_repo
from torchship.serving.loadtest import ServerError, check_answers
from torchship.serving.repository import ServeOptions
from torchship.serving.server import Install, Ports, Server, free_port, home
from torchship.serving.triton_repo import TritonOptions

pytestmark = pytest.mark.skipif(not Install(home()).complete(),
                                reason="the Triton server is not set up: run `torchship serve --setup` "
                                       "(make install does it)")
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
              patch_size=8, num_channels=3)
MAX_PIXELS = 512 * 512  # the limit the "small" model is written with


def _save(folder, model_type: str, classifier: bool):
    import torch
    import transformers
    from transformers import AutoConfig, ViTImageProcessor

    extra = dict(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                 label2id={l: i for i, l in enumerate(LABELS)}) if classifier else {}
    torch.manual_seed(0)
    cls = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
    cls.from_config(AutoConfig.for_model(model_type, **VISION, **extra)).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)  # it travels with the export
    return folder


def _encoded(fmt: str, size=(40, 30), seed=0, mode="RGB", **save) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _animated() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


IMAGES = [_encoded("PNG"), _encoded("JPEG", seed=1, quality=90), _encoded("PNG", (64, 64), 2, mode="L"),
          _encoded("WEBP", (20, 50), 3)]


@pytest.fixture(scope="module")
def served(towers, tmp_path_factory):
    from torchship.exporters.export import ExportOptions, export

    root = tmp_path_factory.mktemp("images")
    folders = {}
    for name, model_type, task in (("vit", "vit", "image-classification"),
                                   ("dino", "dinov2", "image-feature-extraction")):
        src = _save(root / f"{name}-src", model_type, task == "image-classification")
        export(str(src), root / name, ExportOptions(task=task))
        folders[name] = root / name
    for kind in ("clip", "siglip"):  # two towers: text and vision graphs in one variant (conftest's, read only)
        folders[kind] = towers(kind) / "onnx"
    repo = root / "repo"
    write_repo(folders["vit"], repo, TritonOptions(name="vit", max_batch_size=8))
    write_repo(folders["dino"], repo, TritonOptions(name="dino", max_batch_size=8))
    write_repo(folders["vit"], repo, TritonOptions(name="small", max_batch_size=8, max_queue_delay_us=50_000),
               ServeOptions(max_image_pixels=MAX_PIXELS))
    for kind in ("clip", "siglip"):  # CLIP waits 50 ms for a batch to form (the batched-requests test reads it)
        delay = {"max_queue_delay_us": 50_000} if kind == "clip" else {}
        write_repo(folders[kind], repo, TritonOptions(name=kind, max_batch_size=8, **delay))
    server = Server(repo, Ports(free_port(), free_port(), free_port()), log=root / "server.log")
    server.start()
    try:
        yield server, folders, repo
    finally:
        assert server.stop() == 0, server.log_tail()


def _send(server, target, model, images):
    port = server.ports.http if target is ImageHTTP else server.ports.grpc
    return target("127.0.0.1", port, model).connect()(images)


@pytest.mark.parametrize("target", [ImageHTTP, ImageGRPC])
def test_png_and_jpeg_bytes_are_answered_as_the_local_steps_answer(served, target):
    server, folders, _ = served
    want = local_image_results(folders["vit"])(IMAGES)
    assert _send(server, target, "vit", IMAGES) == want["labels"]
    got = _send(server, target, "dino", IMAGES)
    assert np.abs(np.stack(got) - local_image_results(folders["dino"])(IMAGES)["embeddings"]).max() < 1e-5


def test_the_classifier_returns_every_score_and_the_notes(served):
    """SCORES in the labels' order equal the local softmax within 1e-5; NOTES says an animated GIF was read at its
    first frame; the repository says which variant it serves and how it preprocesses."""
    import tritonclient.grpc as grpcclient

    server, folders, repo = served
    images = [IMAGES[0], _animated()]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")
    inp = grpcclient.InferInput("IMAGE", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b] for b in images], dtype=object))
    result = client.infer("vit", [inp])
    want = local_image_results(folders["vit"])(images)
    assert np.abs(result.as_numpy("SCORES") - want["scores"]).max() < 1e-5
    assert np.allclose(result.as_numpy("SCORE")[:, 0], want["scores"].max(axis=1))
    notes = [json.loads(n[0]) for n in result.as_numpy("NOTES")]
    assert notes[0] == [] and len(notes[1]) == 1 and "first of 3 frames" in notes[1][0]
    settings = json.loads((repo / "vit" / "1" / "serving.json").read_text())
    assert settings["labels"] == LABELS and settings["preprocessing"].startswith("resize to 32x32 bilinear")
    assert sorted(p.name for p in (repo / "vit" / "1").iterdir() if p.name != "__pycache__") == [
        "model.onnx", "model.py", "preprocessor_config.json", "serving.json", "torchship_processing",
        "torchship_steps.py"]


def _truncated_jpeg() -> bytes:
    data = _encoded("JPEG", (64, 64), 5)
    return data[:len(data) // 2]


BAD = {"not an image": (b"these bytes are text, not an image", "not an image"),
       "truncated JPEG": (_truncated_jpeg(), "truncated or damaged JPEG"),
       "bomb": (_encoded("PNG", (600, 600), 6), "decompression bomb"),
       "empty bytes": (b"", "empty image")}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_image_is_its_own_requests_error_and_the_batch_is_answered(served, case):
    """Three requests at once (Triton batches them): the bad one gets one line naming its row, the two good ones
    their answers; then a good request is answered (the server keeps serving)."""
    server, folders, _ = served
    data, words = BAD[case]
    good = local_image_results(folders["vit"])(IMAGES[:2])["labels"]
    results = {}

    def call(key, images):
        try:
            results[key] = _send(server, ImageHTTP, "small", images)
        except ServerError as exc:
            results[key] = exc

    threads = [threading.Thread(target=call, args=args) for args in
               (("a", IMAGES[:1]), ("bad", [IMAGES[1], data]), ("b", IMAGES[1:2]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results["bad"], ServerError), results
    message = str(results["bad"])
    assert "HTTP 400" in message and "IMAGE row 1:" in message and words in message and "\n" not in message
    assert results["a"] == good[:1] and results["b"] == good[1:]
    assert _send(server, ImageGRPC, "small", IMAGES[:1]) == good[:1]


def test_the_bad_requests_shared_a_batch_with_good_ones(served):
    """What the test above is about: Triton ran the good and the bad requests in one execution (its statistics
    count an execution of more rows than any one request holds)."""
    server, _, _ = served
    import urllib.request

    stats = json.loads(urllib.request.urlopen(f"{server.http_url}/v2/models/small/stats", timeout=10).read())
    assert max(int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]) >= 3, stats


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: what a decompression bomb looks like to the first read."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_an_empty_batch_is_refused_and_the_default_limit_is_pillows(served):
    """Without --max-image-pixels: an image between Pillow's limit and twice it refused by ours, one over twice it by
    Pillow itself, each in a line; the 600x600 image "small" refuses is answered."""
    server, folders, _ = served
    import http.client

    body, header = binary_body([])
    conn = http.client.HTTPConnection("127.0.0.1", server.ports.http, timeout=30)
    conn.request("POST", "/v2/models/vit/infer", body, {"Inference-Header-Content-Length": str(header)})
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and "'IMAGE'" in error and "\n" not in error  # Triton's own answer
    conn.close()
    for side, words in ((10_000, "is 100000000 pixels, over the limit of 89478485"),
                        (20_000, "over twice Pillow's limit")):
        with pytest.raises(ServerError, match=f"IMAGE row 0: image refused as a decompression bomb.*{words}"):
            _send(server, ImageGRPC, "vit", [_png_header(side, side)])
    big = _encoded("PNG", (600, 600), 6)
    assert _send(server, ImageHTTP, "vit", [big]) == local_image_results(folders["vit"])([big])["labels"]


def test_check_answers_and_the_loadtest_command_with_images(served, tmp_path):
    server, folders, _ = served
    check = check_answers(ImageHTTP("127.0.0.1", server.ports.http, "dino"), IMAGES, image_reference(folders["dino"]))
    assert check["passed"] and check["measure"] == "min cosine"
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, data in enumerate(IMAGES):
        (pictures / f"{i}.img").write_bytes(data)
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        r = CliRunner().invoke(main, ["loadtest", url, "--model", "vit", "--images", str(pictures), "--protocol",
                                      protocol, "--concurrency", "2", "--duration", "0.5", "--warmup", "0.1",
                                      "--batch", "2", "--reference", str(folders["vit"]),
                                      "--output", str(tmp_path / protocol)])
        assert r.exit_code == 0, r.output
        report = json.loads((tmp_path / protocol / "loadtest.json").read_text())
        assert report["levels"][0]["errors"] == 0 and report["levels"][0]["requests"] > 0
        assert report["check"]["passed"] and report["check"]["measure"] == "label agreement"
        assert "| images/s |" in r.output and "2 image(s) per request" in r.output  # the report counts images


def test_layouts_that_cannot_serve_images_are_refused_in_one_line(served, tmp_path):
    _, folders, _ = served
    with pytest.raises(InputError, match="served as one Python model"):
        write_repo(folders["vit"], tmp_path / "r", TritonOptions(name="x"), ServeOptions(runtime="onnxruntime"))
    r = CliRunner().invoke(main, ["triton", str(folders["vit"]), "--output", str(tmp_path / "r"), "--layout",
                                  "ensemble"])
    assert r.exit_code == EXIT_BAD_INPUT and "Traceback" not in r.output and "one Python model" in r.output
    r = CliRunner().invoke(main, ["loadtest", "http://127.0.0.1:1", "--model", "x", "--images", str(tmp_path)])
    assert r.exit_code == EXIT_BAD_INPUT and "holds no files" in r.output
    assert not (tmp_path / "r").exists()


def test_serve_check_and_the_readme_know_image_models(served):
    """`serve --check`'s smoke test sends image models a generated PNG; the README shows an image request."""
    from torchship.serving.client import example_requests, smoke_test

    server, _, repo = served
    checks = smoke_test(server)
    assert {"check: dino answered 1 image (vector of 32)", "check: clip answered 1 image (vector of 16)"} <= set(checks)
    assert any(line.startswith("check: vit answered 1 image (label ") for line in checks), checks
    assert any("InferInput('IMAGE'" in line and "dino" in line for line in example_requests(server))
    readme = (repo / "README.md").read_text()
    assert "## One image" in readme and "client.infer('vit', [image])" in readme and "pillow` in the image" in readme


CLIP_LABELS = ["cat", "dog", "good food"]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_image_text_models_embed_images_and_texts_in_one_space_and_score_labels(served, kind):
    """IMAGE (HTTP's binary extension) and TEXT (JSON) give the local ImageModel's unit-length embeddings; IMAGE with
    LABELS over gRPC gives its zero-shot scores (CLIP's softmax, SigLIP's sigmoid with its bias, prompts padded to
    full length); IMAGE and TEXT together, or LABELS with TEXT, are refused in a line."""
    import tritonclient.grpc as grpcclient

    from torchship.artifact import Artifact
    from torchship.runtimes.images import ImageModel
    from torchship.serving.loadtest import TritonHTTP

    server, folders, _ = served
    model = ImageModel.from_artifact(Artifact.open(folders[kind]))
    got = np.stack(_send(server, ImageHTTP, kind, IMAGES[:3]))
    want = model.embed_images(IMAGES[:3]).embeddings
    assert np.abs(got - want).max() < 1e-5 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    texts = ["a photo of a cat", "a dog on the good food in the world"]
    got = np.stack(TritonHTTP("127.0.0.1", server.ports.http, kind).connect()(texts))
    assert np.abs(got - model.embed_texts(texts).embeddings).max() < 1e-5
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")
    image = grpcclient.InferInput("IMAGE", [2, 1], "BYTES")
    image.set_data_from_numpy(np.array([[b] for b in IMAGES[:2]], dtype=object))
    labels = grpcclient.InferInput("LABELS", [2, 3], "BYTES")
    labels.set_data_from_numpy(np.array([[w.encode() for w in CLIP_LABELS]] * 2, dtype=object))
    result = client.infer(kind, [image, labels])
    want = model.zero_shot(IMAGES[:2], CLIP_LABELS)
    assert np.abs(result.as_numpy("SCORES") - want.scores).max() < 1e-5
    assert [x[0].decode() for x in result.as_numpy("LABEL")] == [want.top(i, 1)[0][0] for i in range(2)]
    text = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    for inputs, words in (([image, text], "send IMAGE .encoded image files. or TEXT, one of them"),
                          ([text, labels], "LABELS go with IMAGE")):
        with pytest.raises(grpcclient.InferenceServerException, match=words):
            client.infer(kind, inputs)
    assert check_answers(ImageHTTP("127.0.0.1", server.ports.http, kind), IMAGES,
                         image_reference(folders[kind]))["passed"]


def test_image_text_requests_of_one_kind_run_as_one_batch(served):
    """Three IMAGE requests at once to CLIP: Triton batches them and the chain runs them as one batch of the vision
    graph (its statistics count an execution of 3 rows); each gets the local predictor's embedding."""
    import urllib.request

    from torchship.artifact import Artifact
    from torchship.runtimes.images import ImageModel

    server, folders, _ = served
    want = ImageModel.from_artifact(Artifact.open(folders["clip"])).embed_images(IMAGES[:3]).embeddings
    results = {}

    def call(i):
        results[i] = np.stack(_send(server, ImageHTTP, "clip", [IMAGES[i]]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(3):
        assert np.abs(results[i] - want[i:i + 1]).max() < 1e-5
    stats = json.loads(urllib.request.urlopen(f"{server.http_url}/v2/models/clip/stats", timeout=10).read())
    assert max(int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]) >= 3, stats
