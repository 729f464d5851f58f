import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from torchship.errors import ArtifactError, BackendUnavailable, InputError
from torchship.exporters.spec import ModelIO, TensorSpec
from torchship.optimizers.tensorrt_build import build_engine
from torchship.optimizers.tensorrt_cache import EngineCache, engine_cache_key, model_digest
from torchship.optimizers.tensorrt_profiles import InputProfile, profiles_from_shapes, shape_config_from_flags
from torchship.runtimes.tensorrt import EXTRA, TensorRTPredictor, require_tensorrt
from torchship.shapes import ResolvedShapes, parse_shape_config, resolve


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _backend_problem() -> str:
    try:
        require_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    return ""


HAVE_GPU = _gpu()
HAVE_TRT = _tensorrt_importable()
BACKEND_READY = not _backend_problem()
NOT_READY = f"needs an NVIDIA GPU and TensorRT >= 10 with polygraphy: {_backend_problem()}"

TEXT_AXES = ("batch", "sequence")
BERT_IO = ModelIO(
    inputs=tuple(TensorSpec(n, "int64", TEXT_AXES) for n in ("input_ids", "attention_mask", "token_type_ids")),
    outputs=(TensorSpec("last_hidden_state", "float32", ("batch", "sequence", 32)),),
)
UNET_IO = ModelIO(
    inputs=(TensorSpec("sample", "float32", ("batch", 4, "height", "width")),
            TensorSpec("timestep", "float32", ("steps",)),
            TensorSpec("encoder_hidden_states", "float32", ("batch", "sequence", 24))),
    outputs=(TensorSpec("out_sample", "float32", ("batch", 4, "height", "width")),),
)


def bert_resolved(device="cuda"):
    config = parse_shape_config({"device": device,
                                 "inputs": {"input_ids": {"min": [1, 1], "use": [2, 16], "max": [8, 128]}}})
    return resolve(config, BERT_IO)


def tiny_onnx(path, *, qdq=False, external=False):
    """x [batch, 16] @ W [16, 32] -> y; W is 2 KiB, so with external data it goes to the data file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from torchship.external_data import save_model

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32), "W")
    inits, nodes, src = [w], [], "x"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "zero")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"])]
        src = "xd"
    nodes.append(helper.make_node("MatMul", [src, "W"], ["y"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    save_model(model, path, external=external)
    return path


X_PROFILE = (InputProfile("x", (1, 16), (2, 16), (4, 16)),)


# ------------------------------------------------------------------------------------- profiles


def test_profiles_from_a_bert_shape_config():
    profiles = profiles_from_shapes(bert_resolved(), BERT_IO)
    assert [p.name for p in profiles] == ["input_ids", "attention_mask", "token_type_ids"]
    for p in profiles:  # the inputs share their axes, so one entry in the config shapes all three
        assert (p.min, p.opt, p.max) == ((1, 1), (2, 16), (8, 128))
    assert profiles[0].to_json() == {"name": "input_ids", "min": [1, 1], "opt": [2, 16], "max": [8, 128]}
    assert InputProfile.from_json(profiles[0].to_json()) == profiles[0]


def test_profiles_keep_fixed_sizes_of_a_unet():
    config = parse_shape_config({"device": "cuda", "inputs": {
        "sample": {"min": [1, 4, 32, 32], "use": [2, 4, 64, 64], "max": [2, 4, 96, 96]},
        "timestep": {"use": [1]},
        "encoder_hidden_states": {"min": [1, 77, 24], "use": [2, 77, 24], "max": [2, 77, 24]},
    }})
    profiles = {p.name: p for p in profiles_from_shapes(resolve(config, UNET_IO), UNET_IO)}
    assert profiles["sample"] == InputProfile("sample", (1, 4, 32, 32), (2, 4, 64, 64), (2, 4, 96, 96))
    assert profiles["timestep"] == InputProfile("timestep", (1,), (1,), (1,))
    assert profiles["encoder_hidden_states"] == InputProfile("encoder_hidden_states", (1, 77, 24), (2, 77, 24),
                                                             (2, 77, 24))


def test_profiles_name_the_input_and_axis_a_config_leaves_out():
    resolved = ResolvedShapes("cuda:0", {"batch": (1, 2, 4)}, {}, {})
    with pytest.raises(InputError, match="input 'input_ids' has axis 'sequence'"):
        profiles_from_shapes(resolved, BERT_IO)


def test_input_profile_checks_its_bounds():
    with pytest.raises(InputError, match="different ranks"):
        InputProfile("x", (1,), (1, 2), (1, 2))
    with pytest.raises(InputError, match="min <= opt <= max at axis 1"):
        InputProfile("x", (1, 8), (1, 4), (1, 16))


# ------------------------------------------------------------------------------------- flags


def test_flags_parse_into_the_shape_config_object():
    config = shape_config_from_flags("input_ids:1x1", "input_ids:2x16,attention_mask:2x16", "input_ids:8x128")
    assert config.device == "cuda:0"
    assert (config.inputs["input_ids"].min, config.inputs["input_ids"].use,
            config.inputs["input_ids"].max) == ((1, 1), (2, 16), (8, 128))
    att = config.inputs["attention_mask"]  # opt only: min and max default to it, as in a YAML config
    assert att.min == att.use == att.max == (2, 16)
    with pytest.raises(InputError, match="axis 'batch' is 1..8 .* they must agree"):
        resolve(config, BERT_IO)  # resolve's own checks apply to flags as to files
    good = shape_config_from_flags("input_ids:1x1", "input_ids:2x16", "input_ids:8x128", device="cuda:1")
    assert good.device == "cuda:1"
    assert profiles_from_shapes(resolve(good, BERT_IO), BERT_IO) == profiles_from_shapes(bert_resolved(), BERT_IO)


@pytest.mark.parametrize("flag", ["input_ids=1x16", "input_ids:1x", "input_ids:axb", ":1x2", "1x16",
                                  "input_ids:1x16,input_ids:2x16", ","])
def test_bad_flag_syntax_is_one_line_with_an_example(flag):
    with pytest.raises(InputError) as info:
        shape_config_from_flags(None, flag, None)
    text = str(info.value)
    assert "\n" not in text
    assert "--opt-shapes input_ids:1x16,attention_mask:1x16" in text


def test_flag_sets_that_cannot_make_a_config():
    with pytest.raises(InputError, match="'input_ids' is in --min-shapes or --max-shapes but not in --opt-shapes"):
        shape_config_from_flags("input_ids:1x1", "attention_mask:1x16", None)
    with pytest.raises(InputError, match="no shapes given"):
        shape_config_from_flags(None, None, "")
    with pytest.raises(InputError, match="use \\[1, 16\\] outside min"):
        shape_config_from_flags("input_ids:2x16", "input_ids:1x16", "input_ids:4x16")
    with pytest.raises(InputError, match="different ranks"):
        shape_config_from_flags("input_ids:1", "input_ids:1x16", None)


# ------------------------------------------------------------------------------------- cache keys


KEY_ARGS = dict(model_digest="a" * 64, profiles=profiles_from_shapes(bert_resolved(), BERT_IO),
                precision=("fp16",), gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
                trt_version="10.3.0", builder_options={"workspace_bytes": None})


def _changed_profile(which: str, delta: int):
    profiles = list(KEY_ARGS["profiles"])
    p = profiles[1]
    values = list(getattr(p, which))
    values[1] += delta
    profiles[1] = InputProfile(p.name, **{**{w: getattr(p, w) for w in ("min", "opt", "max")}, which: tuple(values)})
    return tuple(profiles)


@pytest.mark.parametrize("field,value", [
    ("model_digest", "b" * 64),
    ("profiles", _changed_profile("min", 1)),
    ("profiles", _changed_profile("opt", 1)),
    ("profiles", _changed_profile("max", -1)),
    ("precision", ()),
    ("precision", ("fp16", "int8")),
    ("gpu", {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "9.0"}),
    ("gpu", {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "8.0"}),
    ("trt_version", "10.4.0"),
    ("builder_options", {"workspace_bytes": 1 << 30}),
])
def test_engine_cache_key_changes_with_every_field(field, value):
    base = engine_cache_key(**KEY_ARGS)
    assert base != engine_cache_key(**{**KEY_ARGS, field: value})


def test_engine_cache_key_is_stable():
    base = engine_cache_key(**KEY_ARGS)
    assert len(base) == 64 and int(base, 16) >= 0
    same = dict(KEY_ARGS, gpu=dict(reversed(list(KEY_ARGS["gpu"].items()))),  # key order does not matter
                profiles=tuple(reversed(KEY_ARGS["profiles"])), precision=["fp16", "fp32"])
    assert engine_cache_key(**same) == base
    assert engine_cache_key(**{**KEY_ARGS, "precision": ("int8", "fp16")}) == \
        engine_cache_key(**{**KEY_ARGS, "precision": ("fp16", "int8")})
    with pytest.raises(InputError, match="unknown TensorRT precision 'fp12'"):
        engine_cache_key(**{**KEY_ARGS, "precision": ("fp12",)})


def test_model_digest_covers_the_external_data_file(tmp_path):
    path = tiny_onnx(tmp_path / "model.onnx", external=True)
    data = tmp_path / "model.onnx.data"
    assert data.is_file() and data.stat().st_size >= 16 * 32 * 4
    before = model_digest(path)
    assert before == model_digest(path) and len(before) == 64
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert model_digest(path) != before
    with pytest.raises(ArtifactError, match="is missing"):
        model_digest(tmp_path / "absent.onnx")


def test_engine_cache_round_trip_leaves_no_temp_files(tmp_path):
    cache = EngineCache.beside(tmp_path)
    assert cache.folder == tmp_path / "tensorrt" and cache.timing == tmp_path / "tensorrt" / "timing.cache"
    key = engine_cache_key(**KEY_ARGS)
    other = engine_cache_key(**{**KEY_ARGS, "trt_version": "10.9.0"})
    assert cache.get(key) is None
    path = cache.put(key, b"plan bytes", {"precision": ["fp16"], "build_seconds": 1.5})
    assert path == cache.path_for(key) and path.name == f"{key[:16]}.plan"
    assert cache.get(key) == path and path.read_bytes() == b"plan bytes"
    assert cache.get(other) is None
    meta = json.loads((cache.folder / f"{key[:16]}.plan.json").read_text())
    assert meta["key"] == key and meta["build_seconds"] == 1.5 and meta["bytes"] == len(b"plan bytes")
    cache.put(key, b"new plan", {})
    assert cache.get(key).read_bytes() == b"new plan"
    assert sorted(p.name for p in cache.folder.iterdir()) == [path.name, path.name + ".json"]


def test_engine_cache_ignores_an_entry_without_its_meta_file(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = engine_cache_key(**KEY_ARGS)
    cache.put(key, b"plan", {})
    cache.meta_path(key).unlink()  # as if the process died between the two writes
    assert cache.get(key) is None
    cache.meta_path(key).write_text("{not json")
    assert cache.get(key) is None


# ------------------------------------------------------------------------------------- build checks


def test_int8_without_calibration_needs_a_qdq_model(tmp_path):
    plain = tiny_onnx(tmp_path / "plain.onnx")
    cache = EngineCache(tmp_path / "cache")
    with pytest.raises(InputError, match="int8 needs calibration.*pass calibration data.*QDQ"):
        build_engine(plain, X_PROFILE, precision=("fp16", "int8"), cache=cache)
    with pytest.raises(InputError, match="calibrates at the opt shape \\[2, 16\\]"):
        build_engine(plain, X_PROFILE, precision=("int8",), cache=cache,
                     calibration_feeds=[{"x": np.zeros((4, 16), np.float32)}])
    assert not cache.folder.exists()


@pytest.mark.skipif(BACKEND_READY, reason="checks the error on a machine without TensorRT or a GPU")
def test_qdq_int8_passes_the_checks_then_asks_for_tensorrt(tmp_path):
    qdq = tiny_onnx(tmp_path / "qdq.onnx", qdq=True)
    with pytest.raises(BackendUnavailable, match="tensorrt backend cannot run here"):
        build_engine(qdq, X_PROFILE, precision=("int8",), cache=EngineCache(tmp_path / "cache"))


def test_build_checks_profiles_against_the_model(tmp_path):
    path = tiny_onnx(tmp_path / "model.onnx")
    cache = EngineCache(tmp_path / "cache")
    with pytest.raises(InputError, match="input 'ids', which model.onnx does not have; its inputs are x"):
        build_engine(path, (InputProfile("ids", (1,), (1,), (1,)),), cache=cache)
    with pytest.raises(InputError, match="does not fit its shape \\['\\?', 16\\]"):
        build_engine(path, (InputProfile("x", (1, 8), (1, 16), (1, 16)),), cache=cache)
    with pytest.raises(InputError, match="no shape profiles given"):
        build_engine(path, [], cache=cache)
    with pytest.raises(InputError, match="unknown TensorRT precision 'int4'"):
        build_engine(path, X_PROFILE, precision=("int4",), cache=cache)
    with pytest.raises(InputError, match="workspace_bytes must be a positive"):
        build_engine(path, X_PROFILE, cache=cache, workspace_bytes=0)
    with pytest.raises(ArtifactError, match="is missing"):
        build_engine(tmp_path / "absent.onnx", X_PROFILE, cache=cache)


# ------------------------------------------------------------------------------------- availability


def test_import_needs_no_tensorrt_polygraphy_or_torch():
    code = ("import sys, torchship.runtimes.tensorrt; "
            "print(','.join(m for m in ('tensorrt', 'polygraphy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_require_tensorrt_says_what_is_missing():
    if BACKEND_READY:
        pytest.skip("a GPU and TensorRT are present here: require_tensorrt succeeds")
    with pytest.raises(BackendUnavailable) as info:
        require_tensorrt()
    text = str(info.value)
    assert "\n" not in text
    if not HAVE_GPU:
        assert "no NVIDIA GPU is visible" in text
    if not HAVE_TRT:
        assert EXTRA in text and "tensorrt package is not installed" in text


@pytest.mark.skipif(BACKEND_READY, reason="checks the error on a machine without TensorRT or a GPU")
def test_predictor_asks_for_tensorrt_before_reading_the_engine(tmp_path):
    p = TensorRTPredictor(tmp_path / "absent.plan", BERT_IO)
    feeds = {n: np.ones((1, 4), np.int64) for n in BERT_IO.input_names}
    with pytest.raises(BackendUnavailable, match="tensorrt backend cannot run here"):
        p.infer(feeds)
    assert not p.active


# ------------------------------------------------------------------------------------- on a GPU


@pytest.fixture(scope="module")
def bert_build(exported, tmp_path_factory):
    """The tiny BERT export, its io, the profiles (batch 1..4, sequence 1..32) and a fresh engine cache."""
    from torchship.artifact import Artifact

    art = Artifact.open(exported("bert"))
    io = art.manifest.io()
    config = shape_config_from_flags("input_ids:1x1", "input_ids:2x16", "input_ids:4x32")
    profiles = profiles_from_shapes(resolve(config, io), io)
    return art.path_of("model"), io, profiles, EngineCache(tmp_path_factory.mktemp("trt-cache"))


def _feeds(io, batch, seq):
    from torchship.exporters.inputs import TextShape, make_text_inputs

    return make_text_inputs(io.input_names, TextShape(batch, seq, (seq,) + (seq - 3,) * (batch - 1)),
                            vocab_size=60, seed=7)


def _ort(path, io, feeds):
    from torchship.runtimes.ort import OrtPredictor

    with OrtPredictor(path, io) as p:
        return p.infer(feeds)


@pytest.mark.parametrize("precision", [(), ("fp16",)], ids=["fp32", "fp16"])
@pytest.mark.gpu
@pytest.mark.skipif(not BACKEND_READY, reason=NOT_READY)
def test_engine_matches_onnxruntime(bert_build, precision):
    path, io, profiles, cache = bert_build
    built = build_engine(path, profiles, precision=precision, cache=cache)
    assert built.path.is_file() and built.precision == precision and built.profiles == profiles
    feeds = _feeds(io, 3, 20)  # inside the profile, neither its min nor its opt
    expected = _ort(path, io, feeds)
    with TensorRTPredictor(built.path, io) as p:
        got = p.infer(feeds)
        with pytest.raises(InputError, match="the engine accepts \\[1, 1\\] to \\[4, 32\\]"):
            p.infer(_feeds(io, 2, 40))
    for name in io.output_names:
        assert got[name].shape == expected[name].shape and got[name].dtype == np.float32
        if not precision:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-3)
        else:
            a, b = got[name].ravel().astype(np.float64), expected[name].ravel().astype(np.float64)
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not BACKEND_READY, reason=NOT_READY)
def test_second_build_is_a_cache_hit(bert_build):
    path, _, profiles, cache = bert_build
    first = build_engine(path, profiles, precision=("fp16",), cache=cache)
    stamp = first.path.stat().st_mtime_ns
    second = build_engine(path, profiles, precision=("fp16",), cache=cache)
    assert second.from_cache and second.key == first.key and second.path == first.path
    assert second.path.stat().st_mtime_ns == stamp  # not rebuilt, not rewritten
    assert cache.timing.is_file()
    meta = cache.meta(first.key)
    assert meta["precision"] == ["fp16"] and meta["build_seconds"] > 0 and meta["gpu"]["compute_capability"]
    other = build_engine(path, profiles, precision=(), cache=cache)
    assert other.key != first.key
