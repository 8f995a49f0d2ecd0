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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
import zarr.storage

__all__ = ["geozarr_attrs", "open_zarr", "write_zarr"]


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
