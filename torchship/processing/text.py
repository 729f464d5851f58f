"""Text's own steps: token ids to one padded batch of the model's feeds, and a token-level output pooled into
one embedding per text. Classifier scores and normalisation are shared with other modalities (``heads.py``);
entities, filled masks and answers have their modules."""

from __future__ import annotations

import numpy as np

from .heads import normalize

POOLING = ("mean", "cls", "max")  # sentence-transformers' modes torchship implements


def feeds(ids: list[list[int]], types: list[list[int]], inputs, pad_id: int = 0) -> dict[str, np.ndarray]:
    """One batch padded to its longest text, holding exactly the model's ``inputs`` (input ids, attention
    mask, token type ids)."""
    width = max(len(i) for i in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    type_ids = np.zeros((len(ids), width), dtype=np.int64)
    for row, (i, t) in enumerate(zip(ids, types)):
        input_ids[row, :len(i)] = i
        mask[row, :len(i)] = 1
        type_ids[row, :len(t)] = t
    every = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
    return {name: every[name] for name in inputs}


def prompt_feeds(ids: list[list[int]], inputs, pad_id: int, padding: str, max_length: int) -> dict[str, np.ndarray]:
    """An image-text model's prompts as its text tower reads them: padded to the longest, or (``padding``
    "max_length") to the length the model was trained at, as SigLIP's were."""
    out = feeds(ids, [[0] * len(i) for i in ids], ["input_ids", "attention_mask"], pad_id)
    extra = max_length - out["input_ids"].shape[1]
    if padding == "max_length" and extra > 0:
        out = {"input_ids": np.pad(out["input_ids"], ((0, 0), (0, extra)), constant_values=pad_id),
               "attention_mask": np.pad(out["attention_mask"], ((0, 0), (0, extra)))}
    return {name: out[name] for name in inputs}


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Hidden states [n, tokens, hidden] to one vector per text over its real tokens (``mask``): the first
    token's (``cls``), their maximum (``max``) or their mean (``mean``, and any other mode)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    if mode == "max":
        return np.where(m > 0, hidden, -np.inf).max(axis=1)
    return (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


def embeddings(output: np.ndarray, mask: np.ndarray, pooling: str | None, unit: bool) -> np.ndarray:
    """Sentence embeddings from the model's output: pooled as ``pooling`` says (None: the graph pooled
    already), then of unit length when ``unit``."""
    emb = output if pooling is None else pool(output, mask, pooling)
    return normalize(emb) if unit else emb
