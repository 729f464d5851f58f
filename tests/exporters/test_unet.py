"""Diffusion UNets: tiny random diffusers UNet2DConditionModels (4 channels, and 9 as inpainting) exported
through the real exporters, validated by ONNX Runtime, benchmarked against eager PyTorch."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli_runner import run
from tiny import TINY_UNET_CONFIGS, make_unet

from torchship.artifact import Artifact
from torchship.benchmarks.run import BenchOptions, run_benchmark
from torchship.benchmarks.timing import TimingPlan
from torchship.errors import InputError
from torchship.exporters.export import ExportOptions, export, export_model
from torchship.exporters.spec import spec_for, supported_model_types
from torchship.exporters.unet import UNetShape
from torchship.optimizers import OptimizeOptions, optimize
from torchship.runtimes import create_predictor
from torchship.shapes import parse_shape_config

QUICK = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3, pause_s=0.0)
SHAPES = {"device": "cpu", "inputs": {
    "sample": {"min": [1, 4, 8, 8], "use": [1, 4, 16, 16], "max": [2, 4, 16, 24]},
    "timestep": {"min": [1], "use": [1], "max": [2]},
    "encoder_hidden_states": {"min": [1, 5, 24], "use": [1, 9, 24], "max": [2, 12, 24]}},
    "outputs": {"out_sample": {"use": [1, 4, 16, 16]}}}


def test_every_registered_unet_has_a_tiny_model():
    assert set(supported_model_types("unet")) == set(TINY_UNET_CONFIGS)


@pytest.mark.slow
def test_export_with_shape_config_validates_min_use_max_and_benchmarks_at_use(unet_dirs, tmp_path):
    """The default path (dynamo): named axes, the config kept, ORT's unet optimizer, bench at the use shape."""
    out = tmp_path / "onnx"
    artifact = export(str(unet_dirs(4)), out, ExportOptions(kind="unet", shapes=parse_shape_config(SHAPES)))
    m = artifact.manifest
    assert (m.family, m.task, m.export["exporter"]) == ("unet", "denoising", "dynamo")
    assert m.inputs == [{"name": "sample", "dtype": "float32", "shape": ["batch", 4, "height", "width"]},
                        {"name": "timestep", "dtype": "float32", "shape": ["steps"]},
                        {"name": "encoder_hidden_states", "dtype": "float32", "shape": ["batch", "sequence", 24]}]
    assert m.output_names == ("out_sample",)
    assert m.export["validation_shapes"] == ["batch 1 x 8x8 latents x 5 tokens", "batch 1 x 16x16 latents x 9 tokens",
                                             "batch 2 x 16x24 latents x 12 tokens, a timestep per sample"]
    assert m.variants["model"].validation.passed and m.variants["model"].validation.max_abs < 1e-4
    assert m.shapes["axes"]["height"] == [8, 16, 16]
    assert m.text == {} and not (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"

    # The graph declares the spec's axis names (dynamo would call timestep's axis "batch").
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    assert [d.dim_param for d in graph.input[1].type.tensor_type.shape.dim] == ["steps"]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == \
        ["batch", 4, "height", "width"]

    artifact = optimize(out, OptimizeOptions(levels=("all",)))
    fused = artifact.manifest.variants["optimized"]
    assert fused.validation.passed and fused.fusion.attention == fused.fusion.expected_attention == 8

    # Any runtime shape the model serves, one timestep broadcast over the batch.
    spec = spec_for("UNet2DConditionModel")
    feeds = spec.sample_inputs(None, m.io(), UNetShape(3, 12, 20, 4, 1), seed=5)
    with create_predictor(artifact, "torch") as torch_p, create_predictor(artifact, "ort-optimized") as ort_p:
        ref, got = torch_p.infer(feeds)["out_sample"], ort_p.infer(feeds)["out_sample"]
    assert got.shape == (3, 4, 12, 20) and np.abs(ref - got).max() < 1e-4

    report = run_benchmark(out, BenchOptions(backends=("torch", "ort-optimized"), threads=1, plan=QUICK))
    assert [m.shape for m in report.measurements] == ["batch 1 x 16x16 latents x 9 tokens"] * 2
    assert {m.phase for m in report.measurements} == {"denoise"}
    assert report.measurements[1].accuracy.max_abs < 1e-4
    assert type(report).from_json(report.to_json()) == report  # results.json reads back (re-plotting)


def test_export_leaves_the_users_unet_alone(tmp_path):
    import torch

    model = make_unet(4, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feeds = (torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 3, 24))
    with torch.no_grad():
        expected = model(*feeds, return_dict=False)[0]
    export_model(model, tmp_path / "onnx", options=ExportOptions(exporter="torchscript"))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(*feeds, return_dict=False)[0], expected)


def test_torchscript_path_and_pipeline_folder(unet_dirs, tmp_path):
    """A diffusers pipeline folder (model_index.json + unet/) exports its UNet; TorchScript works too,
    and ORT's unet optimizer failing on its graph is recorded as skipped, the other variants stand."""
    pipeline = tmp_path / "pipeline"
    shutil.copytree(unet_dirs(9), pipeline / "unet")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline",
                                                           "unet": ["diffusers", "UNet2DConditionModel"]}))
    out = tmp_path / "onnx"
    artifact = export(str(pipeline), out, ExportOptions(exporter="torchscript"))
    assert artifact.manifest.inputs[0]["shape"] == ["batch", 9, "height", "width"]
    assert artifact.manifest.source["resolved"].endswith("pipeline/unet")
    artifact = optimize(out, OptimizeOptions(levels=("basic",)))
    assert "ort-basic" in artifact.manifest.variants
    assert "optimized" in artifact.manifest.variants or "optimized" in artifact.manifest.skipped


def test_validation_shapes_must_not_all_be_the_trace_shape(unet_dirs, tmp_path):
    dummy = {"inputs": {"sample": {"use": [2, 4, 64, 32]}, "timestep": {"use": [2]},
                        "encoder_hidden_states": {"use": [2, 11, 24]}}}
    with pytest.raises(InputError, match="must differ from the export's dummy shape"):
        export(str(unet_dirs(4)), tmp_path / "o", ExportOptions(exporter="torchscript", shapes=parse_shape_config(dummy)))
    assert not (tmp_path / "o").exists()


def one_line_error(proc, pattern):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1 and pattern in errors[0], proc.stderr


@pytest.mark.slow
def test_export_unet_cli_inpainting_then_bench(unet_dirs, tmp_path):
    out = tmp_path / "inpaint"
    proc = run("export-unet", "--model", str(unet_dirs(9)), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "model_optimized.onnx" in proc.stdout and "exporting with dynamo" in proc.stderr
    proc = run("torchship", "bench", str(out), "--backends", "torch,ort", "--min-seconds", "0", "--warmup", "1",
               "--min-iterations", "3")
    assert proc.returncode == 0, proc.stderr
    assert "| ort | batch 1 x 16x16 latents x 77 tokens |" in proc.stdout  # the model's sample_size, 77 tokens
    settings = json.loads((out / "bench" / "results.json").read_text())["settings"]
    assert settings["shapes"] == ["batch 1 x 16x16 latents x 77 tokens"]
    assert (settings["warmup"], settings["min_iterations"]) == (1, 3)
    one_line_error(run("torchship", "predict", str(out), "some text"), "for a UNet torchship bench")


def test_cli_bad_shape_configs_and_wrong_family(unet_dirs, model_dirs, tmp_path):
    out = tmp_path / "never"
    bad = {
        "channels.yml": ("inputs:\n  sample: {use: [1, 4, 16, 16]}\n  timestep: {use: [1]}\n"
                         "  encoder_hidden_states: {use: [1, 7, 24]}\n", "axis 1 is fixed at 9 in the model"),
        "minmax.yml": ("inputs:\n  sample: {min: [2, 9, 16, 16], use: [1, 9, 16, 16], max: [1, 9, 16, 16]}\n",
                       "min [2, 9, 16, 16] > max [1, 9, 16, 16]"),
        "unknown.yml": ("inputs:\n  sample: {use: [1, 9, 16, 16]}\n  mask: {use: [1, 1, 16, 16]}\n",
                        "names input 'mask', which the model does not have"),
        "odd.yml": ("inputs:\n  sample: {use: [1, 9, 15, 16]}\n  timestep: {use: [1]}\n"
                    "  encoder_hidden_states: {use: [1, 7, 24]}\n", "latent height 15 is not a multiple of 2"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        one_line_error(run("export-unet", "--model", str(unet_dirs(9)), "-o", str(out), "--config",
                           str(tmp_path / name), "--exporter", "torchscript"), message)
    one_line_error(run("export-bert", "--model", str(unet_dirs(9)), "-o", str(out)),
                   "is a 'UNet2DConditionModel' model (it is a diffusion UNet: use export-unet)")
    one_line_error(run("export-unet", "--model", str(model_dirs("bert")), "-o", str(out)),
                   "this command exports diffusion UNets of type UNet2DConditionModel")
    assert not out.exists()


def test_missing_diffusers_names_the_extra(unet_dirs, tmp_path):
    """On a machine without diffusers: one line naming the extra (diffusers is blocked from importing)."""
    code = ("import sys; sys.modules['diffusers'] = None; from torchship.cli import export_unet_main; "
            "sys.argv = ['export-unet', '--model', sys.argv[1], '-o', sys.argv[2]]; export_unet_main()")
    proc = subprocess.run([sys.executable, "-c", code, str(unet_dirs(4)), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    one_line_error(proc, "pip install 'torchship[diffusers]'")
    assert not (tmp_path / "o").exists()
