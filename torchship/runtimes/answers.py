"""Extractive question answering: the span of a context that best answers a question, from start and end
logits, over contexts longer than the model reads.

A long context is cut into windows that overlap by ``stride`` tokens (the question repeated in each).
In every window, start and end logits are turned into probabilities over the context's tokens only
(the question, special tokens and padding never start or end an answer); a span's score is the
probability of its start times that of its end, its end at or after its start and at most
``max_answer_len`` tokens on. The best span of all windows wins; its text is cut from the context by
the tokenizer's character offsets, so it is the context's own text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchship.errors import InputError

MAX_ANSWER_TOKENS = 15
STRIDE = 128


@dataclass(frozen=True)
class Answer:
    answer: str
    start: int  # character offsets in the context
    end: int
    score: float
    window: int  # which window of the context it came from

    def to_json(self) -> dict:
        return {"answer": self.answer, "start": self.start, "end": self.end, "score": self.score}


def windows(tokenizer, question: str, context: str, max_length: int, stride: int = STRIDE) -> dict:
    """The tokenizer's encoding of (question, context) as overlapping windows of at most ``max_length``."""
    if not question.strip():
        raise InputError("the question is empty; give a question to answer")
    if not context.strip():
        raise InputError("the context is empty (or only white space); give the text the answer is in")
    question_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    room = max_length - question_tokens - tokenizer.num_special_tokens_to_add(pair=True)
    if room < 8:
        raise InputError(f"the question takes {question_tokens} of the model's {max_length} tokens, leaving no "
                         "room for the context; ask a shorter question")
    stride = min(stride, room // 2)
    return tokenizer(question, context, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest",
                     return_tensors="np")


def _probabilities(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    z = np.where(allowed, logits, -np.inf)
    z = np.exp(z - z[allowed].max())
    return z / z.sum()


def best_span(start_logits, end_logits, context_mask, max_answer_len: int = MAX_ANSWER_TOKENS):
    """(start token, end token, score) of the best span of one window."""
    p_start = _probabilities(np.asarray(start_logits, dtype=np.float64), context_mask)
    p_end = _probabilities(np.asarray(end_logits, dtype=np.float64), context_mask)
    scores = np.triu(np.outer(p_start, p_end))  # end at or after start
    scores = np.tril(scores, max_answer_len - 1)  # at most max_answer_len tokens
    scores[~context_mask, :] = 0
    scores[:, ~context_mask] = 0
    flat = int(scores.argmax())
    i, j = divmod(flat, scores.shape[1])
    return i, j, float(scores[i, j])


def answer(encoding, start_logits, end_logits, context: str, max_answer_len: int = MAX_ANSWER_TOKENS) -> Answer:
    """The best answer over every window of one (question, context) pair."""
    best = None
    for w in range(len(start_logits)):
        ids = encoding.sequence_ids(w)
        mask = np.array([s == 1 for s in ids] + [False] * (len(start_logits[w]) - len(ids)))
        i, j, score = best_span(start_logits[w], end_logits[w], mask, max_answer_len)
        if best is None or score > best[3]:
            best = (w, i, j, score)
    w, i, j, score = best
    offsets = encoding["offset_mapping"][w]
    start, end = int(offsets[i][0]), int(offsets[j][1])
    return Answer(context[start:end], start, end, score, w)
