"""The generic text encoder: any transformers encoder no family spec names (ConvBERT, DeBERTa v1, MobileBERT,
YOSO, ...), exported as the BERT-like families are, through their task table and text API, with the dynamo
exporter and inputs read off the model's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchship.errors import UnsupportedModelError
from torchship.exporters import encoder_tasks
from torchship.exporters.encoders import EncoderSpec
from torchship.exporters.generic import (GenericSource, bound, class_name, config_int, forward_params, mapping,
                                         names_mapped_class, takes_first)
from torchship.exporters.spec import NormalizedConfig

# The heads of an encoder: a model type with one of these (and no causal LM, which a decoder family takes) is one.
_ENCODER_HEADS = ("SEQUENCE_CLASSIFICATION", "TOKEN_CLASSIFICATION", "QUESTION_ANSWERING")
DEFAULT_POSITIONS = 512  # a model without a position table (relative positions only) is still cut at this length


def is_text_encoder(model_type: str, config: dict) -> bool:
    """A model whose base class reads token ids first, with a masked-LM head, or another encoder head and no
    causal LM; or a checkpoint whose architectures name one of those heads (a decoder trained as a classifier
    runs once over its text, with no cache: an encoder's task). A causal-LM checkpoint is a decoder family's."""
    if not takes_first(model_type, config, "input_ids"):
        return False
    named = set(config.get("architectures") or ())
    if any(class_name(model_type, h) in named for h in ("MASKED_LM", *_ENCODER_HEADS)):
        return True
    if model_type in mapping("MASKED_LM"):
        return True
    return model_type not in mapping("CAUSAL_LM") and any(model_type in mapping(h) for h in _ENCODER_HEADS)


@dataclass(frozen=True)
class GenericTextSpec(EncoderSpec, GenericSource):
    family: str = "generic-text"
    model_types: tuple[str, ...] = ()  # claimed by config (claims), never by name
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    ort_model_type: str = ""  # set per model type from ONNX Runtime's MODEL_TYPES (bound)
    # The dynamo exporter traces what the eager model does, whatever its attention code; the TorchScript path's
    # full fusion is measured for the families with a spec (issue 29's measurements).
    default_exporter: str = "dynamo"
    fusion_hint: str = ("a generic export: ONNX Runtime's transformer optimizer fuses only the model types it knows; "
                        "a family spec can add what this family needs")
    bench_inputs: str = "random token ids, full length, seeded"

    def claims(self, model_type: str, config: dict) -> bool:
        return is_text_encoder(model_type, config)

    def for_model(self, model_type: str, config: dict) -> "GenericTextSpec":
        return bound(self, model_type)

    def task_problem(self, task: str, config, folder) -> str | None:
        model_type = getattr(config, "model_type", None)
        auto = encoder_tasks.check_task(task).auto_class
        name = auto.replace("AutoModelFor", "").replace("AutoModel", "")
        wanted = {"SequenceClassification": "SEQUENCE_CLASSIFICATION", "TokenClassification": "TOKEN_CLASSIFICATION",
                  "QuestionAnswering": "QUESTION_ANSWERING", "MaskedLM": "MASKED_LM", "": ""}[name]
        if model_type and not class_name(model_type, wanted):
            return f"transformers has no {auto} for {model_type!r} models, so {task} has no head to run; choose another --task"
        if wanted and model_type and names_mapped_class(config, model_type, wanted):
            return None  # the head's class by transformers' own mapping, whatever its name (FlaubertWithLMHeadModel)
        return super().task_problem(task, config, folder)

    def inputs_for(self, config) -> tuple[str, ...]:
        """What the base model's forward reads of the text inputs; token_type_ids only with segment embeddings.
        A model that takes no attention mask mixes the padding of a batch into every token: refused."""
        params = forward_params(config.model_type)
        if "attention_mask" not in params:
            raise UnsupportedModelError(
                f"{class_name(config.model_type)} takes no attention_mask, so padding in a batch would change every "
                "text's outputs; torchship's generic text export needs one (a family spec could run it unpadded)")
        segments = "token_type_ids" in params and config_int(config, "type_vocab_size") > 0
        return tuple(n for n in self.input_names if n in params and (n != "token_type_ids" or segments))

    def normalized(self, config) -> NormalizedConfig:
        hidden = config_int(config, "hidden_size", "d_model", "emb_dim", "dim")
        heads = config_int(config, "num_attention_heads", "n_head", "n_heads")
        return NormalizedConfig(hidden_size=hidden, num_heads=heads,
                                num_kv_heads=config_int(config, "num_key_value_heads", default=heads),
                                num_layers=config_int(config, "num_hidden_layers", "n_layers", "num_layers"),
                                vocab_size=config_int(config, "vocab_size"), max_positions=self.max_positions(config),
                                head_dim=config_int(config, "head_dim", default=hidden // heads if heads else 0))

    def max_positions(self, config) -> int:
        return config_int(config, "max_position_embeddings", default=DEFAULT_POSITIONS)

    def fusion_settings(self, model) -> dict:
        n = self.normalized(model.config)
        return {"num_heads": n.num_heads, "hidden_size": n.hidden_size, "num_layers": n.num_layers}


GENERIC_TEXT = GenericTextSpec()
