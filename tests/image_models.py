"""Tiny image-text models (CLIP, SigLIP) built in code, shared by the export, optimize and serving tests."""

from __future__ import annotations

from tiny import make_tokenizer, vocabulary

T = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
SCALE, BIAS = 2.3, -1.5  # not the initial values: the manifest (and the served scores) must carry the model's own


def make_image_text(kind: str, folder):
    """A tiny random CLIP or SigLIP checkpoint with a tokenizer and its image processor at 32x32, saved in ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    from transformers import BertTokenizerFast

    n = len(vocabulary())
    # SigLIP's tokenizer gives token ids alone (its model was trained on prompts padded to full length, no mask)
    tokenizer = make_tokenizer(folder) if kind == "clip" else BertTokenizerFast(
        vocab={tok: i for i, tok in enumerate(vocabulary())}, do_lower_case=True, model_input_names=["input_ids"])
    text = dict(T, vocab_size=n, pad_token_id=0, bos_token_id=2, eos_token_id=3)  # [CLS] ... [SEP]: CLIP pools at [SEP]
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=dict(text, max_position_embeddings=32),
                                     vision_config=dict(T, image_size=32, patch_size=8), projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=dict(text, max_position_embeddings=64),
                                         vision_config=dict(T, image_size=32, patch_size=8)))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():
        model.logit_scale.fill_(SCALE)
        if hasattr(model, "logit_bias"):
            model.logit_bias.fill_(BIAS)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, tokenizer, processor
