import json

import pytest

from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
from torchship.benchmarks.report import markdown_table, write_report
from torchship.benchmarks.timing import TimingPlan
from torchship.errors import InputError

QUICK = TimingPlan(warmup=1, min_iterations=5, min_seconds=0.0, block=5, pause_s=0.0)


def test_decoder_benchmark_reports_prefill_and_decode(decoder_export, tmp_path):
    report = run_decoder_benchmark(decoder_export, DecoderBenchOptions(
        backends=("torch", "ort", "ort-optimized"), batch_sizes=(1, 2), prompt=24, threads=1, plan=QUICK))
    phases = {(m.backend, m.phase, m.batch) for m in report.measurements}
    assert len(phases) == 3 * 2 * 2
    for m in report.measurements:
        assert m.iterations >= 5 and 0 < m.p50_ms <= m.p99_ms
        assert (m.sequence, m.past) == ((24, 0) if m.phase == "prefill" else (1, 24))
        if m.backend != "torch":
            assert m.accuracy.max_abs < 1e-4  # last-token logits against eager PyTorch with its cache
    table = markdown_table(report)
    assert "| ort | decode | 1 | 1 | 24 |" in table and "| torch | prefill | 2 | 24 | 0 |" in table
    paths = write_report(report, tmp_path / "r")
    data = json.loads(paths["json"].read_text())
    assert {m["phase"] for m in data["measurements"]} == {"prefill", "decode"}


def test_decoder_benchmark_errors(decoder_export, exported):
    with pytest.raises(InputError, match="--prompt-length"):
        run_decoder_benchmark(decoder_export, DecoderBenchOptions(prompt=4096, plan=QUICK))
    with pytest.raises(InputError, match="not available for decoders"):
        run_decoder_benchmark(decoder_export, DecoderBenchOptions(backends=("torch-compile",), prompt=16, plan=QUICK))
    with pytest.raises(InputError, match="use torchship bench"):
        run_decoder_benchmark(exported("bert"), DecoderBenchOptions(plan=QUICK))
