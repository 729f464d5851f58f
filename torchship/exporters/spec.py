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

from torchship.errors import UnsupportedModelError

FEATURE_EXTRACTION = "feature-extraction"
TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
DENOISING = "denoising"  # diffusion UNets: predict the noise in latents
TASKS = (FEATURE_EXTRACTION, TEXT_CLASSIFICATION, TEXT_GENERATION, DENOISING)

BATCH, SEQUENCE = "batch", "sequence"
PAST_SEQUENCE, TOTAL_SEQUENCE = "past_sequence", "total_sequence"
EMPTY_OK_AXES = frozenset({PAST_SEQUENCE})  # an empty past is how a decoder's first step runs


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    axes: tuple[str | int, ...]  # str = named dynamic axis, int = fixed size

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.axes)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))

    def dynamic_axes(self) -> dict[int, str]:
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


class Case(Protocol):
    """An input shape to export or validate at; ``label`` names it in reports."""

    def label(self) -> str: ...


class ModelSpec(Protocol):
    """A family's export spec. Loading (load_config, load_model, load_tokenizer, save_config,
    load_saved_config, prepare_copy, has_text) comes from its source mixin in
    :mod:`torchship.exporters.sources`."""

    family: str
    kind: str  # "encoder", "decoder" or "unet"
    default_exporter: str  # the export path measured best for the family
    fusion_hint: str  # printed with the warning when attention does not fuse
    model_types: tuple[str, ...]
    tasks: tuple[str, ...]
    ort_model_type: str
    atol: float
    dummy_case: Case
    validation_cases: tuple[Case, ...]
    bench_inputs: str  # how benchmark inputs are made, for the report

    def default_task(self, config) -> str: ...

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


_REGISTRY: dict[str, ModelSpec] = {}
KIND_WORDS = {"encoder": "BERT-like encoders", "decoder": "GPT-2-like decoders", "unet": "diffusion UNets",
              "onnx": "ONNX files"}
KIND_ONE = {"encoder": "an encoder", "decoder": "a decoder", "unet": "a diffusion UNet",
            "onnx": "a model imported from an ONNX file"}
KIND_COMMANDS = {"encoder": "export-bert", "decoder": "export-gpt2", "unet": "export-unet", "onnx": "torchship auto"}


def register(spec: ModelSpec) -> ModelSpec:
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def _load_registry() -> None:
    # Importing the family modules registers their specs.
    from torchship.exporters import decoders, encoders, onnx_file, unet  # noqa: F401


def supported_model_types(family_kind: str | None = None) -> tuple[str, ...]:
    _load_registry()
    return tuple(sorted(mt for mt, spec in _REGISTRY.items()  # ONNX files are imported, not exported
                        if (family_kind is None and spec.kind != "onnx") or spec.kind == family_kind))


def spec_for(model_type: str, *, source: str = "the model", kind: str | None = None) -> ModelSpec:
    """The spec for ``model_type``; ``kind`` ("encoder", "decoder") restricts what is accepted."""
    _load_registry()
    spec = _REGISTRY.get(model_type)
    if spec is None or (kind is not None and spec.kind != kind):
        what = KIND_WORDS.get(kind, "models")
        hint = ""
        if spec is not None:
            hint = f" (it is {KIND_ONE[spec.kind]}: use {KIND_COMMANDS[spec.kind]})"
        raise UnsupportedModelError(
            f"{source} is a {model_type!r} model{hint}; this command exports {what} of type "
            f"{', '.join(supported_model_types(kind))}"
        )
    return spec
