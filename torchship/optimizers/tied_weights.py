"""One table for a tied token embedding and head, in every file that would otherwise copy it.

A checkpoint that ties its head to its token embedding (SmolLM2, Qwen2, Gemma) is exported with the table once:
the embedding's ``Gather`` reads it, the head's ``MatMul`` reads ``Transpose(table)``. Two steps copied it:

- ONNX Runtime's constant folding (every graph level from basic up) turns ``Transpose(table)`` into a second,
  transposed initializer, so each ``ort_*.onnx`` saved from a session carried the table twice and was larger
  than the export. :func:`retie_heads` makes the head read the table itself (``FusedMatMul`` with ``transB``,
  the form ONNX Runtime's own MatMul-Transpose fusion writes) and drops the copy, which a session then has
  nothing to fold back.
- ONNX Runtime's weight-only quantizer takes a MatMul's constant weight only, so the head gets a transposed
  copy to quantize while the embedding keeps the fp32 table. :func:`share_quantized_table` makes the embedding
  read the head's quantized blocks (``GatherBlockQuantized`` over the ``MatMulNBits`` weight, scales and zero
  points, as onnxruntime-genai's builder writes tied checkpoints) and drops the fp32 table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship.onnx_io import drop_unused_initializers

MS = "com.microsoft"


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def embedding_tables(graph) -> dict[str, list]:
    """2-D initializers a ``Gather`` on axis 0 looks rows up in (token embeddings), with those Gathers."""
    inits = {t.name: t for t in graph.initializer}
    tables: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input[0] in inits \
                and len(inits[node.input[0]].dims) == 2 and _attrs(node).get("axis", 0) == 0:
            tables.setdefault(node.input[0], []).append(node)
    return tables


def _plain_matmul(node) -> bool:
    """A MatMul, or a FusedMatMul that scales and transposes nothing."""
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
        return True
    if node.op_type != "FusedMatMul" or node.domain != MS:
        return False
    a = _attrs(node)
    return not any(a.get(k, 0) for k in ("transA", "transB", "transBatchA", "transBatchB")) \
        and a.get("alpha", 1.0) == 1.0


def folded_copies(graph) -> list[tuple[object, str]]:
    """(head node, table): the MatMuls whose weight is an initializer holding a token embedding transposed,
    element for element (what constant folding makes of ``Transpose(table)``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    tables = embedding_tables(graph)
    by_shape = {tuple(reversed(inits[name].dims)): name for name in tables}
    found, values = [], {}
    for node in graph.node:
        if len(node.input) < 2 or node.input[1] not in inits or node.input[1] in tables or not _plain_matmul(node):
            continue
        weight = inits[node.input[1]]
        table = by_shape.get(tuple(weight.dims))
        if table is None:
            continue
        if table not in values:
            values[table] = numpy_helper.to_array(inits[table])
        if np.array_equal(numpy_helper.to_array(weight), values[table].T):
            found.append((node, table))
    return found


def retie_heads(model) -> list[str]:
    """Each head reading a transposed copy of the token embedding reads the table itself (``FusedMatMul``,
    ``transB=1``); copies nothing reads any more are dropped. Returns the tables re-tied; ``model`` changes in
    place."""
    from onnx import helper

    graph = model.graph
    done = []
    for node, table in folded_copies(graph):
        a = node.input[0]
        output, name = list(node.output), node.name
        node.Clear()
        node.CopyFrom(helper.make_node("FusedMatMul", [a, table], output, name=name or f"{table}.head", domain=MS,
                                       transB=1, alpha=1.0))
        done.append(table)
    if done:
        drop_unused_initializers(model)
        _ensure_domain(model)
    return sorted(set(done))


def retie_file(path: Path) -> list[str]:
    """:func:`retie_heads` on an ONNX file, rewritten in place (its external data too) when a head changed."""
    import onnx

    from torchship.external_data import save_model, uses_external_data

    path = Path(path)
    external = uses_external_data(path)
    model = onnx.load(str(path))
    done = retie_heads(model)
    if done:
        save_model(model, path, external=external)
    return done


def share_quantized_table(model, ties: dict[str, str]) -> list[dict]:
    """``ties``: {the head's weight before quantization: the token embedding it was a transposed copy of}. Where
    that head is now a ``MatMulNBits``, each Gather of the embedding becomes a ``GatherBlockQuantized`` over
    the head's blocks (the table's rows are the head's columns, blocked along the hidden size alike), and the
    fp32 table goes. Returns what was shared; ``model`` changes in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    tables = embedding_tables(graph)
    shared = []
    for node in list(graph.node):
        if node.op_type != "MatMulNBits" or node.domain != MS:
            continue
        table = ties.get(node.input[1].rsplit("_Q", 1)[0])
        if table not in tables or node.input[1] not in inits:
            continue
        attrs = _attrs(node)
        bits, block, hidden, vocab = (int(attrs[k]) for k in ("bits", "block_size", "K", "N"))
        if tuple(inits[table].dims) != (vocab, hidden):
            continue
        packed = inits[node.input[1]]  # (vocab, blocks, bytes per block): MatMulNBits' own layout
        row_bytes = int(np.prod(packed.dims[1:]))
        rows = f"{table}.shared_rows"  # the same bytes seen as (vocab, bytes per row), GatherBlockQuantized's
        shape = numpy_helper.from_array(np.array([vocab, row_bytes], np.int64), f"{rows}.shape")
        graph.initializer.append(shape)
        new = [helper.make_node("Reshape", [node.input[1], shape.name], [rows], name=f"{rows}.reshape")]
        padded = row_bytes * 8 // bits  # the last block is padded when the hidden size is not a multiple
        for gather in tables[table]:
            out = gather.output[0] if padded == hidden else f"{gather.output[0]}.padded"
            new.append(helper.make_node("GatherBlockQuantized", [rows, gather.input[1], *node.input[2:]], [out],
                                        name=f"{gather.name or table}.shared", domain=MS, bits=bits,
                                        block_size=block, gather_axis=0, quantize_axis=1))
            if padded != hidden:
                ends = numpy_helper.from_array(np.array([hidden], np.int64), f"{out}.ends")
                zero = numpy_helper.from_array(np.array([0], np.int64), f"{out}.starts")
                last = numpy_helper.from_array(np.array([-1], np.int64), f"{out}.axes")
                graph.initializer.extend([ends, zero, last])
                new.append(helper.make_node("Slice", [out, zero.name, ends.name, last.name], [gather.output[0]],
                                            name=f"{out}.slice"))
        _replace(graph, tables[table], new)
        shared.append({"embedding": table, "table": node.input[1], "bits": bits, "block_size": block,
                       "fp32_bytes_dropped": vocab * hidden * 4})
    if shared:
        drop_unused_initializers(model)
        _ensure_domain(model)
    return shared


def _replace(graph, old: list, new: list) -> None:
    """``new`` nodes in the place of the first of ``old`` (the graph stays in topological order: they read only
    initializers and what the first Gather read)."""
    first = min(list(graph.node).index(n) for n in old)
    kept = [n for i, n in enumerate(graph.node) if n not in old or i == first]
    order = []
    for n in kept:
        order.extend(new if n in old else [n])
    graph.ClearField("node")
    graph.node.extend(order)


def _ensure_domain(model) -> None:
    from onnx import helper

    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
