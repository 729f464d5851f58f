"""The shape of the house: no import cycle, no module past what one reads in a sitting, and one backend
table that every consumer reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from torchship import backends
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


LEAVES = {"torchship.benchmarks.timing"}  # ARCHITECTURE.md: a leaf any layer may use


def layer_table(text: str, modules: dict[str, Path]) -> list[tuple[str, set[str]]]:
    """ARCHITECTURE.md's layer table, lowest first: (layer, the modules its row names). A row names a module by
    its dotted name under torchship (`errors`, `exporters/spec.py`, `demo`) or a whole package (`runtimes/`);
    other backticked words (files named inside a package's parentheses, functions) name no further module."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not row.startswith("| ") or cells[0] in ("layer", "---") or len(cells) < 3:
            continue
        named = set()
        for word in re.findall(r"`([^`]+)`", cells[1]):
            dotted = "torchship" if word == "torchship" else \
                "torchship." + word.rstrip("/").removesuffix(".py").replace("/", ".")
            if word.endswith("/"):
                named |= {m for m in modules if m == dotted or m.startswith(dotted + ".")}
            elif dotted in modules and ("/" in word or "." not in word):
                named.add(dotted)
        layers.append((cells[0], named))
    return layers


def upward_imports(layers: list[tuple[str, set[str]]], graph: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """(modules in no row, imports that reach up a row) of an import graph under a layer table."""
    level = {}
    for i, (_, named) in enumerate(layers):
        for module in named:
            level.setdefault(module, i)
    unplaced = sorted(set(graph) - set(level))
    upward = [f"{m} ({layers[level[m]][0]}) imports {d} ({layers[level[d]][0]})"
              for m in sorted(set(graph) & set(level)) for d in sorted(graph[m])
              if d in level and level[d] > level[m] and d not in LEAVES]
    return unplaced, upward


def test_the_layer_table_holds_every_module_and_every_import():
    modules = _modules()
    layers = layer_table((PACKAGE.parent / "ARCHITECTURE.md").read_text(), modules)
    assert [name for name, _ in layers] == ["base", "families", "runtimes", "builders", "benchmarks", "serving",
                                            "top"]
    unplaced, upward = upward_imports(layers, {m: _imports(m, path, modules) for m, path in modules.items()})
    assert not unplaced, f"modules in no row of ARCHITECTURE.md's layer table: {unplaced}"
    assert not upward, upward
    for leaf in LEAVES:
        assert not _imports(leaf, modules[leaf], modules), leaf


def test_the_layer_check_finds_an_upward_import_and_an_unplaced_module():
    """The check itself, on a made-up page: a base module importing a builder is caught, and so is a module that
    no row names; a builder importing a base module is fine."""
    modules = {"torchship.errors": PACKAGE / "errors.py", "torchship.optimizers.quantize": PACKAGE / "x.py",
               "torchship.optimizers": PACKAGE / "y.py", "torchship.stray": PACKAGE / "z.py"}
    page = ("## Layers\n\n| layer | modules | what |\n|---|---|---|\n| base | `errors` (see `quantize.py`) | x |\n"
            "| builders | `optimizers/` | y |\n\n## Next\n| top | `stray` | z |\n")
    layers = layer_table(page, modules)
    assert layers == [("base", {"torchship.errors"}),
                      ("builders", {"torchship.optimizers", "torchship.optimizers.quantize"})]
    graph = {"torchship.errors": {"torchship.optimizers.quantize"},
             "torchship.optimizers.quantize": {"torchship.errors"}, "torchship.optimizers": set(),
             "torchship.stray": set()}
    assert upward_imports(layers, graph) == (
        ["torchship.stray"], ["torchship.errors (base) imports torchship.optimizers.quantize (builders)"])


def test_the_files_a_served_repository_carries_import_nothing_of_torchship():
    """serving/backend.py, serving/steps.py and the processing package copied beside them run in the server's own
    environment (the packages serving/environment.py lists), where torchship is not installed; the package imports
    only itself."""
    from torchship.serving.environment import modules as served_modules
    from torchship.serving.repository import carried_files

    modules = _modules()
    carried = list(carried_files().values())
    assert PACKAGE / "serving" / "backend.py" in carried and PACKAGE / "processing" / "entities.py" in carried
    for path in carried:
        name = next(n for n, p in modules.items() if p == path)
        assert not {m for m in _imports(name, path, modules) if not m.startswith("torchship.processing")}, path
        tops = {a.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Import) for a in node.names}
        tops |= {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert tops <= {"json", "os", "sys", "io", "warnings", "dataclasses", "typing", "__future__", "torchship_steps",
                        "torchship_processing"} | served_modules(), (path, tops)


@pytest.mark.parametrize("record", backends.TABLE, ids=lambda b: b.name)
def test_every_backend_record_is_complete(record):
    assert callable(record.factory())  # its predictor factory imports on a CPU machine
    assert record.builder is None or callable(record.step())  # so does its builder
    if record.runtime != "pytorch":  # PyTorch runs the checkpoint itself; nothing makes it
        assert record.make_command("DIR").startswith("torchship ")
    assert set(record.serving) <= set(backends.SERVING_LAYOUTS)
    assert record.precision in ("fp32", "fp16", "int8", "int4") and record.device in ("cpu", "cuda")
    if record.variants:
        assert backends.backend_variants(record.name) == record.variants


def test_the_cli_offers_exactly_the_tables_backends():
    help_text = CliRunner().invoke(main, ["bench", "--help"], terminal_width=400).output
    for record in backends.TABLE:
        assert record.name in help_text
    trt = CliRunner().invoke(main, ["tensorrt", "--help"], terminal_width=400).output
    assert "[fp32|fp16|int8]" in trt


def test_preference_order_is_the_tables():
    assert backends.preference_order() == ("optimized", "ort-all", "ort-extended", "ort-basic", "model")
    assert backends.backend_of_variant("optimized").name == "ort-optimized"
