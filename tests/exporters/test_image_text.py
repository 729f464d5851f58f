"""Image-text models (CLIP, SigLIP): two towers exported as two graphs of one folder, each validated and runnable
alone, and ``torchship predict`` on PNG files (zero-shot scores, image and text embeddings) equal to eager
transformers with its own tokenizer and image processor. Tiny random models built here (one layer, 32x32 images,
patch 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runner import run
from image_models import BIAS, SCALE
from torchship.artifact import Artifact
from torchship.runtimes import RuntimeOptions, create_predictor

LABELS = ["cat", "dog", "good food"]


def write_images(folder) -> list:
    """PNG files of other sizes and aspect ratios than the model's (the processor resizes and crops them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 52), (64, 30)]):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module", params=["clip", "siglip"])
def exported(request, towers, tmp_path_factory):
    """The checkpoint (the objects transformers loads from it) and its export (conftest's ``towers``: made once per
    test run, read only here)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    kind = request.param
    folder = towers(kind)
    ckpt = folder / "ckpt"
    model, tokenizer = AutoModel.from_pretrained(ckpt).eval(), AutoTokenizer.from_pretrained(ckpt)
    processor = AutoImageProcessor.from_pretrained(ckpt)
    return (kind, Artifact.open(folder / "onnx"), model, tokenizer, processor,
            write_images(tmp_path_factory.mktemp(kind)))


def _eager(kind, model, tokenizer, processor, texts, paths):
    """transformers' own answer: the processor's pixels, the tokenizer's ids (SigLIP's padded to its full length
    without a mask, as the zero-shot pipeline feeds it), the model's forward."""
    import torch
    from PIL import Image

    pad = dict(padding="max_length", max_length=64) if kind == "siglip" else dict(padding=True)
    enc = tokenizer(texts, truncation=True, return_tensors="pt", **pad)
    feeds = {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}  # SigLIP's tokenizer gives no mask
    pixels = processor(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(**feeds, pixel_values=pixels)


def test_two_graphs_validated_each_runnable_alone(exported):
    kind, art, model, *_ = exported
    variant = art.manifest.variants["model"]
    assert [g.name for g in variant.graphs] == ["text", "vision"]
    assert all(g.validation.passed and g.validation.max_abs < 1e-4 for g in variant.graphs)
    labels = {c["case"] for c in variant.validation.extra["outputs"]}
    assert any("padded" in label for label in labels)  # a padded text batch, at other shapes than the trace's
    text_inputs = [t.name for t in variant.graph("text").inputs]
    assert text_inputs == (["input_ids", "attention_mask"] if kind == "clip" else ["input_ids"])
    settings = art.manifest.text
    assert settings["logit_scale"] == pytest.approx(SCALE)
    assert settings["logit_bias"] == (None if kind == "clip" else pytest.approx(BIAS))
    assert settings["template"] == "a photo of a {}." and settings["template_from"] == "default"
    for name in ("preprocessor_config.json", "tokenizer.json", "text_model.onnx", "vision_model.onnx"):
        assert (art.folder / name).is_file()
    pixels = {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    outs = {}
    for backend in ("ort", "torch"):  # each graph alone, on each backend that runs one graph of several
        with create_predictor(art, backend, RuntimeOptions(threads=1), graph="vision") as vision:
            outs[backend] = vision.infer(pixels)["image_embeds"]
    assert outs["ort"].shape[0] == 2
    np.testing.assert_allclose(outs["ort"], outs["torch"], atol=1e-5)


def test_zero_shot_and_embeddings_equal_eager(exported):
    kind, art, model, tokenizer, processor, paths = exported
    ran = run("torchship", "predict", art.folder, *paths, "--labels", ",".join(LABELS), "--json", "--backend", "ort")
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(ran.stdout)["results"]
    got = np.array([[row["scores"][label] for label in LABELS] for row in rows])
    eager = _eager(kind, model, tokenizer, processor, [f"a photo of a {x}." for x in LABELS], paths)
    logits = eager.logits_per_image
    want = (logits.sigmoid() if kind == "siglip" else logits.softmax(-1)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [row["label"] for row in rows] == [LABELS[i] for i in want.argmax(-1)]
    # --template and --text: the text embedding of the prompt, in the image embeddings' space
    ran = run("torchship", "predict", art.folder, paths[0], "--text", "the dog is running", "--label", "dog",
              "--template", "this is a {}", "--json", "--backend", "ort")
    assert ran.returncode == 0, ran.stderr
    text_row, image_row = json.loads(ran.stdout)["results"]
    eager = _eager(kind, model, tokenizer, processor, ["the dog is running", "this is a dog"], paths[:1])
    np.testing.assert_allclose(text_row["embedding"], eager.text_embeds[0].numpy(), atol=1e-5)
    assert image_row["scores"]["dog"] == pytest.approx(
        float(eager.logits_per_image[0, 1].sigmoid() if kind == "siglip" else 1.0), abs=1e-5)
    ran = run("torchship", "predict", art.folder, *paths, "--json", "--backend", "ort")  # no labels: embeddings
    vectors = np.array([row["embedding"] for row in json.loads(ran.stdout)["results"]])
    eager = _eager(kind, model, tokenizer, processor, ["a"], paths)  # image_embeds at unit length
    np.testing.assert_allclose(vectors, eager.image_embeds.numpy(), atol=1e-5)


def test_zero_shot_equals_the_pipeline(exported):
    """transformers' zero-shot pipeline on the checkpoint (SigLIP's prompts padded to 64 tokens, no mask), its default
    template given as --template."""
    from PIL import Image
    from transformers import pipeline

    kind, art, *_, paths = exported
    want = pipeline("zero-shot-image-classification", model=art.manifest.source["model"])(
        Image.open(paths[0]), candidate_labels=LABELS)
    ran = run("torchship", "predict", art.folder, paths[0], "--labels", ",".join(LABELS), "--template",
              "This is a photo of {}.", "--json", "--backend", "ort")
    got = json.loads(ran.stdout)["results"][0]["scores"]
    assert {r["label"]: pytest.approx(r["score"], abs=1e-5) for r in want} == got


def test_bad_input_is_one_line(exported, tmp_path):
    kind, art, *_, paths = exported
    (tmp_path / "notes.png").write_text("not an image")
    for args, words in (((tmp_path / "missing.png", "--labels", "a"), "no such file"),
                        ((tmp_path / "notes.png", "--labels", "a"), "notes.png"),
                        ((paths[0], "--template", "x {}"), "--template is for zero-shot"),
                        ((paths[0], "--labels", "a", "--template", "no slot"), "has no {}")):
        ran = run("torchship", "predict", art.folder, *args, "--backend", "ort")
        assert ran.returncode != 0 and words in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    ran = run("torchship", "predict", art.folder, paths[0], "--backend", "openvino")
    assert ran.returncode != 0 and "image-text" in ran.stderr and "Traceback" not in ran.stderr
    with pytest.raises(Exception, match="holds 2 graphs"):
        create_predictor(art, "ort")
    ran = run("torchship", "quantize", art.folder, "--int8", "--method", "static")  # towers: dynamic per row only
    assert ran.returncode != 0 and "drop --method static" in ran.stderr and "Traceback" not in ran.stderr, ran.stderr


def test_a_checkpoint_template_is_kept(tmp_path):
    from torchship.exporters.image_text import DEFAULT_TEMPLATE, template_of

    assert template_of(tmp_path) == (DEFAULT_TEMPLATE, "default")
    (tmp_path / "config.json").write_text(json.dumps({"prompt_template": "a picture of {}"}))
    assert template_of(tmp_path) == ("a picture of {}", "checkpoint")
