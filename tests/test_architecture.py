"""The package's shape, enforced: imports go down the layers (README "Architecture"), commands never
import commands, no import cycle, no function over 80 lines and no module over 400 (vendored code aside).

Imports are read with `ast` (top-level and inside functions alike), so the test needs no model and
fails on the line that breaks the rule.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "convsum"

# Top to bottom. A module may import modules of its own layer or below, never above.
LAYERS = [
    ("entry", {"cli"}),
    ("workflows", {"demo", "sweep"}),  # run several commands in a row
    ("commands", {"train", "evaluate", "generate", "merge", "export", "publish", "report", "serve"}),
    ("services", {"inference", "training", "checks", "card", "gguf_files"}),
    ("engines", {"engines", "llamacpp"}),
    ("foundation", {"data", "datafiles", "prompt", "modeling", "fastpath", "rundir", "decoding", "metrics",
                    "config", "settings"}),
    ("base", {"io", "errors"}),
]
COMMANDS = LAYERS[2][1]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def modules() -> dict[str, Path]:
    return {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(convsum module, line) for every import of a sibling module in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "convsum":
            parts = node.module.split(".")
            if len(parts) > 1:
                found.append((parts[1], node.lineno))
            else:  # from convsum import a, b
                found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], node.lineno) for a in node.names
                      if a.name.startswith("convsum.") and len(a.name.split(".")) > 1]
    return [(m, line) for m, line in found if m != "vendor"]


def violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    out = []
    for mod, deps in graph.items():
        for dep, line in deps:
            if dep not in LAYER_OF:
                out.append(f"{mod}.py:{line}: imports {dep}, which has no layer (add it to LAYERS)")
            elif LAYER_OF[dep] < LAYER_OF[mod]:
                out.append(f"{mod}.py:{line}: {LAYERS[LAYER_OF[mod]][0]} module imports {dep} "
                           f"({LAYERS[LAYER_OF[dep]][0]}, a layer above)")
            elif mod in COMMANDS and dep in COMMANDS and dep != mod:
                out.append(f"{mod}.py:{line}: command imports command {dep}")
    return out


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep, _ in graph.get(m, []):
            if dep == m:
                continue
            if state.get(dep) == "open":
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


@pytest.fixture(scope="module")
def graph():
    return {name: imports_of(path) for name, path in modules().items()}


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(LAYER_OF)) == []


def test_imports_go_down_the_layers(graph):
    assert violations(graph) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_rules_catch_a_planted_import(graph):
    # What the two tests above would say if engines imported inference (the old llamacpp -> generate edge)
    # and export called merge (the old command -> command edge).
    planted = {**graph, "llamacpp": graph["llamacpp"] + [("inference", 1)], "export": graph["export"] + [("merge", 1)]}
    found = violations(planted)
    assert "llamacpp.py:1: engines module imports inference (services, a layer above)" in found
    assert "export.py:1: command imports command merge" in found
    assert ["inference", "llamacpp", "inference"] in cycles(planted)


def test_size_limits():
    too_long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 400:
            too_long.append(f"{name}.py: {len(text.splitlines())} lines (limit 400)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(f"{name}.py:{node.lineno}: {node.name} is {node.end_lineno - node.lineno + 1} lines "
                                "(limit 80)")
    assert too_long == []
