"""Triton model repositories: config.pbtxt parsed with Triton's own schema, the model loadable at the
declared shapes."""

import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT, EXIT_MISSING, InputError
from torchship.exporters.export import ExportOptions, export
from torchship.optimizers import OptimizeOptions, optimize
from torchship.serving.triton_repo import TritonOptions, parse_config, write_triton_repo

NP = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32}
_DTYPE_NAMES = {9: "TYPE_INT64", 11: "TYPE_FP32", 8: "TYPE_INT32"}


def _run_declared(config, model_path, batch=3, dynamic=7):
    """Feed ORT inputs built from the config's dims (batch prepended when Triton batches)."""
    feeds = {}
    for inp in config.input:
        dims = [dynamic if d == -1 else d for d in inp.dims]
        if config.max_batch_size > 0:
            dims = [min(batch, config.max_batch_size)] + dims
        dtype = NP[_DTYPE_NAMES[inp.data_type]]
        value = 1 if "mask" in inp.name else 0 if "type" in inp.name else 5
        feeds[inp.name] = np.full(dims, value, dtype)
    session = ort.InferenceSession(str(model_path))
    outs = session.run([o.name for o in config.output], feeds)
    for out, value in zip(config.output, outs):
        dims = list(out.dims)
        got = list(value.shape[1:]) if config.max_batch_size > 0 else list(value.shape)
        assert len(got) == len(dims) and all(d == -1 or d == g for d, g in zip(dims, got)), (out.name, got, dims)
    return outs


@pytest.fixture(scope="module")
def folder(exported, tmp_path_factory):
    dst = tmp_path_factory.mktemp("triton") / "bert"
    shutil.copytree(exported("bert", optimized=True), dst)
    return dst


def test_onnx_variant_repository_parses_with_tritons_schema_and_loads(folder, tmp_path):
    path = write_triton_repo(folder, tmp_path / "repo", TritonOptions(preferred_batch_sizes=(2, 4), instances=2))
    assert path == tmp_path / "repo" / "bert" and sorted(p.name for p in (path / "1").iterdir()) == ["model.onnx"]
    config = parse_config((path / "config.pbtxt").read_text())
    assert config.name == "bert" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(config.input[0].dims) == [-1]  # batch handled through max_batch_size
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == 2  # KIND_CPU
    _run_declared(config, path / "1" / "model.onnx")


def test_without_triton_batching_dims_are_full(folder, tmp_path):
    path = write_triton_repo(folder, tmp_path / "repo", TritonOptions(variant="model", name="plain", max_batch_size=0))
    config = parse_config((path / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, -1]
    assert not config.HasField("dynamic_batching")
    _run_declared(config, path / "1" / "model.onnx")


def test_openvino_variant_uses_the_openvino_backend(folder, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    optimize(folder, OptimizeOptions(levels=(), transformer_fusion=False, openvino=True))
    path = write_triton_repo(folder, tmp_path / "repo", TritonOptions(variant="openvino", name="bert_ov"))
    config = parse_config((path / "config.pbtxt").read_text())
    assert config.backend == "openvino" and not config.platform
    assert sorted(p.name for p in (path / "1").iterdir()) == ["model.bin", "model.xml"]
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path / "1" / "model.xml")), "CPU")
    ids = np.full((2, 7), 5, np.int64)
    res = compiled({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    assert res[compiled.output("last_hidden_state")].shape[:2] == (2, 7)


def test_external_data_is_relocated_under_tritons_file_name(model_dirs, tmp_path):
    out = tmp_path / "ext"
    export(str(model_dirs("bert")), out, ExportOptions(external_data="always"))
    path = write_triton_repo(out, tmp_path / "repo", TritonOptions(variant="model"))
    assert sorted(p.name for p in (path / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    _run_declared(parse_config((path / "config.pbtxt").read_text()), path / "1" / "model.onnx")


def test_a_typo_never_reaches_a_server():
    with pytest.raises(InputError, match="platfrom"):
        parse_config('name: "x"\nplatfrom: "onnxruntime_onnx"\n')
    with pytest.raises(InputError, match="Triton's schema"):
        parse_config('name: "x"\ninput { name: "a" data_type: TYPE_INT46 }\n')


def test_bad_requests_are_one_line(folder, tmp_path):
    with pytest.raises(InputError, match="no variant or backend 'nope'"):
        write_triton_repo(folder, tmp_path / "r", TritonOptions(variant="nope"))
    with pytest.raises(InputError, match="exceed max_batch_size"):
        write_triton_repo(folder, tmp_path / "r", TritonOptions(preferred_batch_sizes=(16,)))
    for task in ("tensors", "embedding"):
        r = CliRunner().invoke(main, ["triton", str(folder), "--output", str(tmp_path / "r"), "--variant",
                                      "tensorrt-fp16", "--task", task, "--runtime", "tensorrt"])
        assert r.exit_code == EXIT_MISSING and "torchship[tensorrt]" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["triton", str(folder), "--output", str(tmp_path / "r"), "--variant", "openvino"])
    assert r.exit_code == 2 and "--runtime python cannot run 'openvino'" in r.output and "--runtime openvino" in r.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_without_tritonclient_one_line_names_the_extra(folder, tmp_path):
    code = ("import sys; sys.modules['tritonclient'] = None; from torchship.cli import main; "
            f"main(['triton', {str(folder)!r}, '--output', {str(tmp_path / 'r')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == EXIT_MISSING and "pip install 'torchship[triton]'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_writes_from_an_auto_output_folder(tmp_path, exported):
    """An auto output folder: the variant auto chose is the default."""
    import json

    auto = tmp_path / "auto"
    (auto / "model").parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(exported("bert", optimized=True), auto / "model")
    (auto / "summary.json").write_text(json.dumps({"chosen": "ort-all"}))
    r = CliRunner().invoke(main, ["triton", str(auto), "--output", str(tmp_path / "repo"), "--name", "enc",
                                  "--task", "tensors"])
    assert r.exit_code == 0, r.output
    assert "enc: platform onnxruntime_onnx; in input_ids [-1]" in r.output
    assert (tmp_path / "repo" / "enc" / "1" / "model.onnx").read_bytes() == (auto / "model" / "ort_all.onnx").read_bytes()
    r = CliRunner().invoke(main, ["triton", str(auto), "--output", str(tmp_path / "text"), "--name", "enc"])
    assert r.exit_code == 0, r.output
    assert "enc: backend python; in TEXT [1]; out EMBEDDING [32]" in r.output
    assert (tmp_path / "text" / "enc" / "1" / "model.onnx").read_bytes() == (auto / "model" / "ort_all.onnx").read_bytes()
    assert "torchship serve" in (tmp_path / "text" / "README.md").read_text()


def test_task_models_are_written_as_one_python_model(tmp_path, exported):
    """Entities, filled masks and answers need the text and its tokens in one process: one Python model carrying
    torchship's own post-processing; an ensemble is refused with one line."""
    import json

    ner = exported("bert", "token-classification")
    r = CliRunner().invoke(main, ["triton", str(ner), "--output", str(tmp_path / "repo"), "--name", "ner",
                                  "--aggregation", "max"])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "repo" / "ner" / "1").iterdir())
    assert files == ["model.onnx", "model.py", "serving.json", "tokenizer.json", "torchship_processing",
                     "torchship_steps.py"]
    settings = json.loads((tmp_path / "repo" / "ner" / "1" / "serving.json").read_text())
    assert settings["task"] == "entities" and settings["aggregation"] == "max" and settings["output"] == "logits"
    assert "; out ENTITIES [1], TOKENS [1], TRUNCATED [1];" in r.output
    qa = exported("bert", "question-answering")
    r = CliRunner().invoke(main, ["triton", str(qa), "--output", str(tmp_path / "repo"), "--name", "qa"])
    assert r.exit_code == 0, r.output
    assert "; in QUESTION [1], TEXT [1]; out ANSWER [1]," in r.output
    for extra in (["--layout", "ensemble"], ["--runtime", "onnxruntime"]):
        r = CliRunner().invoke(main, ["triton", str(ner), "--output", str(tmp_path / "ens"), *extra])
        assert r.exit_code == EXIT_BAD_INPUT and "served as one Python model" in r.output, r.output
        assert not (tmp_path / "ens").exists()
    r = CliRunner().invoke(main, ["triton", str(ner), "--output", str(tmp_path / "repo"), "--task", "embedding"])
    assert r.exit_code == EXIT_BAD_INPUT and "can be: entities, tensors" in r.output


def test_the_measured_dispatch_table_picks_the_served_variant(tmp_path, model_dirs):
    """A folder optimize measured: Triton serves one file, the variant that won the most measured shapes."""
    import json

    from torchship.artifact import Artifact
    from torchship.exporters.export import export
    from torchship.optimizers import optimize

    out = tmp_path / "onnx"
    export(str(model_dirs("bert")), out)
    optimize(out)  # measures which variant runs which shape
    table = Artifact.open(out).manifest.dispatch
    assert table and table.ranges
    r = CliRunner().invoke(main, ["triton", str(out), "--output", str(tmp_path / "repo"), "--name", "b"])
    assert r.exit_code == 0, r.output
    marker = json.loads((tmp_path / "repo" / "b" / "torchship-model.json").read_text())
    assert marker["folder_variant"] == table.most_wins() and "measured fastest at the most shapes" in marker["why"]


def test_a_variant_measured_without_an_ort_fusion_is_served_without_it(tmp_path, exported):
    """The ONNX-Attention candidate keeps its layer norms unfused and loads without ORT's SkipLayerNormFusion;
    served by the Python backend, its session is made the same way (serving.json carries the setting)."""
    import importlib.util
    import json

    import numpy as np

    folder = exported("bert", optimized=True)
    r = CliRunner().invoke(main, ["triton", str(folder), "--output", str(tmp_path / "repo"), "--name", "s",
                                  "--variant", "optimized-sdpa"])  # the earlier name of optimized-onnx-attention
    assert r.exit_code == 0, r.output
    version = next(p.parent for p in (tmp_path / "repo").rglob("serving.json"))
    settings = json.loads((version / "serving.json").read_text())
    assert settings["disabled_optimizers"] == ["SkipLayerNormFusion"]
    spec = importlib.util.spec_from_file_location("served_steps", version / "torchship_steps.py")
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    model = steps.Model(str(version), {**settings, "threads": 1})
    ids = np.full((2, 6), 7, dtype=np.int64)
    got = model.run({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    assert got.shape[0] == 2 and np.isfinite(got).all()
