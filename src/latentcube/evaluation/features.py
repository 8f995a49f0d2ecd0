"""Site features from an embedding cube: spatial mean per date, daily gap filling, radiation.

Input is any *feature cube*: an :class:`xarray.DataArray` with dims
``(feature, time, y, x)`` (NaN = no value), e.g. the ``embedding`` of a
latentcube embedding store, the S2 bands, spectral indices or PCA components of
:mod:`latentcube.evaluation.baselines`. Nothing here depends on how the
features were made, so the same code serves S2-only latents today and a fused
embedding later.

Steps (paper spec section 6.2): the mean of every feature over a footprint per
date (:func:`site_series`; dates with too few valid pixels dropped), filled to
a daily series by linear interpolation or by an unobserved-components model
with a Kalman smoother (:func:`gap_fill`), plus the daily potential clear-sky
solar radiation at the site's latitude (:func:`potential_radiation`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.errors import EmbeddingError, EvaluationError

__all__ = [
    "as_feature_cube",
    "extraterrestrial_radiation",
    "feature_columns",
    "gap_fill",
    "potential_radiation",
    "site_features",
    "site_series",
]

#: Solar constant of FAO-56 (Allen et al. 1998, eq. 21), MJ m-2 min-1.
SOLAR_CONSTANT = 0.0820


def as_feature_cube(
    source: xr.DataArray | xr.Dataset | str | os.PathLike[str], name: str | None = None
) -> xr.DataArray:
    """A (feature, time, y, x) float DataArray from an array, a dataset or an embedding store.

    Parameters
    ----------
    source
        A DataArray with those dims, a Dataset holding ``embedding`` (the
        latentcube embedding product), or the path of an embedding Zarr store.
    name
        Feature-set name stored as the array's name (default: keep).
    """
    from latentcube.embedding_store import embedding_array, open_embedding

    if isinstance(source, str | os.PathLike):
        try:  # an embedding store; no model code needed
            source = open_embedding(source)
        except EmbeddingError as err:
            raise EvaluationError(str(err)) from err
    da = embedding_array(source, error=EvaluationError, any_order=True).astype(np.float32)
    return da.rename(name) if name is not None else da


def _footprint_weights(da: xr.DataArray, footprint: int | np.ndarray | None) -> np.ndarray:
    ny, nx = da.sizes["y"], da.sizes["x"]
    if footprint is None:
        return np.ones((ny, nx))
    if isinstance(footprint, int | np.integer):
        if footprint < 1:
            raise EvaluationError(f"footprint side must be >= 1 px, got {footprint}")
        w = np.zeros((ny, nx))
        s = int(min(footprint, ny, nx))
        y0, x0 = (ny - s) // 2, (nx - s) // 2
        w[y0 : y0 + s, x0 : x0 + s] = 1.0
        return w
    w = np.asarray(footprint, float)
    if w.shape != (ny, nx):
        raise EvaluationError(f"footprint weights have shape {w.shape}, cube is {(ny, nx)}")
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise EvaluationError("footprint weights must be finite, >= 0 and not all 0")
    return w


def site_series(
    cube: xr.DataArray | xr.Dataset | str | os.PathLike[str],
    *,
    footprint: int | np.ndarray | None = None,
    min_valid_fraction: float = 0.01,
    feature_set: str | None = None,
) -> pd.DataFrame:
    """Footprint-weighted mean of every feature per date.

    A pixel-date counts when all its features are finite. Dates whose valid
    (weighted) share of the footprint is below ``min_valid_fraction`` are dropped.

    Parameters
    ----------
    cube
        A feature cube (see :func:`as_feature_cube`).
    footprint
        ``None``: the whole cube; an int: the central square of that side in
        pixels (the paper's later code uses 100 px = 1 km); a (y, x) array of
        non-negative weights, e.g. a flux footprint climatology.
    min_valid_fraction
        Smallest valid share of the footprint for a date to be kept.
    feature_set
        Name prefixed to the columns (``<set>:<feature>``); default the array's name.

    Returns
    -------
    pandas.DataFrame
        Index ``date`` (day of each kept date), one column per feature, and
        ``attrs["valid_fraction"]`` (Series over the kept dates).
    """
    da = as_feature_cube(cube)
    w = _footprint_weights(da, footprint)
    a = da.values.astype(np.float64)
    ok: np.ndarray = np.asarray(np.isfinite(a).all(axis=0))  # (time, y, x)
    wv = ok * w[None]
    frac = wv.sum(axis=(1, 2)) / w.sum()
    sums = np.einsum("ftyx,tyx->tf", np.where(ok[None], a, 0.0), wv)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / wv.sum(axis=(1, 2))[:, None]
    keep = frac >= max(min_valid_fraction, 1e-12)
    prefix = feature_set if feature_set is not None else (da.name or "")
    cols = [f"{prefix}:{f}" if prefix else str(f) for f in da["feature"].values]
    days = pd.DatetimeIndex(da["time"].values).normalize()
    df = pd.DataFrame(mean[keep], index=days[keep], columns=cols)
    # two acquisitions on one day (tile overlap): average them
    df = df.groupby(level=0).mean()
    df.index.name = "date"
    df.attrs["valid_fraction"] = pd.Series(frac[keep], index=days[keep]).groupby(level=0).mean()
    df.attrs["feature_set"] = prefix
    return df


def gap_fill(
    series: pd.DataFrame,
    method: Literal["linear", "ucm"] = "linear",
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    ucm_level: str = "local linear trend",
) -> pd.DataFrame:
    """Fill irregular per-date features to a daily series.

    Parameters
    ----------
    series
        Output of :func:`site_series` (index = dates).
    method
        ``linear``: linear interpolation in time between observed dates, NaN
        outside the first/last observation (no extrapolation). ``ucm``: an
        unobserved-components model (``statsmodels``
        ``UnobservedComponents``, by default a local linear trend) fitted by
        maximum likelihood to each feature's daily series with the missing days
        left missing; the Kalman *smoothed* level fills every day between the
        first and last observation (observed days are smoothed too).
    start, end
        Daily range of the output (default: first to last observed date).
    ucm_level
        Trend specification of the unobserved-components model.

    Returns
    -------
    pandas.DataFrame
        Daily index ``date``, same columns.
    """
    if series.empty:
        raise EvaluationError("no dates to gap-fill (every date was dropped?)")
    idx = pd.date_range(
        pd.Timestamp(start) if start is not None else series.index.min(),
        pd.Timestamp(end) if end is not None else series.index.max(),
        freq="D",
        name="date",
    )
    full_idx = idx.union(series.index)
    daily = series.reindex(full_idx)
    first, last = series.index.min(), series.index.max()
    inside = (full_idx >= first) & (full_idx <= last)
    if method == "linear":
        out = daily.interpolate(method="time", limit_area="inside")
    elif method == "ucm":
        import warnings

        from statsmodels.tsa.statespace.structural import UnobservedComponents

        span = pd.date_range(first, last, freq="D")
        sub = series.reindex(span)
        out = daily.copy()
        for col in series.columns:
            y = sub[col].to_numpy(float)
            scale = float(np.nanstd(y)) or 1.0
            loc = float(np.nanmean(y))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = UnobservedComponents((y - loc) / scale, level=ucm_level)
                res = model.fit(disp=False, maxiter=200)
            level = np.asarray(res.smoothed_state)[0] * scale + loc
            out.loc[span, col] = level
    else:
        raise EvaluationError(f"gap-fill method must be 'linear' or 'ucm', got {method!r}")
    out.loc[~inside] = np.nan
    return out.reindex(idx)


def extraterrestrial_radiation(dates: pd.DatetimeIndex, lat_deg: float) -> np.ndarray:
    """Daily extraterrestrial radiation Ra (MJ m-2 d-1), FAO-56 eq. 21-25.

    ``Ra = 24 * 60 / pi * Gsc * dr * (ws sin(phi) sin(d) + cos(phi) cos(d) sin(ws))``
    with the inverse relative Earth-Sun distance ``dr``, the solar declination
    ``d`` and the sunset hour angle ``ws`` (clipped for polar day and night).
    """
    if not -90.0 <= lat_deg <= 90.0:
        raise EvaluationError(f"latitude must be in [-90, 90], got {lat_deg}")
    j = pd.DatetimeIndex(dates).dayofyear.to_numpy(float)
    phi = np.deg2rad(lat_deg)
    dr = 1.0 + 0.033 * np.cos(2 * np.pi * j / 365.0)
    decl = 0.409 * np.sin(2 * np.pi * j / 365.0 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    return (
        24.0
        * 60.0
        / np.pi
        * SOLAR_CONSTANT
        * dr
        * (ws * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(ws))
    )


def potential_radiation(
    dates: pd.DatetimeIndex, lat_deg: float, elevation_m: float = 0.0
) -> pd.Series:
    """Daily potential clear-sky solar radiation Rso (MJ m-2 d-1), FAO-56 eq. 37.

    ``Rso = (0.75 + 2e-5 * z) * Ra`` with :func:`extraterrestrial_radiation`.
    """
    ra = extraterrestrial_radiation(dates, lat_deg)
    return pd.Series(
        (0.75 + 2e-5 * elevation_m) * ra, index=pd.DatetimeIndex(dates), name="rad:Rso"
    )


def site_features(
    cubes: dict[str, xr.DataArray | xr.Dataset | str | os.PathLike[str]],
    *,
    lat: float,
    start: str | pd.Timestamp,
    end: str | pd.Timestamp,
    method: Literal["linear", "ucm"] = "linear",
    footprint: int | np.ndarray | None = None,
    min_valid_fraction: float = 0.01,
    elevation_m: float = 0.0,
) -> pd.DataFrame:
    """Daily site features from several named feature cubes, plus potential radiation.

    Parameters
    ----------
    cubes
        Feature-set name -> feature cube (all of the same site).
    lat, elevation_m
        Site latitude (degrees) and elevation (m) for the radiation feature.
    start, end
        Daily output range.
    method, footprint, min_valid_fraction
        See :func:`gap_fill` and :func:`site_series`.

    Returns
    -------
    pandas.DataFrame
        Columns ``<set>:<feature>`` for every set and ``rad:Rso``; NaN where a
        set has no observation before/after the day.
    """
    idx = pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq="D", name="date")
    parts = [potential_radiation(idx, lat, elevation_m).to_frame()]
    for name, cube in cubes.items():
        s = site_series(
            cube, footprint=footprint, min_valid_fraction=min_valid_fraction, feature_set=name
        )
        parts.append(gap_fill(s, method, start=idx[0], end=idx[-1]))
    out = pd.concat(parts, axis=1)
    out.index.name = "date"
    return out


def feature_columns(feats: pd.DataFrame, names: Iterable[str]) -> dict[str, list[str]]:
    """The columns of each feature set in a :func:`site_features` table, radiation first.

    Returns ``{"potential radiation": ["rad:Rso"], name: ["name:F01", ...], ...}``.
    """
    sets = {"potential radiation": ["rad:Rso"]}
    for k in names:
        sets[k] = [c for c in feats.columns if c.startswith(f"{k}:")]
    return sets
