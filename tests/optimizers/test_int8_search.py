"""The measured int8 recipe's newer dimensions, on real exports and real ORT sessions: static int8's signed and
unsigned activations and QDQ and QOperator formats, and the fp32 fallback of the most sensitive MatMuls."""

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchship.artifact import Artifact
from torchship.benchmarks.timing import TimingPlan
from torchship.errors import InputError
from torchship.optimizers.int8_candidates import Candidate
from torchship.optimizers.int8_fallback import Sensitivity, ladder
from torchship.optimizers.quantize import FILE, QuantizeOptions, quantize

QUICK = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
CALIBRATION = ["a short one", "the weather is nice today in the park", "hello there",
               "static quantization needs calibration text"]


@pytest.fixture
def bert_copy(exported, tmp_path):
    return shutil.copytree(exported("bert", optimized=True), tmp_path / "bert")


def _weight_matmuls(path) -> list[str]:
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def test_static_tries_signed_and_unsigned_activations_as_qdq_and_as_operators(bert_copy, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(CALIBRATION) + "\n")
    art = quantize(bert_copy, QuantizeOptions(methods=("static",), calibration=str(calib), per_channel=(True,),
                                              budget=0.5, fallback="off", timing=QUICK))
    q = art.manifest.quantization.to_json()
    got = {(c["activation_type"], c["quant_format"]): c for c in q["candidates"]}
    assert set(got) == {("uint8", "qdq"), ("int8", "qdq"), ("uint8", "qoperator"), ("int8", "qoperator")}
    assert len({c["name"] for c in q["candidates"]}) == 4
    assert got[("int8", "qoperator")]["name"] == "static/model/default-ops/per-channel/s8-act/qoperator"
    for c in q["candidates"]:
        assert c["error"] is None and c["accuracy"]["samples"] >= 50, c
    kept = got[(art.manifest.variants["int8"].options.extra["activation_type"],
                art.manifest.variants["int8"].options.quant_format)]
    assert kept["name"] == q["chosen"] and kept["verdict"].startswith("kept")
    # The kept file is what its record says: QLinear operators or Q/DQ pairs; int8 or uint8 activations.
    graph = onnx.load(str(bert_copy / FILE)).graph
    ops = {n.op_type for n in graph.node}
    if kept["quant_format"] == "qoperator":
        assert "QLinearMatMul" in ops or "MatMulInteger" in ops
    else:
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QLinearMatMul" not in ops
    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
                   and n.input[2] in inits]
    want = TensorProto.INT8 if kept["activation_type"] == "int8" else TensorProto.UINT8
    assert zero_points and all(z.data_type == want for z in zero_points)


def test_the_fallback_leaves_the_most_sensitive_matmuls_in_fp32_until_the_budget_is_met(bert_copy):
    base = dict(sources=("model",), per_channel=(False,), op_types=("MatMul",), timing=QUICK)
    quantize(bert_copy, QuantizeOptions(budget=0.01, fallback="off", **base))
    below = Artifact.open(bert_copy).manifest.quantization.to_json()["candidates"][0]["accuracy"]["mean"]
    assert below < 1.0
    weights = _weight_matmuls(bert_copy / "model.onnx")
    budget = (below + 1.0) / 2  # every MatMul in fp32 meets it; the plain candidate does not
    art = quantize(bert_copy, QuantizeOptions(budget=budget, max_fp32=len(weights), **base))
    q = art.manifest.quantization.to_json()
    (target,) = q["fallback"]["targets"]
    assert "no candidate met the budget" in q["fallback"]["trigger"]
    assert target["candidate"] == q["candidates"][0]["name"] and target["ranked"] == len(weights)
    ranking = [r["node"] for r in target["ranking"]]
    assert set(ranking) <= set(weights) and all(r["error"] > 0 for r in target["ranking"])
    errors = [r["error"] for r in target["ranking"]]
    assert errors == sorted(errors, reverse=True)
    tried = [c for c in q["candidates"] if c.get("fallback_of")]
    assert [c["name"] for c in tried] == target["tried"]
    sizes = [len(c["fp32_fallback"]) for c in tried]
    assert sizes == ladder(len(weights), len(weights))[:len(tried)]  # 1, 2, 4, ... stopping at the first pass
    assert all(not c["passed"] for c in tried[:-1]) and tried[-1]["passed"]
    assert target["rescued_by"] == tried[-1]["name"] == q["chosen"]
    assert q["candidates"][0]["verdict"] == f"below budget; rescued by {q['chosen']}"
    kept = art.manifest.variants["int8"]
    assert list(kept.options.fp32_fallback) == ranking[:sizes[-1]]  # the top of the ranking, most sensitive first
    assert kept.validation.accuracy.mean >= budget
    # Those MatMuls are float MatMuls in the kept file; the others are quantized.
    graph = onnx.load(str(bert_copy / FILE)).graph
    float_matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(kept.options.fp32_fallback) <= float_matmuls
    assert any(n.op_type in ("MatMulInteger", "MatMulIntegerToFloat") for n in graph.node) or \
        len(kept.options.fp32_fallback) == len(weights)


def test_fallback_always_screens_every_candidate_and_off_never_runs(bert_copy):
    base = dict(sources=("model",), op_types=("MatMul",), timing=QUICK)
    quantize(bert_copy, QuantizeOptions(budget=0.01, fallback="off", **base))  # per-channel and per-tensor
    q = Artifact.open(bert_copy).manifest.quantization.to_json()
    means = sorted(c["accuracy"]["mean"] for c in q["candidates"])
    assert means[0] < means[1]
    art = quantize(bert_copy, QuantizeOptions(budget=sum(means) / 2, fallback="always", max_fp32=1, **base))
    q = art.manifest.quantization.to_json()
    base_candidates = [c for c in q["candidates"] if not c.get("fallback_of")]
    assert [c["passed"] for c in base_candidates].count(True) == 1
    assert all(c["screen_p50_ms"] > 0 for c in base_candidates)  # timed, to see if the one below budget is faster
    assert "always" in q["fallback"]["trigger"]
    (passing,) = [c for c in base_candidates if c["passed"]]
    (below,) = [c for c in base_candidates if not c["passed"]]
    rescued = below["screen_p50_ms"] < passing["screen_p50_ms"]
    assert [t["candidate"] for t in q["fallback"]["targets"]] == ([below["name"]] if rescued else [])
    if rescued:  # one try (max_fp32=1), recorded, timed if it met the budget
        (tried,) = [c for c in q["candidates"] if c.get("fallback_of")]
        assert len(tried["fp32_fallback"]) == 1 and (tried["p50_ms"] is not None) == tried["passed"]
    with pytest.raises(Exception, match="no int8 candidate met the budget"):
        quantize(bert_copy, QuantizeOptions(budget=1.0, per_channel=(True,), fallback="off", **base))
    q = Artifact.open(bert_copy).manifest.quantization.to_json()
    assert q["fallback"] is None and not any(c.get("fallback_of") for c in q["candidates"])


def test_sensitivity_ranks_the_matmul_whose_tokens_lose_their_resolution_first(tmp_path):
    """Two MatMuls on the same weights; one input has a single outlier token, which sets the tensor's one
    scale (static int8, over the range seen) and leaves every other token a few levels: it ranks first. Dynamic
    int8 scales each token by its own peak, so there the outlier costs the other tokens nothing."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 8]) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["a"], name="plain"),
                               helper.make_node("MatMul", ["y", "w"], ["b"], name="outlier")],
                              "g", [x, y], outs, [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    xs = rng.standard_normal((4, 16)).astype(np.float32)
    ys = xs.copy()
    ys[0] *= 500.0
    sensitivity = Sensitivity(path, {"x": xs, "y": ys}, tmp_path)
    ranking = sensitivity.rank(Candidate("static", "model", True, False, None, (), "uint8", "qdq"))
    assert [r["node"] for r in ranking] == ["outlier", "plain"]
    assert ranking[0]["error"] > 5 * ranking[1]["error"]
    per_row = {r["node"]: r["error"] for r in sensitivity.rank(Candidate("dynamic", "model", True, False, None, ()))}
    assert per_row["outlier"] < 2 * per_row["plain"]
    # Nodes the candidate leaves in fp32 are not ranked.
    assert [r["node"] for r in sensitivity.rank(
        Candidate("dynamic", "model", True, False, None, ("outlier",)))] == ["plain"]


def test_the_ladder_doubles_up_to_the_cap():
    assert ladder(8, 37) == [1, 2, 4, 8]
    assert ladder(6, 37) == [1, 2, 4, 6]
    assert ladder(8, 3) == [1, 2, 3]
    assert ladder(0, 10) == [] and ladder(4, 0) == []


@pytest.mark.parametrize("options, message", [
    (QuantizeOptions(activation_types=("int4",)), "unknown activation type 'int4'"),
    (QuantizeOptions(quant_formats=()), "at least one quantization format"),
    (QuantizeOptions(fallback="sometimes"), "unknown fp32 fallback 'sometimes'"),
    (QuantizeOptions(max_fp32=-1), "0 or more"),
])
def test_bad_search_options_are_one_line_errors(options, message):
    with pytest.raises(InputError, match=message):
        options.checked()


def test_approximate_gelu_is_a_source_asked_for_and_judged_like_any_other(bert_copy):
    from click.testing import CliRunner

    from torchship.cli import main

    r = CliRunner().invoke(main, ["quantize", str(bert_copy), "--approximate-gelu", "--from", "optimized-unfused-ln",
                                  "--per-channel", "yes", "--op-types", "MatMul", "--budget", "0.5", "--threads", "1"])
    assert r.exit_code == 0, r.output
    q = Artifact.open(bert_copy).manifest.quantization.to_json()
    by_source = {c["source"]: c for c in q["candidates"]}
    assert set(by_source) == {"optimized-unfused-ln", "optimized-unfused-ln-approx"}  # asked for: not in the default set
    approx = by_source["optimized-unfused-ln-approx"]
    assert approx["approximate"].startswith("GELU as its tanh") and "approximate" not in by_source["optimized-unfused-ln"]
    assert approx["disabled_optimizers"] == ["SkipLayerNormFusion"] and approx["accuracy"]["samples"] >= 50
    art = quantize(bert_copy, QuantizeOptions(sources=("optimized-unfused-ln-approx",), per_channel=(True,),
                                              op_types=("MatMul",), budget=0.5, timing=QUICK))
    v = art.manifest.variants["int8"]
    assert v.options.source == "optimized-unfused-ln-approx" and v.options.approximate
    ops = [n.op_type for n in onnx.load(str(bert_copy / FILE)).graph.node]
    assert "FastGelu" in ops and "BiasGelu" not in ops and "Gelu" not in ops
