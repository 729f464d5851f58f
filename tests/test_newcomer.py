"""What a newcomer tries in the first half hour, by class of defect: each gets one line, a documented exit
code, no traceback, and no file or folder changed that should not change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_cli import BIN, ENV, assert_one_line_error, run

from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_MISSING, EXIT_VALIDATION


def snapshot(folder) -> dict[str, str]:
    """Every file under ``folder`` with its digest, and every folder."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture()
def bert(exported, tmp_path):
    """A private copy of the tiny exported BERT (commands may change it)."""
    return shutil.copytree(exported("bert"), tmp_path / "bert")


@pytest.fixture()
def blocker(tmp_path):
    """A regular file where a folder's parent should be."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# 1. an output that cannot be written: refused before any work, for every command that writes


def test_outputs_under_a_file_are_refused_before_any_work(model_dirs, bert, blocker):
    before = snapshot(bert)
    cases = [("torchship", "export", "--model", str(model_dirs("bert")), "--output", str(blocker / "out")),
             ("torchship", "bench", str(bert), "--report", str(blocker / "report"), "--min-seconds", "0"),
             ("torchship", "triton", str(bert), "--output", str(blocker / "repo")),
             ("torchship", "demo", "--output", str(blocker / "demo"))]
    for args in cases:
        proc = run(*args)
        assert proc.returncode == EXIT_BAD_INPUT, (args, proc.stderr)
        assert_one_line_error(proc, "is a file")
        assert "torchship: [" not in proc.stderr and "loading" not in proc.stderr, proc.stderr  # no work began
    assert snapshot(bert) == before


# 2. folders torchship did not make are never replaced, and that is checked first


def test_triton_refuses_a_hand_written_model_folder(bert, tmp_path):
    repo = tmp_path / "repo"
    (repo / "mine").mkdir(parents=True)
    (repo / "mine" / "config.pbtxt").write_text('name: "mine"\n')
    proc = run("torchship", "triton", str(bert), "--output", str(repo), "--name", "mine")
    assert_one_line_error(proc, "was not written by torchship")
    assert proc.returncode == EXIT_BAD_INPUT
    assert (repo / "mine" / "config.pbtxt").read_text() == 'name: "mine"\n'


def test_bench_refuses_a_foreign_report_folder_before_measuring(bert, tmp_path):
    report = tmp_path / "notes"
    report.mkdir()
    (report / "mine.txt").write_text("keep me")
    proc = run("torchship", "bench", str(bert), "--report", str(report))
    assert_one_line_error(proc, "not written by torchship")
    assert "[1/" not in proc.stderr  # refused before the first measurement
    assert sorted(p.name for p in report.iterdir()) == ["mine.txt"]


# 3. outputs get the modes mkdir and open give under the user's umask


def test_outputs_get_ordinary_modes(bert, tmp_path):
    old = os.umask(0o022)
    try:
        r = CliRunner().invoke(main, ["triton", str(bert), "--output", str(tmp_path / "repo"), "--name", "m"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["optimize", str(bert), "--levels", "basic", "--no-fusion"])
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    for folder in (tmp_path / "repo" / "m", tmp_path / "repo" / "m" / "1", bert):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    for path in (tmp_path / "repo" / "m" / "config.pbtxt", bert / "ort_basic.onnx", bert / "torchship.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# 4. an interrupted command leaves the folder exactly as it was


def _as_from_a_terminal():
    """Ctrl-C as a terminal delivers it: a suite started in the background (``make test &``) inherits SIGINT
    ignored, which Python, and so torchship, respects, as a background job should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_optimize_changes_nothing(bert, sig):
    before = snapshot(bert)
    proc = subprocess.Popen([str(BIN / "torchship"), "optimize", str(bert)], stderr=subprocess.PIPE, text=True,
                            env=ENV, preexec_fn=_as_from_a_terminal)
    lines = []
    for line in proc.stderr:  # interrupt once the second variant is under way: the first one is written
        lines.append(line)
        if "[2/" in line:
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED, "".join(lines) + rest
    assert "interrupted; nothing was changed" in rest and "Traceback" not in rest
    assert snapshot(bert) == before


# 5. unstable measurements are said


def test_a_wide_spread_is_flagged_and_throughput_uses_the_median():
    from torchship.benchmarks.report import markdown_table
    from torchship.benchmarks.results import BenchReport, Environment, Measurement

    steady = Measurement.from_latencies("torch", 2, 8, [0.010] * 20)
    noisy = Measurement.from_latencies("ort", 2, 8, [0.002] * 10 + [0.010] * 10)
    assert steady.throughput == pytest.approx(200.0) and not steady.unstable
    assert noisy.unstable and noisy.spread > 1.5
    env = Environment("cpu", 2, 2, False, {})
    table = markdown_table(BenchReport("m", {}, env, {}, (steady, noisy)))
    assert "unstable" in table and "not reliable" in table


# 7. predict says what it did to the input


def test_predict_flags_truncation_previews_and_refuses_empty_text(bert):
    long_text = " ".join(["the good movie"] * 400)  # far past the tiny model's 128 positions
    proc = run("torchship", "predict", str(bert), long_text, "a cat")
    assert proc.returncode == 0, proc.stderr
    assert "text 1 has" in proc.stderr and "were cut" in proc.stderr
    assert len(proc.stdout.splitlines()[0]) < 200  # a preview, not the input echoed back
    proc = run("torchship", "predict", str(bert), "fine", "   ")
    assert_one_line_error(proc, "text 2 is empty")
    assert proc.returncode == EXIT_BAD_INPUT


# 8. flags that contradict each other are refused


@pytest.mark.parametrize("args, message", [
    (["bench", "{bert}", "--prompt-length", "16"], "--prompt-length is for decoders"),
    (["quantize", "{bert}", "--method", "dynamic", "--calibration", "{texts}"], "--method dynamic would ignore it"),
    (["triton", "{bert}", "--output", "{repo}", "--no-dynamic-batching", "--preferred-batch-sizes", "2"],
     "needs dynamic batching"),
    (["triton", "{bert}", "--output", "{repo}", "--max-batch-size", "0", "--preferred-batch-sizes", "2"],
     "--max-batch-size 0 turns off"),
    (["bench", "{bert}", "--threads", "0"], "--threads"),
])
def test_contradicting_flags_are_one_line(bert, tmp_path, args, message):
    texts = tmp_path / "texts.txt"
    texts.write_text("a text\n")
    before = snapshot(bert)
    fill = {"bert": str(bert), "texts": str(texts), "repo": str(tmp_path / "repo")}
    r = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert r.exit_code == EXIT_BAD_INPUT and message in r.output, r.output
    assert snapshot(bert) == before and not (tmp_path / "repo").exists()


# 9. every hint names the command that fixes it


def test_a_corrupt_variant_names_the_command_that_remakes_it(exported, tmp_path):
    folder = shutil.copytree(exported("bert", optimized=True), tmp_path / "b")
    (folder / "model_optimized.onnx").write_bytes(b"not onnx")
    proc = run("torchship", "predict", str(folder), "a cat", "--backend", "ort-optimized")
    assert_one_line_error(proc, "corrupted")
    assert f"torchship optimize {folder}" in proc.stderr and "re-run torchship export" not in proc.stderr
    (folder / "model_optimized.onnx").unlink()
    proc = run("torchship", "predict", str(folder), "a cat", "--backend", "ort-optimized")
    assert_one_line_error(proc, f"make it again with: torchship optimize {folder}")


# 10 + 11. triton says what it packaged and why; variants are shown by the backend name that runs them


def test_triton_says_which_variant_and_why(exported, tmp_path):
    from torchship.artifact import Artifact
    from torchship.backends import backend_of_variant

    folder = exported("bert", optimized=True)  # optimize measured which variant runs which shape
    r = CliRunner().invoke(main, ["triton", str(folder), "--output", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    chosen = backend_of_variant(Artifact.open(folder).manifest.dispatch.most_wins()).name
    assert f"packaged {chosen} from" in r.output and "measured fastest at the most shapes" in r.output


def test_optimize_lists_variants_by_backend_name(bert):
    r = CliRunner().invoke(main, ["optimize", str(bert), "--levels", "basic"])
    assert r.exit_code == 0, r.output
    assert "  ort-optimized " in r.output and "  ort-basic " in r.output and "  ort  " in r.output


# 12. exit codes are the documented ones, the same in every command


def test_exit_codes_by_kind_of_failure(bert, tmp_path):
    assert run("torchship", "bench", str(tmp_path / "missing")).returncode == EXIT_BAD_INPUT
    assert run("torchship", "bench", str(bert), "--backends", "nope").returncode == EXIT_BAD_INPUT
    assert run("torchship", "predict", str(bert)).returncode == EXIT_BAD_INPUT  # click usage error
    proc = run("torchship", "tensorrt", str(bert))
    assert proc.returncode == EXIT_MISSING and "torchship[tensorrt]" in proc.stderr
    proc = run("torchship", "quantize", str(bert), "--budget", "1.0")
    assert proc.returncode == EXIT_VALIDATION and "no int8 candidate met the budget" in proc.stderr


# 13. every command's help renders, and the family commands name their own kind of model


def test_every_commands_help_renders():
    for name in main.commands:
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, name
    proc = run("export-gpt2", "--help")
    assert "e.g. gpt2" in proc.stdout and "bert-base-cased" not in proc.stdout and "denoising" not in proc.stdout
    proc = run("torchship", "export", "--help")
    assert "[default: optimize]" in proc.stdout  # one default for torchship export and every export-* command


def test_options_are_checked_before_any_loading(bert):
    proc = run("torchship", "bench", str(bert), "--batch-sizes", "0")
    assert_one_line_error(proc, "--batch-sizes")
    assert "loading" not in proc.stderr


if sys.platform != "linux":  # signals and modes as Linux has them
    pytestmark = pytest.mark.skip(reason="these checks use Linux signals and file modes")


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 64 KiB file system (tmpfs), where a model does not fit; skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(model_dirs, bert, tiny_disk):
    out = tiny_disk / "onnx"
    proc = run("torchship", "export", "--model", str(model_dirs("bert")), "--output", str(out))
    assert proc.returncode == 1 and "No space left on device" in proc.stderr, proc.stderr
    assert_one_line_error(proc, "free space")
    assert list(tiny_disk.iterdir()) == []
    proc = run("torchship", "bench", str(bert), "--report", str(tiny_disk / "r"), "--min-seconds", "0",
               "--min-iterations", "2", "--warmup", "0", "--backends", "ort", "--threads", "1")
    assert proc.returncode in (0, 1), proc.stderr  # a small report may fit; if not, one line, numbers printed
    assert "| ort |" in proc.stdout
    if proc.returncode:
        assert_one_line_error(proc, "free space")
