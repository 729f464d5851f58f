"""Tiny random encoders and a tokenizer from a generated vocabulary, built in code for tests."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an is was be to of and in on at for with this that it he she they we you good bad "
         "movie film food man woman dog cat eat eating run running new old long short great awful "
         "hello world model text test fast slow").split()

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=128)

# One tiny config per registered model type; test_spec_coverage keeps this in step with the registry.
TINY_CONFIGS = {
    "bert": dict(TINY, type_vocab_size=2),
    "roberta": dict(TINY, type_vocab_size=1),
    "xlm-roberta": dict(TINY, type_vocab_size=1),
    "camembert": dict(TINY, type_vocab_size=1),
    "electra": dict(TINY, type_vocab_size=2, embedding_size=16),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=128),
    "mpnet": dict(TINY),
    "albert": dict(TINY, type_vocab_size=2, embedding_size=16),
    # DeBERTa-v3's layout: relative attention with position buckets, no segment embeddings.
    "deberta-v2": dict(TINY, type_vocab_size=0, relative_attention=True, position_buckets=16,
                       max_relative_positions=32, pos_att_type=["p2c", "c2p"], position_biased_input=False),
    # ModernBERT: rotary positions, alternating global and local (sliding window) attention.
    "modernbert": dict(TINY, global_attn_every_n_layers=2, local_attention=16, bos_token_id=2, eos_token_id=3,
                       cls_token_id=2, sep_token_id=3),
}
LABELS = ["negative", "neutral", "positive"]
ENTITY_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

TINY_DECODER_CONFIGS = {
    "gpt2": dict(n_layer=2, n_embd=32, n_head=4, n_positions=128),
}
# Llama-shaped decoders: grouped-query attention (4 query heads over 2 KV heads), head_dim set explicitly as
# Qwen3 and Gemma checkpoints do; Qwen2 with its q/k/v biases, Qwen3 with q/k norms, Mistral with a sliding
# window shorter than the validated past lengths, Phi-3 with fused qkv/gate-up projections and partial rotary.
# One layer each (the dynamo export's time grows with the graph); Llama keeps two, so the grouped cache's
# layer order is checked too.
TINY_ROTARY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                   intermediate_size=37, max_position_embeddings=128)
TINY_DECODER_CONFIGS.update({
    "llama": dict(TINY_ROTARY, num_hidden_layers=2),
    "qwen2": dict(TINY_ROTARY, tie_word_embeddings=True),
    "qwen3": dict(TINY_ROTARY),
    "mistral": dict(TINY_ROTARY, sliding_window=16),
    "phi3": dict(TINY_ROTARY, partial_rotary_factor=0.5),
    "gemma": dict(TINY_ROTARY),
})


def vocabulary() -> list[str]:
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    return SPECIALS + WORDS + letters + pieces


def make_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    return BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocabulary())}, do_lower_case=True)


def make_bpe_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer trained in code: like GPT-2's, it has no pad token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 20 + list(WORDS), vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    end = "<|endoftext|>"
    return GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=end, bos_token=end, unk_token=end)


def make_decoder(model_type: str = "gpt2", *, seed: int = 0, vocab_size: int | None = None):
    """A tiny random causal LM whose vocabulary matches the generated tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    n = vocab_size or len(vocabulary())
    # No end-of-sequence token: a random model would emit it at once and end every test generation.
    config = AutoConfig.for_model(model_type, **TINY_DECODER_CONFIGS[model_type], vocab_size=n,
                                  bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # real checkpoints have non-zero biases; GPT-2's initializer zeroes them
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.02)
    return model


def save_decoder_dir(folder: Path, model_type: str = "gpt2", *, bpe: bool = False) -> Path:
    folder = Path(folder)
    tokenizer = make_bpe_tokenizer() if bpe else make_tokenizer(folder)
    # the largest id + 1, not len(): the word list repeats a letter, so the ids have a gap
    model = make_decoder(model_type, vocab_size=max(tokenizer.get_vocab().values()) + 1)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_model(model_type: str, task: str = "feature-extraction", *, seed: int = 0):
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
                              AutoModelForSequenceClassification, AutoModelForTokenClassification)

    kwargs = dict(TINY_CONFIGS[model_type], vocab_size=len(vocabulary()), pad_token_id=0)
    labels = {"text-classification": LABELS, "token-classification": ENTITY_LABELS}.get(task)
    if labels:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={l: i for i, l in enumerate(labels)})
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    cls = {"text-classification": AutoModelForSequenceClassification, "fill-mask": AutoModelForMaskedLM,
           "token-classification": AutoModelForTokenClassification,
           "question-answering": AutoModelForQuestionAnswering}.get(task, AutoModel)
    return cls.from_config(config).eval()


def save_model_dir(folder: Path, model_type: str, task: str = "feature-extraction") -> Path:
    folder = Path(folder)
    tokenizer = make_tokenizer(folder)
    model = make_model(model_type, task)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder




# Tiny diffusers UNets, one per registered UNet class; test_unet keeps this in step with the registry.
# Two down blocks (so latents must be multiples of 2), cross-attention in one of them, as Stable
# Diffusion's blocks are laid out; the 9-channel variant is the inpainting layout (4 latent + 4
# masked-image latent + 1 mask).
TINY_UNET = dict(sample_size=16, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                 attention_head_dim=2, norm_num_groups=8)
TINY_UNET_CONFIGS = {"UNet2DConditionModel": TINY_UNET}


def make_unet(in_channels: int = 4, *, seed: int = 0, **overrides):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY_UNET, "in_channels": in_channels, **overrides}).eval()


def save_unet_dir(folder: Path, in_channels: int = 4, **overrides) -> Path:
    folder = Path(folder)
    make_unet(in_channels, **overrides).save_pretrained(folder)
    return folder


def save_sentence_transformers_dir(folder: Path, model_type: str = "bert", *, pooling: str = "mean",
                                   normalize: bool = True, pooling_config: dict | None = None) -> Path:
    """A tiny model saved as a sentence-transformers folder: the transformer, modules.json, 1_Pooling
    (and 2_Normalize), the way sentence-transformers' own save() lays it out."""
    import json

    folder = save_model_dir(Path(folder), model_type)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    config = pooling_config or {"word_embedding_dimension": TINY["hidden_size"],
                                f"pooling_mode_{ {'cls': 'cls_token'}.get(pooling, pooling + '_tokens') }": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return folder


def hf_greedy(model_dir, ids, mask, n):
    """transformers' own greedy continuation of ``ids`` (numpy, left-padded by ``mask``): ``n`` new tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()
