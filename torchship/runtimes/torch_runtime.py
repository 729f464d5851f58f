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


def torch_predictor(artifact, record, options) -> TorchPredictor:
    """The table's factory for the PyTorch backends: the source checkpoint wrapped by its family's spec."""
    from torchship.exporters.spec import family_of
    from torchship.runtimes import graph_io, source_model_loader

    load = source_model_loader(artifact, options.reference_model)
    spec = family_of(artifact.manifest)
    io = graph_io(artifact, "model", options.graph)  # one graph (a tower) of a variant of several, if named

    def build():
        model = load()
        return spec.wrapper(model, io), spec.sample_inputs(model.config, io, spec.dummy_case, seed=0)

    return TorchPredictor(build, io, mode=record.torch_mode, threads=options.threads)


torch_predictor.runs_graphs = True  # create_predictor: the spec's wrapper runs the tower the graph's inputs feed


class TorchCachedDecoder(Predictor):
    """Eager PyTorch for a decoder as transformers' generate() runs it: the model called with a
    ``DynamicCache`` object carried between calls. ``infer`` builds the cache from the past tensors of the
    feeds; :meth:`timed_step` returns a callable that reuses one cache, cropped back after each call, so
    repeated timed calls see the same past."""

    backend = "pytorch"

    def __init__(self, load, io, *, num_layers: int, threads: int | None = None):
        super().__init__(io)
        self._load = load
        self.num_layers = num_layers
        self.threads = threads
        self.model = None

    def _activate(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = self._load().eval()

    def _deactivate(self) -> None:
        self.model = None

    def _infer(self, feeds):
        return {"logits": self.timed_step(feeds)().float().numpy()}

    def timed_step(self, feeds):
        """One forward: a prefill when the feeds have no past (the model starts its own cache), else a
        decode step on a cache made from the past tensors. The callable returns the logits."""
        import torch

        from torchship._torch import cache_from_past
        from torchship.exporters.decoders import past_names

        self.activate()
        args = {k: torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "position_ids") if k in feeds}
        model = self.model
        past = [torch.from_numpy(feeds[n]) for n in past_names(self.num_layers)]
        if not past or past[0].shape[2] == 0:
            def prefill():
                with torch.inference_mode():
                    return model(**args, use_cache=True).logits
            return prefill
        new_tokens = feeds["input_ids"].shape[1]
        cache = cache_from_past(past, self.num_layers)

        def decode():
            with torch.inference_mode():
                logits = model(**args, past_key_values=cache, use_cache=True).logits
            cache.crop(-new_tokens)  # back to the same past for the next timed step
            return logits
        return decode
