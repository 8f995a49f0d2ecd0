"""Reading local source files into cubes: shared checks, openEO Mol, GreenEarthNet, GeoTIFF stacks.

Every reader checks the values it reads as the Zarr path does (:func:`check_reflectance`:
reflectance in digital numbers or another unit is refused with the data model's range
error, not clipped), opens its files through :func:`open_netcdf` (an unreadable file is a
:class:`~latentcube.errors.CubeError` naming it) and validates the cube it returns
(:func:`finish_cube`). The WorldCereal readers are :mod:`latentcube.cube.worldcereal`;
:func:`latentcube.cube.readers.open_cube` picks the reader, and
:mod:`latentcube.cube.readers` re-exports them all.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.cube.schema import make_cube, provenance, validate_cube, value_range_error
from latentcube.cube.sentinel1 import match_dates, preprocess_s1
from latentcube.cube.sentinel2 import drop_invalid_dates, merge_same_day, scl_valid
from latentcube.errors import CubeError
from latentcube.sensors import SENSORS

__all__ = [
    "RAW_REFLECTANCE",
    "SENTINEL_ATTRIBUTION",
    "attach_s1",
    "check_reflectance",
    "find_one",
    "finish_cube",
    "open_netcdf",
    "read_geotiff_stack",
    "read_greenearthnet",
    "read_openeo_mol",
    "reason",
    "upsample2",
]

#: The attribution every cube read from Sentinel data carries (with its years).
SENTINEL_ATTRIBUTION = "Contains modified Copernicus Sentinel data"

#: Reflectance a reader accepts before it clips to [0, 1]: what an L2A product can
#: encode, (DN - 1000) / 10000 for DN 1 to 65535. Bright targets (clouds, snow, roofs)
#: exceed 1 and are clipped, as the paper does; values beyond these limits are digital
#: numbers or another unit, refused with the data model's range error.
RAW_REFLECTANCE: tuple[float, float] = (-0.1, 6.5535)


def reason(err: BaseException) -> str:
    """An exception as one short line: its type and the first sentence of its message."""
    lines = str(err).strip().splitlines()
    text = lines[0].strip().split(". ")[0] if lines else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def open_netcdf(path: str | os.PathLike[str], **kwargs: Any) -> xr.Dataset:
    """:func:`xarray.open_dataset`, with an unreadable file as a one-line :class:`CubeError`.

    Parameters
    ----------
    path
        A NetCDF file.
    **kwargs
        Passed to :func:`xarray.open_dataset`.

    Returns
    -------
    xarray.Dataset
        The lazily opened file (use it as a context manager).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CubeError
        An empty, truncated or foreign file, naming ``path``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no file at {p}")
    try:
        return xr.open_dataset(p, **kwargs)
    except Exception as err:
        if p.is_file() and p.stat().st_size == 0:
            raise CubeError(f"{p} is an empty file, not a NetCDF file") from err
        raise CubeError(
            f"{p} is not a NetCDF file xarray can open (truncated or another format?): "
            f"{reason(err)}"
        ) from err


def check_reflectance(s2: np.ndarray, valid: np.ndarray, source: str | os.PathLike[str]) -> None:
    """Refuse S2 reflectance a reader would otherwise clip silently, naming ``source``.

    The valid, finite values of ``s2`` (time, band, y, x; ``valid`` (time, y, x)) must
    lie in :data:`RAW_REFLECTANCE` before the reader clips them to [0, 1]; otherwise
    the data are in digital numbers (0-10000) or another unit, and the error is the
    one the data model gives for a Zarr store holding such values
    (:func:`~latentcube.cube.schema.value_range_error`). One date at a time, so the
    only temporaries are one date's valid values.
    """
    lo, hi = np.inf, -np.inf
    for t in range(s2.shape[0]):
        vals = s2[t][:, np.asarray(valid[t], bool)]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
    if np.isfinite(lo) and (lo < RAW_REFLECTANCE[0] or hi > RAW_REFLECTANCE[1]):
        raise value_range_error("s2", lo, hi, source=str(source))


def find_one(folder: Path, prefix: str) -> Path:
    """The first ``{prefix}_*.nc`` file of ``folder`` (sorted by name)."""
    hits = sorted(folder.glob(f"{prefix}_*.nc"))
    if not hits:
        raise FileNotFoundError(f"no {prefix}_*.nc file in {folder}")
    return hits[0]


def upsample2(a: np.ndarray) -> np.ndarray:
    """20 m -> 10 m on an aligned grid: every 20 m pixel covers 2 x 2 pixels of 10 m."""
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def attach_s1(
    s2_times: np.ndarray, s1_times: np.ndarray, s1_norm: np.ndarray, max_gap_days: float
) -> dict[str, Any]:
    """Match preprocessed S1 (time_s1, band, y, x) to the S2 dates."""
    idx, _gap = match_dates(s2_times, s1_times, max_gap_days)
    ok = idx >= 0
    s1 = np.full((len(s2_times), *s1_norm.shape[1:]), np.nan, np.float32)
    s1[ok] = s1_norm[idx[ok]]
    s1_time = np.where(
        ok, np.asarray(s1_times, "datetime64[ns]")[np.maximum(idx, 0)], np.datetime64("NaT", "ns")
    )
    return {"s1": s1, "s1_valid": np.isfinite(s1).all(axis=1), "s1_time": s1_time}


def finish_cube(ds: xr.Dataset, min_valid_fraction: float) -> xr.Dataset:
    """Drop dates below ``min_valid_fraction`` valid pixels and validate what is left."""
    ds = drop_invalid_dates(ds, min_valid_fraction)
    if ds.sizes["time"] == 0:
        raise CubeError(
            f"no date has at least {min_valid_fraction:.0%} valid S2 pixels "
            f"({ds.attrs.get('source', 'input')}); lower min_valid_fraction"
        )
    return validate_cube(ds)


def _mol_db(v: np.ndarray) -> np.ndarray:
    """Decode openEO uint16 SIGMA0 to dB: ``20 log10(v) - 83``; 0 and 1 are no data.

    65534 marks values clipped at the top of the encoding (>= 13.3 dB); they are
    kept as 13.3 dB, which :func:`~latentcube.cube.sentinel1.normalise_db` maps
    to 1 anyway. 65535 (never seen) is treated as no data.
    """
    v = v.astype(np.float64)
    ok = (v > 1) & (v < 65535)
    with np.errstate(divide="ignore"):
        return np.where(ok, 20.0 * np.log10(np.maximum(v, 1.0)) - 83.0, np.nan)


def read_openeo_mol(
    folder: str | os.PathLike[str],
    *,
    with_s1: bool = True,
    max_gap_days: float = SENSORS["s1"].max_gap_days,
    min_valid_fraction: float = 0.05,
    dilation: int = 0,
) -> xr.Dataset:
    """Read the openEO-GFMap Mol patch (April 2023; S2 B01 B04 B08 B11 + SCL, S1 VV/VH, 10 m).

    S2 reflectance is ``value / 10000`` (offset already removed), clipped to
    [0, 1]; the mask is the SCL clear-sky mask and DN > 0 in every band. The
    file's own bands are kept (B01 is not a model band, so a model that needs
    the ten S2 bands rejects this cube with a clear message). S1 is decoded
    with ``dB = 20 log10(value) - 83`` (1 = no data; 65534 = clipped at the top,
    kept as about 13.3 dB, i.e. 1 after normalisation), then smoothed,
    normalised on its own time axis and matched to the S2 dates.

    Parameters
    ----------
    folder
        Folder holding ``cdse_sentinel2_l2a.nc`` and ``cdse_sentinel1_grd.nc``.
    with_s1
        Also read Sentinel-1.
    max_gap_days
        Largest S1-S2 distance of a match.
    min_valid_fraction
        Dates with a smaller share of valid pixels are dropped (all-invalid
        dates always).
    dilation
        Pixels by which the SCL invalid area is grown.

    Returns
    -------
    xarray.Dataset
        A validated cube on EPSG:32631 (66 x 64 px at 10 m).
    """
    folder = Path(folder)
    f2, f1 = folder / "cdse_sentinel2_l2a.nc", folder / "cdse_sentinel1_grd.nc"
    if not f2.exists():
        raise FileNotFoundError(f"openEO Mol sample not found: {f2}")
    with open_netcdf(f2, mask_and_scale=False) as d2:
        names = [
            str(v).removeprefix("S2-L2A-") for v in d2.data_vars if str(v).startswith("S2-L2A-B")
        ]
        dn = np.stack([d2[f"S2-L2A-{b}"].values for b in names], axis=1)
        raw = dn.astype(np.float32) / np.float32(10000)
        valid = scl_valid(d2["S2-L2A-SCL"].values, dilation=dilation) & (dn > 0).all(1)
        check_reflectance(raw, valid, f2)
        s2 = np.clip(raw, 0, 1)
        times, y, x = d2["t"].values, d2["y"].values, d2["x"].values
        crs = d2.rio.crs or "EPSG:32631"
    kw: dict[str, Any] = {}
    if with_s1:
        with open_netcdf(f1, mask_and_scale=False) as d1:
            if not (np.array_equal(d1["x"].values, x) and np.array_equal(d1["y"].values, y)):
                raise CubeError(f"{f1.name} is not on the grid of {f2.name}")
            db = np.stack(
                [_mol_db(d1["S1-SIGMA0-VV"].values), _mol_db(d1["S1-SIGMA0-VH"].values)], 1
            )
            t1 = d1["t"].values
            order = np.argsort(t1, kind="stable")
            kw = attach_s1(times, t1[order], preprocess_s1(db[order], input="db"), max_gap_days)
    attrs = provenance(
        f"openEO-GFMap Mol sample: {f2.name}" + (f", {f1.name}" if with_s1 else ""),
        reader="read_openeo_mol",
        attribution=f"{SENTINEL_ATTRIBUTION} 2023; openEO-GFMap, Apache-2.0",
    )
    ds = make_cube(
        s2, valid, time=times, y=y, x=x, crs=crs, bands=names, attrs=attrs, validate=False, **kw
    )
    return finish_cube(ds, min_valid_fraction)


def read_greenearthnet(
    path: str | os.PathLike[str],
    *,
    resolution: float = 20.0,
    min_valid_fraction: float = 0.05,
    dilation: int = 0,
) -> xr.Dataset:
    """Read a GreenEarthNet-style minicube (lat/lon, about 20 m) onto a UTM grid.

    The S2 dates (``s2_avail == 1``) and bands B02 B03 B04 B8A are reprojected
    to the UTM zone of the cube centre at ``resolution`` with nearest-neighbour
    resampling (keeps measured values and sharp cloud edges; no mixing of valid
    and invalid pixels; a bilinear kernel would blend cloud into clear pixels
    at every mask edge). Valid = deep-learning cloud mask 0, SCL clear, all
    bands finite; pixels outside the source footprint are invalid. Reflectance
    is clipped to [0, 1] (clouds can exceed 1). The ESA WorldCover class is kept
    as ``landcover`` (y, x) int16, 0 = no data, also resampled with nearest.

    Parameters
    ----------
    path
        The ``.nc`` minicube.
    resolution
        Target pixel size in metres: 20 (native scale) or 10 (nearest, so each
        source pixel is repeated; no new information).
    min_valid_fraction
        Dates with a smaller share of valid pixels are dropped (all-invalid
        dates always).
    dilation
        Pixels by which the SCL invalid area is grown (on the source grid).

    Returns
    -------
    xarray.Dataset
        A validated cube in the UTM zone of the cube centre (WGS 84 / UTM).
    """
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info
    from rasterio.enums import Resampling

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GreenEarthNet minicube not found: {path}")
    bands = ("B02", "B03", "B04", "B8A")
    with open_netcdf(path) as ds:
        _check_minicube(ds, path, bands)
        avail = ds["s2_avail"].values == 1
        sub = ds.isel(time=np.flatnonzero(avail))
        s2 = np.stack([sub[f"s2_{b}"].values for b in bands], axis=1).astype(np.float32)
        valid = (
            (sub["s2_dlmask"].values == 0)
            & scl_valid(
                np.nan_to_num(sub["s2_SCL"].values, nan=0).astype(np.int16), dilation=dilation
            )
            & np.isfinite(s2).all(1)
        )
        check_reflectance(s2, valid, path)
        times = sub["time"].values
        lat, lon = ds["lat"].values, ds["lon"].values
        lc = ds["esawc_lc"].values if "esawc_lc" in ds else None
    lat0, lon0 = float(lat.mean()), float(lon.mean())
    utm = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(lon0, lat0, lon0, lat0)
    )[0]
    crs = f"EPSG:{utm.code}"
    stack = np.concatenate(
        [
            np.where(valid[:, None], s2, np.nan).reshape(-1, lat.size, lon.size),
            valid.astype(np.float32),
            *([lc[None].astype(np.float32)] if lc is not None else []),
        ]
    )
    src = xr.DataArray(stack, dims=("layer", "y", "x"), coords={"y": lat, "x": lon})
    src = src.rio.write_crs("EPSG:4326").rio.write_nodata(np.nan)
    dst = src.rio.reproject(crs, resolution=resolution, resampling=Resampling.nearest)
    n_t, n_b = s2.shape[:2]
    arr = dst.values
    out_s2 = np.clip(arr[: n_t * n_b].reshape(n_t, n_b, *arr.shape[1:]), 0, 1)
    out_valid = np.nan_to_num(arr[n_t * n_b : n_t * n_b + n_t], nan=0) > 0.5
    out_valid &= np.isfinite(out_s2).all(1)
    attrs = provenance(
        f"GreenEarthNet minicube {path.name}",
        reader="read_greenearthnet",
        resampling=f"nearest from EPSG:4326 to {crs} at {resolution:g} m",
        attribution=(
            f"{SENTINEL_ATTRIBUTION} 2021; GreenEarthNet (Benson et al. 2024, CVPR), MIT; "
            "ESA WorldCover CC-BY 4.0"
        ),
    )
    cube = make_cube(
        out_s2,
        out_valid,
        time=times,
        y=dst["y"].values,
        x=dst["x"].values,
        crs=crs,
        bands=bands,
        attrs=attrs,
        validate=False,
    )
    if lc is not None:
        lcv = np.nan_to_num(arr[-1], nan=0).astype(np.int16)
        cube["landcover"] = (("y", "x"), lcv, {"long_name": "ESA WorldCover class", "nodata": 0})
    return finish_cube(cube, min_valid_fraction)


def _check_minicube(ds: xr.Dataset, path: Path, bands: Sequence[str]) -> None:
    """The variables and dimensions of a GreenEarthNet minicube that the reader needs."""
    cube = ("time", "lat", "lon")
    need = ["s2_SCL", "s2_dlmask", *(f"s2_{b}" for b in bands)]
    missing = [v for v in ["s2_avail", *need] if v not in ds.variables]
    if missing:
        raise CubeError(
            f"{path} lacks the GreenEarthNet variable(s) {missing} the reader needs "
            f"(it has {sorted(map(str, ds.data_vars))})"
        )
    for name in need:
        if ds[name].dims != cube:
            raise CubeError(
                f"{path}: {name!r} has dims {ds[name].dims}; a GreenEarthNet minicube has "
                f"{cube} with lat/lon coordinates in degrees"
            )
    if ds["s2_avail"].dims != ("time",):
        raise CubeError(f"{path}: 's2_avail' has dims {ds['s2_avail'].dims}, expected ('time',)")
    absent = [c for c in cube if c not in ds.coords]
    if absent:
        raise CubeError(f"{path} has no {' or '.join(absent)} coordinate (time, lat, lon)")
    if "esawc_lc" in ds and ds["esawc_lc"].dims != cube[1:]:
        raise CubeError(f"{path}: 'esawc_lc' has dims {ds['esawc_lc'].dims}, expected {cube[1:]}")


def read_geotiff_stack(
    paths: str | Sequence[str | os.PathLike[str]],
    *,
    times: Sequence[Any],
    bands: Sequence[str],
    scale: float | None = None,
    nodata: float | None = None,
    valid: np.ndarray | None = None,
    min_valid_fraction: float = 0.05,
) -> xr.Dataset:
    """Read one multi-band GeoTIFF per date into a cube.

    Parameters
    ----------
    paths
        File paths (or a glob pattern), one per date, all on the same grid.
    times
        Acquisition time of each file. Files of the same calendar day (tile
        overlaps) are merged with
        :func:`~latentcube.cube.sentinel2.merge_same_day` (first valid
        observation per pixel, in time order).
    bands
        Band names of the files' bands, in order.
    scale
        Multiply values by this (e.g. ``1e-4`` for L2A digital numbers without
        offset); ``None`` for reflectance already in [0, 1].
    nodata
        Value marking missing pixels (default: each file's nodata tag).
    valid
        Optional (time, y, x) clear-sky mask to combine with the nodata mask.
    min_valid_fraction
        Dates with a smaller share of valid pixels are dropped (all-invalid
        dates always).

    Returns
    -------
    xarray.Dataset
        A validated cube; values are clipped to [0, 1] like the paper, pixels
        equal to ``nodata`` or non-finite in any band are invalid.
    """
    import rioxarray as rxr

    files = sorted(glob.glob(paths)) if isinstance(paths, str) else [str(p) for p in paths]
    if not files:
        raise FileNotFoundError(f"no GeoTIFF matches {paths!r}")
    if len(files) != len(times):
        raise CubeError(f"{len(files)} GeoTIFFs but {len(times)} times")
    arrays, masks, ref = [], [], None
    for f in files:
        try:
            da = rxr.open_rasterio(f, masked=False)
        except Exception as err:
            raise CubeError(f"{f} is not a readable GeoTIFF: {reason(err)}") from err
        if not isinstance(da, xr.DataArray):
            raise CubeError(f"{f} is not a single GeoTIFF raster")
        if da.sizes["band"] != len(bands):
            raise CubeError(f"{f} has {da.sizes['band']} bands, expected {len(bands)} ({bands})")
        if ref is None:
            ref = da
        elif (
            da.rio.crs != ref.rio.crs
            or da.rio.transform() != ref.rio.transform()
            or (da.shape != ref.shape)
        ):
            raise CubeError(f"{f} is not on the grid of {files[0]}")
        nd = nodata if nodata is not None else da.rio.nodata
        v = da.values.astype(np.float32)
        m = np.isfinite(v).all(0) if nd is None else (np.isfinite(v) & (v != nd)).all(0)
        if scale is not None:
            v = v * np.float32(scale)
        check_reflectance(v[None], np.asarray(m)[None], f)
        arrays.append(np.clip(v, 0, 1))
        masks.append(m)
    assert ref is not None
    if ref.rio.crs is None:
        raise CubeError(f"{files[0]} has no CRS")
    mask = np.stack(masks)
    if valid is not None:
        mask &= np.asarray(valid, bool)
    t = np.asarray(times, dtype="datetime64[ns]")
    order = np.argsort(t, kind="stable")
    data, mask, t = merge_same_day(np.stack(arrays)[order], mask[order], t[order])
    attrs = provenance(
        f"GeoTIFF stack of {len(files)} files, first {Path(files[0]).name}",
        reader="read_geotiff_stack",
    )
    ds = make_cube(
        data,
        mask,
        time=t,
        y=ref["y"].values,
        x=ref["x"].values,
        crs=ref.rio.crs,
        bands=bands,
        attrs=attrs,
        validate=False,
    )
    return finish_cube(ds, min_valid_fraction)
