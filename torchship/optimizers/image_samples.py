"""Images for calibrating and judging image models: generated in code, seeded, and the user's own folder.

quantize needs pictures, not noise: a Gaussian tensor has none of the smooth regions, edges and textures whose
activation ranges calibration should see, and a classifier's top-1 on noise says little. So a small set is drawn
here, deterministically (numpy only): smooth colour gradients, filled shapes on a background, low-frequency noise
textures and stripes, drawn at the model's size and normalised as the checkpoint's processor does. The
calibration images and the judging images come from different seeds, so int8 is judged on images it was not
calibrated on. A folder of the user's images (``--calibration DIR``) is read with ``processing.image`` and added to
the generated calibration set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from torchship.errors import InputError

CALIBRATION_SEED, PROBE_SEED = 1, 2  # different seeds: the probe's images are held out of calibration
CALIBRATION_IMAGES = 32
PROBE_IMAGES = 48
BATCH_IMAGES = 8  # images run alone and again inside one batch (the batch check)
PHOTO_SIZE = (480, 640)  # (height, width) the generated images are drawn at, as a typical photo
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KINDS = ("gradient", "shapes", "texture", "stripes")


def generated_images(n: int, *, seed: int, size: tuple[int, int] = PHOTO_SIZE) -> list[np.ndarray]:
    """``n`` RGB images (uint8, height x width x 3), the kinds in turn, the same for the same seed."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / max(height - 1, 1), x / max(width - 1, 1)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "gradient":  # two colours blended along a random direction
            angle = rng.uniform(0, 2 * np.pi)
            t = (np.cos(angle) * x + np.sin(angle) * y)
            t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            image = a + t[..., None] * (b - a)
        elif kind == "shapes":  # discs and rectangles of flat colour on a flat background
            image = np.broadcast_to(rng.uniform(0, 255, 3), (height, width, 3)).copy()
            for _ in range(int(rng.integers(2, 6))):
                cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
                inside = ((y - cy) ** 2 + (x - cx) ** 2 < r * r) if rng.random() < 0.5 else \
                    ((np.abs(y - cy) < r) & (np.abs(x - cx) < r * rng.uniform(0.5, 2)))
                image[inside] = rng.uniform(0, 255, 3)
        elif kind == "texture":  # coarse noise, upsampled: smooth blobs of colour
            cells = int(rng.integers(3, 12))
            coarse = rng.uniform(0, 255, (cells, cells, 3))
            rows = np.minimum((y * cells).astype(int), cells - 1)
            cols = np.minimum((x * cells).astype(int), cells - 1)
            image = coarse[rows, cols] + rng.normal(0, 12, (height, width, 3))
        else:  # stripes of a random period and angle, two colours
            angle, period = rng.uniform(0, np.pi), rng.uniform(0.02, 0.2)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period)
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            image = a + t[..., None] * (b - a)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


def processor_config(folder: Path) -> dict:
    """The image processor's settings the export copied into the folder ({} when it has none)."""
    from torchship.exporters.generic_media import PROCESSOR_FILES

    for name in PROCESSOR_FILES:
        path = Path(folder) / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return data.get("image_processor", data) if name == "processor_config.json" else data
    return {}


def normalised(images: list[np.ndarray], config: dict) -> np.ndarray:
    """(n, c, h, w) float32: uint8 RGB ``images`` already at the model's size, rescaled and normalised with the
    processor's own factor, mean and std (ImageNet's where it names none), as its processor treats an image that
    needs no resize: the generated sets are drawn at the model's size, so they need no resize filter."""
    from torchship.exporters.generic_media import IMAGENET_MEAN, IMAGENET_STD

    x = np.stack(images).astype(np.float32)
    if config.get("do_rescale", True):
        x = x * np.float32(config.get("rescale_factor", 1 / 255))
    if config.get("do_normalize", True):
        mean = np.asarray(config.get("image_mean", IMAGENET_MEAN), np.float32)
        std = np.asarray(config.get("image_std", IMAGENET_STD), np.float32)
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def image_shape(manifest) -> tuple[int, int, int]:
    """(channels, height, width) of the model's pixel input (the batch is the one dynamic axis)."""
    shape = manifest.inputs[0]["shape"]
    return tuple(int(d) for d in shape[1:])


def generated_pixels(folder: Path, manifest, n: int, *, seed: int) -> np.ndarray:
    """``n`` generated images at the model's size, normalised as its processor does."""
    channels, height, width = image_shape(manifest)
    pixels = normalised(generated_images(n, seed=seed, size=(height, width)), processor_config(folder))
    return pixels[:, :channels] if channels < 3 else pixels


def folder_pixels(folder: Path, user_folder: Path) -> np.ndarray:
    """A folder of the user's images (its image files, sorted by name), decoded and preprocessed by
    ``processing.image`` as the checkpoint's processor does."""
    from torchship.processing.image import ImageSettings, open_image, preprocess

    if not user_folder.is_dir():
        raise InputError(f"calibration folder {user_folder} does not exist")
    files = sorted(p for p in user_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"calibration folder {user_folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    settings = ImageSettings.from_config(processor_config(folder))
    return preprocess([open_image(p)[0] for p in files], settings)


def calibration_pixels(folder: Path, manifest, user_folder: str | None) -> np.ndarray:
    """The generated calibration images, plus the user's folder of images when given."""
    pixels = generated_pixels(folder, manifest, CALIBRATION_IMAGES, seed=CALIBRATION_SEED)
    if user_folder is None:
        return pixels
    return np.concatenate([pixels, folder_pixels(folder, Path(user_folder)).astype(np.float32)])


def probe_pixels(folder: Path, manifest) -> np.ndarray:
    """The held-out images quantize judges on (another seed than calibration's)."""
    return generated_pixels(folder, manifest, PROBE_IMAGES, seed=PROBE_SEED)


def loud_image(pixels: np.ndarray, seed: int = 3) -> np.ndarray:
    """One image of full-range noise at the model's size: beside it, a per-tensor activation scale spans far more
    than a quiet image needs, so a batch-dependent variant moves the quiet image's answer."""
    rng = np.random.default_rng(seed)
    low, high = float(pixels.min()), float(pixels.max())
    return rng.uniform(low, high, (1, *pixels.shape[1:])).astype(np.float32)
