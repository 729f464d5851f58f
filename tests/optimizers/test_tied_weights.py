"""A decoder whose head is tied to its token embedding keeps the table once: in the files ONNX Runtime's graph levels
write, and in the weight-only variants (the embedding reads the head's quantized table)."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tiny import make_decoder, make_tokenizer
from torchship._ort import ort_runner
from torchship.artifact import Artifact
from torchship.exporters.export import ExportOptions, export

# A vocabulary large enough that the export keeps Transpose(table) as a node for the head, as at full size
# (a smaller table is folded into a constant by the exporter itself)
VOCAB, HIDDEN = 2000, 32


@pytest.fixture(scope="module")
def tied_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("tied")
    model = make_decoder("qwen2", vocab_size=VOCAB)  # tie_word_embeddings, as SmolLM2
    assert model.config.tie_word_embeddings
    model.generation_config.pad_token_id = 0
    model.save_pretrained(root / "model")
    make_tokenizer(root / "model").save_pretrained(root / "model")
    return export(str(root / "model"), root / "onnx", ExportOptions(kind="decoder")).folder


def _feeds(folder: Path, rng) -> dict:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    feeds = {"input_ids": rng.integers(1, VOCAB, (2, 3)).astype(np.int64), "attention_mask": np.ones((2, 7), np.int64),
             "position_ids": np.array([[4, 5, 6]] * 2, np.int64)}
    for value in graph.input:
        if value.name.startswith("past_key_values."):
            dims = value.type.tensor_type.shape.dim
            feeds[value.name] = rng.standard_normal((2, dims[1].dim_value, 4, dims[3].dim_value)).astype(np.float32)
    return feeds


def _tables(path: Path) -> list[str]:
    """Initializers that hold the (vocab x hidden) table, in either orientation and any element type."""
    return [t.name for t in onnx.load(str(path)).graph.initializer
            if int(np.prod(t.dims)) * (2 if t.data_type == onnx.TensorProto.UINT8 else 1) >= VOCAB * HIDDEN // 2
            and VOCAB in t.dims]


@pytest.mark.slow
@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_a_graph_level_file_of_a_tied_decoder_holds_the_table_once(tied_export, level, tmp_path):
    from torchship.optimizers.fusion import save_graph_level

    src = tied_export / "model.onnx"
    assert len(_tables(src)) == 1
    dst = tmp_path / f"ort_{level}.onnx"
    assert save_graph_level(src, dst, level) == ["model.lm_head.weight"]
    assert _tables(dst) == ["model.lm_head.weight"]  # constant folding's transposed copy is gone
    assert dst.stat().st_size <= src.stat().st_size * 1.02
    heads = [n for n in onnx.load(str(dst)).graph.node if n.output[0] == "logits"]
    assert [(n.op_type, n.input[1]) for n in heads] == [("FusedMatMul", "model.lm_head.weight")]
    feeds = _feeds(tied_export, np.random.default_rng(0))
    want, got = ort_runner(src)(feeds), ort_runner(dst)(feeds)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)


def _dequantized_head(path: Path) -> np.ndarray:
    """The head's table as ONNX Runtime computes with it: its MatMulNBits run on an identity matrix, (vocab, hidden)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and int(helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "N"))) == VOCAB)
    single = helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft",
                              **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    return _run([single], [inits[i] for i in node.input[1:] if i], {"x": np.eye(HIDDEN, dtype=np.float32)}).T


def _embedding(path: Path) -> np.ndarray:
    """Every token's embedding as the file looks it up (GatherBlockQuantized and what reshapes around it)."""
    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    nodes, out = [gather], gather.output[0]
    consumer = [n for n in graph.node if out in n.input]
    if consumer and consumer[0].op_type == "Slice":  # the hidden size is not a whole number of blocks
        nodes.append(consumer[0])
        out = consumer[0].output[0]
    if gather.input[0] in producer:
        nodes.insert(0, producer[gather.input[0]])
    used = {i for n in nodes for i in n.input}
    for n in nodes:
        n.input[:] = ["ids" if i == gather.input[1] else i for i in n.input]
    nodes[-1].output[0] = "y"
    return _run(nodes, [inits[i] for i in used if i in inits], {"ids": np.arange(VOCAB, dtype=np.int64)})


def _run(nodes, inits, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    x = next(iter(feeds))
    dtype = onnx.TensorProto.INT64 if feeds[x].dtype == np.int64 else onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info(x, dtype, list(feeds[x].shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.slow
@pytest.mark.parametrize("bits, block_size", [(4, 128), (8, 16)])  # 128: the last block padded past the hidden size
def test_a_weight_only_variant_of_a_tied_decoder_holds_the_table_once(tied_export, tmp_path, bits, block_size):
    from torchship.optimizers.weight_only import WeightOnlyOptions, file_name, variant_name, weight_only

    folder = Path(shutil.copytree(tied_export, tmp_path / "onnx"))
    art = weight_only(folder, WeightOnlyOptions(bits=bits, block_size=block_size, steps=8))
    v = art.manifest.variants[variant_name(bits)]
    path = folder / file_name(bits)
    assert v.validation.passed and v.options.extra["shared_table"]
    assert v.validation.decode.layout["shared"][0]["embedding"] == "model.lm_head.weight"
    tables = _tables(path)
    assert len(tables) == 1 and onnx.numpy_helper.to_array(
        next(t for t in onnx.load(str(path)).graph.initializer if t.name == tables[0])).dtype == np.uint8
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("GatherBlockQuantized") == 1 and "Gather" not in ops
    # the embedding looks up the numbers the head multiplies by (to float rounding: the head's come out of a product)
    np.testing.assert_allclose(_embedding(path), _dequantized_head(path), rtol=1e-6, atol=1e-7)
    # and the file is smaller than the same variant with its own fp32 embedding by about that table
    own = Path(shutil.copytree(tied_export, tmp_path / "own"))
    unshared = weight_only(own, WeightOnlyOptions(bits=bits, block_size=block_size, steps=8, share_tied=False))
    saved = unshared.manifest.variants[variant_name(bits)].size_bytes - v.size_bytes
    assert 0.9 < saved / (VOCAB * HIDDEN * 4) < 1.05  # the fp32 table, less the reshape and slice it takes


def test_a_variant_far_from_fp32_is_kept_with_a_warning():
    from torchship.optimizers.weight_only import FAR_TOP1, WeightOnlyOptions, _judgement

    decode = {"steps": 64, "prompt": "16 random token ids, seed 0", "logit_cosine_mean": 0.63,
              "logit_cosine_min": 0.46, "greedy_same_prefix": 0}
    errors = [{"name": "head", "shape": [32, 64], "relative_error": 0.1}]
    far = _judgement(errors, {**decode, "top1_agreement": 0.0156}, WeightOnlyOptions(bits=4), ())
    assert far["passed"] and far["warning"].startswith("far from fp32: its next token is fp32's at 1.6% of 64 steps")
    assert "--bits 8" in far["warning"]
    near = _judgement(errors, {**decode, "top1_agreement": FAR_TOP1}, WeightOnlyOptions(bits=4), ())
    assert near["passed"] and near["warning"] is None


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [None, 1.01])
def test_the_warning_is_printed_and_recorded(tied_export, tmp_path, monkeypatch, threshold):
    """This tiny model's int4 variant picks fp32's token at every step: no warning at the real threshold; one
    raised above it shows what a far variant gets."""
    from torchship import _progress
    from torchship.optimizers import weight_only as wo

    if threshold is not None:
        monkeypatch.setattr(wo, "FAR_TOP1", threshold)
    folder = Path(shutil.copytree(tied_export, tmp_path / "onnx"))
    said = []
    art = wo.weight_only(folder, wo.WeightOnlyOptions(bits=4, steps=8), progress=_progress.Progress(step=said.append))
    v = art.manifest.variants["wo-int4"]
    assert v.validation.decode.top1_agreement == 1.0 and v.validation.passed
    warnings = [line for line in said if line.startswith("WARNING: far from fp32")]
    if threshold is None:
        assert v.validation.warning is None and not warnings and v.notes == ()
    else:
        assert warnings == [f"WARNING: {v.validation.warning}"] and v.notes == (v.validation.warning,)
        assert "fp32's at 100.0% of 8 steps (under 101%)" in v.validation.warning
        assert Artifact.open(folder).manifest.variants["wo-int4"].notes == v.notes  # as saved in torchship.json


@pytest.mark.slow
def test_optimize_writes_graph_level_files_of_a_tied_decoder_no_larger_than_the_export(tied_export, tmp_path):
    from torchship.optimizers import OptimizeOptions, optimize

    folder = tmp_path / "onnx"
    shutil.copytree(tied_export, folder)
    optimize(folder, OptimizeOptions(levels=("basic", "all"), transformer_fusion=False, candidates="preset"))
    export_bytes = (folder / "model.onnx").stat().st_size
    for level in ("basic", "all"):
        path = folder / f"ort_{level}.onnx"
        assert path.stat().st_size <= 1.02 * export_bytes, (level, path.stat().st_size, export_bytes)
        assert _tables(path) == ["model.lm_head.weight"]
