"""Tree-cover probe: Copernicus tree-cover density (%) of a pixel from a summary of its features.

A regression probe for the nrt Romania forest cube (``nrt_romania_s2_l2a``: five years
of S2 and the HRL Tree Cover Density 2018 on the same extent). Each feature set (an
embedding, NDVI, the raw bands) is summarised per pixel by its mean and standard
deviation over the valid dates of a period (:func:`pixel_summary`); a ridge regression
predicts the density from that summary under spatially blocked cross-validation, its
``alpha`` chosen per outer fold by an inner blocked CV on the training blocks only,
from the same grid for every set. The score is R² of the pooled out-of-fold
predictions, repeated over fold assignments (seeds ``seed``, ``seed + 1``, ...): its
mean and sample standard deviation are reported. Every set is scored on the same
pixels (those where all sets are finite).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from latentcube.errors import EvaluationError
from latentcube.evaluation.features import as_feature_cube
from latentcube.evaluation.probes import block_ids

__all__ = [
    "ALPHAS",
    "pixel_summary",
    "read_tree_cover",
    "ridge_blocked_cv",
    "run_treecover",
    "treecover_probe",
]

#: Ridge penalties searched by the inner blocked CV (features standardised first).
ALPHAS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def read_tree_cover(path: str | os.PathLike[str], like: xr.Dataset) -> xr.DataArray:
    """The HRL tree-cover density raster (%, nodata 255) on the grid of ``like``.

    Resampled by nearest neighbour (a 20 m pixel covers 2 x 2 pixels of a 10 m
    cube); nodata and values above 100 become NaN. Returns (y, x) float32.
    """
    import rioxarray as rxr
    from rasterio.enums import Resampling

    from latentcube.cube.schema import cube_crs

    try:
        opened = rxr.open_rasterio(path, masked=False)
        if not isinstance(opened, xr.DataArray):
            raise EvaluationError(f"{path}: expected one raster, found several subdatasets")
        src = opened.squeeze("band", drop=True)
    except Exception as err:  # rasterio raises its own error types
        raise EvaluationError(f"{path}: not a readable raster ({err})") from err
    target = xr.DataArray(
        np.zeros((like.sizes["y"], like.sizes["x"]), np.float32),
        dims=("y", "x"),
        coords={"y": like["y"].values, "x": like["x"].values},
    ).rio.write_crs(cube_crs(like))
    out = src.rio.reproject_match(target, resampling=Resampling.nearest, nodata=255)
    vals = out.values.astype(np.float32)
    vals[(vals > 100) | (vals < 0)] = np.nan
    if not np.isfinite(vals).any():
        raise EvaluationError(f"{path}: no tree-cover value on the cube's grid")
    return xr.DataArray(vals, dims=("y", "x"), coords=target.coords, name="tree_cover")


def pixel_summary(
    features: xr.DataArray, period: tuple[str, str] | None = None, min_dates: int = 3
) -> np.ndarray:
    """Per-pixel mean and standard deviation over the valid dates of ``period``.

    Parameters
    ----------
    features
        (feature, time, y, x), NaN where invalid.
    period
        Inclusive (start, end) dates; default every date.
    min_dates
        Pixels with fewer finite dates are NaN.

    Returns
    -------
    numpy.ndarray
        (2 F, y, x) float64: the F means, then the F standard deviations (ddof 0).
    """
    fc = as_feature_cube(features)
    if period is not None:
        fc = fc.sel(time=slice(*period))
    v = np.asarray(fc.values, np.float64)
    ok: np.ndarray = np.asarray(np.isfinite(v).all(axis=0))  # (time, y, x)
    n = ok.sum(axis=0)
    w = np.where(ok[None], v, 0.0)
    mean = w.sum(axis=1) / np.maximum(n, 1)
    var = (np.where(ok[None], (v - mean[:, None]) ** 2, 0.0)).sum(axis=1) / np.maximum(n, 1)
    out = np.concatenate([mean, np.sqrt(var)])
    out[:, n < min_dates] = np.nan
    return out


def _ridge_oof(
    x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], alpha: float
) -> np.ndarray:
    """Out-of-fold predictions of a standardised ridge regression with fixed ``alpha``."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(y)
    for tr, te in folds:
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
        pred[te] = model.fit(x[tr], y[tr]).predict(x[te])
    return pred


def _folds(groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    n = min(n_splits, len(np.unique(groups)))
    if n < 2:
        raise EvaluationError("blocked cross-validation needs at least two spatial blocks")
    gkf = GroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in gkf.split(groups, groups, groups)]


def ridge_blocked_cv(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_splits: int = 5,
    seed: int = 0,
    alphas: Sequence[float] | None = ALPHAS,
) -> dict[str, Any]:
    """R² of a ridge regression under blocked CV with one fold assignment.

    Parameters
    ----------
    x, y, groups
        (n, F) features, (n,) target, (n,) spatial block ids (folds never split one).
    n_splits
        Outer (and inner) folds, capped by the number of blocks.
    seed
        Seed of the fold assignment (``GroupKFold(shuffle=True)``).
    alphas
        Grid searched per outer fold by inner blocked CV on its training blocks
        (R² of the inner out-of-fold predictions); None: ``alpha = 1``.

    Returns
    -------
    dict
        ``r2`` (pooled out-of-fold), ``rmse``, ``chosen`` (alpha per outer fold).
    """
    from sklearn.metrics import r2_score

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape[0] != y.shape[0] or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise EvaluationError("features and target must be finite and of the same length")
    folds = _folds(groups, n_splits, seed)
    pred = np.empty_like(y)
    chosen = []
    for tr, te in folds:
        alpha = 1.0
        if alphas is not None:
            inner = _folds(groups[tr], n_splits, seed)
            scores = [r2_score(y[tr], _ridge_oof(x[tr], y[tr], inner, a)) for a in alphas]
            alpha = float(alphas[int(np.argmax(scores))])
        pred[te] = _ridge_oof(x, y, [(tr, te)], alpha)[te]
        chosen.append(alpha)
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    return {"r2": float(r2_score(y, pred)), "rmse": rmse, "chosen": chosen}


def treecover_probe(
    summaries: Mapping[str, np.ndarray],
    target: np.ndarray,
    *,
    block: int = 20,
    n_splits: int = 5,
    repeats: int = 10,
    seed: int = 0,
    max_samples: int | None = 5000,
    alphas: Sequence[float] | None = ALPHAS,
) -> dict[str, Any]:
    """Blocked-CV ridge probe of tree cover for each feature set, over fold assignments.

    Parameters
    ----------
    summaries
        Set name -> (F, y, x) per-pixel summary (:func:`pixel_summary`).
    target
        (y, x) tree-cover density (%), NaN where unknown.
    block
        Side of the CV blocks in pixels (larger than the 15 px model context).
    n_splits, alphas
        See :func:`ridge_blocked_cv`.
    repeats
        Fold assignments (seeds ``seed`` .. ``seed + repeats - 1``), the same for every set.
    seed
        Seed of the first assignment and of the pixel draw.
    max_samples
        Pixels drawn (seeded) from those where every set and the target are finite.

    Returns
    -------
    dict
        ``scores[set]`` = ``{"r2", "r2_sd", "r2_repeats", "rmse", "chosen"}``,
        ``paired[set]`` (differences to ``ndvi`` per assignment: mean, sd, wins),
        ``n_samples``, ``n_blocks``, ``block_px``, ``fold_seeds``.
    """
    if block <= 15:
        raise EvaluationError(f"blocks must be larger than the 15 px context, got {block}")
    tgt = np.asarray(target, np.float64)
    ok = np.isfinite(tgt)
    for name, s in summaries.items():
        if s.shape[1:] != tgt.shape:
            raise EvaluationError(f"set {name!r} has grid {s.shape[1:]}, target {tgt.shape}")
        ok &= np.isfinite(s).all(axis=0)
    iy, ix = np.nonzero(ok)
    if max_samples is not None and iy.size > max_samples:
        pick = np.sort(np.random.default_rng(seed).choice(iy.size, max_samples, replace=False))
        iy, ix = iy[pick], ix[pick]
    if iy.size < 10:
        raise EvaluationError(f"only {iy.size} pixels have every feature set and a target")
    groups = block_ids(iy, ix, block)
    y = tgt[iy, ix]
    seeds = [seed + r for r in range(repeats)]
    scores: dict[str, dict[str, Any]] = {}
    for name, s in summaries.items():
        x = s[:, iy, ix].T
        runs = [
            ridge_blocked_cv(x, y, groups, n_splits=n_splits, seed=k, alphas=alphas) for k in seeds
        ]
        r2 = [r["r2"] for r in runs]
        scores[name] = {
            "r2": float(np.mean(r2)),
            "r2_sd": float(np.std(r2, ddof=1)) if len(r2) > 1 else 0.0,
            "r2_repeats": r2,
            "rmse": float(np.mean([r["rmse"] for r in runs])),
            "chosen": [c for r in runs for c in r["chosen"]],
        }
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for name in scores:
        paired[name] = {}
        for other in scores:
            if other == name:
                continue
            d = np.subtract(scores[name]["r2_repeats"], scores[other]["r2_repeats"])
            paired[name][other] = {
                "mean": float(d.mean()),
                "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                "wins": int((d > 0).sum()),
                "repeats": int(d.size),
            }
    return {
        "task": "treecover",
        "scores": scores,
        "paired": paired,
        "n_samples": int(iy.size),
        "n_blocks": int(np.unique(groups).size),
        "block_px": block,
        "fold_seeds": seeds,
    }


def run_treecover(
    cube: xr.Dataset,
    tree_cover: xr.DataArray | np.ndarray,
    embeddings: Mapping[str, xr.DataArray],
    *,
    period: tuple[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Tree-cover probe of embeddings against NDVI and the raw bands of ``cube``.

    The baselines are NDVI (B08 and B04 of the cube) and every band of the cube,
    summarised exactly as the embeddings (:func:`pixel_summary` over ``period``).
    ``kwargs`` go to :func:`treecover_probe`.
    """
    from latentcube.evaluation.baselines import raw_bands, spectral_indices

    sets: dict[str, xr.DataArray] = dict(embeddings)
    sets["ndvi"] = spectral_indices(cube, ("NDVI",))
    sets["bands"] = raw_bands(cube)
    summaries = {k: pixel_summary(v, period) for k, v in sets.items()}
    res = treecover_probe(summaries, np.asarray(tree_cover), **kwargs)
    res["period"] = list(period) if period else None
    res["cube"] = str(cube.attrs.get("source", ""))
    return res
