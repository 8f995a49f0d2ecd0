"""Readers that turn local inputs into the cube data model of :mod:`latentcube.cube.schema`.

Supported inputs: Zarr stores written by latentcube (directory or ``.zip``),
stacks of per-date GeoTIFFs, and the real sample formats used for tests and
the demo: WorldCereal per-date S1+S2 training patches, the openEO-GFMap Mol
patch, and GreenEarthNet-style minicubes (their readers are in
:mod:`latentcube.cube.worldcereal` and :mod:`latentcube.cube.formats`, re-exported
here). :func:`open_cube` picks the reader; it is the one way to open a cube, for
the driver of a job and for its Dask workers alike, so every caller gets the same
dtypes and the same errors: an input that cannot be read is a one-line
:class:`~latentcube.errors.CubeError` naming the file, never a traceback of the
library underneath.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from latentcube.cube.formats import (
    open_netcdf,
    read_geotiff_stack,
    read_greenearthnet,
    read_openeo_mol,
    reason,
)
from latentcube.cube.nrt import NRT_ROMANIA_10M, is_nrt_file, read_nrt
from latentcube.cube.schema import provenance, validate_cube
from latentcube.cube.worldcereal import (
    attach_agera5,
    read_agera5,
    read_worldcereal_labels,
    read_worldcereal_patch,
)
from latentcube.errors import CubeError, LatentcubeError
from latentcube.sensors import SENSORS

__all__ = [
    "attach_agera5",
    "demo_cube_path",
    "describe_cube",
    "load_demo_cube",
    "open_cube",
    "read_agera5",
    "read_geotiff_stack",
    "read_greenearthnet",
    "read_labels",
    "read_openeo_mol",
    "read_worldcereal_labels",
    "read_worldcereal_patch",
]


def read_labels(
    path: str | os.PathLike[str],
    like: xr.Dataset | xr.DataArray,
    *,
    variable: str | None = None,
) -> xr.DataArray:
    """Class labels from a raster, on the grid of the cube ``like``.

    Parameters
    ----------
    path
        A single-band raster GDAL reads (e.g. a GeoTIFF of rasterised parcels),
        or, with ``variable``, a NetCDF file or Zarr store holding that (y, x)
        variable with its CRS.
    like
        The cube (or any array with ``y``/``x`` coordinates and a CRS) whose
        grid the labels are put on.
    variable
        The label variable of a NetCDF file or Zarr store.

    Returns
    -------
    xarray.DataArray
        (y, x) int32 class codes on ``like``'s grid, 0 = no label (the raster's
        0, its nodata value and NaN). Only the window of the raster that covers
        the cube (and 2 pixels around it) is read, so a whole land-cover tile
        costs no more than the cube's part of it. A raster on another grid or CRS
        is resampled to the cube's grid by nearest neighbour, so codes are never
        mixed.

    Raises
    ------
    CubeError
        Several bands, no CRS (raster or cube), fractional or out-of-range
        codes, or no labelled pixel on the cube's grid.
    """
    import rioxarray as rxr
    from rasterio.enums import Resampling

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no label raster at {p}")
    if variable is None:
        da = rxr.open_rasterio(p, masked=False)
        if not isinstance(da, xr.DataArray):
            raise CubeError(f"{p} holds several rasters; pass one single-band raster")
        if da.sizes.get("band", 1) != 1:
            raise CubeError(f"{p} has {da.sizes['band']} bands; labels need one")
        da = da.squeeze("band", drop=True)
    else:
        ds = (
            xr.open_zarr(p, decode_coords="all")
            if p.is_dir()
            else xr.open_dataset(p, mask_and_scale=False, decode_coords="all")
        )
        if variable not in ds:
            raise CubeError(f"{p} has no variable {variable!r}: {sorted(map(str, ds.data_vars))}")
        da = ds[variable].squeeze(drop=True)
        if da.dims != ("y", "x"):
            raise CubeError(f"{p}: {variable!r} has dims {da.dims}, expected ('y', 'x')")
    if da.rio.crs is None:
        raise CubeError(f"label raster {p} has no CRS")
    crs = like.rio.crs
    if crs is None:
        raise CubeError("the cube has no CRS, so labels cannot be put on its grid")
    y, x = like["y"].values, like["x"].values
    da = _clip_to(da, x, y, crs, p)  # a whole WorldCover tile is never read
    v = np.asarray(da.values, np.float64)
    nodata = da.rio.nodata
    none = ~np.isfinite(v) | ((v == nodata) if nodata is not None else False)
    codes = v[~none]
    if codes.size and (np.any(codes != np.round(codes)) or np.abs(codes).max() > 2**31 - 1):
        raise CubeError(
            f"labels in {p} must be integer class codes (found {codes.dtype} values "
            "with fractions or beyond int32)"
        )
    lab = da.copy(data=np.where(none, 0, v).astype(np.int32)).rio.write_nodata(0)
    same = (
        lab.rio.crs == crs
        and lab.shape == (len(y), len(x))
        and np.allclose(lab["y"].values, y)
        and np.allclose(lab["x"].values, x)
    )
    if not same:
        grid = xr.DataArray(
            np.zeros((len(y), len(x)), np.int32), coords={"y": y, "x": x}, dims=("y", "x")
        ).rio.write_crs(crs)
        lab = lab.rio.reproject_match(grid, resampling=Resampling.nearest)
    out = xr.DataArray(
        np.asarray(lab.values, np.int32), coords={"y": y, "x": x}, dims=("y", "x"), name="labels"
    )
    if not (out.values > 0).any():
        raise CubeError(f"no labelled pixel of {p} falls on the cube's grid")
    out.attrs = provenance(f"labels {p.name}", reader="read_labels", resampled=not same)
    return out.rio.write_crs(crs)


def _clip_to(da: xr.DataArray, x: np.ndarray, y: np.ndarray, crs: Any, path: Path) -> xr.DataArray:
    """The part of a (lazy) raster that covers the pixels ``x``, ``y`` in ``crs``, plus 2 pixels."""
    from rasterio.warp import transform_bounds
    from rioxarray.exceptions import NoDataInBounds, OneDimensionalRaster

    hx = abs(float(x[1] - x[0])) / 2 if len(x) > 1 else 5.0
    hy = abs(float(y[1] - y[0])) / 2 if len(y) > 1 else 5.0
    box = (x.min() - hx, y.min() - hy, x.max() + hx, y.max() + hy)
    left, bottom, right, top = transform_bounds(crs, da.rio.crs, *box, densify_pts=21)
    rx, ry = (abs(r) for r in da.rio.resolution())
    try:
        return da.rio.clip_box(left - 2 * rx, bottom - 2 * ry, right + 2 * rx, top + 2 * ry)
    except (NoDataInBounds, OneDimensionalRaster):
        raise CubeError(f"no labelled pixel of {path} falls on the cube's grid") from None


def demo_cube_path() -> Path:
    """Path of the bundled demo cube (a real WorldCereal S1+S2 patch, see samples/README.md)."""
    p = Path(str(resources.files("latentcube") / "samples" / "demo_flanders.zarr.zip"))
    if not p.exists():
        raise FileNotFoundError(
            f"bundled demo cube missing at {p}; regenerate it with scripts/make_demo_cube.py"
        )
    return p


def load_demo_cube() -> xr.Dataset:
    """The bundled demo cube, loaded into memory and validated."""
    return open_cube(demo_cube_path()).load()


# --------------------------------------------------------------------------- Zarr stores


class _StoreArray(BackendArray):
    """A variable of a cube store, read lazily: in the data model's dtype, errors as CubeError.

    Wraps the variable as xarray decoded it (fill values and ``scale_factor``
    applied, still lazy); every read casts to ``dtype`` and turns a failure of the
    read (a truncated or corrupt chunk, a chunk of the wrong size) into a
    one-line :class:`CubeError` naming the variable and the store.
    """

    def __init__(self, variable: xr.Variable, dtype: np.dtype[Any], where: str) -> None:
        self.variable = variable
        self.shape = variable.shape
        self.dtype = dtype
        self.where = where

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        try:
            values = np.asarray(self.variable[key].values)
        except LatentcubeError:
            raise
        except Exception as err:
            raise CubeError(
                f"cannot read {self.where} (a truncated or corrupt chunk?): {reason(err)}"
            ) from err
        return values.astype(self.dtype, copy=False)


def _model_dtype(name: str, var: xr.Variable) -> np.dtype[Any]:
    """The in-memory dtype of a data variable: float32 for sensors, bool for masks."""
    if name in SENSORS:
        return np.dtype(np.float32)
    if name.endswith("_valid"):
        return np.dtype(bool)
    return var.dtype


def _store_chunks(var: xr.Variable) -> dict[Any, int]:
    """The store's chunks of ``var`` (what ``xarray.open_zarr(chunks={})`` gives)."""
    preferred = var.encoding.get("preferred_chunks")
    if preferred:
        return {d: int(preferred.get(d, n)) for d, n in zip(var.dims, var.shape, strict=True)}
    chunks = var.encoding.get("chunks")
    if chunks is not None and len(chunks) == var.ndim:
        return {d: int(c) for d, c in zip(var.dims, chunks, strict=True)}
    return {d: -1 for d in var.dims}


def _guarded(ds: xr.Dataset, path: Path, chunks: Any) -> xr.Dataset:
    """``ds`` with every lazy variable read through :class:`_StoreArray`, chunked as asked."""
    from dask.base import tokenize

    stamp = path.stat().st_mtime_ns
    data: dict[Any, xr.Variable] = {}
    coords: dict[Any, xr.Variable] = {}
    for name, var in ds.variables.items():
        if name in ds.indexes or var.ndim == 0 or var.dtype.kind in "OUST":
            continue  # in memory already (indexes, the CRS, strings)
        is_data = name in ds.data_vars
        dtype = _model_dtype(str(name), var) if is_data else var.dtype
        arr = _StoreArray(var, dtype, f"{str(name)!r} of the cube store {path}")
        # a cast drops the store's encoding, as ``astype`` does
        enc = dict(var.encoding) if dtype == var.dtype else {}
        new = xr.Variable(var.dims, indexing.LazilyIndexedArray(arr), var.attrs, enc)
        if chunks == "store":
            token = tokenize(str(path), stamp, str(name), str(dtype))
            new = new.chunk(_store_chunks(var), name=f"open_cube-{name}-{token}")
        (data if is_data else coords)[name] = new
    ds = ds.assign_coords(coords).assign(data)
    return ds.chunk(chunks) if isinstance(chunks, Mapping) else ds


def _check_extent(cube: xr.Dataset) -> None:
    """A cube needs 2 pixels along y and x: with one, its grid's step is unknown."""
    thin = [
        f"{n} pixel{'' if n == 1 else 's'} along {d!r}"
        for d in ("y", "x")
        if (n := cube.sizes.get(d, 2)) < 2
    ]
    if thin:
        raise CubeError(
            f"the cube is {' and '.join(thin)}; the data model needs at least 2 x 2 pixels "
            "(the grid's resolution and orientation are unknown otherwise)"
        )


def _from_store(path: Path, check_values: bool, chunks: Any) -> xr.Dataset:
    from latentcube.io import open_zarr

    if not (chunks is None or chunks == "store" or isinstance(chunks, Mapping)):
        raise ValueError(f"chunks must be 'store', None or a mapping, got {chunks!r}")
    try:
        ds = _guarded(open_zarr(path, chunks=None), path, chunks)
    except LatentcubeError:
        raise
    except Exception as err:  # unreadable metadata: not a zip, garbled zarr.json, ...
        raise CubeError(f"{path} is not a readable Zarr store: {reason(err)}") from err
    _check_extent(ds)
    return validate_cube(ds, check_values=check_values)


# --------------------------------------------------------------------------- any input


def open_cube(
    path: str | os.PathLike[str],
    *,
    check_values: bool = True,
    chunks: Any = "store",
    **kwargs: Any,
) -> xr.Dataset:
    """Open any supported local input as a validated cube.

    The one function that opens a cube: the driver of a job and its Dask workers
    call it alike (a worker with ``chunks=None, check_values=False``), so that
    everyone gets the same in-memory cube: sensor data as float32 (a store's
    ``scale_factor`` and fill value applied, float64 or packed integers cast),
    validity masks as bool, and the same errors.

    Parameters
    ----------
    path
        A latentcube Zarr store (directory or ``.zip``), a WorldCereal patch
        folder (also the 20 m-only patches), the openEO Mol folder, a
        GreenEarthNet ``.nc`` minicube, an nrt S2 cube (``.nc`` file or the
        Romania folder, :func:`latentcube.cube.nrt.read_nrt`), or a folder of
        per-date GeoTIFFs (then ``times`` and ``bands`` are required).
    check_values
        For Zarr stores: also check the values (one pass over the data); False
        checks the layout only, e.g. for a store validated before.
    chunks
        For Zarr stores: ``"store"`` (default) gives Dask arrays with the
        store's chunks; ``None`` lazily indexed arrays without Dask, so that a
        task reads only the chunks its selection touches, in the task itself
        (the workers' way); a mapping rechunks the Dask arrays
        (:meth:`xarray.Dataset.chunk`). Other inputs are read into memory.
    **kwargs
        Passed to the reader.

    Returns
    -------
    xarray.Dataset
        The cube (lazy for Zarr stores).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    CubeError
        An input that breaks the data model or cannot be read, on one line that
        names ``path``: an empty or corrupt ``.zip`` or NetCDF file, a garbled
        ``zarr.json``, a truncated chunk (when the values are checked here, or
        later when a lazy cube's data are read), values out of range (reflectance
        in digital numbers), missing variables, a cube 1 pixel wide.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no cube at {p}")
    try:
        if p.suffix == ".zip" or (p.is_dir() and (p / "zarr.json").exists()):
            return _from_store(p, check_values, chunks)
        cube = _read(p, kwargs)
        _check_extent(cube)
        return cube
    except CubeError as err:
        if str(p) in str(err):
            raise
        raise CubeError(f"{p}: {err}") from err


def _read(p: Path, kwargs: dict[str, Any]) -> xr.Dataset:
    """Read an input other than a Zarr store with the reader of its format."""
    if p.is_dir():
        if list(p.glob("S2_L2A_10m_*.nc")) or list(p.glob("S2_L2A_20m_*.nc")):
            return read_worldcereal_patch(p, **kwargs)
        if (p / NRT_ROMANIA_10M).exists():
            return read_nrt(p, **kwargs)
        if (p / "cdse_sentinel2_l2a.nc").exists():
            return read_openeo_mol(p, **kwargs)
        tifs = sorted(p.glob("*.tif")) + sorted(p.glob("*.tiff"))
        if tifs:
            if "times" not in kwargs or "bands" not in kwargs:
                raise CubeError(
                    f"{p} is a folder of {len(tifs)} GeoTIFFs: pass times=... (one per file, "
                    "in file-name order) and bands=... to open_cube"
                )
            return read_geotiff_stack(tifs, **kwargs)
    if p.suffix == ".nc":
        with open_netcdf(p) as ds:
            is_gen = "s2_avail" in ds
            is_nrt = is_nrt_file(ds)
        if is_gen:
            return read_greenearthnet(p, **kwargs)
        if is_nrt:
            return read_nrt(p, **kwargs)
    raise CubeError(
        f"{p} is not a cube latentcube can read: expected a latentcube Zarr store, a "
        "WorldCereal patch folder, the openEO Mol folder, a GreenEarthNet .nc minicube or a "
        "folder of per-date GeoTIFFs"
    )


def describe_cube(cube: xr.Dataset) -> list[str]:
    """Lines describing a cube for people: grid, dates, bands, S1 matching, sources.

    ``latentcube info`` prints them.
    """
    t = cube["time"].values
    frac = cube["s2_valid"].mean(dim=("y", "x")).values
    lines = [
        f"grid    {cube.sizes['y']} x {cube.sizes['x']} px, CRS {cube.rio.crs}, "
        f"resolution {abs(float(cube.x[1] - cube.x[0])):g} m",
        f"time    {len(t)} dates, {np.datetime_as_string(t[0], 'D')} .. "
        f"{np.datetime_as_string(t[-1], 'D')}, mean valid fraction {frac.mean():.2f}",
        f"s2      bands {', '.join(map(str, cube['band'].values))}",
    ]
    if "s1" in cube:
        matched = int((~np.isnat(cube["s1_time"].values)).sum())
        lines.append(
            f"s1      bands {', '.join(map(str, cube['s1_band'].values))}, "
            f"{matched}/{len(t)} dates matched"
        )
    from latentcube.cube.masks import describe_cube_mask

    lines.append(f"mask    {describe_cube_mask(cube.attrs)}")
    for k in ("source", "attribution"):
        if k in cube.attrs:
            lines.append(f"{k:<7} {cube.attrs[k]}")
    return lines
