"""Land-cover probe: ESA WorldCover class of a pixel from its per-date features.

Samples are pixel-dates where every compared feature set is finite (so all sets
are scored on exactly the same samples); the label is the pixel's WorldCover
class (``landcover`` of :func:`latentcube.cube.readers.read_greenearthnet`).
Codes that are not in the WorldCover legend (the GreenEarthNet minicubes hold a
few half-way values such as 35, from resampling) are excluded, as is class 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from latentcube.errors import EvaluationError
from latentcube.evaluation.cache import run_cache
from latentcube.evaluation.features import as_feature_cube
from latentcube.evaluation.probes import PROBES, block_ids, paired_differences, score_pooled

__all__ = ["WORLDCOVER", "landcover_probe", "landcover_samples", "run_landcover"]

#: ESA WorldCover 2020/2021 legend.
WORLDCOVER: dict[int, str] = {
    10: "Tree cover",
    20: "Shrubland",
    30: "Grassland",
    40: "Cropland",
    50: "Built-up",
    60: "Bare / sparse vegetation",
    70: "Snow and ice",
    80: "Permanent water bodies",
    90: "Herbaceous wetland",
    95: "Mangroves",
    100: "Moss and lichen",
}


def landcover_samples(
    feature_cubes: Mapping[str, xr.DataArray],
    labels: xr.DataArray | np.ndarray,
    *,
    block: int = 16,
    max_samples: int = 20_000,
    seed: int = 0,
    cube_index: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Pixel-date samples of one cube: features per set, labels and block ids.

    Parameters
    ----------
    feature_cubes
        Feature-set name -> (feature, time, y, x) on the same grid and dates.
    labels
        (y, x) WorldCover codes.
    block
        Side of the spatial CV blocks in pixels (> 15, the model context).
    max_samples
        Pixel-dates drawn (seeded, without replacement) from this cube.
    seed, cube_index
        Seed of the draw; index of the cube (keeps block ids unique across cubes).
    """
    cubes = {k: as_feature_cube(v) for k, v in feature_cubes.items()}
    first = next(iter(cubes.values()))
    shape = (first.sizes["time"], first.sizes["y"], first.sizes["x"])
    lab = np.asarray(labels)
    if lab.shape != shape[1:]:
        raise EvaluationError(f"labels have shape {lab.shape}, feature cubes {shape[1:]}")
    ok = np.isin(lab, list(WORLDCOVER))[None] & np.ones(shape, bool)
    for name, c in cubes.items():
        if (c.sizes["time"], c.sizes["y"], c.sizes["x"]) != shape:
            raise EvaluationError(f"feature set {name!r} is not on the grid/dates of the others")
        ok &= np.isfinite(c.values).all(axis=0)
    t, iy, ix = np.nonzero(ok)
    rng = np.random.default_rng(seed + cube_index)
    if len(t) > max_samples:
        pick = np.sort(rng.choice(len(t), max_samples, replace=False))
        t, iy, ix = t[pick], iy[pick], ix[pick]
    feats = {k: c.values[:, t, iy, ix].T for k, c in cubes.items()}
    return feats, lab[iy, ix], block_ids(iy, ix, block, offset=cube_index * 10**9)


def landcover_probe(
    sets_per_cube: Sequence[Mapping[str, xr.DataArray]],
    labels_per_cube: Sequence[xr.DataArray | np.ndarray],
    *,
    block: int = 16,
    max_samples: int = 20_000,
    probes: Sequence[str] = PROBES,
    n_splits: int = 5,
    min_samples: int = 30,
    seed: int = 0,
    tune: bool = True,
    repeats: int = 1,
    progress: bool = False,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Blocked-CV land-cover probe over one or more cubes.

    Parameters
    ----------
    sets_per_cube
        For each cube, feature-set name -> feature cube (same set names in every cube).
    labels_per_cube
        For each cube, its (y, x) WorldCover codes.
    block, max_samples
        See :func:`landcover_samples`.
    probes, n_splits, seed, tune, repeats, progress, cache
        See :func:`latentcube.evaluation.probes.blocked_cv`.
    min_samples
        Classes with fewer samples (or in fewer than 2 blocks) are dropped.

    Returns
    -------
    dict
        ``scores`` (set -> probe -> metrics), ``classes`` (kept codes and names),
        ``dropped_classes``, ``n_samples``, ``n_blocks``, ``block_px``.
    """
    if block <= 15:
        raise EvaluationError(f"blocks must be larger than the 15 px context, got {block}")
    if len(sets_per_cube) != len(labels_per_cube) or not sets_per_cube:
        raise EvaluationError("need one label map per cube and at least one cube")
    names = list(sets_per_cube[0])
    feats: dict[str, list[np.ndarray]] = {k: [] for k in names}
    labs, groups = [], []
    for i, (sets, lab) in enumerate(zip(sets_per_cube, labels_per_cube, strict=True)):
        if list(sets) != names:
            raise EvaluationError(f"cube {i} has feature sets {list(sets)}, expected {names}")
        f, y, g = landcover_samples(
            sets, lab, block=block, max_samples=max_samples, seed=seed, cube_index=i
        )
        for k in names:
            feats[k].append(f[k])
        labs.append(y)
        groups.append(g)
    res = score_pooled(
        feats,
        labs,
        groups,
        block=block,
        probes=probes,
        n_splits=n_splits,
        min_samples=min_samples,
        seed=seed,
        tune=tune,
        repeats=repeats,
        progress=progress,
        cache=cache,
    )
    names_ = {c: WORLDCOVER.get(int(c), c) for c in res["class_counts"]}
    return {"task": "landcover", "classes": names_, **res}


def run_landcover(
    cubes: Sequence[xr.Dataset],
    embeddings: Mapping[str, Sequence[xr.DataArray]],
    out_dir: str | os.PathLike[str],
    *,
    block: int = 16,
    max_samples: int = 20_000,
    seed: int = 0,
    command: str | None = None,
    notes: str = "",
    tune: bool = True,
    repeats: int = 1,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Land-cover probe of embeddings and every baseline, written as a report folder.

    Parameters
    ----------
    cubes
        Cubes with a ``landcover`` (y, x) variable (GreenEarthNet minicubes).
    embeddings
        Feature-set name -> one feature cube per cube.
    out_dir
        Report folder (``report.md``, ``results.json``, ``figures/``).
    block, max_samples, seed
        See :func:`landcover_probe`.
    command, notes
        Reproducing command and extra markdown for the report.
    tune
        Choose each probe's regularisation by inner blocked CV on the training
        folds (see :func:`latentcube.evaluation.probes.blocked_cv`).
    repeats
        Repeat the CV with this many fold assignments; each embedding's paired
        differences to every other set are then in ``paired``
        (:func:`latentcube.evaluation.probes.paired_differences`).
    progress
        Show a progress bar of the probe fits (stderr).
    resume
        Keep each probe result in ``<out_dir>/.probe-cache`` as it is computed, so
        that the same call after a kill fits only what is missing; the folder is
        removed once the report is written.

    Returns
    -------
    dict
        The probe result (also in ``results.json``).
    """
    from latentcube.evaluation.baselines import feature_sets
    from latentcube.evaluation.report import write_probe_report

    for i, c in enumerate(cubes):
        if "landcover" not in c:
            raise EvaluationError(f"cube {i} has no 'landcover' variable (WorldCover classes)")
    sets = feature_sets(cubes, embeddings, seed=seed)
    with run_cache(out_dir, ".probe-cache", resume) as cache:
        res = landcover_probe(
            sets,
            [c["landcover"].values for c in cubes],
            block=block,
            max_samples=max_samples,
            seed=seed,
            tune=tune,
            repeats=repeats,
            progress=progress,
            cache=cache,
        )
        res["paired"] = {k: paired_differences(res["scores"], k) for k in embeddings}
        res["cubes"] = [str(c.attrs.get("source", "")) for c in cubes]
        write_probe_report(
            res,
            out_dir,
            "Land-cover probe (ESA WorldCover)",
            f"Pixel-dates of {len(cubes)} cube(s).",
            notes=notes,
            command=command,
            seed=seed,
        )
    return res
