"""Reading and writing latentcube stores: Zarr v3 with the CRS, written atomically.

Every store keeps the CRS twice: as rioxarray's CF ``spatial_ref`` grid-mapping
coordinate (read by GDAL, rioxarray and odc-geo) and as GeoZarr-style
``proj:code`` / ``spatial:*`` attributes. A path ending in ``.zip`` is written
as a single-file zipped Zarr store (used for the shipped demo cube).
"""

from __future__ import annotations

import os
import shutil
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
import zarr.storage

__all__ = ["geozarr_attrs", "open_zarr", "to_geotiff", "write_zarr"]


def geozarr_attrs(ds: xr.Dataset | xr.DataArray) -> dict[str, Any]:
    """GeoZarr ``proj:`` and ``spatial:`` attributes of a georeferenced dataset.

    Returns an empty dict when ``ds`` has no CRS.
    """
    crs = ds.rio.crs
    if crs is None:
        return {}
    transform = ds.rio.transform(recalc=True)
    ny, nx = int(ds.sizes["y"]), int(ds.sizes["x"])
    left, bottom, right, top = ds.rio.bounds(recalc=True)
    epsg = crs.to_epsg()
    return {
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:wkt2": crs.to_wkt(),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in tuple(transform)[:6]],
        "spatial:shape": [ny, nx],
        "spatial:bbox": [float(left), float(bottom), float(right), float(top)],
    }


def _prepare(ds: xr.Dataset) -> xr.Dataset:
    """Make a dataset storable in Zarr v3 without unstable dtypes."""
    out = ds.copy()
    for name, coord in ds.coords.items():
        if coord.dtype.kind == "U":
            out = out.assign_coords({name: coord.astype(object)})
    out.attrs = {**ds.attrs, **{k: v for k, v in geozarr_attrs(ds).items() if v is not None}}
    return out


def write_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    compute: bool = True,
) -> Path:
    """Write ``ds`` as a Zarr v3 store, atomically.

    The store is first written next to ``path`` under a temporary name and then
    renamed, so an interrupted write never leaves a half-written store at
    ``path``.

    Parameters
    ----------
    ds
        Dataset with a CRS (``ds.rio.crs``).
    path
        Target directory store, or a ``.zip`` file for a single-file store.
    overwrite
        Replace an existing store at ``path``; otherwise raise ``FileExistsError``.
    encoding
        Per-variable Zarr encoding (chunks, dtype, scale_factor, ...).
    compute
        Write the data variables; ``False`` writes metadata and coordinates only
        (a template whose chunks are filled later, e.g. by region writes).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp_dir = tmp.with_suffix(".zarr") if path.suffix == ".zip" else tmp
    enc = {k: dict(v) for k, v in (encoding or {}).items()}
    for name, var in ds.data_vars.items():
        gm = var.encoding.get("grid_mapping") or var.attrs.get("grid_mapping")
        if gm and name in enc:  # an explicit encoding must not drop the CRS link
            enc[name].setdefault("grid_mapping", gm)
    try:
        _prepare(ds).to_zarr(  # type: ignore[call-overload]
            tmp_dir, mode="w", zarr_format=3, consolidated=False, encoding=enc, compute=compute
        )
        if path.suffix == ".zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                for f in sorted(tmp_dir.rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(tmp_dir).as_posix())
            shutil.rmtree(tmp_dir)
        if path.exists():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.replace(tmp, path)
    finally:
        for leftover in {tmp, tmp_dir}:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()
    return path


def open_zarr(path: str | os.PathLike[str], *, chunks: Any = "store") -> xr.Dataset:
    """Open a store written by :func:`write_zarr`, with its CRS restored.

    Parameters
    ----------
    path
        Directory store or ``.zip`` file.
    chunks
        ``"store"`` (default): dask arrays with the store's chunks, so reductions
        over a large store stream chunk by chunk; otherwise passed to
        :func:`xarray.open_zarr` (``None``: lazy arrays without dask).

    Returns
    -------
    xarray.Dataset
        Lazy dataset; ``ds.rio.crs`` is set.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Zarr store at {path}")
    store: Any = zarr.storage.ZipStore(path, mode="r") if path.suffix == ".zip" else path
    ds = xr.open_zarr(
        store, decode_coords="all", consolidated=False, chunks={} if chunks == "store" else chunks
    )
    for name, coord in ds.coords.items():
        if coord.ndim == 1 and (coord.dtype.kind in "OT" or "StringDType" in str(coord.dtype)):
            ds = ds.assign_coords({name: np.array([str(v) for v in coord.values.ravel()])})
    if "spatial_ref" in ds.coords and ds.rio.crs is not None:
        ds = ds.rio.write_crs(ds.rio.crs)
    return ds


def to_geotiff(
    embedding: xr.DataArray | xr.Dataset,
    out_dir: str | os.PathLike[str],
    *,
    by: Literal["date", "feature"] = "date",
    prefix: str = "embedding",
    times: Sequence[Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> list[Path]:
    """Write an embedding as Cloud-Optimised GeoTIFFs, one per date or one per feature.

    Parameters
    ----------
    embedding
        (feature, time, y, x) with a CRS: the ``DataArray`` of
        :func:`latentcube.embed` or a dataset with an ``embedding`` variable (e.g.
        :func:`latentcube.open_embedding`). Lazy input is computed one file at a time.
    out_dir
        Folder for the files (created).
    by
        ``"date"``: ``{prefix}_{YYYY-MM-DD}.tif`` with one band per feature;
        ``"feature"``: ``{prefix}_{F01}.tif`` with one band per date.
    prefix
        File name prefix.
    times
        Dates to export (default all); anything ``xarray.DataArray.sel`` accepts on ``time``.
    dtype
        ``float32`` (default) or ``float64`` (GeoTIFF has no float16).
    overwrite
        Replace existing files; otherwise an existing file raises ``FileExistsError``.

    Returns
    -------
    list of pathlib.Path
        The files written. Band descriptions name the features or dates; missing
        values are NaN (the GeoTIFF nodata value).
    """
    from latentcube.errors import EmbeddingError

    da = embedding["embedding"] if isinstance(embedding, xr.Dataset) else embedding
    if tuple(da.dims) != ("feature", "time", "y", "x"):
        raise EmbeddingError(f"expected dims (feature, time, y, x), got {tuple(da.dims)}")
    if by not in ("date", "feature"):
        raise EmbeddingError(f"by must be 'date' or 'feature', got {by!r}")
    if dtype not in ("float32", "float64"):
        raise EmbeddingError(f"dtype must be 'float32' or 'float64' for GeoTIFF, got {dtype!r}")
    crs = embedding.rio.crs
    if crs is None:
        raise EmbeddingError("the embedding has no CRS; a GeoTIFF needs one")
    if times is not None:
        da = da.sel(time=list(times))
    da = da.drop_vars([c for c in da.coords if c not in da.dims])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dates = np.datetime_as_string(da["time"].values, unit="D")
    features = [str(f) for f in da["feature"].values]
    if by == "date":
        items = [(f"{prefix}_{d}.tif", da.isel(time=i), features) for i, d in enumerate(dates)]
    else:
        items = [
            (f"{prefix}_{f}.tif", da.isel(feature=i).rename(time="band"), list(dates))
            for i, f in enumerate(features)
        ]
    written = []
    for name, part, bands in items:
        path = out / name
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        band_dim = "feature" if by == "date" else "band"
        arr = part.transpose(band_dim, "y", "x").astype(dtype).compute()
        arr = arr.rename({band_dim: "band"}).assign_coords(band=np.arange(1, len(bands) + 1))
        arr.attrs = {"long_name": tuple(bands), "_FillValue": np.nan}
        arr = arr.rio.write_crs(crs).rio.write_nodata(np.nan, encoded=False)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            arr.rio.to_raster(tmp, driver="COG", compress="DEFLATE")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(path)
    return written
