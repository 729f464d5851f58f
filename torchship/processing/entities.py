"""Token-classification logits to entities with character spans, grouped the ways users know from
transformers' token-classification pipeline: ``none`` (one entry per token), ``simple`` (adjacent tokens
of one entity type merged), and ``first`` / ``average`` / ``max`` (sub-word tokens of one word first
forced to one label, taken from the word's first token, the mean of its tokens' scores, or its most
confident token; then merged as ``simple`` does). Labels ``O`` are left out.

A step of text's token classification (see this package's docstring): numpy and a Hugging Face
``tokenizers.Tokenizer``, so a served model groups entities exactly as ``torchship predict`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .heads import softmax

STRATEGIES = ("none", "simple", "first", "average", "max")
IGNORED = ("O",)


class Pieces:
    """What grouping needs of a tokenizer, read from its ``tokenizers.Tokenizer`` (a transformers fast
    tokenizer's ``backend_tokenizer``): a token's string, tokens joined back into text, whether the model
    marks sub-word pieces, and the unknown token's id."""

    def __init__(self, backend, unk_id: int | None = None):
        self.backend = backend
        model = backend.model
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        unk = getattr(model, "unk_token", None)
        self.unk_id = unk_id if unk_id is not None else (backend.token_to_id(unk) if unk else None)

    def token(self, token_id: int) -> str:
        return self.backend.id_to_token(int(token_id))

    def join(self, tokens: list[str]) -> str:
        decoder = self.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


@dataclass(frozen=True)
class Token:
    """One real token of a text: its string, softmax scores over the labels and character span."""

    index: int  # position in the model's input
    token: str
    scores: np.ndarray
    start: int
    end: int
    continues_word: bool  # a sub-word piece that belongs to the token before it


def tokens_of(text: str, pieces: Pieces, ids, logits, offsets, special) -> list[Token]:
    """The real tokens of one text. A piece continues the word before it when the tokenizer marks
    sub-words (WordPiece's ``##``: the token is longer than its text), else when no space precedes it."""
    scores = softmax(np.asarray(logits, dtype=np.float64))
    out = []
    for i, (token_id, (start, end), is_special) in enumerate(zip(ids, offsets, special)):
        if is_special:
            continue
        token = pieces.token(token_id)
        span = text[start:end]
        if pieces.word_aware:
            continues = len(token) != len(span)
        else:
            continues = start > 0 and " " not in text[start - 1:start + 1]
        if int(token_id) == pieces.unk_id:
            token, continues = span, False
        out.append(Token(i, token, scores[i], int(start), int(end), continues))
    return out


def _tag(label: str) -> tuple[str, str]:
    """("B" or "I", type) of a BIO label; a label without a prefix continues like "I"."""
    if label[:2] in ("B-", "I-"):
        return label[0], label[2:]
    return "I", label


def _word_entities(tokens: list[Token], labels, strategy: str, joiner: Pieces) -> list[dict]:
    """One entity per word (its pieces joined), labelled by the strategy."""
    words: list[list[Token]] = []
    for t in tokens:
        if words and t.continues_word:
            words[-1].append(t)
        else:
            words.append([t])
    out = []
    for pieces in words:
        if strategy == "first":
            scores = pieces[0].scores
        elif strategy == "max":
            scores = max(pieces, key=lambda p: p.scores.max()).scores
        else:
            scores = np.nanmean(np.stack([p.scores for p in pieces]), axis=0)
        best = int(scores.argmax())
        out.append({"entity": labels[best], "score": float(scores[best]),
                    "word": joiner.join([p.token for p in pieces]),
                    "start": pieces[0].start, "end": pieces[-1].end})
    return out


def _grouped(entities: list[dict], pieces: Pieces) -> list[dict]:
    """Adjacent entities of one type merged into one group (a "B-" label always starts a new group)."""
    groups: list[list[dict]] = []
    for e in entities:
        bi, kind = _tag(e["entity"])
        if groups and bi != "B" and _tag(groups[-1][-1]["entity"])[1] == kind:
            groups[-1].append(e)
        else:
            groups.append([e])
    return [{"entity_group": _tag(g[0]["entity"])[1], "score": float(np.nanmean([e["score"] for e in g])),
             "word": pieces.join([e["word"] for e in g]),
             "start": g[0]["start"], "end": g[-1]["end"]} for g in groups]


def entities(tokens: list[Token], labels, strategy: str, pieces: Pieces) -> list[dict]:
    """The entities of one text under ``strategy`` (one of STRATEGIES, checked by the caller), labels in
    IGNORED left out."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy in ("none", "simple"):
        found = []
        for t in tokens:
            best = int(t.scores.argmax())
            found.append({"entity": labels[best], "score": float(t.scores[best]), "index": t.index,
                          "word": t.token, "start": t.start, "end": t.end})
    else:
        found = _word_entities(tokens, labels, strategy, pieces)
    if strategy != "none":
        found = _grouped(found, pieces)
    return [e for e in found if e.get("entity", e.get("entity_group")) not in IGNORED]
