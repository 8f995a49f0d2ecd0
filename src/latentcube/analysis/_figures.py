"""Shared pieces of the analysis figures: map panels in km and atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["extent_km", "map_panel", "save_png"]


def extent_km(obj: xr.DataArray | xr.Dataset) -> tuple[float, float, float, float]:
    """(0, width, 0, height) of the grid in km, for ``imshow(extent=...)``."""
    res = abs(float(obj["x"][1] - obj["x"][0])) if obj.sizes["x"] > 1 else 10.0
    return (0.0, obj.sizes["x"] * res / 1000, 0.0, obj.sizes["y"] * res / 1000)


def map_panel(
    ax: Any,
    values: np.ndarray,
    extent: tuple[float, float, float, float],
    title: str,
    *,
    cmap: str = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "",
    colorbar: bool = True,
) -> Any:
    """Draw one map (y, x) or RGB (y, x, 3) on ``ax``; NaN shown grey."""
    import matplotlib as mpl

    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 3:
        im = ax.imshow(
            np.nan_to_num(np.clip(a, 0, 1), nan=0.5), extent=extent, interpolation="nearest"
        )
    else:
        cm = mpl.colormaps[cmap].with_extremes(bad="0.75")
        im = ax.imshow(
            np.ma.masked_invalid(a),
            extent=extent,
            interpolation="nearest",
            cmap=cm,
            vmin=vmin,
            vmax=vmax,
        )
        if colorbar:
            cb = ax.figure.colorbar(im, ax=ax, shrink=0.8)
            cb.set_label(label, fontsize=8)
            cb.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("km", fontsize=8)
    ax.tick_params(labelsize=7)
    return im


def save_png(
    fig: Any, path: str | os.PathLike[str], *, overwrite: bool = False, dpi: int = 110
) -> Path:
    """Write ``fig`` as PNG beside ``path`` and swap it in when complete."""
    from latentcube.io import replacing

    path = Path(path)
    with replacing(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
