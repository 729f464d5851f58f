"""The shape config through the commands, for a text encoder: export validates at its shapes and keeps
it; bench runs at its use shape; a GPU device on a machine without one is one clear line."""

import json

from cli_runner import run


def test_encoder_config_export_then_bench_at_use(model_dirs, tmp_path):
    config = tmp_path / "shapes.yml"
    config.write_text("device: cpu\ninputs:\n  input_ids: {min: [1, 4], use: [2, 24], max: [4, 64]}\n")
    out = tmp_path / "onnx"
    proc = run("export-bert", "--model", str(model_dirs("bert")), "-o", str(out), "--config", str(config),
               "--no-optimize")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "torchship.json").read_text())
    assert manifest["export"]["validation_shapes"] == ["batch 1 x seq 4", "batch 2 x seq 24", "batch 4 x seq 64"]
    assert manifest["shapes"]["axes"] == {"batch": [1, 2, 4], "sequence": [4, 24, 64]}
    # attention_mask and token_type_ids were left out: their axes are named by input_ids.
    assert manifest["shapes"]["inputs"]["attention_mask"]["max"] == [4, 64]

    proc = run("torchship", "bench", str(out), "--backends", "ort", "--min-seconds", "0")
    assert proc.returncode == 0, proc.stderr
    assert "| ort | 2 | 24 |" in proc.stdout
    proc = run("torchship", "bench", str(out), "--backends", "ort", "--min-seconds", "0", "--seq-lens", "8")
    assert proc.returncode == 0 and "| ort | 2 | 8 |" in proc.stdout, proc.stderr


def test_bad_configs_for_an_encoder(model_dirs, tmp_path):
    folder = model_dirs("bert")
    cases = {
        "long.yml": ("inputs:\n  input_ids: {use: [1, 500]}\n", "exceeds the model's limit of 128 positions"),
        "cuda.yml": ("device: cuda\ninputs:\n  input_ids: {use: [1, 8]}\n", "CUDA execution provider is not available"),
        "disagree.yml": ("inputs:\n  input_ids: {use: [1, 8]}\n  attention_mask: {use: [1, 9]}\n",
                         "axis 'sequence' is 8..8 (use 8) in input 'input_ids' but 9..9 (use 9)"),
    }
    out = tmp_path / "onnx"
    proc = run("export-bert", "--model", str(folder), "-o", str(out), "--no-optimize")
    assert proc.returncode == 0, proc.stderr
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        for args in (("export-bert", "--model", str(folder), "-o", str(tmp_path / "never"), "--config"),
                     ("torchship", "bench", str(out), "--backends", "ort", "--min-seconds", "0", "--config")):
            if name == "cuda.yml" and args[0] == "export-bert":
                continue  # export runs on the CPU whatever the device; the device matters where models run
            proc = run(*args, str(tmp_path / name))
            assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
            errors = [line for line in proc.stderr.splitlines() if "error:" in line]
            assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "never").exists() and not (out / "bench").exists()
