"""The decoder benchmark: prefill at several prompt lengths, decode at several past lengths, tokens/s, file size
and peak memory per row, weight-only variants with their judged accuracy, and onnxruntime-genai's build of the
same checkpoint, all on real exports and ONNX Runtime sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import TINY_DECODER_CONFIGS, make_bpe_tokenizer
from torchship.benchmarks import genai
from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
from torchship.benchmarks.report import markdown, markdown_table, write_report
from torchship.benchmarks.results import BenchReport
from torchship.benchmarks.timing import TimingPlan
from torchship.errors import InputError

QUICK = TimingPlan(warmup=1, min_iterations=5, min_seconds=0.0, block=5, pause_s=0.0)
HAS_GENAI = genai.available()


@pytest.fixture(scope="module")
def llama_bench(tmp_path_factory):
    """A tiny Llama (grouped KV heads) exported, with a weight-only int4 variant. Head size 16, not tiny.py's 8:
    onnxruntime's CPU GroupQueryAttention, which the genai builder's graph uses, takes multiples of 16. The BPE
    tokenizer names an end-of-sequence token, which the builder needs for its generation config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from torchship.exporters.export import ExportOptions, export
    from torchship.optimizers.weight_only import WeightOnlyOptions, weight_only

    root = tmp_path_factory.mktemp("llama-bench")
    tokenizer = make_bpe_tokenizer()
    config = AutoConfig.for_model("llama", **{**TINY_DECODER_CONFIGS["llama"], "head_dim": 16},
                                  vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    export(str(root / "model"), root / "onnx", ExportOptions(kind="decoder"))
    weight_only(root / "onnx", WeightOnlyOptions(bits=4, block_size=32))
    return root / "onnx"


def test_lengths_weight_only_rows_sizes_and_peak_memory(llama_bench, tmp_path):
    report = run_decoder_benchmark(llama_bench, DecoderBenchOptions(
        prompt_lengths=(8, 24), past_lengths=(40, 16), threads=1, plan=QUICK, peak_memory=True))
    backends = ("torch", "ort", "ort-wo-int4")  # the defaults: no ort-optimized here, the weight-only variant
    assert report.backends() == list(backends) and report.baseline == "torch"
    cases = {(m.phase, m.sequence, m.past) for m in report.measurements}
    assert cases == {("prefill", 8, 0), ("prefill", 24, 0), ("decode", 1, 16), ("decode", 1, 40)}
    assert len(report.measurements) == len(cases) * len(backends)
    for m in report.measurements:
        assert m.iterations >= 5 and 0 < m.p50_ms <= m.p90_ms
        assert m.tokens_per_s == pytest.approx(m.sequence * 1000 / m.p50_ms)
        if m.backend == "ort":
            assert m.accuracy.max_abs < 1e-4  # last-token logits against eager PyTorch with its cache
    for name in backends:
        assert report.file_bytes[name] > 0
        peak = report.peak_memory[name]
        assert 0 < peak["peak_mb"] <= peak["process_peak_mb"]
    judged = report.judged["ort-wo-int4"]
    assert judged["steps"] == 64 and 0 < judged["max_weight_error"] <= 0.15 and judged["passed"]
    assert set(report.judged) == {"ort-wo-int4"}

    table = markdown_table(report)
    assert "| vs eager | file MB | peak MB |" in table
    assert "| ort-wo-int4 | decode | 1 | 1 | 40 |" in table and "| torch | prefill | 1 | 24 | 0 |" in table
    text = markdown(report)
    assert "worst weight error" in text and "| ort-wo-int4 | 64 |" in text and "Peak MB is the peak memory" in text
    paths = write_report(report, tmp_path / "r")
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["prompt_lengths"] == [8, 24] and data["settings"]["past_lengths"] == [16, 40]
    assert all(row["tokens_per_s"] > 0 for row in data["measurements"])
    again = BenchReport.from_json(data)
    assert again.peak_memory == report.peak_memory and again.judged == report.judged


@pytest.mark.skipif(not HAS_GENAI, reason="onnxruntime-genai is not installed (pip install 'torchship[genai]')")
def test_genai_builds_of_the_same_checkpoint_are_timed_beside_ours(llama_bench, monkeypatch):
    options = DecoderBenchOptions(backends=("torch", "ort", "ort-wo-int4"), prompt_lengths=(8,), past_lengths=(16,),
                                  threads=1, plan=QUICK, genai=True)
    report = run_decoder_benchmark(llama_bench, options)
    # Each builder row right after ours at its precision.
    assert report.backends() == ["torch", "ort", "genai-fp32", "ort-wo-int4", "genai-int4"]
    assert not report.notes
    for m in report.measurements:
        if m.backend == "genai-fp32":  # the same weights and feeds: the same logits as eager PyTorch
            assert m.accuracy.max_abs < 1e-4
    builds = report.settings["genai"]["builds"]
    assert "-p int4" in builds["genai-int4"]["command"] and builds["genai-int4"]["extra_options"]["block_size"] == 32
    assert (llama_bench / "genai" / "int4" / "model.onnx").is_file() and report.file_bytes["genai-int4"] > 0
    assert "not onnxruntime-genai's generation loop" in markdown(report)
    # Built once: a second run reuses the builds (the folder given as a relative path this time).
    monkeypatch.chdir(llama_bench.parent)
    again = run_decoder_benchmark(Path(llama_bench.name), options)
    assert all(b["reused"] for b in again.settings["genai"]["builds"].values())
    assert again.variant_files["genai-int4"] == "genai/int4/model.onnx"

    # A builder that fails (a checkpoint without weights): one line in the report, the bench goes on without it,
    # and the build kept from before is untouched.
    broken = llama_bench.parent / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((llama_bench.parent / "model" / "config.json").read_text())
    report = run_decoder_benchmark(llama_bench, DecoderBenchOptions(
        backends=("ort",), prompt_lengths=(8,), past_lengths=(16,), threads=1, plan=QUICK, genai=True,
        reference_model=str(broken)))
    assert report.backends() == ["ort"]
    assert len(report.notes) == 1 and "no genai-fp32 row: onnxruntime-genai's model builder failed" in report.notes[0]
    assert sorted(p.name for p in (llama_bench / "genai").iterdir()) == ["fp32", "int4"]  # no partial folders left


def test_genai_rows_left_out_with_the_reason(decoder_export, llama_bench):
    options = DecoderBenchOptions(backends=("ort",), prompt_lengths=(8,), past_lengths=(16,), threads=1, plan=QUICK,
                                  genai=True)
    gpt2 = run_decoder_benchmark(decoder_export, options)  # GPT-2: not a model the builder builds
    assert gpt2.backends() == ["ort"] and len(gpt2.notes) == 1 and gpt2.notes[0].startswith("no genai rows: ")
    if HAS_GENAI:
        assert "does not build GPT2LMHeadModel" in gpt2.notes[0]
        hub = run_decoder_benchmark(llama_bench, DecoderBenchOptions(
            backends=("ort",), prompt_lengths=(8,), past_lengths=(16,), threads=1, plan=QUICK, genai=True,
            reference_model="some-org/some-model"))
        assert "is not a local folder" in hub.notes[0]
    assert "Left out:" in markdown(gpt2)


def test_lengths_past_the_models_positions_are_one_line(llama_bench):
    limit = TINY_DECODER_CONFIGS["llama"]["max_position_embeddings"]
    with pytest.raises(InputError, match=f"--past-length {limit} leaves no position"):
        run_decoder_benchmark(llama_bench, DecoderBenchOptions(past_lengths=(16, limit), plan=QUICK))
    with pytest.raises(InputError, match=f"--prompt-length {limit + 1} is outside the model's {limit} positions"):
        run_decoder_benchmark(llama_bench, DecoderBenchOptions(prompt_lengths=(limit + 1,), plan=QUICK))
    # Defaults stay within the positions: prompts 32 and 128, pasts 32 and 127.
    from torchship.benchmarks.decoder import lengths

    assert lengths(DecoderBenchOptions(), limit) == ((32, 128), (32, 127))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchship"), "bench", str(llama_bench),
                           "--past-length", f"16,{limit}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--past-length 128 leaves no position" in proc.stderr


def test_older_callers_and_other_errors(decoder_export, exported):
    report = run_decoder_benchmark(decoder_export, DecoderBenchOptions(
        backends=("torch", "ort-optimized"), batch_sizes=(1, 2), prompt=12, threads=1, plan=QUICK))
    assert {(m.phase, m.batch, m.sequence, m.past) for m in report.measurements} == {
        (p, b, s, past) for b in (1, 2) for p, s, past in (("prefill", 12, 0), ("decode", 1, 12))}
    assert not report.peak_memory and not report.notes  # both off unless asked for
    with pytest.raises(InputError, match="--prompt-length"):
        run_decoder_benchmark(decoder_export, DecoderBenchOptions(prompt=4096, plan=QUICK))
    with pytest.raises(InputError, match="not available for decoders"):
        run_decoder_benchmark(decoder_export, DecoderBenchOptions(backends=("torch-compile",), prompt=16, plan=QUICK))
    with pytest.raises(InputError, match="use torchship bench"):
        run_decoder_benchmark(exported("bert"), DecoderBenchOptions(plan=QUICK))
