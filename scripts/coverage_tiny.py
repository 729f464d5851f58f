"""Tiny random configs for any transformers config class, built generically (transformers ships none).

Used by scripts/coverage.py. A config class is instantiated with its defaults, then its size fields are shrunk
by name (hidden width, layers, heads, vocabulary, positions, image and patch sizes, per-stage widths of conv
nets, an audio encoder's feature convolutions) and the config is made again from the result, so that what its
``__post_init__`` derives (head_dim, KV heads, per-layer types) is derived again from the small sizes. Nested
configs (``text_config``, ``vision_config``, ...) are shrunk the same way. What cannot be built says why in one
line (``TinyError``).
"""

from __future__ import annotations

import dataclasses

HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, LAYERS, VOCAB = 32, 4, 2, 64, 2, 1000
IMAGE, PATCH, MAX_POSITIONS = 32, 8, 512
AUDIO_SAMPLES = 4000  # a quarter second at 16 kHz: a few frames after a wav2vec2-style feature encoder

HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "embedding_dim", "n_embed", "d_embed")
INTERMEDIATE_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim",
                     "ffn_hidden_size", "hidden_dim", "moe_intermediate_size", "shared_expert_intermediate_size",
                     "intermediate_size_mlp", "d_inner", "mlp_dim", "feed_forward_size")
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
              "num_encoder_layers", "num_decoder_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
             "decoder_attention_heads", "attention_heads")
KV_KEYS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv")
HEAD_DIM_KEYS = ("head_dim", "attention_head_size", "kv_channels", "d_kv", "d_head")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_sequence_length",
                 "max_seq_length", "seq_length")
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
# Not widths: an int field with one of these in its name keeps its value under the proportional rule.
NOT_WIDTH = ("vocab", "image", "patch", "position", "window", "kernel", "stride", "bucket", "token", "batch",
             "chunk", "num_channels", "pool", "sample", "group", "expert", "layer", "head", "label", "length",
             "ctx", "seq", "frame", "mel", "bins", "codevector", "step", "rate", "epsilon")
WIDTH_SUFFIXES = ("_size", "_dim", "_rank", "_channels", "_features", "_width")
LIST_WIDTH_KEYS = ("hidden_sizes", "embed_dims", "dims", "embed_dim", "hidden_size", "channels", "num_channels_list",
                   "out_channels", "neck_hidden_sizes", "conv_dim", "tdnn_dim", "block_out_channels", "widths")
LIST_DEPTH_KEYS = ("depths", "num_layers", "layer_depths", "blocks_per_stage", "num_blocks")
LIST_HEAD_KEYS = ("num_heads", "num_attention_heads", "heads")


class TinyError(Exception):
    """Why a config class could not be built at tiny size (one line)."""


def _class_defaults(cls) -> dict:
    """The class-level default of each dataclass field (``None`` where the config derives the value)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = "<factory>"
    return out


def _width(value: int, scale: float) -> int:
    """A width scaled with the hidden size: a multiple of 8, at least 8, never larger than it was."""
    return min(value, max(8, int(round(value * scale / 8)) * 8))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) for x in v)


def shrink_values(values: dict, class_defaults: dict) -> dict:
    """The overrides that make ``values`` (a config's fields) tiny; derived fields (class default None, value set)
    are set back to None so that the config derives them again from the small sizes."""
    out = {k: None for k, v in values.items() if class_defaults.get(k, 0) is None and v is not None}
    hidden = next((values[k] for k in HIDDEN_KEYS if _is_int(values.get(k))), None)
    scale = HIDDEN / hidden if hidden else 1.0
    heads = HEADS
    for k, v in values.items():
        if _is_int(v):
            if k in HIDDEN_KEYS or k == "pooler_hidden_size":  # DeBERTa's pooler reads the hidden states
                out[k] = HIDDEN
            elif k in INTERMEDIATE_KEYS:
                out[k] = min(v, INTERMEDIATE)
            elif k in LAYER_KEYS:
                out[k] = min(v, LAYERS)
            elif k in HEAD_KEYS:
                out[k] = min(v, HEADS)
                heads = out[k]
            elif k.endswith(("_n_heads", "_num_heads")):
                out[k] = min(v, HEADS)
            elif k in KV_KEYS:
                out[k] = min(v, KV_HEADS)
            elif k in EXPERT_KEYS:
                out[k] = min(v, 4)
            elif k in ("num_experts_per_tok", "moe_topk", "top_k"):
                out[k] = min(v, 2)
            elif k in POSITION_KEYS and not _rope_original(values):
                out[k] = min(v, MAX_POSITIONS)
            elif "vocab_size" in k and k != "type_vocab_size":
                out[k] = min(v, VOCAB)
            elif k == "image_size":
                out[k] = IMAGE
            elif k == "patch_size":
                out[k] = v if v <= PATCH and IMAGE % v == 0 else PATCH
            elif k == "num_conv_pos_embeddings":
                out[k] = min(v, 16)
            elif k == "num_conv_pos_embedding_groups":
                out[k] = min(v, 2)
            elif k in ("num_groups", "norm_num_groups", "num_norm_groups"):  # group norms over the small widths
                out[k] = min(v, 4)
            elif k == "first_k_dense_replace":
                out[k] = min(v, 1)
            elif k.endswith(WIDTH_SUFFIXES) and not any(w in k for w in NOT_WIDTH) and v >= 16:
                out[k] = _width(v, scale)
        elif _int_list(v):
            if k == "image_size" and len(v) == 2:
                out[k] = [IMAGE, IMAGE]
            elif k in LIST_DEPTH_KEYS:
                out[k] = [1] * len(v)
            elif k in LIST_HEAD_KEYS:
                out[k] = [min(x, 2) for x in v]
            elif k in LIST_WIDTH_KEYS:
                first = min(v)
                out[k] = [max(8, int(round(x * 16 / first / 8)) * 8) if first > 16 else x for x in v]
    for k in HEAD_DIM_KEYS:  # an explicit head size (Gemma's 256) follows the small width
        if _is_int(values.get(k)) and class_defaults.get(k) is not None:
            out[k] = max(8, HIDDEN // heads)
    layers = next((values[k] for k in LAYER_KEYS if _is_int(values.get(k))), None)
    if layers and layers > LAYERS:
        _per_layer(values, class_defaults, layers, out)
    _token_ids(values, out)
    return out


def _per_layer(values: dict, class_defaults: dict, layers: int, out: dict) -> None:
    """What is stated per layer follows the fewer layers: lists and per-layer dicts keep their first and last layer;
    a backbone's stages are named again by the config (its output indices clamped where the class requires them)."""
    keep = list(range(LAYERS - 1)) + [layers - 1]
    for k, v in values.items():
        if isinstance(v, list) and len(v) == layers and k not in HEAD_KEYS + LIST_DEPTH_KEYS + LIST_WIDTH_KEYS:
            out[k] = [v[i] for i in keep]
        elif "layer" in k and isinstance(v, dict) and v and all(_is_int(i) for i in v) and max(v) < layers:
            out[k] = {new: v[old] for new, old in enumerate(keep) if old in v}
    out.update(out_features=None, stage_names=None, _out_features=None, _out_indices=None)
    indices = values.get("out_indices", values.get("_out_indices"))
    out["out_indices"] = None
    if _int_list(indices) and class_defaults.get("out_indices") is not None:
        out["out_indices"] = sorted({min(i, LAYERS) for i in indices})


def _rope_original(values: dict) -> bool:
    """YaRN-style RoPE states the positions it was trained at; the model's positions stay above them."""
    rope = values.get("rope_parameters") or values.get("rope_scaling")
    return isinstance(rope, dict) and "original_max_position_embeddings" in rope


def _token_ids(values: dict, out: dict) -> None:
    """Special token ids inside the small vocabulary (each moved below it, distinct, from its top)."""
    vocab = out.get("vocab_size", values.get("vocab_size"))
    if not _is_int(vocab):
        return
    spare = iter(range(vocab - 1, 0, -1))
    for k, v in values.items():
        if not (k.endswith("_token_id") or k.endswith("_token_index") or k.endswith("_token_ids")):
            continue
        if _is_int(v) and v >= vocab:
            out[k] = next(spare)
        elif _int_list(v) and any(x >= vocab for x in v):
            out[k] = [x if x < vocab else next(spare) for x in v]


def _fields(config) -> dict:
    """A config's fields and the attributes its __init__ set, read from its __dict__ (per-layer configs refuse a
    global read of a per-layer attribute)."""
    names = [f.name for f in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else []
    stored = vars(config)
    values = {n: stored[n] for n in names if n in stored}
    for k, v in stored.items():  # attributes set by __init__ beyond the fields
        if not k.startswith("_"):
            values.setdefault(k, v)
    return values


def tiny_config(config_cls, *, labels: int | None = None, pad_token_id: int | None = None):
    """A tiny instance of ``config_cls``; TinyError with one line when it cannot be built."""
    from transformers import PreTrainedConfig

    try:
        default = config_cls()
    except Exception as exc:  # noqa: BLE001 (any failure of a third-party constructor is a reason to report)
        raise TinyError(f"default {config_cls.__name__}() fails: {_line(exc)}") from None
    return _shrink(default, PreTrainedConfig, labels=labels, pad_token_id=pad_token_id)


def _shrink(config, base, *, labels=None, pad_token_id=None):
    try:
        return _shrink_once(config, base, labels=labels, pad_token_id=pad_token_id, kv_heads=KV_HEADS)
    except TinyError:  # some classes refuse grouped KV heads: once more with one KV head per query head
        if not any(_is_int(getattr(config, "__dict__", {}).get(k)) for k in KV_KEYS):
            raise
        try:
            return _shrink_once(config, base, labels=labels, pad_token_id=pad_token_id, kv_heads=HEADS)
        except TinyError:
            pass
        raise


def _shrink_once(config, base, *, labels, pad_token_id, kv_heads):
    cls = type(config)
    values = _fields(config)
    overrides = shrink_values(values, _class_defaults(cls))
    overrides.update({k: min(values[k], kv_heads) for k in KV_KEYS if _is_int(values.get(k))})
    for k, v in values.items():  # nested configs (text_config, vision_config, ...): tiny too
        if isinstance(v, base):
            overrides[k] = _shrink(v, base).to_dict()
    if labels is not None:
        overrides.update(num_labels=labels, id2label={i: f"LABEL_{i}" for i in range(labels)},
                         label2id={f"LABEL_{i}": i for i in range(labels)})
    if pad_token_id is not None and "pad_token_id" in values:
        overrides["pad_token_id"] = pad_token_id
    data = {**config.to_dict(), **overrides}
    data = {k: v for k, v in data.items() if k not in ("transformers_version", "architectures", "_name_or_path")}
    try:
        return cls.from_dict(data)
    except Exception as exc:  # noqa: BLE001
        raise TinyError(f"{cls.__name__} at tiny size fails: {_line(exc)}") from None


def _line(exc: BaseException) -> str:
    """The first line of an error; a line that only announces the next (ends with ':') is joined to it."""
    lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()] or [type(exc).__name__]
    text = lines[0] if not lines[0].endswith(":") or len(lines) == 1 else f"{lines[0]} {lines[1]}"
    return text[:300]


def sizes(config) -> dict:
    """The sizes a report shows of a tiny config (first nested text/vision config where the top has none)."""
    values = _fields(config)
    show = {k: values[k] for k in (*HIDDEN_KEYS[:1], *LAYER_KEYS[:1], *HEAD_KEYS[:1], *KV_KEYS[:1], "vocab_size",
                                   "image_size", "hidden_sizes") if values.get(k) is not None}
    return {k: v if _is_int(v) else list(v) if isinstance(v, (list, tuple)) else str(v) for k, v in show.items()}


# ---- inputs and processors ------------------------------------------------------------------------------------

def image_size_of(config) -> tuple[int, int]:
    size = getattr(config, "image_size", None)
    for sub in ("vision_config", "backbone_config"):
        if size is None and getattr(config, sub, None) is not None:
            size = getattr(getattr(config, sub), "image_size", None)
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return (int(size), int(size)) if size else (IMAGE, IMAGE)


def channels_of(config) -> int:
    return int(getattr(config, "num_channels", None) or 3)


def eager_inputs(modality: str, config, forward_params) -> dict:
    """A batch of two for an eager run (what the forward signature takes of what the modality has)."""
    import torch

    g = torch.Generator().manual_seed(0)
    if modality == "text":
        vocab = min(int(getattr(config, "vocab_size", None) or VOCAB), VOCAB)
        feeds = {"input_ids": torch.randint(5, max(6, vocab), (2, 12), generator=g),
                 "attention_mask": torch.ones(2, 12, dtype=torch.long)}
        feeds["attention_mask"][1, 8:] = 0
        eos = getattr(config, "eos_token_id", None)
        if isinstance(eos, int) and 0 <= eos < vocab:  # heads that pool at the end-of-sequence token need one per row
            ids = feeds["input_ids"]
            ids[ids == eos] = 5
            ids[0, 11] = ids[1, 7] = eos
    elif modality == "image":
        h, w = image_size_of(config)
        feeds = {"pixel_values": torch.randn(2, channels_of(config), h, w, generator=g)}
    else:
        mel = getattr(config, "num_mel_bins", None)
        features = torch.randn(2, int(getattr(config, "max_length", None) or 100) if mel else 100,
                               int(mel or getattr(config, "feature_size", None) or 80), generator=g)
        # a spectrogram model (AST) takes its mel frames as input_values; a wav2vec2-style one, the waveform
        feeds = {"input_values": features if mel else torch.randn(2, AUDIO_SAMPLES, generator=g),
                 "input_features": features}
    return {k: v for k, v in feeds.items() if k in forward_params}


def save_processor(modality: str, task: str, model_type: str, config, folder) -> str:
    """Save what turns raw input into the model's feeds beside the tiny model; returns its class name."""
    import sys
    from pathlib import Path

    if modality == "text":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import make_bpe_tokenizer, make_tokenizer

        tok = make_bpe_tokenizer() if task == "text-generation" else make_tokenizer(Path(folder))
        tok.save_pretrained(folder)
        return type(tok).__name__
    if modality == "image":
        return _save_image_processor(model_type, config, folder)
    return _save_feature_extractor(model_type, config, folder)


def _save_image_processor(model_type: str, config, folder) -> str:
    from transformers import ViTImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    h, w = image_size_of(config)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    proc = None
    for name in (names.values() if isinstance(names, dict) else names if isinstance(names, tuple) else [names]):
        proc = _instance(name)
        if proc is not None:
            break
    if proc is None:
        proc = ViTImageProcessor()
    for attr in ("size", "crop_size"):
        value = getattr(proc, attr, None)
        if isinstance(value, dict):
            setattr(proc, attr, {k: (h if k in ("height", "shortest_edge") else w if k == "width" else v)
                                 for k, v in value.items() if k in ("height", "width", "shortest_edge")} or
                    {"height": h, "width": w})
    proc.save_pretrained(folder)
    return type(proc).__name__


def _save_feature_extractor(model_type: str, config, folder) -> str:
    from transformers import Wav2Vec2FeatureExtractor
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES

    fe = _instance(FEATURE_EXTRACTOR_MAPPING_NAMES.get(model_type)) or Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True)
    fe.save_pretrained(folder)
    return type(fe).__name__


def _instance(name):
    import transformers

    if not isinstance(name, str):
        return None
    try:
        return getattr(transformers, name)()
    except Exception:  # noqa: BLE001 (a class missing here or needing arguments: fall back to a generic one)
        return None
