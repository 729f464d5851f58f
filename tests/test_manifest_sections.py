"""The manifest's typed sections: a manifest in the format torchship wrote before them opens with every section
read right, the writer gives back the same JSON (less the heads, width and layers the model config already
says), and a variant of several graphs round-trips and opens each graph's file."""

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from torchship._fs import MANIFEST_NAME
from torchship.artifact import Artifact, FusionSettings, Manifest, Variant
from torchship.dispatch_table import DispatchTable
from torchship.errors import InputError
from torchship.manifest_sections import ONE, Graph, Validation
from torchship.tensors import TensorSpec

# torchship.json of a tiny BERT after export, optimize (a quick dispatch table) and quantize, written by the
# torchship before typed sections (commit 8df238a)
OLD = Path(__file__).parent / "data" / "manifest_v1_bert.json"


@pytest.fixture
def old_folder(tmp_path) -> Path:
    shutil.copy(OLD, tmp_path / MANIFEST_NAME)
    return tmp_path


def test_a_manifest_of_the_earlier_format_opens_with_typed_sections(old_folder):
    m = Artifact.open(old_folder).manifest
    assert (m.num_heads, m.hidden_size, m.num_layers) == (4, 32, 2) and m.fusion_settings is None
    v = m.variants
    assert all(x.validation.passed for x in v.values())
    assert v["model"].validation.max_abs < m.atol and v["model"].options.extra["exporter"] == "torchscript"
    assert v["ort-all"].options.session_level == "all"
    assert v["ort-all"].fusion.counts and not v["ort-all"].fusion.reported
    fused = v["optimized"].fusion
    assert fused.reported and fused.attention == fused.expected_attention == 2 and fused.attention_fused
    assert v["optimized"].options.fusion_settings() == {"model_type": "bert", "num_heads": 4, "hidden_size": 32,
                                                        "use_gpu": False}
    assert v["optimized-approx"].validation.approximate and v["optimized-approx"].validation.min_cosine >= 0.9999
    assert v["optimized-sdpa"].options.disabled_optimizers == ("SkipLayerNormFusion",)
    assert v["optimized-sdpa"].fusion.rewritten == 2
    int8 = v["int8"]
    assert int8.options.method == "dynamic" and int8.options.shape == "batch 1 x seq 128"
    assert int8.options.cpu == "AMD EPYC" and int8.options.speedup_vs_fp32 == 0.928
    assert int8.options.activations.startswith("per-row") and int8.options.search_s == 2.3
    acc = int8.validation.accuracy
    assert acc.metric == "sentence_cosine" and acc.mean >= acc.budget == 0.9 and acc.batch_independent
    q = m.quantization
    assert q.chosen == int8.options.name and q.chosen in [c.name for c in q.candidates]
    assert all(c.accuracy.metric == "sentence_cosine" for c in q.candidates if c.error is None)
    table = m.dispatch
    assert isinstance(table, DispatchTable) and table.version == 2 and table.machine.spin == "run"
    assert table.same_as == {"ort-extended": "ort-all"} and "ort-extended" in table.excluded
    assert [(s.batch, s.sequence) for s in table.shapes] == [(1, 16), (1, 128), (8, 16), (8, 128)]
    assert table.choice(1, 3) == (table.shapes[0].winner, table.shapes[0].session)
    assert table.variant_at(64, 500) == table.shapes[-1].winner and table.most_wins() in table.candidates
    assert table.candidates["optimized-approx"].approximate and table.candidates["model"].passed
    assert all(s.timing(s.winner_key).median_ms > 0 for s in table.shapes)


def test_the_writer_gives_back_the_json_it_read_and_reading_it_again_gives_the_same_manifest(old_folder):
    data = json.loads(OLD.read_text())
    m = Manifest.from_json(copy.deepcopy(data))
    for key in ("num_heads", "hidden_size", "num_layers"):  # the model config says them: written once, there
        del data[key]
    assert m.to_json() == data
    assert Manifest.from_json(m.to_json()) == m
    art = Artifact.open(old_folder)
    art.save(art.manifest)
    assert Artifact.open(old_folder).manifest == m


def test_fusion_settings_apart_from_the_model_config_are_written_and_read_back():
    data = json.loads(OLD.read_text())
    data["num_layers"] = 8  # a UNet counts its attention modules, not its blocks
    m = Manifest.from_json(data)
    assert m.fusion_settings == FusionSettings(4, 32, 8) and m.num_layers == 8
    assert m.to_json()["num_layers"] == 8 and Manifest.from_json(m.to_json()) == m
    old = {k: v for k, v in json.loads(OLD.read_text()).items() if k != "model_config"}  # before model_config
    assert Manifest.from_json(old).num_heads == 4


def test_a_variant_of_two_graphs_round_trips_and_opens_each_graph(old_folder):
    art = Artifact.open(old_folder)
    ids = TensorSpec("input_ids", "int64", ("batch", "sequence"))
    pixels = TensorSpec("pixel_values", "float32", ("batch", 3, 224, 224))
    towers = (Graph("text", "text_model.onnx", (ids,), (TensorSpec("text_embeds", "float32", ("batch", 8)),),
                    Validation(passed=True, max_abs=1e-6, min_cosine=1.0)),
              Graph("vision", "vision/vision_model.onnx", (pixels,),
                    (TensorSpec("image_embeds", "float32", ("batch", 8)),), Validation(passed=True, max_abs=2e-6)))
    two = Variant(name="two-towers", file="text_model.onnx", stage="export", graphs=towers,
                  validation=Validation(passed=True, max_abs=2e-6))
    for g in towers:
        (old_folder / g.file).parent.mkdir(parents=True, exist_ok=True)
        (old_folder / g.file).write_bytes(b"onnx")
    art.save(art.manifest.with_variant(two))
    again = Artifact.open(old_folder)
    assert again.manifest.variants["two-towers"] == two
    assert [g.name for g in again.manifest.variants["two-towers"].all_graphs] == ["text", "vision"]
    assert again.graph_path("two-towers", "vision") == old_folder / "vision" / "vision_model.onnx"
    assert again.variant("two-towers").graph("vision").inputs == (pixels,)
    with pytest.raises(InputError, match="has no graph 'audio'; it has text, vision"):
        again.graph_path("two-towers", "audio")
    # a one-file variant is one graph, written as before (no graphs list)
    one = again.variant("model")
    assert one.all_graphs == (Graph(ONE, "model.onnx", validation=one.validation),)
    assert "graphs" not in one.to_json() and again.manifest.to_json()["variants"]["two-towers"]["graphs"]
    (old_folder / "model.onnx").write_bytes(b"onnx")
    assert again.graph_path("model") == again.path_of("model") == old_folder / "model.onnx"
    assert replace(two, graphs=()).all_graphs[0].file == "text_model.onnx"
