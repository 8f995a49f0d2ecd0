"""Output grids: the UTM zone of the centre, square pixels, the same pixels for every run.

The convention is cubo's "central pixel" one (``cubo.utils._central_pixel_bbox``):

1. the UTM zone is the first answer of :func:`pyproj.database.query_utm_crs_info`
   for the centre point;
2. the centre, projected to that zone, is rounded to a multiple of the resolution;
3. the box is ``centre +- round(size / 2)``.

Step 3 is snapped to whole pixels here (``round(size / 2 / resolution)``
pixels on each side), which is identical to cubo whenever ``size`` is a
multiple of twice the resolution (cubo's ``edge_size`` in pixels is even) and
keeps the pixel edges on multiples of the resolution otherwise. So a place and
a size always give the same pixel-aligned grid, and two grids of the same zone
share pixel edges.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

from affine import Affine
from odc.geo.geobox import GeoBox

from latentcube.errors import LatentcubeError

__all__ = [
    "GridError",
    "GridInfo",
    "UTMZoneWarning",
    "grid_for",
    "grid_for_bbox",
    "grid_info",
    "grid_info_bbox",
    "utm_epsg",
]


class GridError(LatentcubeError, ValueError):
    """A grid cannot be built from the given place and size."""


class UTMZoneWarning(UserWarning):
    """The requested area spans more than one UTM zone; the centre's zone is used."""


@dataclass(frozen=True)
class GridInfo:
    """A grid and how it was chosen.

    Attributes
    ----------
    geobox
        The output grid.
    epsg
        EPSG code of the UTM zone.
    centre
        (lon, lat) of the requested centre.
    zones
        EPSG codes of every UTM zone the requested area touches (the first is used).
    note
        Human-readable remark (empty unless the area spans several zones).
    """

    geobox: GeoBox
    epsg: int
    centre: tuple[float, float]
    zones: tuple[int, ...] = field(default_factory=tuple)
    note: str = ""

    def attrs(self) -> dict[str, str | int]:
        """Provenance attributes describing the grid."""
        gb = self.geobox
        out: dict[str, str | int] = {
            "grid_crs": f"EPSG:{self.epsg}",
            "grid_bounds": str(tuple(float(v) for v in gb.boundingbox)),
            "grid_shape": str(tuple(int(v) for v in gb.shape)),
            "grid_centre_lonlat": str(self.centre),
            "grid_convention": "cubo central pixel (UTM zone of the centre, centre rounded "
            "to the resolution, centre +- size/2 in whole pixels)",
        }
        if self.note:
            out["grid_note"] = self.note
        return out


def _check_lonlat(lon: float, lat: float) -> None:
    if not (math.isfinite(lat) and -80.0 <= lat <= 84.0):
        raise GridError(f"latitude {lat} is outside the UTM range [-80, 84]")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise GridError(f"longitude {lon} is outside [-180, 180]")


@functools.lru_cache(maxsize=1024)
def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the WGS 84 UTM zone of a point, as cubo picks it.

    Parameters
    ----------
    lat, lon
        Degrees.

    Returns
    -------
    int
        E.g. 32631 for 4.5 E, 51 N.
    """
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    _check_lonlat(lon, lat)
    info = query_utm_crs_info(
        datum_name="WGS 84",
        area_of_interest=AreaOfInterest(
            west_lon_degree=lon, south_lat_degree=lat, east_lon_degree=lon, north_lat_degree=lat
        ),
    )
    if not info:
        raise GridError(f"no UTM zone found for lat={lat}, lon={lon}")
    return int(info[0].code)


def _to_utm(epsg: int, lon: float, lat: float) -> tuple[float, float]:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    x, y = tr.transform(lon, lat)
    return float(x), float(y)


def _zones_between(lon_min: float, lon_max: float, lat: float) -> tuple[int, ...]:
    """UTM zones (EPSG) along a parallel from ``lon_min`` to ``lon_max``.

    Zone numbers come from the 6-degree rule (``utm_epsg`` is a database query,
    slow to repeat); the rare exceptions (Norway, Svalbard) only matter for the
    warning, the grid always uses :func:`utm_epsg` of the centre.
    """
    base = 32600 if lat >= 0 else 32700
    first = int((lon_min + 180.0) // 6.0) % 60 + 1
    last = int((min(lon_max, 179.999999) + 180.0) // 6.0) % 60 + 1
    return tuple(base + z for z in range(first, last + 1))


def _box(epsg: int, e: float, n: float, half_px_x: int, half_px_y: int, res: float) -> GeoBox:
    affine = Affine(res, 0.0, e - half_px_x * res, 0.0, -res, n + half_px_y * res)
    return GeoBox((2 * half_px_y, 2 * half_px_x), affine, f"EPSG:{epsg}")


def _note(zones: tuple[int, ...], epsg: int) -> str:
    if len(zones) <= 1:
        return ""
    names = ", ".join(f"EPSG:{z}" for z in zones)
    return (
        f"the area spans {len(zones)} UTM zones ({names}); using the zone of its centre, "
        f"EPSG:{epsg}"
    )


def grid_info(lat: float, lon: float, size_m: float, resolution: float = 10.0) -> GridInfo:
    """Like :func:`grid_for`, returning a :class:`GridInfo` (grid plus how it was chosen)."""
    if not (size_m > 0 and math.isfinite(size_m)):
        raise GridError(f"size_m must be positive, got {size_m}")
    if not resolution > 0:
        raise GridError(f"resolution must be positive, got {resolution}")
    epsg = utm_epsg(lat, lon)
    e, n = _to_utm(epsg, lon, lat)
    e = round(e / resolution) * resolution
    n = round(n / resolution) * resolution
    half_px = round(round(size_m / 2) / resolution)
    if half_px < 1:
        raise GridError(f"size_m={size_m} is smaller than two pixels of {resolution} m")
    gb = _box(epsg, e, n, half_px, half_px, resolution)
    lon_w, lon_e = _lon_span(gb)
    zones = _zones_between(lon_w, lon_e, lat)
    zones = (epsg, *[z for z in zones if z != epsg]) if len(zones) > 1 else (epsg,)
    note = _note(zones, epsg)
    if note:
        warnings.warn(note, UTMZoneWarning, stacklevel=3)
    return GridInfo(gb, epsg, (float(lon), float(lat)), zones, note)


def _lon_span(gb: GeoBox) -> tuple[float, float]:
    from pyproj import Transformer

    bb = gb.boundingbox
    tr = Transformer.from_crs(str(gb.crs), "EPSG:4326", always_xy=True)
    lon_w, _, lon_e, _ = tr.transform_bounds(bb.left, bb.bottom, bb.right, bb.top, densify_pts=21)
    return float(lon_w), float(lon_e)


def grid_for(lat: float, lon: float, size_m: float, resolution: float = 10.0) -> GeoBox:
    """The pixel-aligned UTM grid of a square around a point (cubo's convention).

    Parameters
    ----------
    lat, lon
        Centre in degrees (WGS 84).
    size_m
        Edge length in metres; the grid has ``2 * round(round(size_m / 2) / resolution)``
        pixels per side.
    resolution
        Pixel size in metres.

    Returns
    -------
    odc.geo.geobox.GeoBox
        North-up grid in the UTM zone of the centre; pixel edges on multiples
        of ``resolution``.

    Warns
    -----
    UTMZoneWarning
        When the square reaches into another UTM zone (the centre's zone is used).

    Examples
    --------
    >>> gb = grid_for(51.0, 4.5, 640)
    >>> gb.crs.epsg, gb.shape
    (32631, Shape2d(x=64, y=64))
    """
    return grid_info(lat, lon, size_m, resolution).geobox


def grid_info_bbox(
    lon_min: float,
    lat_min: float,
    lon_max: float,
    lat_max: float,
    resolution: float = 10.0,
) -> GridInfo:
    """Like :func:`grid_for_bbox`, returning a :class:`GridInfo`."""
    if not (lon_min < lon_max and lat_min < lat_max):
        raise GridError(
            f"bbox must be (lon_min, lat_min, lon_max, lat_max) with min < max, got "
            f"{(lon_min, lat_min, lon_max, lat_max)}"
        )
    for lo, la in ((lon_min, lat_min), (lon_max, lat_max)):
        _check_lonlat(lo, la)
    lon_c, lat_c = (lon_min + lon_max) / 2.0, (lat_min + lat_max) / 2.0
    epsg = utm_epsg(lat_c, lon_c)
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    left, bottom, right, top = tr.transform_bounds(
        lon_min, lat_min, lon_max, lat_max, densify_pts=21
    )
    e, n = _to_utm(epsg, lon_c, lat_c)
    e = round(e / resolution) * resolution
    n = round(n / resolution) * resolution
    # whole pixels from the rounded centre, enough to cover the bbox on every side
    half_x = max(1, math.ceil(max(e - left, right - e) / resolution - 1e-9))
    half_y = max(1, math.ceil(max(n - bottom, top - n) / resolution - 1e-9))
    gb = _box(epsg, e, n, half_x, half_y, resolution)
    zones = {z for la in (lat_min, lat_c, lat_max) for z in _zones_between(lon_min, lon_max, la)}
    zones_t = (epsg, *sorted(z for z in zones if z != epsg))
    note = _note(zones_t, epsg)
    if note:
        warnings.warn(note, UTMZoneWarning, stacklevel=3)
    return GridInfo(gb, epsg, (float(lon_c), float(lat_c)), zones_t, note)


def grid_for_bbox(
    lon_min: float,
    lat_min: float,
    lon_max: float,
    lat_max: float,
    resolution: float = 10.0,
) -> GeoBox:
    """The pixel-aligned UTM grid covering a lon/lat box.

    The zone and the rounded centre follow :func:`grid_for`; the grid extends
    a whole number of pixels from the centre on each side, enough to cover the
    box once projected (so it is symmetric about the rounded centre).

    Parameters
    ----------
    lon_min, lat_min, lon_max, lat_max
        The box in degrees (WGS 84).
    resolution
        Pixel size in metres.

    Returns
    -------
    odc.geo.geobox.GeoBox
        The grid.

    Warns
    -----
    UTMZoneWarning
        When the box spans several UTM zones; the zone of its centre is used.
    """
    return grid_info_bbox(lon_min, lat_min, lon_max, lat_max, resolution).geobox
