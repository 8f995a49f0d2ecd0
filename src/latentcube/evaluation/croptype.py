"""Crop-type probe: a parcel's crop from each pixel's season-long series of per-date features.

Two representations of the same feature set are compared on the same pixels:

``series``
    the per-date features of the pixel's valid dates inside the season,
    interpolated linearly in time onto a fixed grid of days (every ``step_days``
    from the season start; values beyond the first/last valid date are held),
    concatenated: ``n_features x n_steps`` values;
``season mean``
    the mean of the same per-date features over the season (an annual summary).

A pixel is used when every feature set has at least ``min_dates`` valid dates
in the season and the pixel has a crop label. Labels are the WorldCereal crop
type codes (``CT`` of :func:`latentcube.cube.readers.read_worldcereal_labels`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.errors import EvaluationError
from latentcube.evaluation.cache import run_cache
from latentcube.evaluation.features import as_feature_cube
from latentcube.evaluation.probes import PROBES, block_ids, paired_differences, score_pooled

__all__ = [
    "croptype_probe",
    "default_season",
    "paired_by_kind",
    "run_croptype",
    "season_features",
]


def _interp_matrix(t_obs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(len(grid), len(t_obs)) weights of linear interpolation, edges held constant."""
    w = np.zeros((len(grid), len(t_obs)))
    if len(t_obs) == 1:
        w[:, 0] = 1.0
        return w
    j = np.clip(np.searchsorted(t_obs, grid, side="right") - 1, 0, len(t_obs) - 2)
    t0, t1 = t_obs[j], t_obs[j + 1]
    a = np.clip((grid - t0) / (t1 - t0), 0.0, 1.0)
    rows = np.arange(len(grid))
    w[rows, j] = 1.0 - a
    w[rows, j + 1] += a
    return w


def _validity_groups(finite: np.ndarray) -> list[np.ndarray]:
    """Indices of features sharing one validity mask (f, t, y, x) -> groups of features.

    An embedding or the S2 bands form one group (valid together); a stacked set
    such as S2 PCA + S1 backscatter forms two, each interpolated over its own dates.
    """
    groups: list[list[int]] = []
    for f in range(finite.shape[0]):
        for g in groups:
            if np.array_equal(finite[g[0]], finite[f]):
                g.append(f)
                break
        else:
            groups.append([f])
    return [np.asarray(g) for g in groups]


def season_features(
    cube: xr.DataArray,
    season: tuple[str, str],
    *,
    step_days: int = 15,
    min_dates: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel season series and season mean of a feature cube.

    Features that are valid on the same dates (e.g. all bands of S2, all
    features of an embedding) are interpolated together over those dates; a
    feature cube stacking sources with different dates (S2 PCA + S1) interpolates
    each source over its own valid dates.

    Parameters
    ----------
    cube
        (feature, time, y, x) feature cube.
    season
        First and last day (``YYYY-MM-DD``).
    step_days
        Spacing of the series grid.
    min_dates
        Fewest valid in-season dates (of every feature group) for a pixel to get
        features.

    Returns
    -------
    tuple
        ``series`` (y, x, n_features * n_steps), ``mean`` (y, x, n_features)
        and ``ok`` (y, x): NaN / False where a pixel has too few valid dates.
    """
    da = as_feature_cube(cube)
    t0, t1 = pd.Timestamp(season[0]), pd.Timestamp(season[1])
    if t1 <= t0:
        raise EvaluationError(f"season end {t1.date()} is not after its start {t0.date()}")
    times = pd.DatetimeIndex(da["time"].values)
    sel = (times >= t0) & (times <= t1)
    days = ((times[sel] - t0) / pd.Timedelta("1D")).to_numpy(float)
    grid = np.arange(0.0, (t1 - t0).days + 1, step_days)
    a = da.values[:, sel]  # (f, t, y, x)
    nf, _, ny, nx = a.shape
    fin = np.isfinite(a)
    per_step = np.full((ny, nx, nf, len(grid)), np.nan, np.float32)
    mean = np.full((ny, nx, nf), np.nan, np.float32)
    ok = np.ones((ny, nx), bool)
    for feats in _validity_groups(fin):
        ag = a[feats]
        ok_t = fin[feats].all(axis=0)  # (t, y, x): dates where this group is valid
        ok &= ok_t.sum(axis=0) >= min_dates
        for iy, ix in zip(*np.nonzero(ok_t.sum(axis=0) >= min_dates), strict=True):
            v = ok_t[:, iy, ix]
            vals = ag[:, v, iy, ix].T  # (n_obs, f_group)
            per_step[iy, ix, feats] = (_interp_matrix(days[v], grid) @ vals).T
            mean[iy, ix, feats] = vals.mean(axis=0)
    series = per_step.reshape(ny, nx, nf * len(grid))
    series[~ok] = np.nan
    mean[~ok] = np.nan
    return series, mean, ok


def croptype_probe(
    sets_per_cube: Sequence[Mapping[str, xr.DataArray]],
    labels_per_cube: Sequence[xr.DataArray | np.ndarray],
    seasons: Sequence[tuple[str, str]],
    *,
    block: int = 16,
    step_days: int = 15,
    min_dates: int = 3,
    probes: Sequence[str] = PROBES,
    n_splits: int = 5,
    min_samples: int = 30,
    seed: int = 0,
    tune: bool = True,
    score_only: Sequence[str] | None = None,
    repeats: int = 1,
    progress: bool = False,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Blocked-CV crop-type probe: per-date series vs season mean, for each feature set.

    Parameters
    ----------
    sets_per_cube
        For each cube (patch), feature-set name -> feature cube.
    labels_per_cube
        For each cube, its (y, x) crop-type codes (0 = no label).
    seasons
        For each cube, the growing season (first, last day) of its labels.
    block, probes, n_splits, seed, tune, repeats, progress, cache
        Spatial blocks (> 15 px) and CV settings
        (:func:`latentcube.evaluation.probes.blocked_cv`).
    step_days, min_dates
        See :func:`season_features`.
    min_samples
        Classes with fewer pixels (or in fewer than 2 blocks) are dropped.
    score_only
        Score only these keys (``"<set> / series"`` or ``"<set> / season mean"``).
        The samples are still those valid in *every* set and the folds are the
        same, so the scores equal those of a full run: a cheap way to screen one
        embedding against the baselines of an earlier full run.

    Returns
    -------
    dict
        ``scores`` keyed ``"<set> / series"`` and ``"<set> / season mean"``,
        class counts, dropped classes and sample counts.
    """
    if block <= 15:
        raise EvaluationError(f"blocks must be larger than the 15 px context, got {block}")
    if not (len(sets_per_cube) == len(labels_per_cube) == len(seasons)) or not sets_per_cube:
        raise EvaluationError("need one label map and one season per cube")
    names = list(sets_per_cube[0])
    feats: dict[str, list[np.ndarray]] = {}
    labs, groups = [], []
    for i, (sets, lab, season) in enumerate(
        zip(sets_per_cube, labels_per_cube, seasons, strict=True)
    ):
        lab = np.asarray(lab)
        per = {
            k: season_features(sets[k], season, step_days=step_days, min_dates=min_dates)
            for k in names
        }
        ok = lab > 0
        for _s, _m, o in per.values():
            if o.shape != lab.shape:
                raise EvaluationError(f"cube {i}: labels {lab.shape} vs features {o.shape}")
            ok &= o
        iy, ix = np.nonzero(ok)
        for k, (s, m, _) in per.items():
            feats.setdefault(f"{k} / series", []).append(s[iy, ix])
            feats.setdefault(f"{k} / season mean", []).append(m[iy, ix])
        labs.append(lab[iy, ix])
        groups.append(block_ids(iy, ix, block, offset=i * 10**9))
    if score_only is not None:
        unknown = sorted(set(score_only) - set(feats))
        if unknown:
            raise EvaluationError(f"score_only names unknown feature sets: {unknown}")
        feats = {k: v for k, v in feats.items() if k in score_only}
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
    return {
        "task": "croptype",
        "classes": {c: f"WorldCereal crop type {c}" for c in res["class_counts"]},
        "seasons": [list(s) for s in seasons],
        **res,
    }


def paired_by_kind(
    scores: Mapping[str, Any], embeddings: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each embedding's paired differences to the other sets of its own kind.

    The series of an embedding is compared with every other series, its season
    mean with every other season mean
    (:func:`latentcube.evaluation.probes.paired_differences`); keys absent from
    ``scores`` (a screening run) are skipped.
    """
    out = {}
    for kind in ("series", "season mean"):
        keys = [k for k in scores if k.endswith(f" / {kind}")]
        for emb in embeddings:
            ref = f"{emb} / {kind}"
            if ref in scores:
                out[ref] = paired_differences(scores, ref, [k for k in keys if k != ref])
    return out


def default_season(cube: xr.Dataset | xr.DataArray) -> tuple[str, str]:
    """1 March - 31 October of the year of the cube's last date (the labels' season)."""
    year = pd.DatetimeIndex(cube["time"].values).max().year
    return (f"{year}-03-01", f"{year}-10-31")


def run_croptype(
    cubes: Sequence[xr.Dataset],
    labels: Sequence[np.ndarray],
    embeddings: Mapping[str, Sequence[xr.DataArray]],
    out_dir: str | os.PathLike[str],
    *,
    seasons: Sequence[tuple[str, str]] | None = None,
    block: int = 16,
    seed: int = 0,
    command: str | None = None,
    notes: str = "",
    tune: bool = True,
    score_only: Sequence[str] | None = None,
    repeats: int = 1,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Crop-type probe of embeddings and every baseline, written as a report folder.

    Parameters
    ----------
    cubes
        The patches' cubes.
    labels
        One (y, x) crop-type map per cube (0 = no label).
    embeddings
        Feature-set name -> one feature cube per cube.
    out_dir
        Report folder.
    seasons
        Growing season per cube (default :func:`default_season`).
    block, seed
        See :func:`croptype_probe`.
    command, notes
        Reproducing command and extra markdown for the report.
    tune
        Choose each probe's regularisation by inner blocked CV on the training
        folds (see :func:`latentcube.evaluation.probes.blocked_cv`).
    score_only
        See :func:`croptype_probe`.
    repeats
        Repeat the CV with this many fold assignments; each embedding's paired
        differences (series to series, season mean to season mean) are then in
        ``paired`` (:func:`latentcube.evaluation.probes.paired_differences`).
    progress, resume
        Progress bar, and the probe cache that lets a killed call resume; see
        :func:`latentcube.evaluation.landcover.run_landcover`.
    """
    from latentcube.evaluation.baselines import feature_sets
    from latentcube.evaluation.report import write_probe_report

    seasons = list(seasons) if seasons is not None else [default_season(c) for c in cubes]
    sets = feature_sets(cubes, embeddings, seed=seed)
    with run_cache(out_dir, ".probe-cache", resume) as cache:
        res = croptype_probe(
            sets,
            labels,
            seasons,
            block=block,
            seed=seed,
            tune=tune,
            score_only=score_only,
            repeats=repeats,
            progress=progress,
            cache=cache,
        )
        res["paired"] = paired_by_kind(res["scores"], list(embeddings))
        res["cubes"] = [str(c.attrs.get("source", "")) for c in cubes]
        write_probe_report(
            res,
            out_dir,
            "Crop-type probe (WorldCereal)",
            f"Labelled pixels of {len(cubes)} patch(es), seasons {seasons}.",
            notes=notes,
            command=command,
            seed=seed,
        )
    return res
