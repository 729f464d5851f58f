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
- image classification: the share of held-out generated images whose top-1 label is the same; image feature
  extraction: the cosine of each image's embedding (the pooled output where the graph has one), both on images
  generated in code (``image_samples.py``), with the same batch check as text (each image alone and beside a
  full-range noise image);
- models without text (UNets) and decoders: cosine of the main output per sample, on the validation
  inputs stored with the export.

The budget is a floor on the mean; the worst sample is reported beside it.

Text models also get a batch check: each of the first ``BATCH_TEXTS`` texts is run alone and again inside one
padded batch beside a ~200-word text, and the main output of its real tokens compared (cosine). A variant whose
answer for a text depends on what else is in its batch (per-tensor dynamic int8 does: one activation scale spans
the batch, so under Triton's dynamic batching a user's answer depends on other users' texts) is dropped when the
worst cosine is below ``BATCH_FLOOR`` (or below the fp32 model's own, where that is lower).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from torchship.loading import has_tokenizer_files
from torchship.artifact import Artifact, load_reference
from torchship.compare import rowwise_cosine
from torchship.errors import InputError
from torchship.exporters.spec import (ENCODE_IMAGE, FILL_MASK, IMAGE_CLASSIFICATION, QUESTION_ANSWERING,
                                      TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, family_of)

DEFAULT_TEXTS = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"
MIN_TEXTS = 8
BATCH_TEXTS = 16  # texts run alone and inside the padded batch
BATCH_FLOOR = 0.99999  # the worst cosine between a text alone and the same text in the batch
LONG_WORDS = 200  # the length of the text the batch check pads the others to

Runner = Callable[[dict], dict]  # feeds -> outputs by name


@dataclass(frozen=True)
class AccuracyResult:
    metric: str  # "sentence_cosine", "label_agreement", "embedding_cosine" (images) or "output_cosine"
    mean: float
    min: float
    samples: int
    budget: float
    extra: dict = field(default_factory=dict)
    batch_cosine: float | None = None  # worst text alone vs in the padded batch; None: not checked
    batch_floor: float = BATCH_FLOOR
    per_tensor: bool = False  # the file scales activations per tensor: batch-dependent by construction

    @property
    def within_budget(self) -> bool:
        return bool(np.isfinite(self.mean)) and self.mean >= self.budget

    @property
    def batch_independent(self) -> bool:
        return not self.per_tensor and (self.batch_cosine is None or self.batch_cosine >= self.batch_floor)

    @property
    def passed(self) -> bool:
        return self.within_budget and self.batch_independent

    def describe(self) -> str:
        text = f"{self.metric} mean {self.mean:.4f} (min {self.min:.4f}, budget {self.budget:g}, {self.samples} samples)"
        if self.batch_cosine is not None:
            text += f"; alone vs in a batch: min cosine {self.batch_cosine:.6f}"
        if self.per_tensor:
            text += "; scales activations per tensor"
        return text

    def to_json(self) -> dict:
        batch = {} if self.batch_cosine is None else {
            "batch_cosine_min": self.batch_cosine, "batch_floor": self.batch_floor,
            "batch_independent": self.batch_independent, **({"per_tensor": True} if self.per_tensor else {})}
        return {"metric": self.metric, "mean": self.mean, "min": self.min, "samples": self.samples,
                "budget": self.budget, "passed": self.passed, **batch, **self.extra}


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
        self.batch_check: tuple[list[dict], dict] | None = None  # (each text alone, all in one padded batch)
        self._batch_floor = BATCH_FLOOR

    @classmethod
    def for_artifact(cls, artifact: Artifact, texts_file: str | Path | None = None) -> "AccuracyProbe":
        m = artifact.manifest
        spec = family_of(m)
        main = m.output_names[0]
        if spec.text_api == "predict" and has_tokenizer_files(artifact.folder):  # one saved since export counts
            from torchship.runtimes.text import encode_texts, load_tokenizer

            path = Path(texts_file) if texts_file else DEFAULT_TEXTS
            texts = read_texts(path, what="evaluation text file")
            if len(texts) < MIN_TEXTS:
                raise InputError(f"evaluation text file {path} has {len(texts)} texts; give at least {MIN_TEXTS}")
            feeds = encode_texts(load_tokenizer(artifact), texts, m.input_names, m.text["max_length"])
            metric = {TEXT_CLASSIFICATION: "label_agreement", FILL_MASK: "token_agreement",
                      TOKEN_CLASSIFICATION: "token_agreement",
                      QUESTION_ANSWERING: "answer_agreement"}.get(m.task, "sentence_cosine")
            probe = cls(metric, [feeds], main_output=main, pooling=m.text.get("pooling", "mean"),
                        source=str(path) if texts_file else "torchship/data/sentences.txt")
            probe.batch_check = batch_feeds(load_tokenizer(artifact), texts, m.input_names, m.text["max_length"])
            return probe
        if ENCODE_IMAGE in spec.phases:
            return cls.for_images(artifact, texts_file)
        if texts_file:
            raise InputError(f"{artifact.folder} holds a model without a text encoder's tokenizer; it is "
                             "compared on its stored validation inputs, so leave out the text file")
        cases = load_reference(artifact.folder)
        return cls("output_cosine", [c.inputs for c in cases], main_output=main, source="reference.npz")

    @classmethod
    def for_images(cls, artifact: Artifact, texts_file: str | Path | None = None) -> "AccuracyProbe":
        """Top-1 agreement (classifiers) or embedding cosine (feature extractors) on held-out generated images,
        with the batch check: each of the first images alone, and together beside a loud one."""
        from torchship.optimizers.image_samples import BATCH_IMAGES, PROBE_IMAGES, loud_image, probe_pixels

        if texts_file:
            raise InputError(f"{artifact.folder} holds an image model; it is judged on generated images, so leave "
                             "out the evaluation text file")
        m = artifact.manifest
        pixels = probe_pixels(artifact.folder, m)
        name = m.input_names[0]
        if m.task == IMAGE_CLASSIFICATION:
            metric, main = "label_agreement", m.output_names[0]
        else:
            metric = "embedding_cosine"
            main = "pooler_output" if "pooler_output" in m.output_names else m.output_names[0]
        probe = cls(metric, [{name: pixels}], main_output=main,
                    source=f"{PROBE_IMAGES} generated images (held out of calibration)")
        probe.batch_check = ([{name: pixels[i:i + 1]} for i in range(BATCH_IMAGES)],
                             {name: np.concatenate([pixels[:BATCH_IMAGES], loud_image(pixels)])})
        return probe

    def set_reference(self, run: Runner) -> None:
        self._reference = [np.asarray(run(f)[self.main_output]) for f in self.batches]
        if self.metric == "answer_agreement":
            self._reference_end = [np.asarray(run(f)["end_logits"]) for f in self.batches]
        if self.batch_check is not None:  # a model whose fp32 answers already move a little sets the floor
            self._batch_floor = min(BATCH_FLOOR, self.batch_cosine(run))

    def batch_cosine(self, run: Runner) -> float:
        """The worst cosine between a text's main output alone and inside the padded batch (real tokens only)."""
        alone, batch = self.batch_check
        together = np.asarray(run(batch)[self.main_output])
        worst = 1.0
        for i, feeds in enumerate(alone):
            one = np.asarray(run(feeds)[self.main_output])[0]
            row = together[i]
            masked = "attention_mask" in feeds  # text: a sequence axis, compared on its real tokens
            if masked and one.ndim and row.ndim and one.shape[0] == feeds["attention_mask"].shape[1] \
                    and row.shape[0] == batch["attention_mask"].shape[1]:
                one, row = one[feeds["attention_mask"][0] == 1], row[batch["attention_mask"][i] == 1]
            if one.shape != row.shape:
                return float("nan")
            a, b = one.ravel().astype(np.float64), row.ravel().astype(np.float64)
            worst = min(worst, float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        return worst

    def measure(self, run: Runner, budget: float) -> AccuracyResult:
        if self._reference is None:
            raise RuntimeError("set_reference() first")
        outputs = [run(f) for f in self.batches]
        got = [np.asarray(o[self.main_output]) for o in outputs]
        finite = all(np.isfinite(g).all() for g in got)
        if self.metric in ("output_cosine", "embedding_cosine"):
            per = np.concatenate([rowwise_cosine(r.reshape(r.shape[0], -1), g.reshape(g.shape[0], -1))
                                  for r, g in zip(self._reference, got)])
            extra = {}
        elif self.metric == "answer_agreement":  # question answering: the same best span (start and end)
            from torchship.processing.answers import best_span

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
        batch = self.batch_cosine(run) if self.batch_check is not None else None
        return AccuracyResult(self.metric, float(per.mean()), float(per.min()), int(per.size), budget, extra,
                              batch_cosine=batch, batch_floor=self._batch_floor)


def batch_feeds(tokenizer, texts: list[str], input_names, max_length: int) -> tuple[list[dict], dict]:
    """(each of the first BATCH_TEXTS texts encoded alone, those texts and a ~LONG_WORDS-word text made of the
    texts' own words in one padded batch)."""
    from torchship.runtimes.text import encode_texts

    words = " ".join(texts).split()
    long = " ".join((words * (LONG_WORDS // max(len(words), 1) + 1))[:LONG_WORDS])
    picked = texts[:BATCH_TEXTS]
    alone = [encode_texts(tokenizer, [t], input_names, max_length) for t in picked]
    return alone, encode_texts(tokenizer, [*picked, long], input_names, max_length)

