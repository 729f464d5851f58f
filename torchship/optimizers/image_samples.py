"""Images for calibrating and judging image models: generated in code, seeded, and the user's own folder.

quantize needs pictures, not noise: a Gaussian tensor has none of the smooth regions, edges and textures whose
activation ranges calibration should see, and a classifier's top-1 on noise says little. So a small set is drawn
here, deterministically (numpy only): smooth colour gradients, filled shapes on a background, low-frequency noise
textures and stripes, drawn at a photo's size and preprocessed by the checkpoint's processor (``processing.image``). The
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
# (height, width) of the generated photos: larger than most models' size, so the processor resizes them as it would
# a user's photo (bench's preprocessing row times full 640x480 ones)
GENERATED_SIZE = (240, 320)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KINDS = ("gradient", "shapes", "texture", "stripes")


def generated_images(n: int, *, seed: int, size: tuple[int, int] = GENERATED_SIZE) -> list[np.ndarray]:
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


def settings_of(folder: Path, manifest):
    """The folder's image processor settings (``processing.image``), or None when the export kept no processor;
    one line when it is one torchship does not reproduce or its size is not the model's."""
    from torchship.processing.image import ImageSettings

    config = processor_config(folder)
    if not config:
        return None
    try:
        settings = ImageSettings.from_config(config)
        shape = settings.shape
    except ValueError as exc:
        raise InputError(f"{folder}: {exc}") from None
    if shape != image_shape(manifest):
        raise InputError(f"{folder}: its image processor makes {shape[1]}x{shape[2]} images, the model takes "
                         f"{image_shape(manifest)[1]}x{image_shape(manifest)[2]}")
    return settings


def normalised(images: list[np.ndarray]) -> np.ndarray:
    """(n, c, h, w) float32 of uint8 RGB images already at the model's size, for a folder without a processor:
    rescaled to [0, 1] and normalised with ImageNet's mean and std, transformers' defaults."""
    from torchship.processing.image import IMAGENET_MEAN, IMAGENET_STD

    x = np.stack(images).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def image_shape(manifest) -> tuple[int, int, int]:
    """(channels, height, width) of the model's pixel input (the batch is the one dynamic axis)."""
    shape = manifest.inputs[0]["shape"]
    return tuple(int(d) for d in shape[1:])


def generated_pixels(folder: Path, manifest, n: int, *, seed: int) -> np.ndarray:
    """``n`` generated photos preprocessed by the folder's image processor (resized from GENERATED_SIZE as a
    user's photo would be); without a processor, drawn at the model's size and normalised."""
    from PIL import Image

    from torchship.processing.image import preprocess

    settings = settings_of(folder, manifest)
    if settings is None:
        channels, height, width = image_shape(manifest)
        return normalised(generated_images(n, seed=seed, size=(height, width)))[:, :channels]
    return preprocess([Image.fromarray(a) for a in generated_images(n, seed=seed, size=GENERATED_SIZE)], settings)


def folder_pixels(folder: Path, manifest, user_folder: Path) -> np.ndarray:
    """A folder of the user's images (its image files, sorted by name), decoded and preprocessed by
    ``processing.image`` as the checkpoint's processor does."""
    from torchship.processing.image import open_image, preprocess

    if not user_folder.is_dir():
        raise InputError(f"calibration folder {user_folder} does not exist")
    files = sorted(p for p in user_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"calibration folder {user_folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    settings = settings_of(folder, manifest)
    if settings is None:
        raise InputError(f"{folder} keeps no image processor (preprocessor_config.json), so images cannot be "
                         "turned into pixel values; give an .npz of pixel_values")
    images = []
    for path in files:
        try:
            images.append(open_image(path)[0])
        except ValueError as exc:
            raise InputError(f"calibration image {path.name}: {exc}") from None
    return preprocess(images, settings)


def calibration_pixels(folder: Path, manifest, user_folder: str | None) -> np.ndarray:
    """The generated calibration images, plus the user's folder of images when given."""
    pixels = generated_pixels(folder, manifest, CALIBRATION_IMAGES, seed=CALIBRATION_SEED)
    if user_folder is None:
        return pixels
    return np.concatenate([pixels, folder_pixels(folder, manifest, Path(user_folder))])


def probe_pixels(folder: Path, manifest) -> np.ndarray:
    """The held-out images quantize judges on (another seed than calibration's)."""
    return generated_pixels(folder, manifest, PROBE_IMAGES, seed=PROBE_SEED)


def loud_image(pixels: np.ndarray, seed: int = 3) -> np.ndarray:
    """One image of full-range noise at the model's size: beside it, a per-tensor activation scale spans far more
    than a quiet image needs, so a batch-dependent variant moves the quiet image's answer."""
    rng = np.random.default_rng(seed)
    low, high = float(pixels.min()), float(pixels.max())
    return rng.uniform(low, high, (1, *pixels.shape[1:])).astype(np.float32)
