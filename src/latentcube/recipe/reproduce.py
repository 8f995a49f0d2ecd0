"""``latentcube reproduce`` as one library call: a recipe, its plan or its run."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from latentcube.recipe.config import load_recipe
from latentcube.recipe.cost import format_plan, load_rates, plan
from latentcube.recipe.steps import run_recipe

__all__ = ["reproduce"]


def reproduce(
    config: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    toy: bool = False,
    catalog: str | None = None,
    flux_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    precision: str | None = None,
    rates: str | os.PathLike[str] | None = None,
    steps: Sequence[str] | None = None,
    log: Callable[[str], Any] | None = None,
) -> str:
    """Plan (``dry_run``) or run the paper recipe into ``out``.

    Parameters
    ----------
    config
        A recipe YAML file (:func:`~latentcube.recipe.config.load_recipe`), or
        ``None`` for the paper's configuration (the toy one with ``toy``).
    out
        Output folder. A dry run only reads which steps are done there.
    dry_run
        Print the plan and its estimated cost; write nothing.
    toy
        Start from the toy configuration instead of the paper's.
    catalog, flux_dir, device, precision
        Override the recipe's fields of these names.
    rates
        A rates file of ``benchmarks/bench_recipe_rates.py`` (default the shipped one).
    steps
        Run only these steps.
    log
        Called with one line per step.

    Returns
    -------
    str
        The plan (dry run) or a summary of the run, for the terminal.
    """
    updates: dict[str, Any] = {"catalog": catalog, "device": device, "precision": precision}
    if flux_dir is not None:
        updates["flux"] = {"flux_dir": str(flux_dir)}
    recipe = load_recipe(config, toy=toy, **updates)
    if dry_run:
        r = load_rates(rates)
        return format_plan(plan(recipe, r, out), r, recipe)
    ran = run_recipe(recipe, out, steps=steps, log=log)
    lines = [f"{k:<13} {m['status']:<8} {m.get('seconds', 0):>9.1f} s" for k, m in ran.items()]
    return "\n".join([*lines, f"report: {os.path.join(out, 'report', 'report.md')}"])
