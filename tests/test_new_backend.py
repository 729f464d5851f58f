"""A backend defined entirely in this file: one record, one builder and one predictor, registered for one test,
runs through optimize, bench, predict and triton like the built-in ones.

The backend (``ort-lean``) runs the export with every Identity node bypassed and its nodes renamed: a small but
real rewrite of the graph, made by its own builder, validated against eager PyTorch like every exact variant, and
run by its own predictor (ONNX Runtime, no graph optimizations, so that it runs the file as written)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from cli_runner import run
from torchship import backends
from torchship.artifact import Artifact, Variant, model_bytes
from torchship.manifest_sections import BuildOptions
from torchship.backends import Backend, Build
from torchship.runtimes.base import Predictor

VARIANT, FILE = "lean", "model_lean.onnx"


def make_lean(build: Build, record: Backend) -> Variant:
    """The builder: the export with Identity nodes bypassed and every node named ``lean_<i>``, validated."""
    import onnx

    from torchship.external_data import staged_model
    from torchship.optimizers.builders import context, summary

    ctx = context(build)  # the export, the reference cases and the tolerance of this optimize run
    start = time.perf_counter()
    model = onnx.load(str(ctx.src))
    outputs = {o.name for o in model.graph.output}
    rename, kept = {}, []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
            continue
        node.input[:] = [rename.get(i, i) for i in node.input]
        kept.append(node)
    for i, node in enumerate(kept):
        node.name = f"lean_{i}"
    del model.graph.node[:]
    model.graph.node.extend(kept)
    path = ctx.folder / record.files[0]
    with staged_model(path) as tmp:
        onnx.save(model, str(tmp))
        validation = ctx.validated(tmp, record.variants[0])
    return Variant(name=record.variants[0], file=path.name, stage="lean",
                   options=BuildOptions(session_level="disabled", extra={"bypassed_identities": len(rename)}),
                   size_bytes=model_bytes(path), seconds=round(time.perf_counter() - start, 3),
                   validation=summary(validation))


class LeanPredictor(Predictor):
    backend = "onnxruntime-lean"

    def __init__(self, path, io, threads):
        super().__init__(io)
        self.path, self.threads, self.session = path, threads, None

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = self.threads or 0
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _infer(self, feeds):
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def _deactivate(self) -> None:
        self.session = None


def lean_predictor(artifact, record, options) -> LeanPredictor:
    """The predictor factory: the variant's file, or the error that names the command that makes it."""
    from torchship.runtimes import require_variant

    return LeanPredictor(artifact.path_of(require_variant(artifact, record)), artifact.manifest.io(), options.threads)


LEAN = Backend("ort-lean", "onnxruntime", "fp32", "cpu", "the export, Identity nodes bypassed",
               f"{__name__}:make_lean", f"{__name__}:lean_predictor", (VARIANT,), (FILE,),
               "torchship optimize {folder}", swept=False, serving=(backends.PYTHON, backends.ONNXRUNTIME),
               aliases=("ort-skinny",))


@pytest.fixture()
def lean():
    with backends.registered(LEAN) as record:
        yield record
    assert backends.find("ort-lean") is None and backends.find("ort-skinny") is None  # undone


def test_a_backend_defined_in_a_test_runs_optimize_bench_predict_and_triton(lean, exported, tmp_path):
    from torchship.serving.triton_repo import parse_config

    folder = shutil.copytree(exported("bert"), tmp_path / "bert")
    assert backends.backend("ort-skinny") is lean and "ort-lean" in backends.BACKENDS

    r = run("torchship", "optimize", folder, "--levels", "basic", "--no-fusion", "--candidates", "preset")
    assert r.returncode == 0, r.stderr
    m = Artifact.open(folder).manifest
    assert m.variants[VARIANT].validation.passed and (folder / FILE).is_file() and "[1/2] ort-basic" in r.stderr
    import onnx

    nodes = onnx.load(str(folder / FILE)).graph.node
    assert all(n.name.startswith("lean_") for n in nodes) and not any(n.op_type == "Identity" for n in nodes)

    report = tmp_path / "bench"
    r = run("torchship", "bench", folder, "--backends", "ort,ort-skinny", "--batch-sizes", "1", "--seq-lens", "8",
            "--min-seconds", "0", "--warmup", "1", "--min-iterations", "3", "--report", report)
    assert r.returncode == 0, r.stderr
    rows = json.loads((report / "results.json").read_text())["measurements"]
    assert {row["backend"] for row in rows} == {"ort", "ort-lean"}

    r = run("torchship", "predict", folder, "--backend", "ort-lean", "--json", "a dog is running")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["backend"] == "ort-lean"
    r = run("torchship", "predict", folder, "--backend", "ort", "--json", "a dog is running")
    np.testing.assert_allclose(out["results"][0]["embedding"], json.loads(r.stdout)["results"][0]["embedding"],
                               atol=1e-5)

    # Both serving layouts the record names: ONNX Runtime inside the Python model, and Triton's own onnxruntime
    # backend between the tokenizing and post-processing models.
    for runtime, served in (("python", "lean"), ("onnxruntime", "lean_model")):
        repo = tmp_path / f"repo-{runtime}"
        r = run("torchship", "triton", folder, "--output", repo, "--name", "lean", "--variant", "ort-skinny",
                "--runtime", runtime)
        assert r.returncode == 0, r.stderr
        config = parse_config((repo / served / "config.pbtxt").read_text())
        assert (config.backend, config.platform) == (("python", "") if runtime == "python" else ("", "onnxruntime_onnx"))
        marker = json.loads((repo / served / "torchship-model.json").read_text())
        assert (marker["variant"], marker["folder_variant"]) == ("ort-lean", VARIANT)
        assert (repo / served / "1" / "model.onnx").read_bytes() == (folder / FILE).read_bytes()


def test_a_backend_no_serving_layout_serves_is_refused_by_triton(exported, tmp_path):
    from dataclasses import replace

    folder = shutil.copytree(exported("bert"), tmp_path / "bert")
    with backends.registered(replace(LEAN, serving=())):
        assert run("torchship", "optimize", folder, "--levels", "", "--no-fusion", "--candidates", "preset") \
            .returncode == 0
        r = run("torchship", "triton", folder, "--output", tmp_path / "repo", "--variant", "ort-lean")
    assert r.returncode != 0 and "cannot be served by Triton" in r.stderr


def test_registering_a_taken_name_is_refused():
    from torchship.errors import InputError

    with pytest.raises(InputError, match="is taken"):
        backends.register(Backend("ort-optimized-sdpa", "onnxruntime", "fp32", "cpu", "", None, LEAN.predictor))
    with pytest.raises(InputError, match="built in"):
        backends.unregister("ort")
