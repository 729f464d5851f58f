import pytest
from safetensors.torch import load_file
from transformers import AutoModel

from tiny import make_model
from torchship import loading
from torchship.errors import InputError, ModelLoadError


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        loading.resolve(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="does not exist"):
        loading.resolve("./models/bert")


def test_folder_without_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="no config.json"):
        loading.resolve(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    ref = loading.resolve(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no weights"):
        loading.weight_policy(ref, allow_pickle=False)


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        loading.resolve(str(tmp_path / "model.onnx"))


def test_pickle_weights_need_consent(tmp_path, model_dirs):
    import torch

    src = model_dirs("bert")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    torch.save(load_file(src / "model.safetensors"), folder / "pytorch_model.bin")
    ref = loading.resolve(str(folder))
    with pytest.raises(ModelLoadError, match="pickle weights .* --allow-pickle"):
        loading.weight_policy(ref, allow_pickle=False)
    assert loading.weight_policy(ref, allow_pickle=True) is False  # allowed: use_safetensors=False
    config = loading.load_config(ref)
    model = loading.load_model(ref, config, model_class=AutoModel, allow_pickle=True)
    assert not model.training


def test_unreachable_hub_id_fails_fast_with_one_clear_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HF_HOME", "/nonexistent-torchship-test")
    ref = loading.resolve("bert-base-cased")
    assert ref.path is None
    with pytest.raises(ModelLoadError) as err:
        loading.load_config(ref)
    msg = str(err.value)
    assert "'bert-base-cased'" in msg and "cannot be reached" in msg and "--model DIR" in msg
    assert "\n" not in msg


def test_offline_mode_is_respected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-torchship-test")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        loading.load_config(loading.resolve("someone/some-model"))


def test_safetensors_folder_loads_in_eval_mode(model_dirs):
    ref = loading.resolve(str(model_dirs("roberta")))
    assert loading.weight_policy(ref, allow_pickle=False) is True
    model = loading.load_model(ref, loading.load_config(ref), model_class=AutoModel)
    assert not model.training
    assert type(model).__name__ == type(make_model("roberta")).__name__


def test_a_folder_without_tokenizer_files_has_no_tokenizer(tmp_path):
    from tiny import make_decoder

    make_decoder().save_pretrained(tmp_path / "bare")
    assert loading.load_tokenizer(loading.resolve(str(tmp_path / "bare"))) is None
