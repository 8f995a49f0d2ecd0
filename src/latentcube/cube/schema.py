"""The cube data model: one documented ``xarray.Dataset`` layout for every input.

Every reader, the STAC builder, training and inference exchange cubes of this
form, and every entry point calls :func:`validate_cube` on them.

Layout
------
Dimensions ``time``, ``band``, ``y``, ``x`` (plus ``s1_band`` when Sentinel-1
is present; any further sensor ``k`` uses ``k_band``, see
:func:`latentcube.sensors.band_dim`).

==============  =========================  ========  ==============================================
variable        dims                       dtype     meaning
==============  =========================  ========  ==============================================
``s2``          (time, band, y, x)         float32   S2 L2A surface reflectance in [0, 1]; NaN
                                                     where not valid
``s2_valid``    (time, y, x)               bool      True where every band is finite and the pixel
                                                     is clear (not cloud, shadow, snow, no data)
``s1``          (time, s1_band, y, x)      float32   optional; S1 backscatter as
                                                     ``(clip(dB, -30, 5) + 30) / 35`` in [0, 1]
``s1_valid``    (time, y, x)               bool      optional (required with ``s1``)
==============  =========================  ========  ==============================================

Coordinates

* ``time``: datetime64 S2 acquisition times, strictly increasing, at most one per
  calendar day. The time axis is the S2 date axis; other sensors are matched to it.
* ``s1_time`` (time): datetime64 of the S1 acquisition matched to each S2 date,
  ``NaT`` where none lies within the sensor's maximum gap (those dates are
  masked in ``s1_valid``, never filled).
* ``band`` / ``s1_band``: band names (``"B02"``, ..., ``"VV"``, ``"VH"``).
* ``y``, ``x``: pixel-centre coordinates of a regular, square-pixel grid in a
  *projected* CRS (metres), ``y`` decreasing; 10 m for cubes built by
  latentcube, other resolutions are allowed and can be required by a model.
* ``spatial_ref``: the CRS, written with rioxarray (CF grid mapping), so
  ``cube.rio.crs`` and ``cube.odc.geobox`` work.

Attributes (provenance): ``latentcube_version``, ``source`` (what it was read
or built from), ``created`` (ISO time), optionally ``attribution``,
``history`` and reader-specific keys.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from latentcube.errors import CubeError
from latentcube.sensors import SENSORS, band_dim

__all__ = [
    "CubeError",
    "add_sensor",
    "band_positions",
    "cube_crs",
    "cube_resolution",
    "expand_bands",
    "make_cube",
    "provenance",
    "select_bands",
    "validate_cube",
    "value_range_error",
]


def provenance(source: str, **extra: Any) -> dict[str, Any]:
    """Provenance attributes for a new cube or product.

    Parameters
    ----------
    source
        What the data were read or built from.
    **extra
        Further attributes; values that are not str/int/float are stored as str.

    Returns
    -------
    dict
        Attributes including ``latentcube_version`` and ``created``.
    """
    from latentcube._version import __version__

    attrs: dict[str, Any] = {
        "latentcube_version": __version__,
        "source": source,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for k, v in extra.items():
        attrs[k] = v if isinstance(v, str | int | float) else str(v)
    return attrs


def make_cube(
    s2: np.ndarray,
    s2_valid: np.ndarray,
    *,
    time: Sequence[Any] | np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    crs: Any,
    bands: Sequence[str],
    s1: np.ndarray | None = None,
    s1_valid: np.ndarray | None = None,
    s1_time: Sequence[Any] | np.ndarray | None = None,
    s1_bands: Sequence[str] = ("VV", "VH"),
    attrs: Mapping[str, Any] | None = None,
    validate: bool = True,
) -> xr.Dataset:
    """Assemble a cube from plain arrays.

    Values of ``s2``/``s1`` where the matching valid mask is False are set to
    NaN, so invalid data can never leak into a model.

    Parameters
    ----------
    s2
        (time, band, y, x) reflectance in [0, 1].
    s2_valid
        (time, y, x) bool.
    time, y, x
        Coordinates (pixel centres for ``y``/``x``).
    crs
        Anything :mod:`pyproj` understands (``"EPSG:32631"``, an int, a CRS).
    bands
        S2 band names in the order of axis 1 of ``s2``.
    s1, s1_valid, s1_time, s1_bands
        Optional Sentinel-1 on the same grid and time axis.
    attrs
        Provenance attributes (see :func:`provenance`).
    validate
        Run :func:`validate_cube` on the result.

    Returns
    -------
    xarray.Dataset
        The cube.
    """
    s2 = np.asarray(s2, dtype=np.float32)
    s2_valid = np.asarray(s2_valid, dtype=bool)
    if s2.ndim != 4:
        raise CubeError(f"s2 must have 4 dims (time, band, y, x), got shape {s2.shape}")
    if s2_valid.shape != (s2.shape[0], *s2.shape[2:]):
        raise CubeError(
            f"s2_valid has shape {s2_valid.shape}, expected (time, y, x) = "
            f"{(s2.shape[0], *s2.shape[2:])}"
        )
    s2 = np.where(s2_valid[:, None], s2, np.float32(np.nan))
    coords: dict[str, Any] = {
        "time": pd.DatetimeIndex(np.asarray(time)).values.astype("datetime64[ns]"),
        "band": list(bands),
        "y": np.asarray(y, dtype=np.float64),
        "x": np.asarray(x, dtype=np.float64),
    }
    data_vars: dict[str, Any] = {
        "s2": (("time", "band", "y", "x"), s2),
        "s2_valid": (("time", "y", "x"), s2_valid),
    }
    if s1 is not None:
        s1 = np.asarray(s1, dtype=np.float32)
        if s1_valid is None:
            s1_valid = np.isfinite(s1).all(axis=1)
        s1_valid = np.asarray(s1_valid, dtype=bool)
        if s1_valid.shape != (s1.shape[0], *s1.shape[2:]):
            raise CubeError(
                f"s1_valid has shape {s1_valid.shape}, expected {(s1.shape[0], *s1.shape[2:])}"
            )
        s1 = np.where(s1_valid[:, None], s1, np.float32(np.nan))
        data_vars["s1"] = (("time", "s1_band", "y", "x"), s1)
        data_vars["s1_valid"] = (("time", "y", "x"), s1_valid)
        coords["s1_band"] = list(s1_bands)
        if s1_time is None:
            raise CubeError("s1 given without s1_time (the matched S1 acquisition times)")
        coords["s1_time"] = (
            "time",
            pd.DatetimeIndex(np.asarray(s1_time)).values.astype("datetime64[ns]"),
        )
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    ds = ds.rio.write_crs(crs)
    ds = ds.rio.set_spatial_dims(x_dim="x", y_dim="y")
    if validate:
        validate_cube(ds)
    return ds


def cube_crs(cube: xr.Dataset) -> Any:
    """The cube's CRS as a ``rasterio.crs.CRS``, or None when it has none."""
    try:
        return cube.rio.crs
    except Exception:  # rioxarray raises on inconsistent grid mappings
        return None


def cube_resolution(cube: xr.Dataset) -> float:
    """Pixel size of the cube in CRS units (metres for a valid cube)."""
    return float(abs(np.diff(cube["x"].values[:2])[0])) if cube.sizes["x"] > 1 else float("nan")


def _suggest(name: str, available: Sequence[str]) -> str:
    """A hint for a misnamed band: e.g. ``B2`` vs ``B02`` or ``s2_B02`` vs ``B02``."""

    def norm(s: str) -> str:
        s = s.upper()
        for prefix in ("S2-L2A-", "S2_", "S1-SIGMA0-", "S1_"):
            s = s.removeprefix(prefix)
        return s.replace("B0", "B")

    hits = [a for a in available if norm(a) == norm(name)]
    return f" (found {hits[0]!r}: rename it to {name!r})" if hits else ""


def _check_bands(cube: xr.Dataset, sensor: str, wanted: Sequence[str] | None) -> None:
    dim = band_dim(sensor)
    if dim not in cube.coords:
        raise CubeError(f"{sensor!r} has no band coordinate {dim!r} holding the band names")
    names = [str(b) for b in cube[dim].values]
    dupes = sorted({b for b in names if names.count(b) > 1})
    if dupes:
        raise CubeError(f"{sensor!r} lists bands more than once: {dupes}")
    if wanted is not None:
        missing = [b for b in wanted if b not in names]
        if missing:
            hints = "".join(_suggest(b, names) for b in missing)
            raise CubeError(
                f"{sensor!r} lacks band(s) {missing} that the model needs; "
                f"the cube has {names}{hints}"
            )


def _check_grid(cube: xr.Dataset, resolution: float | None) -> None:
    for dim in ("y", "x"):
        if dim not in cube.coords:
            raise CubeError(f"cube has no {dim!r} coordinate")
        if cube.sizes[dim] == 0:
            raise CubeError(f"cube is empty along {dim!r}")
    crs = cube_crs(cube)
    if crs is None:
        raise CubeError(
            "cube has no CRS: write one with cube.rio.write_crs(...) or open Zarr cubes "
            "with latentcube.open_cube (which decodes the spatial_ref coordinate)"
        )
    if not crs.is_projected:
        raise CubeError(
            f"cube CRS {crs.to_string()} is not projected: the data model needs a metric grid "
            "(reproject, e.g. with the GreenEarthNet reader's to-UTM step)"
        )
    steps = {}
    for dim in ("x", "y"):
        v = cube[dim].values.astype(np.float64)
        if v.size > 1:
            d = np.diff(v)
            if not np.allclose(d, d[0], rtol=0, atol=1e-6 * max(1.0, abs(d[0]))):
                raise CubeError(f"{dim!r} coordinates are not regularly spaced")
            steps[dim] = d[0]
    if "x" in steps and steps["x"] <= 0:
        raise CubeError("x coordinates must increase")
    if "y" in steps and steps["y"] >= 0:
        raise CubeError("y coordinates must decrease (north-up grid)")
    if len(steps) == 2 and not np.isclose(abs(steps["x"]), abs(steps["y"]), rtol=1e-6):
        raise CubeError(f"pixels are not square: dx={steps['x']}, dy={steps['y']}")
    if resolution is not None and steps:
        res = abs(next(iter(steps.values())))
        if not np.isclose(res, resolution, rtol=1e-6):
            raise CubeError(f"cube resolution is {res:g} m, the model needs {resolution:g} m")


def _check_time(cube: xr.Dataset) -> None:
    if "time" not in cube.coords:
        raise CubeError("cube has no 'time' coordinate")
    t = cube["time"].values
    if t.size == 0:
        raise CubeError("cube has an empty time axis (no dates)")
    if not np.issubdtype(t.dtype, np.datetime64):
        raise CubeError(f"'time' must be datetime64, got {t.dtype}")
    if np.isnat(t).any():
        raise CubeError("'time' holds NaT values")
    days = t.astype("datetime64[D]")
    uniq, counts = np.unique(days, return_counts=True)
    if (counts > 1).any():
        dup = [str(d) for d in uniq[counts > 1][:5]]
        raise CubeError(
            f"duplicate dates on the time axis: {dup}; merge acquisitions of one day first"
        )
    if (np.diff(t) <= np.timedelta64(0)).any():
        i = int(np.argmax(np.diff(t) <= np.timedelta64(0)))
        raise CubeError(
            f"time is not increasing: {np.datetime_as_string(t[i], 'D')} is followed by "
            f"{np.datetime_as_string(t[i + 1], 'D')}; sort the cube with cube.sortby('time')"
        )


def _check_sensor(
    cube: xr.Dataset, sensor: str, wanted: Sequence[str] | None, check_values: bool
) -> None:
    dim = band_dim(sensor)
    expected = ("time", dim, "y", "x")
    var = cube[sensor]
    if var.dims != expected:
        raise CubeError(f"{sensor!r} has dims {var.dims}, expected {expected}")
    if var.dtype != np.float32:
        raise CubeError(f"{sensor!r} has dtype {var.dtype}, expected float32")
    _check_bands(cube, sensor, wanted)
    vname = f"{sensor}_valid"
    if vname not in cube:
        raise CubeError(f"{sensor!r} has no validity mask {vname!r}")
    valid = cube[vname]
    if valid.dims != ("time", "y", "x"):
        raise CubeError(f"{vname!r} has dims {valid.dims}, expected ('time', 'y', 'x')")
    if valid.dtype != bool:
        raise CubeError(f"{vname!r} has dtype {valid.dtype}, expected bool")
    if not check_values:
        return
    lo, hi = SENSORS[sensor].value_range if sensor in SENSORS else (-np.inf, np.inf)
    bad_nan, vmin, vmax = _value_stats(var.data, valid.data)
    if bad_nan:
        raise CubeError(
            f"{sensor!r} has {int(bad_nan)} non-finite values where {vname!r} is True; "
            f"set {vname!r} False there"
        )
    if np.isfinite(vmin) and (vmin < lo or vmax > hi):
        raise value_range_error(sensor, vmin, vmax)


def value_range_error(
    sensor: str, vmin: float, vmax: float, source: str | None = None
) -> CubeError:
    """The error for values of ``sensor`` spanning [vmin, vmax], outside its value range.

    One message for every input: :func:`validate_cube` raises it for a cube (e.g. a
    Zarr store), the readers (:func:`latentcube.cube.formats.check_reflectance`) for
    a file in digital numbers, with ``source`` (the file) in front.
    """
    lo, hi = SENSORS[sensor].value_range if sensor in SENSORS else (-np.inf, np.inf)
    where = f"{source}: " if source else ""
    return CubeError(
        f"{where}{sensor!r} values span [{vmin:.4g}, {vmax:.4g}], outside [{lo:g}, {hi:g}] "
        f"({SENSORS[sensor].units if sensor in SENSORS else ''}); "
        "scale and clip the data before building the cube"
    )


def _block_stats(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(non-finite count under the mask, min, max of valid values) of one block."""
    m = np.broadcast_to(mask, data.shape)
    vals = data[m]
    fin = np.isfinite(vals)
    ok = vals[fin]
    lo, hi = (float(ok.min()), float(ok.max())) if ok.size else (np.inf, -np.inf)
    return np.array([float((~fin).sum()), lo, hi])


def _value_stats(data: Any, valid: Any) -> tuple[float, float, float]:
    """Non-finite count under the mask, and min/max of the valid values.

    Lazy (dask) data are reduced block by block in a single pass, so memory is
    bounded by a few chunks whatever the size of the cube.
    """
    if not hasattr(data, "dask"):
        s = _block_stats(np.asarray(data), np.asarray(valid)[:, None])
        return float(s[0]), float(s[1]), float(s[2])
    import dask.array as dsa

    data = dsa.asarray(data)
    mask = dsa.asarray(valid)[:, None].rechunk((data.chunks[0], 1, data.chunks[2], data.chunks[3]))

    def stats(d: np.ndarray, m: np.ndarray) -> np.ndarray:
        return _block_stats(d, m).reshape(1, 1, 1, 3)

    nblocks = data.numblocks
    out = dsa.map_blocks(
        stats,
        data,
        mask,
        dtype=np.float64,
        chunks=(*((1,) * n for n in nblocks[:3]), (3,) * nblocks[3]),
    ).compute()
    trip = out.reshape(-1, 3)
    return float(trip[:, 0].sum()), float(trip[:, 1].min()), float(trip[:, 2].max())


def validate_cube(
    cube: xr.Dataset,
    bands: Mapping[str, Sequence[str]] | None = None,
    *,
    resolution: float | None = None,
    check_values: bool = True,
) -> xr.Dataset:
    """Check a cube against the data model and, optionally, a model's needs.

    Parameters
    ----------
    cube
        The cube.
    bands
        Bands a model needs, per sensor, e.g. ``{"s2": S2_BANDS, "s1": ("VV", "VH")}``.
        A sensor named here must be present. ``None`` checks only the layout.
    resolution
        Pixel size in metres the model needs; ``None`` accepts any.
    check_values
        Also check the values (range, NaN under valid masks, all-invalid dates).
        This reads the data once; pass False for metadata-only checks of lazy cubes.

    Returns
    -------
    xarray.Dataset
        The same cube, for chaining.

    Raises
    ------
    CubeError
        Naming the first problem found.
    """
    if not isinstance(cube, xr.Dataset):
        raise CubeError(f"a cube is an xarray.Dataset, got {type(cube).__name__}")
    if "s2" not in cube.data_vars:
        hint = [v for v in cube.data_vars if str(v).lower().startswith(("s2", "b0", "b1"))]
        raise CubeError(
            "cube has no 's2' variable (time, band, y, x)"
            + (f"; found {hint}: build the cube with a latentcube reader" if hint else "")
        )
    bands = dict(bands or {})
    for sensor in bands:
        if sensor not in cube.data_vars:
            raise CubeError(f"the model needs sensor {sensor!r}, which the cube lacks")
    _check_time(cube)
    _check_grid(cube, resolution)
    sensors = ["s2"] + [s for s in cube.data_vars if s in SENSORS and s != "s2"]
    for sensor in sensors:
        _check_sensor(cube, str(sensor), bands.get(str(sensor)), check_values)
    if "s1" in cube.data_vars:
        if "s1_time" not in cube.coords:
            raise CubeError("'s1' is present without the 's1_time' coordinate")
        if cube["s1_time"].dims != ("time",):
            raise CubeError(f"'s1_time' has dims {cube['s1_time'].dims}, expected ('time',)")
    if check_values:
        per_date = cube["s2_valid"].any(dim=("y", "x")).values
        if cube.attrs.get("time_axis") == "union":  # S2 dates plus dates of other sensors
            for s in sensors[1:]:
                per_date = per_date | cube[f"{s}_valid"].any(dim=("y", "x")).values
        if not per_date.all():
            bad = [np.datetime_as_string(t, "D") for t in cube["time"].values[~per_date][:5]]
            raise CubeError(
                f"{int((~per_date).sum())} date(s) have no valid S2 pixel, e.g. {bad}; "
                "drop them (readers do this with min_valid_fraction)"
            )
    return cube


def select_bands(cube: xr.Dataset, bands: Mapping[str, Sequence[str]]) -> xr.Dataset:
    """Validate ``cube`` for ``bands`` and return it with exactly those bands, in that order."""
    validate_cube(cube, bands, check_values=False)
    out = cube
    for sensor, names in bands.items():
        out = out.sel({band_dim(sensor): list(names)})
    return out


def band_positions(
    have: Sequence[str],
    bands: Sequence[str],
    *,
    min_bands: int | None = None,
    sensor: str = "s2",
    where: str = "the cube",
) -> list[int | None]:
    """Where each of a model's ``bands`` is among the bands a cube ``have`` s.

    Parameters
    ----------
    have
        The cube's band names, in its order.
    bands
        The model's bands, in its order.
    min_bands
        None: every band is needed (a missing one is refused). Otherwise the model
        takes a subset of its bands (a band-mask model): absent bands get None, and
        a cube with fewer than ``min_bands`` of them is refused.
    sensor, where
        Named in the error.

    Returns
    -------
    list
        Position in ``have`` of each band of ``bands``, None where absent.

    Raises
    ------
    CubeError
        One line naming the bands the cube lacks and the bands it has.
    """
    have = [str(b) for b in have]
    missing = [b for b in bands if b not in have]
    present = [b for b in bands if b in have]
    if missing and min_bands is None:
        raise CubeError(
            f"{where}: {sensor!r} lacks band(s) {missing} that the model needs; it has {have}"
        )
    if min_bands is not None and len(present) < min_bands:
        raise CubeError(
            f"{where}: {sensor!r} has {len(present)} of the model's {len(bands)} bands "
            f"({present}; lacks {missing}), the model needs at least {min_bands}"
        )
    return [have.index(b) if b in have else None for b in bands]


def expand_bands(data: np.ndarray, positions: Sequence[int | None], axis: int = 1) -> np.ndarray:
    """``data`` with its band axis rearranged to ``positions``, NaN planes where None.

    ``positions`` as returned by :func:`band_positions`, indexing ``data``'s
    band axis ``axis``. The result is float32.
    """
    data = np.asarray(data, np.float32)
    shape = list(data.shape)
    shape[axis] = len(positions)
    out = np.full(shape, np.nan, np.float32)
    for k, p in enumerate(positions):
        if p is not None:
            dst: list[Any] = [slice(None)] * data.ndim
            src: list[Any] = [slice(None)] * data.ndim
            dst[axis], src[axis] = k, p
            out[tuple(dst)] = data[tuple(src)]
    return out


def add_sensor(
    cube: xr.Dataset,
    sensor: str,
    data: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    bands: Sequence[str],
    sensor_time: Sequence[Any] | np.ndarray | None = None,
    validate: bool = True,
) -> xr.Dataset:
    """Attach a further sensor on the cube's grid and time axis.

    Parameters
    ----------
    cube
        A cube in the data model.
    sensor
        Variable name (register the sensor in :data:`latentcube.sensors.SENSORS`
        to have its value range checked).
    data
        (time, band, y, x) values on the cube's dates and pixels.
    valid
        (time, y, x) bool; default: every band finite. Values where it is
        False become NaN.
    bands
        Band names.
    sensor_time
        Optional (time,) acquisition time of the data matched to each cube date
        (stored as ``<sensor>_time``; the fusion model embeds the offset).
    validate
        Run :func:`validate_cube` on the result.

    Returns
    -------
    xarray.Dataset
        A new cube with ``<sensor>``, ``<sensor>_valid`` and the band coordinate.
    """
    data = np.asarray(data, dtype=np.float32)
    shape = (cube.sizes["time"], len(bands), cube.sizes["y"], cube.sizes["x"])
    if data.shape != shape:
        raise CubeError(f"{sensor!r} data has shape {data.shape}, expected {shape}")
    if sensor in cube.data_vars or sensor == "s2":
        raise CubeError(f"the cube already has a sensor {sensor!r}")
    valid = np.isfinite(data).all(axis=1) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (shape[0], *shape[2:]):
        want = (shape[0], *shape[2:])
        raise CubeError(f"{sensor}_valid has shape {valid.shape}, expected {want}")
    dim = band_dim(sensor)
    out = cube.assign_coords({dim: list(bands)})
    out[sensor] = (("time", dim, "y", "x"), np.where(valid[:, None], data, np.float32(np.nan)))
    out[f"{sensor}_valid"] = (("time", "y", "x"), valid)
    if sensor_time is not None:
        st = pd.DatetimeIndex(np.asarray(sensor_time)).values.astype("datetime64[ns]")
        out = out.assign_coords({f"{sensor}_time": ("time", st)})
    if validate:
        validate_cube(out)
    return out
