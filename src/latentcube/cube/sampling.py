"""Training sites drawn at random over land: a sites table for ``build_cubes``.

The paper's training cubes (spec section 2.2): 250 sites in lon 0-30 E, lat 42-62 N,
each with two one-year windows, 90 x 90 px at 10 m. :func:`sample_sites` draws such a
table, deterministic from its seed:

* site centres uniform in **area** over the region (latitude drawn with density
  proportional to its cosine, not uniform in degrees), optionally at least
  ``min_distance_deg`` apart (the authors' table keeps centres 1 degree apart);
* **land only**: the centre and the four corners of the cube must be on land in the
  1 km GLOBE land mask of the ``global-land-mask`` package (shipped in its wheel, so
  sampling works offline);
* per site, ``windows`` distinct calendar years drawn from ``years``: one cube per
  site and year, ``<site>_<year>`` (e.g. ``s0042_2019``).

The authors also stratified by ESA CCI land cover (forests, grassland, urban); that
map is not available offline, so the sample here is stratified by nothing but land.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["PAPER_REGION", "land_mask", "sample_sites"]

#: (west, south, east, north) of the paper's training region, degrees.
PAPER_REGION = (0.0, 42.0, 30.0, 62.0)
_KM_PER_DEG = 111.32


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """True where the points are on land (1 km GLOBE mask of ``global-land-mask``).

    The first call loads the package's global mask (about 0.9 GiB in memory, 2 s),
    which stays loaded in the process.
    """
    from global_land_mask import globe

    return np.asarray(globe.is_land(np.asarray(lat, float), np.asarray(lon, float)), bool)


def sample_sites(
    n: int,
    region: Sequence[float] = PAPER_REGION,
    years: Sequence[int] = (2018, 2019, 2020, 2021, 2022, 2023),
    *,
    seed: int = 42,
    size_m: float = 900.0,
    windows: int = 2,
    min_distance_deg: float = 0.0,
    max_tries: int = 200,
) -> pd.DataFrame:
    """Draw ``n`` training sites on land, with ``windows`` one-year cubes each.

    Parameters
    ----------
    n
        Number of sites.
    region
        ``(west, south, east, north)`` in degrees (west < east; no antimeridian).
    years
        Calendar years the windows are drawn from.
    seed
        Seed: the same arguments give the same table.
    size_m
        Edge of each cube in metres (the corners must be on land too).
    windows
        One-year windows per site (distinct years), so ``n * windows`` cubes.
    min_distance_deg
        Least distance between two site centres, in degrees (Euclidean in
        lon/lat); 0 for none.
    max_tries
        Rounds of candidates drawn before giving up.

    Returns
    -------
    pandas.DataFrame
        One row per cube, sorted by site and year: ``id`` (``s0000_2019``),
        ``site``, ``lat``, ``lon``, ``start``, ``end`` (the calendar year),
        ``size_m``, ``year``; the sites table of
        :func:`~latentcube.cube.sites.build_cubes`.

    Raises
    ------
    ValueError
        Bad arguments (an empty region, fewer years than windows, ...), or
        fewer than ``n`` sites found on land (a region mostly at sea, or a
        distance that leaves no room).
    """
    west, south, east, north = (float(v) for v in region)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise ValueError(f"region must be (west, south, east, north) in degrees, got {region}")
    yrs = sorted({int(y) for y in years})
    if windows < 1 or len(yrs) < windows:
        raise ValueError(f"{windows} windows per site need as many distinct years, got {yrs}")
    if not size_m > 0:
        raise ValueError(f"size_m must be positive, got {size_m}")
    rng = np.random.default_rng(seed)
    lats: list[float] = []
    lons: list[float] = []
    s0, s1 = math.sin(math.radians(south)), math.sin(math.radians(north))
    batch = max(4 * n, 256)
    for _ in range(max_tries):
        lat = np.degrees(np.arcsin(rng.uniform(s0, s1, batch)))
        lon = rng.uniform(west, east, batch)
        ok = _on_land(lat, lon, size_m)
        for la, lo in zip(lat[ok], lon[ok], strict=True):
            if min_distance_deg > 0 and lats:
                d2 = (np.asarray(lats) - la) ** 2 + (np.asarray(lons) - lo) ** 2
                if d2.min() < min_distance_deg**2:
                    continue
            lats.append(float(la))
            lons.append(float(lo))
            if len(lats) == n:
                break
        if len(lats) == n:
            break
    else:
        raise ValueError(
            f"found {len(lats)} of {n} sites on land in {tuple(region)} after {max_tries} "
            f"rounds (min_distance_deg={min_distance_deg}); use a larger region or a smaller "
            "distance"
        )
    rows = []
    for site, (la, lo) in enumerate(zip(lats, lons, strict=True)):
        for year in sorted(rng.choice(yrs, size=windows, replace=False).tolist()):
            rows.append(
                {
                    "id": f"s{site:04d}_{year}",
                    "site": site,
                    "lat": round(la, 6),
                    "lon": round(lo, 6),
                    "start": f"{year}-01-01",
                    "end": f"{year}-12-31",
                    "size_m": float(size_m),
                    "year": int(year),
                }
            )
    return pd.DataFrame(rows)


def _on_land(lat: np.ndarray, lon: np.ndarray, size_m: float) -> np.ndarray:
    """True where the centre and the four corners of a ``size_m`` square are on land."""
    half_lat = size_m / 2 / 1000 / _KM_PER_DEG
    half_lon = half_lat / np.cos(np.radians(lat))
    ok = land_mask(lat, lon)
    for dy in (-half_lat, half_lat):
        for sx in (-1.0, 1.0):
            ok &= land_mask(np.clip(lat + dy, -90, 90), np.clip(lon + sx * half_lon, -180, 180))
    return ok
