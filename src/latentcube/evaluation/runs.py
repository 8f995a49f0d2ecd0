"""The evaluation commands as library functions: from file paths to a report folder.

Each ``evaluate_*`` function is what one ``latentcube evaluate`` command runs: it
opens the cubes, reads labels or flux data, embeds the cubes with a model (kept in
``<out>/.embed-cache`` until the report is written, so a killed run resumes) or
opens embedding stores, and calls the task's ``run_*`` function.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.errors import EvaluationError

__all__ = [
    "embedding_features",
    "evaluate_croptype",
    "evaluate_gpp",
    "evaluate_landcover",
    "label_maps",
    "parse_season",
]

PathLike = str | os.PathLike[str]


def _embedder(
    model: PathLike, device: str = "cpu"
) -> tuple[Callable[[xr.Dataset], xr.DataArray], list[Any]]:
    """A function embedding one cube in memory with the bundle at ``model``, and its key.

    The key holds the model, not the device: an embedding cached on one device is
    reused on another (they agree within 1e-4).
    """
    from latentcube.bundle import ModelBundle
    from latentcube.inference import embed

    bundle = ModelBundle.load(model)  # one read, whichever kind of model it is
    weights = [part for k, v in bundle.model.state_dict().items() for part in (k, v.numpy())]
    key = [bundle.model.config.model_dump(mode="json"), *weights]

    def one(cube: xr.Dataset) -> xr.DataArray:
        return embed(cube, bundle, device=device).compute()

    return one, key


def embedding_features(
    cubes: Sequence[xr.Dataset],
    model: PathLike | None = None,
    embedding: Sequence[PathLike] | None = None,
    name: str = "embedding",
    cache: PathLike | None = None,
    device: str = "cpu",
) -> dict[str, list[xr.DataArray]]:
    """Feature cubes of an embedding, one per cube: embedded with a model, or opened.

    Parameters
    ----------
    cubes
        The cubes (in memory).
    model
        A bundle (file or folder) to embed every cube with.
    embedding
        One embedding store per cube (instead of ``model``).
    name
        Name of the feature set.
    cache
        A folder where each embedding made with ``model`` is kept, keyed by the
        model's weights and configuration and the cube's content, so a rerun
        after a kill reads it instead of embedding again.
    device
        Where ``model`` runs (``"cpu"``, ``"auto"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).

    Returns
    -------
    dict
        ``{name: [feature cube per cube]}``, or ``{}`` with neither ``model`` nor
        ``embedding``.
    """
    from latentcube._version import __version__
    from latentcube.evaluation.cache import StepCache, cached_array
    from latentcube.evaluation.features import as_feature_cube

    if model is not None and embedding:
        raise EvaluationError("give either a model or embedding stores, not both")
    if model is not None:
        one, key = _embedder(model, device)
        store = StepCache(cache, __version__, *key) if cache is not None else None
        return {name: [cached_array(store, [c], partial(one, c)) for c in cubes]}
    if embedding:
        if len(embedding) != len(cubes):
            raise EvaluationError(f"{len(embedding)} embedding stores for {len(cubes)} cubes")
        return {name: [as_feature_cube(e) for e in embedding]}
    return {}


def label_maps(
    labels: Sequence[PathLike], cubes: Sequence[xr.Dataset], variable: str | None = None
) -> list[xr.DataArray]:
    """One (y, x) label array per cube, each raster put on its cube's grid (``read_labels``)."""
    from latentcube.cube.readers import read_labels

    if len(labels) != len(cubes):
        raise EvaluationError(f"{len(labels)} --labels for {len(cubes)} cubes: give one per cube")
    return [read_labels(f, c, variable=variable) for f, c in zip(labels, cubes, strict=True)]


def parse_season(text: str) -> tuple[str, str]:
    """``START,END`` (ISO dates, START before END) -> the two dates as ISO strings."""
    parts = [p.strip() for p in text.split(",")]
    bad = f"a season must be START,END dates, e.g. 2019-03-01,2019-10-31; got {text!r}"
    if len(parts) != 2:
        raise EvaluationError(bad)
    try:
        start, end = (pd.Timestamp(p) for p in parts)
    except ValueError:
        raise EvaluationError(bad) from None
    if pd.isna(start) or pd.isna(end):
        raise EvaluationError(bad)
    if start >= end:
        raise EvaluationError(f"season: {parts[0]} is not before {parts[1]}")
    return start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")


def _safe_out(
    out: PathLike, *inputs: PathLike | Sequence[PathLike] | None, device: str = "cpu"
) -> None:
    """Refuse, before any work, a device this machine lacks and a report folder.

    The report folder may not be, lie inside or contain an input.
    """
    from latentcube.devices import resolve_device
    from latentcube.io import check_output

    resolve_device(device)
    flat: list[PathLike] = []
    for item in inputs:
        if isinstance(item, str | os.PathLike):
            flat.append(item)
        elif item is not None:
            flat.extend(item)
    check_output(out, flat)


def _open_all(paths: Sequence[PathLike]) -> list[xr.Dataset]:
    from latentcube.cube.readers import open_cube

    return [open_cube(p).load() for p in paths]


def evaluate_landcover(
    cubes: Sequence[PathLike],
    out: PathLike,
    *,
    labels: Sequence[PathLike] | None = None,
    label_variable: str | None = None,
    model: PathLike | None = None,
    embedding: Sequence[PathLike] | None = None,
    name: str = "embedding",
    progress: bool = True,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """Land-cover probe of cubes on disk (``latentcube evaluate landcover``).

    The classes are each cube's ``landcover`` variable, or with ``labels`` one
    raster per cube; ``model`` embeds the cubes on ``device``. Other keyword arguments go to
    :func:`~latentcube.evaluation.landcover.run_landcover`.
    """
    from latentcube.evaluation.cache import run_cache
    from latentcube.evaluation.landcover import run_landcover

    _safe_out(out, cubes, labels, model, embedding, device=device)
    loaded = _open_all(cubes)
    if labels:
        maps = label_maps(labels, loaded, label_variable)
        loaded = [
            c.assign(landcover=(("y", "x"), m.values)) for c, m in zip(loaded, maps, strict=True)
        ]
    with run_cache(out, ".embed-cache", model is not None) as cache:
        feats = embedding_features(loaded, model, embedding, name, cache, device)
        return run_landcover(loaded, feats, out, progress=progress, resume=True, **kwargs)


def evaluate_croptype(
    patches: Sequence[PathLike],
    out: PathLike,
    *,
    labels: Sequence[PathLike] | None = None,
    label_variable: str | None = None,
    season: str | None = None,
    model: PathLike | None = None,
    embedding: Sequence[PathLike] | None = None,
    name: str = "embedding",
    progress: bool = True,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """Crop-type probe of WorldCereal patches or labelled cubes (``latentcube evaluate croptype``).

    ``season`` is ``START,END`` for every cube (default: 1 March - 31 October of
    each cube's last year); ``model`` embeds the cubes on ``device``. Other keyword
    arguments go to
    :func:`~latentcube.evaluation.croptype.run_croptype`.
    """
    from latentcube.cube.readers import read_worldcereal_labels
    from latentcube.evaluation.cache import run_cache
    from latentcube.evaluation.croptype import run_croptype

    _safe_out(out, patches, labels, model, embedding, device=device)
    seasons = [parse_season(season)] * len(patches) if season is not None else None
    loaded = _open_all(patches)  # S1 too: fused models and S1 baselines
    if labels:
        maps = [m.values for m in label_maps(labels, loaded, label_variable)]
    else:
        maps = [read_worldcereal_labels(p)["CT"].values for p in patches]
    with run_cache(out, ".embed-cache", model is not None) as cache:
        feats = embedding_features(loaded, model, embedding, name, cache, device)
        return run_croptype(
            loaded, maps, feats, out, seasons=seasons, progress=progress, resume=True, **kwargs
        )


def _site_latitude(code: str, lat: float | None, locations: PathLike | None) -> float:
    from latentcube.evaluation.flux import site_registry

    if lat is not None:
        return lat
    reg = site_registry(locations)
    if code not in reg:
        raise EvaluationError(f"site {code!r} is not in the site registry; give its latitude")
    return reg[code].lat


def evaluate_gpp(
    flux: PathLike,
    out: PathLike,
    *,
    site: str | None = None,
    lat: float | None = None,
    locations: PathLike | None = None,
    cube: PathLike | None = None,
    model: PathLike | None = None,
    embedding: PathLike | None = None,
    name: str = "embedding",
    test_years: Sequence[int] = (),
    gap_fill: str = "linear",
    footprint: int | None = None,
    carbonfluxbench: PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """GPP at one flux site from files on disk (``latentcube evaluate gpp``).

    Reads the flux record, builds the site's feature sets (the embedding made
    with ``model`` from ``cube`` or read from ``embedding``; with ``cube`` also its
    bands, indices and PCA-7; always potential radiation), and runs
    :func:`~latentcube.evaluation.gpp.run_gpp` split by years (default the last
    year of the record); ``model`` embeds ``cube`` on ``device``. Other keyword
    arguments (``n_trials``, ``time_budget``, ``max_epochs``, ``models``,
    ``command``) go to ``run_gpp``.
    """
    from latentcube.evaluation.baselines import carbonfluxbench_reference, feature_sets
    from latentcube.evaluation.cache import run_cache
    from latentcube.evaluation.features import as_feature_cube, feature_columns, site_features
    from latentcube.evaluation.flux import read_flux
    from latentcube.evaluation.gpp import run_gpp, site_table

    _safe_out(out, flux, locations, cube, model, embedding, carbonfluxbench, device=device)
    table = read_flux(flux)
    code = site or str(table.attrs.get("site"))
    latitude = _site_latitude(code, lat, locations)
    with run_cache(out, ".embed-cache", model is not None) as cache:
        cubes: dict[str, Any] = {}
        if cube is not None:
            c = _open_all([cube])[0]
            emb = embedding_features(
                [c], model, [embedding] if embedding else None, name, cache, device
            )
            cubes = feature_sets([c], emb, seed=seed)[0]
        elif embedding is not None:
            cubes = {name: as_feature_cube(embedding)}
        feats = site_features(
            cubes,
            lat=latitude,
            start=table.index.min(),
            end=table.index.max(),
            method=gap_fill,  # type: ignore[arg-type]
            footprint=footprint,
        )
        sets = feature_columns(feats, cubes)
        years = list(test_years) or [int(np.max(table.index.year))]
        ref = carbonfluxbench_reference(carbonfluxbench, [code]) if carbonfluxbench else None
        return run_gpp(
            {code: site_table(table, feats)},
            sets,
            Path(out),
            test_years=years,
            seed=seed,
            reference=ref,
            progress=progress,
            resume=True,
            title=f"GPP evaluation at {code}",
            **kwargs,
        )
