"""WorldCereal training patches: per-date S2 + S1 on a 10 m grid, crop labels, AgERA5 weather.

The patches of the WorldCereal reference data (Van Tricht et al. 2023): one folder
per patch holding ``S2_L2A_10m_*.nc``, ``S2_L2A_20m_*.nc``,
``S1_GRD-ASCENDING_20m_*.nc``, ``AgERA5_DAILY_1000m_*.nc`` and the labels
``OUTPUT_POLY-110_10m_*.nc``. Re-exported by :mod:`latentcube.cube.readers`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube.formats import (
    SENTINEL_ATTRIBUTION,
    attach_s1,
    check_reflectance,
    find_one,
    finish_cube,
    open_netcdf,
    upsample2,
)
from latentcube.cube.schema import make_cube, provenance, validate_cube
from latentcube.cube.sentinel1 import preprocess_s1
from latentcube.cube.sentinel2 import merge_same_day, scl_valid
from latentcube.errors import CubeError
from latentcube.sensors import S2_BANDS, SENSORS

__all__ = [
    "attach_agera5",
    "read_agera5",
    "read_worldcereal_labels",
    "read_worldcereal_patch",
]

_ANGLES = ("sunAzimuthAngles", "sunZenithAngles", "viewAzimuthMean", "viewZenithMean")


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
    """Read a WorldCereal per-date S1 + S2 training patch (64 x 64 px at 10 m).

    Patches without the ``S2_L2A_10m_*`` file (the 20 m patches of
    ``worldcereal_s1_s2_20m_patches``) give a cube of the 20 m bands only
    (B05 B06 B07 B8A B11 B12 by default) on the same 10 m grid; the CRS is the
    file's ``epsg`` attribute.

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
    f20 = find_one(folder, "S2_L2A_20m")
    has10 = bool(sorted(folder.glob("S2_L2A_10m_*.nc")))
    f10 = find_one(folder, "S2_L2A_10m") if has10 else f20
    with (
        open_netcdf(f10) as d10,
        open_netcdf(f20, mask_and_scale={"SCL": False, **dict.fromkeys(_ANGLES, False)}) as d20,
    ):
        if not has10 and tuple(bands) == S2_BANDS:  # a 20 m-only patch: the bands it has
            bands = tuple(b for b in S2_BANDS if b in d20)
        if has10 and (d10.sizes["y"] != 2 * d20.sizes["y"] or d10.sizes["x"] != 2 * d20.sizes["x"]):
            raise CubeError(f"{f20.name} is not on a 2x coarser grid aligned with {f10.name}")
        times = s2_times = d10["timestamp"].values
        if not np.array_equal(times, d20["timestamp"].values):
            raise CubeError(f"{f10.name} and {f20.name} have different dates")
        planes = []
        for b in bands:
            if has10 and b in d10:
                planes.append(d10[b].values)
            elif b in d20:
                planes.append(upsample2(d20[b].values))
            else:
                have = sorted(map(str, set(d10.data_vars) | set(d20.data_vars)))
                raise CubeError(f"band {b!r} is in neither {f10.name} nor {f20.name} ({have})")
        raw = np.stack(planes, axis=1).astype(np.float32)
        s2 = np.clip(raw, 0.0, 1.0)
        valid = scl_valid(upsample2(d20["SCL"].values), dilation=dilation) & np.isfinite(s2).all(1)
        check_reflectance(raw, valid, f"{folder} ({f10.name}, {f20.name})")
        del raw
        days = np.asarray(times, "datetime64[D]")
        if np.unique(days).size < days.size:  # two acquisitions of one day (20 m patch)
            order = np.argsort(times, kind="stable")
            s2, valid, times = merge_same_day(s2[order], valid[order], times[order])
            s2_times = times
        if has10:
            y, x = d10["y"].values, d10["x"].values
        else:  # the 10 m pixel centres inside each 20 m pixel
            y = (d20["y"].values[:, None] + np.array([5.0, -5.0])).ravel()
            x = (d20["x"].values[:, None] + np.array([-5.0, 5.0])).ravel()
        bounds = str(d10.attrs.get("bounds", ""))
        loc = str(d10.attrs.get("location_id", folder.name))
        epsg = str(d20.attrs.get("epsg", "32631"))
    kw: dict[str, Any] = {}
    s1_source = ""
    if with_s1:
        f1 = find_one(folder, "S1_GRD-ASCENDING_20m")
        with open_netcdf(f1) as d1:
            order = np.argsort(d1["timestamp"].values, kind="stable")
            t1 = d1["timestamp"].values[order]
            db = np.stack([d1["VV"].values, d1["VH"].values], axis=1)[order]
        if time_axis == "union":
            s2, valid, times = _union_dates(s2, valid, times, t1, min_valid_fraction)
        kw = attach_s1(times, t1, upsample2(preprocess_s1(db, input="db")), max_gap_days)
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
        crs=f"EPSG:{epsg}",
        bands=bands,
        attrs=attrs,
        validate=False,
        **kw,
    )
    if time_axis == "union":  # the S2 dates (the others were added for S1)
        observed = np.isin(ds["time"].values, np.asarray(s2_times, "datetime64[ns]"))
        ds = validate_cube(ds.assign_coords(s2_observed=("time", observed)))
    else:
        ds = finish_cube(ds, min_valid_fraction)
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
    f = find_one(Path(folder), "AgERA5_DAILY_1000m")
    with open_netcdf(f) as d:
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
    f = find_one(Path(folder), "OUTPUT_POLY-110_10m")
    with open_netcdf(f, mask_and_scale=False) as d:
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
