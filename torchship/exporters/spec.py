"""Declarative export specs, one per model family, registered by Hugging Face ``model_type``.

A spec says which inputs and outputs a task has and which axes are dynamic (every axis named by a
string; fixed sizes are ints), which transformers class to load, how to wrap the model in a module
with a positional ``forward`` for the exporters, which input cases to export and validate with, the
validation tolerance and ONNX Runtime's ``model_type`` for fusion. How the sample tensors of a case
are made lives in :mod:`torchship.exporters.inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from torchship.errors import InputError, UnsupportedModelError
from torchship.tensors import (BATCH, EMPTY_OK_AXES, PAST_SEQUENCE, SEQUENCE, TOTAL_SEQUENCE, ModelIO,  # noqa: F401
                               TensorSpec)

FEATURE_EXTRACTION = "feature-extraction"
TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
DENOISING = "denoising"  # diffusion UNets: predict the noise in latents
SENTENCE_EMBEDDING = "sentence-embedding"  # a sentence-transformers model: pooling (and normalisation) in the graph
FILL_MASK = "fill-mask"
TOKEN_CLASSIFICATION = "token-classification"
QUESTION_ANSWERING = "question-answering"
IMAGE_FEATURE_EXTRACTION = "image-feature-extraction"  # hidden states (and the pooled embedding) of pixel values
IMAGE_CLASSIFICATION = "image-classification"
SPEECH_RECOGNITION = "automatic-speech-recognition"  # CTC logits per audio frame
AUDIO_CLASSIFICATION = "audio-classification"
ZERO_SHOT_IMAGE_CLASSIFICATION = "zero-shot-image-classification"  # image-text towers: images scored against labels
IMAGE_TEXT_EMBEDDING = "image-text-embedding"  # the same towers, used for image and text embeddings in one space
TASKS = (FEATURE_EXTRACTION, SENTENCE_EMBEDDING, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING,
         FILL_MASK, TEXT_GENERATION, DENOISING, IMAGE_FEATURE_EXTRACTION, IMAGE_CLASSIFICATION, SPEECH_RECOGNITION,
         AUDIO_CLASSIFICATION, ZERO_SHOT_IMAGE_CLASSIFICATION, IMAGE_TEXT_EMBEDDING)
# tasks whose outputs are scores over labels
LABELLED_TASKS = (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, IMAGE_CLASSIFICATION, AUDIO_CLASSIFICATION)

# What a benchmark times, per family: one forward pass of an encoder, a decoder's prompt and its
# per-token step, one denoising step of a UNet, one run of an imported ONNX graph, one forward pass of an image or
# audio encoder (not ENCODE: that one's measured dispatch and kernels are for batch x sequence text).
ENCODE, PREFILL, DECODE, DENOISE, FORWARD = "encode", "prefill", "decode", "denoise", "forward"
ENCODE_IMAGE, ENCODE_AUDIO = "encode-image", "encode-audio"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class FamilyGroup:
    """Families that share a command and the words that name them ("BERT-like encoders")."""

    name: str  # "encoder", "decoder", "unet", "onnx"
    words: str  # the group, in a sentence: "BERT-like encoders"
    one: str  # one member: "an encoder"
    command: str  # the command that exports it: "export-bert"
    help: str = ""  # that command's help text
    example: str = ""  # a model to name in that command's help: "bert-base-cased"
    aliases: tuple[str, ...] = ()  # other names of the same command ("export-decoder" for "export-gpt2")


@dataclass(frozen=True)
class NormalizedConfig:
    """One view of a model config, whatever the library calls its fields (Optimum's NormalizedConfig)."""

    hidden_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    num_layers: int = 0
    vocab_size: int = 0
    max_positions: int = 0
    head_dim: int = 0

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Case(Protocol):
    """An input shape to export or validate at; ``label`` names it in reports."""

    def label(self) -> str: ...


class ModelSpec(Protocol):
    """A family's export spec: everything that differs between families is decided here, and generic code
    asks the spec instead of testing the family's name. Loading (load_config, load_model, load_tokenizer,
    save_config, load_saved_config, prepare_copy, text_settings) comes from its source mixin in
    :mod:`torchship.exporters.sources`."""

    family: str
    group: FamilyGroup  # the command that exports it and the words that name it
    default_exporter: str  # the export path measured best for the family
    fusion_hint: str  # printed with the warning when attention does not fuse
    model_types: tuple[str, ...]
    tasks: tuple[str, ...]
    ort_model_type: str  # onnxruntime.transformers' model_type; "" when its fuser has nothing for the family
    atol: float
    dummy_case: Case
    validation_cases: tuple[Case, ...]
    bench_inputs: str  # how benchmark inputs are made, for the report
    phases: tuple[str, ...]  # what a benchmark times: ENCODE, PREFILL + DECODE, DENOISE or FORWARD
    text_api: str | None  # "predict" (text in, embeddings or labels out), "generate", or None
    has_checkpoint: bool  # a PyTorch model stands behind the export (the torch backends can run)
    precisions: tuple[str, ...]  # the precisions its variants may take

    @property
    def kind(self) -> str: ...

    def default_task(self, config) -> str: ...

    def normalized(self, config) -> NormalizedConfig: ...

    def backend_problem(self, backend) -> str | None:
        """Why ``backend`` (a :class:`torchship.backends.Backend`) cannot run this family; None when it can."""
        ...

    def io(self, model, task: str) -> ModelIO: ...

    def wrapper(self, model, io: ModelIO): ...

    def sample_inputs(self, config, io: ModelIO, case: Case, *, seed: int) -> dict[str, np.ndarray]: ...

    def case_shape(self, case: Case) -> tuple[int, ...]: ...

    def case_for(self, sizes: dict[str, int], config) -> Case:
        """The case with these named axis sizes (from a shape config); InputError if the model cannot
        run it (too long for its positions, latents of the wrong multiple, ...)."""
        ...

    def bench_sizes(self, config) -> list[dict[str, int]]:
        """The shapes (named axis sizes) a benchmark runs at when neither flags nor a shape config say."""
        ...

    def fusion_settings(self, model) -> dict:
        """num_heads, hidden_size for ORT's transformer optimizer, and num_layers: how many attention
        fusions a complete fusion gives."""
        ...

    def compared_positions(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per output, where validation compares values (outputs not named: everywhere)."""
        ...


class SpecDefaults:
    """What most families share; a spec overrides what differs."""

    phases: tuple[str, ...] = (ENCODE,)
    text_api: str | None = None
    has_checkpoint: bool = True
    precisions: tuple[str, ...] = PRECISIONS

    @property
    def kind(self) -> str:
        return self.group.name

    def backend_problem(self, backend) -> str | None:
        return weight_only_problem(self, backend)

    def task_problem(self, task: str, config, folder) -> str | None:
        """Why this checkpoint cannot do ``task`` (beyond the family's task list); None when it can."""
        return None

    def save_extras(self, source, folder) -> None:
        """Copy what else of the checkpoint (``source``, a folder or None) belongs in the export folder."""


def weight_only_problem(spec, backend) -> str | None:
    """Weight-only variants are judged on a decode, so only a family with one has them; the refusal names the
    int8 backend such a family may use instead."""
    from torchship.backends import WEIGHT_ONLY

    if backend.builder != WEIGHT_ONLY or DECODE in spec.phases:
        return None
    instead = "; use ort-int8 (torchship quantize on this folder makes it)" if "int8" in spec.precisions else ""
    return f"{backend.name} is a weight-only variant, which torchship makes for decoders only{instead}"


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a family: its model types resolve to ``spec`` from now on (also for a family defined outside
    torchship, e.g. in a test)."""
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def unregister(spec: ModelSpec) -> None:
    """Remove a family added with :func:`register` (its model types resolve to nothing again)."""
    for model_type in spec.model_types:
        if _REGISTRY.get(model_type) is spec:
            del _REGISTRY[model_type]


# Generic families: each takes the models no family spec names that it ``claims``, asked in the order registered
# (exporters/__init__.py registers torchship's own; a family spec, where one exists, always comes first).
_GENERIC: list[ModelSpec] = []


def register_generic(spec: ModelSpec) -> ModelSpec:
    """Add a generic family: a spec with ``claims(model_type, config) -> bool`` (``config``: the checkpoint's
    config.json as a dict) that exports any model it claims and no family spec names. Its ``family`` names it in
    the manifests it writes, which is how a folder finds it again (``family_of``)."""
    if spec not in _GENERIC:
        _GENERIC.append(spec)
    return spec


def unregister_generic(spec: ModelSpec) -> None:
    """Remove a generic family added with :func:`register_generic`."""
    if spec in _GENERIC:
        _GENERIC.remove(spec)


def generic_for(model_type: str, config: dict, task: str | None = None) -> ModelSpec | None:
    """The first generic family that claims a model no family spec names (and does ``task``, when given); None
    when none does. A family with ``for_model(model_type, config)`` gives the spec for that model (ONNX Runtime's
    fuser for its type)."""
    spec = next((g for g in _GENERIC if g.claims(model_type, config) and (task is None or task in g.tasks)), None)
    bind = getattr(spec, "for_model", None)
    return bind(model_type, config) if bind is not None else spec


def supported_model_types(family_kind: str | None = None) -> tuple[str, ...]:
    """Model types a command exports; ``None``: every exportable one (ONNX files are imported, not exported)."""
    return tuple(sorted(mt for mt, spec in _REGISTRY.items()
                        if (family_kind is None and spec.has_checkpoint) or spec.kind == family_kind))


def groups() -> dict[str, FamilyGroup]:
    """Every family group by name."""
    return {spec.group.name: spec.group for spec in _REGISTRY.values()}


def group_for_command(command: str) -> FamilyGroup:
    """The group a command (or one of its aliases) exports."""
    return next(g for g in groups().values() if command == g.command or command in g.aliases)


def default_exporter_of(kind: str) -> str:
    """The export path measured best for a group's families (the first family's, as the group shares one)."""
    return next(spec.default_exporter for spec in _REGISTRY.values() if spec.kind == kind)


def tasks_of(kind: str) -> tuple[str, ...]:
    """The tasks the families of a group export, in the order of TASKS."""
    tasks = {t for spec in _REGISTRY.values() if spec.kind == kind for t in spec.tasks}
    return tuple(t for t in TASKS if t in tasks)


def spec_for(model_type: str, *, source: str = "the model", kind: str | None = None,
             config: dict | None = None, task: str | None = None) -> ModelSpec:
    """The spec for ``model_type``: its family's, else (given the checkpoint's ``config`` as a dict) a generic
    family's that claims it; also a generic family's where the family does not do the ``task`` (or ``kind``) asked and
    a generic one does (a BERT checkpoint with a causal-LM head, asked for text generation). ``kind`` (a family group:
    "encoder", "decoder", ...) restricts what is accepted, and a refusal names the command for what it is."""
    spec = _REGISTRY.get(model_type)
    if spec is None and config is not None:
        spec = generic_for(model_type, config)
    elif spec is not None and config is not None and ((task is not None and task not in spec.tasks)
                                                       or (kind is not None and spec.kind != kind)):
        other = generic_for(model_type, config, task)
        spec = other if other is not None and (kind is None or other.kind == kind) else spec
    if spec is None or (kind is not None and spec.kind != kind):
        group = groups().get(kind)
        hint = f" (it is {spec.group.one}: use {spec.group.command})" if spec is not None else ""
        raise UnsupportedModelError(
            f"{source} is a {model_type!r} model{hint}; this command exports {group.words if group else 'models'} "
            f"of type {', '.join(supported_model_types(kind))}"
        )
    return spec


def family_of(manifest) -> ModelSpec:
    """The spec of the family a torchship folder's manifest names (a generic family by its name)."""
    generic = next((g for g in _GENERIC if g.family == manifest.family), None)
    return generic if generic is not None else spec_for(manifest.model_type)


def saved_config(artifact):
    """The model config saved beside a folder's model (a transformers config, or a diffusers config dict)."""
    return family_of(artifact.manifest).load_saved_config(artifact.folder)


def require_family(artifact, hint: str, *, text_api: str | None = None, phase: str | None = None) -> ModelSpec:
    """The folder's family spec, refusing a family without the text API or benchmark phase a command needs;
    the refusal names what the folder holds and ``hint``, what to use instead."""
    spec = family_of(artifact.manifest)
    if (text_api is not None and spec.text_api != text_api) or (phase is not None and phase not in spec.phases):
        raise InputError(f"{artifact.folder} holds {spec.group.one}; {hint}")
    return spec
