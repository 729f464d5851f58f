"""Accuracy of a lower-precision variant against the fp32 model, measured the way users see it.

Token-level numbers flatter or hide what matters: a sentence embedding is a mean over tokens, a
classifier's answer is an argmax. So the metric follows the task:

- feature extraction: cosine between the pooled sentence embeddings (pooling as ``predict`` does it)
  of the fp32 model and the variant, over a set of varied texts (``torchship/data/sentences.txt``,
  60 sentences, unless the user gives a file);
- sentence embeddings (pooled in the graph): the cosine of the embeddings themselves;
- text classification: the share of texts whose label is the same (logits cosine reported beside);
- fill-mask and token classification: the share of real tokens whose likeliest prediction is the same;
- question answering: the share of texts whose best answer span (start and end) is the same;
- models without text (UNets) and decoders: cosine of the main output per sample, on the validation
  inputs stored with the export.

The budget is a floor on the mean; the worst sample is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from torchship.artifact import Artifact, load_reference
from torchship.compare import rowwise_cosine
from torchship.errors import InputError
from torchship.exporters.spec import (FILL_MASK, QUESTION_ANSWERING, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION,
                                      family_of)

DEFAULT_TEXTS = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"
MIN_TEXTS = 8

Runner = Callable[[dict], dict]  # feeds -> outputs by name


@dataclass(frozen=True)
class AccuracyResult:
    metric: str  # "sentence_cosine", "label_agreement" or "output_cosine"
    mean: float
    min: float
    samples: int
    budget: float
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.mean)) and self.mean >= self.budget

    def describe(self) -> str:
        return f"{self.metric} mean {self.mean:.4f} (min {self.min:.4f}, budget {self.budget:g}, {self.samples} samples)"

    def to_json(self) -> dict:
        return {"metric": self.metric, "mean": self.mean, "min": self.min, "samples": self.samples,
                "budget": self.budget, "passed": self.passed, **self.extra}


def read_texts(path: str | Path, *, what: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one text per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; give a UTF-8 text file with one text per line")
    try:
        lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read as UTF-8 text: {exc}") from None
    texts = [t for t in lines if t]
    if not texts:
        raise InputError(f"{what} {path} holds no text; give one text per line")
    return texts


class AccuracyProbe:
    """Inputs and a metric for one folder; ``measure`` compares any runner with the fp32 outputs."""

    def __init__(self, metric: str, batches: list[dict], *, main_output: str, pooling: str = "mean",
                 source: str = ""):
        self.metric = metric
        self.batches = batches
        self.main_output = main_output
        self.pooling = pooling
        self.source = source
        self._reference: list[np.ndarray] | None = None
        self._reference_end: list[np.ndarray] | None = None  # question answering: the end logits too

    @classmethod
    def for_artifact(cls, artifact: Artifact, texts_file: str | Path | None = None) -> "AccuracyProbe":
        m = artifact.manifest
        spec = family_of(m)
        main = m.output_names[0]
        if spec.text_api == "predict" and m.export.get("tokenizer"):
            from torchship.runtimes.text import encode_texts, load_tokenizer

            path = Path(texts_file) if texts_file else DEFAULT_TEXTS
            texts = read_texts(path, what="evaluation text file")
            if len(texts) < MIN_TEXTS:
                raise InputError(f"evaluation text file {path} has {len(texts)} texts; give at least {MIN_TEXTS}")
            feeds = encode_texts(load_tokenizer(artifact), texts, m.input_names, m.text["max_length"])
            metric = {TEXT_CLASSIFICATION: "label_agreement", FILL_MASK: "token_agreement",
                      TOKEN_CLASSIFICATION: "token_agreement",
                      QUESTION_ANSWERING: "answer_agreement"}.get(m.task, "sentence_cosine")
            return cls(metric, [feeds], main_output=main, pooling=m.text.get("pooling", "mean"),
                       source=str(path) if texts_file else "torchship/data/sentences.txt")
        if texts_file:
            raise InputError(f"{artifact.folder} holds a model without a text encoder's tokenizer; it is "
                             "compared on its stored validation inputs, so leave out the text file")
        cases = load_reference(artifact.folder)
        return cls("output_cosine", [c.inputs for c in cases], main_output=main, source="reference.npz")

    def set_reference(self, run: Runner) -> None:
        self._reference = [np.asarray(run(f)[self.main_output]) for f in self.batches]
        if self.metric == "answer_agreement":
            self._reference_end = [np.asarray(run(f)["end_logits"]) for f in self.batches]

    def measure(self, run: Runner, budget: float) -> AccuracyResult:
        if self._reference is None:
            raise RuntimeError("set_reference() first")
        outputs = [run(f) for f in self.batches]
        got = [np.asarray(o[self.main_output]) for o in outputs]
        finite = all(np.isfinite(g).all() for g in got)
        if self.metric == "output_cosine":
            per = np.concatenate([rowwise_cosine(r.reshape(r.shape[0], -1), g.reshape(g.shape[0], -1))
                                  for r, g in zip(self._reference, got)])
            extra = {}
        elif self.metric == "answer_agreement":  # question answering: the same best span (start and end)
            from torchship.runtimes.answers import best_span

            mask = self.batches[0]["attention_mask"].astype(bool)
            ends = np.asarray(outputs[0]["end_logits"])
            per = np.array([best_span(rs, re, m)[:2] == best_span(gs, ge, m)[:2] for rs, re, gs, ge, m in
                            zip(self._reference[0], self._reference_end[0], got[0], ends, mask)], dtype=np.float64)
            extra = {}
        elif self.metric == "token_agreement":  # fill-mask: the likeliest token at every real position
            ref, out = self._reference[0], got[0]
            mask = self.batches[0]["attention_mask"].astype(bool)
            same = ref.argmax(axis=-1) == out.argmax(axis=-1)
            per = np.array([row[m].mean() for row, m in zip(same, mask)], dtype=np.float64)
            extra = {}
        elif self.metric == "label_agreement":
            ref, out = self._reference[0], got[0]
            same = (ref.argmax(axis=-1) == out.argmax(axis=-1)).astype(np.float64)
            cos = rowwise_cosine(ref, out)
            extra = {"logits_cosine_min": float(cos.min()), "logits_cosine_mean": float(cos.mean())}
            per = same
        else:
            from torchship.runtimes.text import pool

            mask = self.batches[0]["attention_mask"]
            ref, out = self._reference[0], got[0]
            if ref.ndim == 3:  # hidden states: pooled as predict pools them; a sentence embedding already is
                ref, out = pool(ref, mask, self.pooling), pool(out, mask, self.pooling)
            per = rowwise_cosine(ref, out)
            extra = {}
        extra["texts"] = self.source
        if not finite:
            extra["problem"] = "output has NaN or inf"
            return AccuracyResult(self.metric, float("nan"), float("nan"), int(per.size), budget, extra)
        return AccuracyResult(self.metric, float(per.mean()), float(per.min()), int(per.size), budget, extra)

