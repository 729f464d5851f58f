"""The served environment's contract: the one list of packages the Python backend's environment carries.

``torchship serve --setup`` installs them (``server.setup``) and records the list in the install's
``install.json``; ``--setup --if-missing`` builds the install again when the recorded list differs from this
one. The files every Python model carries (``serving/backend.py``, ``serving/steps.py`` and the
``torchship.processing`` package) import only these, the standard library and the Python backend's own
module: a test checks it. A modality that needs more (an image library, an audio decoder) adds its package
here, and every install is rebuilt once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    name: str  # pip's name
    module: str  # the name served files import
    pin: str | None = None  # a requirement of its own; None: the version torchship's environment has

    @property
    def entry(self) -> str:
        """What the install records of it: the pin, else the name (versions are recorded on their own)."""
        return self.pin or self.name

    def requirement(self) -> str:
        """What pip installs: the pin, else this environment's version, so served results are predict's."""
        if self.pin:
            return self.pin
        from importlib.metadata import version

        return f"{self.name}=={version(self.name)}"


# numpy < 2: the server's wheel (nvidia-pytriton) pins it, and its Python backend's stub with it
PACKAGES = (Package("numpy", "numpy", "numpy<2"), Package("tokenizers", "tokenizers"),
            Package("onnxruntime", "onnxruntime"), Package("pillow", "PIL"))  # pillow: images decoded and resized
# what an install made before the list was recorded carries (its install.json has no "packages")
UNRECORDED = ("numpy<2", "tokenizers", "onnxruntime")
# the Python backend's own module, which the server provides
BACKEND_MODULE = "triton_python_backend_utils"


def entries() -> list[str]:
    """The list an install records and is compared by."""
    return [p.entry for p in PACKAGES]


def requirements() -> list[str]:
    """What pip installs into the served environment."""
    return [p.requirement() for p in PACKAGES]


def versions() -> dict[str, str]:
    """The version of each package torchship's environment decides (the others are pinned)."""
    from importlib.metadata import version

    return {p.name: version(p.name) for p in PACKAGES if p.pin is None}


def modules() -> set[str]:
    """The top-level modules served files may import beside the standard library and each other."""
    return {p.module for p in PACKAGES} | {BACKEND_MODULE}


def change(recorded) -> str | None:
    """How this list differs from ``recorded`` (an install's), in words; None when they are the same."""
    now, then = entries(), list(recorded)
    added = [e for e in now if e not in then]
    dropped = [e for e in then if e not in now]
    if not added and not dropped:
        return None
    parts = ([f"adds {', '.join(added)}"] if added else []) + ([f"drops {', '.join(dropped)}"] if dropped else [])
    return " and ".join(parts)
