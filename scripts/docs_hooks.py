"""MkDocs hook: the reference of the top-level ``latentcube`` names, from the package itself.

``import latentcube`` re-exports its public API lazily (``_LAZY`` in
``src/latentcube/__init__.py``), which a static reader such as mkdocstrings cannot
follow. So ``docs/reference/latentcube.md`` holds a marker that this hook replaces, at
build time, with a table of every name of ``latentcube.__all__`` and the module that
``latentcube/__init__.py`` takes it from, and one ``::: module.name`` block per name,
grouped by subpackage. A name that another reference page already documents (an
explicit ``::: module.name`` there, or a ``::: module`` whose ``__all__`` has it) gets
a link to that page instead of a second block: an object documented twice makes its
cross-references ambiguous, which fails the strict build. The page therefore always
lists exactly the names ``__all__`` has, and a name that is added, moved or removed
needs no edit of the docs.

The package source is read with :mod:`ast`, not imported (no torch at docs build time).
Used by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
INIT = SRC / "latentcube" / "__init__.py"
REFERENCE = ROOT / "docs" / "reference"
MARKER = "<!-- latentcube-top-level-api -->"

#: Section titles by module prefix, in page order (the first matching prefix wins).
SECTIONS = [
    ("latentcube.cube", "Cubes: data model, readers, building from STAC"),
    ("latentcube.grid", "Cubes: data model, readers, building from STAC"),
    ("latentcube.data", "Context windows"),
    ("latentcube.models", "Models and their configuration"),
    ("latentcube.bundle", "Model bundles"),
    ("latentcube.training", "Training"),
    ("latentcube.inference", "Embedding"),
    ("latentcube.embedding_store", "Embedding"),
    ("latentcube.fusion_inference", "Embedding"),
    ("latentcube.io", "Storage and export"),
    ("latentcube.evaluation", "Evaluation"),
    ("latentcube.sensors", "Sensors"),
    ("latentcube.errors", "Errors"),
    ("latentcube.demo", "Demo"),
]
OTHER = "Other"


def _all_of(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                return list(ast.literal_eval(node.value))
    return []


def top_level_names(init: Path = INIT) -> dict[str, str]:
    """``{name: module}`` for every name of ``latentcube.__all__``, in ``__all__`` order."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    imported: dict[str, str] = {}
    lazy: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
                lazy = ast.literal_eval(node.value)
    out: dict[str, str] = {}
    for name in _all_of(tree):
        module = lazy.get(name) or imported.get(name)
        if module is None:
            raise ValueError(f"latentcube.__all__ names {name!r}, which __init__.py never imports")
        out[name] = module
    return out


def _module_file(identifier: str) -> Path | None:
    base = SRC.joinpath(*identifier.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def documented_elsewhere(reference: Path = REFERENCE, page: str = "latentcube.md") -> set[str]:
    """Identifiers rendered by the other reference pages' ``::: identifier`` blocks."""
    out: set[str] = set()
    for md in sorted(reference.glob("*.md")):
        if md.name == page:
            continue
        for identifier in re.findall(r"^::: *(\S+)", md.read_text(encoding="utf-8"), re.M):
            out.add(identifier)
            path = _module_file(identifier)
            if path is not None:
                tree = ast.parse(path.read_text(encoding="utf-8"))
                out.update(f"{identifier}.{name}" for name in _all_of(tree))
    return out


def section_of(module: str) -> str:
    """The page section of a module."""
    for prefix, title in SECTIONS:
        if module == prefix or module.startswith(prefix + "."):
            return title
    return OTHER


def render(names: dict[str, str], elsewhere: set[str]) -> str:
    """The markdown that replaces the marker."""
    order = list(dict.fromkeys([title for _, title in SECTIONS] + [OTHER]))
    groups: dict[str, list[tuple[str, str]]] = {title: [] for title in order}
    lines = ["| name | documented as |", "|---|---|"]
    for name, module in names.items():
        identifier = f"{module}.{name}"
        if name == "__version__":
            lines.append(f"| `latentcube.{name}` | the version string |")
            continue
        lines.append(f"| `latentcube.{name}` | [`{identifier}`][{identifier}] |")
        if identifier not in elsewhere:
            groups[section_of(module)].append((name, module))
    lines.append("")
    for title in order:
        if not groups[title]:
            continue
        lines += [f"## {title}", ""]
        for name, module in sorted(groups[title], key=lambda nm: nm[0].lower()):
            lines += [
                f"::: {module}.{name}",
                "    options:",
                "      heading_level: 3",
                "      show_root_full_path: true",
                "",
            ]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker on the page that holds it."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(top_level_names(), documented_elsewhere()))
