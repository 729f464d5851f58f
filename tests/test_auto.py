"""torchship auto: every variant that fits the device, validated, benchmarked, the best named; the summary."""

import csv
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from torchship.auto import SUMMARY, VARIANTS, load_auto_config, parse_auto_config, run_auto
from torchship.benchmarks.timing import winner
from torchship.cli import main
from torchship.errors import InputError
from torchship.backends import records

CONFIG = """device: cpu
inputs:
  input_ids: {min: [1, 4], use: [2, 16], max: [4, 48]}
budget: 0.9
threads: 1
min_seconds: 0
"""


@pytest.fixture(scope="module")
def auto_out(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    (root / "auto.yml").write_text(CONFIG)
    out = root / "out"
    report = run_auto(str(model_dirs("bert")), load_auto_config(root / "auto.yml"), out)
    return out, report


def test_auto_builds_validates_and_benchmarks_every_cpu_variant(auto_out):
    out, report = auto_out
    summary = json.loads((out / SUMMARY).read_text())
    rows = {r["backend"]: r for r in summary["variants"]}
    assert set(rows) == set(VARIANTS)
    for backend in ("ort-cuda", "ort-cuda-fp16", "tensorrt", "tensorrt-fp16", "tensorrt-int8"):
        assert rows[backend]["status"] == "skipped: device is cpu"
    cpu = [name for name, b in VARIANTS.items() if not b.needs_gpu]
    for b in cpu:
        r = rows[b]
        assert r["status"] == "ok", (b, r["status"])
        assert r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] and r["size_bytes"] > 0 and r["build_s"] is not None
        assert r["cosine"] > 0.9 and r["max_abs"] >= 0 and r["metric"] == "sentence_cosine"
        assert r["throughput"] > 0 and r["speedup_vs_torch"] > 0
        assert r["throughput"] == pytest.approx(2 * 1000.0 / r["p50_ms"], rel=0.8)  # counts the batch of 2
    assert summary["torch_p50_ms"] > 0 and summary["shape"] == "batch 2 x seq 16"
    # the chosen row is the one the winner rule names from the rows' interleaved rounds (medians as in the summary)
    ok = {name: report.timings[name] for name, r in rows.items() if r["status"] == "ok"}
    assert all(ok[name]["median_ms"] == rows[name]["p50_ms"] and ok[name]["rounds_ms"] for name in ok)
    preference = [b.name for b in sorted((b for b in records() if b.preference is not None), key=lambda b: b.preference)]
    chosen = rows[winner(ok, tuple(preference))[0]]
    assert summary["chosen"] == chosen["backend"] == report.chosen and chosen["chosen"]
    assert [r["backend"] for r in rows.values() if r["chosen"]] == [report.chosen]
    # the folder inside is a complete torchship folder, exported at the config's shapes
    m = json.loads((out / "model" / "torchship.json").read_text())
    assert m["shapes"]["axes"]["batch"] == [1, 2, 4] and {"int8", "openvino", "openvino-fp16"} <= set(m["variants"])
    # the other attention kernels and the FastGelu model are rows like the rest, timed by auto at the use shape;
    # optimize's own per-shape timing is not run, so the folder has no dispatch table
    assert {"optimized-onnx-attention", "optimized-mha", "optimized-approx"} <= set(m["variants"]) and not m.get("dispatch")
    assert rows["ort-optimized-approx"]["file"] == "model_optimized_approx.onnx"


def test_summary_in_every_format(auto_out):
    out, _ = auto_out
    md = (out / "summary.md").read_text()
    assert "(chosen)" in md and "skipped: device is cpu" in md
    for backend in ("ort", "ort-int8", "openvino", "tensorrt-fp16"):
        assert f"| {backend} |" in md or f"| **{backend}** (chosen) |" in md
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(VARIANTS) and {"p50_ms", "cosine", "size_mb", "status"} <= set(rows[0])
    from openpyxl import load_workbook

    wb = load_workbook(out / "summary.xlsx")
    sheet = wb["variants"]
    assert sheet.max_row == len(VARIANTS) + 1 and sheet.cell(1, 1).value == "backend"
    assert wb["run"]["A1"].value == "model"
    png = (out / "latency_vs_error.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_auto_on_a_bare_onnx_file(exported, tmp_path):
    """No Hugging Face folder: the ONNX file alone, validated against itself, ids below its vocabulary."""
    src = exported("bert")
    bare = tmp_path / "elsewhere" / "encoder.onnx"
    bare.parent.mkdir()
    shutil.copyfile(src / "model.onnx", bare)
    cfg = tmp_path / "auto.yml"
    cfg.write_text(CONFIG.replace("budget: 0.9", "budget: 0.9\nprecisions: [fp32, int8]"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["auto", "--model", str(bare), "--config", str(cfg), "--output", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / SUMMARY).read_text())
    rows = {x["backend"]: x for x in summary["variants"]}
    assert summary["torch_p50_ms"] is None  # no checkpoint, no eager PyTorch
    assert rows["ort-optimized"]["status"].startswith("skipped: no transformer fusion")
    assert rows["openvino-fp16"]["status"] == "skipped: precision not in the config"
    assert rows["ort"]["status"] == "ok"
    assert rows["ort-int8"]["status"] == "ok" or rows["ort-int8"]["status"].startswith("below budget")
    assert rows["ort"]["metric"] == "output_cosine"
    m = json.loads((out / "model" / "torchship.json").read_text())
    assert m["family"] == "onnx" and m["export"]["exporter"] == "onnx file"
    vocab = [i for i in onnx.load(str(bare)).graph.initializer if "word_embeddings" in i.name][0].dims[0]
    assert json.loads((out / "model" / "onnx_inputs.json").read_text())["ranges"]["input_ids"] == vocab


@pytest.mark.parametrize("text, message", [
    ("device: cpu\ninputs:\n  input_idz: {use: [1, 8]}\n", "input 'input_idz'"),
    ("device: cpu\ninputs:\n  input_ids: {min: [1, 64], use: [1, 64], max: [1, 8]}\n", "min"),
    ("device: cpu\ninputs:\n  input_ids: {min: [1, 8], use: [1, 99], max: [1, 64]}\n", "use"),
    ("device: cpu\ninputs:\n  input_ids: {use: [1, 8]}\nprecisions: [fp32, fp8]\n", "unknown precision 'fp8'"),
    ("device: cpu\ninputs:\n  input_ids: {use: [1, 8]}\nbudget: 2\n", "budget"),
    ("device: cpu\ninputs:\n  input_ids: {use: [1, 8]}\nthreds: 2\n", "unknown key 'threds'"),
    ("device: cuda:0\ninputs:\n  input_ids: {use: [1, 8]}\n", "no usable NVIDIA GPU"),
])
def test_config_mistakes_are_one_line_and_write_nothing(model_dirs, tmp_path, text, message):
    import torch

    if "cuda" in text and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: a cuda device is not a mistake here")
    cfg = tmp_path / "auto.yml"
    cfg.write_text(text)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["auto", "--model", str(model_dirs("bert")), "--config", str(cfg),
                                  "--output", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("torchship: error")]) == 1
    assert not out.exists()


def test_parse_auto_config_defaults():
    c = parse_auto_config({"device": "cpu", "inputs": {"input_ids": {"use": [1, 8]}}})
    assert c.budget == 0.99 and c.precisions == ("fp32", "fp16", "int8") and c.threads is None
    with pytest.raises(InputError, match="mapping"):
        parse_auto_config(["not", "a", "mapping"])


@pytest.mark.slow
def test_auto_on_minilm_picks_a_variant_within_budget(minilm_dir, tmp_path):
    cfg = tmp_path / "auto.yml"
    cfg.write_text("device: cpu\ninputs:\n  input_ids: {min: [1, 8], use: [1, 128], max: [8, 256]}\n"
                   # int8 only (fp32 and fp16 variants: auto's tiny-model tests); the rows left out say why
                   "budget: 0.99\nprecisions: [int8]\nthreads: 2\nmin_seconds: 0.2\n")
    report = run_auto(str(minilm_dir), load_auto_config(cfg), tmp_path / "out")
    rows = {r.backend: r for r in report.rows}
    chosen = rows[report.chosen]
    assert chosen.metric == "sentence_cosine" and chosen.metric_mean >= 0.99
    assert chosen.speedup_vs_torch > 1.0
    assert rows["ort-int8"].status == "ok" and rows["ort-int8"].metric_mean >= 0.99
    assert np.isfinite([r.p50_ms for r in report.rows if r.status == "ok"]).all()
    assert rows["ort-optimized"].status_text == "skipped: precision not in the config"


def test_auto_on_a_decoder_times_the_use_shapes_decode_step(decoder_dir, tmp_path):
    """GPT-2: the config names the past (batch, heads, past, head size); a use shape with past is one decode
    step with that much past, timed as generate() runs it, eager PyTorch with its KV cache beside."""
    import json as _json

    heads = _json.loads((decoder_dir / "config.json").read_text())["n_head"]
    head = _json.loads((decoder_dir / "config.json").read_text())["n_embd"] // heads
    cfg = tmp_path / "auto.yml"
    cfg.write_text("device: cpu\ninputs:\n"
                   "  input_ids: {min: [1, 1], use: [1, 1], max: [2, 16]}\n"
                   "  attention_mask: {min: [1, 1], use: [1, 17], max: [2, 48]}\n"
                   f"  past_key_values.0.key: {{min: [1, {heads}, 0, {head}], use: [1, {heads}, 16, {head}], "
                   f"max: [2, {heads}, 32, {head}]}}\n"
                   "budget: 0.9\nprecisions: [fp32, int8]\nthreads: 1\nmin_seconds: 0\n")
    report = run_auto(str(decoder_dir), load_auto_config(cfg), tmp_path / "out")
    assert report.shape == "decode step: batch 1, 1 new token, past 16"
    rows = {r.backend: r for r in report.rows}
    assert report.torch_p50_ms > 0 and rows["ort"].status == "ok" and rows["ort"].p50_ms > 0
    assert rows["ort"].metric == "output_cosine" and rows["ort"].cosine > 0.999
    assert report.chosen in rows and rows[report.chosen].chosen
    for name in ("ort-optimized-onnx-attention", "ort-optimized-mha", "ort-optimized-approx"):
        assert rows[name].status_text == "skipped: made only for an encoder's attention"


def test_a_kernel_the_graph_cannot_take_is_a_skipped_row(model_dirs, tmp_path):
    """MPNet's attention does not fuse, so there is no MultiHeadAttention for the other kernels: their rows say
    why they were not made, and the rest are timed and one is chosen."""
    cfg = tmp_path / "auto.yml"
    cfg.write_text(CONFIG + "precisions: [fp32]\n")
    report = run_auto(str(model_dirs("mpnet")), load_auto_config(cfg), tmp_path / "out")
    rows = {r.backend: r for r in report.rows}
    for name in ("ort-optimized-onnx-attention", "ort-optimized-mha"):
        assert rows[name].status_text == ("skipped: not made: the transformer fusion wrote no MultiHeadAttention "
                                          "to rewrite")
    assert rows["ort-optimized"].status_text == "ok" and rows["ort-optimized"].p50_ms > 0
    assert report.chosen in rows and rows[report.chosen].status_text == "ok"


def test_auto_chooses_by_the_winner_rule_not_the_plain_minimum():
    from torchship.auto.choice import AutoReport, Row, choose
    from torchship.backends import backend

    def chosen(timings: dict) -> str:
        rows = [Row.of(backend(name)) for name in timings]
        for r in rows:
            r.p50_ms = timings[r.backend]["median_ms"]
        report = AutoReport("m", {}, "", 0.9, rows=rows, timings=timings)
        choose(report)
        assert [r.backend for r in rows if r.chosen] == [report.chosen]
        return report.chosen

    steady = {"median_ms": 10.0, "rounds_ms": [10.0, 10.1, 9.9, 10.0, 10.0, 10.1]}
    noisy = {"median_ms": 9.75, "rounds_ms": [9.0, 10.5, 9.0, 10.5, 9.0, 10.5]}  # 3 of 6 rounds: noise
    clear = {"median_ms": 9.5, "rounds_ms": [9.5, 9.4, 9.6, 9.5, 9.5, 9.5]}
    assert chosen({"ort-int8": noisy, "ort-optimized": steady}) == "ort-optimized"
    assert chosen({"ort-int8": clear, "ort-optimized": steady}) == "ort-int8"
    # equal timings: the backend table's preference order (ort-optimized before ort), whatever the rows' order
    assert chosen({"ort": steady, "ort-optimized": dict(steady)}) == "ort-optimized"
