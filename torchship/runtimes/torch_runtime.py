"""PyTorch predictors: eager (the baseline), and on request TorchScript and torch.compile.

The eager baseline loads the checkpoint the way a PyTorch user would (default attention
implementation, eval mode, inference mode), so speedups are measured against what users run.
"""

from __future__ import annotations

import warnings

from torchship.errors import InputError
from torchship.runtimes.base import Predictor

TORCH_MODES = ("eager", "torchscript", "compile")


class TorchPredictor(Predictor):
    backend = "pytorch"

    def __init__(self, builder, io, *, mode: str = "eager",
                 threads: int | None = None):
        if mode not in TORCH_MODES:
            raise InputError(f"unknown torch mode {mode!r}; use {', '.join(TORCH_MODES)}")
        super().__init__(io)
        self.backend = "pytorch" if mode == "eager" else f"pytorch-{mode}"
        self._builder = builder  # () -> (wrapper module with positional forward, example feeds)
        self.mode = mode
        self.threads = threads
        self._fn = None

    def _activate(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        wrapper, example = self._builder()
        if self.mode == "eager":
            self._fn = wrapper
        elif self.mode == "torchscript":
            # The spec's dummy case is padded, so no "the mask is all ones" shortcut is baked in.
            args = tuple(torch.from_numpy(example[n]) for n in self.input_names)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._fn = torch.jit.trace(wrapper, args, check_trace=False)
        else:
            self._fn = torch.compile(wrapper, dynamic=True)

    def _infer(self, feeds):
        from torchship._torch import run_named

        return run_named(self._fn, feeds, self.input_names, self.output_names)

    def _deactivate(self) -> None:
        self._fn = None
