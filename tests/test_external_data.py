"""External data, the same for every family: one data file per model, relocatable folders, and ONNX
files whose data points outside their folder refused before anything reads it."""

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tiny import make_tokenizer

from torchship._ort import make_session
from torchship.artifact import Artifact
from torchship.errors import ArtifactError
from torchship.exporters.export import ExportOptions, export
from torchship.external_data import THRESHOLD_BYTES, check_file
from torchship.optimizers import OptimizeOptions, optimize
from torchship.runtimes import create_predictor
from torchship.runtimes.text import TextModel


def test_forced_external_data_through_export_optimize_and_a_moved_folder(model_dirs, tmp_path):
    out = tmp_path / "a" / "onnx"
    export(str(model_dirs("bert")), out, ExportOptions(external_data="always"))
    artifact = optimize(out, OptimizeOptions(levels=("basic", "all")))
    names = sorted(p.name for p in out.iterdir() if "onnx" in p.name)
    assert names == ["model.onnx", "model.onnx.data", "model_optimized.onnx", "model_optimized.onnx.data",
                     "model_optimized_approx.onnx", "model_optimized_approx.onnx.data",
                     "model_optimized_mha.onnx", "model_optimized_mha.onnx.data",
                     "model_optimized_onnx_attention.onnx", "model_optimized_onnx_attention.onnx.data",
                     "ort_all.onnx", "ort_all.onnx.data", "ort_basic.onnx", "ort_basic.onnx.data"]
    for name, variant in artifact.manifest.variants.items():
        path = out / variant.file
        assert check_file(path) == [path.name + ".data"], name  # one data file, named after its model
        assert variant.size_bytes == path.stat().st_size + (out / (variant.file + ".data")).stat().st_size
        assert variant.validation.passed, name
    assert artifact.manifest.variants["model"].options.extra["external_data"] is True

    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    artifact = Artifact.open(moved)
    with create_predictor(artifact, "ort-optimized") as predictor:
        result = TextModel.from_artifact(artifact, predictor).predict(["the cat is on the mat"])
    assert np.isfinite(result.embeddings).all()


def test_small_models_stay_in_one_file(exported):
    folder = exported("bert")
    assert not list(folder.glob("*.data")) and check_file(folder / "model.onnx") == []


def _model_with_external(folder, location: str):
    """A one-initializer ONNX model whose weight lives in external data at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=np.arange(4, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (folder / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    session = make_session(_model_with_external(tmp_path / "ok", "weights.bin"))
    assert session.run(None, {"x": np.ones(4, np.float32)})[0].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("location,message", [
    ("../secret.bin", "outside its folder"),
    ("/etc/passwd", "absolute path"),
    ("sub/../../secret.bin", "outside its folder"),
    ("gone.bin", "which is missing; copy or move the whole folder"),
])
def test_external_data_outside_the_folder_is_refused(tmp_path, location, message):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _model_with_external(tmp_path / "model", location)
    with pytest.raises(ArtifactError, match=message):
        make_session(path)


def test_a_link_pointing_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _model_with_external(tmp_path / "model", "link.bin")
    (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ArtifactError, match="outside its folder"):
        make_session(path)


@pytest.mark.slow
@pytest.mark.alone  # 6.8 GB at its peak: with another test beside it the suite would pass 8 GB
def test_a_model_over_2gb_exports_optimizes_and_runs_from_a_moved_folder(tmp_path):
    """A BERT whose vocabulary makes it just over 2 GB: nothing special asked, external data by default."""
    import torch
    from transformers import BertConfig, BertModel

    vocab = (2**31 + 2**24) // (32 * 4)  # word embeddings alone pass the protobuf limit
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=64,
                                 attn_implementation="eager")).eval()
    size = sum(p.numel() * 4 for p in model.parameters())
    assert size > 2**31 > THRESHOLD_BYTES
    # Saved and exported from the folder, as export-bert runs: one copy of the weights in this process
    # (export_model would hold the caller's object and its deep copy, and the suite stays under 8 GB).
    src = tmp_path / "checkpoint"
    model.save_pretrained(src)
    make_tokenizer(src).save_pretrained(src)
    del model
    out = tmp_path / "big"
    artifact = export(str(src), out)
    shutil.rmtree(src)
    assert sorted(p.name for p in out.glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < 10**6 and artifact.manifest.variants["model"].size_bytes > 2**31
    # Graph level "all" only: ONNX Runtime's Python transformer optimizer holds several copies of a 2 GB
    # model (17 GB at its peak); fusion with external data is covered by the forced-external test above.
    artifact = optimize(out, OptimizeOptions(levels=("all",), transformer_fusion=False))
    for name in ("model", "ort-all"):
        assert artifact.manifest.variants[name].validation.passed, name
    assert (out / "ort_all.onnx.data").stat().st_size > 2**31

    moved = tmp_path / "elsewhere" / "big"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    ids = np.array([[5, vocab - 1, 7]], dtype=np.int64)  # the last row of the embedding table, past 2 GB
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with create_predictor(Artifact.open(moved), "ort-all") as predictor:
        hidden = predictor.infer(feeds)["last_hidden_state"]
    assert hidden.shape == (1, 3, 32) and np.isfinite(hidden).all()
