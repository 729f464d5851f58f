"""The image processor's own cost, timed beside the model rows of an image benchmark: a fast model behind a slow
resize is not fast. ``processing.image.preprocess`` (what predict and the served model run) on decoded photos of a
typical size, as many per call as the batch, its own row (phase ``preprocess-image``) in the same interleaved
rounds as the backends."""

from __future__ import annotations

from typing import Callable

PREPROCESS = "preprocess"
PHASE = "preprocess-image"
PHOTO_SIZE = (480, 640)  # (height, width): a typical camera or web photo, decoded
DISTINCT = 8  # photos drawn; a larger batch repeats them (resize cost does not depend on the content)


class ImagePreprocessing:
    """``runner(batch)``: a call that preprocesses ``batch`` decoded photos with the folder's processor settings."""

    def __init__(self, settings):
        from PIL import Image

        from torchship.optimizers.image_samples import generated_images

        self.settings = settings
        self.photos = [Image.fromarray(a) for a in generated_images(DISTINCT, seed=5, size=PHOTO_SIZE)]

    def runner(self, batch: int) -> Callable[[], object]:
        from torchship.processing.image import preprocess

        chosen = [self.photos[i % len(self.photos)] for i in range(batch)]
        return lambda: preprocess(chosen, self.settings)

    def shape(self, batch: int) -> str:
        height, width = PHOTO_SIZE
        return f"batch {batch} decoded {width}x{height} photos"

    def describe(self) -> str:
        height, width = PHOTO_SIZE
        return f"{width}x{height} RGB photos (decoded) -> {self.settings.describe()}"


def image_preprocessing(artifact, spec) -> ImagePreprocessing | None:
    """The preprocessing row's timer for an image family whose folder keeps its image processor, else None."""
    from torchship.exporters.spec import ENCODE_IMAGE
    from torchship.optimizers.image_samples import settings_of

    if ENCODE_IMAGE not in spec.phases:
        return None
    settings = settings_of(artifact.folder, artifact.manifest)
    return ImagePreprocessing(settings) if settings is not None else None
