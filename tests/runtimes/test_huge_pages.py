import platform
from pathlib import Path

import numpy as np
import pytest

from torchship._hugepages import HUGE, added, anonymous_regions
from torchship._ort import make_session


def test_new_memory_is_what_no_earlier_mapping_covered():
    before = [(100, 200), (300, 400)]
    after = [(50, 250), (300, 450), (500, 600)]  # grown below and above, grown at the end, new
    assert added(before, after) == [(50, 100), (200, 250), (400, 450), (500, 600)]
    assert added(before, before) == []
    assert added([], [(1, 2)]) == [(1, 2)]


def _huge_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def _kernel_collapses() -> bool:
    if platform.system() != "Linux" or not Path("/proc/self/smaps_rollup").is_file():
        return False
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return mode.is_file() and "[never]" not in mode.read_text() and (major, minor) >= (6, 1)


@pytest.mark.skipif(not _kernel_collapses(), reason="needs Linux 6.1+ with transparent huge pages not 'never'")
def test_a_cpu_session_has_its_weights_on_huge_pages_and_the_same_outputs(minilm_export):
    path = minilm_export / "model.onnx"
    assert anonymous_regions()
    plain = make_session(path, threads=1, huge_pages=False)
    start = _huge_kib()
    huge = make_session(path, threads=1)
    assert _huge_kib() - start >= 32 * HUGE // 1024  # MiniLM's 90 MB of weights: most of it on 2 MiB pages
    feeds = {i.name: np.ones((2, 7), dtype=np.int64) for i in plain.get_inputs()}
    for a, b in zip(plain.run(None, feeds), huge.run(None, feeds)):
        np.testing.assert_array_equal(a, b)


def test_huge_pages_can_be_turned_off(monkeypatch):
    from torchship._hugepages import enabled

    monkeypatch.setenv("TORCHSHIP_HUGE_PAGES", "0")
    assert not enabled()
    monkeypatch.setenv("TORCHSHIP_HUGE_PAGES", "1")
    assert enabled() == (platform.system() == "Linux")
