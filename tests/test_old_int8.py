"""An int8 file made before per-row activations (ORT's per-tensor dynamic quantization, what earlier torchship
kept): its answers depend on the batch, so triton refuses to serve it, --backend auto passes it over, and predict
runs it only when named, with a warning."""

import json
import shutil

from click.testing import CliRunner

from torchship.artifact import Artifact
from torchship.cli import main
from torchship.runtimes.auto_backend import choose


def _old_int8(folder):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model_int8.onnx"), weight_type=QuantType.QInt8)
    manifest = json.loads((folder / "torchship.json").read_text())
    manifest["variants"]["int8"] = {
        "name": "int8", "file": "model_int8.onnx", "stage": "quantization",
        "options": {"precision": "int8", "speedup_vs_fp32": 9.0, "shape": "batch 1 x seq 16"},
        "validation": {"passed": True, "metric": "output cosine", "mean": 0.999, "budget": 0.99}}
    (folder / "torchship.json").write_text(json.dumps(manifest))


def test_a_per_tensor_int8_file_is_not_served_nor_chosen_and_warned_about(exported, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(exported("bert"), folder)
    _old_int8(folder)
    r = CliRunner().invoke(main, ["triton", str(folder), "--output", str(tmp_path / "repo"), "--variant", "ort-int8"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "scales its activations per tensor" in r.output and f"torchship quantize {folder} --int8" in r.output
    assert not (tmp_path / "repo").exists()
    choice = choose(Artifact.open(folder))
    assert choice.backend != "ort-int8" and "ort-int8 scales activations per tensor" in choice.why
    r = CliRunner().invoke(main, ["predict", str(folder), "--backend", "ort-int8", "a sentence"])
    assert r.exit_code == 0, r.output
    assert "WARNING: model_int8.onnx scales activations per tensor" in r.output
