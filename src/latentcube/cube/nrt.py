"""Reader of the Sentinel-2 L2A NetCDF cubes shipped with the JRC ``nrt`` package.

The files (``nrt/data/`` of nrt 0.1.0: a 5.4-year forest cube in W Romania at 10 m
and 20 m, and a small 20 m cube in France) hold uint16 reflectance x 10000 per band
(``B2``, ``B3``, ``B4``, ``B8`` at 10 m; ``B3``, ``B4``, ``B8A``, ``B11`` at 20 m),
Sen2Cor ``SCL`` and a CF ``spatial_ref``. :func:`read_nrt` brings them into the data
model on a 10 m grid: 20 m pixels are repeated onto the 2 x 2 pixels of 10 m they
cover, as for the WorldCereal patches.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from latentcube.cube.formats import SENTINEL_ATTRIBUTION, check_reflectance, finish_cube, upsample2
from latentcube.cube.schema import make_cube, provenance
from latentcube.cube.sentinel2 import scl_valid
from latentcube.errors import CubeError
from latentcube.sensors import S2_BANDS

__all__ = ["NRT_ROMANIA_10M", "NRT_ROMANIA_20M", "is_nrt_file", "read_nrt"]

#: File names of the Romania cube's two resolutions (a folder holding both is merged).
NRT_ROMANIA_10M = "sentinel2_cube_subset_romania_10m.nc"
NRT_ROMANIA_20M = "sentinel2_cube_subset_romania_20m.nc"
#: nrt's band names -> the data model's.
_NAMES = {"B2": "B02", "B3": "B03", "B4": "B04", "B8": "B08", "B8A": "B8A", "B11": "B11"}


def is_nrt_file(ds: xr.Dataset) -> bool:
    """Whether an opened NetCDF file looks like an nrt S2 cube (bands, ``SCL``, no ``s2_avail``)."""
    return "SCL" in ds and "s2_avail" not in ds and any(b in ds for b in _NAMES)


def _read_file(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, xr.Dataset, int]:
    """Bands (raw DN), SCL, the coordinates and the pixel size (m) of one nrt file."""
    from pyproj import CRS

    try:
        ds = xr.open_dataset(path, mask_and_scale=False)
    except (OSError, ValueError) as err:
        raise CubeError(f"{path}: not a readable NetCDF file ({err})") from err
    with ds:
        if not is_nrt_file(ds):
            raise CubeError(
                f"{path}: no nrt S2 bands and SCL (variables: {sorted(map(str, ds.data_vars))})"
            )
        bands = {_NAMES[b]: ds[b].values for b in _NAMES if b in ds}
        scl = ds["SCL"].values
        coords = xr.Dataset(coords={k: ds[k].values for k in ("time", "x", "y")})
        wkt = ds["spatial_ref"].attrs.get("spatial_ref") or ds["spatial_ref"].attrs.get("crs_wkt")
        crs = CRS.from_wkt(str(wkt))
        if crs.is_bound and crs.source_crs is not None:  # the WKT has a TOWGS84 clause
            crs = crs.source_crs
        epsg = crs.to_epsg(min_confidence=25)
        coords.attrs["crs"] = f"EPSG:{epsg}" if epsg else crs.to_wkt()
        res = round(abs(float(ds["x"].values[1] - ds["x"].values[0])))
    if res not in (10, 20):
        raise CubeError(f"{path}: pixel size {res} m, expected 10 or 20")
    return bands, scl, coords, res


def _to_10m(coords: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The 10 m pixel centres inside each 20 m pixel (north-up grid)."""
    y = (coords["y"].values[:, None] + np.array([5.0, -5.0])).ravel()
    x = (coords["x"].values[:, None] + np.array([-5.0, 5.0])).ravel()
    return y, x


def read_nrt(
    path: str | os.PathLike[str], *, min_valid_fraction: float = 0.05, dilation: int = 0
) -> xr.Dataset:
    """Read an nrt S2 cube (one ``.nc`` file, or the Romania folder) onto a 10 m grid.

    Parameters
    ----------
    path
        One nrt ``.nc`` file (10 m or 20 m), or a folder holding
        :data:`NRT_ROMANIA_10M` and :data:`NRT_ROMANIA_20M`: then the 10 m bands
        (B02 B03 B04 B08) and the 20 m-only bands (B8A B11) make one cube, and a
        pixel is valid where both files' SCL are clear.
    min_valid_fraction
        Dates with a smaller share of valid pixels are dropped.
    dilation
        Pixels by which the SCL invalid area is grown.

    Returns
    -------
    xarray.Dataset
        A validated cube; bands in the order of :data:`latentcube.sensors.S2_BANDS`.
    """
    p = Path(path)
    files = [p / NRT_ROMANIA_10M, p / NRT_ROMANIA_20M] if p.is_dir() else [p]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"nrt cube file not found: {f}")
    bands: dict[str, np.ndarray] = {}
    valid: np.ndarray | None = None
    ref: xr.Dataset | None = None
    for f in files:
        raw, scl, coords, res = _read_file(f)
        up = upsample2 if res == 20 else (lambda a: a)
        ok = scl_valid(up(scl.astype(np.int16)), dilation=dilation)
        if ref is None:
            ref = coords
            y, x = _to_10m(coords) if res == 20 else (coords["y"].values, coords["x"].values)
        elif not np.array_equal(coords["time"].values, ref["time"].values):
            raise CubeError(f"{f} and {files[0]} have different dates")
        if ok.shape[1:] != (y.size, x.size):
            raise CubeError(f"{f} is not on the grid of {files[0]}")
        valid = ok if valid is None else valid & ok
        for name, a in raw.items():
            bands.setdefault(name, up(a))  # the 10 m file's B03/B04 win
    assert ref is not None and valid is not None
    order = [b for b in S2_BANDS if b in bands]
    dn = np.stack([bands[b] for b in order], axis=1).astype(np.float32)
    valid &= (dn > 0).all(axis=1)  # 0 is the files' fill value
    raw_refl = dn / np.float32(1e4)
    check_reflectance(raw_refl, valid, p)
    s2 = np.clip(raw_refl, 0.0, 1.0)
    times = ref["time"].values
    attrs = provenance(
        f"nrt S2 L2A cube: {', '.join(f.name for f in files)}",
        reader="read_nrt",
        attribution=(
            f"{SENTINEL_ATTRIBUTION} {str(times[0])[:4]}–{str(times[-1])[:4]}; nrt (JRC; "
            "Dutrieux, Viehweger, Holden), EUPL-1.2"
        ),
        s2_mask=f"SCL not in (0, 1, 3, 8, 9, 10, 11), dilation {dilation} px",
        resampling="20 m bands repeated onto 2 x 2 pixels of 10 m",
    )
    cube = make_cube(
        s2,
        valid,
        time=times,
        y=y,
        x=x,
        crs=str(ref.attrs["crs"]),
        bands=order,
        attrs=attrs,
        validate=False,
    )
    return finish_cube(cube, min_valid_fraction)
