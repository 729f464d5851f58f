"""Nothing is swallowed: a broken setting, a broken tokenizer, a missing tokenizer and a check that a
path skipped each say so, in one line, before anything is written."""

import shutil

import pytest
from test_cli import assert_one_line_error, run


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_an_unreadable_sentence_transformers_setting_fails_the_export(model_dirs, tmp_path):
    folder = _copy(model_dirs("bert"), tmp_path / "st")
    (folder / "modules.json").write_text('[{"idx": 1, "name": "1", "path": "1_Pooling", '
                                         '"type": "sentence_transformers.models.Pooling"}]')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    out = tmp_path / "out"
    proc = run("torchship", "export", "--model", str(folder), "--output", str(out))
    assert_one_line_error(proc, "1_Pooling/config.json (a sentence-transformers setting) cannot be read")
    assert not out.exists()


def test_tokenizer_files_that_cannot_load_fail_the_export(model_dirs, tmp_path):
    folder = _copy(model_dirs("bert"), tmp_path / "badtok")
    (folder / "tokenizer.json").write_text("{broken")
    out = tmp_path / "out"
    proc = run("torchship", "export", "--model", str(folder), "--output", str(out))
    assert_one_line_error(proc, "the tokenizer files in")
    assert not out.exists()


def test_a_checkpoint_without_a_tokenizer_is_said_at_export(model_dirs, tmp_path):
    folder = _copy(model_dirs("bert"), tmp_path / "notok")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    out = tmp_path / "out"
    proc = run("torchship", "export", "--model", str(folder), "--output", str(out), "--no-optimize")
    assert proc.returncode == 0, proc.stderr
    assert "has no tokenizer" in proc.stderr and "predict needs one" in proc.stderr and "--tokenizer" in proc.stderr
    proc = run("torchship", "predict", str(out), "some text")
    assert_one_line_error(proc, "holds no tokenizer")


@pytest.mark.parametrize("precision", ["int8"])
def test_tensorrt_int8_checks_for_a_static_model_before_anything_else(exported, precision):
    proc = run("torchship", "tensorrt", str(exported("bert")), "--precision", precision)
    assert_one_line_error(proc, "TensorRT int8 needs a static int8 (QDQ) model")
    assert "torchship quantize" in proc.stderr and "--method static" in proc.stderr


def test_a_graph_the_runtime_refuses_at_a_validation_shape_is_a_failed_validation_in_one_line():
    """ONNX Runtime raising at one of the validation cases (a kernel's shape check) is a ValidationError that
    names the case and quotes the runtime's first line, not a traceback."""
    import numpy as np

    from torchship.artifact import ReferenceCase
    from torchship.errors import ValidationError
    from torchship.validation import compare_cases

    def refuses(feeds):
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : cos_cache and sin_cache differ\nmore")

    case = ReferenceCase("batch 2 x seq 7", {"x": np.zeros((2, 7), np.float32)}, {"y": np.zeros((2, 7), np.float32)})
    with pytest.raises(ValidationError) as exc:
        compare_cases(refuses, [case], atol=1e-4)
    assert str(exc.value) == ("the model fails to run at batch 2 x seq 7: RuntimeError: [ONNXRuntimeError] : 2 : "
                              "INVALID_ARGUMENT : cos_cache and sin_cache differ")
