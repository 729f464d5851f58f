import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchship._hugepages import HUGE, added, anonymous_regions
from torchship.errors import InputError


def test_new_memory_is_what_no_earlier_mapping_covered():
    before = [(100, 200), (300, 400)]
    after = [(50, 250), (300, 450), (500, 600)]  # grown below and above, grown at the end, new
    assert added(before, after) == [(50, 100), (200, 250), (400, 450), (500, 600)]
    assert added(before, before) == []
    assert added([], [(1, 2)]) == [(1, 2)]


# In a fresh process: a long-lived one (this test run) reuses memory that earlier sessions freed, which stays as
# it was (only memory a session adds is collapsed).
CHECK = r"""
import sys
from pathlib import Path
import numpy as np
from torchship._ort import make_session

def huge_kib():
    line = next(l for l in Path("/proc/self/smaps_rollup").read_text().splitlines() if l.startswith("AnonHugePages:"))
    return int(line.split()[1])

plain = make_session(sys.argv[1], threads=1, huge_pages=False)
start = huge_kib()
huge = make_session(sys.argv[1], threads=1)
gained = huge_kib() - start
feeds = {i.name: np.ones((2, 7), dtype=np.int64) for i in plain.get_inputs()}
same = all(np.array_equal(a, b) for a, b in zip(plain.run(None, feeds), huge.run(None, feeds)))
print(gained, same)
"""


def _kernel_collapses() -> bool:
    if platform.system() != "Linux" or not Path("/proc/self/smaps_rollup").is_file():
        return False
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    return (mode.is_file() and "[never]" not in mode.read_text() and version is not None
            and tuple(map(int, version.groups())) >= (6, 1))


@pytest.mark.skipif(not _kernel_collapses(), reason="needs Linux 6.1+ with transparent huge pages not 'never'")
def test_a_cpu_session_has_its_weights_on_huge_pages_and_the_same_outputs(minilm_export):
    assert anonymous_regions()
    run = subprocess.run([sys.executable, "-c", CHECK, str(minilm_export / "model.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    gained_kib, same = run.stdout.split()
    assert int(gained_kib) >= 32 * HUGE // 1024  # MiniLM's 90 MB of weights: most of it on 2 MiB pages
    assert same == "True"  # bit for bit the outputs of the session without


def test_huge_pages_can_be_turned_off(monkeypatch):
    from torchship._hugepages import enabled

    monkeypatch.setenv("TORCHSHIP_HUGE_PAGES", "0")
    assert not enabled()
    monkeypatch.setenv("TORCHSHIP_HUGE_PAGES", "1")
    assert enabled() == (platform.system() == "Linux")
    monkeypatch.setenv("TORCHSHIP_HUGE_PAGES", "off")
    with pytest.raises(InputError, match="TORCHSHIP_HUGE_PAGES must be 1 .* or 0 .*; it is 'off'"):
        enabled()
