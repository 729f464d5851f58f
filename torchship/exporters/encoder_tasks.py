"""The tasks a text encoder exports, one record each: the transformers class that loads it, the head a
checkpoint must have, and the outputs the graph ends in. EncoderSpec reads this table; adding a task is
one record here, its results in runtimes/text.py and its tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torchship.errors import InputError, ModelLoadError
from torchship.exporters.spec import (BATCH, FEATURE_EXTRACTION, FILL_MASK, SENTENCE_EMBEDDING, SEQUENCE,
                                      QUESTION_ANSWERING, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, TensorSpec)


def _hidden(model, config):
    hidden = int(config.hidden_size)
    outs = [TensorSpec("last_hidden_state", "float32", (BATCH, SEQUENCE, hidden))]
    if getattr(model, "pooler", None) is not None:
        outs.append(TensorSpec("pooler_output", "float32", (BATCH, hidden)))
    return outs


@dataclass(frozen=True)
class EncoderTask:
    name: str
    auto_class: str  # the transformers Auto class that loads the checkpoint for it
    head: str | None  # the architecture suffix a checkpoint needs (its head's weights); None: any encoder
    outputs: Callable  # (model, config) -> [TensorSpec]
    what: str  # for messages: what the task returns
    # Whether a checkpoint with this head exports the task when none is asked for. Not for fill-mask: base
    # checkpoints (bert-base-cased) carry their pretraining head, and what users deploy is the encoder.
    by_default: bool = True


TASK_TABLE: dict[str, EncoderTask] = {t.name: t for t in (
    EncoderTask(FEATURE_EXTRACTION, "AutoModel", None, _hidden, "hidden states"),
    EncoderTask(SENTENCE_EMBEDDING, "AutoModel", None,
                lambda model, config: [TensorSpec("sentence_embedding", "float32", (BATCH, int(config.hidden_size)))],
                "sentence embeddings, pooled (and normalised) as the sentence-transformers folder says"),
    EncoderTask(TEXT_CLASSIFICATION, "AutoModelForSequenceClassification", "ForSequenceClassification",
                lambda model, config: [TensorSpec("logits", "float32", (BATCH, int(config.num_labels)))],
                "one label per text"),
    EncoderTask(TOKEN_CLASSIFICATION, "AutoModelForTokenClassification", "ForTokenClassification",
                lambda model, config: [TensorSpec("logits", "float32", (BATCH, SEQUENCE, int(config.num_labels)))],
                "entities with character spans"),
    EncoderTask(QUESTION_ANSWERING, "AutoModelForQuestionAnswering", "ForQuestionAnswering",
                lambda model, config: [TensorSpec("start_logits", "float32", (BATCH, SEQUENCE)),
                                       TensorSpec("end_logits", "float32", (BATCH, SEQUENCE))],
                "the answer's text, character span and score"),
    EncoderTask(FILL_MASK, "AutoModelForMaskedLM", "ForMaskedLM",
                lambda model, config: [TensorSpec("logits", "float32", (BATCH, SEQUENCE, int(config.vocab_size)))],
                "the likeliest tokens for each mask", by_default=False),
)}


def default_task(config) -> str:
    """The task a checkpoint's architecture names (its head), else hidden states."""
    archs = getattr(config, "architectures", None) or ()
    for task in TASK_TABLE.values():
        if task.head and task.by_default and any(a.endswith(task.head) for a in archs):
            return task.name
    return FEATURE_EXTRACTION


def task_problem(task: str, config, folder: Path | None) -> str | None:
    """Why this checkpoint cannot do ``task`` (a head it lacks, a sentence-transformers config it lacks)."""
    record = TASK_TABLE[task]
    archs = [a for a in (getattr(config, "architectures", None) or ()) if a]
    if record.head and archs and not any(a.endswith(record.head) for a in archs):
        return (f"the checkpoint is a {archs[0]}, without the {record.head[3:]} head that {task} needs (its "
                "weights would be random); export a checkpoint trained for it, or use --task feature-extraction")
    if task == SENTENCE_EMBEDDING and (folder is None or not (folder / "modules.json").is_file()):
        return ("--task sentence-embedding needs a sentence-transformers folder (modules.json and its pooling "
                "config); this checkpoint has none: use --task feature-extraction")
    return None


def sentence_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) of a sentence-transformers folder, for the graph; a mode torchship cannot
    put in the graph, or a missing pooling config, is an error."""
    from torchship.exporters.sources import sentence_transformers_settings

    settings = sentence_transformers_settings(folder)
    if "pooling" not in settings:
        raise ModelLoadError(f"{folder}/modules.json names no Pooling module (or its config is missing); "
                             "a sentence-embedding export needs one")
    return settings["pooling"], bool(settings.get("normalize"))


def check_task(task: str) -> EncoderTask:
    if task not in TASK_TABLE:
        raise InputError(f"unknown task {task!r} for an encoder; use one of {', '.join(TASK_TABLE)}")
    return TASK_TABLE[task]
