"""transformers' own ``generate()`` over an exported decoder: greedy, sampling (temperature, top-k, top-p),
beam search, repetition penalty, stop strings and ids, streamers. transformers' generation code decides
every token; each forward step runs on a torchship predictor (ONNX Runtime by default), with the KV cache
held in transformers' ``DynamicCache`` so that beam search can reorder it.

    from torchship.runtimes.hf_generate import causal_lm
    model, tokenizer = causal_lm("onnx/gpt2")
    out = model.generate(**tokenizer(["a prompt"], return_tensors="pt"), max_new_tokens=20, do_sample=True,
                         top_p=0.9, streamer=TextStreamer(tokenizer))

The cache's shape (grouped KV heads, head size) is read from the exported graph's past inputs, so every
decoder family the exporter writes works the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.generation import GenerationMixin
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import CausalLMOutputWithPast

from torchship.errors import InputError
from torchship.exporters.decoders import past_names, present_names
from torchship.exporters.spec import family_of, require_family, saved_config
from torchship.runtimes.generate import cache_heads, continuation

# generate() options that need what an exported graph does not give: attentions and hidden states, a cache
# torchship does not hold, a second model. Each is refused with one line instead of failing mid-generation.
UNSUPPORTED = {
    "output_attentions": "the exported graph returns logits and the KV cache, not attentions",
    "output_hidden_states": "the exported graph returns logits and the KV cache, not hidden states",
    "assistant_model": "assisted decoding needs a second model in the loop; generate with one",
    "prompt_lookup_num_tokens": "prompt-lookup decoding is not supported on exported decoders",
    "cache_implementation": "the cache is the exported graph's own (a dynamic one); drop cache_implementation",
}


class OnnxForCausalLM(PreTrainedModel, GenerationMixin):
    """A decoder folder's predictor as transformers sees a causal LM: ``forward`` runs one step through the
    graph; ``generate`` is transformers' own."""

    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config, predictor, *, cache: dict, max_positions: int, generation_config=None,
                 vocab_limit: int | None = None):
        super().__init__(config)
        self.vocab_limit = vocab_limit  # the tokenizer's table: ids past it have no text and are never chosen
        self.predictor = predictor
        self.past, self.present = cache["past"], cache["present"]
        self.kv_heads, self.head_dim = cache["kv_heads"], cache["head_dim"]
        self.max_positions = max_positions
        if generation_config is not None:
            self.generation_config = generation_config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs and outputs live on the host; the predictor places its own work

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def generate(self, *args, **kwargs):
        config = kwargs.get("generation_config")
        for key, why in UNSUPPORTED.items():
            value = kwargs.get(key, getattr(config, key, None) if config is not None else None)
            if value:
                raise InputError(f"generate({key}=...) is not supported: {why}")
        if kwargs.get("use_cache", True) is False:
            raise InputError("generate(use_cache=False) is not supported: the exported graph always uses its KV "
                             "cache (and gives the same tokens)")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] >= self.max_positions:
            raise InputError(f"the prompt has {ids.shape[-1]} tokens and the model reads at most "
                             f"{self.max_positions}; shorten the prompt")
        return super().generate(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        batch = input_ids.shape[0]
        done = past_key_values.get_seq_length() if past_key_values is not None else 0
        if done + input_ids.shape[1] > self.max_positions:
            raise InputError(f"generation reached {done + input_ids.shape[1]} positions and the model reads at most "
                             f"{self.max_positions}; ask for fewer new tokens or shorten the prompt")
        if attention_mask is None:
            attention_mask = torch.ones(batch, done + input_ids.shape[1], dtype=torch.long)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        feeds = {"input_ids": _host(input_ids, np.int64), "attention_mask": _host(attention_mask, np.int64),
                 "position_ids": _host(position_ids, np.int64)}
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        for i in range(len(self.past) // 2):
            layer = past_key_values.layers[i] if done else None
            feeds[self.past[2 * i]] = _host(layer.keys, np.float32) if layer is not None else empty
            feeds[self.past[2 * i + 1]] = _host(layer.values, np.float32) if layer is not None else empty
        out = self.predictor.infer(feeds)
        cache = DynamicCache()
        for i in range(len(self.present) // 2):
            cache.update(torch.from_numpy(np.ascontiguousarray(out[self.present[2 * i]])),
                         torch.from_numpy(np.ascontiguousarray(out[self.present[2 * i + 1]])), i)
        logits = torch.from_numpy(np.ascontiguousarray(out["logits"]))
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits = logits.clone()  # the array may be the predictor's own buffer: never written in place
            logits[..., self.vocab_limit:] = -torch.inf  # as transformers suppresses tokens: no sampler picks them
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)


def _host(tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))


def cache_layout(artifact) -> dict:
    """The past/present names and the cache's KV heads and head size, as the exported graph declares them."""
    layers = artifact.manifest.num_layers
    kv_heads, head_dim = cache_heads(artifact.manifest.io(), layers)
    return {"past": past_names(layers), "present": present_names(layers), "kv_heads": kv_heads, "head_dim": head_dim}


def causal_lm(folder, backend: str = "auto", options=None):
    """(model, tokenizer) for ``folder``: the model answers transformers' ``generate``; the tokenizer is the
    folder's, left-padding (a decoder's prompts end where generation starts)."""
    from torchship.artifact import Artifact
    from torchship.runtimes import RuntimeOptions, create_predictor
    from torchship.exporters.vocab import table_size
    from torchship.runtimes.text import load_tokenizer
    from torchship.runtimes.auto_backend import choose

    artifact = Artifact.open(folder)
    require_family(artifact, "generate needs a decoder (export-gpt2)", text_api="generate")
    if backend == "auto":  # the same rule as predict and generate --backend auto
        backend = choose(artifact).backend
    predictor = create_predictor(artifact, backend, options or RuntimeOptions())
    config = saved_config(artifact)
    path = artifact.folder / "generation_config.json"
    generation = GenerationConfig.from_pretrained(artifact.folder) if path.is_file() else \
        GenerationConfig.from_model_config(config)
    positions = int((artifact.manifest.model_config or {}).get("max_positions")
                    or family_of(artifact.manifest).max_positions(config))
    tokenizer = load_tokenizer(artifact)  # before the model: a missing or misfit tokenizer is said first
    model = OnnxForCausalLM(config, predictor, cache=cache_layout(artifact), max_positions=positions,
                            generation_config=generation, vocab_limit=table_size(tokenizer))
    tokenizer.padding_side = "left"
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # what a decoder's graph takes
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


class ContinuationStreamer(BaseStreamer):
    """Writes the new text of one prompt as generate() makes it, by the same rule as the finished text
    (:func:`torchship.runtimes.generate.continuation`): the whole sequence decoded, less what was written. Text
    is held back to the last space (a word piece may still join the word) and past an incomplete character."""

    def __init__(self, tokenizer, prompt_ids, write):
        self.tokenizer, self.prompt, self.write = tokenizer, [int(i) for i in prompt_ids], write
        self.new: list[int] = []
        self.written = 0
        self.started = False

    def put(self, value) -> None:
        if not self.started:  # generate() puts the prompt first
            self.started = True
            return
        self.new.extend(int(i) for i in value.reshape(-1).tolist())
        text = continuation(self.tokenizer, self.prompt, self.new)
        if text.endswith("\ufffd"):
            return
        upto = text.rfind(" ")
        if upto > self.written:
            self.write(text[self.written:upto])
            self.written = upto

    def end(self) -> None:
        self.write(continuation(self.tokenizer, self.prompt, self.new)[self.written:])
