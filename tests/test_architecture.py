"""The shape of the house: no import cycle, no module past what one reads in a sitting, and one backend
table that every consumer reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

from torchship import variants
from torchship.cli import main

PACKAGE = Path(__file__).resolve().parent.parent / "torchship"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every torchship module ``name`` imports, lazy (function-level) imports included; an import of a
    module's own ancestor package is how Python loads a submodule, not a dependency."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") + (["__init__"] if path.name == "__init__.py" else [])
            prefix = ".".join(base[:len(base) - node.level] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        deps |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return deps


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_the_limit():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_artifact_layer_imports_nothing_above_it():
    modules = _modules()
    below = {"torchship.artifact", "torchship.variants", "torchship.tensors", "torchship.onnx_io",
             "torchship.external_data", "torchship._fs", "torchship.errors", "torchship.shapes",
             "torchship.manifest_sections", "torchship.dispatch_table"}
    for name in below:
        assert _imports(name, modules[name], modules) <= below, name


def test_the_files_a_served_repository_carries_import_nothing_of_torchship():
    """serving/backend.py, serving/steps.py and the post-processing copied beside them run in the server's own
    environment (numpy, tokenizers, onnxruntime), where torchship is not installed."""
    from torchship.serving.repository import HELPERS, RUNTIMES_DIR, STEPS_FILE

    modules = _modules()
    carried = [PACKAGE / "serving" / "backend.py", STEPS_FILE] + [RUNTIMES_DIR / f for f in HELPERS.values()]
    for path in carried:
        name = next(n for n, p in modules.items() if p == path)
        assert not _imports(name, path, modules), path
        tops = {a.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Import) for a in node.names}
        tops |= {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert tops <= {"json", "os", "sys", "numpy", "dataclasses", "typing", "__future__", "tokenizers",
                        "onnxruntime", "triton_python_backend_utils", "torchship_steps", "torchship_entities",
                        "torchship_masks", "torchship_answers"}, (path, tops)


@pytest.mark.parametrize("record", variants.TABLE, ids=lambda b: b.name)
def test_every_backend_record_is_complete(record):
    assert callable(record.factory())  # its predictor factory imports on a CPU machine
    if record.builder != variants.CHECKPOINT:  # PyTorch runs the checkpoint itself; nothing makes it
        assert record.make_command("DIR").startswith("torchship ")
    assert record.precision in ("fp32", "fp16", "int8", "int4") and record.device in ("cpu", "cuda")
    if record.variants:
        assert variants.backend_variants(record.name) == record.variants


def test_the_cli_offers_exactly_the_tables_backends():
    help_text = CliRunner().invoke(main, ["bench", "--help"], terminal_width=400).output
    for record in variants.TABLE:
        assert record.name in help_text
    trt = CliRunner().invoke(main, ["tensorrt", "--help"], terminal_width=400).output
    assert "[fp32|fp16|int8]" in trt


def test_preference_order_is_the_tables():
    assert variants.preference_order() == ("optimized", "ort-all", "ort-extended", "ort-basic", "model")
    assert variants.backend_of_variant("optimized").name == "ort-optimized"
