"""Fill-mask logits to the likeliest tokens for each mask, with their probabilities and the text each makes,
as transformers' fill-mask pipeline returns them.

A step of text's fill-mask task (see this package's docstring), numpy only, so a served model fills masks
exactly as ``torchship predict`` does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .heads import softmax

TOP_K = 5  # candidates per mask, as transformers' pipeline gives


def fill(ids: np.ndarray, logits: np.ndarray, mask_id: int, pad_id: int | None,
         decode: Callable[[list[int], bool], str], top_k: int = TOP_K):
    """Per text, per mask: the ``top_k`` likeliest tokens (dicts of score, token, token_str and sequence).
    ``decode(ids, skip_special_tokens)`` is the tokenizer's; a text with one mask shows its sequence without
    special tokens, one with several keeps them (as the pipeline does)."""
    for row_ids, row_logits in zip(ids, logits):
        where = np.flatnonzero(row_ids == mask_id)
        single = len(where) == 1
        found = []
        for index in where:
            probs = softmax(row_logits[index])
            best = np.argsort(-probs, kind="stable")[:top_k]
            candidates = []
            for token in best:
                filled = row_ids.copy()
                filled[index] = token
                if pad_id is not None:
                    filled = filled[filled != pad_id]
                candidates.append({"score": float(probs[token]), "token": int(token),
                                   "token_str": decode([int(token)], False),
                                   "sequence": decode([int(t) for t in filled], single)})
            found.append(candidates)
        yield found


# transformers' clean-up of a decoded WordPiece text (spaces before punctuation and contractions)
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up(text: str) -> str:
    for old, new in CLEAN_UP:
        text = text.replace(old, new)
    return text


def cleans_up(tokenizer) -> bool:
    """Whether a transformers tokenizer's decode cleans up spaces (never for BPE, unless forced)."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return False
    return type(tokenizer.backend_tokenizer.model).__name__ != "BPE" or bool(
        getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
