"""Llama-shaped decoders (Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma): grouped KV cache, rotary positions,
validation with left padding at several past lengths, greedy generation equal to transformers token for token."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tiny import hf_greedy, TINY_DECODER_CONFIGS, TINY_ROTARY, save_decoder_dir
from torchship.artifact import Artifact, load_reference
from torchship.errors import InputError, UnsupportedModelError
from torchship.exporters.decoders import past_names, present_names
from torchship.exporters.export import ExportOptions, export
from torchship.exporters.spec import BATCH, PAST_SEQUENCE, SEQUENCE, group_for_command, spec_for
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.generate import Generator, encode_prompts

ROTARY_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma")
KV_HEADS, HEAD_DIM = TINY_ROTARY["num_key_value_heads"], TINY_ROTARY["head_dim"]
# Two prompts of different lengths (the second left-padded); with 16 new tokens the decode passes Mistral's
# sliding window of 16.
PROMPTS = ["the cat is eating food and the dog", "hello"]


@pytest.fixture(scope="module")
def rotary_exports(tmp_path_factory):
    """Factory: a tiny checkpoint of the family and its export (not optimized; copy the folder to optimize it)."""
    cache = {}

    def get(model_type: str):
        if model_type not in cache:
            root = tmp_path_factory.mktemp(f"rotary-{model_type}")
            src = save_decoder_dir(root / "model", model_type)
            cache[model_type] = (src, export(str(src), root / "onnx", ExportOptions(kind="decoder")))
        return cache[model_type]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ROTARY_FAMILIES)
def test_export_keeps_kv_heads_grouped_and_greedy_equals_transformers(rotary_exports, model_type):
    src, art = rotary_exports(model_type)
    m = art.manifest
    layers = TINY_DECODER_CONFIGS[model_type]["num_hidden_layers"]
    assert (m.family, m.model_type, m.task) == (model_type, model_type, "text-generation")
    assert m.input_names == ("input_ids", "attention_mask", "position_ids", *past_names(layers))
    assert m.output_names == ("logits", *present_names(layers))
    shapes = {t["name"]: t["shape"] for t in (*m.inputs, *m.outputs)}
    assert shapes["past_key_values.0.key"] == ["batch", KV_HEADS, "past_sequence", HEAD_DIM]  # grouped, not repeated
    assert shapes[f"present.{layers - 1}.value"] == ["batch", KV_HEADS, "total_sequence", HEAD_DIM]
    assert (m.model_config["num_heads"], m.model_config["num_kv_heads"]) == (4, KV_HEADS)
    # Validated at past lengths 0, 1 and 17 with batches > 1 and left padding (rotary positions from position_ids).
    assert m.variants["model"].validation.passed
    cases = load_reference(art.folder)
    assert {0, 1, 17} <= {c.inputs["past_key_values.0.key"].shape[2] for c in cases}
    assert any((c.inputs["attention_mask"][:, 0] == 0).any() for c in cases)
    # One ONNX Attention per layer, fed the grouped K/V (no repeat to the query heads in the graph either).
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(art.folder / "model.onnx")))
    dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.graph.value_info}
    attention = [n for n in graph.graph.node if n.op_type == "Attention"]
    assert len(attention) == layers
    assert all(dims[n.input[1]][1] == KV_HEADS for n in attention if n.input[1] in dims)
    assert {"RotaryEmbedding", "RMSNormalization"} <= {n.op_type for n in graph.graph.node}

    tok = AutoTokenizer.from_pretrained(art.folder)
    ids, mask = encode_prompts(tok, PROMPTS)
    assert mask[1, 0] == 0
    with create_predictor(art, "ort", RuntimeOptions(threads=2)) as p:
        result = Generator.from_artifact(art, p).generate(ids, mask, max_new_tokens=16)
    np.testing.assert_array_equal(result.tokens, hf_greedy(src, ids, mask, 16))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ROTARY_FAMILIES)
def test_optimize_fuses_attention_with_its_cache_and_generation_still_equals_transformers(rotary_exports, model_type,
                                                                                         tmp_path):
    """``optimize`` rewrites every layer's attention to one 3-D Attention that holds the cache (rotary positions,
    partial rotary and left padding as in the export) and each residual Add + RMSNorm to
    SkipSimplifiedLayerNormalization; the variant validates against eager PyTorch, and greedy and beam search
    through transformers' generate still give transformers' own tokens."""
    import shutil

    from torchship.optimizers.optimize import OptimizeOptions, optimize
    from torchship.runtimes.hf_generate import causal_lm

    src, art = rotary_exports(model_type)
    layers = TINY_DECODER_CONFIGS[model_type]["num_hidden_layers"]
    shutil.copytree(art.folder, tmp_path / "onnx")
    art = optimize(tmp_path / "onnx", OptimizeOptions(levels=(), candidates="preset"))
    v = art.manifest.variants["optimized"]
    merged = 0 if model_type == "phi3" else 2 * layers  # q/k/v and gate/up; Phi-3 has them merged already
    assert v.fusion.rewrites == {"attention": "Attention", "attention_layers": layers, "skip_rms_norm": 2 * layers,
                                    "merged_matmuls": merged}
    assert v.fusion.counts["SkipSimplifiedLayerNormalization"] == 2 * layers and v.fusion.attention_fused
    graph = onnx.load(str(art.folder / v.file)).graph
    attention = [n for n in graph.node if n.op_type == "Attention"]
    assert len(attention) == layers and all(len(n.input) == 6 and len(n.output) == 3 for n in attention)
    assert not any(n.op_type == "Transpose" for n in graph.node)
    assert v.validation.passed  # at past 0, 1 and 17, batches with left padding
    model, tok = causal_lm(art.folder, "ort-optimized")
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    eager = AutoModelForCausalLM.from_pretrained(src).eval()
    for settings in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
        ours = model.generate(**enc, max_new_tokens=16, pad_token_id=0, **settings)
        with torch.inference_mode():
            theirs = eager.generate(**enc, max_new_tokens=16, pad_token_id=0, **settings)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=str(settings))


@pytest.mark.slow
def test_a_prompt_or_a_past_past_the_context_is_refused_in_one_line(rotary_exports):
    src, art = rotary_exports("llama")
    limit = art.manifest.model_config["max_positions"]
    with create_predictor(art, "ort") as p:
        gen = Generator.from_artifact(art, p)
        too_long = np.ones((1, limit + 1), dtype=np.int64)
        with pytest.raises(InputError, match=f"more than the model's context of {limit} positions") as exc:
            gen.generate(too_long, np.ones_like(too_long), max_new_tokens=1)
        assert "\n" not in str(exc.value)
        fits = np.ones((1, limit - 3), dtype=np.int64)
        with pytest.raises(InputError, match="ask for at most 4 new tokens"):
            gen.generate(fits, np.ones_like(fits), max_new_tokens=5)
    spec = spec_for("llama")
    config = AutoConfig.from_pretrained(src)
    with pytest.raises(InputError, match=f"exceeds the model's limit of {limit} positions"):
        spec.case_for({BATCH: 1, SEQUENCE: 1, PAST_SEQUENCE: limit}, config)


def test_an_unsupported_decoder_family_is_refused_in_one_line(tmp_path):
    # Any causal LM now has the generic path (test_generic_decoders.py); T5 is no causal LM at all.
    AutoConfig.for_model("t5", d_model=32, num_layers=1, num_heads=4).save_pretrained(tmp_path / "t5")
    with pytest.raises(UnsupportedModelError) as exc:
        export(str(tmp_path / "t5"), tmp_path / "out", ExportOptions(kind="decoder"))
    message = str(exc.value)
    assert "'t5' model" in message and "llama" in message and "qwen3" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_rotary_scaling_that_follows_the_sequence_length_is_refused(tmp_path):
    config = AutoConfig.for_model("llama", **TINY_ROTARY, vocab_size=64,
                                  rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    config.save_pretrained(tmp_path / "dyn")
    with pytest.raises(InputError, match="rotary scaling \\('dynamic'\\) changes with the sequence length"):
        export(str(tmp_path / "dyn"), tmp_path / "out", ExportOptions(kind="decoder"))
    from torchship.exporters.export import export_model

    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(InputError, match="rotary scaling \\('dynamic'\\)"):
        export_model(model, tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_export_decoder_is_the_decoder_command_too():
    from click.testing import CliRunner

    from torchship import cli

    assert group_for_command("export-decoder") is group_for_command("export-gpt2")
    result = CliRunner().invoke(cli.export_decoder, ["--help"])
    assert result.exit_code == 0 and "Usage: export-decoder" in result.output and "Llama" in result.output


# Weight-only int4 / int8 (torchship.optimizers.weight_only), on the Llama export above: kept here to reuse it.

@pytest.fixture
def llama_copy(rotary_exports, tmp_path):
    import shutil

    _, art = rotary_exports("llama")
    return Path(shutil.copytree(art.folder, tmp_path / "llama"))


@pytest.mark.slow
def test_int4_weight_only_variant_is_within_its_budget(llama_copy):
    from torchship.optimizers.fusion import op_histogram
    from torchship.optimizers.weight_only import WeightOnlyOptions, weight_only

    art = weight_only(llama_copy, WeightOnlyOptions(bits=4, block_size=32))
    v = art.manifest.variants["wo-int4"]
    # Per layer q+k+v (merged), o, gate+up (merged), down; and the head.
    layers = TINY_DECODER_CONFIGS["llama"]["num_hidden_layers"]
    matmuls = layers * 4 + 1
    assert op_histogram(llama_copy / v.file)["MatMulNBits"] == matmuls == v.validation.decode.quantized_matmuls
    assert len(v.validation.decode.layout["merged"]) == 2 * layers and v.options.extra["merge_siblings"]
    assert v.validation.passed and 0 < v.validation.decode.max_weight_error <= 0.15
    assert v.validation.decode.steps == 64 and 0 < v.validation.decode.logit_cosine_mean <= 1
    assert 0 <= v.validation.decode.top1_agreement <= 1 and v.options.block_size == 32
    assert v.size_bytes < art.manifest.variants["model"].size_bytes
    assert len(v.validation.decode.head) == 1 and len(v.validation.decode.matmuls) == matmuls


@pytest.mark.slow
def test_the_embedding_is_quantized_on_request(llama_copy):
    from torchship.optimizers.fusion import op_histogram
    from torchship.optimizers.weight_only import WeightOnlyOptions, weight_only

    v = weight_only(llama_copy, WeightOnlyOptions(bits=4, embedding=True)).manifest.variants["wo-int4"]
    ops = op_histogram(llama_copy / v.file)
    assert ops["GatherBlockQuantized"] == 1 and "Gather" not in ops and v.options.embedding
    assert v.validation.passed


def test_a_head_tied_to_the_embedding_gets_its_own_copy_to_quantize(tmp_path):
    """A large tied embedding is exported once, and the head MatMul reads its Transpose (SmolLM2's layout; a
    tiny model's is folded into a constant): the head gets its own transposed copy, quantized, and its error
    is measured against that copy."""
    from onnx import TensorProto, helper, numpy_helper

    from torchship.optimizers.weight_only import WeightOnlyOptions, _build, _prepare, matmul_errors

    emb = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)  # (vocab, hidden)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0], name="t"),
         helper.make_node("MatMul", ["x", "emb_t"], ["logits"], name="head")], "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64])], [numpy_helper.from_array(emb, "emb")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "tied.onnx")
    layout = _prepare(tmp_path / "tied.onnx", tmp_path / "prepared.onnx", exclude=(), merge=True)
    assert layout == {"untied": ["emb"], "merged": [],
                      "fused": {"attention": "Attention", "attention_layers": 0, "skip_rms_norm": 0,
                                "merged_matmuls": 0}}
    _build(tmp_path / "prepared.onnx", tmp_path / "q.onnx", WeightOnlyOptions(bits=4), exclude=())
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops == ["MatMulNBits"]
    errors = matmul_errors(tmp_path / "prepared.onnx", tmp_path / "q.onnx")
    assert len(errors) == 1 and errors[0]["shape"] == [32, 64] and 0 < errors[0]["relative_error"] < 0.15


@pytest.mark.slow
def test_int8_weight_only_from_the_cli_and_a_missed_budget(llama_copy):
    import subprocess
    import sys

    from torchship.errors import BudgetError
    from torchship.optimizers.weight_only import WeightOnlyOptions, weight_only

    exe = str(Path(sys.executable).parent / "torchship")
    proc = subprocess.run([exe, "quantize", str(llama_copy), "--method", "weight-only", "--bits", "8", "--no-head"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stdout and "model_wo_int8.onnx" in proc.stdout
    v = Artifact.open(llama_copy).manifest.variants["wo-int8"]
    assert v.validation.passed and v.validation.decode.logit_cosine_mean >= 0.99 == v.validation.accuracy.budget
    assert v.validation.decode.quantized_matmuls == TINY_DECODER_CONFIGS["llama"]["num_hidden_layers"] * 4  # head kept
    with pytest.raises(BudgetError, match="wo-int4 missed its budget"):
        weight_only(llama_copy, WeightOnlyOptions(bits=4, block_size=128, max_weight_error=0.001))
    m = Artifact.open(llama_copy).manifest
    assert "wo-int4" not in m.variants and "weight error" in m.skipped["wo-int4"]
    assert not (llama_copy / "model_wo_int4.onnx").exists()


def test_weight_only_flags_are_checked_in_one_line():
    from click.testing import CliRunner

    from torchship import cli

    result = CliRunner().invoke(cli.main, ["quantize", "nowhere", "--bits", "4"])
    assert result.exit_code == 2 and "--bits is for --method weight-only" in result.output
    for flags in (["--fallback", "always"], ["--from", "model"], ["--calibration", "x.txt"]):
        result = CliRunner().invoke(cli.main, ["quantize", "nowhere", "--method", "weight-only", *flags])
        assert result.exit_code == 2 and f"{flags[0]} is for int8 quantization" in result.output, flags
        assert result.output.count("\n") == 1  # one line, nothing quantized
    from torchship.optimizers.weight_only import WeightOnlyOptions

    with pytest.raises(InputError, match="at 4 bits only"):
        WeightOnlyOptions(bits=8, embedding=True).checked()
