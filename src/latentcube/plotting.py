"""Figures: true colour, embedding PCA as RGB, and the demo comparison.

Everything uses :class:`matplotlib.figure.Figure` directly (no pyplot state), so
it works headless and never leaks figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["pca_basis", "pca_rgb", "plot_demo", "true_colour"]


def _stretch(a: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a)
    p0, p1 = np.percentile(finite, [lo, hi])
    return np.clip((a - p0) / max(p1 - p0, 1e-12), 0, 1)


def true_colour(
    cube: xr.Dataset,
    time: int | str | np.datetime64,
    *,
    bands: Sequence[str] = ("B04", "B03", "B02"),
    gain: float | None = 3.0,
) -> np.ndarray:
    """(y, x, 3) RGB in [0, 1] of one date; invalid pixels are NaN.

    Parameters
    ----------
    cube
        A cube with the three bands.
    time
        Date index or a date.
    bands
        Red, green, blue band names.
    gain
        Linear gain on reflectance; ``None`` stretches the 2–98th percentiles.
    """
    ds = (
        cube.isel(time=time)
        if isinstance(time, int | np.integer)
        else cube.sel(time=np.datetime64(str(time)).astype("datetime64[ns]"), method="nearest")
    )
    rgb = np.stack([ds["s2"].sel(band=b).values for b in bands], axis=-1).astype(np.float32)
    rgb = np.clip(rgb * gain, 0, 1) if gain is not None else _stretch(rgb)
    return np.where(ds["s2_valid"].values[..., None], rgb, np.nan)


def pca_basis(
    embedding: xr.DataArray | np.ndarray, n_components: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and principal axes (n_components, features) of all finite pixel-dates."""
    a = np.asarray(embedding)
    flat = a.reshape(a.shape[0], -1).T
    flat = flat[np.isfinite(flat).all(1)]
    if flat.shape[0] < 2:
        raise ValueError("the embedding has fewer than two finite pixel-dates")
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    comps = vt[:n_components]
    comps *= np.sign(comps.sum(axis=1, keepdims=True) + 1e-12)  # deterministic signs
    return mean, comps


def pca_rgb(
    embedding: xr.DataArray | np.ndarray,
    time: int | None = None,
    *,
    basis: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """First three principal components of an embedding as RGB in [0, 1].

    Parameters
    ----------
    embedding
        (feature, time, y, x) or (feature, y, x).
    time
        Date index to show (for 4-D input); ``None`` returns (time, y, x, 3).
    basis
        ``(mean, components)`` from :func:`pca_basis`; by default fitted on all
        finite pixel-dates of ``embedding`` so colours are comparable across dates.

    Returns
    -------
    numpy.ndarray
        (..., y, x, 3); NaN where the embedding is not finite.
    """
    a = np.asarray(embedding, dtype=np.float64)
    mean, comps = basis if basis is not None else pca_basis(a)
    proj = np.tensordot(comps, a - mean.reshape(-1, *([1] * (a.ndim - 1))), axes=(1, 0))
    out = np.stack([_stretch(p) for p in proj], axis=-1)
    out[~np.isfinite(a).all(0)] = np.nan
    if a.ndim == 4 and time is not None:
        return out[time]
    return out


def plot_demo(
    cube: xr.Dataset,
    embedding: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    n_dates: int = 3,
    dpi: int = 110,
) -> Path:
    """PNG of true colour beside the embedding's PCA-RGB for a few well-covered dates.

    Parameters
    ----------
    cube
        The embedded cube.
    embedding
        (feature, time, y, x) on the cube's grid.
    path
        Output PNG.
    n_dates
        Number of dates (rows), picked among the dates with most valid pixels,
        spread over the season.
    dpi
        Resolution.
    """
    from matplotlib.figure import Figure

    emb = np.asarray(embedding.values if isinstance(embedding, xr.DataArray) else embedding)
    cover = np.isfinite(emb).all(0).mean(axis=(1, 2))
    cand = np.flatnonzero(cover >= 0.8 * cover.max()) if cover.max() > 0 else np.arange(cover.size)
    picks = cand[np.linspace(0, cand.size - 1, min(n_dates, cand.size)).round().astype(int)]
    basis = pca_basis(emb)
    fig = Figure(figsize=(6.4, 3.1 * len(picks)), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(picks), 2, squeeze=False)
    ny, nx = emb.shape[-2:]
    res = abs(float(cube["x"][1] - cube["x"][0])) if cube.sizes["x"] > 1 else 10.0
    extent = (0, nx * res / 1000, 0, ny * res / 1000)
    for row, t in zip(axes, picks, strict=True):
        date = np.datetime_as_string(cube["time"].values[t], "D")
        rgb = np.nan_to_num(true_colour(cube, int(t)), nan=0.5)
        row[0].imshow(rgb, extent=extent, interpolation="nearest")
        row[0].set_title(f"S2 true colour {date}", fontsize=9)
        row[1].imshow(
            np.nan_to_num(pca_rgb(emb, int(t), basis=basis), nan=0.5),
            extent=extent,
            interpolation="nearest",
        )
        row[1].set_title(f"embedding PCA 1-3 as RGB {date}", fontsize=9)
        for ax in row:
            ax.set_xlabel("km", fontsize=8)
            ax.tick_params(labelsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
