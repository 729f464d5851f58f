"""``torchship predict`` on image files for the single-graph image models of the generic path: a ViT classifier
(labels with softmax scores) and DINOv2 features (the pooled embedding), equal to eager transformers with the
checkpoint's own image processor; text models' flags refused on an image folder in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runner import run
from tiny import LABELS
from torchship.exporters.export import export

VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, image_size=32,
              patch_size=8, num_channels=3)


def _checkpoint(model_type: str, folder):
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, BitImageProcessor, ViTImageProcessor

    torch.manual_seed(0)
    if model_type == "vit":
        config = AutoConfig.for_model("vit", **VISION, id2label=dict(enumerate(LABELS)),
                                      label2id={x: i for i, x in enumerate(LABELS)})
        model = AutoModelForImageClassification.from_config(config)
        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    else:  # DINOv2's processor resizes the shortest edge, then crops the centre
        model = AutoModel.from_config(AutoConfig.for_model("dinov2", **VISION))
        processor = BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                      do_convert_rgb=True)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module", params=["vit", "dinov2"])
def image_folder(request, tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp(request.param)
    model, processor = _checkpoint(request.param, root / "ckpt")
    art = export(str(root / "ckpt"), root / "out")
    rng = np.random.default_rng(1)
    paths = [root / "a.png", root / "b.jpg"]
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (30, 70, 3), dtype=np.uint8)).save(paths[1], quality=95)
    return request.param, art, model, processor, paths


def test_predict_on_image_files_equals_eager(image_folder):
    import torch
    from PIL import Image

    kind, art, model, processor, paths = image_folder
    ran = run("torchship", "predict", art.folder, *paths, "--json", "--backend", "ort")
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(ran.stdout)["results"]
    pixels = processor(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        eager = model(pixel_values=pixels)
    if kind == "vit":
        want = eager.logits.softmax(-1).numpy()
        got = np.array([[row["scores"][label] for label in LABELS] for row in rows])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert [row["label"] for row in rows] == [LABELS[i] for i in want.argmax(-1)]
        ran = run("torchship", "predict", art.folder, *paths, "--backend", "ort")
        assert ran.stdout.splitlines()[0].startswith(f"{paths[0]}: {LABELS[want[0].argmax()]} ")
    else:
        got = np.array([row["embedding"] for row in rows])
        np.testing.assert_allclose(got, eager.pooler_output.numpy(), atol=1e-4)


def test_image_folder_refuses_text_flags_in_one_line(image_folder):
    kind, art, model, processor, paths = image_folder
    for args, words in (((paths[0], "--labels", "a,b"), "zero-shot"), (("--text", "a cat"), "no text tower"),
                        ((paths[0], "--question", "who?"), "--question is for"), ((), "give image files")):
        ran = run("torchship", "predict", art.folder, *args, "--backend", "ort")
        assert ran.returncode != 0 and words in ran.stderr and "Traceback" not in ran.stderr, ran.stderr


def test_python_api_takes_pil_images_and_bytes(image_folder):
    import torch
    from PIL import Image

    from torchship.runtimes.images import ImageModel

    kind, art, model, processor, paths = image_folder
    image, data = Image.open(paths[0]), paths[1].read_bytes()
    with ImageModel.from_artifact(art, "ort") as images:
        result = images.predict([image, data])
    assert result.names == ("image 1", "image 2")
    pixels = processor(images=[image, Image.open(paths[1])], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        eager = model(pixel_values=pixels)
    if kind == "vit":
        np.testing.assert_allclose(result.scores, eager.logits.softmax(-1).numpy(), atol=1e-5)
        assert result.labels == tuple(LABELS)
    else:
        np.testing.assert_allclose(result.embeddings, eager.pooler_output.numpy(), atol=1e-4)
