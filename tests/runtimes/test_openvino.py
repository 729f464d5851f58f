"""OpenVINO on the CPU: IR from the export (fp32 and fp16 weights), one predictor interface, bench."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from torchship.artifact import Artifact
from torchship.benchmarks.run import BenchOptions, run_benchmark
from torchship.benchmarks.timing import TimingPlan
from torchship.cli import main
from torchship.errors import EXIT_MISSING, InputError
from torchship.optimizers import OptimizeOptions, optimize
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.text import TextModel

pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'torchship[openvino]'")


@pytest.fixture(scope="module")
def ov_folder(exported, tmp_path_factory):
    dst = tmp_path_factory.mktemp("ov") / "bert"
    shutil.copytree(exported("bert", optimized=True), dst)
    optimize(dst, OptimizeOptions(levels=(), transformer_fusion=False, openvino=True))
    return dst


def test_ir_variants_are_written_and_validated(ov_folder):
    m = Artifact.open(ov_folder).manifest
    for name, sub in (("openvino", "openvino"), ("openvino-fp16", "openvino_fp16")):
        v = m.variants[name]
        assert v.file == f"{sub}/model.xml" and (ov_folder / sub / "model.bin").is_file()
        assert v.stage == "openvino" and v.validation.passed
    assert m.variants["openvino"].validation.max_abs < m.atol
    assert m.variants["openvino-fp16"].validation.accuracy.mean >= 0.999
    assert m.variants["openvino-fp16"].size_bytes < m.variants["openvino"].size_bytes  # tiny: the XML dominates
    assert not [p for p in ov_folder.iterdir() if p.name.endswith(".partial")]


def test_openvino_predictor_matches_ort_at_a_new_shape_and_serves_text(ov_folder):
    art = Artifact.open(ov_folder)
    rng = np.random.default_rng(3)
    ids = rng.integers(5, 50, size=(3, 21)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with create_predictor(art, "openvino", RuntimeOptions(threads=1)) as ov, \
            create_predictor(art, "ort", RuntimeOptions(threads=1)) as ort:
        a, b = ov.infer(feeds), ort.infer(feeds)
        assert set(a) == set(b)
        assert np.abs(a["last_hidden_state"] - b["last_hidden_state"]).max() < 1e-4
        emb = TextModel.from_artifact(art, ov).predict(["OpenVINO runs it", "too"]).embeddings
    assert emb.shape[0] == 2 and np.isfinite(emb).all()


def test_bench_puts_openvino_beside_torch_and_ort(ov_folder):
    plan = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
    report = run_benchmark(ov_folder, BenchOptions(backends=("torch", "ort", "openvino", "openvino-fp16"),
                                                   shapes=((2, 16),), threads=1, plan=plan))
    rows = {m.backend: m for m in report.measurements}
    assert set(rows) == {"torch", "ort", "openvino", "openvino-fp16"}
    assert rows["openvino"].accuracy.max_abs < 1e-4 and rows["openvino-fp16"].accuracy.cosine_min > 0.999


def test_missing_ir_names_the_command(exported):
    art = Artifact.open(exported("bert"))
    with pytest.raises(InputError, match="--openvino"):
        create_predictor(art, "openvino")


def test_without_openvino_installed_one_line_names_the_extra(exported, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(exported("bert"), folder)
    code = ("import sys; sys.modules['openvino'] = None; from torchship.cli import main; "
            f"main(['optimize', {str(folder)!r}, '--levels', '', '--no-fusion', '--openvino'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == EXIT_MISSING, r.stderr
    assert "pip install 'torchship[openvino]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "openvino" not in Artifact.open(folder).manifest.variants


@pytest.mark.slow
def test_minilm_on_openvino_matches_sentence_transformers(minilm_export, minilm_dir, tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(minilm_export, folder)
    art = optimize(folder, OptimizeOptions(levels=(), transformer_fusion=False, openvino=True))
    from sentence_transformers import SentenceTransformer

    from torchship.optimizers.accuracy import DEFAULT_TEXTS, read_texts

    texts = read_texts(DEFAULT_TEXTS, what="sentences")
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, normalize_embeddings=True)
    for backend in ("openvino", "openvino-fp16"):
        with create_predictor(art, backend, RuntimeOptions(threads=2)) as p:
            got = TextModel.from_artifact(art, p).predict(texts).embeddings
        cos = (ref * got).sum(axis=1)
        assert cos.min() > 0.999, (backend, cos.min())


def test_cli_bench_accepts_the_openvino_backends(ov_folder, tmp_path):
    r = CliRunner().invoke(main, ["bench", str(ov_folder), "--backends", "torch,openvino", "--batch-sizes", "1",
                                  "--seq-lens", "8", "--threads", "1", "--min-seconds", "0", "--min-iterations", "2",
                                  "--warmup", "1", "--report", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "| openvino |" in r.output
