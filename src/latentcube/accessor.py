"""The ``.latentcube`` accessor on xarray objects holding an embedding.

Registered on ``import latentcube`` for both ``xarray.Dataset`` (a store opened
with :func:`latentcube.open_embedding`) and ``xarray.DataArray`` (the lazy result
of :func:`latentcube.embed`)::

    emb = lc.open_embedding("emb.zarr")
    rgb = emb.latentcube.pca_rgb()              # (time, y, x, rgb) in [0, 1]
    emb.latentcube.to_geotiff("tifs", by="date")
    year = emb.latentcube.summarise("2019-07-01/2020-06-30")
    moved = emb.latentcube.change(before="2018-01-01/2018-12-31", after="2020-01-01/2020-12-31")
    odd = emb.latentcube.anomaly(half_window=30)
    like = emb.latentcube.similar(x=501_005.0, y=5_629_405.0, time="2018-06-12")

This module imports only xarray and numpy; the work is done by
:mod:`latentcube.plotting`, :mod:`latentcube.io` and :mod:`latentcube.analysis`
on first use; the embedding is checked by :mod:`latentcube.embedding_store`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

__all__ = ["LatentcubeAccessor"]


class LatentcubeAccessor:
    """Embedding helpers: ``pca_rgb``, ``to_geotiff`` and :mod:`latentcube.analysis`."""

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    @property
    def embedding(self) -> xr.DataArray:
        """The (feature, time, y, x) embedding of the object."""
        from latentcube.embedding_store import embedding_array

        return embedding_array(self._obj)

    def pca_rgb(self, time: int | Any | None = None) -> xr.DataArray:
        """The first three principal components of the embedding as RGB in [0, 1].

        Parameters
        ----------
        time
            A date index or date (``sel`` on ``time``, nearest); ``None`` gives all
            dates. The principal axes are always fitted on all finite pixel-dates,
            so colours are comparable across dates.

        Returns
        -------
        xarray.DataArray
            (time, y, x, rgb) or (y, x, rgb); NaN where the embedding is missing.
        """
        from latentcube.plotting import pca_rgb

        emb = self.embedding
        rgb = pca_rgb(emb.values)
        out = xr.DataArray(
            rgb,
            dims=("time", "y", "x", "rgb"),
            coords={
                "time": emb["time"].values,
                "y": emb["y"].values,
                "x": emb["x"].values,
                "rgb": ["r", "g", "b"],
            },
            name="pca_rgb",
        )
        if self._obj.rio.crs is not None:
            out = out.rio.write_crs(self._obj.rio.crs)
        if time is None:
            return out
        if isinstance(time, int | np.integer):
            return out.isel(time=int(time))
        return out.sel(time=np.datetime64(str(time), "ns"), method="nearest")

    def to_geotiff(
        self,
        out_dir: str | os.PathLike[str],
        *,
        by: Literal["date", "feature"] = "date",
        prefix: str = "embedding",
        times: Sequence[Any] | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write Cloud-Optimised GeoTIFFs per date or per feature.

        See :func:`latentcube.io.to_geotiff`.
        """
        from latentcube.io import to_geotiff

        return to_geotiff(
            self._obj, out_dir, by=by, prefix=prefix, times=times, overwrite=overwrite
        )

    def summarise(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        """One vector per pixel per time window, over valid dates.

        See :func:`latentcube.analysis.summarise` (same arguments after the embedding).
        """
        from latentcube.analysis import summarise

        return summarise(self._obj, *args, **kwargs)

    def change(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        """Change magnitude per pixel between a ``before`` and an ``after`` period.

        See :func:`latentcube.analysis.change`.
        """
        from latentcube.analysis import change

        return change(self._obj, *args, **kwargs)

    def anomaly(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        """Per-date distance from the pixel's seasonal expectation in other years.

        See :func:`latentcube.analysis.anomaly`.
        """
        from latentcube.analysis import anomaly

        return anomaly(self._obj, *args, **kwargs)

    def similar(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        """Cosine similarity and whitened distance of every pixel-date to example pixels.

        See :func:`latentcube.analysis.similar`.
        """
        from latentcube.analysis import similar

        return similar(self._obj, *args, **kwargs)


def register() -> None:
    """Register ``.latentcube`` on Dataset and DataArray (idempotent)."""
    for cls, reg in (
        (xr.Dataset, xr.register_dataset_accessor),
        (xr.DataArray, xr.register_dataarray_accessor),
    ):
        if getattr(cls, "latentcube", None) is not LatentcubeAccessor:
            reg("latentcube")(LatentcubeAccessor)


register()
