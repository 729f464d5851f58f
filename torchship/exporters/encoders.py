"""BERT-like text encoders: token ids in, hidden states (or logits) out."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.errors import InputError, UnsupportedModelError
from torchship.exporters.inputs import TextShape, make_text_inputs
from torchship.exporters.sources import TransformersSource
from torchship.exporters.spec import (BATCH, ENCODE, FEATURE_EXTRACTION, SEQUENCE, TEXT_CLASSIFICATION, FamilyGroup,
                                      ModelIO, NormalizedConfig, SpecDefaults, TensorSpec, register)

ENCODER_TASKS = (FEATURE_EXTRACTION, TEXT_CLASSIFICATION)
ENCODERS = FamilyGroup(
    "encoder", "BERT-like encoders", "an encoder", "export-bert",
    "Export a BERT-like encoder (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM) to ONNX, validated and optimized.",
    example="bert-base-cased")


@dataclass(frozen=True)
class EncoderSpec(SpecDefaults, TransformersSource):
    family: str
    model_types: tuple[str, ...]
    input_names: tuple[str, ...]
    ort_model_type: str = "bert"
    atol: float = 1e-4
    group: FamilyGroup = ENCODERS
    phases: tuple[str, ...] = (ENCODE,)
    text_api: str | None = "predict"
    positions_after_padding: bool = False  # RoBERTa-style: position ids start at pad_token_id + 1
    default_exporter: str = "torchscript"
    fusion_hint: str = "Export with --exporter torchscript --attn-implementation eager for full fusion"
    tasks: tuple[str, ...] = ENCODER_TASKS
    # The export traces at batch 2 x seq 16; validation runs at other shapes, one padded batch.
    dummy_case: TextShape = TextShape(2, 16)
    validation_cases: tuple[TextShape, ...] = (TextShape(1, 9), TextShape(3, 23, (23, 11, 4)))
    bench_inputs: str = "random token ids, full length, seeded"

    def default_task(self, config) -> str:
        """A *ForSequenceClassification checkpoint exports logits; anything else hidden states."""
        archs = getattr(config, "architectures", None) or ()
        return TEXT_CLASSIFICATION if any(a.endswith("ForSequenceClassification") for a in archs) \
            else FEATURE_EXTRACTION

    def normalized(self, config) -> NormalizedConfig:
        return text_normalized(config, self.max_positions(config))

    def model_class(self, task: str):
        from transformers import AutoModel, AutoModelForSequenceClassification

        return AutoModelForSequenceClassification if task == TEXT_CLASSIFICATION else AutoModel

    def io(self, model, task: str) -> ModelIO:
        config = model.config
        inputs = tuple(TensorSpec(n, "int64", (BATCH, SEQUENCE)) for n in self.input_names)
        hidden = int(config.hidden_size)
        if task == FEATURE_EXTRACTION:
            outs = [TensorSpec("last_hidden_state", "float32", (BATCH, SEQUENCE, hidden))]
            if getattr(model, "pooler", None) is not None:
                outs.append(TensorSpec("pooler_output", "float32", (BATCH, hidden)))
        elif task == TEXT_CLASSIFICATION:
            outs = [TensorSpec("logits", "float32", (BATCH, int(config.num_labels)))]
        else:
            raise UnsupportedModelError(f"{self.family} models export {', '.join(self.tasks)}, not {task!r}")
        return ModelIO(inputs, tuple(outs))

    def wrapper(self, model, io: ModelIO):
        from torchship._torch import make_encoder_wrapper

        return make_encoder_wrapper(model, io.output_names)

    def sample_inputs(self, config, io: ModelIO, case: TextShape, *, seed: int):
        return make_text_inputs(io.input_names, case, seed=seed, **text_vocab(config))

    def max_positions(self, config) -> int:
        limit = int(config.max_position_embeddings)
        if self.positions_after_padding:
            limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
        return limit

    def case_shape(self, case: TextShape) -> tuple[int, ...]:
        return (case.batch, case.sequence)

    def case_for(self, sizes: dict[str, int], config) -> TextShape:
        case = TextShape(sizes[BATCH], sizes[SEQUENCE])
        check_positions(case.sequence, self.max_positions(config))
        return case

    def bench_sizes(self, config) -> list[dict[str, int]]:
        limit = self.max_positions(config)
        return [{BATCH: b, SEQUENCE: min(s, limit)} for s in (16, 128) for b in (1, 8)]

    def fusion_settings(self, model) -> dict:
        return text_fusion_settings(model.config)

    def compared_positions(self, feeds) -> dict:
        # Padded rows of a bidirectional encoder still attend to the real tokens: compare everything.
        return {}


def check_positions(length: int, limit: int) -> None:
    if length > limit:
        raise InputError(f"sequence length {length} exceeds the model's limit of {limit} positions")


def text_normalized(config, max_positions: int) -> NormalizedConfig:
    """The normalized view of a transformers text config (its attribute maps name the fields alike)."""
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    return NormalizedConfig(hidden_size=hidden, num_heads=heads,
                            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
                            num_layers=int(config.num_hidden_layers), vocab_size=int(config.vocab_size),
                            max_positions=int(max_positions),
                            head_dim=int(getattr(config, "head_dim", None) or hidden // heads))


def text_fusion_settings(config) -> dict:
    return {"num_heads": int(config.num_attention_heads), "hidden_size": int(config.hidden_size),
            "num_layers": int(config.num_hidden_layers)}


def text_vocab(config) -> dict:
    """What random token ids need to know about a text model's vocabulary."""
    return dict(vocab_size=int(config.vocab_size),
                type_vocab_size=int(getattr(config, "type_vocab_size", 1) or 1),
                pad_token_id=int(getattr(config, "pad_token_id", 0) or 0))


_WITH_SEGMENTS = ("input_ids", "attention_mask", "token_type_ids")
_NO_SEGMENTS = ("input_ids", "attention_mask")

ENCODER_SPECS = tuple(register(s) for s in (
    EncoderSpec("bert", ("bert",), _WITH_SEGMENTS),
    EncoderSpec("roberta", ("roberta", "xlm-roberta", "camembert"), _NO_SEGMENTS, positions_after_padding=True),
    EncoderSpec("distilbert", ("distilbert",), _NO_SEGMENTS),
    EncoderSpec("electra", ("electra",), _WITH_SEGMENTS),
))
