"""Decoders with a KV cache: GPT-2, and the Llama-shaped families (Llama, Qwen2, Qwen3, Mistral, Phi-3,
Gemma: RMSNorm, rotary positions, grouped-query attention).

One model serves both phases: the prompt runs with a past length of 0 (prefill), and each new token
runs with the previous step's ``present`` fed back as ``past`` (decode). Past and present names
follow the convention other tools use and come only from :func:`past_names` / :func:`present_names`.
The cache holds the model's key/value heads as they are, ``(batch, kv_heads, past, head_dim)``: a
grouped-query model's K/V are never repeated to the query heads in the cache. Rotary positions come
from ``position_ids``, which count real tokens only (left padding sits at 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchship.errors import InputError, UnsupportedModelError
from torchship.exporters.encoders import check_positions, text_fusion_settings, text_normalized
from torchship.exporters.sources import TransformersSource
from torchship.exporters.spec import (BATCH, DECODE, PAST_SEQUENCE, PREFILL, SEQUENCE, TEXT_GENERATION,
                                      TOTAL_SEQUENCE, FamilyGroup, ModelIO, NormalizedConfig, SpecDefaults, TensorSpec,
                                      register)

DECODERS = FamilyGroup("decoder", "decoders (GPT-2 and Llama-like)", "a decoder", "export-gpt2",
                       "Export a decoder (GPT-2, Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma) with its KV cache to ONNX "
                       "(one model for prompt and decode steps), validated and optimized.", example="gpt2",
                       aliases=("export-decoder",))


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class DecoderShape:
    """``sequence`` new tokens after ``past`` cached ones; ``left_pad[i]`` leading pad positions of row i."""

    batch: int
    sequence: int
    past: int
    left_pad: tuple[int, ...] | None = None

    def pads(self) -> tuple[int, ...]:
        return self.left_pad if self.left_pad is not None else (0,) * self.batch

    def label(self) -> str:
        pad = "" if not any(self.pads()) else " left-padded"
        return f"batch {self.batch} x seq {self.sequence} past {self.past}{pad}"


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids that count only real tokens (left padding sits at 0), as transformers does."""
    return np.clip(mask.cumsum(axis=1) - 1, 0, None).astype(np.int64)


def make_decoder_inputs(io: ModelIO, case: DecoderShape, *, num_heads: int, head_dim: int, vocab_size: int,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids, a left-padded attention mask over past + new tokens, matching position ids and past."""
    rng = np.random.default_rng(seed)
    total = case.past + case.sequence
    mask = np.ones((case.batch, total), dtype=np.int64)
    for row, pad in enumerate(case.pads()):
        if pad >= total:
            raise ValueError(f"row {row} would be all padding")
        mask[row, :pad] = 0
    feeds = {
        "input_ids": rng.integers(0, vocab_size, size=(case.batch, case.sequence), dtype=np.int64),
        "attention_mask": mask,
        "position_ids": positions_from_mask(mask)[:, case.past:],
    }
    for spec in io.inputs:
        if spec.name.startswith("past_key_values."):
            feeds[spec.name] = rng.standard_normal((case.batch, num_heads, case.past, head_dim)).astype(np.float32)
    return {name: feeds[name] for name in io.input_names}


@dataclass(frozen=True)
class DecoderSpec(SpecDefaults, TransformersSource):
    family: str
    model_types: tuple[str, ...]
    ort_model_type: str = "gpt2"
    atol: float = 1e-4
    group: FamilyGroup = DECODERS
    phases: tuple[str, ...] = (PREFILL, DECODE)
    text_api: str | None = "generate"
    default_exporter: str = "dynamo"
    # ORT's gpt2 fusion matches only the graph of old transformers; the dynamo export carries ONNX's
    # own Attention op instead (measured: fused in every layer, fastest decode step).
    fusion_hint: str = "Export with --exporter dynamo (the default for decoders) for ONNX Attention ops"
    tasks: tuple[str, ...] = (TEXT_GENERATION,)
    # Traced with past and left padding, so neither is baked in as "absent"; validated at past
    # lengths 0 (prefill), 1 and 17, with batches > 1 and left padding.
    dummy_case: DecoderShape = DecoderShape(2, 3, 5, (0, 2))
    validation_cases: tuple[DecoderShape, ...] = (
        DecoderShape(2, 7, 0, (0, 3)),
        DecoderShape(2, 1, 1, (0, 1)),
        DecoderShape(3, 1, 17, (0, 4, 9)),
        DecoderShape(1, 4, 9),
    )
    bench_inputs: str = "random token ids, seeded"

    def default_task(self, config) -> str:
        return TEXT_GENERATION

    def normalized(self, config) -> NormalizedConfig:
        return text_normalized(config, self.max_positions(config))

    def backend_problem(self, backend) -> str | None:
        if backend.runtime == "tensorrt":
            return "TensorRT engines are built for encoders and UNets (decoders with a KV cache are not supported yet)"
        if backend.runtime == "pytorch" and backend.torch_mode != "eager":
            return (f"backend {backend.name!r} is not available for decoders; use torch (eager, with its KV cache) "
                    "or an ONNX backend")
        return None

    def save_config(self, model, folder) -> None:
        super().save_config(model, folder)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)

    def model_class(self, task: str):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def io(self, model, task: str) -> ModelIO:
        if task != TEXT_GENERATION:
            raise UnsupportedModelError(f"{self.family} models export {TEXT_GENERATION}, not {task!r}")
        shape = self.normalized(model.config)
        layers, heads, head_dim = shape.num_layers, shape.num_kv_heads, shape.head_dim
        inputs = [TensorSpec("input_ids", "int64", (BATCH, SEQUENCE)),
                  TensorSpec("attention_mask", "int64", (BATCH, TOTAL_SEQUENCE)),
                  TensorSpec("position_ids", "int64", (BATCH, SEQUENCE))]
        inputs += [TensorSpec(n, "float32", (BATCH, heads, PAST_SEQUENCE, head_dim)) for n in past_names(layers)]
        outputs = [TensorSpec("logits", "float32", (BATCH, SEQUENCE, shape.vocab_size))]
        outputs += [TensorSpec(n, "float32", (BATCH, heads, TOTAL_SEQUENCE, head_dim)) for n in present_names(layers)]
        return ModelIO(tuple(inputs), tuple(outputs))

    def wrapper(self, model, io: ModelIO):
        from torchship._torch import make_decoder_wrapper

        return make_decoder_wrapper(model, int(model.config.num_hidden_layers))

    def sample_inputs(self, config, io: ModelIO, case: DecoderShape, *, seed: int):
        shape = self.normalized(config)
        return make_decoder_inputs(io, case, num_heads=shape.num_kv_heads, head_dim=shape.head_dim,
                                   vocab_size=shape.vocab_size, seed=seed)

    def max_positions(self, config) -> int:
        return int(config.max_position_embeddings)

    def case_shape(self, case: DecoderShape) -> tuple[int, ...]:
        return (case.batch, case.sequence, case.past)

    def case_for(self, sizes: dict[str, int], config) -> DecoderShape:
        case = DecoderShape(sizes[BATCH], sizes[SEQUENCE], sizes[PAST_SEQUENCE])
        total = sizes.get(TOTAL_SEQUENCE, case.past + case.sequence)
        if total != case.past + case.sequence:
            raise InputError(f"attention_mask covers {total} positions, but past ({case.past}) plus new tokens "
                             f"({case.sequence}) make {case.past + case.sequence}; make them agree")
        check_positions(case.past + case.sequence, self.max_positions(config))
        return case

    def bench_sizes(self, config) -> list[dict[str, int]]:
        return [{BATCH: 1, SEQUENCE: min(128, self.max_positions(config)), PAST_SEQUENCE: 0}]

    def fusion_settings(self, model) -> dict:
        return text_fusion_settings(model.config)

    def compared_positions(self, feeds) -> dict:
        """Real tokens only: a left-padded position of a causal model sees no real token, so its
        output is undefined (PyTorch and ONNX Runtime fill it differently) and nothing reads it."""
        mask = feeds["attention_mask"].astype(bool)  # (batch, total)
        new = feeds["input_ids"].shape[1]
        where = {"logits": mask[:, -new:, None]}
        for name in feeds:
            if name.startswith("past_key_values."):
                where["present." + name[len("past_key_values."):]] = mask[:, None, :, None]
        return where


# Rotary embeddings whose frequencies change with the sequence length: one traced graph holds one branch.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def rope_type(config) -> str:
    """The rotary scaling a config asks for ("default" when none); transformers 5 calls it rope_parameters."""
    for field_name in ("rope_parameters", "rope_scaling"):
        params = getattr(config, field_name, None)
        if isinstance(params, dict) and (params.get("rope_type") or params.get("type")):
            return str(params.get("rope_type") or params.get("type"))
    return "default"


@dataclass(frozen=True)
class RotaryDecoderSpec(DecoderSpec):
    """Llama-shaped decoders. The dynamo export (the decoders' default) writes ONNX's own RMSNormalization,
    RotaryEmbedding and Attention ops, one Attention per layer taking the grouped K/V as they are
    (torchship._torch.make_decoder_wrapper); ONNX Runtime's transformer optimizer adds nothing to that graph
    (measured). A TorchScript export stays decomposed: the optimizer then fuses the RMSNorms
    (SkipSimplifiedLayerNormalization) but no attention."""

    def task_problem(self, task: str, config, folder) -> str | None:
        kind = rope_type(config)
        if kind in _LENGTH_DEPENDENT_ROPE:
            return (f"this checkpoint's rotary scaling ({kind!r}) changes with the sequence length, which one ONNX "
                    "graph cannot follow; torchship exports rotary scaling that is fixed (default, linear, llama3, yarn)")
        return None

    def io(self, model, task: str) -> ModelIO:
        problem = self.task_problem(task, model.config, None)  # a model object passed to export_model, too
        if problem:
            raise InputError(problem)
        return super().io(model, task)


DECODER_SPECS = (
    register(DecoderSpec("gpt2", ("gpt2",))),
    *(register(RotaryDecoderSpec(name, (name,))) for name in ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma")),
)
