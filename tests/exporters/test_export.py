import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tiny import TINY_CONFIGS, make_model, make_tokenizer
from torchship.artifact import Artifact, load_reference
from torchship.errors import InputError, UnsupportedModelError, ValidationError
from torchship.exporters.export import ExportOptions, export, export_model
from torchship.exporters.inputs import TextShape, make_text_inputs
from torchship.exporters.encoders import ENCODER_SPECS
from torchship.exporters.spec import supported_model_types, spec_for

FAMILIES = sorted(TINY_CONFIGS)


def test_spec_coverage():
    """Every registered model type has a tiny test model, and every tiny model a spec."""
    assert set(supported_model_types("encoder")) == set(TINY_CONFIGS)
    assert {s.family for s in ENCODER_SPECS} <= set(supported_model_types())


def _eager(model, feeds, names):
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, return_dict=True)
    return {n: out[n].numpy() for n in names}


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_export_family(model_type, task, exported, model_dirs):
    folder = exported(model_type, task)
    art = Artifact.open(folder)
    m = art.manifest
    spec = spec_for(model_type)

    # Inputs per family: token_type_ids only where the family takes them.
    assert m.input_names == spec.inputs_for(make_model(model_type).config)
    assert ("token_type_ids" in m.input_names) == (model_type in ("bert", "electra", "albert"))
    poolers = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "albert")
    expected_outputs = {"text-classification": ("logits",),
                        "feature-extraction": ("last_hidden_state",) + (
                            ("pooler_output",) if model_type in poolers else ())}[task]
    assert m.output_names == expected_outputs
    assert m.task == task and m.export["exporter"] == "torchscript" and m.export["opset"] == 17

    # The manifest's validation ran at shapes other than the dummy shape, one padded batch > 1.
    val = m.variants["model"].validation
    assert val.passed and val.max_abs < m.atol
    cases = load_reference(folder)
    dummy = tuple(m.export["dummy_shape"])
    assert all(c.inputs["input_ids"].shape != dummy for c in cases)
    assert any(c.inputs["input_ids"].shape[0] > 1 and (c.inputs["attention_mask"] == 0).any() for c in cases)

    # Independently of torchship's validation: the graph is dynamic and matches PyTorch at new shapes.
    graph = onnx.load(str(folder / "model.onnx"))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    model = make_model(model_type, task)
    vocab = model.config.vocab_size
    for shape in (TextShape(5, 31, (31, 30, 12, 3, 1)), TextShape(1, 64)):
        feeds = make_text_inputs(m.input_names, shape, vocab_size=vocab, seed=42)
        got = dict(zip(m.output_names, sess.run(list(m.output_names), feeds)))
        ref = _eager(model, feeds, m.output_names)
        where = spec.compared_positions(feeds)  # local attention: real tokens only
        for name in m.output_names:
            assert got[name].shape == ref[name].shape
            keep = np.broadcast_to(where.get(name, True), got[name].shape)
            np.testing.assert_allclose(got[name][keep], ref[name][keep], atol=1e-4, rtol=0)

    # The folder is self-contained: tokenizer and config beside the model.
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    if task == "text-classification":
        assert m.text["labels"] == ["negative", "neutral", "positive"]


def test_manifest_records_versions_and_source(exported, model_dirs):
    data = json.loads((exported("bert") / "torchship.json").read_text())
    assert data["format"] == 1
    assert data["source"]["resolved"] == str(model_dirs("bert").resolve())
    for key in ("torch", "transformers", "onnx", "onnxruntime", "torchship"):
        assert data["versions"][key]
    assert data["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    assert data["variants"]["model"]["options"] == {"exporter": "torchscript", "opset": 17, "external_data": False}


@pytest.mark.parametrize("train_mode", [False, True])
def test_export_leaves_user_model_unchanged(tmp_path, train_mode):
    model = make_model("bert")
    model.set_attn_implementation("sdpa")
    model.train(train_mode)
    before = copy.deepcopy(model.state_dict())
    feeds = make_text_inputs(("input_ids", "attention_mask", "token_type_ids"), TextShape(2, 11, (11, 6)),
                             vocab_size=model.config.vocab_size)
    model.eval()
    ref = _eager(model, feeds, ("last_hidden_state",))
    model.train(train_mode)

    export_model(model, tmp_path / "out", tokenizer=make_tokenizer(tmp_path / "tok"))

    assert model.training is train_mode
    assert all(m.training is train_mode for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    np.testing.assert_array_equal(_eager(model, feeds, ("last_hidden_state",))["last_hidden_state"],
                                  ref["last_hidden_state"])
    assert Artifact.open(tmp_path / "out").manifest.variants["model"].validation.passed


@pytest.mark.slow
def test_dynamo_export_path(model_dirs, tmp_path):
    art = export(str(model_dirs("bert")), tmp_path / "d", ExportOptions(exporter="dynamo"))
    m = art.manifest
    assert m.export["exporter"] == "dynamo" and m.export["opset"] == 23
    assert m.export["attn_implementation"] == "sdpa"
    assert m.variants["model"].validation.passed
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d" / "model.onnx")).graph.node}
    assert "Attention" in ops  # SDPA at opset 23 becomes ONNX's own Attention op


@pytest.mark.parametrize("opset", [14, 18])
def test_opset_is_selectable(model_dirs, tmp_path, opset):
    export(str(model_dirs("distilbert")), tmp_path / "o", ExportOptions(opset=opset))
    graph = onnx.load(str(tmp_path / "o" / "model.onnx"))
    assert {o.domain: o.version for o in graph.opset_import}[""] == opset
    assert Artifact.open(tmp_path / "o").manifest.export["opset"] == opset


def test_failed_validation_reports_numbers_and_writes_nothing(model_dirs, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(ValidationError) as err:
        export(str(model_dirs("bert")), out, ExportOptions(atol=1e-30))
    msg = str(err.value)
    assert "last_hidden_state" in msg and "max abs" in msg and "--atol" in msg
    assert len(err.value.report.failures) >= 2  # every mismatching output and case, not the first
    assert not out.exists()
    assert not any(p.name.startswith(".strict") for p in tmp_path.iterdir())


def test_reexport_replaces_a_torchship_folder_but_not_a_foreign_one(model_dirs, tmp_path):
    out = tmp_path / "again"
    export(str(model_dirs("distilbert")), out)
    first = (out / "torchship.json").stat().st_mtime_ns
    export(str(model_dirs("distilbert")), out)
    assert (out / "torchship.json").stat().st_mtime_ns != first
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not written by torchship"):
        export(str(model_dirs("distilbert")), foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_bad_options_are_input_errors(model_dirs, tmp_path):
    for opts, pattern in [(ExportOptions(exporter="magic"), "unknown exporter"),
                          (ExportOptions(opset=9), "opset 9 is out of range"),
                          (ExportOptions(task="summarize"), "unknown task"),
                          (ExportOptions(atol=-1.0), "must be positive"),
                          (ExportOptions(validation_cases=(TextShape(2, 16),)), "must differ"),
                          (ExportOptions(validation_cases=(TextShape(2, 16, (16, 3)),)), "must differ")]:
        with pytest.raises(InputError, match=pattern):
            export(str(model_dirs("bert")), tmp_path / "x", opts)
    assert not (tmp_path / "x").exists()


def test_gpt2_is_not_a_bert(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2' model .*use export-gpt2.*exports BERT-like encoders"):
        export(str(tmp_path / "gpt2"), tmp_path / "out", ExportOptions(kind="encoder"))


@pytest.mark.parametrize("model_type", ["roberta", "mpnet"])
def test_a_text_longer_than_the_model_reads_is_cut_to_its_position_table(exported, model_type):
    """Position ids of RoBERTa and MPNet start past the padding index: the text limit leaves room for it."""
    from torchship.artifact import Artifact
    from torchship.runtimes import create_predictor
    from torchship.runtimes.text import TextModel

    art = Artifact.open(exported(model_type))
    table = art.manifest.text["max_length"]
    with create_predictor(art, "ort") as predictor:
        result = TextModel.from_artifact(art, predictor).predict(["a good movie " * 200, "hello world"])
    assert result.embeddings.shape[0] == 2 and np.isfinite(result.embeddings).all()
    assert table == {"roberta": 128 - (0 + 1), "mpnet": 128 - 2}[model_type]  # tiny configs: 128 positions, pad 0
