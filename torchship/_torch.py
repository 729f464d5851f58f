"""PyTorch helpers shared by the exporter and the PyTorch runtime."""

from __future__ import annotations

import contextlib
import os

import numpy as np


def make_encoder_wrapper(model, output_names: tuple[str, ...]):
    """Wrap a transformers encoder in a module with an explicit positional ``forward``.

    Both ONNX exporters need positional inputs (keyword inputs to BertModel fail in TorchScript
    tracing), and the wrapper returns the named outputs as a tuple. The wrapper is created in eval
    mode: torch.onnx.export restores the wrapper's training flag after export, and that flag
    propagates to the wrapped model.
    """
    import torch

    class EncoderWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.model(**kwargs, return_dict=True)
            return tuple(out[name] for name in output_names)

    return EncoderWrapper().eval()


def make_sentence_embedder(encoder, pooling: str, normalize: bool):
    """A transformers encoder followed by sentence-transformers' pooling (cls, mean or max over the real
    tokens) and, when the model has a Normalize module, L2 normalisation: ``sentence_embedding`` out."""
    import torch

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.config = encoder.config
            self.pooling, self.normalize = pooling, normalize

        def forward(self, input_ids, attention_mask, token_type_ids=None, return_dict=True):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder(**kwargs, return_dict=True).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "cls":
                emb = hidden[:, 0]
            elif self.pooling == "max":
                emb = torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).max(dim=1).values
            else:
                emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
            return {"sentence_embedding": emb}

    return SentenceEmbedder().eval()


def cache_from_past(past, num_layers: int):
    """A transformers DynamicCache from flat past tensors ordered layer by layer, key before value."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i in range(num_layers):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


# transformers' SDPA attention repeats a grouped-query model's K/V to the query heads whenever a mask is given,
# unless this is set; with it, SDPA gets enable_gqa=True, which the dynamo exporter writes as one ONNX Attention
# whose K/V keep their kv_heads: same outputs, 2 Expand and 3 Reshape fewer per layer, and a faster decode step
# (docs/measurements.md#sdpa-gqa).
_SDPA_GQA_FLAG = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def grouped_sdpa():
    """transformers' SDPA attention with grouped K/V as they are, for the duration of one forward."""
    old = os.environ.get(_SDPA_GQA_FLAG)
    os.environ[_SDPA_GQA_FLAG] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_SDPA_GQA_FLAG, None)
        else:
            os.environ[_SDPA_GQA_FLAG] = old


def make_decoder_wrapper(model, num_layers: int, *, positions: bool = True):
    """Wrap a causal LM so the KV cache travels as flat tensors: (ids, mask, positions, *past) ->
    (logits, *present), past and present ordered layer by layer, key before value. Grouped-query
    attention runs on the grouped K/V (:func:`grouped_sdpa`). ``positions=False``: a model without
    position ids (ALiBi), (ids, mask, *past)."""
    import torch

    class DecoderWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            return self.step(past, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

        def step(self, past, **inputs):
            cache = cache_from_past(past, num_layers)
            with grouped_sdpa():
                out = self.model(**inputs, past_key_values=cache, use_cache=True, return_dict=True)
            present = []
            for layer in out.past_key_values.layers[:num_layers]:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    class UnpositionedWrapper(DecoderWrapper):
        def forward(self, input_ids, attention_mask, *past):
            return self.step(past, input_ids=input_ids, attention_mask=attention_mask)

    if not positions:
        return UnpositionedWrapper().eval()
    return DecoderWrapper().eval()


def make_unet_wrapper(model):
    """Wrap a diffusers UNet: (sample, timestep, encoder_hidden_states) -> (predicted noise,)."""
    import torch

    class UNetWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states):
            return (self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0],)

    return UNetWrapper().eval()


def run_named(fn, feeds: dict[str, np.ndarray], input_names, output_names) -> dict[str, np.ndarray]:
    """Call a positional wrapper under inference mode on numpy feeds; numpy outputs by name."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names)
    with torch.inference_mode():
        out = fn(*args)
    return {n: t.detach().float().numpy() for n, t in zip(output_names, out)}
