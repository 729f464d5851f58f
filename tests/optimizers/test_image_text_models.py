"""An image-text model (a tiny random CLIP, built in code) through optimize, quantize --int8 and bench: each tower
fused by ONNX Runtime's clip optimizer with its attention counted per graph, each graph's variants validated alone
and measured per graph; int8 per tower judged by embedding cosine (kept, or refused by its budget with the measure
recorded) and batch-independent; bench's encode-image and encode-text phases beside the preprocessing row."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from torchship.artifact import Artifact
from torchship.benchmarks.timing import TimingPlan
from torchship.errors import BudgetError
from torchship.optimizers.dispatch import DispatchPlan
from torchship.optimizers.optimize import OptimizeOptions, optimize
from torchship.optimizers.quantize import QuantizeOptions, quantize
from torchship.runtimes import RuntimeOptions, create_predictor


QUICK = DispatchPlan(min_rounds=2, max_rounds=2, seconds=0.0, final_rounds=2, final_max_rounds=2, threads=1)
FAST = TimingPlan(warmup=1, min_iterations=2, min_seconds=0.0, block=1)
INT8 = dict(per_channel=(True,), threads=1, timing=FAST)


@pytest.fixture(scope="module")
def clip(towers, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    shutil.copytree(towers("clip") / "onnx", root / "onnx")  # the shared export, copied: optimize writes into it
    optimize(root / "onnx", OptimizeOptions(levels=("disabled", "all"), dispatch=QUICK, approximate=False))
    return root / "onnx"


def test_each_tower_fused_validated_and_measured_alone(clip):
    m = Artifact.open(clip).manifest
    assert m.ort_model_type == "clip"
    fused = m.variants["optimized"]
    assert [(g.name, g.file) for g in fused.graphs] == [("text", "text_model_optimized.onnx"),
                                                        ("vision", "vision_model_optimized.onnx")]
    for g in fused.graphs:  # the text tower's causal attention and the vision tower's, each counted in its graph
        assert g.fusion.attention == g.fusion.expected_attention == 1, g.name
        assert g.validation.passed and g.validation.max_abs < 1e-4
    assert fused.fusion.attention == 2 and fused.fusion.attention_fused
    assert [g.file for g in m.variants["ort-all"].graphs] == ["text_model_ort_all.onnx", "vision_model_ort_all.onnx"]
    assert set(m.graph_dispatch) == {"text", "vision"}
    for graph, choice in m.graph_dispatch.items():
        assert [r["batch"] for r in choice.shapes] == [1, 8, 32]
        assert all(r["winner"] in r["median_ms"] for r in choice.shapes) and choice.variant in m.variants
        assert choice.variant in [r["winner"] for r in choice.shapes]
    art = Artifact.open(clip)
    pixels = {"pixel_values": np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)}
    with create_predictor(art, "ort-measured", RuntimeOptions(threads=1), graph="vision") as measured, \
            create_predictor(art, "ort", RuntimeOptions(threads=1), graph="vision") as plain:
        assert measured.path.name == art.variant(m.graph_dispatch["vision"].variant).graph("vision").file
        np.testing.assert_allclose(measured.infer(pixels)["image_embeds"], plain.infer(pixels)["image_embeds"],
                                   atol=1e-4)
    from torchship.runtimes.auto_backend import choose

    assert choose(art).backend == "ort-measured"


def test_int8_per_tower_kept_within_budget_and_batch_independent(clip, tmp_path):
    from torchship._ort import make_session
    from torchship.optimizers.tower_int8 import batch_cosine, probe_inputs

    folder = shutil.copytree(clip, tmp_path / "q")
    art = quantize(folder, QuantizeOptions(**INT8, budget=0.99))
    v = art.manifest.variants["int8"]
    assert [g.file for g in v.graphs] == ["text_model_int8.onnx", "vision_model_int8.onnx"]
    for g in v.graphs:
        acc = g.validation.accuracy
        assert acc.metric == "embedding_cosine" and acc.mean >= 0.99 and acc.batch_independent
    assert 0.0 <= v.options.extra["zero_shot_top1_agreement"] <= 1.0
    assert set(v.options.extra["speedup_per_graph"]) == {"text", "vision"}
    probes = probe_inputs(art)
    for g in v.graphs:  # an image's (a text's) embedding alone equals it beside others, one of them loud
        session = make_session(folder / g.file, threads=1)
        run = lambda feeds: dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))  # noqa: E731
        assert batch_cosine(run, g.name, probes[g.name], g.outputs[0].name) > 0.99999
    with create_predictor(art, "ort-int8", RuntimeOptions(threads=1), graph="text") as text:
        assert text.path.name == "text_model_int8.onnx"


def test_int8_over_its_budget_is_refused_with_the_measure_recorded(clip, tmp_path):
    folder = shutil.copytree(clip, tmp_path / "q")
    with pytest.raises(BudgetError, match="tower's embedding_cosine mean"):
        quantize(folder, QuantizeOptions(**INT8, budget=1.0))
    m = Artifact.open(folder).manifest
    assert "int8" in m.skipped and "int8" not in m.variants
    tried = {c.extra["graph"]: c.accuracy for c in m.quantization.candidates}
    assert set(tried) == {"text", "vision"}
    assert all(0.9 < a.mean < 1.0 and a.batch_independent for a in tried.values())
    assert not list(folder.glob("*_int8.onnx"))


def test_bench_times_both_towers_against_eager_and_the_preprocessing(clip):
    from torchship.benchmarks.image_preprocess import PHASE, PREPROCESS
    from torchship.benchmarks.run import BenchOptions, run_benchmark

    report = run_benchmark(clip, BenchOptions(backends=("torch", "ort", "ort-optimized"), sizes=({"batch": 2},),
                                              threads=1, plan=FAST))
    rows = {(m.phase, m.backend): m for m in report.measurements}
    assert set(rows) == {(p, b) for p in ("encode-image", "encode-text") for b in ("torch", "ort", "ort-optimized")} \
        | {(PHASE, PREPROCESS)}
    for phase in ("encode-image", "encode-text"):
        fused = rows[(phase, "ort-optimized")]
        assert fused.batch == 2 and fused.accuracy.max_abs < 1e-4 and report.speedup(fused) is not None
    assert rows[("encode-text", "ort")].sequence == 16 and rows[("encode-image", "ort")].sequence == 0
    assert "vision_model_optimized.onnx" in report.variant_files["ort-optimized"]
    assert rows[(PHASE, PREPROCESS)].p50_ms > 0
