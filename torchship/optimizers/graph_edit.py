"""A small editor for ONNX graphs: who makes and who reads each value, new nodes and constants with fresh
names, and a topological sort when the edit is committed. Used by torchship's own graph fusions."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class Graph:
    """Producers and consumers of a graph's values, kept current as nodes are added."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in graph.output}
        self.constants = {t.name: t for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.constants[n.output[0]] = n.attribute[0].t
        self.new_nodes: list = []
        self.dead: set[int] = set()
        self._names: set[str] = {n.name for n in graph.node} | {v for n in graph.node for v in n.output}

    def name(self, base: str) -> str:
        i, out = 0, base
        while out in self._names:
            i += 1
            out = f"{base}_{i}"
        self._names.add(out)
        return out

    def op(self, op_type: str, inputs, n_out: int = 1, *, domain: str = "", outputs=None, **attrs):
        from onnx import helper

        outs = outputs or [self.name(f"tsf_{op_type}_out") for _ in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=self.name(f"tsf_{op_type}"), domain=domain,
                                **attrs)
        self.new_nodes.append(node)
        return outs if n_out > 1 else outs[0]

    def const(self, base: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.constants[name] = tensor  # available to the nodes that read it when the graph is sorted
        return name

    def lazy_const(self, base: str, array: np.ndarray):
        """A constant added on first use: call the result for its name."""
        made: list[str] = []

        def name() -> str:
            if not made:
                made.append(self.const(base, array))
            return made[0]
        return name

    def only_consumer(self, value: str):
        users = self.consumers.get(value, [])
        return users[0] if len(users) == 1 and value not in self.outputs else None

    def attr(self, node, key: str, default=None):
        """An int, float or ints attribute of ``node``, else ``default``."""
        for a in node.attribute:
            if a.name == key:
                return list(a.ints) if a.ints else (a.f if a.type == 1 else a.i)
        return default

    def commit(self) -> None:
        """Drop the dead nodes, add the new ones, and sort the graph again."""
        keep = [n for n in self.graph.node if id(n) not in self.dead] + self.new_nodes
        del self.graph.node[:]
        self.graph.node.extend(_toposorted(keep, {i.name for i in self.graph.input} | set(self.constants)))


def _toposorted(nodes, available: set[str]):
    ready, out, waiting = set(available) | {""}, [], list(nodes)
    while waiting:
        rest = []
        for n in waiting:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(waiting):  # a cycle or a missing value: keep the original order for those
            out.extend(rest)
            break
        waiting = rest
    return out
