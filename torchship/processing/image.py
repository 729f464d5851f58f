"""Images' own steps: a checkpoint's image processor (``preprocessor_config.json``) read into ``ImageSettings``,
and decoded images (``image_files.decode``) to one batch of ``pixel_values`` equal to what transformers' own
processor gives (its Pillow path: resize with Pillow on 8-bit RGB, centre crop, rescale in float64 then float32,
normalise in float32), so ``predict`` and a served model feed the model what transformers would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .image_files import decode, open_image  # noqa: F401 (the modality's whole API in one place)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BILINEAR, BICUBIC = 2, 3
FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # Pillow's numbers


def _kind(resample, mean, std, size, crop=None, rgb=False, square=True, crop_pct=None):
    """One processor class's defaults (its class attributes in transformers), for a config that omits a field.
    ``square``: how the class reads a bare number as ``size`` (a square, else the shortest edge)."""
    return {"resample": resample, "image_mean": mean, "image_std": std, "size": size, "crop_size": crop,
            "do_center_crop": crop is not None, "do_convert_rgb": rgb, "square": square, "crop_pct": crop_pct}


def _hw(side: int) -> dict:
    return {"height": side, "width": side}


# the processors whose pixel values are resize, centre crop, rescale and normalise (a test compares each)
KINDS = {
    "ViTImageProcessor": _kind(BILINEAR, HALF, HALF, _hw(224)),
    "DeiTImageProcessor": _kind(BICUBIC, HALF, HALF, _hw(256), _hw(224)),
    "BeitImageProcessor": _kind(BICUBIC, HALF, HALF, _hw(224)),
    "ConvNextImageProcessor": _kind(BICUBIC, HALF, HALF, {"shortest_edge": 384}, square=False, crop_pct=224 / 256),
    "BitImageProcessor": _kind(BICUBIC, CLIP_MEAN, CLIP_STD, {"shortest_edge": 224}, _hw(224), True, False),
    "CLIPImageProcessor": _kind(BICUBIC, CLIP_MEAN, CLIP_STD, {"shortest_edge": 224}, _hw(224), True, False),
    "ChineseCLIPImageProcessor": _kind(BICUBIC, CLIP_MEAN, CLIP_STD, {"shortest_edge": 224}, _hw(224), True, False),
    "SiglipImageProcessor": _kind(BICUBIC, HALF, HALF, _hw(224), rgb=True, square=False),
    "BlipImageProcessor": _kind(BICUBIC, CLIP_MEAN, CLIP_STD, _hw(384), rgb=True),
    "OwlViTImageProcessor": _kind(BICUBIC, CLIP_MEAN, CLIP_STD, _hw(768), rgb=True),
    "MobileNetV1ImageProcessor": _kind(BILINEAR, HALF, HALF, {"shortest_edge": 256}, _hw(224), square=False),
    "MobileNetV2ImageProcessor": _kind(BILINEAR, HALF, HALF, {"shortest_edge": 256}, _hw(224), square=False),
    "PvtImageProcessor": _kind(BICUBIC, IMAGENET_MEAN, IMAGENET_STD, _hw(224)),
    "SegformerImageProcessor": _kind(BILINEAR, IMAGENET_MEAN, IMAGENET_STD, _hw(512)),
}
# fields of a config that change pixel values in a way these steps do not reproduce, when set
UNSUPPORTED = ("do_pad", "do_flip_channel_order", "do_color_quantize", "rescale_offset", "include_top")


@dataclass(frozen=True)
class ImageSettings:
    """What a checkpoint's image processor does to one image, in transformers' order: to RGB, resize, centre
    crop, rescale, normalise; channels first."""

    processor: str  # transformers' class name, e.g. CLIPImageProcessor
    size: tuple[int, int] | None = None  # resize to (height, width)
    shortest_edge: int | None = None  # or resize the shortest edge to this, keeping the aspect ratio
    longest_edge: int | None = None  # ... and the longest edge to at most this (with shortest_edge)
    resample: int = BILINEAR  # Pillow's filter number
    crop_pct: float | None = None  # ConvNeXt's: below 384, resize to shortest_edge / crop_pct and crop back
    crop: tuple[int, int] | None = None  # centre crop to (height, width), padding with zeros where smaller
    rescale: float | None = 1 / 255  # None: no rescaling
    mean: tuple[float, ...] | None = HALF  # None: no normalisation
    std: tuple[float, ...] | None = HALF
    convert_rgb: bool = False  # transformers' convert_to_rgb (alpha onto white); else Pillow's plain RGB
    channels: int = 3

    @classmethod
    def from_config(cls, config: dict) -> "ImageSettings":
        """The settings of a parsed ``preprocessor_config.json``; a field it omits is its class's default."""
        kind = _kind_name(config)
        if kind not in KINDS:
            raise ValueError(f"image processor {kind or '(none named)'} is not one torchship reproduces; it "
                             f"reproduces {', '.join(KINDS)}")
        defaults = KINDS[kind]

        def field(name, default=None):
            return config[name] if config.get(name) is not None else defaults.get(name, default)

        for name in UNSUPPORTED:
            if config.get(name):
                raise ValueError(f"{kind} with {name} set changes pixels in a way torchship does not reproduce")
        size = _size(field("size"), defaults["square"]) if field("do_resize", True) else {}
        if (set(size) - {"height", "width", "shortest_edge", "longest_edge"} or ("height" in size) != ("width" in size)
                or ("longest_edge" in size and "shortest_edge" not in size)):
            raise ValueError(f"{kind} resizes to {size}, a size rule torchship does not reproduce")
        crop = _size(field("crop_size"), True) if field("do_center_crop") else None
        if crop is not None and set(crop) != {"height", "width"}:
            raise ValueError(f"{kind} crops to {crop}; a centre crop needs a height and a width")
        mean, std = (field("image_mean"), field("image_std")) if field("do_normalize", True) else (None, None)
        settings = cls(
            processor=kind, size=(size["height"], size["width"]) if "height" in size else None,
            shortest_edge=size.get("shortest_edge"), longest_edge=size.get("longest_edge"),
            resample=int(field("resample", BILINEAR)),
            crop_pct=float(field("crop_pct")) if kind == "ConvNextImageProcessor" else None,
            crop=(crop["height"], crop["width"]) if crop else None,
            rescale=float(field("rescale_factor", 1 / 255)) if field("do_rescale", True) else None,
            mean=_channels(mean, "image_mean"), std=_channels(std, "image_std"),
            convert_rgb=bool(field("do_convert_rgb")))
        settings.shape  # an output size that depends on each image is refused here, not at the first request
        return settings

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        if self.crop is not None:
            return (self.channels, *self.crop)
        if self.crop_pct is not None and self.shortest_edge is not None:
            return (self.channels, self.shortest_edge, self.shortest_edge)  # ConvNeXt ends square
        if self.size is not None:
            return (self.channels, *self.size)
        raise ValueError(f"{self.processor} gives each image its own size (it resizes the shortest edge and crops "
                         f"nothing); a model export needs one size")

    def describe(self) -> str:
        """One line: what happens to an image, e.g. ``resize shortest edge 224 bicubic, centre crop 224, rescale
        1/255, normalize``."""
        steps = []
        name = FILTERS.get(self.resample, f"filter {self.resample}")
        if self.crop_pct is not None and self.shortest_edge is not None:
            edge = self.shortest_edge
            steps.append(f"resize shortest edge {int(edge / self.crop_pct)} {name} (crop_pct {self.crop_pct:g}), "
                         f"centre crop {edge}" if edge < 384 else f"resize to {edge}x{edge} {name}")
        elif self.shortest_edge is not None:
            longest = f" (longest at most {self.longest_edge})" if self.longest_edge else ""
            steps.append(f"resize shortest edge {self.shortest_edge}{longest} {name}")
        elif self.size is not None:
            steps.append(f"resize to {self.size[0]}x{self.size[1]} {name}")
        if self.crop is not None:
            steps.append(f"centre crop {_side(self.crop)}")
        if self.rescale is not None:
            inverse = 1 / self.rescale
            steps.append(f"rescale 1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-6
                         else f"rescale {self.rescale:g}")
        if self.mean is not None:
            steps.append("normalize")
        return ", ".join(steps) or "no resizing or scaling"


def preprocess(images, settings: ImageSettings) -> np.ndarray:
    """``pixel_values`` [n, channels, height, width] float32 of decoded images, as the processor gives them."""
    images = list(images)
    if not images:
        raise ValueError("empty batch: no images to preprocess")
    out = np.empty((len(images), *settings.shape), dtype=np.float32)
    for row, image in enumerate(images):
        pixels = _pixels(image, settings)
        if pixels.shape != out.shape[1:]:
            raise ValueError(f"an image of {image.size[0]}x{image.size[1]} preprocesses to {pixels.shape[1:]}, "
                             f"not the model's {out.shape[2:]}")
        out[row] = pixels
    return out


def to_rgb(image: Image.Image, settings: ImageSettings) -> Image.Image:
    """The RGB image the processor works on: transformers' ``convert_to_rgb`` (transparency composited onto white)
    for a processor that converts, else Pillow's plain conversion, as transformers' ``load_image`` does for its
    pipelines (such a processor itself refuses anything but RGB)."""
    if settings.convert_rgb and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _pixels(image: Image.Image, s: ImageSettings) -> np.ndarray:
    """One image's pixel values [channels, height, width], each step as transformers' Pillow path computes it."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a decoded image (PIL.Image.Image), got {type(image).__name__}")
    image = to_rgb(image, s)
    width, height = image.size
    if s.crop_pct is not None and s.shortest_edge is not None:
        edge = s.shortest_edge
        if edge < 384:  # ConvNeXt: resize to edge / crop_pct keeping the ratio, then crop back to edge
            image = image.resize(_shortest((height, width), int(edge / s.crop_pct))[::-1], s.resample)
            array = _centre_crop(np.asarray(image), (edge, edge))
        else:  # warped to a square at 384 and above, as the checkpoints were evaluated
            array = np.asarray(image.resize((edge, edge), s.resample))
    elif s.shortest_edge is not None:
        target = (_with_longest((height, width), s.shortest_edge, s.longest_edge) if s.longest_edge
                  else _shortest((height, width), s.shortest_edge))
        array = np.asarray(image.resize(target[::-1], s.resample))
    elif s.size is not None:
        array = np.asarray(image.resize(s.size[::-1], s.resample))
    else:
        array = np.asarray(image)
    if s.crop is not None:
        array = _centre_crop(array, s.crop)
    values = (array.astype(np.float64) * s.rescale).astype(np.float32) if s.rescale is not None \
        else array.astype(np.float32)
    if s.mean is not None:
        values = (values - np.array(s.mean, dtype=np.float32)) / np.array(s.std, dtype=np.float32)
    return values.transpose(2, 0, 1)


def _shortest(hw: tuple[int, int], edge: int) -> tuple[int, int]:
    """(height, width) with the shortest side ``edge`` and the other truncated (transformers'
    ``get_resize_output_image_size`` without a maximum)."""
    height, width = hw
    short, long = (width, height) if width <= height else (height, width)
    long = int(edge * long / short)
    return (long, edge) if width <= height else (edge, long)


def _with_longest(hw: tuple[int, int], edge: int, longest: int) -> tuple[int, int]:
    """(height, width) for a shortest and a longest edge (transformers' ``get_size_with_aspect_ratio``)."""
    height, width = hw
    raw = None
    low, high = float(min(hw)), float(max(hw))
    if high / low * edge > longest:
        raw = longest * low / high
        edge = int(round(raw))
    if (height <= width and height == edge) or (width <= height and width == edge):
        return height, width
    if width < height:
        return int((raw if raw is not None else edge) * height / width), edge
    return edge, int((raw if raw is not None else edge) * width / height)


def _centre_crop(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[height, width, channels] cut to ``hw`` about its centre, zero-padded where smaller (transformers'
    ``center_crop``, which rounds the offset down and the padding up)."""
    height, width = array.shape[:2]
    crop_h, crop_w = hw
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return array[top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w, array.shape[2]), dtype=array.dtype)
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded[pad_top:pad_top + height, pad_left:pad_left + width] = array
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def _kind_name(config: dict) -> str | None:
    """The processor's class name, without transformers' backend suffixes; an old feature extractor's name read
    as its image processor's."""
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not isinstance(name, str):
        return None
    name = name.replace("FeatureExtractor", "ImageProcessor")
    for suffix in ("Fast", "Pil"):
        name = name[:-len(suffix)] if name.endswith(suffix) else name
    return name


def _size(value, square: bool) -> dict:
    """A config's size as a dict, a bare number read as transformers' ``get_size_dict`` reads it."""
    if isinstance(value, dict):
        return {k: int(v) for k, v in value.items() if v is not None}
    if isinstance(value, (int, float)):
        return {"height": int(value), "width": int(value)} if square else {"shortest_edge": int(value)}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    raise ValueError(f"an image size of {value!r} is not one torchship reads")


def _channels(values, name: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} has {len(values)} values; an RGB image needs 3")
    return values


def _side(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"
