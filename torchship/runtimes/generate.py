"""Greedy generation with a KV cache over any decoder predictor (ONNX Runtime or PyTorch).

The prompt runs once with an empty past (prefill); each later step feeds one token per row, with
the previous step's ``present`` tensors as ``past``. Prompts are left-padded so every row's next
token sits in the last column; position ids count only real tokens, as transformers does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from torchship.errors import InputError
from torchship.exporters.decoders import past_names, positions_from_mask, present_names
from torchship.runtimes.base import Predictor
from torchship.exporters.spec import saved_config


@dataclass(frozen=True)
class Generation:
    tokens: np.ndarray  # (batch, new tokens), padded with pad_token_id after a row's end of sequence
    prefill_s: float
    step_s: tuple[float, ...] = field(default_factory=tuple)  # one per decode step

    @property
    def new_tokens(self) -> int:
        return int(self.tokens.shape[1])


class Generator:
    def __init__(self, predictor: Predictor, *, num_layers: int, num_heads: int, head_dim: int,
                 eos_token_id: int | None, pad_token_id: int):
        self.predictor = predictor
        self.past = past_names(num_layers)
        self.present = present_names(num_layers)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.eos, self.pad = eos_token_id, pad_token_id

    @classmethod
    def from_artifact(cls, artifact, predictor: Predictor) -> "Generator":
        m = artifact.manifest
        config = saved_config(artifact)
        gen = _generation_defaults(artifact.folder, config)
        return cls(predictor, num_layers=m.num_layers, num_heads=m.num_heads, head_dim=m.hidden_size // m.num_heads,
                   eos_token_id=gen["eos_token_id"], pad_token_id=gen["pad_token_id"])

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_new_tokens: int) -> Generation:
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be 1 or more, got {max_new_tokens}")
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] == 0:
            raise InputError("prompts must be a non-empty (batch, sequence) array with a mask of the same shape")
        if (mask[:, -1] == 0).any():
            raise InputError("prompts must be left-padded: the last position of every row must be a real token")
        batch = ids.shape[0]
        empty = np.zeros((batch, self.num_heads, 0, self.head_dim), dtype=np.float32)
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask),
                 **{name: empty for name in self.past}}
        finished = np.zeros(batch, dtype=bool)
        tokens, steps = [], []
        start = time.perf_counter()
        out = self.predictor.infer(feeds)
        prefill = time.perf_counter() - start
        while True:
            nxt = out["logits"][:, -1, :].argmax(axis=-1).astype(np.int64)
            nxt = np.where(finished, self.pad, nxt)
            tokens.append(nxt)
            if self.eos is not None:
                finished |= nxt == self.eos
            if len(tokens) == max_new_tokens or finished.all():
                break
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            feeds = {"input_ids": nxt[:, None], "attention_mask": mask,
                     "position_ids": (mask.sum(axis=1, keepdims=True) - 1).astype(np.int64),
                     **{p: out[q] for p, q in zip(self.past, self.present)}}
            start = time.perf_counter()
            out = self.predictor.infer(feeds)
            steps.append(time.perf_counter() - start)
        return Generation(np.stack(tokens, axis=1), prefill, tuple(steps))


def _generation_defaults(folder, config) -> dict:
    """End-of-sequence and padding ids from generation_config.json, else the model config."""
    import json

    data = {}
    path = folder / "generation_config.json"
    if path.is_file():
        data = json.loads(path.read_text())
    eos = data.get("eos_token_id", getattr(config, "eos_token_id", None))
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    pad = data.get("pad_token_id", getattr(config, "pad_token_id", None))
    return {"eos_token_id": eos, "pad_token_id": pad if pad is not None else (eos if eos is not None else 0)}


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize with left padding (a GPT-2 tokenizer has no pad token: its end token pads)."""
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise InputError("give one or more non-empty prompts")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
