"""Text in, results out: tokenization on top of any predictor, then the steps of ``torchship.processing``
(the ones a served model runs).

Feature-extraction models give sentence embeddings (pooling as the checkpoint's
sentence-transformers config says, mean pooling by default); classifiers give logits, softmax
scores and labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ArtifactError, InputError, first_line
from torchship.exporters.spec import FILL_MASK, QUESTION_ANSWERING, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from torchship.processing import answers as qa
from torchship.processing.entities import STRATEGIES, Pieces, entities, tokens_of
from torchship.processing.fill_mask import fill
from torchship.processing.heads import classify, label_names
from torchship.processing.text import embeddings, pool  # noqa: F401 - pool: the step predict's tests call
from torchship.runtimes.base import Predictor


PREVIEW_CHARS = 60


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A text as a line of output shows it: at most ``limit`` characters, its length said when cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit - 1]}… ({len(text)} chars)"


@dataclass(frozen=True)
class Prediction:
    texts: tuple[str, ...]
    embeddings: np.ndarray | None = None  # (n, hidden) for feature extraction
    logits: np.ndarray | None = None  # (n, labels) for classifiers
    scores: np.ndarray | None = None
    labels: tuple[str, ...] | None = None
    masks: tuple[list, ...] | None = None  # fill-mask: per text, per mask, the top candidates (dicts)
    entities: tuple[list, ...] | None = None  # token classification: per text, its entities (dicts)
    answers: tuple[dict, ...] | None = None  # question answering: per context, the answer (dict)
    question: str | None = None
    tokens: tuple[int, ...] = ()  # tokens of each text before truncation (special tokens included)
    max_length: int = 0  # tokens the model reads; a text with more was truncated to this

    def truncated(self) -> list[tuple[int, int]]:
        """(index, tokens dropped) of every text that was longer than the model reads."""
        return [(i, n - self.max_length) for i, n in enumerate(self.tokens) if self.max_length and n > self.max_length]

    def to_json(self) -> list[dict]:
        rows = []
        for i, text in enumerate(self.texts):
            row = {"text": preview(text), "chars": len(text)}
            if self.tokens:
                row.update(tokens=self.tokens[i], truncated_tokens=max(self.tokens[i] - self.max_length, 0))
            if self.masks is not None:
                row["masks"] = self.masks[i]
            elif self.entities is not None:
                row["entities"] = self.entities[i]
            elif self.answers is not None:
                row.update(question=preview(self.question), **self.answers[i])
            elif self.embeddings is not None:
                row["embedding"] = self.embeddings[i].tolist()
            else:
                row.update(label=self.labels[i], score=float(self.scores[i].max()), logits=self.logits[i].tolist())
            rows.append(row)
        return rows


def _reexport(artifact: Artifact) -> str:
    """The command that exports the folder's source again with a tokenizer attached."""
    resolved = artifact.manifest.source.get("resolved") or ""
    model = resolved[4:] if resolved.startswith("hub:") else resolved
    if model in ("", "python object"):
        model = "MODEL"  # exported from a Python object: no folder to name
    return f"torchship export --model {model} --tokenizer TOKENIZER_FOLDER --output {artifact.folder}"


def load_tokenizer(artifact: Artifact):
    """The tokenizer saved in an exported folder (never remote code), read from the folder itself and checked
    against the model's embedding table."""
    from transformers import AutoTokenizer

    from torchship.exporters.vocab import misfit
    from torchship.loading import has_tokenizer_files

    if not has_tokenizer_files(artifact.folder):  # one export saved, or one saved into it since
        raise ArtifactError(f"{artifact.folder} holds no tokenizer; save the model's tokenizer into it "
                            f"(tokenizer.save_pretrained('{artifact.folder}')), or export again with one: "
                            f"{_reexport(artifact)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(artifact.folder))
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"the tokenizer in {artifact.folder} cannot be loaded: {first_line(exc)}") from None
    problem = misfit(tokenizer, int((artifact.manifest.model_config or {}).get("vocab_size") or 0))
    if problem:
        raise ArtifactError(f"the tokenizer in {artifact.folder} {problem}; save the model's own tokenizer into "
                            f"the folder, or export again with it: {_reexport(artifact)}")
    return tokenizer


def encode_texts(tokenizer, texts: list[str], input_names, max_length: int) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` into one padded batch holding exactly the model's inputs."""
    return tokenize(tokenizer, texts, input_names, max_length)[0]


def tokenize(tokenizer, texts: list[str], input_names, max_length: int, **extra):
    """(the model's feeds, the tokenizer's whole encoding) for one padded batch; ``extra`` asks the tokenizer
    for more (offsets, special-token masks)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np", **extra)
    feeds = {}
    for name in input_names:
        if name in enc:
            feeds[name] = enc[name].astype(np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
        else:
            raise ArtifactError(f"the tokenizer gives no {name!r}, which the model needs")
    return feeds, enc


class TextModel:
    def __init__(self, predictor: Predictor, tokenizer, *, task: str, text_settings: dict):
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.task = task
        self.settings = text_settings

    @classmethod
    def from_artifact(cls, artifact: Artifact, predictor: Predictor) -> "TextModel":
        return cls(predictor, load_tokenizer(artifact), task=artifact.manifest.task,
                   text_settings=artifact.manifest.text)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return encode_texts(self.tokenizer, texts, self.predictor.input_names, self.settings["max_length"])

    def token_counts(self, texts: list[str], feeds: dict[str, np.ndarray]) -> tuple[int, ...]:
        """Tokens of each text before truncation; only texts that filled the model's length are tokenized
        again to count them."""
        limit = self.settings["max_length"]
        lengths = feeds["attention_mask"].sum(axis=1).astype(int).tolist()
        full = [i for i, n in enumerate(lengths) if n >= limit]
        if full:
            counted = self.tokenizer([texts[i] for i in full], truncation=False)["input_ids"]
            for i, ids in zip(full, counted):
                lengths[i] = len(ids)
        return tuple(lengths)

    def predict(self, texts: str | list[str], *, aggregation: str = "simple", question: str | None = None) -> Prediction:
        """Results for ``texts``; ``aggregation`` groups a token classifier's tokens into entities (none,
        simple, first, average, max: as transformers' token-classification pipeline); a question-answering
        model answers ``question`` from each text."""
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items or any(not isinstance(t, str) for t in items):
            raise InputError("predict takes a string or a non-empty list of strings")
        empty = [i + 1 for i, t in enumerate(items) if not t.strip()]
        if empty:
            raise InputError(f"text {empty[0]} is empty (or only white space); give each text some words")
        if self.task == FILL_MASK:
            mask = self.tokenizer.mask_token
            missing = [i + 1 for i, t in enumerate(items) if mask not in t]
            if missing:
                raise InputError(f"text {missing[0]} has no {mask} token; fill-mask predicts the words at {mask}: "
                                 f"e.g. \"the movie was {mask}.\"")
        if self.task == TOKEN_CLASSIFICATION:
            return self._entities(items, aggregation)
        if self.task == QUESTION_ANSWERING:
            return self._answers(items, question)
        if question is not None:
            raise InputError(f"a question is for question-answering models; this one does {self.task}")
        feeds = self.encode(items)
        counts = dict(tokens=self.token_counts(items, feeds), max_length=self.settings["max_length"])
        out = self.predictor.infer(feeds)
        if self.task == TEXT_CLASSIFICATION:
            logits = out["logits"]
            scores, names = classify(logits, self.settings.get("labels"))
            return Prediction(tuple(items), logits=logits, scores=scores, labels=tuple(names), **counts)
        if self.task == FILL_MASK:
            tok = self.tokenizer
            masks = fill(feeds["input_ids"], out["logits"], tok.mask_token_id, tok.pad_token_id,
                         lambda ids, skip: tok.decode(ids, skip_special_tokens=skip))
            return Prediction(tuple(items), masks=tuple(masks), **counts)
        pooled = "sentence_embedding" in out  # pooled (and normalised) in the graph
        emb = embeddings(out["sentence_embedding"] if pooled else out["last_hidden_state"], feeds["attention_mask"],
                         None if pooled else self.settings.get("pooling", "mean"), bool(self.settings.get("normalize")))
        return Prediction(tuple(items), embeddings=emb, **counts)

    def _entities(self, items: list[str], aggregation: str) -> Prediction:
        if aggregation not in STRATEGIES:
            raise InputError(f"unknown aggregation {aggregation!r}; use one of {', '.join(STRATEGIES)}")
        feeds, enc = tokenize(self.tokenizer, items, self.predictor.input_names, self.settings["max_length"],
                              return_offsets_mapping=True, return_special_tokens_mask=True)
        logits = self.predictor.infer(feeds)["logits"]
        labels = label_names(self.settings.get("labels"), logits.shape[-1])
        pieces = Pieces(self.tokenizer.backend_tokenizer, unk_id=self.tokenizer.unk_token_id)
        found = []
        for i, text in enumerate(items):
            skip = enc["special_tokens_mask"][i].astype(bool) | (enc["attention_mask"][i] == 0)
            tokens = tokens_of(text, pieces, enc["input_ids"][i], logits[i], enc["offset_mapping"][i], skip)
            found.append(entities(tokens, labels, aggregation, pieces))
        return Prediction(tuple(items), entities=tuple(found), tokens=self.token_counts(items, feeds),
                          max_length=self.settings["max_length"])

    def _answers(self, contexts: list[str], question: str | None) -> Prediction:
        """The answer to ``question`` in each context, over as many windows as a long context needs."""
        if question is None:
            raise InputError("a question-answering model needs a question: pass --question \"...\" (the texts "
                             "are the contexts to find the answer in)")
        found = []
        for context in contexts:
            enc = windows(self.tokenizer, question, context, self.settings["max_length"])
            feeds = {n: np.asarray(enc[n], dtype=np.int64) if n in enc else np.zeros_like(enc["input_ids"])
                     for n in self.predictor.input_names}
            out = self.predictor.infer(feeds)
            sequence_ids = [enc.sequence_ids(w) for w in range(len(enc["input_ids"]))]
            found.append(qa.answer(sequence_ids, enc["offset_mapping"], out["start_logits"], out["end_logits"],
                                context).to_json())
        return Prediction(tuple(contexts), answers=tuple(found), question=question)


def windows(tokenizer, question: str, context: str, max_length: int, stride: int | None = None) -> dict:
    """The tokenizer's encoding of (question, context) as overlapping windows of at most ``max_length``."""
    problem = qa.pair_problem(question, context)
    if problem:
        raise InputError(problem)
    question_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    try:
        room = qa.context_room(question_tokens, tokenizer.num_special_tokens_to_add(pair=True), max_length)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return tokenizer(question, context, truncation="only_second", max_length=max_length,
                     stride=qa.window_stride(room, qa.STRIDE if stride is None else stride),
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest",
                     return_tensors="np")
