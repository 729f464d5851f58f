"""Declarative export specs, one per model family, registered by Hugging Face ``model_type``.

A spec says which inputs the model takes, which outputs a task has, which axes are dynamic and
what they are called, the validation tolerance and the ONNX Runtime ``model_type`` used for
fusion. How dummy tensors are made lives in :mod:`torchship.exporters.inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchship.errors import UnsupportedModelError

FEATURE_EXTRACTION = "feature-extraction"
TEXT_CLASSIFICATION = "text-classification"
TASKS = (FEATURE_EXTRACTION, TEXT_CLASSIFICATION)

BATCH, SEQUENCE = "batch", "sequence"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    axes: tuple[str | int, ...]  # str = named dynamic axis, int = fixed size

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.axes)}


@dataclass(frozen=True)
class EncoderSpec:
    """A BERT-like text encoder: token ids in, hidden states (or logits) out."""

    family: str
    model_types: tuple[str, ...]
    input_names: tuple[str, ...]
    ort_model_type: str = "bert"
    atol: float = 1e-4
    opset: int = 17
    tasks: tuple[str, ...] = field(default=TASKS)

    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(n, "int64", (BATCH, SEQUENCE)) for n in self.input_names)

    def outputs(self, task: str, *, has_pooler: bool, num_labels: int) -> tuple[TensorSpec, ...]:
        if task == FEATURE_EXTRACTION:
            outs = [TensorSpec("last_hidden_state", "float32", (BATCH, SEQUENCE, "hidden"))]
            if has_pooler:
                outs.append(TensorSpec("pooler_output", "float32", (BATCH, "hidden")))
            return tuple(outs)
        if task == TEXT_CLASSIFICATION:
            return (TensorSpec("logits", "float32", (BATCH, num_labels)),)
        raise UnsupportedModelError(f"task {task!r} is not one of {', '.join(self.tasks)}")


_WITH_SEGMENTS = ("input_ids", "attention_mask", "token_type_ids")
_NO_SEGMENTS = ("input_ids", "attention_mask")

ENCODER_SPECS: tuple[EncoderSpec, ...] = (
    EncoderSpec("bert", ("bert",), _WITH_SEGMENTS),
    EncoderSpec("roberta", ("roberta", "xlm-roberta", "camembert"), _NO_SEGMENTS),
    EncoderSpec("distilbert", ("distilbert",), _NO_SEGMENTS),
    EncoderSpec("electra", ("electra",), _WITH_SEGMENTS),
)

_BY_MODEL_TYPE = {mt: spec for spec in ENCODER_SPECS for mt in spec.model_types}


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_BY_MODEL_TYPE))


def spec_for(model_type: str, *, source: str = "the model") -> EncoderSpec:
    spec = _BY_MODEL_TYPE.get(model_type)
    if spec is None:
        raise UnsupportedModelError(
            f"{source} is a {model_type!r} model; torchship exports BERT-like encoders of type "
            f"{', '.join(supported_model_types())}"
        )
    return spec


def task_from_architectures(architectures: list[str] | None) -> str:
    """The task a checkpoint was saved for: a *ForSequenceClassification head, else features."""
    if any(a.endswith("ForSequenceClassification") for a in architectures or ()):
        return TEXT_CLASSIFICATION
    return FEATURE_EXTRACTION
