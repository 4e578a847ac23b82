"""The package's layers import downward: no import circle between tiplight's modules and subpackages.

Every ``import tiplight.x`` / ``from tiplight.x import ...`` anywhere in a file counts (lazy imports inside
functions too: a circle that only closes at run time is still a circle a reader has to untangle). The unit is
a top-level module or subpackage (``tiplight.evals``, ``tiplight.data``); the package root ``tiplight/__init__``
is the composition root (it imports the built-in parts so they register) and is left out.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import tiplight

PACKAGE = Path(tiplight.__file__).parent


def unit(module: str) -> str:
    """``tiplight.evals.grader`` -> ``tiplight.evals``."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, here: str) -> set[str]:
    """Absolute names of the tiplight modules a file imports (``from tiplight import x`` -> ``tiplight.x``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} if node.module != "tiplight" else {f"tiplight.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{here}:{node.lineno} imports relatively; tiplight imports absolutely.")
    return {n for n in names if n.startswith("tiplight.")}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        here = module_name(path)
        if here == "tiplight":
            continue
        for name in imported(ast.parse(path.read_text()), here):
            if unit(name) != unit(here):
                graph[unit(here)].add(unit(name))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            found.extend([sorted([*component, v])] if component else [])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle_and_passes_a_chain():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}}) == []


def test_the_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    assert "tiplight.sources" in graph["tiplight.data"]  # a module-level import
    assert "tiplight.toy" in graph["tiplight.cli"]  # `from tiplight import toy` inside a function


def test_tiplight_has_no_import_circle():
    assert circles(import_graph()) == []
