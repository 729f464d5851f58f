"""Renamed backends, variants and int8 sources: the earlier names keep working wherever a user types one, and a
folder written before the rename (its manifest, dispatch table and file names) opens and runs under both names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_runner import run
from torchship import backends
from torchship.artifact import Artifact
from torchship.optimizers import OptimizeOptions, optimize
from torchship.optimizers.dispatch import DispatchPlan
from torchship.runtimes import RuntimeOptions, create_predictor, parse_backends

RENAMED = {"ort-optimized-sdpa": "ort-optimized-onnx-attention", "ort-optimized-flash": "ort-optimized-mha"}
# What a folder written before the rename holds, as text in its manifest and side files: new -> earlier
EARLIER = {"optimized-onnx-attention": "optimized-sdpa", "optimized_onnx_attention": "optimized_sdpa",
           "optimized-mha": "optimized-flash", "optimized_mha": "optimized_flash"}
QUICK = DispatchPlan(min_rounds=2, max_rounds=3, seconds=0.0, final_rounds=2, final_max_rounds=2)
FEEDS = {"input_ids": np.full((2, 6), 5), "attention_mask": np.ones((2, 6), dtype=np.int64),
         "token_type_ids": np.zeros((2, 6), dtype=np.int64)}


def test_earlier_backend_names_are_aliases():
    for old, new in RENAMED.items():
        assert backends.backend(old).name == new and old in backends.backend(new).aliases
        assert old not in backends.BACKENDS  # offered under the new name only
    assert parse_backends("ort,ort-optimized-flash") == ("ort", "ort-optimized-mha")
    assert backends.backend_of_variant("optimized-sdpa").name == "ort-optimized-onnx-attention"
    assert backends.variant_names("optimized-flash") == ("optimized-mha", "optimized-flash")


@pytest.fixture(scope="module")
def old_folder(exported, tmp_path_factory):
    """A folder as today's version wrote it before the rename: the kernels' variants under their earlier names
    and files, in the manifest, the dispatch table and the rounds' side file."""
    folder = shutil.copytree(exported("bert"), tmp_path_factory.mktemp("old") / "bert")
    optimize(folder, OptimizeOptions(levels=("all",), dispatch=QUICK))
    for name in ("torchship.json", "dispatch_rounds.json"):
        path = folder / name
        if path.is_file():
            text = path.read_text()
            for new, old in EARLIER.items():
                text = text.replace(new, old)
            path.write_text(text)
    for new, old in (("onnx_attention", "sdpa"), ("mha", "flash")):
        (folder / f"model_optimized_{new}.onnx").rename(folder / f"model_optimized_{old}.onnx")
    return folder


def test_a_folder_written_before_the_rename_runs_under_both_names(old_folder):
    art = Artifact.open(old_folder)
    assert {"optimized-sdpa", "optimized-flash"} <= set(art.manifest.variants)
    assert not {"optimized-onnx-attention", "optimized-mha"} & set(art.manifest.variants)
    for old, new in RENAMED.items():
        for name in (old, new):
            with create_predictor(art, name, RuntimeOptions(threads=1)) as predictor:
                assert predictor.infer(FEEDS)["last_hidden_state"].shape[:2] == (2, 6)
        assert art.variant_for(new).name == EARLIER[backends.backend(new).variants[0]]
    with create_predictor(art, "ort-measured", RuntimeOptions(threads=1)) as predictor:  # its table: earlier names
        predictor.infer(FEEDS)
    r = run("torchship", "predict", old_folder, "--backend", "ort-optimized-flash", "a sentence")
    assert r.returncode == 0, r.stderr


def test_triton_serves_a_renamed_variant_under_either_name(old_folder, tmp_path):
    for name in ("optimized-onnx-attention", "optimized-sdpa", "ort-optimized-sdpa"):
        repo = tmp_path / name
        r = run("torchship", "triton", old_folder, "--output", repo, "--name", "m", "--variant", name)
        assert r.returncode == 0, r.stderr
        marker = json.loads((repo / "m" / "torchship-model.json").read_text())
        assert marker["folder_variant"] == "optimized-sdpa"
        assert (repo / "m" / "1" / "model.onnx").read_bytes() == (old_folder / "model_optimized_sdpa.onnx").read_bytes()


def test_a_rerun_on_an_earlier_folder_writes_the_new_names_and_leaves_the_earlier_files(old_folder, tmp_path):
    folder = shutil.copytree(old_folder, tmp_path / "bert")
    art = optimize(folder, OptimizeOptions(levels=(), dispatch=QUICK))
    for new, old in (("onnx_attention", "sdpa"), ("mha", "flash")):
        assert (folder / f"model_optimized_{new}.onnx").is_file() and (folder / f"model_optimized_{old}.onnx").is_file()
    assert {"optimized-onnx-attention", "optimized-mha"} <= set(art.manifest.dispatch.candidates)
    assert art.variant_for("ort-optimized-mha").name == "optimized-mha"  # the new name comes first


def test_earlier_int8_source_names_are_aliases():
    from torchship.optimizers.int8_candidates import QuantizeOptions

    opts = QuantizeOptions(sources=("optimized-ln", "optimized-ln-approx", "optimized-unfused-ln")).checked()
    assert opts.sources == ("optimized-unfused-ln", "optimized-unfused-ln-approx")


def test_quantize_int8_selects_the_int8_method_and_refuses_weight_only(tmp_path):
    r = run("torchship", "quantize", tmp_path, "--int8", "--method", "weight-only")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--int8" in r.stderr and "--method weight-only" in r.stderr
    help_text = run("torchship", "quantize", "--help").stdout
    assert "--int8" in help_text and "weight-only" in help_text
