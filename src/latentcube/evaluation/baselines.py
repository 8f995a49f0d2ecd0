"""Baseline feature cubes and predictors: what a user would do without an embedding.

Every baseline feature set is a *feature cube* ``(feature, time, y, x)`` like an
embedding, so the GPP task and the probes treat them identically:

- :func:`raw_bands`: the S2 surface reflectance of each pixel and date;
- :func:`spectral_indices`: NDVI, EVI, NIRv and kNDVI computed with ``spyndex``;
- :func:`pca_bands`: the first 7 principal components of the raw bands
  (same size as the paper's 7-d embedding);
- :func:`s1_backscatter`: the S1 VV/VH values of cubes that hold S1, alone and
  stacked with PCA-7 (the inputs a fused S1 + S2 embedding sees, without a model).

:func:`climatology` is the GPP predictor without any imagery (the mean seasonal
cycle of the training years), and :func:`carbonfluxbench_reference` summarises
the published CarbonFluxBench per-site scores for daily GPP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.errors import EvaluationError

__all__ = [
    "INDICES",
    "baseline_feature_cubes",
    "carbonfluxbench_reference",
    "climatology",
    "feature_sets",
    "pca_bands",
    "raw_bands",
    "s1_backscatter",
    "spectral_indices",
]

#: Vegetation indices of the baselines (spyndex names).
INDICES: tuple[str, ...] = ("NDVI", "EVI", "NIRv", "kNDVI")


def _coords(cube: xr.Dataset) -> dict[str, np.ndarray]:
    return {"time": cube["time"].values, "y": cube["y"].values, "x": cube["x"].values}


def raw_bands(cube: xr.Dataset, bands: Sequence[str] | None = None) -> xr.DataArray:
    """S2 reflectance as a feature cube; NaN where ``s2_valid`` is False.

    Parameters
    ----------
    cube
        A cube in the latentcube data model.
    bands
        Bands to keep (default all).
    """
    s2 = cube["s2"] if bands is None else cube["s2"].sel(band=list(bands))
    a = np.where(cube["s2_valid"].values[:, None], s2.values, np.nan).astype(np.float32)
    return xr.DataArray(
        a.transpose(1, 0, 2, 3),
        dims=("feature", "time", "y", "x"),
        coords={"feature": [str(b) for b in s2["band"].values], **_coords(cube)},
        name="S2 bands",
    )


def s1_backscatter(cube: xr.Dataset) -> xr.DataArray:
    """S1 values (the cube's ``s1``, e.g. normalised VV/VH dB) as a feature cube.

    NaN where ``s1_valid`` is False; on the cube's (S2) time axis.
    """
    if "s1" not in cube:
        raise EvaluationError(f"cube has no 's1' variable (has {list(cube.data_vars)})")
    s1 = cube["s1"]
    band_dim = next(d for d in s1.dims if d not in ("time", "y", "x"))
    s1 = s1.transpose("time", band_dim, "y", "x")
    a = np.where(cube["s1_valid"].values[:, None], s1.values, np.nan).astype(np.float32)
    return xr.DataArray(
        a.transpose(1, 0, 2, 3),
        dims=("feature", "time", "y", "x"),
        coords={"feature": [f"S1 {b}" for b in s1[band_dim].values], **_coords(cube)},
        name="S1",
    )


def _band(cube: xr.Dataset, *names: str) -> np.ndarray:
    have = [str(b) for b in cube["band"].values]
    for n in names:
        if n in have:
            v = cube["s2"].sel(band=n).values.astype(np.float64)
            return np.where(cube["s2_valid"].values, v, np.nan)
    raise EvaluationError(f"cube has none of the bands {names} (has {have})")


def spectral_indices(cube: xr.Dataset, indices: Sequence[str] = INDICES) -> xr.DataArray:
    """Vegetation indices computed with ``spyndex`` as a feature cube.

    NIR is B08 when the cube has it, else B8A; red B04, blue B02. kNDVI uses
    the RBF kernel with ``sigma = (N + R) / 2`` (Camps-Valls et al. 2021), for
    which kNDVI = tanh(NDVI^2). EVI uses spyndex's default constants
    (g 2.5, C1 6, C2 7.5, L 1).

    Parameters
    ----------
    cube
        A cube with B02, B04 and B08 or B8A.
    indices
        Any of ``NDVI``, ``EVI``, ``NIRv``, ``kNDVI``.
    """
    import spyndex

    n, r = _band(cube, "B08", "B8A"), _band(cube, "B04")
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in indices:
            if name == "kNDVI":
                sigma = 0.5 * (n + r)
                knr = spyndex.computeKernel("RBF", params={"a": n, "b": r, "sigma": sigma})
                v = spyndex.computeIndex("kNDVI", params={"kNN": 1.0, "kNR": knr})
            elif name == "EVI":
                c = spyndex.constants
                v = spyndex.computeIndex(
                    "EVI",
                    params={
                        "N": n,
                        "R": r,
                        "B": _band(cube, "B02"),
                        "g": c["g"].default,
                        "C1": c["C1"].default,
                        "C2": c["C2"].default,
                        "L": c["L"].default,
                    },
                )
            elif name in ("NDVI", "NIRv"):
                v = spyndex.computeIndex(name, params={"N": n, "R": r})
            else:
                raise EvaluationError(f"unknown index {name!r}; expected one of {INDICES}")
            v = np.asarray(v, np.float64)
            out.append(np.where(np.isfinite(v), v, np.nan))
    return xr.DataArray(
        np.stack(out).astype(np.float32),
        dims=("feature", "time", "y", "x"),
        coords={"feature": list(indices), **_coords(cube)},
        name="indices",
    )


def pca_bands(
    cube: xr.Dataset,
    n_components: int = 7,
    *,
    fit_cubes: Sequence[xr.Dataset] | None = None,
    max_samples: int = 200_000,
    seed: int = 0,
) -> xr.DataArray:
    """Principal components of the raw bands as a feature cube.

    Parameters
    ----------
    cube
        The cube to transform.
    n_components
        Components kept, at most the number of bands (a 4-band cube gives 4,
        i.e. a rotation of the bands).
    fit_cubes
        Cubes whose valid pixel-dates fit the PCA (default ``cube``).
    max_samples
        Pixel-dates drawn (seeded) for the fit.
    seed
        Seed of the draw.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    samples = []
    for c in fit_cubes or [cube]:
        a = raw_bands(c).values.reshape(c.sizes["band"], -1).T
        a = a[np.isfinite(a).all(1)]
        samples.append(a)
    fit = np.concatenate(samples)
    if len(fit) > max_samples:
        fit = fit[rng.choice(len(fit), max_samples, replace=False)]
    k = min(n_components, fit.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(fit)
    raw = raw_bands(cube).values
    flat = raw.reshape(raw.shape[0], -1).T
    ok = np.isfinite(flat).all(1)
    proj = np.full((flat.shape[0], k), np.nan, np.float32)
    proj[ok] = pca.transform(flat[ok])
    return xr.DataArray(
        proj.T.reshape(k, *raw.shape[1:]),
        dims=("feature", "time", "y", "x"),
        coords={"feature": [f"PC{i + 1}" for i in range(k)], **_coords(cube)},
        name=f"PCA-{k}",
        attrs={"explained_variance_ratio": pca.explained_variance_ratio_.tolist()},
    )


def baseline_feature_cubes(
    cube: xr.Dataset,
    *,
    pca_fit_cubes: Sequence[xr.Dataset] | None = None,
    seed: int = 0,
    with_s1: bool | None = None,
) -> dict[str, xr.DataArray]:
    """Every baseline feature set of one cube.

    S2 bands, each index, all indices, PCA-7; with S1 (default: when the cube
    has ``s1``) also ``S1 VV/VH`` and ``PCA-7 + S1 VV/VH`` (9 features: the
    inputs of a fused S1 + S2 embedding, reduced without a model).
    """
    idx = spectral_indices(cube)
    out: dict[str, xr.DataArray] = {"S2 bands": raw_bands(cube)}
    for name in INDICES:
        out[name] = idx.sel(feature=[name]).rename(name)
    out["indices (4)"] = idx
    pca = pca_bands(cube, fit_cubes=pca_fit_cubes, seed=seed)
    out[str(pca.name)] = pca
    if with_s1 if with_s1 is not None else "s1" in cube:
        s1 = s1_backscatter(cube)
        out["S1 VV/VH"] = s1
        both = xr.concat([pca, s1], dim="feature")
        out[f"{pca.name} + S1 VV/VH"] = both.rename(f"{pca.name} + S1 VV/VH")
    return out


def climatology(
    train: pd.Series, days: pd.DatetimeIndex | Sequence[pd.Timestamp], half_window: int = 7
) -> np.ndarray:
    """Mean seasonal cycle of daily GPP from the training years, evaluated on ``days``.

    The mean of all training days whose day of year lies within
    ``half_window`` days (circularly) of the target's day of year.

    Parameters
    ----------
    train
        Daily GPP of the training period (NaN ignored).
    days
        Days to predict.
    half_window
        Half width of the day-of-year smoothing window.
    """
    s = train.dropna()
    if s.empty:
        raise EvaluationError("no training GPP for the climatology")
    doy = pd.DatetimeIndex(s.index).dayofyear.to_numpy()
    sums = np.bincount(doy, weights=s.to_numpy(float), minlength=367)[1:367]
    cnt = np.bincount(doy, minlength=367)[1:367].astype(float)
    kernel = np.ones(2 * half_window + 1)
    wrap = lambda a: np.convolve(np.r_[a[-half_window:], a, a[:half_window]], kernel, "valid")  # noqa: E731
    with np.errstate(invalid="ignore"):
        clim = wrap(sums) / wrap(cnt)
    target = pd.DatetimeIndex(days).dayofyear.to_numpy() - 1
    return clim[target]


def carbonfluxbench_reference(
    folder: str | os.PathLike[str], sites: Sequence[str] | None = None
) -> dict[str, object]:
    """Published CarbonFluxBench daily-GPP scores: medians per model file, and per site.

    Parameters
    ----------
    folder
        The CarbonFluxBench ``eval_results`` folder.
    sites
        Sites whose own rows are returned as well (e.g. ``["SE-Htm"]``).

    Returns
    -------
    dict
        ``median_by_file`` (file -> median R2, RMSE, n sites) and ``sites``
        (site -> list of per-file rows).
    """
    from latentcube.evaluation.flux import read_carbonfluxbench

    r = read_carbonfluxbench(folder)
    med = r.groupby("file")[["R2", "RMSE"]].median()
    med["n_sites"] = r.groupby("file")["site"].nunique()
    out: dict[str, object] = {"median_by_file": med.round(4).to_dict(orient="index")}
    if sites:
        out["sites"] = {
            s: r[r["site"] == s][["file", "R2", "RMSE"]].round(4).to_dict(orient="records")
            for s in sites
        }
    return out


def feature_sets(
    cubes: Sequence[xr.Dataset],
    embeddings: Mapping[str, Sequence[xr.DataArray]] | None = None,
    *,
    seed: int = 0,
) -> list[dict[str, xr.DataArray]]:
    """Per cube: the named embeddings followed by every baseline feature set.

    Parameters
    ----------
    cubes
        Cubes in the data model.
    embeddings
        Feature-set name -> one feature cube per cube (on the cube's grid and dates).
    seed
        Seed of the PCA sample (the PCA is fitted on all cubes together).
    """
    from latentcube.evaluation.features import as_feature_cube

    embeddings = dict(embeddings or {})
    for name, per in embeddings.items():
        if len(per) != len(cubes):
            raise EvaluationError(f"{name!r}: {len(per)} embeddings for {len(cubes)} cubes")
    out = []
    for i, cube in enumerate(cubes):
        sets = {name: as_feature_cube(per[i], name) for name, per in embeddings.items()}
        for name, da in sets.items():
            if da.sizes["time"] != cube.sizes["time"] or da.sizes["y"] != cube.sizes["y"]:
                raise EvaluationError(f"{name!r} of cube {i} is not on the cube's grid/dates")
        with_s1 = all("s1" in c for c in cubes)
        sets.update(baseline_feature_cubes(cube, pca_fit_cubes=cubes, seed=seed, with_s1=with_s1))
        out.append(sets)
    return out
