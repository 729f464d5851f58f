"""BERT-like text encoders: token ids in, hidden states (or logits) out."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.errors import InputError
from torchship.exporters import encoder_tasks
from torchship.exporters.inputs import TextShape, make_text_inputs
from torchship.exporters.sources import TransformersSource
from torchship.exporters.spec import (BATCH, ENCODE, SENTENCE_EMBEDDING, SEQUENCE, FamilyGroup, ModelIO,
                                      NormalizedConfig, SpecDefaults, TensorSpec, register)

ENCODER_TASKS = tuple(encoder_tasks.TASK_TABLE)
ENCODERS = FamilyGroup(
    "encoder", "BERT-like encoders", "an encoder", "export-bert",
    "Export a BERT-like encoder (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM) to ONNX, validated and optimized.",
    example="bert-base-cased")


@dataclass(frozen=True)
class EncoderSpec(TransformersSource, SpecDefaults):
    family: str
    model_types: tuple[str, ...]
    input_names: tuple[str, ...]
    ort_model_type: str = "bert"
    atol: float = 1e-4
    group: FamilyGroup = ENCODERS
    phases: tuple[str, ...] = (ENCODE,)
    text_api: str | None = "predict"
    positions_after_padding: bool = False  # RoBERTa-style: position ids start at pad_token_id + 1
    position_offset: int = 0  # position ids start here whatever the config says (MPNet: its padding index 1, + 1)
    # Local (sliding-window) attention: a pad position whose window holds only padding sees no real token,
    # so its output is undefined (attention implementations fill it differently) and only real tokens count.
    local_attention: bool = False
    default_exporter: str = "torchscript"
    fusion_hint: str = "Export with --exporter torchscript --attn-implementation eager for full fusion"
    tasks: tuple[str, ...] = ENCODER_TASKS
    # The export traces at batch 2 x seq 16; validation runs at other shapes, one padded batch.
    dummy_case: TextShape = TextShape(2, 16)
    validation_cases: tuple[TextShape, ...] = (TextShape(1, 9), TextShape(3, 23, (23, 11, 4)))
    bench_inputs: str = "random token ids, full length, seeded"

    def default_task(self, config) -> str:
        """The task the checkpoint's head names (*ForSequenceClassification: logits, ...); else hidden states."""
        return encoder_tasks.default_task(config)

    def task_problem(self, task: str, config, folder) -> str | None:
        return encoder_tasks.task_problem(task, config, folder)

    def normalized(self, config) -> NormalizedConfig:
        return text_normalized(config, self.max_positions(config))

    def inputs_for(self, config) -> tuple[str, ...]:
        """The spec's inputs; token_type_ids only where the config has segment embeddings (DeBERTa-v3's
        type_vocab_size is 0, so the model never reads them and the export would drop the input)."""
        if "token_type_ids" in self.input_names and not int(getattr(config, "type_vocab_size", 1) or 0):
            return tuple(n for n in self.input_names if n != "token_type_ids")
        return self.input_names

    def model_class(self, task: str):
        import transformers

        return getattr(transformers, encoder_tasks.check_task(task).auto_class)

    def load_model(self, ref, config, task: str, **kwargs):
        """The checkpoint for ``task``; for sentence embeddings, followed by its own pooling and normalisation."""
        model = super().load_model(ref, config, task, **kwargs)
        if task != SENTENCE_EMBEDDING:
            return model
        from torchship._torch import make_sentence_embedder

        return make_sentence_embedder(model, *encoder_tasks.sentence_pooling(ref.path))

    def io(self, model, task: str) -> ModelIO:
        config = model.config
        inputs = tuple(TensorSpec(n, "int64", (BATCH, SEQUENCE)) for n in self.inputs_for(config))
        return ModelIO(inputs, tuple(encoder_tasks.check_task(task).outputs(model, config)))

    def wrapper(self, model, io: ModelIO):
        from torchship._torch import make_encoder_wrapper

        return make_encoder_wrapper(model, io.output_names)

    def sample_inputs(self, config, io: ModelIO, case: TextShape, *, seed: int):
        return make_text_inputs(io.input_names, case, seed=seed, **text_vocab(config))

    def max_positions(self, config) -> int:
        limit = int(config.max_position_embeddings)
        if self.positions_after_padding:
            limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
        return limit - self.position_offset

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
        """Everything (padded positions of a bidirectional encoder still attend to the real tokens), except
        with local attention, where hidden states count at real tokens only."""
        if not self.local_attention:
            return {}
        return {"last_hidden_state": feeds["attention_mask"].astype(bool)[:, :, None]}


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


def _no_pattern(name: str, what: str) -> str:
    return (f"ONNX Runtime's transformer optimizer has no attention pattern for {name}'s {what}: attention runs "
            "as plain MatMul/Softmax, whatever the export path")


_WITH_SEGMENTS = ("input_ids", "attention_mask", "token_type_ids")
_NO_SEGMENTS = ("input_ids", "attention_mask")

ENCODER_SPECS = tuple(register(s) for s in (
    EncoderSpec("bert", ("bert",), _WITH_SEGMENTS),
    EncoderSpec("roberta", ("roberta", "xlm-roberta", "camembert"), _NO_SEGMENTS, positions_after_padding=True),
    EncoderSpec("distilbert", ("distilbert",), _NO_SEGMENTS),
    EncoderSpec("electra", ("electra",), _WITH_SEGMENTS),
    EncoderSpec("mpnet", ("mpnet",), _NO_SEGMENTS, position_offset=2, fusion_hint=_no_pattern("MPNet", "relative position bias")),
    EncoderSpec("albert", ("albert",), _WITH_SEGMENTS,
                fusion_hint="ALBERT shares one layer's weights across layers, and ONNX Runtime's optimizer does "
                            "not fuse every repeat of the shared attention"),
    EncoderSpec("deberta-v2", ("deberta-v2",), _WITH_SEGMENTS,
                fusion_hint=_no_pattern("DeBERTa-v2/v3", "disentangled relative attention")),
    EncoderSpec("modernbert", ("modernbert",), _NO_SEGMENTS, local_attention=True,
                fusion_hint=_no_pattern("ModernBERT", "rotary positions and local attention")),
))
