"""Two more exact fp32 candidates for the measured dispatch, each with another attention kernel of ONNX Runtime.

ONNX Runtime's transformer fusion writes one ``Attention`` contrib operator per layer (Q, K and V projected
by one packed GEMM inside it). Two other CPU kernels are faster at some shapes, and the fused graph can be
rewritten to use them without changing what it computes:

- ``optimized-onnx-attention`` (``optimized-sdpa`` before): ONNX's own ``Attention`` operator (opset 24) on the separately projected Q, K and V,
  with each row's real length as ``nonpad_kv_seqlen`` (right padding, as the tokenizer pads). Two of the
  three projection biases go: the key bias adds ``q . b_k`` to every score of a query row, which softmax
  cancels, and the value bias comes out of the attention unchanged (the weights of a row sum to one), so it
  is folded into the output projection's bias (``b_o + b_v W_o``). Faster than the packed kernel at small
  shapes (docs/measurements.md#attention-kernels).
- ``optimized-mha`` (``optimized-flash`` before): ONNX Runtime's ``MultiHeadAttention``, which runs a flash-attention kernel (tiles of Q,
  K and V kept in L2, no full score matrix) when it is given no padding mask. Each layer's attention is an
  ``If`` on whether the batch has any padding: none, the flash kernel without a mask; some, the same operator
  with the mask. Correct for every input; faster than the packed kernel on long unpadded batches
  (docs/measurements.md#attention-kernels).

Both keep each residual Add and LayerNormalization apart, as the export has them, instead of ONNX Runtime's
SkipLayerNormalization, and their sessions turn ORT's SkipLayerNormFusion off: ORT's CPU
SkipLayerNormalization is slower than the pair (docs/measurements.md#skip-layer-norm). Both are validated like
every exact variant (eager PyTorch's tolerance); optimize makes them only for the measured dispatch, which alone
may choose them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship.errors import ArtifactError
from torchship.external_data import save_model
from torchship.onnx_io import drop_unused_initializers
ONNX_ATTENTION_OPSET = 24  # Attention with nonpad_kv_seqlen
# Standard operators whose versions after 17 only widened their types (or added attributes whose defaults keep
# the old behaviour); any other operator must have kept its version from the graph's opset to 24.
_TYPES_ONLY = {"Cast", "Constant", "ConstantOfShape", "Equal", "Flatten", "Identity", "If", "Reshape", "Shape", "Size",
               "Squeeze", "Transpose", "Unsqueeze"}
# Reductions whose axes became an input at opset 18 (ReduceSum moved at 13); ReduceMax and ReduceMin only added
# bool at 20.
_AXES_INPUT_SINCE = 18
_AXES_INPUT_OPS = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                   "ReduceProd", "ReduceSumSquare"}
_BOOL_SINCE_20 = {"ReduceMax", "ReduceMin"}


def mha_fused(src: Path, *, model_type: str, num_heads: int, hidden_size: int, skip_layer_norm: bool = True):
    """The export through ONNX Runtime's transformer fusion with MultiHeadAttention instead of the packed
    Attention operator (the optimizer's ``use_multi_head_attention``), as an onnx ModelProto with its data;
    ``skip_layer_norm=False`` leaves each residual Add + LayerNormalization unfused."""
    from onnx import helper

    from torchship.optimizers.fusion import transformer_optimizer

    model = transformer_optimizer(src, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                  multi_head_attention=True, skip_layer_norm=skip_layer_norm).model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):  # the optimizer adds it only on save
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


class _Graph:
    """Lookups over one graph: initializers as arrays, who produces and who consumes each value."""

    def __init__(self, model):
        self.model, self.graph = model, model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def add_array(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def attention_nodes(self) -> list:
        nodes = [n for n in self.graph.node if n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft"]
        if not nodes:
            raise ArtifactError("the transformer fusion wrote no MultiHeadAttention to rewrite")
        return nodes

    def replace_nodes(self, before: dict[str, list], drop: set[str]) -> None:
        """Insert ``before[name]`` ahead of node ``name``; leave out the nodes named in ``drop``."""
        nodes = []
        for n in self.graph.node:
            nodes += before.get(n.name, [])
            if n.name not in drop:
                nodes.append(n)
        del self.graph.node[:]
        self.graph.node.extend(nodes)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _mask_lengths(g: _Graph, mask: str) -> tuple[list, str]:
    """Nodes that turn an attention node's mask input into each row's length as int64 [batch], and its name.
    The fusion passes either a 1-D mask index (lengths, int32) or the 2-D padding mask."""
    from onnx import helper

    producer = g.producer.get(mask)
    one_d = producer is not None and (
        (producer.op_type == "EmbedLayerNormalization" and list(producer.output).index(mask) == 1)
        or (producer.op_type == "ReduceSum" and _attrs(producer).get("keepdims", 1) == 0))
    out = mask + "_lengths_i64"
    if one_d:
        return [helper.make_node("Cast", [mask], [out], to=7, name=out)], out
    axis = g.add_array(mask + "_len_axis", np.array([-1], dtype=np.int64))
    summed = mask + "_len_sum"
    return [helper.make_node("ReduceSum", [mask, axis], [summed], keepdims=0, name=summed),
            helper.make_node("Cast", [summed], [out], to=7, name=out)], out


def _fold_value_bias(g: _Graph, node, b_v: np.ndarray) -> bool:
    """Add ``b_v W_o`` to the bias after the output projection (the MatMul that reads the attention output):
    a SkipLayerNormalization's bias input or an Add of an initializer. False when neither is there."""
    matmuls = g.consumers.get(node.output[0], [])
    if len(matmuls) != 1 or matmuls[0].op_type != "MatMul" or g.array(matmuls[0].input[1]) is None:
        return False
    w_o = g.array(matmuls[0].input[1]).astype(np.float64)
    after = g.consumers.get(matmuls[0].output[0], [])
    if len(after) != 1:
        return False
    nxt = after[0]
    if nxt.op_type == "SkipLayerNormalization" and len(nxt.input) >= 5 and g.array(nxt.input[4]) is not None:
        slot = 4
    elif nxt.op_type == "Add" and any(g.array(i) is not None for i in nxt.input):
        slot = next(i for i, name in enumerate(nxt.input) if g.array(name) is not None)
    else:
        return False
    old = g.array(nxt.input[slot])
    if old.shape != (w_o.shape[1],):
        return False
    folded = (old + b_v.astype(np.float64) @ w_o).astype(old.dtype)
    nxt.input[slot] = g.add_array(f"{node.name}_out_bias_with_v", folded)
    return True


def _axes_to_inputs(g: "_Graph", version: int) -> set[str]:
    """Rewrite each reduction that takes ``axes`` as an attribute (opsets before 18) in its opset-18 form, ``axes``
    as an input: the same computation, which opset 24 reads alike (a sentence-embedding export's ReduceL2).
    Returns the operators rewritten."""
    from onnx import helper

    if version >= _AXES_INPUT_SINCE:
        return set()
    moved = set()
    for node in g.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _AXES_INPUT_OPS:
            continue
        axes = next((a for a in node.attribute if a.name == "axes"), None)
        if axes is not None:
            name = g.add_array(f"{node.name or node.output[0]}_axes", np.array(helper.get_attribute_value(axes),
                                                                                 dtype=np.int64))
            node.attribute.remove(axes)
            node.input.extend([""] * (1 - len(node.input)) + [name])
        moved.add(node.op_type)
    return moved


def _check_opset(model) -> None:
    """Move the model to opset 24 for ONNX's Attention, where every other standard operator means the same
    (reductions rewritten to take their axes as an input first)."""
    import onnx.defs

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    others = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - {"Attention"}
    moved = _axes_to_inputs(_Graph(model), version)

    def same(op: str) -> bool:
        try:
            then = _AXES_INPUT_SINCE if op in moved else onnx.defs.get_schema(op, version).since_version
            now = onnx.defs.get_schema(op, ONNX_ATTENTION_OPSET).since_version
            return op in _TYPES_ONLY or then == now or (op in moved and op in _BOOL_SINCE_20)
        except onnx.defs.SchemaError:
            return False

    changed = sorted(op for op in others if not same(op))
    if version < 17 or changed:
        raise ArtifactError(f"the graph is at opset {version}; its operators {changed or []} changed meaning "
                            f"before opset {ONNX_ATTENTION_OPSET}, which ONNX's Attention needs")
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, ONNX_ATTENTION_OPSET)


def to_onnx_attention(model) -> int:
    """Rewrite every MultiHeadAttention (Q, K, V, packed bias[, mask]) as ONNX Attention with the query bias
    added, the key bias dropped and the value bias folded after the output projection. Returns the number of
    layers; ArtifactError when a node has inputs this rewrite does not carry (attention bias, past state)."""
    from onnx import helper

    g = _Graph(model)
    before, drop, lengths = {}, set(), {}
    for node in g.attention_nodes():
        inputs = list(node.input) + [""] * (5 - len(node.input))
        q, k, v, bias, mask = inputs[:5]
        if any(inputs[5:]) or not bias or g.array(bias) is None or _attrs(node).get("unidirectional"):
            raise ArtifactError(f"{node.name} has inputs the ONNX Attention rewrite does not carry")
        heads = _attrs(node)["num_heads"]
        b = g.array(bias)
        b_q, b_v = np.split(b, 3)[0], np.split(b, 3)[2]
        added = []
        q_in = node.name + "_q_biased"
        added.append(helper.make_node("Add", [q, g.add_array(node.name + "_q_bias", b_q)], [q_in], name=q_in))
        v_in = v
        if not _fold_value_bias(g, node, b_v):
            v_in = node.name + "_v_biased"
            added.append(helper.make_node("Add", [v, g.add_array(node.name + "_v_bias", b_v)], [v_in], name=v_in))
        extra = []
        if mask:
            if mask not in lengths:
                nodes, lengths[mask] = _mask_lengths(g, mask)
                added = nodes + added
            extra = ["", "", "", lengths[mask]]
        scale = _attrs(node).get("scale")
        attention = helper.make_node("Attention", [q_in, k, v_in, *extra], [node.output[0]], name=node.name + "_sdpa",
                                     q_num_heads=heads, kv_num_heads=heads, **({"scale": scale} if scale else {}))
        before[node.name] = added + [attention]
        drop.add(node.name)
    g.replace_nodes(before, drop)
    _check_opset(model)
    return len(drop)


def to_flash_when_unpadded(model, mask_input: str) -> int:
    """Wrap every MultiHeadAttention in an If on "the batch has no padding" (every value of ``mask_input`` is
    1): then the node without its mask, so ORT runs its flash kernel; else the node as it was. Returns the
    number of layers."""
    from onnx import TensorProto, helper

    if mask_input not in {i.name for i in model.graph.input}:
        raise ArtifactError(f"the graph has no input {mask_input!r} to read padding from")
    g = _Graph(model)
    one = g.add_array("flash_one", np.array(1, dtype=np.int64))
    smallest, unpadded = "flash_mask_min", "flash_unpadded"
    first = [helper.make_node("Cast", [mask_input], ["flash_mask_i64"], to=7, name="flash_mask_i64"),
             helper.make_node("ReduceMin", ["flash_mask_i64"], [smallest], keepdims=0, name=smallest),
             helper.make_node("Equal", [smallest, one], [unpadded], name=unpadded)]
    nodes = g.attention_nodes()
    before, drop = {}, set()
    for node in nodes:
        if len(node.input) < 5 or not node.input[4] or any(node.input[5:]):
            raise ArtifactError(f"{node.name} has no padding mask alone to drop, or has more inputs")
        out = node.output[0]

        def branch(tag: str, inputs: list[str]):
            inner = helper.make_node("MultiHeadAttention", inputs, [f"{out}_{tag}"], domain="com.microsoft",
                                     name=f"{node.name}_{tag}")
            inner.attribute.extend(node.attribute)
            return helper.make_graph([inner], f"{node.name}_{tag}", [],
                                     [helper.make_tensor_value_info(f"{out}_{tag}", TensorProto.FLOAT, None)])

        wrapped = helper.make_node("If", [unpadded], [out], name=node.name + "_if",
                                   then_branch=branch("flash", list(node.input[:4])),
                                   else_branch=branch("masked", list(node.input)))
        before[node.name] = ([] if before else first) + [wrapped]
        drop.add(node.name)
    g.replace_nodes(before, drop)  # the padding test goes ahead of the first attention node
    return len(nodes)


def write(model, dst: Path, *, external: bool) -> None:
    drop_unused_initializers(model)
    save_model(model, dst, external=external)
