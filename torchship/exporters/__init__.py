"""One spec per model family (:mod:`torchship.exporters.spec`), and the export that follows any spec.

Importing this package registers the built-in families, so any import of ``torchship.exporters.*``
finds them in the registry; a family defined elsewhere registers itself with ``spec.register``.
"""

from torchship.exporters import decoders, encoders, onnx_file, unet  # noqa: F401  (registers the families)
from torchship.exporters import generic_decoders  # noqa: E402  (generic families come after the family specs)

generic_decoders.register_all()
