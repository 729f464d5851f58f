"""Dynamic int8 whose answer for one row does not depend on the other rows of its batch.

ONNX Runtime's dynamic quantizer writes ``DynamicQuantizeLinear`` before each quantized MatMul: one scale and
zero point for the whole activation tensor, that is over every token of every text in the batch. A text's
embedding then changes with what else is in its batch (under Triton's dynamic batching: with what other users
sent at the same moment). This module replaces each such node, where every reader of it can take a per-row scale,
by the same quantization done per row (per token) over the last axis:

    s = max(ReduceMax(Abs(x), last axis, keepdims), tiny) / 127
    y = QuantizeLinear(x * (127 / max(...)), 1.0, 128)   uint8, a scalar zero point of 128

and each ``MatMulInteger`` -> ``Cast`` -> ``* (scale * w_scale)`` the quantizer wrote after it becomes one
``MatMulIntegerToFloat(y, W, s, w_scale, 128, w_zero)`` (ONNX Runtime's contrib op, which scales its output by a
broadcast ``s`` of shape (..., rows, 1)); a bias stays the separate Add it was, as ORT's kernel scales a fused
bias too when the activation scale is not one number.
uint8 with the scalar zero point 128 keeps ONNX Runtime's fast u8 x s8 kernels (the zero point must be a
scalar there). A node read by a fused op that takes only a scalar scale (QAttention) is left
per-tensor; the search's batch probe then drops that candidate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchship.external_data import save_model, uses_external_data
from torchship.onnx_io import load_onnx

TINY = 1e-30  # a row of zeros gets a positive scale (its values quantize to the zero point)


def per_row(src: Path, dst: Path) -> dict:
    """Rewrite ``src`` (a dynamic-int8 graph from ORT's quantizer) into ``dst`` with per-row activation scales.
    Returns {"rewritten": n, "left": [names of DynamicQuantizeLinear nodes left per-tensor]}."""
    from onnx import helper, numpy_helper

    model = load_onnx(src, load_external_data=True)
    graph = model.graph
    readers: dict[str, list] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, i))
    outputs = {o.name for o in graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    shared = _shared_constants(graph, numpy_helper)
    replaced: dict[int, object] = {}  # id of a node -> what takes its place (None: dropped)
    left, done = [], 0
    for n in graph.node:
        if n.op_type != "DynamicQuantizeLinear":
            continue
        chains = _chains(n, readers, outputs)
        if chains is None:
            left.append(n.name)
            continue
        done += 1
        x, y = n.input[0], n.output[0]
        p = f"{n.name or y}/per_row"
        if opset >= 18:
            peak = helper.make_node("ReduceMax", [f"{p}/abs", shared["axes"]], [f"{p}/peak"], keepdims=1,
                                    name=f"{p}/ReduceMax")
        else:
            peak = helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/peak"], axes=[-1], keepdims=1,
                                    name=f"{p}/ReduceMax")
        replaced[id(n)] = [
            helper.make_node("Abs", [x], [f"{p}/abs"], name=f"{p}/Abs"), peak,
            helper.make_node("Max", [f"{p}/peak", shared["tiny"]], [f"{p}/safe"], name=f"{p}/Max"),
            helper.make_node("Div", [shared["levels"], f"{p}/safe"], [f"{p}/inv"], name=f"{p}/Inv"),
            helper.make_node("Mul", [x, f"{p}/inv"], [f"{p}/scaled"], name=f"{p}/Scale"),
            helper.make_node("QuantizeLinear", [f"{p}/scaled", shared["one"], shared["zero"]], [y],
                             name=f"{p}/Quantize"),
            helper.make_node("Div", [f"{p}/safe", shared["levels"]], [f"{p}/row_scale"], name=f"{p}/RowScale")]
        for matmul, cast, product, mul, w_scale in chains:
            b_zero = matmul.input[3] if len(matmul.input) > 3 else ""
            replaced[id(matmul)] = [helper.make_node(
                "MatMulIntegerToFloat", [y, matmul.input[1], f"{p}/row_scale", w_scale, shared["zero"], b_zero],
                [mul.output[0]], name=f"{matmul.name}/per_row", domain="com.microsoft")]
            replaced.update({id(cast): None, id(product): None, id(mul): None})
    if done:
        if opset < 13:  # the ReduceMax and QuantizeLinear forms used here
            raise ValueError(f"{src.name} has opset {opset}; per-row int8 needs opset 13 or later")
        nodes = []
        for n in graph.node:
            nodes.extend([n] if id(n) not in replaced else replaced[id(n)] or [])
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(t for t in shared["tensors"] if opset >= 18 or not t.name.endswith("/axes"))
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    save_model(model, dst, external=uses_external_data(src))
    return {"rewritten": done, "left": left}


def _chains(node, readers: dict, outputs: set[str]) -> list | None:
    """For each MatMul fed by ``node``, the quantizer's (MatMulInteger, Cast, scale product Mul, dequantizing Mul,
    weight scale), when that pattern is all that reads the node; else None (a fused reader such as QAttention
    takes only one scale per tensor)."""
    y, scale, zero = list(node.output) + [""] * (3 - len(node.output))

    def only(name):
        found = readers.get(name, [])
        return found[0][0] if len(found) == 1 and name not in outputs else None

    if {y, scale, zero} & outputs or any(
            (r.op_type, i) != ("MatMulInteger", 2) for r, i in readers.get(zero, [])):
        return None
    chains, products = [], set()
    for matmul, i in readers.get(y, []):
        if (matmul.op_type, i) != ("MatMulInteger", 0) or (len(matmul.input) > 2 and matmul.input[2] != zero):
            return None
        cast = only(matmul.output[0])
        mul = only(cast.output[0]) if cast is not None and cast.op_type == "Cast" else None
        if mul is None or mul.op_type != "Mul":
            return None
        other = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        product = only(other)
        makers = [r for r, _ in readers.get(scale, []) if r.output[0] == other]
        if product is not mul or len(makers) != 1 or makers[0].op_type != "Mul":
            return None
        maker = makers[0]
        w_scale = maker.input[1] if maker.input[0] == scale else maker.input[0]
        products.add(id(maker))
        chains.append((matmul, cast, maker, mul, w_scale))
    if len(products) != len(readers.get(scale, [])):
        return None  # the scale feeds something other than the pattern's products
    return chains


def _shared_constants(graph, numpy_helper) -> dict:
    """The constants every rewritten node reads, once per graph."""
    taken = {i.name for i in graph.initializer}
    prefix = "torchship_per_row"
    while any(t.startswith(prefix) for t in taken):
        prefix += "_"
    values = {"axes": np.array([-1], dtype=np.int64), "tiny": np.array(TINY, dtype=np.float32),
              "levels": np.array(127.0, dtype=np.float32), "one": np.array(1.0, dtype=np.float32),
              "zero": np.array(128, dtype=np.uint8)}
    tensors = [numpy_helper.from_array(v, f"{prefix}/{k}") for k, v in values.items()]
    return {**{k: f"{prefix}/{k}" for k in values}, "tensors": tensors}


def is_per_row(path: Path) -> bool:
    """Whether an int8 file holds no per-tensor dynamic activation quantization (a static or per-row one)."""
    return not any(n.op_type in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention",
                                 "DynamicQuantizeLSTM")
                   for n in load_onnx(path).graph.node)


def per_tensor_file(artifact, variant: str) -> str | None:
    """The file of ``variant`` when it is an int8 file that scales activations per tensor (made before per-row
    activations): its answers depend on the batch. None for any other variant."""
    v = artifact.manifest.variants[variant]
    if v.stage == "quantization" and not is_per_row(artifact.folder / v.file):
        return v.file
    return None
