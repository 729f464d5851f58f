"""Causal LMs no family spec names, through the generic decoder family: exported with their KV cache (grouped KV heads
kept grouped), validated at unseen lengths, past lengths and padded batches, greedy generation equal to transformers
token for token; a cache that is not the standard one refused in one line, or exported without it (--no-cache); a
model torch.export cannot trace refused in one line."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tiny import hf_greedy, make_tokenizer
from torchship.artifact import Artifact, load_reference
from torchship.errors import ExportError, InputError, UnsupportedModelError
from torchship.exporters.decoders import past_names, present_names
from torchship.exporters.export import ExportOptions, export
from torchship.exporters.generic_decoders import FAMILY, NO_CACHE_FAMILY, ORT_FUSER_TYPES, is_causal_lm
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.generate import Generator, encode_prompts

# Per architecture: (its config's own fields beyond the tiny sizes, the cache's KV heads, layers). Learned positions
# (OPT), ALiBi without position ids and without SDPA (BLOOM), ONNX Runtime's gpt_neox fuser (GPT-NeoX), grouped-query
# rotary (OLMo), multi-query (Falcon: one KV head, its own attention code, exported from eager attention), partial
# rotary without SDPA (GPT-J), mixture of experts (Qwen2-MoE: experts exported as batched_mm). One layer each (the
# dynamo export's time grows with the graph); OPT keeps two, so the cache's layer order is checked too.
ARCHITECTURES = {
    "opt": ({}, 4, 2),
    "bloom": ({}, 4, 1),
    "gpt_neox": ({}, 4, 1),
    "olmo": ({}, 2, 1),
    "falcon": ({"multi_query": True, "new_decoder_architecture": False}, 1, 1),
    "gptj": ({"rotary_dim": 4}, 4, 1),
    "qwen2_moe": ({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                   "shared_expert_intermediate_size": 16}, 2, 1),
}
LAYER_NAMES = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
# Each size under every name a config class may give it; only the names its __init__ takes are passed.
SIZES = {"hidden_size": 32, "n_embd": 32, "d_model": 32, **dict.fromkeys(LAYER_NAMES, 2),
         "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4,
         "intermediate_size": 37, "ffn_dim": 37, "n_inner": 37, "max_position_embeddings": 128, "n_positions": 128,
         "max_seq_len": 128, "num_key_value_heads": 2, "head_dim": 8}
PROMPTS = ["the cat is eating food and the dog", "hello"]
NEW_TOKENS = 12


def save_causal_lm(folder: Path, model_type: str, *, layers: int = 1, **fields) -> Path:
    """A tiny random causal LM of ``model_type`` and the generated tokenizer, saved as a checkpoint."""
    tokenizer = make_tokenizer(folder)
    params = inspect.signature(CONFIG_MAPPING[model_type].__init__).parameters
    sizes = {**SIZES, **dict.fromkeys(LAYER_NAMES, layers)}
    config = AutoConfig.for_model(model_type, **{k: v for k, v in sizes.items() if k in params}, **fields,
                                  vocab_size=max(tokenizer.get_vocab().values()) + 1, bos_token_id=None,
                                  eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # real checkpoints have non-zero biases
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.02)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def generic_exports(tmp_path_factory):
    """Factory: a tiny checkpoint of the architecture and its export, made once."""
    cache = {}

    def get(model_type: str):
        if model_type not in cache:
            root = tmp_path_factory.mktemp(f"generic-{model_type}")
            fields, _, layers = ARCHITECTURES[model_type]
            src = save_causal_lm(root / "model", model_type, layers=layers, **fields)
            cache[model_type] = (src, export(str(src), root / "onnx", ExportOptions(kind="decoder")))
        return cache[model_type]

    return get


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_a_causal_lm_without_a_spec_exports_its_cache_and_generates_as_transformers(generic_exports, model_type):
    src, art = generic_exports(model_type)
    m = art.manifest
    _, kv_heads, layers = ARCHITECTURES[model_type]
    assert (m.family, m.model_type, m.task) == (FAMILY, model_type, "text-generation")
    assert m.ort_model_type == (model_type if model_type in ORT_FUSER_TYPES else "")  # ORT's fuser where it has one
    positions = ("position_ids",) if model_type != "bloom" else ()  # ALiBi: no position ids
    assert m.input_names == ("input_ids", "attention_mask", *positions, *past_names(layers))
    assert m.output_names == ("logits", *present_names(layers))
    head_dim = m.model_config["head_dim"]
    shapes = {t["name"]: t["shape"] for t in (*m.inputs, *m.outputs)}
    assert shapes["past_key_values.0.key"] == ["batch", kv_heads, "past_sequence", head_dim]  # grouped, not repeated
    assert shapes[f"present.{layers - 1}.value"] == ["batch", kv_heads, "total_sequence", head_dim]
    assert m.model_config["num_kv_heads"] == kv_heads and m.num_layers == layers
    # Validated at past lengths 0, 1 and 17, at lengths other than the trace's, with padded batches.
    assert m.variants["model"].validation.passed
    cases = load_reference(art.folder)
    assert {0, 1, 17} <= {c.inputs["past_key_values.0.key"].shape[2] for c in cases}
    assert any(c.inputs["input_ids"].shape[0] > 1 and (c.inputs["attention_mask"][:, 0] == 0).any() for c in cases)

    tok = AutoTokenizer.from_pretrained(art.folder)
    ids, mask = encode_prompts(tok, PROMPTS)
    with create_predictor(art, "ort", RuntimeOptions(threads=1)) as p:
        result = Generator.from_artifact(art, p).generate(ids, mask, max_new_tokens=NEW_TOKENS)
    np.testing.assert_array_equal(result.tokens, hf_greedy(src, ids, mask, NEW_TOKENS))


def test_weight_only_and_the_decoder_bench_take_a_generic_folder(generic_exports, tmp_path):
    """int8 weight-only judged on the decode; prefill and decode timed for eager PyTorch (its own cache, no position
    ids: BLOOM) and ONNX Runtime."""
    from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.optimizers.weight_only import WeightOnlyOptions, weight_only

    _, art = generic_exports("bloom")
    folder = Path(shutil.copytree(art.folder, tmp_path / "bloom"))
    v = weight_only(folder, WeightOnlyOptions(bits=8)).manifest.variants["wo-int8"]
    assert v.validation.passed and v.validation.decode.quantized_matmuls > 0
    quick = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3, pause_s=0.0)
    report = run_decoder_benchmark(folder, DecoderBenchOptions(backends=("torch", "ort", "ort-wo-int8"),
                                                               prompt_lengths=(8,), past_lengths=(16,), threads=1,
                                                               plan=quick))
    assert {(r.backend, r.phase) for r in report.measurements} == {
        (b, p) for b in ("torch", "ort", "ort-wo-int8") for p in ("prefill", "decode")}
    assert all(r.accuracy.max_abs < 1e-4 for r in report.measurements if r.backend == "ort")


def test_a_sliding_window_cache_is_refused_in_one_line_and_exported_without_a_cache(tmp_path, model_dirs):
    src = save_causal_lm(tmp_path / "model", "starcoder2", sliding_window=16)  # drops entries past 16 positions
    with pytest.raises(UnsupportedModelError) as exc:
        export(str(src), tmp_path / "out", ExportOptions())
    message = str(exc.value)
    assert "Starcoder2ForCausalLM" in message and "DynamicSlidingWindowLayer" in message and "--no-cache" in message
    assert "\n" not in message and not (tmp_path / "out").exists()
    from click.testing import CliRunner

    from torchship import cli

    result = CliRunner().invoke(cli.main, ["export", "--model", str(src), "-o", str(tmp_path / "cli")])
    errors = [line for line in result.output.splitlines() if line.startswith("torchship: error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "DynamicSlidingWindowLayer" in errors[0]
    assert "Traceback" not in result.output and result.output.rstrip().endswith("--no-cache")

    art = export(str(src), tmp_path / "plain", ExportOptions(no_cache=True))
    m = art.manifest
    assert (m.family, m.export["kv_cache"]) == (NO_CACHE_FAMILY, False)
    assert m.input_names == ("input_ids", "attention_mask", "position_ids") and m.output_names == ("logits",)
    assert m.variants["model"].validation.passed and "without its KV cache" in m.variants["model"].notes[0]
    from torchship.runtimes.hf_generate import causal_lm

    with pytest.raises(InputError, match="exported without its KV cache") as exc:
        causal_lm(art.folder, "ort")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="--no-cache is for causal LMs"):
        export(str(model_dirs("bert")), tmp_path / "bert", ExportOptions(no_cache=True))


def test_a_model_torch_export_cannot_trace_is_refused_in_one_line(tmp_path):
    src = save_causal_lm(tmp_path / "model", "mpt")  # its ALiBi slicing gives torch.export inconsistent shapes
    with pytest.raises(ExportError) as exc:
        export(str(src), tmp_path / "out", ExportOptions())
    message = str(exc.value)
    assert message.startswith("torch.onnx.export (dynamo) failed on MptForCausalLM: ValueError: The following inconsistencies")
    assert "is inconsistent" in message  # the line after the announcing one is kept
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_the_generic_family_claims_causal_lms_only_and_ort_fuses_the_types_it_knows():
    from onnxruntime.transformers.optimizer import MODEL_TYPES
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    from torchship.exporters.spec import generic_for, supported_model_types

    assert is_causal_lm("opt", {"architectures": ["OPTForCausalLM"]}) and is_causal_lm("falcon", {})
    assert not is_causal_lm("bert", {"architectures": ["BertForMaskedLM"]}) and not is_causal_lm("bert", {})
    assert not is_causal_lm("t5", {}) and not is_causal_lm("opt", {"architectures": ["OPTForSequenceClassification"]})
    assert generic_for("gpt_neox", {}).ort_model_type == "gpt_neox" and generic_for("opt", {}).ort_model_type == ""
    known = {t for t in MODEL_TYPES if t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
             and t not in MODEL_FOR_MASKED_LM_MAPPING_NAMES and t not in supported_model_types()}
    assert set(ORT_FUSER_TYPES) == known


def test_ort_fuses_a_generic_export_of_a_model_type_it_knows_and_skips_the_others(generic_exports, tmp_path):
    from torchship.optimizers.optimize import OptimizeOptions, optimize

    for model_type in ("gpt_neox", "opt"):
        folder = shutil.copytree(generic_exports(model_type)[1].folder, tmp_path / model_type)
        m = optimize(folder, OptimizeOptions(levels=(), candidates="preset")).manifest
        if model_type == "gpt_neox":
            v = m.variants["optimized"]
            assert v.validation.passed and v.fusion.attention_fused and v.options.model_type == "gpt_neox"
        else:
            assert "optimized" not in m.variants and "has nothing for" in m.skipped["optimized"]


def test_a_family_spec_without_the_task_asked_hands_the_checkpoint_to_a_generic_family():
    """BERT's causal-LM head (``is_decoder``): the bert family does no text generation, the generic decoder family
    does (the coverage sweep exports and validates it with its cache); asked for nothing, BERT stays BERT."""
    from transformers import BertConfig

    from torchship.exporters.spec import spec_for

    config = BertConfig(is_decoder=True, architectures=["BertLMHeadModel"]).to_dict()
    assert spec_for("bert", config=config, task="text-generation").family == FAMILY
    assert spec_for("bert", config=config, kind="decoder").family == FAMILY
    assert spec_for("bert", config=config).family == "bert"
