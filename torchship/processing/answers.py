"""Extractive question answering: the span of a context that best answers a question, from start and end
logits, over contexts longer than the model reads.

A long context is cut into windows that overlap by ``stride`` tokens (the question repeated in each).
In every window, start and end logits are turned into probabilities over the context's tokens only
(the question, special tokens and padding never start or end an answer); a span's score is the
probability of its start times that of its end, its end at or after its start and at most
``max_answer_len`` tokens on. The best span of all windows wins; its text is cut from the context by
the tokenizer's character offsets, so it is the context's own text.

A step of text's question answering (see this package's docstring), numpy only, so a served model answers
exactly as ``torchship predict`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .heads import softmax

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


def pair_problem(question: str, context: str) -> str | None:
    """What is wrong with a (question, context) pair before any tokenizing, or None."""
    if not question.strip():
        return "the question is empty; give a question to answer"
    if not context.strip():
        return "the context is empty (or only white space); give the text the answer is in"
    return None


def context_room(question_tokens: int, special_tokens: int, max_length: int) -> int:
    """Tokens left for the context in one window; ValueError when the question leaves too few."""
    room = max_length - question_tokens - special_tokens
    if room < 8:
        raise ValueError(f"the question takes {question_tokens} of the model's {max_length} tokens, leaving no "
                         "room for the context; ask a shorter question")
    return room


def window_stride(room: int, stride: int = STRIDE) -> int:
    """The overlap of two windows: at most half a window's context."""
    return min(stride, room // 2)


def _probabilities(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return softmax(np.where(allowed, logits, -np.inf))


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


def answer(sequence_ids, offsets, start_logits, end_logits, context: str,
           max_answer_len: int = MAX_ANSWER_TOKENS) -> Answer:
    """The best answer over every window of one (question, context) pair: per window, its tokenizer's
    sequence ids (1 marks the context's tokens) and character offsets, and the model's logits."""
    best = None
    for w in range(len(start_logits)):
        ids = sequence_ids[w]
        mask = np.array([s == 1 for s in ids] + [False] * (len(start_logits[w]) - len(ids)))
        i, j, score = best_span(start_logits[w], end_logits[w], mask, max_answer_len)
        if best is None or score > best[3]:
            best = (w, i, j, score)
    w, i, j, score = best
    start, end = int(offsets[w][i][0]), int(offsets[w][j][1])
    return Answer(context[start:end], start, end, score, w)
