"""The analysis commands as library functions: an embedding store in, a store (and PNG) out.

Each function opens an embedding store, runs one analysis lazily, writes the result
as a Zarr store with the CRS (never over its input, locked while written, swapped in
only when complete) and, where asked, draws a PNG. ``latentcube summarise``,
``latentcube change`` and ``latentcube similar`` call them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from latentcube.analysis.change import anomaly, change, plot_change
from latentcube.analysis.similarity import Point, plot_similarity, similar
from latentcube.analysis.summary import plot_summary, summarise
from latentcube.errors import EmbeddingError

__all__ = ["anomaly_store", "change_store", "similar_store", "summarise_store"]

PathLike = str | os.PathLike[str]


def _open(path: PathLike) -> xr.Dataset:
    from latentcube.io import open_zarr

    if not Path(path).exists():
        raise EmbeddingError(f"embedding store not found: {path}")
    ds = open_zarr(path)
    if "embedding" not in ds:
        raise EmbeddingError(f"{path} is not an embedding store (no 'embedding' variable)")
    return ds


def _write(result: xr.Dataset, source: PathLike, out: PathLike, overwrite: bool) -> Path:
    """Write ``result`` as a store at ``out``, never over ``source``, locked while written.

    The result inherits the source store's provenance (model and hash, sensors,
    bands, period: :data:`~latentcube.store_metadata.LINEAGE_KEYS`) and gets a STAC
    Item beside it, as embedding stores do.
    """
    from latentcube.io import check_output, locked, write_zarr
    from latentcube.store_metadata import lineage_attrs, write_stac_item

    check_output(out, [source])
    result.attrs["source_store"] = str(source)
    inherited = lineage_attrs(source)
    result.attrs.update({k: v for k, v in inherited.items() if k not in result.attrs})
    with locked(out):
        written = write_zarr(result, out, overwrite=overwrite)
        write_stac_item(written)
        return written


def _checked_png(png: PathLike | None, source: PathLike, out: PathLike) -> None:
    from latentcube.io import check_output

    if png is not None:
        check_output(png, [source, out])


def summarise_store(
    path: PathLike,
    out: PathLike,
    *,
    png: PathLike | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """:func:`~latentcube.analysis.summary.summarise` of a store, written to ``out``.

    Keyword arguments (``window``, ``every``, ``length``, ``stat``, ``quantiles``,
    ``weight``, ``months``) go to ``summarise``. With ``png``, the summary map
    (:func:`~latentcube.analysis.summary.plot_summary`) is drawn there as well.
    """
    _checked_png(png, path, out)
    written = _write(summarise(_open(path), **kwargs), path, out, overwrite)
    if png is not None:
        from latentcube.io import open_zarr

        plot_summary(open_zarr(written).load(), png, overwrite=True)
    return written


def change_store(
    path: PathLike,
    out: PathLike,
    before: Any,
    after: Any,
    *,
    png: PathLike | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """:func:`~latentcube.analysis.change.change` between two periods, written to ``out``.

    With ``png``, the Euclidean change map is drawn there as well.
    """
    _checked_png(png, path, out)
    written = _write(change(_open(path), before, after, **kwargs), path, out, overwrite)
    if png is not None:
        from latentcube.io import open_zarr

        plot_change(open_zarr(written).load(), png, overwrite=True)
    return written


def anomaly_store(path: PathLike, out: PathLike, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """:func:`~latentcube.analysis.change.anomaly` per date, written to ``out``."""
    return _write(anomaly(_open(path), **kwargs), path, out, overwrite)


def similar_store(
    path: PathLike,
    out: PathLike,
    points: Sequence[Point],
    *,
    png: PathLike | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """:func:`~latentcube.analysis.similarity.similar` to example pixels, written to ``out``.

    With ``png``, the similarity maps of a few dates are drawn there as well.
    """
    if not points:
        raise EmbeddingError("give at least one example pixel (--point X,Y[,DATE])")
    _checked_png(png, path, out)
    written = _write(similar(_open(path), points=points, **kwargs), path, out, overwrite)
    if png is not None:
        from latentcube.io import open_zarr

        plot_similarity(open_zarr(written).load(), png, overwrite=True)
    return written
