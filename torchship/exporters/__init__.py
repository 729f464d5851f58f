"""One spec per model family (:mod:`torchship.exporters.spec`), and the export that follows any spec.

Importing this package registers the built-in families, so any import of ``torchship.exporters.*``
finds them in the registry; a family defined elsewhere registers itself with ``spec.register``. The generic
families come after them: they take only what no family spec names.
"""

from torchship.exporters import decoders, encoders, image_text, onnx_file, unet  # noqa: F401  (registers the families)
from torchship.exporters import generic_decoders, generic_media, generic_text, spec as _spec  # noqa: E402

# The generic families come after the family specs (a family spec always wins), causal LMs first.
generic_decoders.register_all()
for _generic in (generic_text.GENERIC_TEXT, generic_media.GENERIC_IMAGE, generic_media.GENERIC_AUDIO):
    _spec.register_generic(_generic)
