"""The ``latentcube`` command line.

One module per command group; each command is a thin wrapper that parses options
and calls one library function.

======================  ==========================================================
module                  commands
======================  ==========================================================
:mod:`.info`            ``info``, ``models``
:mod:`.demo`            ``demo``
:mod:`.cube`            ``cube`` (one place, or many with ``--sites``/``--sample``)
:mod:`.train`           ``train``, ``whiten``
:mod:`.embed`           ``embed``
:mod:`.analysis`        ``summarise``, ``change``, ``similar``
:mod:`.evaluate`        ``evaluate landcover|croptype|gpp|reconstruction``
:mod:`.reproduce`       ``reproduce`` (the paper recipe)
======================  ==========================================================

Errors are turned into one line and exit code 2 in one place (:mod:`._app`).
"""

from __future__ import annotations

from latentcube.cli import (  # noqa: F401
    analysis,
    cube,
    demo,
    embed,
    evaluate,
    info,
    reproduce,
    train,
)
from latentcube.cli._app import app

__all__ = ["app"]
