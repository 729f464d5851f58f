import onnx
import pytest

from torchship.artifact import Artifact
from torchship.errors import ArtifactError, InputError
from torchship.exporters.export import ExportOptions, export
from torchship.optimizers import OptimizeOptions, optimize
from torchship.optimizers.fusion import FusionReport, count_ops


def test_levels_and_fusion_variants_are_written_and_validated(exported):
    folder = exported("bert", optimized=True)
    m = Artifact.open(folder).manifest
    assert set(m.variants) == {"model", "ort-disabled", "ort-basic", "ort-extended", "ort-all", "optimized",
                               "optimized-onnx-attention", "optimized-mha",  # other attention kernels (test_attention_kernels)
                               "optimized-approx"}  # judged by cosine against the export (test_dispatch)
    for name, v in m.variants.items():
        assert (folder / v.file).is_file(), name
        assert v.validation.passed, name
        assert v.validation.max_abs < m.atol or v.validation.approximate
        onnx.checker.check_model(str(folder / v.file))
    # Disabled is the export itself run without optimizations; the others are new files.
    assert m.variants["ort-disabled"].file == "model.onnx"
    assert m.variants["ort-disabled"].options.session_level == "disabled"
    assert m.variants["ort-all"].file == "ort_all.onnx" and m.variants["ort-all"].notes


def test_fusion_counts_are_measured_from_the_graph(exported):
    folder = exported("bert", optimized=True)
    m = Artifact.open(folder).manifest
    fusion = m.variants["optimized"].fusion
    layers = m.num_layers
    assert fusion.counts == count_ops(folder / "model_optimized.onnx")
    assert fusion.attention == layers and fusion.attention_fused and fusion.warning is None
    assert fusion.counts["EmbedLayerNormalization"] == 1
    assert fusion.counts["SkipLayerNormalization"] == 2 * layers
    assert fusion.counts["Softmax"] == 0
    # The raw export has none of these fused operators.
    raw = count_ops(folder / "model.onnx")
    assert raw["Attention"] == raw["SkipLayerNormalization"] == raw["EmbedLayerNormalization"] == 0


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "electra"])
def test_fusion_on_other_families(exported, model_type):
    folder = exported(model_type, optimized=True)
    fusion = Artifact.open(folder).manifest.variants["optimized"].fusion
    assert fusion.attention == fusion.expected_attention == 2
    assert fusion.counts["SkipLayerNormalization"] >= 2


def test_unfused_attention_is_a_loud_warning(model_dirs, tmp_path):
    folder = tmp_path / "sdpa"
    export(str(model_dirs("bert")), folder, ExportOptions(attn_implementation="sdpa"))
    steps = []
    from torchship._progress import Progress

    art = optimize(folder, OptimizeOptions(levels=()), progress=Progress(step=steps.append))
    fusion = art.manifest.variants["optimized"].fusion
    assert fusion.attention < fusion.expected_attention
    assert fusion.warning.startswith("WARNING: attention fused in 0 of 2 layers")
    assert fusion.warning.endswith("--attn-implementation eager for full fusion")
    assert any(s.startswith("WARNING") for s in steps)
    assert art.manifest.variants["optimized"].validation.passed  # still correct, just slower


def test_fusion_report_warning_text():
    assert FusionReport({"Attention": 6}, 6).warning is None
    assert "3 of 6" in FusionReport({"Attention": 3, "MultiHeadAttention": 0}, 6).warning


def test_unknown_level_and_missing_folder(exported, tmp_path):
    with pytest.raises(InputError, match="unknown graph level 'turbo'"):
        optimize(exported("bert"), OptimizeOptions(levels=("turbo",)))
    with pytest.raises(InputError, match="does not exist"):
        optimize(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="has no torchship.json"):
        optimize(tmp_path / "empty")


def test_corrupted_onnx_is_a_clear_error_and_leaves_the_folder(model_dirs, tmp_path):
    folder = tmp_path / "broken"
    export(str(model_dirs("distilbert")), folder)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ArtifactError, match="cannot (load|read) .*model.onnx.*corrupted"):
        optimize(folder)
    assert sorted(p.name for p in folder.iterdir()) == before
