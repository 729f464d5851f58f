"""The served environment's contract: one list of packages, recorded in the install `torchship serve --setup`
builds, and a setup with --if-missing that builds it again when the list changed. Each test makes a stand-in
install in a temporary home; the real one (~/.cache/torchship/triton) is never touched."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from torchship.cli import main
from torchship.errors import BackendUnavailable
from torchship.serving import environment, server
from torchship.serving.environment import UNRECORDED, Package, entries
from torchship.serving.server import Install, find_install

SOUNDFILE = Package("soundfile", "soundfile")  # what an audio modality would add


def _install(root, packages) -> Install:
    """A stand-in install: the files complete() looks for, and install.json recording ``packages`` (None: an
    install made before the list was recorded)."""
    for path in (root / "tritonserver" / "bin" / "tritonserver", root / "env" / "bin" / "python"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    info = {"wheel": "nvidia_pytriton.whl", "server": server.SERVER_VERSION, "python": "3.11.7"}
    (root / "install.json").write_text(json.dumps(info if packages is None else {**info, "packages": packages}))
    return Install(root)


@pytest.fixture
def temp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSHIP_TRITON_HOME", str(tmp_path / "triton"))
    assert server.home() == tmp_path / "triton"
    return tmp_path / "triton"


def test_todays_list_and_the_modules_served_files_may_import():
    assert entries() == ["numpy<2", "tokenizers", "onnxruntime", "pillow"]
    assert environment.modules() == {"numpy", "tokenizers", "onnxruntime", "PIL", "triton_python_backend_utils"}
    assert environment.requirements()[0] == "numpy<2" and environment.requirements()[1].startswith("tokenizers==")
    assert set(environment.versions()) == {"tokenizers", "onnxruntime", "pillow"}


def test_an_install_built_with_todays_list_needs_nothing(temp_home):
    install = _install(temp_home, entries())
    assert install.complete() and install.packages() == entries() and install.outdated() is None
    assert find_install() == install


def test_an_install_made_before_the_list_was_recorded_carries_the_list_of_then(temp_home):
    install = _install(temp_home, None)
    assert install.packages() == list(UNRECORDED) and "adds pillow" in install.outdated()  # images need it


def test_a_changed_list_makes_the_install_outdated(temp_home, monkeypatch):
    install = _install(temp_home, entries())
    monkeypatch.setattr(environment, "PACKAGES", environment.PACKAGES + (SOUNDFILE,))
    assert environment.modules() >= {"soundfile"}
    reason = install.outdated()
    assert reason and "was built with numpy<2, tokenizers, onnxruntime, pillow" in reason and "adds soundfile" in reason
    with pytest.raises(BackendUnavailable, match="adds soundfile; run `torchship serve --setup`"):
        find_install()
    monkeypatch.setattr(environment, "PACKAGES", environment.PACKAGES[:2])  # onnxruntime dropped
    assert "drops onnxruntime" in install.outdated()


def test_setup_if_missing_builds_again_only_when_the_list_changed(temp_home, monkeypatch):
    """`serve --setup --if-missing` with setup itself stood in for: nothing to do on a current install; a build,
    announced with its reason, when the list changed."""
    built = []
    monkeypatch.setattr(server, "setup", lambda wheel, progress=None: built.append(wheel) or Install(temp_home))
    _install(temp_home, entries())
    r = CliRunner().invoke(main, ["serve", "--setup", "--if-missing"])
    assert r.exit_code == 0 and not built, r.output
    assert r.output.strip() == f"the server is set up in {temp_home}"
    monkeypatch.setattr(environment, "PACKAGES", environment.PACKAGES + (SOUNDFILE,))
    r = CliRunner().invoke(main, ["serve", "--setup", "--if-missing"])
    assert r.exit_code == 0 and built == [None], r.output
    assert "adds soundfile: building it again" in r.output and f"the server is set up in {temp_home}" in r.output
