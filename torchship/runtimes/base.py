"""One predictor interface for every backend.

The base class owns the life cycle (``activate`` / ``infer`` / ``deactivate``), input checking and
timing; a backend implements only ``_activate``, ``_infer`` and ``_deactivate``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from torchship.errors import InputError


class Predictor(ABC):
    backend = "base"

    def __init__(self, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.active = False
        self.last_latency_s: float | None = None

    def activate(self) -> "Predictor":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> "Predictor":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named int arrays of shape (batch, sequence); returns named outputs."""
        feeds = self._checked(feeds)
        self.activate()
        start = time.perf_counter()
        out = self._infer(feeds)
        self.last_latency_s = time.perf_counter() - start
        return out

    def _checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"{self.backend}: input {missing[0]!r} is missing; the model takes {', '.join(self.input_names)}")
        out = {}
        shape = None
        for name in self.input_names:
            arr = np.asarray(feeds[name])
            if arr.ndim != 2 or 0 in arr.shape:
                raise InputError(f"{self.backend}: input {name!r} has shape {list(arr.shape)}; expected (batch, sequence) with both >= 1")
            if not np.issubdtype(arr.dtype, np.integer):
                raise InputError(f"{self.backend}: input {name!r} has dtype {arr.dtype}; expected integers")
            if shape is not None and arr.shape != shape:
                raise InputError(f"{self.backend}: input {name!r} has shape {list(arr.shape)}, others {list(shape)}")
            shape = arr.shape
            out[name] = arr.astype(np.int64, copy=False)
        return out

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:
        pass
