"""Optimisation settings of every training run, their presets and training recipes.

A *recipe* is what a user writes once for a run: a model variant (``"fast"``) or a
YAML file (or mapping) with ``model:`` (with ``variant:``), ``train:`` and, for the
fusion model, ``fusion:`` sections that override the presets. :func:`read_recipe`
reads it; :func:`train_config` applies its ``train:`` section and the caller's
last-word options to a preset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "VARIANTS",
    "TrainConfig",
    "fusion_train_config",
    "read_recipe",
    "train_config",
    "train_config_preset",
    "train_overrides",
]

#: The stage-1 model variants (``AutoencoderConfig.preset``).
VARIANTS = ("paper", "fast", "tiny")
#: Settings that do not change what a run computes, only when it stops or how fast it
#: runs: never part of a run's identity (a run resumes under another budget).
BUDGET_FIELDS = ("max_seconds", "max_cpu_seconds", "num_threads")


class TrainConfig(BaseModel):
    """Optimisation settings; defaults are the paper's (spec section 3.5).

    Attributes
    ----------
    max_epochs, max_seconds, max_cpu_seconds
        Stop after this many epochs, this much wall time, or CPU time of the
        process (all threads; a fair budget on a shared machine). The time
        budgets are not part of a run's identity.
    hide_centre_prob, hide_prob
        Gap-filling training (stage 1, beyond the paper; 0 = off): probability of
        hiding a window's centre pixel-date, and any other valid pixel-date, from
        the input while keeping it in the loss.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = 1.5e-4
    warmup_steps: int = Field(default=30_000, ge=0)
    warmup_start_factor: float = 1e-3
    plateau_factor: float = 0.35
    plateau_patience: int = 5
    min_lr: float = 1.5e-6
    batch_size: int = Field(default=16, ge=1)
    val_batch_size: int = 256
    max_epochs: int = Field(default=500, ge=1)
    max_seconds: float | None = None
    max_cpu_seconds: float | None = None
    early_stopping_patience: int = 16
    early_stopping_min_delta: float = 0.0
    grad_clip: float = 1.0
    seed: int = 42
    num_threads: int | None = None
    hide_centre_prob: float = Field(default=0.0, ge=0, le=1)
    hide_prob: float = Field(default=0.0, ge=0, lt=1)

    def identity(self) -> dict[str, Any]:
        """The settings that make two runs different (JSON types; budgets left out)."""
        return self.model_dump(mode="json", exclude=set(BUDGET_FIELDS))


def train_config_preset(name: str) -> TrainConfig:
    """``"paper"`` (the authors' settings) or ``"quick"`` (minutes on a laptop CPU)."""
    if name == "paper":
        return TrainConfig()
    if name == "quick":
        return TrainConfig(
            lr=2e-3,
            warmup_steps=100,
            batch_size=32,
            plateau_patience=3,
            early_stopping_patience=8,
            max_epochs=200,
            min_lr=1e-5,
        )
    raise ValueError(f"unknown preset {name!r}; expected 'paper' or 'quick'")


def fusion_train_config(name: str = "quick") -> TrainConfig:
    """``"paper"``: the authors' fusion settings; ``"quick"``: minutes on a laptop CPU.

    The paper's fusion settings differ from stage 1 in the plateau schedule
    (factor 0.3, patience 9, minimum learning rate 3.5e-7).
    """
    base = train_config_preset(name)
    if name == "paper":
        return base.model_copy(
            update={"plateau_factor": 0.3, "plateau_patience": 9, "min_lr": 3.5e-7}
        )
    return base


def read_recipe(
    recipe: str | os.PathLike[str] | Mapping[str, Any] | None,
) -> tuple[str | None, dict[str, Any]]:
    """A recipe as ``(variant, sections)``.

    Parameters
    ----------
    recipe
        ``None``; a model variant (``"paper"``, ``"fast"``, ``"tiny"``); a YAML
        file; or a mapping with ``model:``, ``train:`` and/or ``fusion:`` sections.

    Returns
    -------
    tuple
        The variant named directly (else ``None``) and the sections (``{}`` for
        none). A ``model:`` section may name the variant itself (``variant:``).

    Raises
    ------
    ValueError
        For a name that is neither a variant nor a file, or a file that is not a
        mapping of sections.
    """
    if recipe is None:
        return None, {}
    if isinstance(recipe, Mapping):
        return None, dict(recipe)
    text = os.fspath(recipe)
    if text in VARIANTS and not Path(text).exists():
        return text, {}
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"config must be one of {', '.join(VARIANTS)} or a YAML file: {text}")
    from latentcube._yaml import read_yaml

    sections = read_yaml(path) or {}
    if not isinstance(sections, dict):
        raise ValueError(f"{text}: expected a mapping with 'model:' and/or 'train:' sections")
    return None, sections


def train_config(
    preset: TrainConfig, sections: Mapping[str, Any], updates: Mapping[str, Any] | None = None
) -> TrainConfig:
    """``preset`` with the recipe's ``train:`` section, then ``updates``, applied."""
    data = {**preset.model_dump(), **(sections.get("train") or {}), **dict(updates or {})}
    return TrainConfig.model_validate(data)


def train_overrides(
    max_seconds: float | None = None,
    max_cpu_seconds: float | None = None,
    max_epochs: int | None = None,
    hide_centre_prob: float = 0.0,
    hide_prob: float = 0.0,
) -> dict[str, Any]:
    """The :class:`TrainConfig` fields that a command's options set over its recipe.

    Parameters
    ----------
    max_seconds, max_cpu_seconds, max_epochs
        Budgets; None keeps the recipe's.
    hide_centre_prob, hide_prob
        Gap-filling probabilities (stage 1): both are set when either is above 0,
        else the recipe's stay.

    Returns
    -------
    dict
        The ``updates`` of :func:`train_config` (the ``train=`` of the recipes).
    """
    budgets = {"max_seconds": max_seconds, "max_cpu_seconds": max_cpu_seconds}
    out = {k: v for k, v in {**budgets, "max_epochs": max_epochs}.items() if v is not None}
    if hide_centre_prob or hide_prob:
        out.update(hide_centre_prob=hide_centre_prob, hide_prob=hide_prob)
    return out
