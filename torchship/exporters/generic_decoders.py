"""Causal language models no family spec names (OPT, Falcon, BLOOM, GPT-Neo, GPT-J, CodeGen, StableLM, OLMo, ...),
exported with their KV cache through the decoders' machinery (:mod:`torchship.exporters.decoders`): the same past
and present names, the same cache fed back per step, grouped KV heads kept grouped, so ``generate``, ``bench``,
weight-only quantization and the text API take the folder like any decoder's.

The model's config is read through the usual attribute aliases; the cache layout is not trusted to the config: the
model runs once on two tokens and its cache must be transformers' standard one (a ``DynamicCache`` with one key and
one value of shape (batch, kv_heads, seq, head_dim) per layer). Any other cache (sliding windows that drop old
entries, hybrid, state-space) is refused in one line naming its class; ``--no-cache`` exports the logits alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torchship.errors import InputError, UnsupportedModelError
from torchship.exporters.decoders import DECODERS, DecoderShape, DecoderSpec
from torchship.exporters.spec import (BATCH, FORWARD, SEQUENCE, TEXT_GENERATION, FamilyGroup, ModelIO,
                                      NormalizedConfig, TensorSpec, register_generic)

FAMILY = "generic-decoder"
NO_CACHE_FAMILY = "generic-decoder-no-cache"
# The model types of onnxruntime.transformers' MODEL_TYPES that are causal LMs with no family spec: its fuser runs on
# these only, the graph levels on the others (tests/exporters/test_generic_decoders.py keeps the list in step).
ORT_FUSER_TYPES = ("gpt_neox", "phi")
# Where a config keeps each normalized field, first found wins (transformers' attribute maps cover most).
_ALIASES = {
    "num_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "vocab_size": ("vocab_size",),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"),
}
# A model without a position table (ALiBi: BLOOM, MPT) has no context limit of its own; this bounds shape checks.
_NO_TABLE_POSITIONS = 1 << 16


def _field(config, name: str, default=None):
    for key in _ALIASES[name]:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def kv_heads_of(config, heads: int) -> int:
    """The cache's heads: num_key_value_heads, else Falcon's num_kv_heads (new architecture) or one for
    multi-query attention, else one per query head."""
    for key in ("num_key_value_heads", "num_kv_heads", "n_head_kv"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0 and (key == "num_key_value_heads"
                                                    or getattr(config, "new_decoder_architecture", True)):
            return value
    return 1 if getattr(config, "multi_query", False) else heads


def generic_normalized(config) -> NormalizedConfig:
    """The fields by their aliases; 0 where a config has none (a state-space model has no heads: its cache, checked
    when the model runs, refuses it)."""
    heads = int(_field(config, "num_heads", 0))
    hidden = int(_field(config, "hidden_size", 0))
    head_dim = getattr(config, "head_dim", None)
    return NormalizedConfig(hidden_size=hidden, num_heads=heads, num_kv_heads=int(kv_heads_of(config, heads)),
                            num_layers=int(_field(config, "num_layers", 0)),
                            vocab_size=int(_field(config, "vocab_size", 0)),
                            max_positions=int(_field(config, "max_positions", _NO_TABLE_POSITIONS)),
                            head_dim=int(head_dim if isinstance(head_dim, int) and head_dim > 0 else
                                         hidden // heads if heads else 0))


def is_causal_lm(model_type: str, config: dict) -> bool:
    """A checkpoint whose architectures name transformers' causal-LM class for its model type, or (no architectures
    saved) a model type transformers maps to a causal LM and to no masked LM or encoder-decoder."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if causal is None:
        return False
    names = {causal} if isinstance(causal, str) else set(causal)
    architectures = config.get("architectures") or []
    if architectures:
        return any(a in names for a in architectures)
    return model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get("is_encoder_decoder")


def cache_problem(model, shape: NormalizedConfig) -> str | None:
    """Run the model once on two tokens; why the cache it returns is not the standard per-layer key/value cache
    (None when it is). A sliding window wider than the model's positions never drops an entry, so it passes."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    ids = torch.ones((1, 2), dtype=torch.long)
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, return_dict=True)
    except Exception as exc:  # the model's own failure on a plain input, said in one line
        from torchship.errors import first_line

        return f"{type(model).__name__} fails on two tokens with a KV cache: {first_line(exc)}"
    cache = next((getattr(out, k) for k in ("past_key_values", "cache_params") if getattr(out, k, None) is not None),
                 None)  # a state-space model returns cache_params
    if cache is None:
        return "it returns no cache"
    if type(cache) is not DynamicCache:
        return f"it keeps its cache in {type(cache).__name__}"
    layers = list(getattr(cache, "layers", []))
    odd = next((type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer
                and (getattr(layer, "sliding_window", None) or 0) < shape.max_positions),
               None)
    if odd:
        return f"it keeps its cache in DynamicCache with {odd} layers (a sliding window that drops old entries)"
    if not (shape.num_heads and shape.hidden_size and shape.num_layers and shape.vocab_size):
        return "its config names no layer count, heads, width or vocabulary torchship can read"
    want = (1, shape.num_kv_heads, 2, shape.head_dim)
    got = [tuple(t.shape) for layer in layers for t in (layer.keys, layer.values)]
    if len(layers) != shape.num_layers or any(g != want for g in got):
        return (f"its DynamicCache holds {len(layers)} layers of keys {got[0] if got else None}, not "
                f"{shape.num_layers} of (batch, kv_heads, seq, head_dim) = {want} as its config says")
    return None


def _attention(cls, asked: str | None) -> str | None:
    """SDPA where the model class runs transformers' shared attention functions (which keep grouped K/V grouped,
    _torch.grouped_sdpa), else eager: BLOOM and GPT-J have no SDPA, Falcon's own SDPA call on multi-query K/V does not
    convert to ONNX."""
    shared = getattr(cls, "_supports_sdpa", True) and getattr(cls, "_supports_attention_backend", False)
    return "eager" if asked == "sdpa" and cls is not None and not shared else asked


def takes_positions(model) -> bool:
    """Whether the model's forward reads position_ids (ALiBi models such as BLOOM and MPT have none)."""
    return "position_ids" in inspect.signature(model.forward).parameters


@dataclass(frozen=True)
class GenericDecoderSpec(DecoderSpec):
    """A causal LM no family spec names; ``only`` restricts it to some model types (those ORT's fuser knows, with
    their ``ort_model_type``), else it claims every causal LM."""

    family: str = FAMILY
    model_types: tuple[str, ...] = ()
    ort_model_type: str = ""
    only: tuple[str, ...] = ()
    fusion_hint: str = "ONNX Runtime's transformer optimizer has no pattern for this architecture; the graph " \
                       "levels optimize it"

    def claims(self, model_type: str, config: dict) -> bool:
        if self.only and model_type not in self.only:
            return False
        return is_causal_lm(model_type, config)

    def without_cache(self) -> "NoCacheDecoderSpec":
        return NO_CACHE

    def normalized(self, config) -> NormalizedConfig:
        return generic_normalized(config)

    def load_model(self, ref, config, task: str, *, attn_implementation: str | None = None, **kwargs):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        attn = _attention(MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None), attn_implementation)
        return super().load_model(ref, config, task, attn_implementation=attn, **kwargs)

    def prepare_copy(self, model, attn_implementation: str | None):
        return super().prepare_copy(model, _attention(type(model), attn_implementation))

    def max_positions(self, config) -> int:
        return int(_field(config, "max_positions", _NO_TABLE_POSITIONS))

    def fusion_settings(self, model) -> dict:
        shape = self.normalized(model.config)
        return {"num_heads": shape.num_heads, "hidden_size": shape.hidden_size, "num_layers": shape.num_layers}

    def io(self, model, task: str) -> ModelIO:
        if task != TEXT_GENERATION:
            raise UnsupportedModelError(f"causal LMs export {TEXT_GENERATION}, not {task!r}")
        shape = self.normalized(model.config)
        problem = cache_problem(model, shape)
        if problem:
            raise UnsupportedModelError(f"{type(model).__name__} ({model.config.model_type}) cannot be exported with "
                                        f"its KV cache: {problem}; export it without one: --no-cache")
        io = super().io(model, task)
        if takes_positions(model):
            return io
        return ModelIO(tuple(t for t in io.inputs if t.name != "position_ids"), io.outputs)

    def wrapper(self, model, io: ModelIO):
        from torchship._torch import make_decoder_wrapper

        return make_decoder_wrapper(model, self.normalized(model.config).num_layers,
                                    positions="position_ids" in io.input_names)


@dataclass(frozen=True)
class NoCacheDecoderSpec(GenericDecoderSpec):
    """A causal LM exported without its cache (``--no-cache``): logits for the whole sequence each call, no
    ``generate`` (it would recompute the prompt at every token), timed as one forward pass."""

    family: str = NO_CACHE_FAMILY
    group: FamilyGroup = FamilyGroup(DECODERS.name, DECODERS.words, "a causal LM exported without its KV cache "
                                     "(--no-cache)", DECODERS.command, aliases=DECODERS.aliases)
    phases: tuple[str, ...] = (FORWARD,)
    text_api: str | None = None
    dummy_case: DecoderShape = DecoderShape(2, 5, 0, (0, 2))
    validation_cases: tuple[DecoderShape, ...] = (DecoderShape(2, 7, 0, (0, 3)), DecoderShape(3, 2, 0, (0, 1, 0)),
                                                  DecoderShape(1, 11, 0))

    def claims(self, model_type: str, config: dict) -> bool:
        return False  # only ever chosen by --no-cache, and found again by the manifest's family

    def io(self, model, task: str) -> ModelIO:
        if task != TEXT_GENERATION:
            raise UnsupportedModelError(f"causal LMs export {TEXT_GENERATION}, not {task!r}")
        shape = self.normalized(model.config)
        inputs = [TensorSpec("input_ids", "int64", (BATCH, SEQUENCE)),
                  TensorSpec("attention_mask", "int64", (BATCH, SEQUENCE))]
        if takes_positions(model):
            inputs.append(TensorSpec("position_ids", "int64", (BATCH, SEQUENCE)))
        return ModelIO(tuple(inputs), (TensorSpec("logits", "float32", (BATCH, SEQUENCE, shape.vocab_size)),))

    def wrapper(self, model, io: ModelIO):
        import torch

        positions = "position_ids" in io.input_names

        class NoCacheWrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, *position_ids):  # (): a model without position ids
                extra = {"position_ids": position_ids[0]} if positions else {}
                return (self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                   return_dict=True, **extra).logits,)

        return NoCacheWrapper().eval()

    def case_for(self, sizes: dict[str, int], config) -> DecoderShape:
        if sizes.get("past_sequence"):
            raise InputError("a model exported without its KV cache (--no-cache) has no past; drop past_sequence")
        return DecoderShape(sizes[BATCH], sizes[SEQUENCE], 0)

    def without_cache(self) -> "NoCacheDecoderSpec":
        return self


NO_CACHE = NoCacheDecoderSpec()
# ORT's fuser for the model types it knows first, then every other causal LM; the no-cache family last, claiming none.
GENERIC_DECODER_SPECS = (*(GenericDecoderSpec(ort_model_type=t, only=(t,)) for t in ORT_FUSER_TYPES),
                         GenericDecoderSpec(), NO_CACHE)


def register_all() -> None:
    for spec in GENERIC_DECODER_SPECS:
        register_generic(spec)
