"""A small static STAC catalog over local COGs made of real Sentinel pixels.

The pixels come from the WorldCereal Flanders patch ``0000280849BAC91C`` in
../shared/data (S2 L2A digital numbers and SCL, S1 GRD backscatter; EPSG:32631,
640 m x 640 m). Every COG holds those values unchanged except where a test
needs a property the patch does not have, each listed here:

* S2 2018-09-18 is split into two overlapping "tiles" (west: columns 0-39,
  east: columns 24-63). The west tile's SCL over the overlap is the SCL of the
  fully cloudy date 2018-09-23, so the same-day merge must take the east
  tile's pixels there.
* S2 2018-10-13 is published as processing baseline 04.00: its DNs are stored
  with the +1000 offset of that baseline.
* S1 acquisitions of 2018-10-13 and 2018-10-19 are left out, so 2018-10-18 has
  no S1 within 6 days. S1 is stored as linear power (like RTC gamma0), on the
  10 m grid (each 20 m pixel repeated 2 x 2).

Also used by ``benchmarks/bench_cube.py`` (``repeat`` tiles the patch to a
larger area; ``vary`` makes the copies differ slightly, so that they compress no
better than one real patch).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

PATCH = "0000280849BAC91C"
FLANDERS = "worldcereal_s1_s2_training_patches_flanders"
EPSG = 32631
LEFT, TOP = 574680.0, 5622440.0  # the patch's upper-left corner; 64 x 64 px at 10 m
CENTRE_XY = (575000.0, 5622120.0)
S2_10M = ("B02", "B03", "B04", "B08")
S2_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S2_DATES = ("2018-09-18", "2018-09-23", "2018-10-13", "2018-10-18")
S1_DATES = (
    "2018-09-07", "2018-09-13", "2018-09-19", "2018-09-25", "2018-10-01", "2018-10-07",
    "2018-10-25", "2018-10-31",
)  # fmt: skip
SPLIT_DATE = "2018-09-18"
CLOUDY_DATE = "2018-09-23"
BASELINE4_DATE = "2018-10-13"
WEST_COLS, EAST_COLS = (0, 40), (24, 64)


def centre_lonlat() -> tuple[float, float]:
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(EPSG, 4326, always_xy=True).transform(*CENTRE_XY)
    return float(lon), float(lat)


@dataclass
class Source:
    """Raw values of the patch at the chosen dates (independent of latentcube)."""

    s2_dn: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # date -> band -> DN
    scl: dict[str, np.ndarray] = field(default_factory=dict)  # date -> (32, 32)
    s2_time: dict[str, np.datetime64] = field(default_factory=dict)
    s1_db: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # date -> pol -> dB
    s1_time: dict[str, np.datetime64] = field(default_factory=dict)
    angles: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


def patch_dates(folder: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every S2 and S1 date of the patch (ISO days), for a catalog of the whole record."""
    s2 = next(folder.glob("S2_L2A_10m_*.nc"))
    s1 = next(folder.glob("S1_GRD-ASCENDING_*.nc"))
    out = []
    for f in (s2, s1):
        with xr.open_dataset(f, mask_and_scale=False) as d:
            days = d.timestamp.values.astype("datetime64[D]").astype(str)
            out.append(tuple(dict.fromkeys(days.tolist())))
    return out[0], out[1]


def read_source(
    folder: Path, s2_dates: tuple[str, ...] = S2_DATES, s1_dates: tuple[str, ...] = S1_DATES
) -> Source:
    """Read the patch with plain xarray (no latentcube code), raw integers.

    ``s2_dates`` and ``s1_dates`` pick the acquisitions (days of the patch's own
    dates); :func:`make_catalog` publishes the dates read.
    """
    f = {
        p: next(folder.glob(f"{p}_*.nc")) for p in ("S2_L2A_10m", "S2_L2A_20m", "S1_GRD-ASCENDING")
    }
    src = Source()
    with (
        xr.open_dataset(f["S2_L2A_10m"], mask_and_scale=False) as a,
        xr.open_dataset(f["S2_L2A_20m"], mask_and_scale=False) as b,
        xr.open_dataset(f["S1_GRD-ASCENDING"], mask_and_scale=False) as s,
    ):
        for d in s2_dates:
            ia = int(
                np.flatnonzero(a.timestamp.values.astype("datetime64[D]") == np.datetime64(d))[0]
            )
            src.s2_time[d] = a.timestamp.values[ia]
            src.s2_dn[d] = {k: a[k].values[ia] for k in S2_10M}
            src.s2_dn[d].update({k: b[k].values[ia] for k in S2_20M})
            src.scl[d] = b["SCL"].values[ia]
            src.angles[d] = tuple(  # sun zenith, sun azimuth, view zenith, view azimuth
                float(b[k].values[ia])
                for k in (
                    "sunZenithAngles",
                    "sunAzimuthAngles",
                    "viewZenithMean",
                    "viewAzimuthMean",
                )
            )
        for d in s1_dates:
            i = int(
                np.flatnonzero(s.timestamp.values.astype("datetime64[D]") == np.datetime64(d))[0]
            )
            src.s1_time[d] = s.timestamp.values[i]
            src.s1_db[d] = {p: s[p].values[i].astype(np.float64) * 1e-4 for p in ("VV", "VH")}
    return src


def up2(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def _write_cog(path: Path, arr: np.ndarray, left: float, top: float, res: float, nodata) -> None:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype,
        crs=f"EPSG:{EPSG}",
        transform=from_origin(left, top, res, res),
        nodata=nodata,
        BLOCKSIZE=256,
        COMPRESS="DEFLATE",
        OVERVIEWS="NONE",
    ) as dst:
        dst.write(arr, 1)


def write_granule_metadata(path: Path, angles: tuple[float, float, float, float]) -> None:
    """A minimal L2A ``MTD_TL.xml`` whose angle grids hold the scene's real mean angles.

    Tile 31UES (upper-left corner 499980 E, 5700000 N), 23 x 23 grids at 5 km,
    one detector per band, the layout sen2nbar parses.
    """
    sz, sa, vz, va = angles

    def grid(value: float) -> str:
        row = " ".join([f"{value:.6f}"] * 23)
        vals = "".join(f"<VALUES>{row}</VALUES>" for _ in range(23))
        return (
            '<COL_STEP unit="m">5000</COL_STEP><ROW_STEP unit="m">5000</ROW_STEP>'
            f"<Values_List>{vals}</Values_List>"
        )

    view = "".join(
        f'<Viewing_Incidence_Angles_Grids bandId="{b}" detectorId="4">'
        f"<Zenith>{grid(vz)}</Zenith><Azimuth>{grid(va)}</Azimuth>"
        "</Viewing_Incidence_Angles_Grids>"
        for b in range(13)
    )
    geo = "".join(
        f'<Geoposition resolution="{r}"><ULX>499980</ULX><ULY>5700000</ULY>'
        f"<XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>"
        for r in (10, 20, 60)
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'S2_PDI_Level-2A_Tile_Metadata.xsd"><n1:Geometric_Info>'
        '<Tile_Geocoding metadataLevel="Brief"><HORIZONTAL_CS_NAME>WGS84 / UTM zone 31N'
        f"</HORIZONTAL_CS_NAME><HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>{geo}"
        "</Tile_Geocoding><Tile_Angles>"
        f"<Sun_Angles_Grid><Zenith>{grid(sz)}</Zenith><Azimuth>{grid(sa)}</Azimuth>"
        f"</Sun_Angles_Grid>{view}</Tile_Angles></n1:Geometric_Info></n1:Level-2A_Tile_ID>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(xml)


def _footprint(left: float, top: float, width_m: float, height_m: float):
    from pyproj import Transformer

    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    corners = [
        (left, top),
        (left + width_m, top),
        (left + width_m, top - height_m),
        (left, top - height_m),
    ]
    ll = [tr.transform(x, y) for x, y in corners]
    lons, lats = [p[0] for p in ll], [p[1] for p in ll]
    geom = {"type": "Polygon", "coordinates": [[*map(list, ll), list(ll[0])]]}
    return geom, [min(lons), min(lats), max(lons), max(lats)]


def _item(item_id, when, left, top, width_m, height_m, props):
    import pystac

    geom, bbox = _footprint(left, top, width_m, height_m)
    t = dt.datetime.fromisoformat(str(np.datetime_as_string(when, "s"))).replace(tzinfo=dt.UTC)
    item = pystac.Item(item_id, geom, bbox, t, {"proj:code": f"EPSG:{EPSG}", **props})
    return item


def _asset(item, key: str, href: str, shape: tuple[int, int], left: float, top: float, res):
    import pystac

    item.add_asset(
        key,
        pystac.Asset(
            href,
            media_type=pystac.MediaType.COG,
            roles=["data"],
            extra_fields={
                "proj:shape": list(shape),
                "proj:transform": [res, 0.0, left, 0.0, -res, top],
            },
        ),
    )


def make_catalog(
    root: Path,
    src: Source,
    *,
    href_base: str | None = None,
    repeat: int = 1,
    vary: bool = False,
    drop_asset: tuple[str, str] | None = None,
    collections: tuple[str, ...] = ("sentinel-2-l2a", "sentinel-1-rtc"),
    shift_days: int = 0,
    s2_dates: tuple[str, ...] | None = None,
    s1_dates: tuple[str, ...] | None = None,
) -> Path:
    """Write COGs and a self-contained static catalog under ``root``.

    Parameters
    ----------
    href_base
        Absolute URL prefix for the asset hrefs (e.g. a blob-storage URL);
        default relative hrefs.
    repeat
        Tile the patch ``repeat x repeat`` times (benchmarks).
    vary
        With ``repeat``: each copy of the patch gets its own small change (S2 DNs
        + 1 to 97 where > 0, i.e. at most ~0.01 reflectance; S1 power x 1.001 to
        1.097), so that no two copies within 768 px hold the same bytes and the
        copies compress (DEFLATE in the COGs, Zstandard in the cube) about as
        well as a single real patch instead of as exact repeats. SCL is tiled
        unchanged.
    drop_asset
        ``(item id, asset key)`` to leave out.
    collections
        Collections to publish.
    shift_days
        Days added to every acquisition time of the published items (the pixels
        are unchanged), for tests that need the imagery in another period.
    s2_dates, s1_dates
        Dates to publish (default: every date read into ``src`` by :func:`read_source`).

    Returns
    -------
    pathlib.Path
        The ``catalog.json``.
    """
    import pystac

    root.mkdir(parents=True, exist_ok=True)
    cat = pystac.Catalog("flanders", "Real S1/S2 pixels of a WorldCereal Flanders patch")
    size = 640.0 * repeat

    def tile(a: np.ndarray, change: Any = None) -> np.ndarray:
        if not vary or change is None or repeat == 1:
            return np.tile(a, (repeat, repeat))
        # copy (i, j) changed by k = 1 + (7 i + 13 j) mod 97: equal only 12+ copies apart
        return np.block([[change(a, 1 + (7 * i + 13 * j) % 97) for j in range(repeat)]
                         for i in range(repeat)])  # fmt: skip

    def dn_plus(a: np.ndarray, k: int) -> np.ndarray:
        return np.where(a > 0, a + k, 0).astype(a.dtype)

    def power_times(a: np.ndarray, k: int) -> np.ndarray:
        return (a * np.float32(1.0 + k * 1e-3)).astype(a.dtype)

    def href(rel: str) -> str:
        return f"{href_base.rstrip('/')}/{rel}" if href_base else str(root / rel)

    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
        pystac.TemporalExtent([[dt.datetime(2018, 1, 1, tzinfo=dt.UTC), None]]),
    )
    if "sentinel-2-l2a" in collections:
        s2 = pystac.Collection("sentinel-2-l2a", "S2 L2A (test excerpt)", extent)
        cat.add_child(s2)
        for d in src.s2_dn if s2_dates is None else s2_dates:
            dn = {k: v.copy() for k, v in src.s2_dn[d].items()}
            scl = src.scl[d].copy()
            baseline = "02.09"
            if d == BASELINE4_DATE:
                baseline = "04.00"
                for k in dn:
                    dn[k] = np.where(dn[k] > 0, dn[k] + 1000, 0).astype(np.uint16)
            pieces = [("", (0, 64), scl)]
            if d == SPLIT_DATE:
                west_scl = scl.copy()
                lo = EAST_COLS[0] // 2
                west_scl[:, lo:] = src.scl[CLOUDY_DATE][:, lo:]
                pieces = [("-w", WEST_COLS, west_scl), ("-e", EAST_COLS, scl)]
            for suffix, (c0, c1), scl_piece in pieces:
                iid = f"S2_{d.replace('-', '')}{suffix}"
                left = LEFT + c0 * 10.0 if repeat == 1 else LEFT
                width = (c1 - c0) * 10.0 if repeat == 1 else size
                item = _item(
                    iid,
                    src.s2_time[d]
                    + np.timedelta64(shift_days, "D")
                    + np.timedelta64(1 if suffix == "-e" else 0, "s"),
                    left,
                    TOP,
                    width,
                    size,
                    {"s2:processing_baseline": baseline, "eo:cloud_cover": 50.0},
                )
                for k, arr in [*dn.items(), ("SCL", scl_piece)]:
                    fine = k in S2_10M
                    a = tile(arr, None if k == "SCL" else dn_plus)
                    if repeat == 1:
                        a = a[:, c0:c1] if fine else a[:, c0 // 2 : c1 // 2]
                    res = 10.0 if fine else 20.0
                    rel = f"cogs/{iid}/{k}.tif"
                    if drop_asset == (iid, k):
                        continue
                    _write_cog(root / rel, a, left, TOP, res, 0)
                    _asset(item, k, href(rel), a.shape, left, TOP, res)
                rel = f"cogs/{iid}/MTD_TL.xml"
                write_granule_metadata(root / rel, src.angles[d])
                item.add_asset(
                    "granule-metadata",
                    pystac.Asset(href(rel), media_type="application/xml", roles=["metadata"]),
                )
                s2.add_item(item)
    if "sentinel-1-rtc" in collections:
        s1 = pystac.Collection("sentinel-1-rtc", "S1 RTC-like (test excerpt)", extent)
        cat.add_child(s1)
        for d in src.s1_db if s1_dates is None else s1_dates:
            iid = f"S1_{d.replace('-', '')}"
            item = _item(
                iid,
                src.s1_time[d] + np.timedelta64(shift_days, "D"),
                LEFT,
                TOP,
                size,
                size,
                {"sat:orbit_state": "ascending"},
            )
            for pol in ("VV", "VH"):
                lin = np.power(10.0, src.s1_db[d][pol] / 10.0).astype(np.float32)
                a = up2(tile(lin, power_times))
                rel = f"cogs/{iid}/{pol.lower()}.tif"
                if drop_asset == (iid, pol.lower()):
                    continue
                _write_cog(root / rel, a, LEFT, TOP, 10.0, None)
                _asset(item, pol.lower(), href(rel), a.shape, LEFT, TOP, 10.0)
            s1.add_item(item)
    cat.normalize_hrefs(str(root))
    if href_base is None:
        cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"
