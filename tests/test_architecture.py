"""The package's shape stays true: no import circle, imports only flow downwards.

Floors, from the ground up (docs/design.md, "Package map"): a module may import
modules of its own floor and of the floors below, never above; ``data`` imports no
module of ``models``; ``training`` and ``inference`` never import each other.
Imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: (floor, prefixes); the first matching prefix decides a module's floor.
FLOORS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            "_version",
            "_yaml",
            "errors",
            "io",
            "provenance",
            "sensors",
            "plotting",
            "embedding_store",
            "store_metadata",
            "devices",
        ),
    ),
    (2, ("grid", "cube")),
    (3, ("data", "models")),
    (4, ("bundle",)),
    (5, ("training", "inference")),
    (6, ("evaluation", "accessor", "analysis", "recipe")),
    (7, ("cli", "demo", "__main__")),
]
#: Pairs (importer prefix, imported prefix) forbidden although the floors allow them.
FORBIDDEN = [("data", "models"), ("training", "inference"), ("inference", "training")]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (SRC / "latentcube").rglob("*.py"):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != m and not m.startswith(t + "."):
                    edges[m].add(t)
    return edges


def _short(module: str) -> str:
    return module.removeprefix("latentcube").removeprefix(".")


def _floor(module: str) -> int:
    short = _short(module)
    if not short:
        return 8  # the package root re-exports everything
    for floor, prefixes in FLOORS:
        if any(short == p or short.startswith(p + ".") for p in prefixes):
            return floor
    raise AssertionError(f"{module} has no floor in tests/test_architecture.py; add it")


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return _imports(_modules())


def test_no_import_circle(edges):
    # the package root only re-exports: imports of it are not edges of the graph
    graph = {m: {t for t in ts if t != "latentcube"} for m, ts in edges.items()}
    assert _circles(graph) == []


def test_imports_only_flow_downwards(edges):
    wrong = []
    for m, targets in edges.items():
        for t in targets:
            if _floor(t) > _floor(m):
                wrong.append(f"{_short(m)} (floor {_floor(m)}) imports {_short(t)} ({_floor(t)})")
            for a, b in FORBIDDEN:
                sm, st = _short(m), _short(t)
                if sm.split(".")[0] == a and st.split(".")[0] == b:
                    wrong.append(f"{sm} imports {st}")
    assert sorted(wrong) == []


def test_no_source_file_over_800_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in (SRC / "latentcube").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 800
    }
    assert long == {}


def test_the_graph_walker_sees_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(edges) == [["a", "b", "c"]]
