import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tiny import TINY_DECODER_CONFIGS, make_decoder
from torchship.artifact import Artifact, load_reference
from torchship.errors import UnsupportedModelError
from torchship.exporters.decoders import DecoderShape, make_decoder_inputs, past_names, present_names
from torchship.exporters.export import ExportOptions, export
from torchship.exporters.spec import spec_for, supported_model_types


def test_decoder_spec_coverage():
    assert set(supported_model_types("decoder")) == set(TINY_DECODER_CONFIGS)


def test_past_and_present_names():
    assert past_names(2) == ["past_key_values.0.key", "past_key_values.0.value",
                             "past_key_values.1.key", "past_key_values.1.value"]
    assert present_names(1) == ["present.0.key", "present.0.value"]


def test_decoder_export_io_and_validation(decoder_export):
    m = Artifact.open(decoder_export).manifest
    assert (m.family, m.task, m.ort_model_type) == ("gpt2", "text-generation", "gpt2")
    assert m.input_names == ("input_ids", "attention_mask", "position_ids", *past_names(2))
    assert m.output_names == ("logits", *present_names(2))
    shapes = {t["name"]: t["shape"] for t in (*m.inputs, *m.outputs)}
    assert shapes["past_key_values.0.key"] == ["batch", 4, "past_sequence", 8]
    assert shapes["present.1.value"] == ["batch", 4, "total_sequence", 8]
    assert shapes["attention_mask"] == ["batch", "total_sequence"]
    # Validated at past lengths 0, 1 and a larger one, with batch > 1 and left padding.
    cases = load_reference(decoder_export)
    pasts = {c.inputs["past_key_values.0.key"].shape[2] for c in cases}
    assert {0, 1} <= pasts and max(pasts) > 8
    assert any(c.inputs["input_ids"].shape[0] > 1 and (c.inputs["attention_mask"][:, 0] == 0).any() for c in cases)
    for v in m.variants.values():
        assert v.validation.passed, v.name


def test_decoder_export_matches_pytorch_at_new_shapes(decoder_export, decoder_dir):
    """Independently of torchship's own validation: the graph is dynamic in batch, sequence and past."""
    from transformers import AutoModelForCausalLM

    m = Artifact.open(decoder_export).manifest
    io = m.io()
    model = AutoModelForCausalLM.from_pretrained(decoder_dir).eval()  # the checkpoint that was exported
    wrapper = spec_for("gpt2").wrapper(model, io)
    sess = ort.InferenceSession(str(decoder_export / "model.onnx"), providers=["CPUExecutionProvider"])
    for case in (DecoderShape(4, 5, 0, (0, 1, 2, 4)), DecoderShape(2, 2, 30, (0, 13)), DecoderShape(1, 1, 60)):
        feeds = make_decoder_inputs(io, case, num_heads=4, head_dim=8, vocab_size=model.config.vocab_size, seed=9)
        with torch.inference_mode():
            ref = wrapper(*(torch.from_numpy(feeds[n]) for n in io.input_names))
        got = sess.run(list(io.output_names), feeds)
        real = spec_for("gpt2").compared_positions(feeds)  # real tokens; padded ones are undefined
        for name, r, g in zip(io.output_names, ref, got):
            assert g.shape == tuple(r.shape), name
            keep = np.broadcast_to(real[name], g.shape)
            np.testing.assert_allclose(g[keep], r.numpy()[keep], atol=1e-4, err_msg=f"{name} {case.label()}")


def test_export_bert_refuses_a_decoder_and_export_gpt2_an_encoder(decoder_dir, model_dirs, tmp_path):
    with pytest.raises(UnsupportedModelError, match="use export-gpt2"):
        export(str(decoder_dir), tmp_path / "a", ExportOptions(kind="encoder"))
    with pytest.raises(UnsupportedModelError, match=r"use export-bert.*decoders \(GPT-2 and Llama-like\)"):
        export(str(model_dirs("bert")), tmp_path / "b", ExportOptions(kind="decoder"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_decoder_graph_has_no_baked_past_length(decoder_export):
    graph = onnx.load(str(decoder_export / "model.onnx"))
    past = next(i for i in graph.graph.input if i.name == "past_key_values.0.key")
    dims = [d.dim_param or d.dim_value for d in past.type.tensor_type.shape.dim]
    assert dims == ["batch", 4, "past_sequence", 8]


def test_decoders_default_to_dynamo_with_fused_attention(decoder_export):
    from torchship.optimizers.fusion import count_ops

    m = Artifact.open(decoder_export).manifest
    assert (m.export["exporter"], m.export["opset"], m.export["attn_implementation"]) == ("dynamo", 23, "sdpa")
    assert count_ops(decoder_export / "model.onnx")["Attention"] == m.num_layers  # one per layer, KV cache included
    fusion = m.variants["optimized"].fusion
    assert fusion.attention == fusion.expected_attention == 2 and fusion.warning is None
    # torchship's own pass: each layer's attention takes its cache (no transposes, no concatenation around it)
    assert fusion.rewrites == {"attention": "Attention", "attention_layers": 2, "skip_rms_norm": 0,
                                  "merged_matmuls": 0}  # GPT-2's projections are one Gemm each already


def test_torchscript_decoder_path_validates_but_does_not_fuse(decoder_dir, tmp_path):
    from torchship.optimizers import OptimizeOptions, optimize

    art = export(str(decoder_dir), tmp_path / "ts", ExportOptions(exporter="torchscript"))
    assert art.manifest.export["exporter"] == "torchscript" and art.manifest.variants["model"].validation.passed
    fusion = optimize(tmp_path / "ts", OptimizeOptions(levels=())).manifest.variants["optimized"].fusion
    assert fusion.attention == 0
    assert fusion.warning.endswith("Export with --exporter dynamo (the default for decoders) for ONNX Attention ops")


def test_failed_fusion_is_recorded_and_the_other_variants_stay(tmp_path):
    """GPT-2's initializer zeroes biases; the exporter then drops them and ORT's gpt2 optimizer fails."""
    from torchship.exporters.export import export_model
    from torchship.optimizers import OptimizeOptions, optimize

    model = make_decoder()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.zero_()
    export_model(model, tmp_path / "zero")
    steps = []
    from torchship._progress import Progress

    art = optimize(tmp_path / "zero", OptimizeOptions(levels=("basic",)), progress=Progress(step=steps.append))
    m = Artifact.open(tmp_path / "zero").manifest
    assert "optimized" not in m.variants and "transformer optimizer failed" in m.skipped["optimized"]
    assert m.variants["ort-basic"].validation.passed
    assert any(s.startswith("WARNING: optimized skipped") for s in steps)
    assert art.best_variant() == "ort-basic"
    from torchship.errors import InputError
    from torchship.runtimes import create_predictor

    with pytest.raises(InputError, match=r"optimize skipped it \(the transformer optimizer failed"):
        create_predictor(art, "ort-optimized")
