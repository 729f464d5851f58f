"""A Triton repository is shared: torchship adds its models beside hand-written ones and other teams', never
touches a file it did not write (a README.md, a model folder, a file put inside one of its own folders), and
says in one line what it cannot do. Serving them on a real tritonserver is in test_serving.py."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from hand_models import snapshot, write_hand_models
from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT
from torchship.serving.inventory import README_BESIDE, TITLE

USER_README = "# Our team's models\n"


def _triton(folder, repo, *args):
    return CliRunner().invoke(main, ["triton", str(folder), "--output", str(repo), *args])


def test_a_readme_the_user_wrote_is_never_replaced(exported, tmp_path):
    bert = exported("bert")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text(USER_README)
    for name in ("b", "c"):  # the second run rewrites torchship's own README beside it
        r = _triton(bert, repo, "--name", name)
        assert r.exit_code == 0, r.output
        assert (repo / "README.md").read_text() == USER_README
        assert f"how to serve it: {repo / README_BESIDE}" in r.output and "not torchship's" in r.output
    ours = (repo / README_BESIDE).read_text()
    assert ours.startswith(TITLE) and "| b |" in ours and "| c |" in ours
    both = tmp_path / "both"
    both.mkdir()
    (both / "README.md").write_text(USER_README)
    (both / README_BESIDE).write_text("notes\n")
    r = _triton(bert, both, "--name", "b")
    assert r.exit_code == EXIT_BAD_INPUT and "were not written by torchship" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert sorted(p.name for p in both.iterdir()) == ["README.md", README_BESIDE]  # refused before any work
    assert (both / README_BESIDE).read_text() == "notes\n"


def test_torchship_writes_beside_hand_written_models_and_never_touches_them(exported, tmp_path):
    bert = exported("bert")
    repo = tmp_path / "repo"
    before = write_hand_models(repo, bert / "model.onnx")
    r = _triton(bert, repo, "--name", "other")
    assert r.exit_code == 0, r.output
    assert snapshot(repo, ("README.md", "hand", "hand_ens", "theirs", "theirs_ens", "notes")) == before
    readme = (repo / README_BESIDE).read_text()
    assert "| other | embedding |" in readme and "not written by torchship" in readme
    assert "| theirs | the onnxruntime backend |" in readme and "| hand_ens | an ensemble of hand |" in readme
    assert "It leaves out notes, theirs, theirs_ens" in readme
    r = _triton(bert, repo, "--name", "hand")
    assert r.exit_code == EXIT_BAD_INPUT and "repo/hand exists and was not written by torchship" in r.output
    assert snapshot(repo, ("README.md", "hand", "hand_ens", "theirs", "theirs_ens", "notes")) == before


def test_a_file_put_inside_a_torchship_model_folder_is_not_replaced(exported, tmp_path):
    bert = exported("bert")
    repo = tmp_path / "repo"
    assert _triton(bert, repo, "--name", "b").exit_code == 0
    (repo / "b" / "1" / "__pycache__").mkdir()  # what the Python backend leaves: torchship's to replace
    (repo / "b" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"x")
    assert _triton(bert, repo, "--name", "b").exit_code == 0
    (repo / "b" / "2").mkdir()
    (repo / "b" / "2" / "model.onnx").write_bytes(b"their version 2")
    r = _triton(bert, repo, "--name", "b")
    assert r.exit_code == EXIT_BAD_INPUT and "holds 2 and 1 more, which torchship did not write" in r.output
    assert (repo / "b" / "2" / "model.onnx").read_bytes() == b"their version 2"


def test_triton_prints_a_summary_and_where_the_config_is(exported, tmp_path, monkeypatch):
    """A short summary instead of the whole config.pbtxt; the README's paths are absolute, whatever the
    working folder, so its docker line and its sources work from anywhere."""
    bert = exported("bert")
    work = tmp_path / "work"
    shutil.copytree(bert, work / "onnx")
    monkeypatch.chdir(work)
    r = _triton("onnx", "repo", "--name", "b", "--max-batch-size", "4")
    assert r.exit_code == 0, r.output
    assert "b: backend python; in TEXT [1]; out EMBEDDING [32], TOKENS [1], TRUNCATED [1]; max batch 4; " \
           "dynamic batching (queue delay 1000 µs); 1 CPU instance" in r.output
    assert "config: repo/b/config.pbtxt" in r.output and "instance_group" not in r.output
    readme = (work / "repo" / "README.md").read_text()
    assert f"-v {work / 'repo'}:/models " in readme and "$PWD" not in readme
    assert f"torchship serve {work / 'repo'}" in readme
    marker = json.loads((work / "repo" / "b" / "torchship-model.json").read_text())
    assert marker["source"] == str(work / "onnx")
    r = _triton("onnx", "tensors", "--name", "t", "--task", "tensors")
    assert r.exit_code == 0 and "t: platform onnxruntime_onnx; in input_ids [-1]" in r.output, r.output
    assert (work / "tensors" / "README.md").read_text().startswith(TITLE)


def test_an_export_folder_is_not_a_repository(exported, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(exported("bert"), folder)
    (folder / "1_Pooling").mkdir()  # as a sentence-transformers export has
    before = sorted(p.name for p in folder.iterdir())
    r = CliRunner().invoke(main, ["serve", str(folder), "--check"])
    assert r.exit_code == EXIT_BAD_INPUT and f"{folder} is a torchship export folder" in r.output, r.output
    assert f"torchship triton {folder} --output REPO" in r.output and "1_Pooling" not in r.output
    r = _triton(folder, folder, "--name", "b")
    assert r.exit_code == EXIT_BAD_INPUT and "is a torchship export folder" in r.output
    assert sorted(p.name for p in folder.iterdir()) == before


def test_serve_with_nothing_it_can_serve_names_each_model_and_its_backend(exported, tmp_path):
    repo = tmp_path / "repo"
    write_hand_models(repo, exported("bert") / "model.onnx")
    for name in ("hand", "hand_ens"):
        shutil.rmtree(repo / name)
    r = CliRunner().invoke(main, ["serve", str(repo), "--check"])
    assert r.exit_code == EXIT_BAD_INPUT and len(r.output.strip().splitlines()) == 1, r.output
    assert "model theirs (not written by torchship): it needs Triton's onnxruntime backend" in r.output
    assert "ensemble theirs_ens (not written by torchship): its step theirs needs Triton's onnxruntime" in r.output
    assert "folder notes (not written by torchship): it is not a Triton model" in r.output
