"""Repairs of what the dynamo exporter's own graph rewrites get wrong, applied to every dynamo export before it is
validated.

onnxscript's opset-23 fusion turns transformers' rotate-half rotary code into ONNX's ``RotaryEmbedding`` and passes
the cos and sin tables through as they are. A model that makes its position ids itself (a Llama-style model as a
classifier) has tables of batch 1 that the unfused graph broadcast over the batch; ``RotaryEmbedding`` without
position ids wants them per row, so ONNX Runtime refuses every batch but one. Expanding the tables to the batch of
the rotated input keeps the fused operator and its meaning.
"""

from __future__ import annotations

ROTARY = "RotaryEmbedding"


def broadcast_rotary_tables(model) -> int:
    """Expand the cos and sin tables of batch 1 of each position-id-less ``RotaryEmbedding`` to its input's batch;
    returns how many nodes were repaired."""
    from onnx import TensorProto, helper

    graph = model.graph
    batch_one = _batch_one(graph)
    repaired, nodes = 0, []
    for node in graph.node:
        if (node.op_type == ROTARY and node.domain in ("", "ai.onnx") and (len(node.input) < 4 or not node.input[3])
                and node.input[1] in batch_one):  # a decoder's tables follow its position ids' batch: left alone
            x = node.input[0]
            tag = f"{node.name or ROTARY}_batch"
            nodes += [helper.make_node("Shape", [x], [f"{tag}_shape"], name=f"{tag}_shape", start=0, end=1),
                      helper.make_node("Concat", [f"{tag}_shape", f"{tag}_ones"], [f"{tag}_to"], name=f"{tag}_to",
                                       axis=0)]
            graph.initializer.append(helper.make_tensor(f"{tag}_ones", TensorProto.INT64, [2], [1, 1]))
            for i in (1, 2):
                expanded = f"{node.input[i]}_{tag}"
                nodes.append(helper.make_node("Expand", [node.input[i], f"{tag}_to"], [expanded],
                                              name=f"{tag}_expand{i}"))
                node.input[i] = expanded
            repaired += 1
        nodes.append(node)
    if repaired:
        del graph.node[:]
        graph.node.extend(nodes)
    return repaired


def _batch_one(graph) -> set[str]:
    """Tensors whose first axis is 1 by the graph's shapes: those it records, and the Cos and Sin of one (the
    fusion adds those two without shapes)."""
    ones = {v.name for v in graph.value_info
            if v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_value == 1}
    for node in graph.node:
        if node.op_type in ("Cos", "Sin") and node.input[0] in ones:
            ones.add(node.output[0])
    return ones


def repair_file(path) -> None:
    """Every repair above, on the ONNX file at ``path`` in place (its external weights untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if broadcast_rotary_tables(model):
        onnx.save(model, str(path))
