"""One vector per pixel per time window: summaries of an embedding over valid dates.

Per-date embeddings are what the model gives; many uses want one vector per pixel
for a season, a year or every quarter (a July-June year to match summer labels, a
growing season, rolling windows). :func:`summarise` reduces the dates of each window
to a statistic per feature, counting only valid dates, lazily on Dask::

    emb = lc.open_embedding("emb.zarr")
    year = summarise(emb, window="2019-07-01/2020-06-30")             # one window
    quarters = summarise(emb, window="2019-07-01/2020-06-30", every="3M")
    spread = summarise(emb, every="1Y", stat="quantiles", quantiles=(0.1, 0.5, 0.9))
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.analysis._layers import (
    EmbeddingParts,
    embedding_parts,
    grid_attrs,
    parse_period,
    whole_time,
    with_crs,
)
from latentcube.cube.schema import provenance
from latentcube.errors import EmbeddingError

__all__ = [
    "QUALITY_EPS",
    "STATS",
    "Window",
    "make_windows",
    "parse_offset",
    "plot_summary",
    "summarise",
    "weighted_quantile",
]

Stat = Literal["mean", "median", "std", "quantiles"]
STATS: tuple[str, ...] = ("mean", "median", "std", "quantiles")
#: ``eps`` of the quality weight ``1 / (recon_mae + eps)`` (reflectance units).
QUALITY_EPS = 0.01
WindowSpec: TypeAlias = str | tuple[Any, Any]
Offset: TypeAlias = pd.DateOffset | pd.Timedelta
_DAY = pd.Timedelta(days=1)
_UNITS = {
    "D": ("days", 1),
    "W": ("weeks", 1),
    "M": ("months", 1),
    "MS": ("months", 1),
    "ME": ("months", 1),
    "Q": ("months", 3),
    "QS": ("months", 3),
    "QE": ("months", 3),
    "Y": ("years", 1),
    "YS": ("years", 1),
    "YE": ("years", 1),
    "A": ("years", 1),
}


@dataclass(frozen=True)
class Window:
    """A time window: from ``start`` (inclusive) to ``stop`` (exclusive), whole days."""

    start: pd.Timestamp
    stop: pd.Timestamp

    @property
    def end(self) -> pd.Timestamp:
        """The last day of the window (inclusive)."""
        return self.stop - _DAY

    @property
    def label(self) -> str:
        """``"START/END"`` with both days inclusive, as a window is written."""
        return f"{self.start:%Y-%m-%d}/{self.end:%Y-%m-%d}"


def parse_offset(every: str | Offset | _dt.timedelta | np.timedelta64) -> Offset:
    """A window step: ``"10D"``, ``"2W"``, ``"3M"``, ``"1Y"``, a pandas offset or a timedelta.

    Strings count whole days, weeks, months (``M``), quarters (``Q``) or years
    (``Y``) from the start of the span, not from calendar ends: ``"3M"`` from
    2019-07-01 steps to 10-01, 01-01, 04-01. Other pandas frequency strings are
    read with :func:`pandas.tseries.frequencies.to_offset`.
    """
    if isinstance(every, pd.DateOffset | pd.Timedelta):
        return every
    if isinstance(every, _dt.timedelta | np.timedelta64):
        return pd.Timedelta(every)
    if not isinstance(every, str):
        raise EmbeddingError(
            f"every must be a string like '3M', an offset or a timedelta, got {every!r}"
        )
    m = re.fullmatch(r"\s*(\d*)\s*([A-Za-z]+)\s*", every)
    if m and m.group(2).upper() in _UNITS:
        unit, mult = _UNITS[m.group(2).upper()]
        n = int(m.group(1) or 1) * mult
        return pd.DateOffset(**{unit: n})
    try:
        off = pd.tseries.frequencies.to_offset(every)
    except ValueError:
        raise EmbeddingError(
            f"cannot read every={every!r}; use e.g. '10D', '2W', '3M', '1Y' or a pandas offset"
        ) from None
    return off


def make_windows(
    times: Sequence[Any] | np.ndarray,
    window: WindowSpec | Sequence[WindowSpec] | None = None,
    every: str | Offset | _dt.timedelta | None = None,
    length: str | Offset | _dt.timedelta | None = None,
) -> list[Window]:
    """The windows a summary is computed over.

    Parameters
    ----------
    times
        The embedding's dates (used when ``window`` is None).
    window
        ``"START/END"`` (both days inclusive), a ``(start, end)`` pair, a list of
        them, or None for the whole series (its first to its last day).
    every
        None: each span of ``window`` is one window. Otherwise each span is cut
        into windows starting every ``every`` (see :func:`parse_offset`), the last
        one ending with the span (it may be shorter).
    length
        Window length when it differs from the step (rolling windows, e.g.
        ``every="14D", length="1Y"``); windows never reach past their span's end.

    Returns
    -------
    list of Window
    """
    if window is None:
        t = pd.DatetimeIndex(np.asarray(times))
        if t.size == 0:
            raise EmbeddingError("the embedding has no dates")
        spans = [(t.min().normalize(), t.max().normalize())]
    elif isinstance(window, str | tuple):
        spans = [parse_period(window)]
    else:
        spans = [parse_period(w) for w in window]
        if not spans:
            raise EmbeddingError("window is an empty list")
    if every is None:
        if length is not None:
            raise EmbeddingError("length= needs every= (the step between windows)")
        return [Window(a, b + _DAY) for a, b in spans]
    step = parse_offset(every)
    size = parse_offset(length) if length is not None else step
    out: list[Window] = []
    for a, b in spans:
        stop_all = b + _DAY
        if not (a + step > a and a + size > a):
            raise EmbeddingError(f"every={every!r} and length={length!r} must be positive")
        k = 0
        while (s := a + k * step) < stop_all:
            out.append(Window(pd.Timestamp(s), min(pd.Timestamp(s + size), stop_all)))
            k += 1
    return out


def weighted_quantile(
    values: np.ndarray, weights: np.ndarray | None, q: Sequence[float]
) -> np.ndarray:
    """Quantiles over the last axis, ignoring NaN, optionally weighted.

    Unweighted: numpy's default ``linear`` method (as :func:`numpy.nanquantile`).
    Weighted: the ``inverted_cdf`` method (as ``numpy.nanquantile(...,
    weights=..., method="inverted_cdf")``): the smallest value whose cumulative
    weight reaches ``q`` of the total. Vectorised over the leading axes.

    Parameters
    ----------
    values
        (..., n); NaN entries are ignored (their weights too).
    weights
        (..., n) positive weights, or None.
    q
        Quantiles in [0, 1].

    Returns
    -------
    numpy.ndarray
        (len(q), ...) float64; NaN where a row has no finite value.
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.full((len(q), *v.shape[:-1]), np.nan)
    if v.shape[-1] == 0:
        return out
    ok = np.isfinite(v)
    n = ok.sum(-1)
    has = n > 0
    if weights is None:
        s = np.sort(np.where(ok, v, np.inf), axis=-1)
        for i, qi in enumerate(q):
            pos = qi * np.maximum(n - 1, 0)
            lo = np.floor(pos).astype(np.intp)
            hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
            a = np.take_along_axis(s, lo[..., None], -1)[..., 0]
            b = np.take_along_axis(s, hi[..., None], -1)[..., 0]
            t = np.where(has, pos - lo, 0.0)
            with np.errstate(invalid="ignore"):
                diff = b - a  # numpy's lerp, for the same rounding as np.nanquantile
                val = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
            out[i] = np.where(has, val, np.nan)
        return out
    w = np.where(ok, np.asarray(weights, dtype=np.float64), 0.0)
    order = np.argsort(np.where(ok, v, np.inf), axis=-1)
    s = np.take_along_axis(v, order, -1)
    cdf = np.cumsum(np.take_along_axis(w, order, -1), axis=-1)
    total = cdf[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = cdf / total
    for i, qi in enumerate(q):
        idx = np.minimum((cdf < qi).sum(-1), np.maximum(n - 1, 0))
        out[i] = np.where(has, np.take_along_axis(s, idx[..., None], -1)[..., 0], np.nan)
    return out


def _quantile_kernel(
    x: np.ndarray, ok: np.ndarray, w: np.ndarray | None, q: tuple[float, ...]
) -> np.ndarray:
    """(..., feature, time) -> (..., quantile, feature) float32."""
    v = np.where(ok[..., None, :], x, np.nan)
    ww = None if w is None else np.broadcast_to(w[..., None, :], v.shape)
    res = weighted_quantile(v, ww, q)  # (quantile, ..., feature)
    return np.moveaxis(res, 0, -2).astype(np.float32)


def _quality_weight(err: xr.DataArray, ok: xr.DataArray, eps: float) -> xr.DataArray:
    """``1 / (err + eps)`` on valid dates; a missing error takes the pixel's mean error."""
    known = err.where(ok & np.isfinite(err))
    fill = known.mean("time", skipna=True).fillna(0.0)
    e = known.fillna(fill).astype(np.float64)
    return (1.0 / (e + eps)).where(ok, 0.0)


def _window_stat(
    parts: EmbeddingParts,
    win: Window,
    stat: str,
    quantiles: tuple[float, ...],
    weighted: bool,
    eps: float,
    months: frozenset[int] | None,
) -> tuple[xr.DataArray, xr.DataArray]:
    t = pd.DatetimeIndex(parts.embedding["time"].values)
    inside = (t >= win.start) & (t < win.stop)
    if months is not None:
        inside &= np.isin(t.month, sorted(months))
    idx = np.flatnonzero(inside)
    emb = parts.embedding.isel(time=idx)
    ok = parts.valid.isel(time=idx)
    count = ok.sum("time").astype(np.int32)
    w: xr.DataArray | None = None
    if weighted:
        assert parts.error is not None
        w = _quality_weight(parts.error.isel(time=idx), ok, eps)
    if stat in ("mean", "std"):
        wt = ok.astype(np.float64) if w is None else w
        x = emb.astype(np.float64).where(ok, 0.0)
        s0 = wt.sum("time")
        mean = (x * wt).sum("time") / s0.where(s0 > 0)
        if stat == "mean":
            return mean.astype(np.float32), count
        var = (x * x * wt).sum("time") / s0.where(s0 > 0) - mean**2
        return (var.clip(min=0.0) ** 0.5).astype(np.float32), count
    qs = (0.5,) if stat == "median" else quantiles
    args: list[xr.DataArray] = [emb, ok] + ([w] if w is not None else [])
    args = whole_time(args, emb.sizes["feature"] * max(len(idx), 1))

    def kernel(x: np.ndarray, m: np.ndarray, *ws: np.ndarray) -> np.ndarray:
        return _quantile_kernel(x, m, ws[0] if ws else None, qs)

    res = xr.apply_ufunc(
        kernel,
        *args,
        input_core_dims=[["feature", "time"], ["time"]] + ([["time"]] if w is not None else []),
        output_core_dims=[["stat", "feature"]],
        dask="parallelized",
        output_dtypes=[np.float32],
        dask_gufunc_kwargs={"output_sizes": {"stat": len(qs)}},
    )
    if stat == "median":
        res = res.isel(stat=0, drop=True)
    else:
        res = res.assign_coords(
            stat=[f"q{q:g}" for q in qs], quantile=("stat", np.asarray(qs, np.float64))
        )
    return res, count


def summarise(
    emb: xr.Dataset | xr.DataArray,
    window: WindowSpec | Sequence[WindowSpec] | None = None,
    *,
    every: str | Offset | _dt.timedelta | None = None,
    length: str | Offset | _dt.timedelta | None = None,
    stat: Stat = "mean",
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    weight: Literal["quality"] | None = None,
    eps: float = QUALITY_EPS,
    error_layer: str | None = None,
    months: Sequence[int] | None = None,
) -> xr.Dataset:
    """One vector per pixel per window: a statistic of the valid dates of each window.

    Parameters
    ----------
    emb
        An embedding store (:func:`latentcube.open_embedding`) or the lazy result of
        :func:`latentcube.embed`. Only pixel-dates where ``valid`` is true and every
        feature is finite count.
    window
        ``"START/END"`` (dates, both inclusive), a ``(start, end)`` pair, a list of
        them, or None for the whole series. CLI: ``--window`` (repeatable).
    every
        Cut each window into successive windows of this step: ``"3M"``, ``"1Y"``,
        ``"10D"``, a pandas offset or a timedelta (see :func:`parse_offset`); the
        last one ends with the window. CLI: ``--every``.
    length
        Window length when it differs from ``every`` (rolling windows). CLI: ``--length``.
    stat
        ``"mean"``, ``"median"``, ``"std"`` (population, ``ddof=0`` as
        :func:`numpy.nanstd`) or ``"quantiles"``. CLI: ``--stat``.
    quantiles
        Quantiles for ``stat="quantiles"``. CLI: ``--quantiles 0.1,0.5,0.9``.
    weight
        None (every valid date counts once) or ``"quality"``: date weight
        ``1 / (recon_mae + eps)``, so dates the model reconstructs badly (haze,
        residual cloud, unusual inputs) count less; a valid date with no error
        value takes the pixel's mean error in the window. Weighted mean and
        (population) std; weighted median and quantiles use the inverted-CDF
        method (see :func:`weighted_quantile`). CLI: ``--weight quality``.
    eps
        ``eps`` of the quality weight (reflectance units; default 0.01, about the
        error of a well reconstructed date, so the best dates weigh at most about
        twice a typical one).
    error_layer
        The error layer for ``weight="quality"`` (default ``recon_mae`` or the
        single ``recon_mae_<sensor>``).
    months
        Only dates in these calendar months (1-12) count, e.g. ``range(5, 10)`` for
        May-September of every year of a multi-year window. CLI: ``--months 5,6,7,8,9``.

    Returns
    -------
    xarray.Dataset
        ``embedding`` (feature, window, y, x) float32, or (stat, feature, window,
        y, x) for ``"quantiles"`` (coordinate ``quantile`` on ``stat``); NaN where a
        window has no valid date. ``count`` (window, y, x): valid dates per window.
        Coordinates ``window`` (``"START/END"`` labels), ``window_start`` and
        ``window_end`` (first and last day, inclusive). The grid, CRS
        (``spatial_ref``) and spatial chunks of the input are kept; Dask-backed input
        gives a Dask-backed result (nothing is computed here). Attributes record
        the windows, statistic, weighting and source store.

    Raises
    ------
    EmbeddingError
        Unknown ``stat``, bad windows, quantiles outside [0, 1], or
        ``weight="quality"`` without an error layer.
    """
    if stat not in STATS:
        raise EmbeddingError(f"stat must be one of {STATS}, got {stat!r}")
    if weight not in (None, "quality"):
        raise EmbeddingError(f"weight must be None or 'quality', got {weight!r}")
    qs = tuple(float(q) for q in quantiles)
    if stat == "quantiles" and (not qs or any(not 0 <= q <= 1 for q in qs)):
        raise EmbeddingError(f"quantiles must be in [0, 1], got {quantiles!r}")
    if eps <= 0:
        raise EmbeddingError(f"eps must be positive, got {eps}")
    month_set = None if months is None else frozenset(int(m) for m in months)
    if month_set is not None and (not month_set or not month_set <= set(range(1, 13))):
        raise EmbeddingError(f"months must be calendar months 1-12, got {months!r}")
    parts = embedding_parts(emb, error_layer=error_layer)
    if weight == "quality" and parts.error is None:
        raise EmbeddingError(
            "weight='quality' needs a reconstruction error layer (recon_mae or "
            "recon_mae_<sensor>); this embedding has none"
        )
    wins = make_windows(parts.embedding["time"].values, window, every, length)
    results = [_window_stat(parts, w, stat, qs, weight == "quality", eps, month_set) for w in wins]
    coords = {
        "window": [w.label for w in wins],
        "window_start": ("window", np.array([w.start for w in wins], "datetime64[ns]")),
        "window_end": ("window", np.array([w.end for w in wins], "datetime64[ns]")),
    }
    values = xr.concat([r[0] for r in results], dim="window", coords="minimal", join="exact")
    counts = xr.concat([r[1] for r in results], dim="window", coords="minimal", join="exact")
    lead = ("stat",) if stat == "quantiles" else ()
    values = values.transpose(*lead, "feature", "window", "y", "x").assign_coords(coords)
    counts = counts.transpose("window", "y", "x").assign_coords(coords)
    values.attrs = {"long_name": f"{stat} of the embedding over the valid dates of each window"}
    counts.attrs = {"long_name": "valid dates in the window", "units": "1"}
    extra = {
        k: parts.attrs[k] for k in ("model_config", "sensor", "edge_policy") if k in parts.attrs
    }
    attrs = {
        **provenance(
            f"latentcube summary of {parts.source or 'an embedding'}",
            analysis="summarise",
            windows=";".join(w.label for w in wins),
            window=str(window) if window is not None else "",
            every=str(every) if every is not None else "",
            length=str(length) if length is not None else "",
            stat=stat,
            quantiles=",".join(f"{q:g}" for q in qs) if stat == "quantiles" else "",
            weight=weight or "none",
            weight_formula=f"1 / ({parts.error_name} + {eps:g})" if weight else "",
            months=",".join(str(m) for m in sorted(month_set)) if month_set else "all",
            source_store=parts.source,
            **extra,
        ),
        **grid_attrs(parts.attrs),
    }
    ds = xr.Dataset({"embedding": values, "count": counts}, attrs=attrs)
    return with_crs(ds, parts.embedding)


def plot_summary(
    result: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    max_windows: int = 4,
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """PNG of a summary: each window's vectors as RGB, with the count of valid dates.

    The top row shows the first three principal components of the summary vectors
    (one basis fitted on every window, so colours compare across windows); the
    bottom row the number of valid dates behind each pixel. For ``median`` and
    ``quantiles`` the median (or the middle quantile) is drawn.

    Parameters
    ----------
    result
        The result of :func:`summarise` (computed or lazy).
    path
        Output PNG (written beside and swapped in when complete). CLI: ``--png``.
    max_windows
        Draw at most this many windows (the first ones).
    overwrite
        Replace an existing file.
    dpi
        Resolution.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.figure import Figure

    from latentcube.analysis._figures import extent_km, map_panel, save_png
    from latentcube.plotting import pca_basis, pca_rgb

    if "embedding" not in result or "count" not in result:
        raise EmbeddingError("a summary needs 'embedding' and 'count' (from summarise)")
    emb = result["embedding"]
    if "stat" in emb.dims:
        emb = emb.isel(stat=emb.sizes["stat"] // 2)
    n = min(max_windows, emb.sizes["window"])
    values = np.asarray(emb.isel(window=slice(0, n)).transpose("feature", "window", "y", "x"))
    counts = np.asarray(result["count"].isel(window=slice(0, n)), dtype=np.float64)
    try:
        basis = pca_basis(values)
    except ValueError as err:
        raise EmbeddingError(f"nothing to draw: {err}") from err
    rgb = pca_rgb(values, basis=basis)
    fig = Figure(figsize=(3.2 * n + 0.8, 6.2), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    ext = extent_km(result)
    top = max(float(np.nanmax(counts)), 1.0)
    for i in range(n):
        label = str(result["window"].values[i])
        map_panel(axes[0, i], rgb[i], ext, f"{label}\nPC 1-3 as RGB")
        map_panel(
            axes[1, i], counts[i], ext, "valid dates", cmap="viridis", vmin=0, vmax=top,
            label="dates", colorbar=i == n - 1,
        )  # fmt: skip
    return save_png(fig, path, overwrite=overwrite, dpi=dpi)
