"""Realistic random inputs for text encoders, with right padding.

Used for the export's dummy inputs, for validation cases and for benchmarks alike, so every stage
feeds the model the same kind of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TextShape:
    """A batch of ``batch`` rows padded to ``sequence`` tokens; ``lengths`` are the real lengths."""

    batch: int
    sequence: int
    lengths: tuple[int, ...] | None = None  # None: every row is full length

    def row_lengths(self) -> tuple[int, ...]:
        return self.lengths if self.lengths is not None else (self.sequence,) * self.batch

    def label(self) -> str:
        pad = "" if self.lengths is None else " padded"
        return f"batch {self.batch} x seq {self.sequence}{pad}"


def make_text_inputs(
    input_names: tuple[str, ...],
    shape: TextShape,
    *,
    vocab_size: int,
    type_vocab_size: int = 2,
    pad_token_id: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random token ids avoiding the lowest ids (special tokens in most vocabularies).

    Padded positions get ``pad_token_id`` and a zero attention mask; token type ids mark a second
    segment in the back half of each row when the model has more than one segment type.
    """
    rng = np.random.default_rng(seed)
    low = min(5, max(vocab_size - 1, 0))
    ids = rng.integers(low, vocab_size, size=(shape.batch, shape.sequence), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, length in enumerate(shape.row_lengths()):
        mask[row, :length] = 1
        ids[row, length:] = pad_token_id
        if type_vocab_size > 1 and length > 2:
            types[row, length // 2 : length] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feeds[name] for name in input_names}


def parse_shape_list(values: str, *, what: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); any non-positive or non-integer entry is an error."""
    from torchship.errors import InputError

    items = [v.strip() for v in str(values).split(",") if v.strip()]
    if not items:
        raise InputError(f"{what} is empty; give positive integers separated by commas, e.g. 1,8")
    out = []
    for item in items:
        try:
            n = int(item)
        except ValueError:
            raise InputError(f"{what} has {item!r}, not an integer; give e.g. 1,8") from None
        if n < 1:
            raise InputError(f"{what} has {n}; sizes must be 1 or more")
        out.append(n)
    return tuple(out)
