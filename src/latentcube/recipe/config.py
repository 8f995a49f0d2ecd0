"""The configuration of the paper recipe: sizes, places, models and budgets in one object.

:class:`PaperRecipe` holds everything ``latentcube reproduce`` needs to go from
nothing to the paper's artefacts (spec sections 2-6). :meth:`PaperRecipe.paper` is
the paper's configuration (250 sites x 2 one-year windows = 500 training cubes of
90 x 90 px in lon 0-30 E, lat 42-62 N; the ``paper`` models and optimisation
presets; the 47 flux sites at 10 km), :meth:`PaperRecipe.toy` a configuration of
the same steps small enough for a test (three sites, ``tiny`` models, one epoch).
A YAML file holds the same fields (:func:`load_recipe`); sections left out keep the
paper's values.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from latentcube.errors import RecipeError

__all__ = [
    "EmbedSection",
    "FluxSection",
    "GPPSection",
    "ModelsSection",
    "PaperRecipe",
    "SitesSection",
    "load_recipe",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SitesSection(BaseModel):
    """Training sites and their cubes (spec 2.2).

    Drawn by :func:`~latentcube.cube.sampling.sample_sites`.
    """

    model_config = _FROZEN

    n_sites: int = Field(default=250, ge=1)
    region: tuple[float, float, float, float] = (0.0, 42.0, 30.0, 62.0)
    years: tuple[int, ...] = (2017, 2018, 2019, 2020, 2021, 2022, 2023, 2024)
    windows: int = Field(default=2, ge=1)
    size_m: float = Field(default=900.0, gt=0)
    min_distance_deg: float = Field(default=1.0, ge=0)
    seed: int = 42


class ModelsSection(BaseModel):
    """Stage-1 and fusion models and their optimisation (spec 3.5 and 4)."""

    model_config = _FROZEN

    s2: Literal["paper", "fast", "tiny"] = "paper"
    s1: Literal["paper", "fast", "tiny"] = "paper"
    preset: Literal["paper", "quick"] = "paper"
    fusion_preset: Literal["paper", "quick"] = "paper"
    fusion_mode: Literal["frozen", "finetune"] = "finetune"
    epochs: int = Field(default=500, ge=1)
    fusion_epochs: int = Field(default=500, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    seed: int = 42


class FluxSection(BaseModel):
    """The evaluation cubes at the flux towers (spec 2.3 and 6.2).

    ``sites``: ids of the shipped registry (:func:`~latentcube.cube.sites.flux_sites`,
    all 47 when empty), or ``table``: a CSV with ``id``, ``lat``, ``lon`` instead.
    ``flux_dir`` holds each site's flux record as ``evaluate gpp --flux-dir`` finds
    it (:func:`~latentcube.evaluation.gpp_sites.find_flux`: a folder ``<id>/``, one
    ``FLX_<id>_*FULLSET_DD*.csv`` or ICOS files ``<id>_*.csv``): sites without one
    are listed in the report and left out of the GPP step.
    """

    model_config = _FROZEN

    sites: tuple[str, ...] = ()
    table: Path | None = None
    flux_dir: Path | None = None
    start: str = "2017-01-01"
    end: str = "2020-12-31"
    size_m: float = Field(default=10_000.0, gt=0)


class EmbedSection(BaseModel):
    """How the evaluation cubes are embedded (:func:`~latentcube.inference.embed_to_zarr`).

    The fused model embeds with the paper's crop (``edge="nan"``): pixels within
    7 px of the border and the first and last 5 dates stay NaN.
    """

    model_config = _FROZEN

    chunk: int = Field(default=256, ge=16)
    time_chunk: int = Field(default=64, ge=1)


class GPPSection(BaseModel):
    """The GPP comparison at each site (spec 6.2; :func:`~latentcube.evaluation.gpp.run_gpp`)."""

    model_config = _FROZEN

    test_years: tuple[int, ...] = (2020,)
    seq_len: int = Field(default=90, ge=1)
    stride: int = Field(default=10, ge=1)
    models: tuple[str, ...] = ("transformer", "gbr")
    n_trials: int = Field(default=4, ge=1)
    max_epochs: int = Field(default=40, ge=1)
    time_budget: float | None = 60.0
    baselines: bool = True
    gap_fill: Literal["linear", "ucm"] = "linear"


class PaperRecipe(BaseModel):
    """Everything the paper recipe needs, YAML-loadable (:func:`load_recipe`).

    Attributes
    ----------
    name
        A title for the report.
    catalog
        STAC API URL, a known catalogue name, or a static ``catalog.json``
        (:func:`~latentcube.cube.build.build_cube`'s ``catalog``); ``None``
        is the builder's default.
    sensors
        Sensors of every cube (S2 and S1 for the fused model).
    scheduler, workers
        Where the cube builds run (:func:`~latentcube.cube.sites.build_cubes`):
        ``"local"`` (a ``LocalCluster``), ``"synchronous"`` or a scheduler address.
    device, precision
        Passed to the training functions when set (``None``: their defaults,
        ``"auto"`` and ``"32"``).
    sites, models, flux, embed, gpp
        The sections.
    """

    model_config = _FROZEN

    name: str = "Peters et al. 2025, reproduced"
    catalog: str | None = None
    sensors: tuple[str, ...] = ("s2", "s1")
    scheduler: str = "local"
    workers: int | None = Field(default=None, ge=1)
    device: str | None = None
    precision: str | None = None
    sites: SitesSection = SitesSection()
    models: ModelsSection = ModelsSection()
    flux: FluxSection = FluxSection()
    embed: EmbedSection = EmbedSection()
    gpp: GPPSection = GPPSection()

    @model_validator(mode="after")
    def _check(self) -> PaperRecipe:
        if "s2" not in self.sensors:
            raise ValueError("sensors must include 's2' (the reference sensor)")
        if len(set(self.sites.years)) < self.sites.windows:
            raise ValueError(
                f"sites.windows={self.sites.windows} needs as many distinct sites.years"
            )
        if self.flux.sites and self.flux.table is not None:
            raise ValueError("give flux.sites (registry ids) or flux.table, not both")
        return self

    @classmethod
    def paper(cls, **updates: Any) -> PaperRecipe:
        """The paper's configuration (spec sections 2-6), with ``updates`` applied."""
        return cls.model_validate(updates)

    @classmethod
    def toy(cls, **updates: Any) -> PaperRecipe:
        """The same steps at toy scale: 3 sites, ``tiny`` models, one epoch, short GPP.

        ``updates`` (e.g. ``catalog``, ``sites``, ``flux``) are merged into the
        sections, field by field.
        """
        base: dict[str, Any] = {
            "name": "toy recipe",
            "scheduler": "synchronous",
            "sites": {"n_sites": 3, "windows": 1, "size_m": 300.0, "min_distance_deg": 0.0},
            "models": {
                "s2": "tiny",
                "s1": "tiny",
                "preset": "quick",
                "fusion_preset": "quick",
                "fusion_mode": "frozen",
                "epochs": 1,
                "fusion_epochs": 1,
                "batch_size": 64,
            },
            "flux": {"size_m": 400.0},
            "embed": {"chunk": 64, "time_chunk": 64},
            "gpp": {
                "seq_len": 20,
                "stride": 5,
                "models": ("gbr",),
                "n_trials": 1,
                "max_epochs": 1,
                "time_budget": 0.0,
                "baselines": False,
            },
        }
        return cls.model_validate(_merge(base, updates))

    def digest(self, *sections: str) -> str:
        """SHA-256 (16 hex digits) of the named fields (all when none): a step's identity.

        ``flux.flux_dir`` is its own field here (``"flux_dir"``), not part of ``"flux"``,
        so giving the flux files later changes only the steps that read them.
        """
        data = self.model_dump(mode="json")
        # where the flux files are read from matters to the GPP step only: "flux_dir"
        data["flux_dir"] = data["flux"].pop("flux_dir")
        if sections:
            data = {k: data[k] for k in sections}
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def n_cubes(self) -> int:
        """Training cubes: sites x windows."""
        return self.sites.n_sites * self.sites.windows


def _merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in updates.items():
        if isinstance(v, BaseModel):
            v = v.model_dump(exclude_unset=True)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_recipe(
    path: str | os.PathLike[str] | None = None, *, toy: bool = False, **updates: Any
) -> PaperRecipe:
    """A recipe from a YAML file (sections left out keep the paper's or the toy's values).

    Parameters
    ----------
    path
        YAML file with the fields of :class:`PaperRecipe`; ``None`` for the
        paper's (or the toy) configuration as it is.
    toy
        Start from :meth:`PaperRecipe.toy` instead of the paper's configuration.
    **updates
        Fields applied last (``None`` values are ignored), e.g. ``catalog``.

    Raises
    ------
    RecipeError
        An unreadable file or an invalid field, in one line naming the file.
    """
    from latentcube._yaml import read_yaml

    data: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of fields, not {type(raw).__name__}")
        data = raw
    data = _merge(data, {k: v for k, v in updates.items() if v is not None})
    try:
        return PaperRecipe.toy(**data) if toy else PaperRecipe.paper(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "recipe"
        src = f"{path}: " if path is not None else ""
        raise RecipeError(f"{src}{where}: {first['msg']}") from None
