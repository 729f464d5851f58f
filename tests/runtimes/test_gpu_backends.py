"""GPU backends (ORT CUDA with IO binding, TensorRT engines) behind the one predictor interface.

What needs no GPU is tested everywhere: backend names, the profiles a folder gets, and the one-line
errors on a machine without a GPU, CUDA provider or TensorRT. What needs one is marked gpu and
skipped, with the reason, where there is none."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from torchship.artifact import Artifact
from torchship.cli import main
from torchship.errors import EXIT_MISSING, BackendUnavailable, InputError
from torchship.runtimes import BACKENDS, RuntimeOptions, create_predictor, parse_backends
from torchship.optimizers.tensorrt_profiles import artifact_profiles
from torchship.runtimes.tensorrt import require_tensorrt

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


def _tensorrt_ready() -> bool:
    try:
        require_tensorrt()
        return True
    except BackendUnavailable:
        return False


def test_every_backend_name_parses():
    for name in ("ort-int8", "ort-fp16", "openvino", "openvino-fp16", "ort-cuda", "ort-cuda-fp16",
                 "tensorrt", "tensorrt-fp16", "tensorrt-int8"):
        assert name in BACKENDS
    assert parse_backends("torch,ort-int8,openvino,tensorrt-fp16") == ("torch", "ort-int8", "openvino", "tensorrt-fp16")


def test_profiles_for_a_folder_without_a_shape_config_cover_the_bench_shapes(exported):
    art = Artifact.open(exported("bert"))
    profiles = {p.name: p for p in artifact_profiles(art)}
    assert set(profiles) == set(art.manifest.input_names)
    for p in profiles.values():
        assert p.min == (1, 1) and p.opt == p.max and p.max[0] >= 8 and p.max[1] >= 16


def test_tensorrt_int8_needs_a_static_int8_model(exported):
    art = Artifact.open(exported("bert"))
    with pytest.raises(InputError, match="static int8"):
        create_predictor(art, "tensorrt-int8")


def test_tensorrt_decoders_are_refused_by_name(decoder_export):
    with pytest.raises(InputError, match="decoders with a KV cache"):
        create_predictor(Artifact.open(decoder_export), "tensorrt-fp16")


@pytest.mark.skipif(_tensorrt_ready(), reason="TensorRT and a GPU are present: the error path cannot happen")
def test_without_a_gpu_tensorrt_fails_with_one_line_naming_the_extra(exported, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(exported("bert"), folder)
    p = create_predictor(Artifact.open(folder), "tensorrt-fp16")  # creating loads nothing
    with pytest.raises(BackendUnavailable, match=r"torchship\[tensorrt\]"):
        p.activate()
    r = CliRunner().invoke(main, ["tensorrt", str(folder), "--precision", "fp16"])
    assert r.exit_code == EXIT_MISSING and "torchship[tensorrt]" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["bench", str(folder), "--backends", "torch,tensorrt-fp16", "--batch-sizes", "1",
                                  "--seq-lens", "8"])
    assert r.exit_code == EXIT_MISSING and "torchship[tensorrt]" in r.output
    assert not (folder / "bench").exists()


def test_tensorrt_flags_are_checked_before_tensorrt_is_needed(exported):
    r = CliRunner().invoke(main, ["tensorrt", str(exported("bert")), "--opt-shapes", "input_ids=1x128"])
    assert r.exit_code == 2 and "input_ids:1x16" in r.output


@pytest.mark.skipif(HAS_CUDA_EP, reason="the CUDA provider is installed: the error path cannot happen")
def test_without_the_cuda_provider_ort_cuda_fails_with_one_line(exported):
    p = create_predictor(Artifact.open(exported("bert")), "ort-cuda")
    with pytest.raises(BackendUnavailable, match=r"torchship\[gpu\]"):
        p.activate()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EP, reason="needs onnxruntime-gpu (torchship[gpu]) and an NVIDIA GPU")
def test_ort_cuda_with_io_binding_matches_the_cpu(exported):
    art = Artifact.open(exported("bert", optimized=True))
    ids = np.arange(2, 42, dtype=np.int64).reshape(2, 20) % 50 + 3
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with create_predictor(art, "ort-cuda", RuntimeOptions(device="cuda")) as gpu, \
            create_predictor(art, "ort-optimized") as cpu:
        a, b = gpu.infer(feeds), cpu.infer(feeds)
    assert np.abs(a["last_hidden_state"] - b["last_hidden_state"]).max() < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT 10 (torchship[tensorrt]) and an NVIDIA GPU")
def test_tensorrt_backend_builds_once_and_matches_ort(exported, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(exported("bert"), folder)
    art = Artifact.open(folder)
    ids = np.arange(2, 42, dtype=np.int64).reshape(2, 20) % 50 + 3
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with create_predictor(art, "tensorrt") as trt, create_predictor(art, "ort") as cpu:
        a, b = trt.infer(feeds), cpu.infer(feeds)
    assert np.abs(a["last_hidden_state"] - b["last_hidden_state"]).max() < 1e-3
    plans = sorted((folder / "tensorrt").glob("*.plan"))
    with create_predictor(art, "tensorrt"):
        pass
    assert sorted((folder / "tensorrt").glob("*.plan")) == plans  # the second activation found it in the cache
