"""One predictor interface for every backend.

The base class owns the life cycle (``activate`` / ``infer`` / ``deactivate``), input checking and
timing; a backend implements only ``_activate``, ``_infer`` and ``_deactivate``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from torchship.errors import InputError
from torchship.tensors import EMPTY_OK_AXES, ModelIO


class Predictor(ABC):
    backend = "base"

    def __init__(self, io: ModelIO):
        self.io = io
        self.input_names = io.input_names
        self.output_names = io.output_names
        self.active = False
        self.last_latency_s: float | None = None
        # Per input: name, dtype, rank and the fixed sizes as (axis index, size): what a well-formed feed matches
        # without the full check (work between runs is slow: a run leaves the caches cold for Python).
        self._fast_checks = tuple((s.name, np.dtype(s.dtype), len(s.axes),
                                   tuple((i, a) for i, a in enumerate(s.axes) if isinstance(a, int)))
                                  for s in io.inputs)

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
        """Every declared input present, with its rank, fixed sizes and kind of dtype; cast to the declared dtype."""
        out = {}
        for name, want, rank, fixed in self._fast_checks:  # the common case: arrays already as declared
            arr = feeds.get(name)
            if (type(arr) is not np.ndarray or arr.dtype != want or arr.ndim != rank or not arr.size
                    or any(arr.shape[i] != size for i, size in fixed)):
                return self._checked_slowly(feeds)
            out[name] = arr
        return out

    def _checked_slowly(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"{self.backend}: input {missing[0]!r} is missing; the model takes {', '.join(self.input_names)}")
        out = {}
        for spec in self.io.inputs:
            arr = np.asarray(feeds[spec.name])
            want = np.dtype(spec.dtype)
            if arr.ndim != len(spec.axes):
                raise InputError(f"{self.backend}: input {spec.name!r} has shape {list(arr.shape)}; expected {list(spec.axes)}")
            for size, axis in zip(arr.shape, spec.axes):
                if isinstance(axis, int) and size != axis:
                    raise InputError(f"{self.backend}: input {spec.name!r} has shape {list(arr.shape)}; expected {list(spec.axes)}")
                if isinstance(axis, str) and size == 0 and axis not in EMPTY_OK_AXES:
                    raise InputError(f"{self.backend}: input {spec.name!r} is empty along {axis!r}; give at least one")
            if np.issubdtype(want, np.integer) != np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
                kind = "integers" if np.issubdtype(want, np.integer) else "floats"
                raise InputError(f"{self.backend}: input {spec.name!r} has dtype {arr.dtype}; expected {kind}")
            out[spec.name] = arr.astype(want, copy=False)
        return out

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:
        pass
