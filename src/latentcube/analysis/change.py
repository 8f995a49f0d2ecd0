"""Change between periods and per-date anomalies, from an embedding's valid dates.

* :func:`change`: how far a pixel moved between two periods: the distance between
  its valid-date summaries (mean or median vector) of ``before`` and ``after``,
  Euclidean and cosine, with the number of valid dates behind each.
* :func:`anomaly`: per date, how far the pixel is from what it usually looks like
  at that time of year: the distance of each date's vector from the mean of the
  pixel's valid vectors within +-N days of the same day of year in *other* years.
* :func:`robust_zscore` and :func:`plot_change` to flag and draw a change map.

::

    ch = change(emb, before="2016-01-01/2017-12-31", after="2019-01-01/2020-12-31")
    an = anomaly(emb, half_window=30)
    plot_change(ch, "change.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.analysis._figures import extent_km, map_panel, save_png
from latentcube.analysis._layers import embedding_parts, grid_attrs, whole_time, with_crs
from latentcube.analysis.summary import QUALITY_EPS, WindowSpec, summarise
from latentcube.cube.schema import provenance
from latentcube.errors import EmbeddingError

__all__ = [
    "DAYS_PER_YEAR",
    "anomaly",
    "change",
    "distances",
    "other_year_weights",
    "plot_change",
    "robust_zscore",
]

DAYS_PER_YEAR = 365.25


def distances(
    a: xr.DataArray, b: xr.DataArray, dim: str = "feature"
) -> tuple[xr.DataArray, xr.DataArray]:
    """Euclidean distance and cosine distance (``1 - cos``) between vectors along ``dim``.

    NaN where either vector has a NaN or (cosine) a zero norm. Lazy on Dask.
    """
    diff = b - a
    euclid = (diff**2).sum(dim, skipna=False) ** 0.5
    na = (a**2).sum(dim, skipna=False) ** 0.5
    nb = (b**2).sum(dim, skipna=False) ** 0.5
    dot = (a * b).sum(dim, skipna=False)
    norm = na * nb
    cosine = 1.0 - dot / norm.where(norm > 0)
    return euclid, cosine


def change(
    emb: xr.Dataset | xr.DataArray,
    before: WindowSpec,
    after: WindowSpec,
    *,
    stat: Literal["mean", "median"] = "mean",
    weight: Literal["quality"] | None = None,
    eps: float = QUALITY_EPS,
    min_count: int = 1,
    error_layer: str | None = None,
    months: Sequence[int] | None = None,
) -> xr.Dataset:
    """Change magnitude per pixel between two periods.

    Parameters
    ----------
    emb
        An embedding store or the lazy result of :func:`latentcube.embed`.
    before, after
        Periods ``"START/END"`` (dates, inclusive) or ``(start, end)``. CLI:
        ``--before``, ``--after``.
    stat
        Summary of each period's valid dates: ``"mean"`` or ``"median"`` (per
        feature). CLI: ``--stat``.
    weight, eps, error_layer
        Quality weighting of the dates, as in :func:`~latentcube.analysis.summarise`.
        CLI: ``--weight quality``.
    min_count
        Fewest valid dates each period needs; pixels with fewer are NaN. CLI:
        ``--min-count``.
    months
        Only dates in these calendar months count in both periods (e.g.
        ``range(5, 10)``: the leaf-on season of every year), so that periods whose
        clear dates fall in different seasons still compare like with like. CLI:
        ``--months 5,6,7,8,9``.

    Returns
    -------
    xarray.Dataset
        ``euclidean`` and ``cosine`` (``1 - cos``, in [0, 2]) distance (y, x)
        between the two summary vectors, ``count_before`` and ``count_after``
        (y, x) valid dates; ``before`` and ``after`` (feature, y, x), the summaries.
        Lazy on Dask; the grid and CRS are kept.
    """
    if stat not in ("mean", "median"):
        raise EmbeddingError(f"stat must be 'mean' or 'median' for change, got {stat!r}")
    if min_count < 1:
        raise EmbeddingError(f"min_count must be at least 1, got {min_count}")
    s = summarise(
        emb,
        [before, after],
        stat=stat,
        weight=weight,
        eps=eps,
        error_layer=error_layer,
        months=months,
    )
    extra = ["window", "window_start", "window_end"]
    a, b = (s["embedding"].isel(window=i).drop_vars(extra) for i in (0, 1))
    na, nb = (s["count"].isel(window=i).drop_vars(extra) for i in (0, 1))
    ok = (na >= min_count) & (nb >= min_count)
    euclid, cosine = distances(a, b)
    labels = [str(v) for v in s["window"].values]
    ds = xr.Dataset(
        {
            "euclidean": euclid.where(ok).astype(np.float32),
            "cosine": cosine.where(ok).astype(np.float32),
            "count_before": na,
            "count_after": nb,
            "before": a,
            "after": b,
        }
    )
    ds["euclidean"].attrs = {
        "long_name": f"Euclidean distance between the {stat} vectors of {labels[1]} and {labels[0]}"
    }
    ds["cosine"].attrs = {
        "long_name": f"cosine distance (1 - cos) between the {stat} vectors",
        "units": "1",
    }
    ds["count_before"].attrs = {"long_name": f"valid dates in {labels[0]}"}
    ds["count_after"].attrs = {"long_name": f"valid dates in {labels[1]}"}
    ds.attrs = {
        **provenance(
            s.attrs["source"].replace("summary", "change", 1),
            analysis="change",
            before=labels[0],
            after=labels[1],
            stat=stat,
            weight=weight or "none",
            weight_formula=s.attrs.get("weight_formula", ""),
            min_count=min_count,
            months=s.attrs["months"],
            source_store=s.attrs.get("source_store", ""),
        ),
        **grid_attrs(s.attrs),
    }
    return with_crs(ds, s["embedding"])


def other_year_weights(
    times: Sequence[Any] | np.ndarray, half_window: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which dates form each date's seasonal expectation: the same time of year, other years.

    Date ``s`` belongs to the expectation of date ``t`` when, with ``d`` the days
    from ``t`` to ``s`` (calendar days) and ``k = round(d / 365.25)``, ``k != 0``
    and ``|d - 365.25 k| <= half_window``: ``s`` lies ``k`` years away, give or
    take ``half_window`` days. Dates of the same season one year earlier or later
    count; dates a few days away across New Year do not (they are the same year's
    season).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``member`` (time, source) bool and ``k`` (time, source) int, the year offset.
    """
    days = (
        pd.DatetimeIndex(np.asarray(times))
        .normalize()
        .values.astype("datetime64[D]")
        .astype(np.int64)
    )
    d = (days[None, :] - days[:, None]).astype(np.float64)
    k = np.rint(d / DAYS_PER_YEAR).astype(np.int64)
    member = (k != 0) & (np.abs(d - DAYS_PER_YEAR * k) <= half_window)
    return member, k


def _anomaly_kernel(
    x: np.ndarray,
    ok: np.ndarray,
    member: np.ndarray,
    k: np.ndarray,
    min_count: int,
    min_years: int,
    keep_expected: bool,
) -> tuple[np.ndarray, ...]:
    """Per block: x (..., feature, time), ok (..., time) -> distances, counts, [expected]."""
    okf = ok.astype(np.float64)
    x0 = np.where(ok[..., None, :], x, 0.0).astype(np.float64)
    mt = member.T.astype(np.float64)
    count = okf @ mt
    n_years = np.zeros(count.shape, np.int16)
    for kk in np.unique(k[member]):
        n_years += ((okf @ (member & (k == kk)).T.astype(np.float64)) > 0).astype(np.int16)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (x0 @ mt) / np.where(count > 0, count, np.nan)[..., None, :]
        v = np.asarray(x, dtype=np.float64)
        euclid = np.sqrt(((v - expected) ** 2).sum(-2))
        norm = np.sqrt((v**2).sum(-2) * (expected**2).sum(-2))
        cosine = 1.0 - (v * expected).sum(-2) / np.where(norm > 0, norm, np.nan)
    support = ok & (count >= min_count) & (n_years >= min_years)
    out: list[np.ndarray] = [
        np.where(support, euclid, np.nan).astype(np.float32),
        np.where(support, cosine, np.nan).astype(np.float32),
        count.astype(np.int32),
        n_years,
    ]
    if keep_expected:
        out.append(expected.astype(np.float32))
    return tuple(out)


def anomaly(
    emb: xr.Dataset | xr.DataArray,
    *,
    half_window: float = 30.0,
    min_count: int = 1,
    min_years: int = 1,
    keep_expected: bool = False,
) -> xr.Dataset:
    """Per-date distance of each pixel's embedding from its seasonal expectation from other years.

    For every valid pixel-date the expectation is the mean of the same pixel's
    valid vectors within ``half_window`` days of the same day of year in the other
    years of the series (see :func:`other_year_weights`); the date itself and its
    own year never enter. A series of several years is needed: where no other year
    has a valid date in the window the result is NaN.

    Parameters
    ----------
    emb
        An embedding store or the lazy result of :func:`latentcube.embed`.
    half_window
        Days either side of the day of year (``--half-window``).
    min_count
        Fewest valid other-year dates behind an expectation (``--min-count``).
    min_years
        Fewest other years that contribute a valid date (``--min-years``).
    keep_expected
        Also return ``expected`` (feature, time, y, x).

    Returns
    -------
    xarray.Dataset
        ``euclidean`` and ``cosine`` (time, y, x) distances of each date's vector
        from its expectation (NaN where the date is not valid or the expectation
        lacks support), ``count`` (time, y, x) valid other-year dates and
        ``n_years`` (time, y, x) other years behind it. Lazy on Dask: each task
        holds the whole series of a block of pixels (the spatial chunks are split
        when needed to bound its memory, see
        :func:`~latentcube.analysis._layers.whole_time`); the expectation is a
        matrix product over time.
    """
    if half_window < 0:
        raise EmbeddingError(f"half_window must be >= 0 days, got {half_window}")
    if min_count < 1 or min_years < 1:
        raise EmbeddingError("min_count and min_years must be at least 1")
    parts = embedding_parts(emb)
    vec, ok = parts.embedding, parts.valid
    member, k = other_year_weights(vec["time"].values, half_window)
    n_feat, n_t = vec.sizes["feature"], vec.sizes["time"]
    x, m = whole_time([vec, ok], (n_feat + 8) * n_t)

    def kernel(xb: np.ndarray, okb: np.ndarray) -> tuple[np.ndarray, ...]:
        return _anomaly_kernel(xb, okb, member, k, min_count, min_years, keep_expected)

    n_out = 5 if keep_expected else 4
    res = xr.apply_ufunc(
        kernel,
        x,
        m,
        input_core_dims=[["feature", "time"], ["time"]],
        output_core_dims=[["time"]] * 4 + ([["feature", "time"]] if keep_expected else []),
        dask="parallelized",
        output_dtypes=[np.float32, np.float32, np.int32, np.int16, np.float32][:n_out],
    )
    names = ["euclidean", "cosine", "count", "n_years", "expected"][:n_out]
    out = {
        name: r.transpose(*(("feature",) if name == "expected" else ()), "time", "y", "x")
        for name, r in zip(names, res, strict=True)
    }
    ds = xr.Dataset(out)
    ds["euclidean"].attrs = {"long_name": "Euclidean distance from the other years' seasonal mean"}
    ds["cosine"].attrs = {
        "long_name": "cosine distance (1 - cos) from the other years' seasonal mean"
    }
    ds["count"].attrs = {"long_name": "valid other-year dates in the seasonal window"}
    ds["n_years"].attrs = {"long_name": "other years with a valid date in the seasonal window"}
    ds.attrs = {
        **provenance(
            f"latentcube anomaly of {parts.source or 'an embedding'}",
            analysis="anomaly",
            half_window_days=float(half_window),
            min_count=min_count,
            min_years=min_years,
            expectation="mean of the valid vectors within half_window days of the same "
            "day of year in other years",
            source_store=parts.source,
        ),
        **grid_attrs(parts.attrs),
    }
    return with_crs(ds, vec)


def robust_zscore(values: xr.DataArray | np.ndarray) -> np.ndarray:
    """``(v - median) / (1.4826 MAD)`` over the finite values (computed, not lazy).

    A robust scale for flagging: on Gaussian noise it is the usual z-score; a few
    strongly changed pixels do not inflate it. NaN stays NaN.
    """
    a = np.asarray(values, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.full_like(a, np.nan)
    med = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - med))
    return (a - med) / (mad if mad > 0 else np.nan)


def plot_change(
    result: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    variable: str = "euclidean",
    background: np.ndarray | None = None,
    title: str | None = None,
    vmax: float | None = None,
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """PNG of a change map (``change`` result, or one date/summary of ``anomaly``).

    Parameters
    ----------
    result
        The result of :func:`change` (or any dataset with a (y, x) ``variable``).
    path
        Output PNG (written beside and swapped in when complete). CLI: ``--figure``.
    variable
        ``"euclidean"`` or ``"cosine"``.
    background
        Optional (y, x, 3) RGB in [0, 1] drawn in a panel to the left (e.g.
        :func:`latentcube.plotting.true_colour` of the after period).
    title
        Title of the map panel (default: the variable and the periods).
    vmax
        Colour scale maximum (default the 99th percentile).
    overwrite
        Replace an existing file.
    dpi
        Resolution.
    """
    from matplotlib.figure import Figure

    if variable not in result:
        raise EmbeddingError(f"the result has no {variable!r}; it has {list(result.data_vars)}")
    values = np.asarray(result[variable].values, dtype=np.float64)
    if values.ndim != 2:
        raise EmbeddingError(f"{variable!r} must be a (y, x) map, got dims {result[variable].dims}")
    finite = values[np.isfinite(values)]
    top = vmax if vmax is not None else (float(np.percentile(finite, 99)) if finite.size else 1.0)
    n = 2 if background is not None else 1
    fig = Figure(figsize=(4.2 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    ext = extent_km(result)
    if background is not None:
        map_panel(axes[0], background, ext, "true colour")
    before, after = result.attrs.get("before", ""), result.attrs.get("after", "")
    default = f"{variable} change {before} -> {after}" if before else variable
    map_panel(axes[-1], values, ext, title or default, vmin=0.0, vmax=top, label=variable)
    return save_png(fig, path, overwrite=overwrite, dpi=dpi)
