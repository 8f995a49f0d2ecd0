"""Where else does it look like this? Similarity of every pixel-date to example pixels.

The reference vector is one pixel's embedding at a date, its mean over its valid
dates, or the mean of several example pixels' vectors; every pixel-date is then
compared with it by cosine similarity and by Euclidean distance in whitened space
(features decorrelated and scaled to unit variance by the covariance of all valid
vectors, i.e. the Mahalanobis distance)::

    sim = similar(emb, x=501_005.0, y=5_629_405.0, time="2018-06-12")
    sim = similar(emb, points=[(501_005.0, 5_629_405.0), (501_205.0, 5_629_305.0, "2018-06-12")])
    plot_similarity(sim, "similar.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.analysis._figures import extent_km, map_panel, save_png
from latentcube.analysis._layers import EmbeddingParts, embedding_parts, grid_attrs, with_crs
from latentcube.cube.schema import provenance
from latentcube.errors import EmbeddingError

__all__ = ["covariance", "plot_similarity", "reference_vector", "similar", "whitening_matrix"]

Point = tuple[float, float] | tuple[float, float, Any]


def _pixel(parts: EmbeddingParts, x: float, y: float) -> tuple[int, int]:
    """Indices of the pixel containing (x, y) in the embedding's CRS."""
    idx = []
    for name, v in (("y", y), ("x", x)):
        coord = parts.embedding[name].values
        i = int(np.abs(coord - float(v)).argmin())
        res = abs(float(coord[1] - coord[0])) if coord.size > 1 else np.inf
        if abs(coord[i] - float(v)) > res / 2 + 1e-6:
            raise EmbeddingError(
                f"the point {name}={v} lies outside the embedding's grid "
                f"({coord.min()} .. {coord.max()}, CRS units)"
            )
        idx.append(i)
    return idx[0], idx[1]


def reference_vector(
    emb: xr.Dataset | xr.DataArray | EmbeddingParts,
    points: Sequence[Point],
    time: Any = None,
) -> np.ndarray:
    """The mean vector of example pixels (computed now; a few pixels are read).

    Parameters
    ----------
    emb
        An embedding (or its :class:`~latentcube.analysis._layers.EmbeddingParts`).
    points
        ``(x, y)`` or ``(x, y, time)`` in the embedding's CRS; the pixel containing
        each point is used.
    time
        Date for points without their own: the nearest date of the embedding; None
        uses the mean of the pixel's valid dates.

    Returns
    -------
    numpy.ndarray
        (feature,) float64.

    Raises
    ------
    EmbeddingError
        A point outside the grid, not valid at its date, or never valid.
    """
    parts = emb if isinstance(emb, EmbeddingParts) else embedding_parts(emb)
    if not points:
        raise EmbeddingError("give at least one example pixel (x, y)")
    times = pd.DatetimeIndex(parts.embedding["time"].values)
    where: list[tuple[float, float, Any]] = []
    for p in points:
        if len(p) not in (2, 3):
            raise EmbeddingError(f"an example pixel is (x, y) or (x, y, time), got {p!r}")
        where.append((float(p[0]), float(p[1]), p[2] if len(p) == 3 else time))
    pix = [_pixel(parts, px, py) for px, py, _ in where]
    sub = (
        xr.Dataset({"v": parts.embedding, "ok": parts.valid})
        .isel(
            y=xr.DataArray([iy for iy, _ in pix], dims="point"),
            x=xr.DataArray([ix for _, ix in pix], dims="point"),
        )
        .compute()  # the example pixels only, in one pass
    )
    vecs = np.asarray(sub["v"].transpose("point", "feature", "time").values, dtype=np.float64)
    oks = np.asarray(sub["ok"].transpose("point", "time").values, dtype=bool)
    vectors = []
    for (px, py, when), vec, ok in zip(where, vecs, oks, strict=True):
        if when is None:
            if not ok.any():
                raise EmbeddingError(f"the pixel at x={px}, y={py} has no valid date")
            vectors.append(vec[:, ok].mean(axis=1))
            continue
        it = int(np.abs((times - pd.Timestamp(str(when))).total_seconds()).argmin())
        if not ok[it]:
            raise EmbeddingError(
                f"the pixel at x={px}, y={py} is not valid on {times[it]:%Y-%m-%d} "
                f"(the date nearest to {when}); pick a valid date or time=None"
            )
        vectors.append(vec[:, it])
    return np.mean(vectors, axis=0)


def covariance(parts: EmbeddingParts) -> tuple[xr.DataArray, xr.DataArray]:
    """Mean (feature,) and covariance (feature, feature2) of all valid vectors; lazy on Dask."""
    ok = parts.valid
    x0 = parts.embedding.astype(np.float64).where(ok, 0.0)
    dims = ["time", "y", "x"]
    n = ok.sum(dims).astype(np.float64)
    mean = x0.sum(dims) / n
    second = xr.dot(x0, x0.rename(feature="feature2"), dim=dims) / n
    cov = second - mean * mean.rename(feature="feature2")
    return mean, cov


def whitening_matrix(cov: np.ndarray, rcond: float = 1e-6) -> np.ndarray:
    """``W`` (feature, feature) with ``W cov W.T = I``: ``diag(1 / sqrt(lambda)) U.T``.

    Eigenvalues below ``rcond`` times the largest are raised to it, so a constant
    feature does not blow the distance up.
    """
    c = np.asarray(cov, dtype=np.float64)
    c = (c + c.T) / 2
    lam, u = np.linalg.eigh(c)
    if not np.all(np.isfinite(lam)):
        return np.full_like(c, np.nan)
    lam = np.maximum(lam, max(float(lam.max()), 1e-300) * rcond)
    return np.asarray((u / np.sqrt(lam)).T)


def similar(
    emb: xr.Dataset | xr.DataArray,
    x: float | None = None,
    y: float | None = None,
    time: Any = None,
    *,
    points: Sequence[Point] | None = None,
    reference: np.ndarray | Sequence[float] | None = None,
    centre: bool = True,
    cov: np.ndarray | None = None,
) -> xr.Dataset:
    """Cosine similarity and whitened distance of every pixel-date to a reference vector.

    Parameters
    ----------
    emb
        An embedding store or the lazy result of :func:`latentcube.embed`.
    x, y
        One example pixel, in the embedding's CRS (``--x``, ``--y``).
    time
        The example's date (nearest date; ``--time``); None uses the mean of the
        pixel's valid dates.
    points
        Several examples ``(x, y)`` or ``(x, y, time)``; the reference is the mean
        of their vectors (``--point X,Y[,DATE]``, repeatable).
    reference
        A reference vector (feature,) instead of example pixels.
    centre
        Subtract the mean of all valid vectors from both sides before the cosine
        (default). Embedding vectors share a large common part, which pushes raw
        cosines towards 1 everywhere: on the demo cube with the shipped model the
        raw cosine to a village pixel has a median of 0.94 over all pixel-dates
        (5-95 %: 0.58-0.99). ``False`` gives the raw cosine. CLI: ``--no-centre``.
    cov
        Covariance (feature, feature) to whiten with (e.g. fitted on another
        store, so that distances compare); default that of this embedding's
        valid vectors (lazy, one pass over the data).

    Returns
    -------
    xarray.Dataset
        ``cosine`` (time, y, x) similarity in [-1, 1] (centred by default),
        ``distance`` (time, y, x) Euclidean distance in whitened space, both NaN
        where the embedding is not valid; ``reference`` (feature,) the reference
        vector. Lazy on Dask (the example pixels are read when the function is
        called); grid and CRS kept.
    """
    parts = embedding_parts(emb)
    n_feat = parts.embedding.sizes["feature"]
    examples: list[Point] = []
    if points is not None:
        examples = list(points)
    if x is not None or y is not None:
        if x is None or y is None:
            raise EmbeddingError("give both x and y of the example pixel")
        examples.insert(0, (float(x), float(y)))
    if reference is not None:
        if examples:
            raise EmbeddingError("give either a reference vector or example pixels, not both")
        ref = np.asarray(reference, dtype=np.float64)
    elif examples:
        ref = reference_vector(parts, examples, time)
    else:
        raise EmbeddingError("give an example pixel (x, y), points=[...] or reference=")
    if ref.shape != (n_feat,):
        raise EmbeddingError(f"the reference vector has shape {ref.shape}, expected ({n_feat},)")
    vec = parts.embedding.astype(np.float64)
    r = xr.DataArray(ref, dims=("feature",), coords={"feature": parts.embedding["feature"]})
    mean, fitted = covariance(parts)
    a, b = vec, r
    if centre:
        a, b = vec - mean, r - mean
    dot = (a * b).sum("feature", skipna=False)
    norm = ((a**2).sum("feature", skipna=False) * (b**2).sum("feature")) ** 0.5
    cosine = (dot / norm.where(norm > 0)).where(parts.valid)
    c = (
        xr.DataArray(np.asarray(cov, dtype=np.float64), dims=("feature", "feature2"))
        if cov is not None
        else fitted
    )
    if c.shape != (n_feat, n_feat):
        raise EmbeddingError(f"cov has shape {c.shape}, expected ({n_feat}, {n_feat})")
    w = xr.apply_ufunc(
        whitening_matrix,
        c,
        input_core_dims=[["feature", "feature2"]],
        output_core_dims=[["white", "feature2"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"white": n_feat}},
    )
    diff = (vec - r).rename(feature="feature2").drop_vars("feature2", errors="ignore")
    z = xr.dot(w.drop_vars("feature2", errors="ignore"), diff, dim="feature2")
    distance = ((z**2).sum("white", skipna=False) ** 0.5).where(parts.valid)
    ds = xr.Dataset(
        {
            "cosine": cosine.astype(np.float32).transpose("time", "y", "x"),
            "distance": distance.astype(np.float32).transpose("time", "y", "x"),
            "reference": r.astype(np.float32),
        }
    )
    ds["cosine"].attrs = {
        "long_name": "cosine similarity to the reference vector" + (" (centred)" if centre else ""),
        "units": "1",
    }
    ds["distance"].attrs = {"long_name": "Euclidean distance to the reference in whitened space"}
    ds["reference"].attrs = {"long_name": "reference vector (mean of the examples)"}
    ds.attrs = {
        **provenance(
            f"latentcube similarity of {parts.source or 'an embedding'}",
            analysis="similar",
            examples=";".join(",".join(str(v) for v in p) for p in examples) or "reference vector",
            time=str(time) if time is not None else "mean of valid dates",
            centre=int(centre),
            whitening="given covariance" if cov is not None else "covariance of all valid vectors",
            source_store=parts.source,
        ),
        **grid_attrs(parts.attrs),
    }
    return with_crs(ds, parts.embedding)


def plot_similarity(
    result: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    times: Sequence[Any] | None = None,
    n_dates: int = 4,
    background: np.ndarray | None = None,
    background_title: str = "true colour",
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """PNG of similarity maps: cosine (top row) and whitened distance (bottom row) per date.

    Parameters
    ----------
    result
        The result of :func:`similar`.
    path
        Output PNG (written beside and swapped in when complete). CLI: ``--figure``.
    times
        Dates to show (nearest); default ``n_dates`` of the best-covered dates,
        spread over the series.
    n_dates
        Number of dates when ``times`` is None.
    background
        Optional (y, x, 3) RGB in [0, 1] shown in a first column (e.g. true colour).
    background_title
        Its title.
    overwrite
        Replace an existing file.
    dpi
        Resolution.
    """
    from matplotlib.figure import Figure

    cos = result["cosine"]
    if times is None:
        cover = np.isfinite(np.asarray(cos.values)).mean(axis=(1, 2))
        good = (
            np.flatnonzero(cover >= 0.8 * cover.max()) if cover.max() > 0 else np.arange(cover.size)
        )
        picks = good[np.linspace(0, good.size - 1, min(n_dates, good.size)).round().astype(int)]
    else:
        t = pd.DatetimeIndex(result["time"].values)
        picks = np.array(
            [int(np.abs((t - pd.Timestamp(str(v))).total_seconds()).argmin()) for v in times]
        )
    sel = result.isel(time=picks).compute()
    examples = [
        tuple(float(v) for v in p.split(",")[:2])
        for p in str(result.attrs.get("examples", "")).split(";")
        if p and p != "reference vector"
    ]
    n_col = len(picks) + (background is not None)
    fig = Figure(figsize=(2.9 * n_col + 0.8, 5.2), layout="constrained")
    axes = fig.subplots(2, n_col, squeeze=False)
    ext = extent_km(result)
    x0, y1 = float(result["x"].values.min()), float(result["y"].values.max())
    res = abs(float(result["x"][1] - result["x"][0])) if result.sizes["x"] > 1 else 10.0
    col = 0
    if background is not None:
        map_panel(axes[0, 0], background, ext, background_title)
        axes[1, 0].set_axis_off()
        col = 1
    dist = sel["distance"].values
    top = float(np.nanpercentile(dist, 98)) if np.isfinite(dist).any() else 1.0
    for j in range(len(picks)):
        date = np.datetime_as_string(sel["time"].values[j], "D")
        last = j == len(picks) - 1
        map_panel(
            axes[0, col + j],
            sel["cosine"].values[j],
            ext,
            f"cosine {date}",
            cmap="viridis",
            vmin=-1.0,
            vmax=1.0,
            label="cosine similarity",
            colorbar=last,
        )
        map_panel(
            axes[1, col + j],
            dist[j],
            ext,
            f"whitened distance {date}",
            cmap="magma_r",
            vmin=0.0,
            vmax=top,
            label="whitened distance",
            colorbar=last,
        )
    marked = [ax for ax in axes.ravel() if ax.axison]
    for ax in marked:
        for ex, ey in examples:
            ax.plot(
                (ex - x0 + res / 2) / 1000,
                ext[3] - (y1 - ey + res / 2) / 1000,
                marker="+",
                color="red",
                markersize=9,
                mew=1.5,
            )
    return save_png(fig, path, overwrite=overwrite, dpi=dpi)
