"""The commands as users run them: exit codes, one-line errors; in this process (tests/cli_runner.py), and in a
subprocess where only a process shows it (the console scripts, a hub setting read when huggingface_hub loads)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import run

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_process(*args, env=ENV):
    exe = str(BIN / args[0])
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, env=env, timeout=600)


def assert_one_line_error(proc, pattern):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1, proc.stderr
    assert pattern in errors[0], errors[0]


@pytest.mark.parametrize("cmd", [("torchship",), ("export-bert",), ("export-gpt2",), ("export-decoder",), ("export-unet",),
                                 ("torchship", "export"),
                                 ("torchship", "optimize"), ("torchship", "bench"), ("torchship", "predict"),
                                 ("torchship", "generate"), ("torchship", "demo")])
def test_help(cmd):
    proc = run_process(*cmd, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_export_bert_optimize_bench_predict(model_dirs, tmp_path):
    out = tmp_path / "cli"
    proc = run("export-bert", "--model", str(model_dirs("bert")), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "fused: Attention 2/2" in proc.stdout and "exporting with torchscript" in proc.stderr
    manifest = json.loads((out / "torchship.json").read_text())
    assert "optimized" in manifest["variants"]

    proc = run("torchship", "bench", str(out), "--batch-sizes", "1", "--seq-lens", "8", "--min-seconds", "0",
               "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "| ort-optimized | 1 | 8 |" in proc.stdout
    assert (out / "bench" / "results.json").is_file() and (out / "bench" / "latency.png").is_file()

    proc = run("torchship", "predict", str(out), "good movie", "the cat", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["backend"] == "ort-measured" and len(data["results"]) == 2  # optimize measured the variants
    assert len(data["results"][0]["embedding"]) == 32

    proc = run("torchship", "optimize", str(out), "--levels", "basic", "--no-fusion")
    assert proc.returncode == 0, proc.stderr


def test_torchship_export_classifier_and_predict_labels(model_dirs, tmp_path):
    out = tmp_path / "cls"
    proc = run("torchship", "export", "--model", str(model_dirs("distilbert", "text-classification")), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = run("torchship", "predict", str(out), "awful film")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("'awful film': ") and proc.stdout.split(": ")[1].split(" ")[0] in {
        "negative", "neutral", "positive"}


def test_bad_inputs_give_one_line_and_write_nothing(model_dirs, tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "never"
    cases = [
        (("export-bert", "--model", str(tmp_path / "missing"), "-o", str(out)), "does not exist"),
        (("export-bert", "--model", str(tmp_path / "empty"), "-o", str(out)), "no config.json"),
        (("export-bert", "--model", str(tmp_path / "gpt2"), "-o", str(out)), "is a 'gpt2' model"),
        (("export-bert", "--model", "nobody/no-such-model", "-o", str(out)), "HF_HUB_OFFLINE is set"),
        (("torchship", "optimize", str(tmp_path / "empty")), "has no torchship.json"),
        (("torchship", "predict", str(tmp_path / "missing"), "hi"), "does not exist"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run(*args), pattern)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "gpt2"]


def test_unreachable_hub_without_offline_flag(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf"))
    proc = run_process("export-bert", "--model", "bert-base-cased", "--output", str(tmp_path / "o"), env=env)
    assert_one_line_error(proc, "cannot load 'bert-base-cased'")
    assert "--model DIR" in proc.stderr and not (tmp_path / "o").exists()


def test_corrupted_onnx_and_nonsense_shapes(exported, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exported("bert"), folder)
    for args, pattern in [
        (("--batch-sizes", "0"), "sizes must be 1 or more"),
        (("--seq-lens", "abc"), "'abc', not an integer"),
        (("--seq-lens", "-5"), "sizes must be 1 or more"),
        (("--seq-lens", "100000"), "exceeds the model's limit"),
        (("--backends", "tensorflow"), "unknown backend"),
    ]:
        assert_one_line_error(run("torchship", "bench", str(folder), "--backends", "ort", *args)
                              if "--backends" not in args else run("torchship", "bench", str(folder), *args), pattern)
    for onnx_file in folder.glob("*.onnx"):
        onnx_file.write_bytes(b"not an onnx file")
    assert_one_line_error(run("torchship", "predict", str(folder), "hi"), "corrupted")
    assert_one_line_error(run("torchship", "bench", str(folder), "--backends", "ort", "--min-seconds", "0"),
                          "corrupted")
    assert not (folder / "bench").exists()


def test_export_gpt2_bench_generate(decoder_dir, model_dirs, exported, tmp_path):
    out = tmp_path / "gpt2"
    proc = run("export-gpt2", "--model", str(decoder_dir), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "exporter dynamo opset 23" in proc.stdout and "fused: Attention 2/2" in proc.stdout
    proc = run("torchship", "bench", str(out), "--batch-sizes", "1", "--prompt-length", "12", "--min-seconds", "0",
               "--threads", "1", "--no-peak-memory")
    assert proc.returncode == 0, proc.stderr
    assert "| ort-optimized | decode | 1 | 1 | 12 |" in proc.stdout and "| torch | prefill | 1 | 12 | 0 |" in proc.stdout
    proc = run("torchship", "generate", str(out), "hello world", "--max-new-tokens", "4", "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    # Bad inputs: an encoder to export-gpt2, a decoder to export-bert, a nonsense prompt length.
    assert_one_line_error(run("export-gpt2", "--model", str(model_dirs("bert")), "-o", str(tmp_path / "x")),
                          "use export-bert")
    assert_one_line_error(run("export-bert", "--model", str(decoder_dir), "-o", str(tmp_path / "x")),
                          "use export-gpt2")
    assert_one_line_error(run("torchship", "bench", str(out), "--prompt-length", "5000"), "--prompt-length")
    assert_one_line_error(run("torchship", "generate", str(exported("bert")), "hi"), "generate needs a decoder")
    assert not (tmp_path / "x").exists()
