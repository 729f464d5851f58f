"""Until torchship.processing.image lands (another part of issue 30), its API made from transformers' own image
processor, so the image runtime is tested against the same numbers; unused once the real module is there."""

from __future__ import annotations

import io
import sys
import types


def install() -> None:
    try:
        import torchship.processing.image  # noqa: F401
        return
    except ImportError:
        pass
    import numpy as np
    from PIL import Image

    class ImageSettings:
        def __init__(self, config):
            self.config = config

        @classmethod
        def from_config(cls, config):
            return cls(config)

        def describe(self):
            return self.config.get("image_processor_type", "image processor")

    def decode(data, *, max_pixels=None):
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:
            raise ValueError(f"not an image: {exc}") from None
        return image, ()

    def open_image(path):
        with open(path, "rb") as fh:
            return decode(fh.read())

    def preprocess(images, settings):
        from transformers import AutoImageProcessor
        import tempfile, json, os

        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "preprocessor_config.json"), "w") as fh:
                json.dump(settings.config, fh)
            proc = AutoImageProcessor.from_pretrained(d)
        return np.asarray(proc(images=[im.convert("RGB") for im in images], return_tensors="np")["pixel_values"],
                          dtype=np.float32)

    module = types.ModuleType("torchship.processing.image")
    module.ImageSettings, module.decode, module.open_image, module.preprocess = ImageSettings, decode, open_image, preprocess
    sys.modules["torchship.processing.image"] = module
    import torchship.processing

    torchship.processing.image = module
