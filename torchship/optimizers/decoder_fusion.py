"""Decoder graph fusions ONNX Runtime does not make itself on a dynamo export of a Llama-shaped model.

The dynamo exporter writes each attention layer in standard ONNX: the projections reshaped and transposed
to (batch, heads, sequence, head size), ``RotaryEmbedding`` on queries and keys, the new keys and values
concatenated to the past, the opset-23 ``Attention`` op, and a transpose and reshape back. Per decode step
that is a dozen small nodes per layer around one attention, and at batch 1 a decode step is so short that
their dispatch costs as much as the attention itself. ONNX Runtime's own optimizer fuses none of it.

:func:`fuse_attention` rewrites each such layer to one 3-D attention node that holds the cache: ONNX's own
``Attention`` (opset 23, which takes the past and gives the present) or ``GroupQueryAttention`` (ONNX
Runtime's contrib op, the one onnxruntime-genai's builder writes). Rotary stays the export's own
``RotaryEmbedding`` (on the 3-D projections, so positions come from ``position_ids`` exactly as before), the
cache stays in the export's layout (batch, KV heads, past, head size) with the same input and output names,
and the export's own boolean mask (causal, padding, sliding window) is passed on (``GroupQueryAttention``
takes it as an additive ``attention_bias``), so left padded batches give the same results as the export. Partial rotary
(Phi-3's ``Concat(rotary(x[..., :d]), x[..., d:])``) becomes the op's ``rotary_embedding_dim``. A layer
that does not match the expected pattern is left as it is; the counts say how many were rewritten.

:func:`fuse_skip_rms_norm` replaces ``Add`` followed by ``RMSNormalization`` (the residual and the next
norm) with ``SkipSimplifiedLayerNormalization``, which gives both the sum and the normalized value.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from torchship.optimizers.graph_edit import Graph

MS = "com.microsoft"
_BSHD = [0, 2, 1, 3]


def _bshd_source(g: Graph, value: str, users: int = 1):
    """``value`` = Transpose(perm 0,2,1,3)(X) with X in (batch, sequence, heads, head size), feeding ``users``
    nodes and nothing else: (X's name, the Transpose), else (None, None)."""
    t = g.producer.get(value)
    if t is None or t.op_type != "Transpose" or g.attr(t, "perm") != _BSHD:
        return None, None
    if len(g.consumers.get(value, [])) != users or value in g.outputs:
        return None, None
    return t.input[0], t


def _ints(g: Graph, value: str):
    from onnx import numpy_helper

    t = g.constants.get(value)
    return None if t is None else [int(x) for x in numpy_helper.to_array(t).reshape(-1)]


def _rotated(g: Graph, value: str):
    """``value`` = RotaryEmbedding(T), or the partial form Concat(RotaryEmbedding(T[..., :d]), T[..., d:]):
    (the rotary node, T, d or 0 for whole heads, the nodes replaced); no rotary at all (GPT-2): (None, value,
    0, []); else None."""
    n = g.producer.get(value)
    if n is None or g.only_consumer(value) is None:
        return None
    if n.op_type == "Transpose":
        return None, value, 0, []
    if n.op_type == "RotaryEmbedding" and len(n.input) == 3 and not g.attr(n, "rotary_embedding_dim", 0):
        return n, n.input[0], 0, [n]
    if n.op_type != "Concat" or len(n.input) != 2 or g.attr(n, "axis") not in (-1, 3):
        return None
    rot, tail = g.producer.get(n.input[0]), g.producer.get(n.input[1])
    if not rot or rot.op_type != "RotaryEmbedding" or len(rot.input) != 3 or not tail or tail.op_type != "Slice":
        return None
    head = g.producer.get(rot.input[0])
    if not head or head.op_type != "Slice" or head.input[0] != tail.input[0]:
        return None
    h, t = [[_ints(g, x) for x in s.input[1:]] for s in (head, tail)]
    # starts, ends, axes (the last: head size), steps (1)
    plain = all(len(x) >= 3 and x[2] in ([-1], [3]) and (len(x) < 4 or x[3] == [1]) for x in (h, t))
    if not plain or h[0] != [0] or not h[1] or h[1] != t[0]:
        return None
    return rot, head.input[0], h[1][0], [n, rot, head, tail]


def _dims(g: Graph, shape: str) -> int | None:
    """How many entries a Reshape's shape input has, when it is a constant or a Concat of single values."""
    const = _ints(g, shape)
    if const is not None:
        return len(const)
    n = g.producer.get(shape)
    if n is None or n.op_type != "Concat":
        return None
    parts = [_ints(g, i) for i in n.input]
    if any(p is not None and len(p) != 1 for p in parts):
        return None
    return len(n.input)  # a computed part is taken as one value (a Shape slice or a gathered size)


def _match_layer(g: Graph, att, heads: tuple[int, int] | None):
    """The pieces of one exported attention layer, or None when it is not the expected pattern. ``heads``
    (query heads, KV heads) is needed where no rotary node says them."""
    if not 3 <= len(att.input) <= 4 or len(att.output) != 1:
        return None
    k_cat, v_cat = g.producer.get(att.input[1]), g.producer.get(att.input[2])
    if not all(c and c.op_type == "Concat" and len(c.input) == 2 and g.attr(c, "axis") in (-2, 2)
               for c in (k_cat, v_cat)):
        return None
    if k_cat.output[0] not in g.outputs or v_cat.output[0] not in g.outputs:
        return None  # the cache must be the graph's present outputs
    q, k = _rotated(g, att.input[0]), _rotated(g, k_cat.input[1])
    if not q or not k or q[2] != k[2] or (q[0] is None) != (k[0] is None):
        return None
    q_src, q_t = _bshd_source(g, q[1], users=2 if q[2] else 1)
    k_src, k_t = _bshd_source(g, k[1], users=2 if k[2] else 1)
    v_src, v_t = _bshd_source(g, v_cat.input[1])
    if not (q_src and k_src and v_src):
        return None
    out_t, views = g.only_consumer(att.output[0]), []
    if out_t is not None and out_t.op_type == "Reshape" and _dims(g, out_t.input[1]) == 4:
        views, out_t = [out_t], g.only_consumer(out_t.output[0])  # a view to the same 4-D shape (Phi-3)
    if not out_t or out_t.op_type != "Transpose" or g.attr(out_t, "perm") != _BSHD:
        return None
    out_r = g.only_consumer(out_t.output[0])
    if not out_r or out_r.op_type != "Reshape":
        return None
    q_rot, k_rot = q[0], k[0]
    if q_rot is None:
        heads, kv_heads = heads or (None, None)
    else:
        heads, kv_heads = g.attr(q_rot, "num_heads"), g.attr(k_rot, "num_heads")
        if g.attr(q_rot, "interleaved", 0) != g.attr(k_rot, "interleaved", 0):
            return None
    if not heads or not kv_heads or g.attr(att, "qk_matmul_output_mode", 0) != 0:
        return None
    return dict(att=att, q_rot=q_rot, k_rot=k_rot, k_cat=k_cat, v_cat=v_cat, q=q_src, k=k_src, v=v_src,
                rotary_dim=q[2], replaced=[att, k_cat, v_cat, q_t, k_t, v_t, out_t, *views, *q[3], *k[3]],
                out_r=out_r, heads=heads, kv_heads=kv_heads)


_PROJECTIONS = ("MatMul", "MatMulNBits", "Split", "Add")  # 3-D outputs (a Gemm's are 2-D)


def _flat(g: Graph, bshd: str, flat: str) -> str:
    """(batch, sequence, heads, head size) as (batch, sequence, hidden): the projection itself when ``bshd``
    is only its reshape, else a reshape."""
    r = g.producer.get(bshd)
    if r is not None and r.op_type == "Reshape" and g.only_consumer(bshd) is not None:
        src = g.producer.get(r.input[0])
        if src is not None and src.op_type in _PROJECTIONS:
            g.dead.add(id(r))
            return r.input[0]
    return g.op("Reshape", [bshd, flat()])


def fuse_attention(model, *, op: str = "Attention", heads: tuple[int, int] | None = None) -> int:
    """Rewrite every matching attention layer of ``model`` (an ``onnx.ModelProto``, changed in place) to one
    3-D attention node with the cache inside it: ONNX's own ``Attention`` (``op="Attention"``, opset 23) or
    ONNX Runtime's ``GroupQueryAttention``. ``heads`` (query heads, KV heads) lets layers without rotary
    (GPT-2) be rewritten too. Returns how many layers were rewritten."""
    from onnx import helper

    g = Graph(model.graph)
    layers = [m for m in (_match_layer(g, n, heads) for n in model.graph.node if n.op_type == "Attention") if m]
    if not layers:
        return 0
    flat = g.lazy_const("tsf_flat_shape", np.array([0, 0, -1], dtype=np.int64))
    lengths, biases = None, {}
    for m in layers:
        att = m["att"]
        past_k, past_v = m["k_cat"].input[0], m["v_cat"].input[0]
        mask = att.input[3] if len(att.input) > 3 else ""
        q3, k3, v3 = (_flat(g, m[x], flat) for x in ("q", "k", "v"))
        if lengths is None and op != "Attention":  # every layer's cache has the same length
            lengths = _lengths(g, past_k, q3)
        if m["q_rot"] is not None:
            rot = {"interleaved": g.attr(m["q_rot"], "interleaved", 0)}
            if m["rotary_dim"]:
                rot["rotary_embedding_dim"] = m["rotary_dim"]
            q3 = g.op("RotaryEmbedding", [q3, *m["q_rot"].input[1:]], num_heads=m["heads"], **rot)
            k3 = g.op("RotaryEmbedding", [k3, *m["k_rot"].input[1:]], num_heads=m["kv_heads"], **rot)
        out_r = m["out_r"]
        if _dims(g, out_r.input[1]) == 3:  # already (batch, sequence, hidden): the reshape goes
            g.dead.add(id(out_r))
            y = out_r.output[0]
        else:  # another shape (GPT-2 flattens to 2-D for its Gemm): reshape the 3-D output instead
            y = g.name("tsf_attention_out")
            out_r.input[0] = y
        outputs = [y, m["k_cat"].output[0], m["v_cat"].output[0]]
        attrs = {}
        for key in ("scale", "softcap"):
            value = g.attr(att, key)
            if value:
                attrs[key] = float(value)
        if op == "Attention":
            g.op("Attention", [q3, k3, v3, mask, past_k, past_v], 3, outputs=outputs, q_num_heads=m["heads"],
                 kv_num_heads=m["kv_heads"], is_causal=g.attr(att, "is_causal", 0), **attrs)
        else:
            if mask and mask not in biases:
                biases[mask] = _additive(g, mask)
            g.op("GroupQueryAttention", [q3, k3, v3, past_k, past_v, *lengths, "", "", "", biases.get(mask, "")],
                 3, domain=MS, outputs=outputs, num_heads=m["heads"], kv_num_heads=m["kv_heads"], **attrs)
        g.dead.update(id(n) for n in m["replaced"])
    g.commit()
    if op != "Attention" and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return len(layers)


def _lengths(g: Graph, past_key: str, new_bsh: str):
    """``seqlens_k`` (int32, one per row: the cache length after this step, minus 1; every row's cache holds
    the whole padded length, padding is masked by the bias) and ``total_sequence_length`` (int32 scalar)."""
    from onnx import TensorProto

    past_len = g.op("Shape", [past_key], start=2, end=3)
    new_len = g.op("Shape", [new_bsh], start=1, end=2)
    batch = g.op("Shape", [new_bsh], start=0, end=1)
    total64 = g.op("Add", [past_len, new_len])
    total32 = g.op("Cast", [total64], to=TensorProto.INT32)
    one = g.const("tsf_one_i32", np.array([1], dtype=np.int32))
    seqlens = g.op("Expand", [g.op("Sub", [total32, one]), batch])
    scalar = g.op("Squeeze", [total32, g.const("tsf_axis0", np.array([0], dtype=np.int64))])
    return seqlens, scalar


def _additive(g: Graph, mask: str) -> str:
    """The export's boolean mask (True: attend) as an additive fp32 bias."""
    zero = g.const("tsf_zero", np.array(0.0, dtype=np.float32))
    low = g.const("tsf_masked", np.array(np.finfo(np.float32).min, dtype=np.float32))
    return g.op("Where", [mask, zero, low])


def fuse_skip_rms_norm(model) -> int:
    """``Add(a, b)`` feeding ``RMSNormalization`` (and the residual stream) becomes one
    ``SkipSimplifiedLayerNormalization`` giving both; returns how many were fused."""
    g = Graph(model.graph)
    fused = 0
    for add in list(model.graph.node):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        norms = [n for n in g.consumers.get(add.output[0], []) if n.op_type == "RMSNormalization"]
        if len(norms) != 1 or len(norms[0].input) != 2 or norms[0].input[1] not in g.constants:
            continue
        norm = norms[0]
        if g.attr(norm, "axis", -1) != -1 or g.attr(norm, "stash_type", 1) != 1:
            continue
        if any(i in g.constants for i in add.input):
            continue  # a bias add, not a residual
        eps = g.attr(norm, "epsilon", 1e-5)
        others = [n for n in g.consumers[add.output[0]] if n is not norm] or add.output[0] in g.outputs
        outputs = [norm.output[0], "", "", add.output[0] if others else ""]
        g.op("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]], 4, domain=MS,
             outputs=outputs, epsilon=float(eps))
        g.dead.update({id(add), id(norm)})
        fused += 1
    if fused:
        g.commit()
    return fused


def merge_sibling_matmuls(model, exclude: tuple[str, ...]) -> list[list[str]]:
    """MatMuls that read the same activation with constant 2-D weights (q, k, v; gate, up) become one MatMul
    over the weights side by side, then a Split: one larger MatMulNBits reads the activation once and keeps
    the threads busy (as onnxruntime-genai's builder does; docs/measurements.md#decoder-fusion). Blocks run along
    K, so each column is quantized exactly as before. Returns the merged groups' node names."""
    from onnx import helper, numpy_helper

    graph = model.graph
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return []  # Split takes its sizes as an input from opset 13
    inits = {t.name: t for t in graph.initializer}
    siblings = defaultdict(list)
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and node.name not in exclude:
            siblings[(node.input[0], weight.dims[0])].append(node)
    merged, replaced = [], {}  # first sibling's output -> the nodes in its place; other siblings -> []
    for (activation, _), nodes in siblings.items():
        if len(nodes) < 2:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        name = f"{nodes[0].name}.merged"
        graph.initializer.extend([numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight"),
                                  numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64),
                                                          f"{name}.sizes")])
        replaced.update({n.output[0]: [] for n in nodes[1:]})
        replaced[nodes[0].output[0]] = [
            helper.make_node("MatMul", [activation, f"{name}.weight"], [f"{name}.out"], name=name),
            helper.make_node("Split", [f"{name}.out", f"{name}.sizes"], [n.output[0] for n in nodes], axis=-1,
                             name=f"{name}.split")]
        merged.append([n.name for n in nodes])
    if replaced:  # in the first sibling's place, so the graph stays in topological order
        order = [new for node in graph.node for new in replaced.get(node.output[0], [node])]
        graph.ClearField("node")
        graph.node.extend(order)
    used = {i for n in graph.node for i in n.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return merged


ATTENTION_FORMS = ("Attention", "GroupQueryAttention")


def graph_kv_heads(model) -> int | None:
    """The KV heads of the graph's cache: dimension 1 of its first ``past_key_values.*`` input, when fixed."""
    for value in model.graph.input:
        if value.name.startswith("past_key_values."):
            dims = value.type.tensor_type.shape.dim
            return dims[1].dim_value or None if len(dims) == 4 else None
    return None


def decoder_fusions(model, *, attention: str = "Attention", heads: tuple[int, int] | None = None,
                    merge: bool = True) -> dict[str, object]:
    """The fusions, attention first (``attention`` names the op the layers become); what each did. Where layers
    were rewritten and ``merge`` holds, sibling MatMuls (q/k/v, gate/up) are merged too, for a faster decode
    step (docs/measurements.md#decoder-fusion).

    ``Attention`` (ONNX's own, with the cache inside) is the form torchship writes. ``GroupQueryAttention``
    is a little slower on the CPU (docs/measurements.md#decoder-fusion), ONNX Runtime refuses it
    for a batch above 1 with several new tokens after a past (a chunked prompt), and its CUDA kernel takes
    fp16 / bf16 only; it stays here for graphs that want it."""
    layers = fuse_attention(model, op=attention, heads=heads)
    return {"attention": attention, "attention_layers": layers, "skip_rms_norm": fuse_skip_rms_norm(model),
            "merged_matmuls": len(merge_sibling_matmuls(model, ())) if layers and merge else 0}
