"""The import graph of the product packages, read from the source (AST, every import: at the top, inside
functions, under TYPE_CHECKING): no import circles, and every import points down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: each package and the packages it may import (besides itself and third-party libraries), lowest first
LAYERS = {
    "core": set(),
    "constitution": {"core"},
    "training": {"core"},  # TRL and friends, and core: nothing of the other stages
    "generation": {"core", "constitution"},
    "judging": {"core", "constitution", "generation"},
    "evaluation": {"core", "constitution", "generation", "judging", "training"},
    "cai": {"core", "constitution", "generation", "judging", "training", "evaluation"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in LAYERS for path in (REPO / package).rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The project modules ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a module inside a package we know
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_graph_is_read():
    assert "core.registry" in GRAPH["core.backends.registry"]
    assert "judging.methods.base" in GRAPH["judging.methods.likelihood"]  # a relative import


def test_no_import_circles():
    """Tarjan's strongly connected components: a component of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in sorted(GRAPH[name]):
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert circles == []


def test_every_import_points_down_the_layers():
    wrong = sorted(f"{name} imports {target}" for name, targets in GRAPH.items() for target in targets
                   if target.split(".")[0] != name.split(".")[0]
                   and target.split(".")[0] not in LAYERS[name.split(".")[0]])
    assert wrong == []
