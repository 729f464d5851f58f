"""Does a tokenizer fit a model? Its ids must all be rows of the model's embedding table.

A table larger than the tokenizer (a padded vocabulary, as many real checkpoints have) is fine for reading
text; a decoder may then score ids that have no text, which generation never picks (runtimes/generate.py,
runtimes/hf_generate.py). A tokenizer with ids past the table is refused: ONNX Runtime would fail on them with
an out-of-bounds Gather, and PyTorch with an index error.
"""

from __future__ import annotations


def table_size(tokenizer) -> int:
    """How many ids the tokenizer can give: its largest id plus one (added tokens included)."""
    ids = tokenizer.get_vocab().values()
    return max(ids) + 1 if ids else 0


def misfit(tokenizer, model_rows: int) -> str | None:
    """Why the tokenizer's ids do not fit a model with ``model_rows`` embedding rows; None when they do (or when
    the model's size is unknown: 0)."""
    size = table_size(tokenizer)
    if not model_rows or size <= model_rows:
        return None
    return (f"gives ids up to {size - 1} ({size} tokens) but the model's embedding table has "
            f"{model_rows} rows (its vocab_size), so ids from {model_rows} on would fail or mean nothing")
