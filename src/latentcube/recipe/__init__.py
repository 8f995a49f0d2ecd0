"""The paper recipe: from nothing to the paper's artefacts in resumable steps.

``latentcube reproduce`` runs it: sample the training sites, build the training
cubes, train S2 and S1 stage 1, train the fused model, build the evaluation cubes
at the flux sites, embed them, run GPP at every site and write one report
(:func:`run_recipe`); ``--dry-run`` prints :func:`plan` with its cost estimated
from measured rates.
"""

from __future__ import annotations

from latentcube.recipe.config import PaperRecipe, load_recipe
from latentcube.recipe.cost import format_plan, load_rates, plan
from latentcube.recipe.steps import STEPS, done_steps, gpp_at_sites, gpp_pooled, run_recipe

__all__ = [
    "STEPS",
    "PaperRecipe",
    "done_steps",
    "format_plan",
    "gpp_at_sites",
    "gpp_pooled",
    "load_rates",
    "load_recipe",
    "plan",
    "run_recipe",
]
