"""Images' preprocessing against transformers' own image processors (their Pillow path, the one they take without
torchvision), on images generated here in every mode and shape a user sends, and each bad input refused in one
line. A processor is built from its preprocessor_config.json as transformers saves it."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from torchship.processing.image import KINDS, ImageSettings, decode, open_image, preprocess

# the sizes and modes a user sends: landscape, portrait, smaller and far larger than the model's size, a strip
SHAPES = [(640, 480), (300, 500), (50, 37), (1200, 900), (17, 300), (224, 224)]
MODES = ["RGB", "L", "P", "RGBA", "CMYK", "I;16", "LA", "PA"]
VARIANTS = [(kind, {}) for kind in KINDS] + [
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}),  # below 384: resize by crop_pct, crop back
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.95, "resample": 2}),
    ("ViTImageProcessor", {"size": {"height": 256, "width": 230}, "do_center_crop": True,
                           "crop_size": {"height": 200, "width": 180}}),
    ("CLIPImageProcessor", {"size": {"shortest_edge": 224, "longest_edge": 300}}),
    ("CLIPImageProcessor", {"size": {"shortest_edge": 160}, "crop_size": {"height": 192, "width": 192}}),  # pads
    ("SiglipImageProcessor", {"size": {"height": 256, "width": 256}, "resample": 2}),
]


def _image(rng, size, mode) -> Image.Image:
    width, height = size
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (height, width), dtype=np.uint8)]))
    if mode == "I;16":  # 16 bits per pixel holding 8-bit values: what a 16-bit greyscale PNG of a photo decodes to
        return Image.fromarray(rng.integers(0, 256, (height, width)).astype(np.uint16))
    if mode == "PA":
        image = Image.fromarray(rgb).convert("P")
        return Image.merge("PA", (image, Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))))
    return Image.fromarray(rgb).convert(mode) if mode != "RGB" else Image.fromarray(rgb)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _processor(tmp_path, config: dict):
    """transformers' processor for ``config`` and the preprocessor_config.json it saves, read back."""
    from transformers import AutoImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = AutoImageProcessor.from_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return processor, json.loads((tmp_path / "preprocessor_config.json").read_text())


def _reference(processor, settings, images) -> np.ndarray:
    """transformers' pixel values; a processor that does not convert to RGB refuses anything else, so it gets
    what transformers' pipelines give it (load_image's plain conversion), as ``preprocess`` does."""
    images = [im if settings.convert_rgb else im.convert("RGB") for im in images]
    return processor(images, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("kind, extra", VARIANTS, ids=[f"{k}{'+' if e else ''}{i}" for i, (k, e) in
                                                        enumerate(VARIANTS)])
def test_pixel_values_equal_the_processors(tmp_path, kind, extra):
    processor, config = _processor(tmp_path, {"image_processor_type": kind, **extra})
    assert type(processor).__name__ == f"{kind}Pil"  # the Pillow path: no torchvision here
    settings = ImageSettings.from_config(config)
    rng = np.random.default_rng(len(kind))
    # every mode at some shape and every shape in some mode, in one batch
    images = [_image(rng, SHAPES[i % len(SHAPES)], mode) for i, mode in enumerate(MODES + MODES[:4])]
    ours = preprocess(images, settings)
    reference = _reference(processor, settings, images)
    assert ours.dtype == np.float32 and ours.shape == reference.shape == (len(images), *settings.shape)
    assert np.abs(ours - reference).max() <= 1e-6


def test_settings_of_the_clip_and_convnext_processors(tmp_path):
    clip = ImageSettings.from_config(_processor(tmp_path, {"image_processor_type": "CLIPImageProcessor"})[1])
    assert clip.describe() == "resize shortest edge 224 bicubic, centre crop 224, rescale 1/255, normalize"
    assert clip.shape == (3, 224, 224) and clip.convert_rgb and clip.resample == 3
    convnext = ImageSettings.from_config({"image_processor_type": "ConvNextImageProcessorFast",
                                          "size": {"shortest_edge": 224}})  # fields left out: the class's own
    assert convnext.shape == (3, 224, 224) and convnext.crop_pct == 0.875
    assert convnext.describe().startswith("resize shortest edge 256 bicubic (crop_pct 0.875), centre crop 224")
    old = ImageSettings.from_config({"feature_extractor_type": "ViTFeatureExtractor", "size": 384})
    assert old.size == (384, 384) and old.shape == (3, 384, 384)


@pytest.mark.parametrize("config, message", [
    ({"image_processor_type": "DonutImageProcessor"}, "image processor DonutImageProcessor is not one torchship"),
    ({}, r"image processor \(none named\) is not one"),
    ({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False}, "gives each image its own size"),
    ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "with do_pad set"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"height": 224}}, "a size rule torchship does not"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"max_height": 224, "max_width": 224}}, "a size rule"),
    ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}, "image_mean has 2 values"),
])
def test_a_processor_it_cannot_reproduce_is_refused_in_one_line(config, message):
    with pytest.raises(ValueError, match=message) as info:
        ImageSettings.from_config(config)
    assert "\n" not in str(info.value)


def test_encoded_files_decode_to_what_the_processor_is_given(tmp_path):
    """PNG, JPEG, WebP and GIF bytes as a client sends them, through decode and preprocess, equal the processor
    on the same decoded image; a mode keeps its own conversion and a note says where alpha is flattened."""
    processor, config = _processor(tmp_path, {"image_processor_type": "CLIPImageProcessor"})
    settings = ImageSettings.from_config(config)
    rng = np.random.default_rng(1)
    files = {"png": _encoded(_image(rng, (640, 480), "RGB"), "PNG"),
             "jpeg": _encoded(_image(rng, (300, 500), "RGB"), "JPEG", quality=90),
             "webp": _encoded(_image(rng, (100, 90), "RGB"), "WEBP"),
             "grey": _encoded(_image(rng, (80, 60), "L"), "PNG"),
             "cmyk": _encoded(_image(rng, (80, 60), "CMYK"), "JPEG"),
             "rgba": _encoded(_image(rng, (80, 60), "RGBA"), "PNG"),
             "gif": _encoded(_image(rng, (80, 60), "P"), "GIF", transparency=0),
             "16bit": _encoded(_image(rng, (80, 60), "I;16"), "PNG")}
    decoded = {name: decode(data) for name, data in files.items()}
    modes = {name: image.mode for name, (image, _) in decoded.items()}
    assert modes == {"png": "RGB", "jpeg": "RGB", "webp": "RGB", "grey": "L", "cmyk": "CMYK", "rgba": "RGBA",
                     "gif": "P", "16bit": "I;16"}
    flattened = {name for name, (_, notes) in decoded.items() if any("transparency is flattened" in n for n in notes)}
    assert flattened == {"rgba", "gif"}
    images = [image for image, _ in decoded.values()]
    assert np.abs(preprocess(images, settings) - _reference(processor, settings, images)).max() <= 1e-6
    path = tmp_path / "cat.png"
    path.write_bytes(files["png"])
    assert np.array_equal(np.asarray(open_image(path)[0]), np.asarray(decoded["png"][0]))


def test_an_animated_image_gives_its_first_frame_and_says_so():
    frames = [Image.fromarray(np.full((40, 50, 3), value, dtype=np.uint8)) for value in (10, 120, 240)]
    data = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image, notes = decode(data)
    assert notes == ("animated image: the first of 3 frames is read",)
    assert np.asarray(image.convert("RGB"))[0, 0].tolist() == [10, 10, 10]


def test_an_image_far_larger_than_the_model_is_resized_and_exif_orientation_applied():
    big = Image.fromarray(np.random.default_rng(2).integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: the picture is stored on its side
    image, notes = decode(_encoded(big, "JPEG", exif=exif.tobytes()))
    assert image.size == (3000, 4000) and notes == (
        "EXIF orientation 6 applied (the image is turned as the camera recorded)",)
    vit = ImageSettings.from_config({"image_processor_type": "ViTImageProcessor"})
    assert preprocess([image], vit).shape == (1, 3, 224, 224)


def _png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes that declares ``width`` x ``height`` pixels (no pixel data is ever made)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _bad_inputs():
    rng = np.random.default_rng(3)
    jpeg = _encoded(_image(rng, (200, 150), "RGB"), "JPEG")
    wide = Image.fromarray((rng.integers(0, 4096, (30, 40))).astype(np.uint16))
    return [
        ("not an image", b"GIF? no: a text file\n", {}, "not an image: Pillow reads no image format"),
        ("empty", b"", {}, "empty image: no bytes were sent"),
        ("truncated jpeg", jpeg[:len(jpeg) // 2], {}, "truncated or damaged JPEG file"),
        ("bomb over max_pixels", _encoded(_image(rng, (100, 100), "RGB"), "PNG"), {"max_pixels": 5000},
         "decompression bomb: 100x100 is 10000 pixels, over the limit of 5000"),
        ("bomb over pillow's limit", _png_header(10_000, 10_000), {}, "over the limit of 89478485"),
        ("bomb over twice pillow's limit", _png_header(20_000, 20_000), {}, "over twice Pillow's limit"),
        ("16 bits past 255", _encoded(wide, "PNG"), {}, "I;16 image with values from"),
        ("bad limit", b"x", {"max_pixels": 0}, "max_pixels must be a positive number"),
    ]


@pytest.mark.parametrize("name, data, options, message", _bad_inputs(), ids=[b[0] for b in _bad_inputs()])
def test_each_bad_input_is_refused_in_one_line(name, data, options, message):
    with pytest.raises(ValueError, match=message) as info:
        decode(data, **options)
    assert "\n" not in str(info.value)


def test_an_empty_batch_and_a_missing_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty batch: no images to preprocess"):
        preprocess([], ImageSettings.from_config({"image_processor_type": "ViTImageProcessor"}))
    with pytest.raises(ValueError, match="cannot read image file .*nothing.png"):
        open_image(tmp_path / "nothing.png")
