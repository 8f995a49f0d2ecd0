"""Griffe extension for the docs: Sphinx roles in docstrings become cross-references.

The docstrings are numpydoc and name other objects with Sphinx roles
(``:func:`latentcube.open_cube```, ``:class:`~latentcube.bundle.ModelBundle```), which
mkdocstrings would show as literal text. This extension rewrites each role into an
*optional* mkdocs-autorefs reference: a link where the target is documented on the site,
plain code where it is not (a private helper, numpy, dask), never a build warning.

Targets are resolved as Sphinx would, roughly: a top-level ``latentcube.NAME`` to the
module ``latentcube/__init__.py`` takes it from (where it is documented); a dotted name
as it is; a bare name relative to the class or module the docstring belongs to. ``~``
shows only the last component. Used by ``mkdocs.yml`` (mkdocstrings ``extensions:``).
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

import griffe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_hooks import top_level_names

ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const|type):"
    r"`(?P<tilde>~?)(?P<text>[^`<]+?)(?:\s*<(?P<target>[^`>]+)>)?`"
)
TOP_LEVEL = {f"latentcube.{name}": f"{module}.{name}" for name, module in top_level_names().items()}


def _resolve(target: str, obj: griffe.Object) -> str:
    target = target.strip().lstrip(".").removesuffix("()")
    if target in TOP_LEVEL:
        return TOP_LEVEL[target]
    if "." in target:
        first = target.split(".", 1)[0]
        if first != "latentcube" and first in obj.module.members:
            return f"{obj.module.path}.{target}"  # relative to the module: Class.method
        return target
    scope: Any = obj if obj.is_class or obj.is_module else obj.parent
    return f"{scope.path}.{target}" if scope is not None else target


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with every Sphinx role replaced by an optional autorefs reference."""

    def one(match: re.Match[str]) -> str:
        shown = match["text"].strip()
        target = match["target"] or shown
        if match["tilde"] and not match["target"]:
            shown = shown.removesuffix("()").rsplit(".", 1)[-1]
        identifier = html.escape(_resolve(target, obj), quote=True)
        return (
            f'<autoref identifier="{identifier}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>"
        )

    return ROLE.sub(one, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring, if it has one."""
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = rewrite(obj.docstring.value, obj)
