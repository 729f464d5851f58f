"""fp16 for GPU targets: fp32 I/O kept, overflow-prone nodes found by measurement and kept in fp32."""

import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from torchship.cli import main
from torchship.exporters.export import export
from torchship.optimizers import OptimizeOptions, optimize
from torchship.optimizers.fp16 import FILE, FP16_MAX, HEADROOM
from torchship.runtimes import RuntimeOptions, create_predictor


@pytest.fixture
def bert_copy(exported, tmp_path):
    dst = tmp_path / "bert"
    shutil.copytree(exported("bert", optimized=True), dst)
    return dst


def _elem_types(path):
    graph = onnx.load(str(path)).graph
    return ({i.name: i.type.tensor_type.elem_type for i in graph.input},
            {o.name: o.type.tensor_type.elem_type for o in graph.output})


def test_fp16_variant_keeps_fp32_io_halves_the_file_and_matches(bert_copy):
    art = optimize(bert_copy, OptimizeOptions(levels=(), transformer_fusion=False, fp16=True, fp16_block=("Gelu",)))
    v = art.manifest.variants["fp16"]
    assert v.file == FILE and v.stage == "fp16" and v.options.source == "optimized"
    assert v.options.extra["keep_io_types"] and v.options.extra["target"] == "gpu"
    blocked = v.options.extra["op_block_list"]
    assert "Gelu" in blocked and "TopK" in blocked  # ORT's defaults too
    assert v.options.extra["scanned_nodes"] > 0 and v.options.extra["kept_fp32_nodes"] == {}
    assert v.size_bytes < 0.7 * art.manifest.variants["optimized"].size_bytes
    assert v.validation.finite and v.validation.accuracy.metric == "sentence_cosine"
    assert v.validation.accuracy.mean >= 0.999 and v.validation.max_abs < 0.05
    ins, outs = _elem_types(bert_copy / FILE)
    assert set(ins.values()) == {onnx.TensorProto.INT64} and set(outs.values()) == {onnx.TensorProto.FLOAT}
    inits = onnx.load(str(bert_copy / FILE)).graph.initializer
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in inits)
    ids = np.arange(1, 25, dtype=np.int64).reshape(2, 12) % 50 + 5
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with create_predictor(art, "ort-fp16", RuntimeOptions(threads=1)) as p16, \
            create_predictor(art, "ort", RuntimeOptions(threads=1)) as p32:
        a, b = p16.infer(feeds)["last_hidden_state"], p32.infer(feeds)["last_hidden_state"]
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a - b).max() < 0.05


def test_nodes_whose_activations_overflow_fp16_stay_fp32(model_dirs, tmp_path):
    """A model whose first feed-forward layer produces values past fp16's 65504 (a LayerNorm after it
    brings them back): converted blindly it gives inf/NaN; torchship finds those nodes and keeps them fp32."""
    from transformers import AutoModel, AutoTokenizer

    src = model_dirs("bert")
    model = AutoModel.from_pretrained(src)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.mul_(1e6)
    hot = tmp_path / "hot"
    model.save_pretrained(hot)
    AutoTokenizer.from_pretrained(src).save_pretrained(hot)
    out = tmp_path / "onnx"
    export(str(hot), out)
    art = optimize(out, OptimizeOptions(levels=(), transformer_fusion=False, fp16=True))
    v = art.manifest.variants["fp16"]
    kept = v.options.extra["kept_fp32_nodes"]
    assert kept and all(peak >= HEADROOM * FP16_MAX for peak in kept.values())
    assert any("layer.0/intermediate/dense/MatMul" in n for n in kept)  # the layer made hot above
    # the additive attention mask (float32's lowest value, -inf in fp16) is found the same way
    assert any(p > 1e38 for p in kept.values())
    assert v.options.extra["largest_activation"] > FP16_MAX
    assert v.validation.finite and v.validation.accuracy.mean >= 0.999
    kept_nodes = [n for n in onnx.load(str(out / FILE)).graph.node if n.name in kept]
    assert kept_nodes  # the converter kept their names, in fp32 with casts around them

    # Converted blindly, those nodes would compute in fp16 (their weights are fp16 there); in torchship's
    # model they keep fp32 weights. (ONNX Runtime's CPU provider computes an fp16 graph in fp32 between
    # casts, so the overflow itself only shows on a GPU: hence the scan of fp32 activations.)
    from onnxruntime.transformers.onnx_model import OnnxModel

    blind = OnnxModel(onnx.load(str(out / "model.onnx")))
    blind.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)

    def weight_types(model):
        inits = {i.name: i.data_type for i in model.graph.initializer}
        return {n.name: {inits[x] for x in n.input if x in inits} for n in model.graph.node if n.name in kept}

    ours, theirs = weight_types(onnx.load(str(out / FILE))), weight_types(blind.model)
    with_weights = [n for n in ours if ours[n]]
    assert with_weights
    for n in with_weights:
        assert ours[n] == {onnx.TensorProto.FLOAT} and theirs[n] == {onnx.TensorProto.FLOAT16}, n


def test_cli_fp16_and_missing_variant_message(bert_copy):
    r = CliRunner().invoke(main, ["bench", str(bert_copy), "--backends", "torch,ort-fp16"])
    assert r.exit_code == 2 and "torchship optimize" in r.output and "--fp16" in r.output
    r = CliRunner().invoke(main, ["optimize", str(bert_copy), "--levels", "", "--no-fusion", "--fp16"])
    assert r.exit_code == 0, r.output
    assert "fp16" in r.output and FILE in r.output
