import json

import pytest

from torchship.benchmarks.report import markdown_table, write_report
from torchship.benchmarks.results import Measurement
from torchship.benchmarks.run import BenchOptions, run_benchmark
from torchship.benchmarks.timing import TimingPlan, measure_interleaved
from torchship.errors import InputError

QUICK = TimingPlan(warmup=1, min_iterations=5, min_seconds=0.0, block=5, pause_s=0.0)


def test_benchmark_runs_every_backend_and_shape(exported, tmp_path):
    folder = exported("bert", optimized=True)
    opts = BenchOptions(backends=("torch", "ort", "ort-optimized"), shapes=((1, 8), (2, 8), (1, 24), (2, 24)),
                        threads=1, plan=QUICK)
    report = run_benchmark(folder, opts)
    assert len(report.measurements) == 3 * 2 * 2
    for m in report.measurements:
        assert m.iterations >= 5
        assert 0 < m.min_ms <= m.p50_ms <= m.p90_ms <= m.p99_ms
        assert m.throughput == pytest.approx(m.batch * 1000 / m.p50_ms)  # samples/s at the median
        if m.backend == "torch":
            assert m.accuracy is None and report.speedup(m) == 1.0
        else:
            assert m.accuracy.reference == "torch" and m.accuracy.output == "last_hidden_state"
            assert m.accuracy.max_abs < 1e-4 and m.accuracy.cosine_min > 0.9999
    env = report.environment
    assert env.threads == 1 and env.ort_spinning == "run" and env.versions["onnxruntime"]

    paths = write_report(report, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert len(data["measurements"]) == 12 and data["baseline"] == "torch"
    assert data["measurements"][0]["speedup_vs_torch"] == 1.0
    md = paths["markdown"].read_text()
    assert "| ort-optimized | 2 | 24 |" in md and "speedup vs torch" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interleaved_timing_meets_minimums():
    calls = {"a": 0, "b": 0}

    def f(name):
        calls[name] += 1

    plan = TimingPlan(warmup=2, min_iterations=7, min_seconds=0.0, block=3, pause_s=0.0)
    times = measure_interleaved({"a": lambda: f("a"), "b": lambda: f("b")}, plan)
    assert len(times["a"]) >= 7 and len(times["b"]) >= 7
    assert calls["a"] == 2 + len(times["a"])


def test_measurement_percentiles():
    m = Measurement.from_latencies("x", 4, 16, [0.001 * i for i in range(1, 101)])
    assert m.p50_ms == pytest.approx(50.5) and m.p99_ms == pytest.approx(99.01)
    assert m.throughput == pytest.approx(4 * 1000 / 50.5)


def test_bad_bench_options(model_dirs, tmp_path):
    from torchship.exporters.export import export

    folder = tmp_path / "plain"
    export(str(model_dirs("bert")), folder)  # exported, not optimized
    with pytest.raises(InputError, match="exceeds the model's limit of 128"):
        run_benchmark(folder, BenchOptions(backends=("ort",), shapes=((1, 4096),), plan=QUICK))
    with pytest.raises(InputError, match="torchship optimize"):
        run_benchmark(folder, BenchOptions(backends=("ort-optimized",), plan=QUICK))
    with pytest.raises(InputError, match="positive"):
        run_benchmark(folder, BenchOptions(backends=("ort",), shapes=((0, 8),), plan=QUICK))
    with pytest.raises(InputError, match="--threads"):
        run_benchmark(folder, BenchOptions(backends=("ort",), threads=0, plan=QUICK))


def test_markdown_table_without_baseline(exported):
    report = run_benchmark(exported("distilbert"), BenchOptions(backends=("ort",), shapes=((1, 8),),
                                                                threads=1, plan=QUICK))
    assert report.baseline == "ort"
    assert "| ort | 1 | 8 |" in markdown_table(report)
