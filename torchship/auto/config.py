"""Auto's config: a shape config (device, min/use/max per input) plus the accuracy budget, the precisions
to try, the thread count and how long to time each variant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchship.errors import InputError
from torchship.exporters.spec import PRECISIONS
from torchship.shapes import TOP_KEYS as SHAPE_KEYS  # the shape config's own keys: device, inputs, outputs

AUTO_KEYS = ("budget", "precisions", "threads", "min_seconds")

__all__ = ["AUTO_KEYS", "PRECISIONS", "AutoConfig", "check_device", "load_auto_config", "parse_auto_config"]


@dataclass(frozen=True)
class AutoConfig:
    shapes: object  # torchship.shapes.ShapeConfig
    budget: float = 0.99
    precisions: tuple[str, ...] = PRECISIONS
    threads: int | None = None
    min_seconds: float = 3.0
    source: str = "config"


def parse_auto_config(data, *, source: str = "auto config") -> AutoConfig:
    """The shape config keys (device, inputs, outputs) plus budget, precisions, threads, min_seconds."""
    from torchship.shapes import parse_shape_config

    if not isinstance(data, dict):
        raise InputError(f"{source} must be a mapping with device, inputs, and optionally {', '.join(AUTO_KEYS)}")
    unknown = [k for k in data if k not in SHAPE_KEYS and k not in AUTO_KEYS]
    if unknown:
        raise InputError(f"{source}: unknown key {unknown[0]!r}; the keys are {', '.join(SHAPE_KEYS)}, "
                         f"or {', '.join(AUTO_KEYS)}")
    shapes = parse_shape_config({k: v for k, v in data.items() if k in SHAPE_KEYS}, source=source)
    budget = data.get("budget", 0.99)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
        raise InputError(f"{source}: budget must be a number in (0, 1] (a cosine floor), got {budget!r}")
    precisions = data.get("precisions", list(PRECISIONS))
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",")]
    if not isinstance(precisions, list) or not precisions:
        raise InputError(f"{source}: precisions must be a list drawn from {', '.join(PRECISIONS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise InputError(f"{source}: unknown precision {p!r}; use {', '.join(PRECISIONS)}")
    threads = data.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"{source}: threads must be a positive integer, got {threads!r}")
    min_seconds = data.get("min_seconds", 3.0)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)) or min_seconds < 0:
        raise InputError(f"{source}: min_seconds must be a number of seconds >= 0, got {min_seconds!r}")
    return AutoConfig(shapes, float(budget), tuple(dict.fromkeys(precisions)), threads, float(min_seconds), source)


def load_auto_config(path: str | Path) -> AutoConfig:
    from torchship.shapes import read_config_file

    return parse_auto_config(read_config_file(path, what="auto config"), source=str(path))


def check_device(device: str) -> None:
    """A GPU device in the config needs a GPU here; say so before anything is built."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"the config asks for device {device}, but this machine has no usable NVIDIA GPU "
                         "(torch.cuda.is_available() is False); set device: cpu, or run on a GPU machine")
