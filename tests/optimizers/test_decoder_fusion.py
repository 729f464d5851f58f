"""torchship's own decoder fusions: both attention forms give the export's outputs, cache included, at a prompt,
a decode step and a chunk after a past, with left padding; a graph without the pattern is left alone."""

import numpy as np
import onnx
import pytest

from tiny import save_decoder_dir
from torchship._ort import ort_runner
from torchship.exporters.export import ExportOptions, export
from torchship.optimizers.decoder_fusion import ATTENTION_FORMS, decoder_fusions


@pytest.fixture(scope="module")
def phi3_export(tmp_path_factory):
    """Phi-3: fused q/k/v and partial rotary, the least regular of the Llama-shaped families."""
    root = tmp_path_factory.mktemp("fusion-phi3")
    return export(str(save_decoder_dir(root / "model", "phi3")), root / "onnx", ExportOptions(kind="decoder"))


def _feeds(art, batch, seq, past, pad, rng):
    m = art.manifest
    mask = np.ones((batch, past + seq), np.int64)
    mask[1:, :pad] = 0
    positions = np.cumsum(mask, 1) - 1
    positions[positions < 0] = 1
    feeds = {"input_ids": rng.integers(1, 50, (batch, seq)).astype(np.int64), "attention_mask": mask,
             "position_ids": positions[:, past:].astype(np.int64)}
    for t in m.inputs:
        if t["name"].startswith("past_key_values."):
            feeds[t["name"]] = rng.standard_normal((batch, t["shape"][1], past, t["shape"][3])).astype(np.float32)
    return feeds, mask[:, past:].astype(bool)


@pytest.mark.slow
@pytest.mark.parametrize("form", ATTENTION_FORMS)
def test_each_attention_form_gives_the_exports_outputs(phi3_export, form, tmp_path):
    art = phi3_export
    model = onnx.load(str(art.folder / "model.onnx"))
    done = decoder_fusions(model, attention=form)
    layers = art.manifest.num_layers
    assert done == {"attention": form, "attention_layers": layers, "skip_rms_norm": 2 * layers, "merged_matmuls": 0}
    ops = [n.op_type for n in model.graph.node]
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:  # saved in topological order, new constants included
        assert set(node.input) <= known, node.name
        known.update(node.output)
    assert ops.count(form) == layers and "Transpose" not in ops and ops.count("RotaryEmbedding") == 2 * layers
    onnx.save(model, tmp_path / "fused.onnx")
    plain, fused = ort_runner(art.folder / "model.onnx", threads=1), ort_runner(tmp_path / "fused.onnx", threads=1)
    rng = np.random.default_rng(0)
    for batch, seq, past, pad in [(1, 1, 20, 0), (2, 6, 0, 3), (2, 1, 9, 4), (1, 4, 6, 0)]:
        feeds, valid = _feeds(art, batch, seq, past, pad, rng)
        want, got = plain(feeds), fused(feeds)
        np.testing.assert_allclose(got["logits"][valid], want["logits"][valid], atol=1e-4)
        for name in art.manifest.output_names[1:]:
            np.testing.assert_array_equal(got[name], want[name])  # the cache, padding rows included


def test_a_graph_without_the_pattern_is_left_alone():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["s"]), helper.make_node("Relu", ["s"], ["out"])], "plain",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    before = model.SerializeToString()
    assert decoder_fusions(model) == {"attention": "Attention", "attention_layers": 0, "skip_rms_norm": 0,
                                      "merged_matmuls": 0}
    assert model.SerializeToString() == before
