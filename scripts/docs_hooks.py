"""MkDocs hook: the reference of the top-level ``latentcube`` names, from the package itself.

``import latentcube`` re-exports its public API lazily (``_LAZY`` in
``src/latentcube/__init__.py``), which a static reader such as mkdocstrings cannot
follow. So ``docs/reference/latentcube.md`` holds a marker that this hook replaces,
at build time, with one ``::: module.name`` block per name of ``latentcube.__all__``,
each pointing at the module that ``latentcube/__init__.py`` takes it from, grouped by
subpackage. The page therefore always lists exactly the names ``__all__`` has, and a
name that is added, moved or removed needs no edit of the docs.

The package source is read with :mod:`ast`, not imported (no torch at docs build time).
Used by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "src" / "latentcube" / "__init__.py"
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


def top_level_names(init: Path = INIT) -> dict[str, str]:
    """``{name: module}`` for every name of ``latentcube.__all__``, in ``__all__`` order."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    imported: dict[str, str] = {}
    lazy: dict[str, str] = {}
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if "_LAZY" in targets:
                lazy = ast.literal_eval(node.value)
            elif "__all__" in targets:
                names = list(ast.literal_eval(node.value))
    out: dict[str, str] = {}
    for name in names:
        module = lazy.get(name) or imported.get(name)
        if module is None:
            raise ValueError(f"latentcube.__all__ names {name!r}, which __init__.py never imports")
        out[name] = module
    return out


def section_of(module: str) -> str:
    """The page section of a module."""
    for prefix, title in SECTIONS:
        if module == prefix or module.startswith(prefix + "."):
            return title
    return OTHER


def render(names: dict[str, str]) -> str:
    """The markdown that replaces the marker."""
    order = list(dict.fromkeys([title for _, title in SECTIONS] + [OTHER]))
    groups: dict[str, list[tuple[str, str]]] = {title: [] for title in order}
    for name, module in names.items():
        if name == "__version__":
            continue
        groups[section_of(module)].append((name, module))
    lines = [
        "| name | defined in |",
        "|---|---|",
        *(f"| `latentcube.{n}` | `{m}` |" for n, m in names.items()),
        "",
    ]
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
    return markdown.replace(MARKER, render(top_level_names()))
