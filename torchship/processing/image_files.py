"""Image files to Pillow images: the bytes a user or a client sends (PNG, JPEG, WebP, GIF, anything Pillow reads)
decoded once, each refusal one line (``ValueError``; callers turn it into torchship's typed error).

What ``decode`` gives is what transformers' own ``load_image`` gives its pipelines (the first frame, EXIF
orientation applied), with the image's mode kept: the model's processor decides how a mode becomes RGB
(``image.to_rgb``), and a note says where that drops information.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

PLAIN = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "RGBX")  # modes Pillow turns into RGB without a loss to say
WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # modes whose values can pass 255
ALPHA = "alpha channel: transparency is flattened as the model's processor does (onto white where it converts to RGB)"


def decode(data: bytes, *, max_pixels: int | None = None) -> tuple[Image.Image, tuple[str, ...]]:
    """The image in ``data`` and notes on what was done to it. ``max_pixels``: refuse an image of more pixels
    (None: Pillow's own limit, ``Image.MAX_IMAGE_PIXELS``; Pillow refuses twice its limit whatever this says)."""
    if data is None or len(data) == 0:
        raise ValueError("empty image: no bytes were sent")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, not {max_pixels}")
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    stream = io.BytesIO(bytes(data))
    with warnings.catch_warnings():
        # Pillow warns between its limit and twice it; the limit below refuses in one line instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError:
            raise ValueError(f"image refused as a decompression bomb: it declares over twice Pillow's limit "
                             f"of {Image.MAX_IMAGE_PIXELS} pixels") from None
        except UnidentifiedImageError:
            raise ValueError(f"not an image: Pillow reads no image format (PNG, JPEG, WebP, GIF, ...) in these "
                             f"{len(data)} bytes") from None
        except Exception as e:  # Pillow's format plugins raise many kinds on damaged headers
            raise ValueError(f"damaged image header: {_reason(e)}") from None
    width, height = image.size
    if limit is not None and width * height > limit:
        raise ValueError(f"image refused as a decompression bomb: {width}x{height} is {width * height} pixels, "
                         f"over the limit of {limit}")
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated image: the first of {frames} frames is read")
    try:
        image.load()
    except Exception as e:  # truncated data, a broken stream: the plugins say it in their own words
        raise ValueError(f"truncated or damaged {image.format or 'image'} file: {_reason(e)}") from None
    orientation = image.getexif().get(0x0112, 1)
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)  # as transformers' load_image does before its processor
        notes.append(f"EXIF orientation {orientation} applied (the image is turned as the camera recorded)")
    return image, tuple(notes) + _mode_notes(image)


def open_image(path, *, max_pixels: int | None = None) -> tuple[Image.Image, tuple[str, ...]]:
    """``decode`` of the file at ``path``; a file that cannot be read is refused in one line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read image file {path}: {e.strerror or e}") from None
    return decode(data, max_pixels=max_pixels)


def _mode_notes(image: Image.Image) -> tuple[str, ...]:
    """Notes on a mode that loses information on its way to RGB; a mode that would lose it silently refused."""
    mode = image.mode
    if mode in WIDE:
        low, high = image.getextrema()
        if low < 0 or high > 255:
            # Pillow's conversion to RGB (the processors') clips at 255: most such images would turn white
            raise ValueError(f"{mode} image with values from {low} to {high}: the model's processor would clip "
                             f"them at 255; convert it to 8 bits per channel first")
        return ()
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        return (ALPHA,)
    if mode not in PLAIN:
        try:
            image.convert("RGB")
        except ValueError:
            raise ValueError(f"image mode {mode} has no conversion to RGB in Pillow") from None
    return ()


def _reason(error: Exception) -> str:
    """One line of an error's own words."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
