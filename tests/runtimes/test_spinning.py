"""ORT worker threads spin during a run and stop when it returns, unless told otherwise."""

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchship._ort import SPIN_MODES, make_session, spin_entries


def _matmuls(path, layers=8, size=256):
    """A chain of MatMuls big enough that ORT runs each on both threads."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32) * 0.05, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [64, size])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return {"x": rng.standard_normal((64, size)).astype(np.float32)}


def _cpu_while_idle(session, feeds, seconds=0.3):
    session.run(None, feeds)
    start = time.process_time()
    time.sleep(seconds)
    return time.process_time() - start


def test_each_mode_sets_orts_entries_and_a_wrong_one_is_refused():
    assert spin_entries("run") == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
    assert spin_entries("always") == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"}
    assert spin_entries("off")["session.intra_op.allow_spinning"] == "0"
    with pytest.raises(ValueError, match="spin must be one of"):
        spin_entries("yes")


@pytest.mark.alone  # measures the CPU a process burns while idle: another test beside it skews that
def test_the_default_mode_leaves_no_thread_spinning_after_a_run(tmp_path):
    feeds = _matmuls(tmp_path / "m.onnx")
    outputs, idle = {}, {}
    for mode in SPIN_MODES:  # one session at a time: process time counts every session's threads
        session = make_session(tmp_path / "m.onnx", threads=2, spin=mode)
        outputs[mode] = session.run(None, feeds)[0]
        idle[mode] = _cpu_while_idle(session, feeds)
        del session
    for mode in SPIN_MODES:
        np.testing.assert_array_equal(outputs[mode], outputs["off"])
    # ORT's own default keeps a worker spinning after the run; the default mode and off let it sleep
    assert idle["run"] < 0.01 and idle["off"] < 0.01, idle
    assert idle["always"] > 3 * max(idle["run"], 0.002), idle
