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
from torchship.exporters.spec import family_of, saved_config


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
                 eos_token_id: int | None, pad_token_id: int, max_positions: int | None = None,
                 vocab_limit: int | None = None):
        self.predictor = predictor
        self.vocab_limit = vocab_limit  # the tokenizer's table: ids past it have no text and are never chosen
        self.past = past_names(num_layers)
        self.present = present_names(num_layers)
        self.num_heads, self.head_dim = num_heads, head_dim  # of the cache: a grouped-query model's KV heads
        self.eos, self.pad = eos_token_id, pad_token_id
        self.max_positions = max_positions

    @classmethod
    def from_artifact(cls, artifact, predictor: Predictor, tokenizer=None) -> "Generator":
        """The folder's generator; with the folder's ``tokenizer``, one that never picks ids it cannot decode."""
        from torchship.exporters.vocab import table_size

        m = artifact.manifest
        config = saved_config(artifact)
        gen = _generation_defaults(artifact.folder, config)
        heads, head_dim = cache_heads(m.io(), m.num_layers)
        return cls(predictor, num_layers=m.num_layers, num_heads=heads, head_dim=head_dim,
                   eos_token_id=gen["eos_token_id"], pad_token_id=gen["pad_token_id"],
                   max_positions=family_of(m).normalized(config).max_positions or None,
                   vocab_limit=table_size(tokenizer) if tokenizer is not None else None)

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_new_tokens: int) -> Generation:
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be 1 or more, got {max_new_tokens}")
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] == 0:
            raise InputError("prompts must be a non-empty (batch, sequence) array with a mask of the same shape")
        if (mask[:, -1] == 0).any():
            raise InputError("prompts must be left-padded: the last position of every row must be a real token")
        if self.max_positions is not None:
            check_room(ids.shape[1], max_new_tokens, self.max_positions)
        batch = ids.shape[0]
        feeds = self._prefill_feeds(ids, mask)
        finished = np.zeros(batch, dtype=bool)
        tokens, steps = [], []
        start = time.perf_counter()
        out = self.predictor.infer(feeds)
        prefill = time.perf_counter() - start
        while True:
            nxt = self._choose(out["logits"][:, -1, :])
            nxt = np.where(finished, self.pad, nxt)
            tokens.append(nxt)
            if self.eos is not None:
                finished |= nxt == self.eos
            if len(tokens) == max_new_tokens or finished.all():
                break
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            feeds = self._step_feeds(nxt, mask, out)
            start = time.perf_counter()
            out = self.predictor.infer(feeds)
            steps.append(time.perf_counter() - start)
        return Generation(np.stack(tokens, axis=1), prefill, tuple(steps))

    def _choose(self, logits: np.ndarray) -> np.ndarray:
        """The likeliest id per row among those the tokenizer can decode (a padded table scores more)."""
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits = logits[:, :self.vocab_limit]
        return logits.argmax(axis=-1).astype(np.int64)

    def decode_logits(self, prompt: np.ndarray, *, steps: int,
                      forced: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One prompt (a 1-D array of ids, no padding) decoded for ``steps`` tokens: greedily, or along
        ``forced`` (the tokens another model chose, so two models are compared on the same path). Returns the
        tokens fed back (steps,) and the next-token logits before each (steps, vocab)."""
        ids = np.asarray(prompt, dtype=np.int64)[None, :]
        if forced is not None and len(forced) < steps:
            raise InputError(f"{len(forced)} forced tokens for a decode of {steps} steps")
        if self.max_positions is not None:
            check_room(ids.shape[1], steps, self.max_positions)
        mask = np.ones_like(ids)
        out = self.predictor.infer(self._prefill_feeds(ids, mask))
        tokens, logits = [], []
        for i in range(steps):
            logits.append(out["logits"][0, -1, :].astype(np.float32))
            tokens.append(int(forced[i]) if forced is not None else int(logits[-1].argmax()))
            if i + 1 < steps:
                mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
                out = self.predictor.infer(self._step_feeds(np.array(tokens[-1:], dtype=np.int64), mask, out))
        return np.array(tokens, dtype=np.int64), np.stack(logits)

    def _prefill_feeds(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        empty = np.zeros((ids.shape[0], self.num_heads, 0, self.head_dim), dtype=np.float32)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask),
                **{name: empty for name in self.past}}

    def _step_feeds(self, nxt: np.ndarray, mask: np.ndarray, out: dict) -> dict[str, np.ndarray]:
        """One new token per row after the previous step's ``present``; its position counts real tokens."""
        return {"input_ids": nxt[:, None], "attention_mask": mask,
                "position_ids": (mask.sum(axis=1, keepdims=True) - 1).astype(np.int64),
                **{p: out[q] for p, q in zip(self.past, self.present)}}


def cache_heads(io, num_layers: int) -> tuple[int, int]:
    """(heads, head_dim) of the cache, as the model's first past input declares them."""
    if num_layers < 1:
        raise InputError("the folder's model has no KV cache inputs; torchship generate needs a decoder export")
    first = next((t for t in io.inputs if t.name == past_names(1)[0]), None)
    if first is None or len(first.axes) != 4 or not all(isinstance(a, int) for a in first.axes[1::2]):
        raise InputError(f"the folder's model has no {past_names(1)[0]} input of shape (batch, heads, past, head_dim); "
                         "re-export it with torchship export")
    return int(first.axes[1]), int(first.axes[3])


def check_room(prompt: int, max_new_tokens: int, max_positions: int) -> None:
    """A prompt and its new tokens must fit in the model's positions (its context); the last new token is
    never fed back, so it needs none."""
    if prompt > max_positions:
        raise InputError(f"the prompt has {prompt} tokens, more than the model's context of {max_positions} "
                         "positions; shorten it")
    if prompt + max_new_tokens - 1 > max_positions:
        raise InputError(f"the prompt ({prompt} tokens) and --max-new-tokens {max_new_tokens} need "
                         f"{prompt + max_new_tokens - 1} positions, more than the model's {max_positions}; ask for at "
                         f"most {max_positions - prompt + 1} new tokens")


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


def continuation(tokenizer, prompt_ids, new_ids) -> str:
    """The text the new ids add to the prompt, by the tokenizer's own rule: the whole sequence decoded, less the
    prompt decoded (as transformers' TextStreamer does), so word pieces join the word before them."""
    prompt = [int(i) for i in prompt_ids]
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    whole = tokenizer.decode(prompt + [int(i) for i in new_ids], skip_special_tokens=True)
    same = 0
    for a, b in zip(head, whole):  # the decoded prompt is a prefix of the whole, unless decoding merged across it
        if a != b:
            break
        same += 1
    return whole[same:]


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize with left padding (a GPT-2 tokenizer has no pad token: its end token pads)."""
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise InputError("give one or more non-empty prompts")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
