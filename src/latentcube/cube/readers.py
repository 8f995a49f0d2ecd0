"""Readers that turn local inputs into the cube data model of :mod:`latentcube.cube.schema`.

Supported inputs: Zarr stores written by latentcube (directory or ``.zip``),
stacks of per-date GeoTIFFs, and the real sample formats used for tests and
the demo: WorldCereal per-date S1+S2 training patches, the openEO-GFMap Mol
patch, and GreenEarthNet-style minicubes. :func:`open_cube` picks the reader.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube.schema import make_cube, provenance, validate_cube
from latentcube.cube.sentinel1 import match_dates, preprocess_s1
from latentcube.cube.sentinel2 import drop_invalid_dates, merge_same_day, scl_valid
from latentcube.errors import CubeError
from latentcube.sensors import S2_BANDS, SENSORS

__all__ = [
    "attach_agera5",
    "demo_cube_path",
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

SENTINEL_ATTRIBUTION = "Contains modified Copernicus Sentinel data"
_ANGLES = ("sunAzimuthAngles", "sunZenithAngles", "viewAzimuthMean", "viewZenithMean")


def _one(folder: Path, prefix: str) -> Path:
    hits = sorted(folder.glob(f"{prefix}_*.nc"))
    if not hits:
        raise FileNotFoundError(f"no {prefix}_*.nc file in {folder}")
    return hits[0]


def _up2(a: np.ndarray) -> np.ndarray:
    """20 m -> 10 m on an aligned grid: every 20 m pixel covers 2 x 2 pixels of 10 m."""
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def _attach_s1(
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


def _finish(ds: xr.Dataset, min_valid_fraction: float) -> xr.Dataset:
    ds = drop_invalid_dates(ds, min_valid_fraction)
    if ds.sizes["time"] == 0:
        raise CubeError(
            f"no date has at least {min_valid_fraction:.0%} valid S2 pixels "
            f"({ds.attrs.get('source', 'input')}); lower min_valid_fraction"
        )
    return validate_cube(ds)


def read_worldcereal_patch(
    folder: str | os.PathLike[str],
    *,
    bands: Sequence[str] = S2_BANDS,
    with_s1: bool = True,
    max_gap_days: float = SENSORS["s1"].max_gap_days,
    min_valid_fraction: float = 0.05,
    dilation: int = 0,
    time_axis: str = "s2",
    with_agera5: bool = False,
) -> xr.Dataset:
    """Read a WorldCereal per-date S1 + S2 training patch (EPSG:32631, 64 x 64 px at 10 m).

    The 20 m S2 bands, SCL and S1 are brought onto the 10 m grid (each 20 m
    pixel covers exactly 2 x 2 pixels of 10 m); reflectance is clipped to
    [0, 1]; the mask is the SCL clear-sky mask (see
    :func:`latentcube.cube.sentinel2.scl_valid`) and all bands finite. S1 VV/VH
    (sigma0 GRD in dB) are smoothed, converted and normalised on their own time
    axis with :func:`latentcube.cube.sentinel1.preprocess_s1`, then each S2 date
    takes the nearest S1 acquisition within ``max_gap_days``.

    Parameters
    ----------
    folder
        The patch folder holding ``S2_L2A_10m_*.nc``, ``S2_L2A_20m_*.nc`` and
        ``S1_GRD-ASCENDING_20m_*.nc``.
    bands
        S2 bands to keep, in this order.
    with_s1
        Also read Sentinel-1.
    max_gap_days
        Largest S1-S2 distance of a match.
    min_valid_fraction
        Dates with a smaller share of valid pixels are dropped.
    dilation
        Pixels by which the SCL invalid area is grown.
    time_axis
        ``"s2"`` (default, the paper's): the S2 dates with at least
        ``min_valid_fraction`` valid pixels. ``"union"``: those dates plus every
        S1 acquisition day without such an S2 date (S2 is invalid there), so a
        fused model can embed dates S2 does not see (attribute ``time_axis``).
    with_agera5
        Also attach the patch's daily AgERA5 weather (:func:`attach_agera5`).

    Returns
    -------
    xarray.Dataset
        A validated cube.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"WorldCereal patch folder not found: {folder}")
    if time_axis not in ("s2", "union"):
        raise ValueError(f"time_axis must be 's2' or 'union', got {time_axis!r}")
    if time_axis == "union" and not with_s1:
        raise ValueError("time_axis='union' needs with_s1=True")
    f10, f20 = _one(folder, "S2_L2A_10m"), _one(folder, "S2_L2A_20m")
    with (
        xr.open_dataset(f10) as d10,
        xr.open_dataset(f20, mask_and_scale={"SCL": False, **dict.fromkeys(_ANGLES, False)}) as d20,
    ):
        if d10.sizes["y"] != 2 * d20.sizes["y"] or d10.sizes["x"] != 2 * d20.sizes["x"]:
            raise CubeError(f"{f20.name} is not on a 2x coarser grid aligned with {f10.name}")
        times = s2_times = d10["timestamp"].values
        if not np.array_equal(times, d20["timestamp"].values):
            raise CubeError(f"{f10.name} and {f20.name} have different dates")
        planes = []
        for b in bands:
            if b in d10:
                planes.append(d10[b].values)
            elif b in d20:
                planes.append(_up2(d20[b].values))
            else:
                have = sorted(map(str, set(d10.data_vars) | set(d20.data_vars)))
                raise CubeError(f"band {b!r} is in neither {f10.name} nor {f20.name} ({have})")
        s2 = np.clip(np.stack(planes, axis=1).astype(np.float32), 0.0, 1.0)
        valid = scl_valid(_up2(d20["SCL"].values), dilation=dilation) & np.isfinite(s2).all(1)
        y, x = d10["y"].values, d10["x"].values
        bounds = str(d10.attrs.get("bounds", ""))
        loc = str(d10.attrs.get("location_id", folder.name))
    kw: dict[str, Any] = {}
    s1_source = ""
    if with_s1:
        f1 = _one(folder, "S1_GRD-ASCENDING_20m")
        with xr.open_dataset(f1) as d1:
            order = np.argsort(d1["timestamp"].values, kind="stable")
            t1 = d1["timestamp"].values[order]
            db = np.stack([d1["VV"].values, d1["VH"].values], axis=1)[order]
        if time_axis == "union":
            s2, valid, times = _union_dates(s2, valid, times, t1, min_valid_fraction)
        kw = _attach_s1(times, t1, _up2(preprocess_s1(db, input="db")), max_gap_days)
        s1_source = f"; S1: {f1.name} (GRD sigma0, ascending)"
    attrs = provenance(
        f"WorldCereal training patch {loc}: {f10.name}, {f20.name}{s1_source}",
        reader="read_worldcereal_patch",
        location_id=loc,
        file_bounds=bounds,
        attribution=(
            f"{SENTINEL_ATTRIBUTION} {str(times[0])[:4]}–{str(times[-1])[:4]}; WorldCereal "
            "(Van Tricht et al. 2023, ESSD 15, 5491-5515), MIT licence"
        ),
        s2_mask=f"SCL not in (0, 1, 3, 8, 9, 10, 11), dilation {dilation} px",
        s1_max_gap_days=max_gap_days,
        time_axis=time_axis,
    )
    ds = make_cube(
        s2,
        valid,
        time=times,
        y=y,
        x=x,
        crs="EPSG:32631",
        bands=bands,
        attrs=attrs,
        validate=False,
        **kw,
    )
    if time_axis == "union":  # the S2 dates (the others were added for S1)
        observed = np.isin(ds["time"].values, np.asarray(s2_times, "datetime64[ns]"))
        ds = validate_cube(ds.assign_coords(s2_observed=("time", observed)))
    else:
        ds = _finish(ds, min_valid_fraction)
    return attach_agera5(ds, folder) if with_agera5 else ds


def _union_dates(
    s2: np.ndarray, valid: np.ndarray, times: np.ndarray, s1_times: np.ndarray, min_frac: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S2 dates with enough valid pixels plus S1 days without one (S2 invalid there)."""
    frac = valid.mean(axis=(1, 2))
    keep = (frac >= min_frac) & (frac > 0)
    s2, valid, times = s2[keep], valid[keep], np.asarray(times, "datetime64[ns]")[keep]
    s2_days = set(times.astype("datetime64[D]").tolist())
    t1 = np.asarray(s1_times, "datetime64[ns]")
    _, first = np.unique(t1.astype("datetime64[D]"), return_index=True)
    extra = np.array(
        [t for t in t1[np.sort(first)] if t.astype("datetime64[D]").tolist() not in s2_days],
        "datetime64[ns]",
    )
    all_t = np.concatenate([times, extra])
    order = np.argsort(all_t, kind="stable")
    pad = np.full((len(extra), *s2.shape[1:]), np.nan, np.float32)
    s2_all = np.concatenate([s2, pad])[order]
    valid_all = np.concatenate([valid, np.zeros((len(extra), *valid.shape[1:]), bool)])[order]
    return s2_all, valid_all, all_t[order]


def read_agera5(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Daily AgERA5 weather of a WorldCereal patch, as the bands of ``sensors.AGERA5``.

    Parameters
    ----------
    folder
        The patch folder holding ``AgERA5_DAILY_1000m_*.nc`` (one 1 km cell).

    Returns
    -------
    pandas.DataFrame
        One row per day (``DatetimeIndex``), one column per band, scaled to [0, 1]
        as described by ``AGERA5.normalisation``; trailing windows (30 and 10
        days) use the days available at the start of the series.
    """
    f = _one(Path(folder), "AgERA5_DAILY_1000m")
    with xr.open_dataset(f) as d:
        raw = pd.DataFrame(
            {v: d[v].values[:, 0, 0].astype(np.float64) for v in d.data_vars},
            index=pd.DatetimeIndex(d["timestamp"].values).normalize(),
        )
    raw = raw.where(raw > -9000).sort_index()
    if raw.isna().all().any():
        raise CubeError(f"{f.name} lacks values of {list(raw.columns[raw.isna().all()])}")
    out = pd.DataFrame(index=raw.index)
    out["tmean"] = (raw["temperature_mean"] - 253.15) / 60
    out["tmean_30d"] = (raw["temperature_mean"].rolling(30, min_periods=1).mean() - 253.15) / 60
    out["precip_10d"] = raw["precipitation_flux"].rolling(10, min_periods=1).sum() / 100
    out["rad_10d"] = raw["solar_radiation_flux"].rolling(10, min_periods=1).mean() / 3.5e7
    out["vapour_pressure"] = raw["vapour_pressure"] / 30
    return out.clip(0.0, 1.0)


def attach_agera5(cube: xr.Dataset, folder: str | os.PathLike[str]) -> xr.Dataset:
    """Add the patch's daily AgERA5 weather as sensor ``agera5`` (registered if needed).

    Each cube date takes the weather of its own day (date matching ``daily``),
    repeated over the grid (one 1 km cell covers the patch); dates outside the
    weather series are invalid.

    Parameters
    ----------
    cube
        A cube of the same patch.
    folder
        The patch folder.

    Returns
    -------
    xarray.Dataset
        The cube with ``agera5``, ``agera5_valid`` and ``agera5_time``.
    """
    from latentcube.cube.schema import add_sensor
    from latentcube.sensors import AGERA5, ensure_sensor

    ensure_sensor(AGERA5)
    daily = read_agera5(folder)
    days = pd.DatetimeIndex(cube["time"].values).normalize()
    vals = daily.reindex(days)[list(AGERA5.bands)].to_numpy(np.float32)  # (time, band)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    data = np.broadcast_to(vals[:, :, None, None], (len(days), len(AGERA5.bands), ny, nx))
    ok = np.isfinite(vals).all(axis=1)
    valid = np.broadcast_to(ok[:, None, None], (len(days), ny, nx))
    return add_sensor(
        cube,
        "agera5",
        np.ascontiguousarray(data),
        np.ascontiguousarray(valid),
        bands=AGERA5.bands,
        sensor_time=days.values,
    )


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


def read_worldcereal_labels(folder: str | os.PathLike[str]) -> xr.Dataset:
    """Crop labels of a WorldCereal patch on the patch's 10 m grid.

    Parameters
    ----------
    folder
        The patch folder holding ``OUTPUT_POLY-110_10m_*.nc``.

    Returns
    -------
    xarray.Dataset
        ``LC`` (land cover) and ``CT`` (crop type) as (y, x) int32 WorldCereal
        legend codes, 0 = no label; EPSG:32631, same ``x``/``y`` as
        :func:`read_worldcereal_patch`.
    """
    f = _one(Path(folder), "OUTPUT_POLY-110_10m")
    with xr.open_dataset(f, mask_and_scale=False) as d:
        ds = xr.Dataset(
            {k: (("y", "x"), d[k].values.astype(np.int32)) for k in ("LC", "CT")},
            coords={"y": d["y"].values, "x": d["x"].values},
            attrs=provenance(
                f"WorldCereal labels {f.name}",
                attribution=(
                    "Flemish LPIS parcels via WorldCereal (Van Tricht et al. 2023), open data"
                ),
            ),
        )
    return ds.rio.write_crs("EPSG:32631")


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
    with xr.open_dataset(f2, mask_and_scale=False) as d2:
        names = [
            str(v).removeprefix("S2-L2A-") for v in d2.data_vars if str(v).startswith("S2-L2A-B")
        ]
        dn = np.stack([d2[f"S2-L2A-{b}"].values for b in names], axis=1)
        s2 = np.clip(dn.astype(np.float32) / np.float32(10000), 0, 1)
        valid = scl_valid(d2["S2-L2A-SCL"].values, dilation=dilation) & (dn > 0).all(1)
        times, y, x = d2["t"].values, d2["y"].values, d2["x"].values
        crs = d2.rio.crs or "EPSG:32631"
    kw: dict[str, Any] = {}
    if with_s1:
        with xr.open_dataset(f1, mask_and_scale=False) as d1:
            if not (np.array_equal(d1["x"].values, x) and np.array_equal(d1["y"].values, y)):
                raise CubeError(f"{f1.name} is not on the grid of {f2.name}")
            db = np.stack(
                [_mol_db(d1["S1-SIGMA0-VV"].values), _mol_db(d1["S1-SIGMA0-VH"].values)], 1
            )
            t1 = d1["t"].values
            order = np.argsort(t1, kind="stable")
            kw = _attach_s1(times, t1[order], preprocess_s1(db[order], input="db"), max_gap_days)
    attrs = provenance(
        f"openEO-GFMap Mol sample: {f2.name}" + (f", {f1.name}" if with_s1 else ""),
        reader="read_openeo_mol",
        attribution=f"{SENTINEL_ATTRIBUTION} 2023; openEO-GFMap, Apache-2.0",
    )
    ds = make_cube(
        s2, valid, time=times, y=y, x=x, crs=crs, bands=names, attrs=attrs, validate=False, **kw
    )
    return _finish(ds, min_valid_fraction)


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
    with xr.open_dataset(path) as ds:
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
    return _finish(cube, min_valid_fraction)


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
        da = rxr.open_rasterio(f, masked=False)
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
    return _finish(ds, min_valid_fraction)


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


def _from_store(path: Path, check_values: bool = True) -> xr.Dataset:
    from latentcube.io import open_zarr

    ds = open_zarr(path)
    for name in list(ds.data_vars):
        if name in SENSORS and ds[name].dtype != np.float32:
            ds[name] = ds[name].astype(np.float32)
        if str(name).endswith("_valid") and ds[name].dtype != bool:
            ds[name] = ds[name].astype(bool)
    return validate_cube(ds, check_values=check_values)


def open_cube(
    path: str | os.PathLike[str], *, check_values: bool = True, **kwargs: Any
) -> xr.Dataset:
    """Open any supported local input as a validated cube.

    Parameters
    ----------
    path
        A latentcube Zarr store (directory or ``.zip``), a WorldCereal patch
        folder, the openEO Mol folder, a GreenEarthNet ``.nc`` minicube, or a
        folder of per-date GeoTIFFs (then ``times`` and ``bands`` are required).
    check_values
        For Zarr stores: also check the values (one pass over the data); False
        checks the layout only, e.g. for a store validated before.
    **kwargs
        Passed to the reader.

    Returns
    -------
    xarray.Dataset
        The cube (lazy for Zarr stores).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no cube at {p}")
    if p.suffix == ".zip" or (p.is_dir() and (p / "zarr.json").exists()):
        return _from_store(p, check_values)
    if p.is_dir():
        if list(p.glob("S2_L2A_10m_*.nc")):
            return read_worldcereal_patch(p, **kwargs)
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
        with xr.open_dataset(p) as ds:
            is_gen = "s2_avail" in ds
        if is_gen:
            return read_greenearthnet(p, **kwargs)
    raise CubeError(
        f"{p} is not a cube latentcube can read: expected a latentcube Zarr store, a "
        "WorldCereal patch folder, the openEO Mol folder, a GreenEarthNet .nc minicube or a "
        "folder of per-date GeoTIFFs"
    )
