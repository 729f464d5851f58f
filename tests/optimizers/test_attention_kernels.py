"""The two exact candidates with other attention kernels (optimizers/attention_kernels.py): ONNX's Attention
operator with the key bias dropped and the value bias folded, and MultiHeadAttention's flash kernel behind an If
on padding. Real exports, real ORT sessions; each must equal the export on every real token, padded or not."""

import shutil

import numpy as np
import onnx
import pytest

from torchship._ort import ort_runner
from torchship.artifact import Artifact
from torchship.errors import ArtifactError
from torchship.optimizers import OptimizeOptions, optimize
from torchship.optimizers.attention_kernels import to_flash_when_unpadded, to_onnx_attention
from torchship.optimizers.dispatch import DispatchPlan
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.backends import backend_of_variant

QUICK = DispatchPlan(min_rounds=2, max_rounds=3, seconds=0.0, final_rounds=2, final_max_rounds=2)


@pytest.fixture(scope="module")
def kernels(exported, tmp_path_factory):
    folder = shutil.copytree(exported("bert"), tmp_path_factory.mktemp("kernels") / "bert")
    return optimize(folder, OptimizeOptions(levels=(), dispatch=QUICK))


def _graph(art, name):
    return onnx.load(str(art.path_of(name)))


def test_both_are_made_validated_and_offered_to_the_dispatch(kernels):
    m = kernels.manifest
    layers = m.num_layers
    for name in ("optimized-onnx-attention", "optimized-mha"):
        v = m.variants[name]
        assert v.validation.passed and v.validation.max_abs <= m.atol, (name, v.validation)
        assert v.fusion.rewritten == layers and name in m.dispatch.candidates
    sdpa = _graph(kernels, "optimized-onnx-attention")
    assert next(o.version for o in sdpa.opset_import if o.domain == "") >= 24
    attention = [n for n in sdpa.graph.node if n.op_type == "Attention" and n.domain == ""]
    assert len(attention) == layers and not any(n.op_type == "MultiHeadAttention" for n in sdpa.graph.node)
    producer = {o: n for n in sdpa.graph.node for o in n.output}
    for node in attention:
        # Q gets its bias; K and V come straight from their projections (K's bias dropped, V's folded after)
        assert producer[node.input[0]].op_type == "Add"
        assert producer[node.input[1]].op_type == producer[node.input[2]].op_type == "MatMul"
        assert node.input[6]  # each row's length, from the mask
    flash = _graph(kernels, "optimized-mha")
    ifs = [n for n in flash.graph.node if n.op_type == "If"]
    assert len(ifs) == layers
    for node in ifs:
        branches = {a.name: a.g.node[0] for a in node.attribute}
        assert [b.op_type for b in branches.values()] == ["MultiHeadAttention"] * 2
        assert len(branches["then_branch"].input) == 4 and len(branches["else_branch"].input) == 5
    # Both keep residual Add + LayerNormalization apart and load without ORT's SkipLayerNormFusion, which the
    # predictors pass on to ORT.
    for name, graph in (("optimized-onnx-attention", sdpa), ("optimized-mha", flash)):
        ops = [n.op_type for n in graph.graph.node]
        assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 2 * layers, name
        assert m.variants[name].options.disabled_optimizers == ("SkipLayerNormFusion",)
        with create_predictor(kernels, backend_of_variant(name).name, RuntimeOptions(threads=1)) as predictor:
            predictor.infer({"input_ids": np.full((1, 4), 5), "attention_mask": np.ones((1, 4), dtype=np.int64),
                             "token_type_ids": np.zeros((1, 4), dtype=np.int64)})
            assert predictor.disabled_optimizers == ("SkipLayerNormFusion",)


@pytest.mark.parametrize("name", ["optimized-onnx-attention", "optimized-mha"])
def test_equal_to_the_export_on_every_real_token_with_and_without_padding(kernels, name):
    export, variant = ort_runner(kernels.path_of("model")), ort_runner(kernels.path_of(name))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(4, 24), dtype=np.int64)
    padded = np.ones_like(ids)
    for row, length in enumerate((24, 17, 5, 1)):
        padded[row, length:] = 0
    for mask in (np.ones_like(ids), padded):
        feeds = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        want, got = export(feeds)["last_hidden_state"], variant(feeds)["last_hidden_state"]
        real = mask.astype(bool)
        np.testing.assert_allclose(got[real], want[real], atol=kernels.manifest.atol, rtol=0)


def test_a_preset_rerun_keeps_them_and_never_prefers_them(kernels, tmp_path):
    folder = shutil.copytree(kernels.folder, tmp_path / "bert")
    art = optimize(folder, OptimizeOptions(levels=("all",), candidates="preset"))
    for name in ("optimized-onnx-attention", "optimized-mha"):
        assert name in art.manifest.variants and name not in art.manifest.skipped
        assert (folder / art.manifest.variants[name].file).is_file()
    assert art.best_variant() not in ("optimized-onnx-attention", "optimized-mha")


def test_a_graph_without_multihead_attention_is_refused(kernels):
    fused = onnx.load(str(kernels.path_of("optimized")))  # packed Attention, no MultiHeadAttention
    with pytest.raises(ArtifactError, match="no MultiHeadAttention"):
        to_onnx_attention(fused)
    with pytest.raises(ArtifactError, match="no input 'mask'"):
        to_flash_when_unpadded(fused, "mask")


def test_a_family_the_rewrite_cannot_take_is_skipped_not_failed(exported, tmp_path):
    # Whatever the fusion makes of each tiny encoder, optimize finishes: a rewrite that cannot apply is a
    # recorded skip with its reason, never a failed command.
    for model_type in ("distilbert", "mpnet"):
        art = optimize(shutil.copytree(exported(model_type), tmp_path / model_type),
                       OptimizeOptions(levels=(), dispatch=QUICK))
        for name in ("optimized-onnx-attention", "optimized-mha"):
            assert (name in art.manifest.variants and art.manifest.variants[name].validation.passed) \
                or art.manifest.skipped[name], (model_type, name)
    assert Artifact.open(tmp_path / "mpnet").manifest.dispatch is not None
