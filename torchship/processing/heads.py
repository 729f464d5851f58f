"""What a model's head gives, read the same way for every modality: class scores and their labels, and
embeddings of unit length."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis (a logit of -inf gets none)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def label_names(labels, count: int) -> list[str]:
    """The model's label names for ``count`` classes; ``LABEL_i`` for a class the model names not."""
    labels = labels or []
    return [labels[i] if i < len(labels) else f"LABEL_{i}" for i in range(count)]


def classify(logits: np.ndarray, labels) -> tuple[np.ndarray, list[str]]:
    """(softmax scores [n, classes], the best class's label per row) of a classifier's logits [n, classes]."""
    scores = softmax(logits)
    names = label_names(labels, logits.shape[-1])
    return scores, [names[i] for i in scores.argmax(axis=-1)]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
