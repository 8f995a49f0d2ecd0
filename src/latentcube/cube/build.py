"""Build an analysis-ready Sentinel-2 + Sentinel-1 cube for a place and a time span.

The pipeline (see ``docs/design.md``, section "Cubes from STAC"):

1. **Grid**: the UTM zone of the centre, 10 m, cubo's centre-pixel convention
   (:mod:`latentcube.grid`).
2. **Search** (pystac-client): S2 L2A items in ``[start, end]``; S1 RTC items in
   the same span widened by the matching gap and a margin for the rolling mean.
   Every problem that can be seen in the metadata (no items, a missing asset,
   a catalog without the collection, dates in the wrong order) is raised here,
   before any pixel is read or any file is written.
3. **Plan**: S2 items are grouped by solar day (tile overlaps of one pass
   become one date), S1 items by solar day and orbit direction; every S2 date
   gets the nearest S1 acquisition within ``s1_max_gap_days``.
4. **Screen**: with the default mask, only SCL is read first to count each
   date's pixels the mask can leave clear (an upper bound of its valid
   pixels); dates below ``min_valid_fraction`` are dropped before their bands
   are read, so the time axis is known up front.
5. **Load** unit by unit (a block of S2 dates x a spatial tile): assets on the
   cube's pixel lattice are read at their native resolution and repeated to
   10 m (:func:`latentcube.cube.stac.read_aligned`, equal to a nearest warp),
   others with odc-stac; explicit dtype, nodata and resampling, URLs re-signed
   at every call, each unit retried with backoff on transient errors. Per S2
   item: DN -> reflectance honouring the baseline-04.00 offset, mask (SCL with
   dilation by default, or any mask function), then the items of one day are
   merged (a clear pixel wins); with the default mask this runs one output
   plane at a time, the bands read without the mask's halo. S1 (read on a
   helper thread while S2 is read): linear gamma0 -> centred mean over 3
   acquisitions of the same orbit direction -> dB -> clip [-30, 5] ->
   (dB + 30) / 35, in float32.
6. The cube's store (metadata, coordinates and attributes, written directly
   in xarray's layout) is created in a staging folder next to the output on
   the writer thread while the first unit is read. Each unit is checked and
   writes its own chunks, compressed, straight into it on that thread while
   the next unit is read and merged, and is marked done (with its valid pixel
   counts), so an interrupted build resumes without reading those units again.
7. **Finish**: the store is renamed to the output. Only when a date ends
   below ``min_valid_fraction`` after the full mask (custom mask functions
   are not screened) are the kept dates copied into a new store
   (:func:`latentcube.io.write_zarr`).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from latentcube.cube.schema import provenance, validate_cube
from latentcube.cube.sentinel1 import DB_RANGE, match_dates
from latentcube.cube.sentinel2 import (
    SCL_INVALID,
    baseline_offset,
    reflectance_into,
    remove_baseline_offset,
    scl_valid,
)
from latentcube.cube.stac import (
    S1_ASSETS,
    S2_ASSETS,
    NotAligned,
    StacError,
    configure_http,
    grid_aligned,
    group_items,
    load_items,
    needs_signing,
    open_client,
    read_aligned,
    resolve_assets,
    resolve_catalog,
    reuse_datasets,
    search_items,
    signer,
    with_retries,
)
from latentcube.cube.union import add_s1_dates, check_time_axis
from latentcube.grid import GridInfo, grid_info, grid_info_bbox
from latentcube.sensors import S1_BANDS, S2_BANDS

__all__ = ["CubeSpec", "MaskFunction", "SCLMask", "build_cube"]


class MaskFunction(Protocol):
    """A cloud/shadow masker for Sentinel-2.

    Called once per S2 item and loading unit with the reflectance
    ``refl`` (item, band, y, x; float32 in [0, 1], NaN for no data), the SCL
    codes ``scl`` (item, y, x; uint8, 0 for no data) and the band names; returns
    a bool array (item, y, x), True where the pixel is clear. An optional
    ``halo`` attribute (pixels) asks for that much context around every tile
    (e.g. for a dilation), so results do not depend on the tiling.
    """

    def __call__(self, refl: np.ndarray, scl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Clear-sky mask (item, y, x)."""
        ...


@dataclass(frozen=True)
class SCLMask:
    """The default mask: Sen2Cor scene classes, clouds and shadows dilated.

    Parameters
    ----------
    invalid_classes
        SCL codes treated as not clear (default: no data, saturated, cloud
        shadow, cloud medium/high, cirrus, snow).
    dilation
        Grow the area of ``dilate_classes`` by this many 10 m pixels, to
        catch cloud edges and thin shadows the classifier misses.
    dilate_classes
        Codes that are dilated (default: cloud shadow, cloud medium/high,
        cirrus). No data is never dilated, so tile edges do not eat into
        valid pixels.
    """

    invalid_classes: tuple[int, ...] = SCL_INVALID
    dilation: int = 1
    dilate_classes: tuple[int, ...] = (3, 8, 9, 10)

    @property
    def halo(self) -> int:
        """Context needed around a tile: the dilation."""
        return int(self.dilation)

    def __call__(self, refl: np.ndarray, scl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Clear where the SCL class is not invalid and no dilated cloud/shadow reaches."""
        return self.clear(scl)

    def clear(self, scl: np.ndarray) -> np.ndarray:
        """The mask from the SCL codes alone (item, y, x).

        Same result as :func:`~latentcube.cube.sentinel2.scl_valid` (tested
        against it), computed with a lookup table per class set and a separable
        square dilation for the usual uint8 codes.
        """
        scl = np.asarray(scl)
        if scl.dtype != np.uint8:
            valid = scl_valid(scl, invalid_classes=self.invalid_classes)
            if self.dilation > 0:
                valid &= scl_valid(scl, invalid_classes=self.dilate_classes, dilation=self.dilation)
            return valid
        lut = np.zeros(256, np.uint8)  # bit 0: invalid, bit 1: dilated
        lut[[c for c in self.invalid_classes if 0 <= c < 256]] |= 1
        if self.dilation > 0:
            lut[[c for c in self.dilate_classes if 0 <= c < 256]] |= 2
        codes = lut[scl]
        invalid = (codes & 1).astype(bool)
        if self.dilation > 0:
            invalid |= _dilate_square((codes & 2).astype(bool), self.dilation)
        return ~invalid


def _dilate_square(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of every 2-D slice by a (2r+1) x (2r+1) square; outside is False.

    Separable: a dilation along x then along y, each by shifted ORs; equals
    :func:`scipy.ndimage.binary_dilation` with that structuring element.
    """
    out = mask.copy()
    for axis in (-1, -2):
        src = out.copy()
        for s in range(1, min(r, src.shape[axis] - 1) + 1):
            lo = [slice(None)] * src.ndim
            hi = [slice(None)] * src.ndim
            lo[axis], hi[axis] = slice(s, None), slice(None, -s)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


class CubeSpec(BaseModel):
    """Options of a cube build; stored as JSON in the cube's ``latentcube_config`` attribute.

    Parameters
    ----------
    sensors
        ``("s2",)`` or ``("s2", "s1")``; the time axis is always the S2 date axis.
    resolution
        Pixel size in metres.
    s2_bands
        S2 L2A bands, in cube order.
    mask_dilation, scl_invalid
        Options of the default :class:`SCLMask`.
    min_valid_fraction
        Dates with a smaller share of clear S2 pixels are dropped (dates
        without any clear pixel always are).
    max_cloud_cover
        Skip S2 items whose ``eo:cloud_cover`` (percent, whole tile) is larger.
    s1_max_gap_days
        Largest distance between an S2 date and its S1 acquisition; farther
        dates keep S1 masked.
    s1_window
        Acquisitions of the centred rolling mean (linear power).
    s1_orbit
        ``"both"``, ``"ascending"`` or ``"descending"``.
    nbar
        Correct S2 reflectance to nadir view (NBAR) with the c-factor of
        sen2nbar (``pip install 'latentcube[nbar]'``), computed from each
        item's granule metadata. sen2nbar has no coefficients for B8A, which is
        left uncorrected (as in sen2nbar).
    resampling_s2, resampling_s1
        GDAL resampling of the reflectance bands (SCL is always ``nearest``)
        and of the backscatter.
    time_chunk, tile
        Loading unit: S2 dates x tile x tile pixels. Memory is bounded by
        one unit whatever the area.
    chunks
        Zarr chunks of the output, ``{"time", "y", "x"}`` (all bands in one chunk).
        Units write whole chunks, so the store written in place is chunked
        ``gcd(time_chunk, chunks["time"])`` dates and ``gcd(tile, chunks["y"])``
        pixels (8 x 256 x 256 by default); these chunks are used as given
        only when dates are dropped after the full read (the cube is copied).
    max_retries, backoff
        Retries of HTTP requests and of whole loading units (exponential backoff
        starting at ``backoff`` seconds).
    pool
        Reader threads per loading unit.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensors: tuple[Literal["s2", "s1"], ...] = ("s2", "s1")
    resolution: float = Field(default=10.0, gt=0)
    s2_bands: tuple[str, ...] = S2_BANDS
    mask_dilation: int = Field(default=1, ge=0)
    scl_invalid: tuple[int, ...] = SCL_INVALID
    min_valid_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    max_cloud_cover: float | None = Field(default=None, ge=0.0, le=100.0)
    s1_max_gap_days: float = Field(default=6.0, ge=0.0)
    s1_window: int = Field(default=3, ge=1)
    s1_orbit: Literal["both", "ascending", "descending"] = "both"
    resampling_s2: str = "nearest"
    resampling_s1: str = "bilinear"
    nbar: bool = False
    time_chunk: int = Field(default=8, ge=1)
    tile: int = Field(default=512, ge=16)
    chunks: dict[str, int] = Field(default_factory=lambda: {"time": 16, "y": 256, "x": 256})
    max_retries: int = Field(default=5, ge=0)
    backoff: float = Field(default=0.5, ge=0.0)
    pool: int = Field(default=4, ge=1)


# --------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    """Everything known before reading a pixel."""

    info: GridInfo
    spec: CubeSpec
    catalog: str
    catalog_url: str
    collections: dict[str, str]
    s2_items: list[Any]
    s2_groups: list[list[int]]
    s2_times: np.ndarray
    s2_assets: dict[str, str]
    s2_offsets: list[str | None]
    s2_metadata: list[str | None]
    s1_items: list[Any]
    s1_groups: list[list[int]]
    s1_times: np.ndarray
    s1_orbits: list[str]
    s1_assets: dict[str, str]
    s1_match: np.ndarray  # S1 group per S2 date, -1 when none within the gap
    s1_prev: np.ndarray  # previous S1 group of the same orbit direction, -1 at the start
    s1_next: np.ndarray
    sign: bool
    mask_name: str
    s2_aligned: bool = False  # every S2 asset on the grid: read_aligned, no warp
    s1_aligned: bool = False

    @property
    def with_s1(self) -> bool:
        return "s1" in self.spec.sensors

    def fingerprint(self) -> str:
        gb = self.info.geobox
        doc = {
            "grid": [str(gb.crs), list(gb.affine)[:6], list(gb.shape)],
            "spec": self.spec.model_dump(mode="json"),
            "catalog": self.catalog_url,
            "collections": self.collections,
            "s2": [it.id for it in self.s2_items],
            "s1": [it.id for it in self.s1_items],
            "mask": self.mask_name,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]

    def s1_time(self) -> np.ndarray:
        out = np.full(self.s2_times.shape, np.datetime64("NaT"), "datetime64[ns]")
        ok = self.s1_match >= 0
        out[ok] = self.s1_times[self.s1_match[ok]]
        return out

    def s1_orbit(self) -> np.ndarray:
        return np.array(
            [self.s1_orbits[m] if m >= 0 else "" for m in self.s1_match], dtype=object
        ).astype(str)


def _neighbours(times: np.ndarray, orbits: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Previous/next acquisition of the same orbit direction (-1 at the ends)."""
    prev = np.full(len(times), -1, np.int64)
    nxt = np.full(len(times), -1, np.int64)
    for orbit in set(orbits):
        idx = [i for i in np.argsort(times, kind="stable") if orbits[i] == orbit]
        for a, b in itertools.pairwise(idx):
            nxt[a], prev[b] = b, a
    return prev, nxt


def _check_dates(start: Any, end: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """UTC start and end (a date as ``end`` covers that whole day)."""
    from latentcube.cube.stac import _parse_time

    if start is None or end is None:
        raise StacError(f"start and end are required dates, got start={start!r}, end={end!r}")
    try:
        t0, t1 = _parse_time(start, False), _parse_time(end, True)
    except (ValueError, TypeError) as err:
        raise StacError(f"cannot read the dates start={start!r}, end={end!r}: {err}") from None
    if pd.isna(t0) or pd.isna(t1):
        raise StacError(f"start and end are required dates, got start={start!r}, end={end!r}")
    if t0 > t1:
        raise StacError(f"start {t0.date()} is after end {t1.date()}: give the dates in time order")
    return t0, t1


def _grid(
    lat: float | None,
    lon: float | None,
    size_m: float | None,
    bbox: Sequence[float] | None,
    resolution: float,
) -> GridInfo:
    if bbox is not None:
        if any(v is not None for v in (lat, lon, size_m)):
            raise StacError("give either bbox or lat/lon/size_m, not both")
        if len(bbox) != 4:
            raise StacError(f"bbox must be (west, south, east, north) in degrees, got {bbox}")
        w, s, e, n = (float(v) for v in bbox)
        return grid_info_bbox(w, s, e, n, resolution)
    if lat is None or lon is None or size_m is None:
        raise StacError("give lat, lon and size_m (or bbox) for the place of the cube")
    return grid_info(float(lat), float(lon), float(size_m), resolution)


def _lonlat_bbox(info: GridInfo) -> list[float]:
    from pyproj import Transformer

    bb = info.geobox.boundingbox
    tr = Transformer.from_crs(f"EPSG:{info.epsg}", "EPSG:4326", always_xy=True)
    w, s, e, n = tr.transform_bounds(bb.left, bb.bottom, bb.right, bb.top, densify_pts=21)
    return [float(w), float(s), float(e), float(n)]


def _s2_offset_key(item: Any) -> str | None:
    """The processing baseline to use for the offset, None when none applies.

    Earth Search sets ``earthsearch:boa_offset_applied`` when its COGs already
    carry harmonised values; the offset is then not removed again.
    """
    if item.properties.get("earthsearch:boa_offset_applied") is True:
        return None
    base = item.properties.get("s2:processing_baseline")
    return None if base is None else str(base)


def _metadata_hrefs(items: Sequence[Any]) -> list[str | None]:
    from latentcube.cube.nbar import METADATA_ASSETS, require_sen2nbar

    require_sen2nbar()
    out: list[str | None] = []
    for it in items:
        key = next((k for k in METADATA_ASSETS if k in it.assets), None)
        if key is None:
            raise StacError(
                f"nbar=True needs the granule metadata of every S2 item; item {it.id!r} has "
                f"no asset {' or '.join(METADATA_ASSETS)} (it has {', '.join(sorted(it.assets))})"
            )
        out.append(it.assets[key].get_absolute_href() or it.assets[key].href)
    return out


def _plan(
    info: GridInfo,
    t0: pd.Timestamp,
    t1: pd.Timestamp,
    catalog: str,
    spec: CubeSpec,
    mask_name: str,
) -> _Plan:
    cat = resolve_catalog(catalog)
    client = open_client(cat, max_retries=spec.max_retries, backoff=spec.backoff)
    bbox = _lonlat_bbox(info)
    s2_items = search_items(client, cat, "s2", bbox=bbox, start=t0, end=t1)
    if spec.max_cloud_cover is not None:
        s2_items = [
            it
            for it in s2_items
            if float(it.properties.get("eo:cloud_cover", 0.0)) <= spec.max_cloud_cover
        ]
    where = f"lon/lat box {[round(v, 5) for v in bbox]}"
    if not s2_items:
        raise StacError(
            f"no Sentinel-2 items in catalog {cat.name!r} for {where} between "
            f"{t0.date()} and {t1.date()}"
            + (f" with eo:cloud_cover <= {spec.max_cloud_cover}" if spec.max_cloud_cover else "")
        )
    s2_assets = resolve_assets(s2_items, {b: S2_ASSETS[b] for b in (*spec.s2_bands, "SCL")})
    s2_groups, s2_times = group_items(s2_items)
    collections = {"s2": str(cat.collections.get("s2"))}
    s1_items: list[Any] = []
    s1_groups: list[list[int]] = []
    s1_times = np.array([], "datetime64[ns]")
    s1_orbits: list[str] = []
    s1_assets: dict[str, str] = {}
    s1_match = np.full(len(s2_times), -1, np.int64)
    prev = nxt = np.array([], np.int64)
    if "s1" in spec.sensors:
        pad = pd.Timedelta(days=spec.s1_max_gap_days + 15 * spec.s1_window)
        s1_items = search_items(client, cat, "s1", bbox=bbox, start=t0 - pad, end=t1 + pad)
        if spec.s1_orbit != "both":
            s1_items = [
                it for it in s1_items if it.properties.get("sat:orbit_state") == spec.s1_orbit
            ]
        if not s1_items:
            raise StacError(
                f"no Sentinel-1 RTC items in catalog {cat.name!r} for {where} between "
                f"{(t0 - pad).date()} and {(t1 + pad).date()}"
                + (f" ({spec.s1_orbit} orbits)" if spec.s1_orbit != "both" else "")
                + "; build an S2-only cube with sensors=('s2',)"
            )
        s1_assets = resolve_assets(s1_items, S1_ASSETS)
        s1_groups, s1_times = group_items(s1_items, by_orbit=True)
        s1_orbits = [str(s1_items[g[0]].properties.get("sat:orbit_state", "")) for g in s1_groups]
        s1_match, _gap = match_dates(s2_times, s1_times, spec.s1_max_gap_days)
        prev, nxt = _neighbours(s1_times, s1_orbits)
        collections["s1"] = str(cat.collections.get("s1"))
    return _Plan(
        info=info,
        spec=spec,
        catalog=cat.name,
        catalog_url=cat.url,
        collections=collections,
        s2_items=s2_items,
        s2_groups=s2_groups,
        s2_times=s2_times,
        s2_assets=s2_assets,
        s2_offsets=[_s2_offset_key(it) for it in s2_items],
        s2_metadata=_metadata_hrefs(s2_items) if spec.nbar else [None] * len(s2_items),
        s1_items=s1_items,
        s1_groups=s1_groups,
        s1_times=s1_times,
        s1_orbits=s1_orbits,
        s1_assets=s1_assets,
        s1_match=s1_match,
        s1_prev=prev,
        s1_next=nxt,
        sign=needs_signing(cat, [*s2_items[:1], *s1_items[:1]]),
        mask_name=mask_name,
        s2_aligned=grid_aligned(
            s2_items, s2_assets, info.geobox, info.epsg,
            {"*": spec.resampling_s2, "SCL": "nearest"},
        ),
        s1_aligned=bool(s1_items)
        and grid_aligned(s1_items, s1_assets, info.geobox, info.epsg, {"*": spec.resampling_s1}),
    )  # fmt: skip


# --------------------------------------------------------------------------- units


def _padded(geobox: Any, ys: slice, xs: slice, halo: int) -> Any:
    """The sub-grid ``[ys, xs]`` grown by ``halo`` pixels (also beyond the grid)."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    a = geobox.affine
    ny, nx = ys.stop - ys.start + 2 * halo, xs.stop - xs.start + 2 * halo
    origin = a * (xs.start - halo, ys.start - halo)
    return GeoBox((ny, nx), Affine(a.a, 0.0, origin[0], 0.0, a.e, origin[1]), geobox.crs)


def _load_with_retries(fn: Any, spec: CubeSpec, what: str) -> Any:
    """Run one load, repeating it as a whole (re-signed, GDAL cache bypassed) on failure."""
    retried = False

    def bypass_cache() -> None:
        nonlocal retried
        retried = True
        configure_http(spec.max_retries, max(spec.backoff, 0.01), cache=False)

    try:
        return with_retries(
            fn,
            what=what,
            max_retries=spec.max_retries,
            backoff=spec.backoff,
            on_retry=bypass_cache,
        )
    finally:
        if retried:
            configure_http(spec.max_retries, max(spec.backoff, 0.01))


def _read(
    plan: _Plan,
    aligned: bool,
    items: Sequence[Any],
    assets: dict[str, str],
    gb: Any,
    *,
    dtype: str,
    nodata: float | int,
    resampling: dict[str, str],
    geoboxes: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Read bands onto ``gb``, or ``geoboxes[band]``: unwarped when aligned, else odc-stac."""
    patch = signer(plan.sign)
    if aligned:
        try:
            return read_aligned(
                items, assets, gb, dtype=dtype, nodata=nodata, patch_url=patch,
                pool=plan.spec.pool, geoboxes=geoboxes,
            )  # fmt: skip
        except NotAligned:  # a file disagrees with its STAC metadata: warp it
            pass
    other = {b: k for b, k in assets.items() if b not in (geoboxes or {})}
    out = {}
    for g, sub in [(gb, other)] + [(g, {b: assets[b]}) for b, g in (geoboxes or {}).items()]:
        if sub:
            out.update(load_items(
                items, sub, g, dtype=dtype, nodata=nodata, resampling=resampling,
                patch_url=patch, pool=plan.spec.pool,
            ))  # fmt: skip
    return out


def _s2_luts(plan: _Plan, idx: Sequence[int]) -> list[np.ndarray]:
    """DN -> reflectance of every item as a 65536-entry float32 table (one gather per band)."""
    luts: dict[str | None, np.ndarray] = {}
    for i in idx:
        key = plan.s2_offsets[i]
        if key not in luts:
            luts[key] = remove_baseline_offset(np.arange(65536, dtype=np.uint16), key)
    return [luts[plan.s2_offsets[i]] for i in idx]


def _load_s2(
    plan: _Plan, dates: Sequence[int], ys: slice, xs: slice, mask: MaskFunction
) -> tuple[np.ndarray, np.ndarray]:
    """One unit's S2: reflectance (date, band, y, x) and valid mask (date, y, x).

    With the default :class:`SCLMask` (and without NBAR) the bands are read
    without the mask's halo (only SCL needs it), and every output plane is
    computed from its DNs straight into the result, date by date and band by
    band (:func:`_merge_s2_planes`). Other mask functions get the reflectance
    of all items with the halo (:func:`_merge_s2_items`); both give the same
    cube (tested).
    """
    spec = plan.spec
    halo = int(getattr(mask, "halo", 0))
    groups = [plan.s2_groups[d] for d in dates]
    idx = [i for g in groups for i in g]
    items = [plan.s2_items[i] for i in idx]
    planes = type(mask) is SCLMask and all(h is None for h in plan.s2_metadata)
    gb_scl = _padded(plan.info.geobox, ys, xs, halo)
    gb = _padded(plan.info.geobox, ys, xs, 0) if planes else gb_scl
    bands = spec.s2_bands

    arrays = _load_with_retries(
        lambda: _read(
            plan, plan.s2_aligned, items, plan.s2_assets, gb, dtype="uint16", nodata=0,
            resampling={"*": spec.resampling_s2, "SCL": "nearest"},
            geoboxes={"SCL": gb_scl} if gb_scl is not gb else None,
        ),
        spec,
        f"loading S2 dates {dates[0]}-{dates[-1]}",
    )  # fmt: skip
    crop = (slice(halo, halo + ys.stop - ys.start), slice(halo, halo + xs.stop - xs.start))
    scl = arrays["SCL"].astype(np.uint8, copy=False)
    if planes:
        assert isinstance(mask, SCLMask)
        clear = mask.clear(scl)[(..., *crop)]
        offsets = [baseline_offset(plan.s2_offsets[i]) for i in idx]
        return _merge_s2_planes(arrays, bands, offsets, clear, groups)
    luts = _s2_luts(plan, idx)
    return _merge_s2_items(plan, arrays, bands, luts, idx, groups, gb, crop, mask)


def _merge_s2_planes(
    arrays: dict[str, np.ndarray],
    bands: Sequence[str],
    offsets: Sequence[float],
    clear: np.ndarray,
    groups: Sequence[Sequence[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance and validity of a unit's dates, one output plane at a time.

    An item's pixel is valid where ``clear`` and every band has data (DN > 0);
    the items of one date are merged in order, the first valid pixel wins;
    pixels no item covers are NaN. Reflectance is computed with
    :func:`~latentcube.cube.sentinel2.reflectance_into` from each item's DN
    ``offsets`` (a few arithmetic passes: about 5x faster than a gather from a
    65536-entry table, which numpy does through an int64 copy of the DNs).
    Same result as :func:`_merge_s2_items` without its full-size float
    temporaries.
    """
    ny, nx = clear.shape[1:]
    valid = clear.copy()
    for k in range(len(offsets)):
        for band in bands:
            valid[k] &= arrays[band][k] != 0
    out = np.empty((len(groups), len(bands), ny, nx), np.float32)
    out_valid = np.zeros((len(groups), ny, nx), bool)
    takes: list[list[tuple[int, np.ndarray]]] = []
    k = 0
    for d, g in enumerate(groups):
        take = []
        for _ in g:
            t = valid[k] & ~out_valid[d]
            out_valid[d] |= t
            take.append((k, t))
            k += 1
        takes.append(take)
    tmp = np.empty((ny, nx), np.float32)
    nan = np.float32(np.nan)
    for d, take in enumerate(takes):
        missing = ~out_valid[d]
        for b, band in enumerate(bands):
            dst = out[d, b]
            (k0, _), *rest = take
            reflectance_into(arrays[band][k0], offsets[k0], dst)
            for kk, t in rest:
                reflectance_into(arrays[band][kk], offsets[kk], tmp)
                np.copyto(dst, tmp, where=t)
            np.copyto(dst, nan, where=missing)
    return out, out_valid


def _merge_s2_items(
    plan: _Plan,
    arrays: dict[str, np.ndarray],
    bands: Sequence[str],
    luts: Sequence[np.ndarray],
    idx: Sequence[int],
    groups: Sequence[Sequence[int]],
    gb: Any,
    crop: tuple[slice, slice],
    mask: MaskFunction,
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance of every item (with the halo), NBAR, any mask function, then the merge."""
    spec = plan.spec
    patch = signer(plan.sign)
    refl = np.empty((len(idx), len(bands), *gb.shape), np.float32)
    for k, i in enumerate(idx):
        for b, band in enumerate(bands):
            np.take(luts[k], arrays[band][k], out=refl[k, b])
        href = plan.s2_metadata[i]
        if href is not None:
            from latentcube.cube.nbar import nbar_factor

            factor = with_retries(
                functools.partial(nbar_factor, href, gb, bands, patch_url=patch),
                what=f"reading the granule metadata of {plan.s2_items[i].id}",
                max_retries=spec.max_retries,
                backoff=spec.backoff,
            )
            refl[k] = np.clip(refl[k] * factor, 0.0, 1.0)
    scl = arrays["SCL"].astype(np.uint8, copy=False)
    valid = np.asarray(mask(refl, scl, bands), dtype=bool)
    if valid.shape != scl.shape:
        raise StacError(f"the mask function returned shape {valid.shape}, expected {scl.shape}")
    valid &= np.isfinite(refl).all(axis=1)
    refl, valid = refl[(..., *crop)], valid[(..., *crop)]
    # merge the items of one date: the first clear pixel (time, then id order) wins
    out = np.full((len(groups), len(bands), *refl.shape[2:]), np.nan, np.float32)
    out_valid = np.zeros((len(groups), *refl.shape[2:]), bool)
    k = 0
    for d, g in enumerate(groups):
        for _ in g:
            take = valid[k] & ~out_valid[d]
            np.copyto(out[d], refl[k], where=take[None])
            out_valid[d] |= take
            k += 1
    return out, out_valid


def _s1_linear(
    plan: _Plan, order: Sequence[int], arrays: dict[str, np.ndarray]
) -> dict[tuple[int, int], np.ndarray]:
    """Linear power per (S1 group, band): the tiles of one acquisition fused, first finite wins.

    Non-positive power (and no data) is NaN. Works in place on ``arrays``.
    """
    nan = np.float32(np.nan)
    lin: dict[tuple[int, int], np.ndarray] = {}
    for b, band in enumerate(S1_BANDS):
        a = arrays[band].astype(np.float32, copy=False)
        k = 0
        for g in order:
            acc = a[k]
            np.copyto(acc, nan, where=~(acc > 0))
            k += 1
            for _ in plan.s1_groups[g][1:]:
                nxt = a[k]
                np.copyto(nxt, nan, where=~(nxt > 0))
                np.copyto(acc, nxt, where=np.isnan(acc))
                k += 1
            lin[g, b] = acc
    return lin


def _load_s1(
    plan: _Plan, dates: Sequence[int], ys: slice, xs: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised S1 backscatter (date, band, y, x) and its valid mask of one unit.

    In float32 throughout (see ``docs/design.md``: within 5e-7 of the float64
    chain, tested): centred NaN-aware mean of the linear power over
    ``s1_window`` acquisitions of one orbit direction (pandas
    ``rolling(window, center=True, min_periods=1).mean()``), dB, clip, scale.
    """
    spec = plan.spec
    shape = (ys.stop - ys.start, xs.stop - xs.start)
    out = np.full((len(dates), len(S1_BANDS), *shape), np.nan, np.float32)
    match = plan.s1_match[np.asarray(dates, np.int64)]
    half = spec.s1_window // 2
    windows: list[list[int]] = []  # per date: its acquisition, then prev/next pairs outwards
    for m in match:
        win = [int(m)] if m >= 0 else []
        prev = nxt = int(m)
        for _ in range(half if m >= 0 else 0):
            prev = int(plan.s1_prev[prev]) if prev >= 0 else -1
            nxt = int(plan.s1_next[nxt]) if nxt >= 0 else -1
            win += [n for n in (prev, nxt) if n >= 0]
        windows.append(win)
    order = sorted({g for w in windows for g in w})
    if not order:
        return out, np.zeros((len(dates), *shape), bool)
    idx = [i for g in order for i in plan.s1_groups[g]]
    items = [plan.s1_items[i] for i in idx]
    gb = _padded(plan.info.geobox, ys, xs, 0)
    arrays = _load_with_retries(
        lambda: _read(
            plan, plan.s1_aligned, items, plan.s1_assets, gb, dtype="float32",
            nodata=float("nan"), resampling={"*": spec.resampling_s1},
        ),
        spec,
        f"loading S1 for S2 dates {dates[0]}-{dates[-1]}",
    )  # fmt: skip
    lin = _s1_linear(plan, order, arrays)
    lo, hi = (np.float32(v) for v in DB_RANGE)
    total = np.empty(shape, np.float32)
    count = np.empty(shape, np.float32)
    fin = np.empty(shape, bool)
    for d, win in enumerate(windows):
        for b in range(len(S1_BANDS)):
            if not win:
                continue
            total.fill(0)
            count.fill(0)
            for g in win:
                np.isfinite(lin[g, b], out=fin)
                np.add(total, lin[g, b], out=total, where=fin)
                count += fin
            dst = out[d, b]
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(total, count, out=dst)  # 0 / 0: NaN where no acquisition has data
                np.log10(dst, out=dst)
            dst *= np.float32(10.0)
            np.clip(dst, lo, hi, out=dst)
            dst -= lo
            dst /= hi - lo
    valid = np.asarray(np.isfinite(out).all(axis=1))
    np.copyto(out, np.float32(np.nan), where=~valid[:, None])
    return out, valid


# --------------------------------------------------------------------------- stores


#: Codec of the cube's data variables: Blosc with LZ4 (level 5) after a byte
#: shuffle. Units are compressed as they are written (there is no second pass
#: over the data), so the codec is on the critical path. On real reflectance
#: (a 1024 x 1024 px S2 cube, benchmarks/bench_cube.py) it encodes 3.9x and
#: decodes 3.8x faster than Zstandard level 1 (the codec until 2026-12-02) for a
#: 23 % larger store (1.83x against 2.25x); docs/design.md, "Chunks".
CODEC: dict[str, Any] = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}


def _codecs() -> dict[str, Any]:
    from zarr.codecs import BloscCodec

    return {"compressors": (BloscCodec(**CODEC),)}


def _compressor_doc(dtype: np.dtype[Any]) -> dict[str, Any]:
    """The ``zarr.json`` entry of :data:`CODEC` for ``dtype``, as zarr writes it."""
    return {"name": "blosc", "configuration": {"typesize": dtype.itemsize, **CODEC, "blocksize": 0}}


def _compressor() -> Any:
    """:data:`CODEC` as the numcodecs codec that encodes a chunk (typesize: its itemsize)."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
               "bitshuffle": Blosc.BITSHUFFLE}[CODEC["shuffle"]]  # fmt: skip
    return Blosc(cname=CODEC["cname"], clevel=CODEC["clevel"], shuffle=shuffle)


def _store_chunks(plan: _Plan, nt: int) -> tuple[int, int, int]:
    """(time, y, x) chunks of a store written unit by unit: every unit covers whole chunks.

    ``gcd(time_chunk, chunks["time"])`` dates and ``gcd(tile, chunks["y"|"x"])``
    pixels (clipped to the cube), so that each chunk file is written by exactly
    one unit: no read-modify-write, units can run concurrently, and a chunk torn
    by a kill is rewritten whole on resume.
    """
    spec = plan.spec
    ny, nx = plan.info.geobox.shape
    ct = math.gcd(spec.time_chunk, spec.chunks.get("time", 16))
    cy = math.gcd(spec.tile, spec.chunks.get("y", 256))
    cx = math.gcd(spec.tile, spec.chunks.get("x", 256))
    return min(ct, nt), min(cy, ny), min(cx, nx)


_Coords = dict[str, tuple[str, np.ndarray]]
_DataVars = dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], Any]]


def _layout(plan: _Plan, dates: np.ndarray) -> tuple[_Coords, _DataVars]:
    """The store of the candidate ``dates``: coordinates and data variables.

    Coordinates as ``name -> (dim, values)``, data variables as
    ``name -> (dims, shape, chunks, dtype)``.
    """
    gb = plan.info.geobox
    ny, nx = gb.shape
    nt = len(dates)
    spec = plan.spec
    ct, cy, cx = _store_chunks(plan, nt)
    nb = len(spec.s2_bands)
    coords = gb.coordinates
    c: _Coords = {
        "time": ("time", plan.s2_times[dates]),
        "band": ("band", np.array(spec.s2_bands, dtype=object)),
        "y": ("y", coords["y"].values.astype(np.float64)),
        "x": ("x", coords["x"].values.astype(np.float64)),
    }
    data: _DataVars = {
        "s2": (("time", "band", "y", "x"), (nt, nb, ny, nx), (ct, nb, cy, cx), np.float32),
        "s2_valid": (("time", "y", "x"), (nt, ny, nx), (ct, cy, cx), np.bool_),
    }
    if plan.with_s1:
        c["s1_band"] = ("s1_band", np.array(S1_BANDS, dtype=object))
        c["s1_time"] = ("time", plan.s1_time()[dates])
        c["s1_orbit"] = ("time", plan.s1_orbit()[dates].astype(object))
        data["s1"] = (("time", "s1_band", "y", "x"), (nt, 2, ny, nx), (ct, 2, cy, cx), np.float32)
        data["s1_valid"] = (("time", "y", "x"), (nt, ny, nx), (ct, cy, cx), np.bool_)
    return c, data


def _template(plan: _Plan, dates: np.ndarray) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The cube of the candidate ``dates`` (lazy, all masked) and its encoding.

    The store's layout as an xarray dataset: :func:`_write_store` writes the
    same store without building it (tested: identical documents and
    coordinate chunks to ``_template(...).to_zarr(...)``).
    """
    import dask.array as dsa

    c, data = _layout(plan, dates)
    data_vars = {
        name: (dims, dsa.full(shape, np.nan if np.dtype(dt).kind == "f" else False, dtype=dt,
                              chunks=chunks))
        for name, (dims, shape, chunks, dt) in data.items()
    }  # fmt: skip
    ds = xr.Dataset(data_vars, coords=c)
    ds = ds.rio.write_crs(f"EPSG:{plan.info.epsg}")
    ds = ds.rio.set_spatial_dims(x_dim="x", y_dim="y")
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc[str(name)] = {"chunks": var.data.chunksize, **_codecs()}
        gm = var.encoding.get("grid_mapping") or var.attrs.get("grid_mapping")
        if gm:  # an explicit encoding must keep the CRS link
            enc[str(name)]["grid_mapping"] = gm
    return ds, enc


#: Zarr's default compressor, with which xarray writes the coordinates.
_ZSTD0 = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}

#: ``_FillValue`` attribute xarray writes for a NaN fill value (float64 NaN, base64).
_NAN_ATTR = "AAAAAAAA+H8="


def _array_doc(
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: np.dtype[Any],
    dims: Sequence[str],
    attrs: dict[str, Any],
    compressor: dict[str, Any],
) -> dict[str, Any]:
    """Zarr v3 ``zarr.json`` of an array, as xarray writes it (see ``_write_store``).

    ``compressor`` is the codec entry after ``bytes``: :data:`_ZSTD0` for
    coordinates, :func:`_compressor_doc` for data variables.
    """
    fill: str | bool | int
    if dtype.kind in "OUT":
        data_type, fill, codecs = "string", "", [{"name": "vlen-utf8", "configuration": {}}]
    else:
        data_type = dtype.name
        fill = "NaN" if dtype.kind == "f" else (False if dtype.kind == "b" else 0)
        endian = {} if dtype.itemsize == 1 else {"configuration": {"endian": "little"}}
        codecs = [{"name": "bytes", **endian}]
        if dtype.kind == "f":
            attrs = {**attrs, "_FillValue": _NAN_ATTR}
    return {
        "shape": list(shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [*codecs, compressor],
        "attributes": attrs,
        **({"dimension_names": list(dims)} if dims else {}),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


@functools.cache
def _crs_attrs(epsg: int) -> dict[str, Any]:
    """The ``spatial_ref`` attributes rioxarray writes for a CRS (CF grid mapping)."""
    ds = xr.Dataset(coords={"y": [0.0], "x": [0.0]}).rio.write_crs(f"EPSG:{epsg}")
    return dict(_json_attrs(dict(ds["spatial_ref"].attrs)))


def _write_store(store: Path, plan: _Plan, dates: np.ndarray, attrs: dict[str, Any]) -> None:
    """Create the cube's empty store for the candidate ``dates``: metadata and coordinates.

    Writes the ``zarr.json`` documents and coordinate chunks directly, with
    the same layout, encodings and CF attributes as ``_template(...).to_zarr``
    (tested: the same documents, an identical dataset when opened), without
    building a dataset (most of a small build's fixed cost). Coordinates are
    CF-encoded by xarray (:func:`xarray.conventions.encode_cf_variable`) and
    compressed with zarr's default Zstandard level, data variables get the
    cube's chunks and codec and hold no chunk yet (all fill value).
    """
    from numcodecs import VLenUTF8, Zstd
    from xarray.conventions import encode_cf_variable

    c, data = _layout(plan, dates)
    group = {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
    docs: dict[str, dict[str, Any]] = {"": group}
    chunks: dict[str, bytes] = {}
    zstd = Zstd(level=0)  # zarr's default level, as xarray writes coordinates
    for name, (dim, values) in c.items():
        var = encode_cf_variable(xr.Variable(dim, values), name=name)
        arr = np.asarray(var.values)
        attrs_v = _json_attrs({k: v for k, v in var.attrs.items() if k != "_FillValue"})
        docs[name] = _array_doc(arr.shape, arr.shape, arr.dtype, [dim], attrs_v, _ZSTD0)
        if arr.dtype.kind in "OUT":
            empty, raw = bool((arr == "").all()), VLenUTF8().encode(arr)
        else:
            empty = bool(np.isnan(arr).all() if arr.dtype.kind == "f" else (arr == 0).all())
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        if not empty:  # zarr writes no chunk that holds only the fill value
            chunks[f"{name}/c/0"] = bytes(zstd.encode(raw))
    docs["spatial_ref"] = _array_doc(
        (), (), np.dtype(np.int64), [], _crs_attrs(plan.info.epsg), _ZSTD0
    )
    link = {"grid_mapping": "spatial_ref"}
    if plan.with_s1:
        link = {"coordinates": "s1_orbit s1_time", **link}
    for name, (dims, shape, chunk, dtype) in data.items():
        docs[name] = _array_doc(
            shape, chunk, np.dtype(dtype), dims, dict(link), _compressor_doc(np.dtype(dtype))
        )
    store.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        folder = store / name if name else store
        folder.mkdir(exist_ok=True)
        (folder / "zarr.json").write_text(json.dumps(doc, allow_nan=False))
    for key, blob in chunks.items():
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(blob)


def _write_chunks(
    array: Path,
    data: np.ndarray,
    origin: Sequence[int],
    chunks: Sequence[int],
    shape: Sequence[int],
) -> None:
    """Encode ``data`` (placed at ``origin`` of an array of ``shape``) into chunk files.

    The block of a unit covers whole chunks of its store (:func:`_store_chunks`),
    so every chunk is encoded and written once, as zarr writes it for this
    store's metadata (:func:`_array_doc`): C order, little endian, :data:`CODEC`
    (typesize: the itemsize), key ``c/i/j/...``, a chunk at the
    array's edge padded to the full chunk shape with the fill value (NaN,
    False). Tested byte for byte against ``zarr.Array.__setitem__``. Zarr's
    own write path is not used here: for each chunk it copies the block into a
    fill-value chunk, and it hands every chunk between its event-loop and
    worker threads; on a 1024 x 1024 px build that was about 0.22 CPU-s
    against about 0.09 CPU-s for the encoding itself (per-thread CPU times; see
    docs/design.md, "Chunk writes").
    A chunk torn by a kill is rewritten whole on resume (its unit has no
    marker yet).
    """
    if any(o % c for o, c in zip(origin, chunks, strict=True)):
        raise ValueError(f"internal error: block at {tuple(origin)} is not on the chunk grid")
    codec = _compressor()
    fill = np.nan if data.dtype.kind == "f" else 0
    dtype = data.dtype.newbyteorder("<")
    starts = [range(0, n, c) for n, c in zip(data.shape, chunks, strict=True)]
    for corner in itertools.product(*starts):
        sel = tuple(slice(a, a + c) for a, c in zip(corner, chunks, strict=True))
        block = data[sel]
        # the chunk's extent inside the array; beyond it, padding with the fill value
        inside = [
            min(c, n - o - a) for c, n, o, a in zip(chunks, shape, origin, corner, strict=True)
        ]
        if inside != list(block.shape):  # a block must end at a chunk boundary or the edge
            raise ValueError(f"internal error: block at {tuple(origin)} is not on the chunk grid")
        if inside != list(chunks):
            padded = np.full(chunks, fill, dtype)
            padded[tuple(slice(0, n) for n in inside)] = block
            block = padded
        key = [(o + a) // c for o, a, c in zip(origin, corner, chunks, strict=True)]
        path = array.joinpath("c", *map(str, key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(codec.encode(np.ascontiguousarray(block, dtype=dtype)))


def _tiles(plan: _Plan) -> list[tuple[slice, slice]]:
    ny, nx = plan.info.geobox.shape
    tile = plan.spec.tile
    return [
        (slice(i, min(i + tile, ny)), slice(j, min(j + tile, nx)))
        for i in range(0, ny, tile)
        for j in range(0, nx, tile)
    ]


def _units(plan: _Plan, nt: int) -> list[tuple[int, int, int]]:
    """(time block, tile row, tile column) of ``nt`` candidate dates."""
    ny, nx = plan.info.geobox.shape
    ct, tile = plan.spec.time_chunk, plan.spec.tile
    return [
        (k, i, j)
        for k in range(-(-nt // ct))
        for i in range(-(-ny // tile))
        for j in range(-(-nx // tile))
    ]


def _screen(plan: _Plan, mask: MaskFunction) -> np.ndarray | None:
    """Per S2 date, the number of pixels the default mask leaves clear, from SCL alone.

    Reads only the SCL asset (tile by tile, with the dilation's halo). For the
    default :class:`SCLMask` this is an upper bound of the date's valid pixels
    (the build also masks pixels without data in some band), so a date whose
    count is below ``min_valid_fraction`` (or 0) cannot be kept and is never
    read in full. None for other mask functions, which need every band.
    """
    if type(mask) is not SCLMask:
        return None
    spec = plan.spec
    halo = mask.halo
    counts = np.zeros(len(plan.s2_times), np.int64)
    blocks = [range(d, min(d + spec.time_chunk, len(plan.s2_times)))
              for d in range(0, len(plan.s2_times), spec.time_chunk)]  # fmt: skip
    for ys, xs in _tiles(plan):
        gb = _padded(plan.info.geobox, ys, xs, halo)
        crop = (slice(halo, halo + ys.stop - ys.start), slice(halo, halo + xs.stop - xs.start))
        for dates in blocks:
            groups = [plan.s2_groups[d] for d in dates]
            items = [plan.s2_items[i] for g in groups for i in g]
            scl = _load_with_retries(
                lambda items=items, gb=gb: _read(
                    plan, plan.s2_aligned, items, {"SCL": plan.s2_assets["SCL"]}, gb,
                    dtype="uint8", nodata=0, resampling={"*": "nearest"},
                )["SCL"],
                spec,
                f"screening S2 dates {dates[0]}-{dates[-1]}",
            )  # fmt: skip
            clear = mask.clear(scl)[(..., *crop)]
            k = 0
            for d, g in zip(dates, groups, strict=True):
                counts[d] += int(np.logical_or.reduce(clear[k : k + len(g)], axis=0).sum())
                k += len(g)
    return counts


def _check_unit(sensor: str, data: np.ndarray, valid: np.ndarray) -> None:
    """The data model's value rules on one unit, while it is in memory.

    Valid pixels are finite and in [0, 1], invalid ones NaN; checked here so
    that the finished store needs no second full read to be validated. One
    NaN-ignoring min/max pass over the data (an infinity falls outside
    [0, 1]) and one NaN test per (date, band) plane against the valid mask,
    without full-size temporaries.
    """
    if data.size == 0:
        return
    lo, hi = np.fmin.reduce(data, axis=None), np.fmax.reduce(data, axis=None)
    if bool(lo < 0.0) or bool(hi > 1.0):  # NaN (no valid pixel at all) compares False
        raise StacError(f"internal error: {sensor} values outside [0, 1]")
    nan = np.empty(data.shape[2:], bool)
    for t in range(data.shape[0]):
        for b in range(data.shape[1]):
            np.isnan(data[t, b], out=nan)
            np.equal(nan, valid[t], out=nan)  # NaN at a valid pixel, or a value at an invalid one
            if nan.any():
                raise StacError(f"internal error: {sensor} values and {sensor}_valid disagree")


def _run_unit(
    plan: _Plan,
    unit: tuple[int, int, int],
    store: Path,
    mask: MaskFunction,
    candidates: np.ndarray,
) -> list[int]:
    """Load, check and write one unit; returns its valid S2 pixel count per date."""
    return _process_unit(plan, unit, store, mask, candidates, None)[0]


def _process_unit(
    plan: _Plan,
    unit: tuple[int, int, int],
    store: Path,
    mask: MaskFunction,
    candidates: np.ndarray,
    submit: Any,
    last: bool = False,
) -> tuple[list[int], list[Any]]:
    """Load one unit, then check and write it, or hand the check and write to ``submit``.

    With ``submit`` (the writer thread's ``submit``) S1 is loaded on a helper
    thread while S2 is read and merged here, and the checks and compressed
    writes run on the writer thread while the next unit is read; the caller
    waits for the returned futures (which raise what the checks raise) before
    it marks the unit done. The ``last`` unit has no next unit to overlap, so
    this thread writes half of its S2 chunk rows and its S1 while the writer
    thread writes the other half (measured: 0.85-0.91x the wall time of a 512 px
    build, a single unit). Returns the valid S2 pixel count per date and the
    futures.
    """
    k, i, j = unit
    spec = plan.spec
    configure_http(spec.max_retries, max(spec.backoff, 0.01))  # also in Dask workers
    ny, nx = plan.info.geobox.shape
    ts = slice(k * spec.time_chunk, min((k + 1) * spec.time_chunk, len(candidates)))
    dates = [int(d) for d in candidates[ts]]
    ys = slice(i * spec.tile, min((i + 1) * spec.tile, ny))
    xs = slice(j * spec.tile, min((j + 1) * spec.tile, nx))

    ct, cy, cx = _store_chunks(plan, len(candidates))

    def write(
        sensor: str, data: np.ndarray, valid: np.ndarray, rows: slice = slice(0, None),
        check: bool = True,
    ) -> None:  # fmt: skip
        """Check the unit (``check``) and write its chunk ``rows`` (from a chunk boundary)."""
        if check:
            _check_unit(sensor, data, valid)
        nt, nb, y0 = len(candidates), data.shape[1], ys.start + rows.start
        # straight to the chunk files (see _write_chunks), every chunk of the unit
        # also when it holds fill values only (rare in a cube, a few bytes each)
        _write_chunks(store / sensor, data[..., rows, :], (ts.start, 0, y0, xs.start),
                      (ct, nb, cy, cx), (nt, nb, ny, nx))  # fmt: skip
        _write_chunks(store / f"{sensor}_valid", valid[:, rows, :], (ts.start, y0, xs.start),
                      (ct, cy, cx), (nt, ny, nx))  # fmt: skip

    s1 = None
    if plan.with_s1 and submit is not None:
        # in a copy of this context: the helper reads through the same open datasets
        s1 = _helper().submit(contextvars.copy_context().run, _load_s1, plan, dates, ys, xs)
    futures: list[Any] = []
    try:
        s2, s2v = _load_s2(plan, dates, ys, xs, mask)
        counts = [int(v) for v in s2v.sum(axis=(1, 2))]
        half = cy * (-(-s2.shape[-2] // cy) // 2)  # the first half of the unit's chunk rows
        if submit is None:
            write("s2", s2, s2v)
        elif last and half:  # no next unit to read: this thread writes half of the rows
            _check_unit("s2", s2, s2v)
            futures.append(submit(write, "s2", s2, s2v, slice(0, half), False))
            write("s2", s2, s2v, slice(half, None), False)
        else:  # checked and written on the writer thread while this one reads the next unit
            futures.append(submit(write, "s2", s2, s2v))
    except BaseException:
        if s1 is not None:  # no load left running behind a failed unit
            s1.cancel() or s1.exception()
        raise
    del s2, s2v
    if plan.with_s1:
        s1a, s1v = _load_s1(plan, dates, ys, xs) if s1 is None else s1.result()
        if submit is None or last:
            write("s1", s1a, s1v)
        else:
            futures.append(submit(write, "s1", s1a, s1v))
    return counts, futures


@functools.cache
def _helper() -> Any:
    """One thread that loads a unit's S1 while its S2 is loaded (kept for the process)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentcube-s1")


def _run_serial(
    plan: _Plan,
    todo: Sequence[tuple[int, int, int]],
    staging: _Staging,
    mask: MaskFunction,
    candidates: np.ndarray,
    bar: Any,
    create: Any = None,
) -> None:
    """Units one after the other in this process; checks and writes overlap the next reads.

    One writer thread first creates the store (``create``, from
    :meth:`_Staging.open`) while the first unit is read, then checks,
    compresses and writes each unit's chunks while this thread reads and
    merges the next unit (the last unit's writes are shared by both threads);
    a unit is marked done only when all its writes have finished, and at most
    one unit is being written while the next is loaded (memory: two units).
    """
    from concurrent.futures import ThreadPoolExecutor

    pending: tuple[tuple[int, int, int], list[int], list[Any]] | None = None

    def finish() -> None:
        nonlocal pending
        if pending is not None:
            unit, counts, futures = pending
            pending = None
            for fut in futures:
                fut.result()
            staging.mark(unit, counts)
            bar.update(1)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentcube-write") as writer:
        made = writer.submit(create) if create is not None else None
        try:
            for n, unit in enumerate(todo):
                counts, futures = _process_unit(
                    plan, unit, staging.store, mask, candidates, writer.submit,
                    last=n == len(todo) - 1,
                )  # fmt: skip
                if made is not None:  # the store exists before any unit is marked
                    futures.insert(0, made)
                    made = None
                finish()  # the previous unit, written while this one was read
                pending = (unit, counts, futures)
            if made is not None:  # no unit to run: the store is still made
                made.result()
        finally:
            if made is not None:
                made.exception()  # wait for it, without hiding the error in flight
            finish()


@dataclass
class _Staging:
    """The work area of a build: the cube's store of every candidate date plus done markers.

    Each marker holds its unit's valid S2 pixel count per date, so the valid
    fractions are known at the end without reading the store again.
    """

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store.zarr"

    def marker(self, unit: tuple[int, int, int]) -> Path:
        return self.root / "done" / "{}_{}_{}".format(*unit)

    def mark(self, unit: tuple[int, int, int], counts: Sequence[int]) -> None:
        tmp = self.marker(unit).with_suffix(".tmp")
        tmp.write_text(json.dumps(list(counts)))
        os.replace(tmp, self.marker(unit))  # a marker is complete or absent

    def counts(self, unit: tuple[int, int, int]) -> list[int]:
        return [int(v) for v in json.loads(self.marker(unit).read_text())]

    def open(self, plan: _Plan, mask: MaskFunction) -> tuple[np.ndarray, Any]:
        """Reuse a staging area of the same request, or start a new one.

        Returns the candidate dates and, for a new area, the function that
        creates its store (metadata, coordinates and the cube's attributes)
        and then records the request; None when the area is reused. The
        caller runs it before the first chunk write (in serial builds on the
        writer thread, while the first unit is read). Until it has run the
        area holds no ``request.json``, so a kill before it starts afresh.
        """
        request = self.root / "request.json"
        fp = plan.fingerprint()
        if request.exists():
            doc = json.loads(request.read_text())
            # chunks already written must be in the codec this version writes
            if doc.get("fingerprint") == fp and "candidates" in doc and doc.get("codec") == CODEC:
                return np.asarray(doc["candidates"], np.int64), None
        if self.root.exists():
            shutil.rmtree(self.root)
        counts = _screen(plan, mask)
        nt = len(plan.s2_times)
        if counts is None:
            candidates = np.arange(nt)
        else:
            npx = float(np.prod(plan.info.geobox.shape))
            frac = counts / npx
            candidates = np.flatnonzero((frac >= plan.spec.min_valid_fraction) & (counts > 0))
            if candidates.size == 0:
                _all_cloudy(plan, frac)
        (self.root / "done").mkdir(parents=True)
        doc = {"fingerprint": fp, "candidates": [int(v) for v in candidates], "codec": CODEC}
        if counts is not None:
            doc["screen_counts"] = [int(v) for v in counts]

        def create() -> None:
            _write_store(self.store, plan, candidates, _final_attrs(plan, candidates))
            request.write_text(json.dumps(doc))

        return candidates, create

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _all_cloudy(plan: _Plan, frac: np.ndarray) -> None:
    raise StacError(
        f"every one of the {len(plan.s2_times)} S2 date(s) between "
        f"{np.datetime_as_string(plan.s2_times[0], 'D')} and "
        f"{np.datetime_as_string(plan.s2_times[-1], 'D')} is cloudy or masked "
        f"(best valid fraction {float(frac.max()):.3f}, threshold "
        f"{plan.spec.min_valid_fraction}); widen the dates or lower min_valid_fraction"
    )


# --------------------------------------------------------------------------- API


def _attrs(plan: _Plan) -> dict[str, Any]:
    import importlib.metadata as md

    def ver(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:  # pragma: no cover
            return "unknown"

    years = sorted({str(t)[:4] for t in plan.s2_times.astype("datetime64[Y]")})
    attrs = provenance(
        f"STAC catalog {plan.catalog} ({plan.catalog_url})",
        catalog=plan.catalog,
        catalog_url=plan.catalog_url,
        collections=json.dumps(plan.collections),
        s2_items=json.dumps([it.id for it in plan.s2_items]),
        s1_items=json.dumps([it.id for it in plan.s1_items]),
        mask_function=plan.mask_name,
        latentcube_config=plan.spec.model_dump_json(),
        latentcube_request=plan.fingerprint(),
        odc_stac_version=ver("odc-stac"),
        pystac_client_version=ver("pystac-client"),
        attribution=f"Contains modified Copernicus Sentinel data {years[0]}-{years[-1]}",
        history=(
            "S2: DN -> reflectance (baseline >= 04.00: DN - 1000), / 10000, clip [0, 1]; "
            "masked by the mask function; tiles of one solar day merged (clear pixel wins). "
            "S1 (linear gamma0 RTC): centred mean over "
            f"{plan.spec.s1_window} acquisitions of one orbit direction -> dB -> "
            "clip [-30, 5] -> (dB + 30) / 35; nearest acquisition within "
            f"{plan.spec.s1_max_gap_days:g} days, else masked."
        ),
    )
    attrs.update(plan.info.attrs())
    return attrs


def _final_attrs(plan: _Plan, kept: np.ndarray) -> dict[str, Any]:
    """The attributes of a cube of the S2 dates ``kept``: provenance, dropped dates, GeoZarr."""
    from latentcube.io import geozarr_attrs

    dropped = np.ones(len(plan.s2_times), bool)
    dropped[kept] = False
    attrs = _attrs(plan)
    attrs["dropped_dates"] = json.dumps(
        [np.datetime_as_string(t, "D") for t in plan.s2_times[dropped]]
    )
    coords = plan.info.geobox.coordinates
    grid = xr.Dataset(coords={"y": coords["y"].values, "x": coords["x"].values})
    grid = grid.rio.write_crs(f"EPSG:{plan.info.epsg}")
    geo = {k: v for k, v in geozarr_attrs(grid).items() if v is not None}
    return _json_attrs({**attrs, **geo})


def _encoding(ds: xr.Dataset, spec: CubeSpec) -> dict[str, dict[str, Any]]:
    ct = min(spec.chunks.get("time", 16), ds.sizes["time"])
    cy = min(spec.chunks.get("y", 256), ds.sizes["y"])
    cx = min(spec.chunks.get("x", 256), ds.sizes["x"])
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        sizes = {"time": ct, "y": cy, "x": cx}
        enc[str(name)] = {
            "chunks": tuple(sizes.get(str(d), ds.sizes[d]) for d in var.dims),
            **_codecs(),
        }
    return enc


def build_cube(
    *,
    lat: float | None = None,
    lon: float | None = None,
    size_m: float | None = None,
    bbox: Sequence[float] | None = None,
    start: Any,
    end: Any,
    out: str | os.PathLike[str] | None = None,
    catalog: str = "planetary-computer",
    sensors: Sequence[str] = ("s2", "s1"),
    spec: CubeSpec | None = None,
    mask: MaskFunction | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    time_axis: str = "s2",
    **options: Any,
) -> xr.Dataset:
    """Build a Sentinel-2 (+ Sentinel-1) cube in the latentcube data model from STAC.

    Parameters
    ----------
    lat, lon, size_m
        Centre (degrees) and edge length (metres) of a square area; or
    bbox
        ``(west, south, east, north)`` in degrees.
    start, end
        First and last day (inclusive), e.g. ``"2023-04-01"``.
    out
        Zarr store to write; ``None`` builds in a temporary folder and returns
        the cube in memory.
    catalog
        ``"planetary-computer"``, ``"earth-search"`` (S2 only), a STAC API URL
        or the path/URL of a static ``catalog.json``.
    sensors
        ``("s2", "s1")`` or ``("s2",)``.
    spec
        All further options (:class:`CubeSpec`); keyword ``options`` override
        single fields, e.g. ``min_valid_fraction=0.2``.
    mask
        Cloud mask function (:class:`MaskFunction`); default
        ``SCLMask(spec.scl_invalid, spec.mask_dilation)``.
    overwrite
        Replace an existing store built for a different request. A store
        built for the same request is returned as it is (idempotent).
    progress
        Show a progress bar over loading units.
    scheduler
        ``None`` (default): load the units one after the other in this process
        (memory: one unit). ``"local"``: a ``distributed.LocalCluster`` with
        ``workers`` single-threaded processes (scripts need an
        ``if __name__ == "__main__":`` guard); or the address of a running Dask
        scheduler. Each unit is one task that writes its own chunks.
    workers
        Worker processes of the local cluster (default: one per core).
    time_axis
        ``"s2"`` (default, the paper's): the S2 dates with a clear pixel, S1
        matched to them. ``"union"``: those dates plus every S1 acquisition day
        without one, S2 masked there (:mod:`latentcube.cube.union`; needs S1;
        cube attribute ``time_axis``).
    **options
        Fields of :class:`CubeSpec`.

    Returns
    -------
    xarray.Dataset
        The validated cube (lazy, opened from ``out``, when ``out`` is given).

    Raises
    ------
    StacError
        No items, a missing asset, a catalog without the collection, dates in
        the wrong order, every date cloudy, or a load that keeps failing.
        Nothing is written at ``out`` in these cases.
    latentcube.grid.GridError
        A place outside the UTM range or an empty size.

    Warns
    -----
    latentcube.grid.UTMZoneWarning
        The area spans several UTM zones; the centre's zone is used (named in
        the warning and in the cube's ``grid_note`` attribute).

    Examples
    --------
    >>> cube = build_cube(lat=50.746, lon=4.063, size_m=640,
    ...                   start="2023-04-01", end="2023-06-30", out="cube.zarr")  # doctest: +SKIP
    """
    base = (spec or CubeSpec()).model_dump()
    try:
        spec = CubeSpec.model_validate({**base, **options, "sensors": tuple(sensors)})
    except ValueError as err:
        raise StacError(f"invalid cube options: {err}") from None
    if "s2" not in spec.sensors:
        raise StacError(
            f"sensors must include 's2' (the S2 dates are the time axis), got {sensors}"
        )
    check_time_axis(time_axis, spec.sensors)
    t0, t1 = _check_dates(start, end)
    info = _grid(lat, lon, size_m, bbox, spec.resolution)
    if mask is None:
        mask = SCLMask(tuple(spec.scl_invalid), spec.mask_dilation)
        mask_name = f"SCLMask(invalid={list(spec.scl_invalid)}, dilation={spec.mask_dilation})"
    else:
        mask_name = getattr(mask, "__qualname__", type(mask).__qualname__)
    configure_http(max_retries=spec.max_retries, retry_delay=max(spec.backoff, 0.01))
    plan = _plan(info, t0, t1, catalog, spec, mask_name)
    union = time_axis == "union"
    request = plan.fingerprint() + (":union" if union else "")

    path = Path(out) if out is not None else None
    if path is not None and path.exists():
        from latentcube.io import open_zarr

        try:
            done = open_zarr(path).attrs.get("latentcube_request")
        except Exception:
            done = None
        if done == request:
            return validate_cube(open_zarr(path), check_values=False)
        if not overwrite:
            raise FileExistsError(
                f"{path} exists and was not built for this request; pass overwrite=True "
                "(--overwrite) to replace it"
            )
    tmp_root = None
    # the union axis is the S2-axis cube (built first, beside the target) plus S1 dates
    target = path.with_name(f".{path.name}.s2.zarr") if union and path is not None else path
    if target is not None:
        staging = _Staging(target.parent / f".{target.name}.partial")
    else:
        tmp_root = Path(tempfile.mkdtemp(prefix="latentcube-cube-"))
        staging = _Staging(tmp_root / "partial")
    try:
        if not union:
            return _execute(plan, staging, target, mask, progress, scheduler, workers)
        return _finish_union(
            plan, staging, target, path, mask, progress, scheduler, workers, (t0, t1)
        )
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _finish_union(
    plan: _Plan,
    staging: _Staging,
    target: Path | None,
    path: Path | None,
    mask: MaskFunction,
    progress: bool,
    scheduler: str | None,
    workers: int | None,
    dates: tuple[pd.Timestamp, pd.Timestamp],
) -> xr.Dataset:
    """Build (or reuse) the S2-axis cube at ``target``, then write it with the S1 dates."""
    from latentcube.io import open_zarr, write_zarr

    s2_cube = None
    if target is not None and target.exists():
        try:
            done = open_zarr(target)
            if done.attrs.get("latentcube_request") == plan.fingerprint():
                s2_cube = validate_cube(done, check_values=False)
        except Exception:
            s2_cube = None
    if s2_cube is None:
        s2_cube = _execute(plan, staging, target, mask, progress, scheduler, workers)
    cube = add_s1_dates(plan, s2_cube, *dates)
    cube.attrs["latentcube_request"] = plan.fingerprint() + ":union"
    if path is None:
        cube = cube.load()
        return validate_cube(cube.rio.write_crs(s2_cube.rio.crs))
    enc = _encoding(cube, plan.spec)
    cube = cube.chunk({d: enc["s2"]["chunks"][i] for i, d in enumerate(cube["s2"].dims)})
    cube = cube.assign_coords({k: c.compute() for k, c in cube.coords.items() if c.chunks})
    write_zarr(cube, path, overwrite=True, encoding=enc)
    if target is not None and target != path:
        shutil.rmtree(target, ignore_errors=True)
    return validate_cube(open_zarr(path), check_values=False)


def _run_on_dask(
    plan: _Plan,
    todo: Sequence[tuple[int, int, int]],
    staging: _Staging,
    mask: MaskFunction,
    candidates: np.ndarray,
    scheduler: str,
    workers: int | None,
    bar: Any,
) -> None:
    """Run loading units as Dask tasks (each writes its own chunks), marking them as they end."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
    client = Client(cluster or scheduler)
    try:
        futures = {
            client.submit(
                _run_unit,
                plan,
                unit,
                staging.store,
                mask,
                candidates,
                key="latentcube-cube-{}-{}-{}".format(*unit),
                pure=False,
            ): unit
            for unit in todo
        }
        for fut in as_completed(futures):
            staging.mark(futures[fut], fut.result())
            bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _json_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    def plain(o: Any) -> Any:
        return o.tolist() if hasattr(o, "tolist") else str(o)

    return dict(json.loads(json.dumps(attrs, default=plain)))


def _execute(
    plan: _Plan,
    staging: _Staging,
    path: Path | None,
    mask: MaskFunction,
    progress: bool,
    scheduler: str | None = None,
    workers: int | None = None,
) -> xr.Dataset:
    import zarr
    from tqdm.auto import tqdm

    from latentcube.io import open_zarr, write_zarr

    # files stay open between the build's reads (screening and every tile), within the
    # pool's bounds, in this process; Dask workers open theirs per read
    with reuse_datasets():
        candidates, create = staging.open(plan, mask)
        units = _units(plan, len(candidates))
        todo = [u for u in units if not staging.marker(u).exists()]
        bar = tqdm(
            total=len(units),
            initial=len(units) - len(todo),
            desc="cube",
            unit="unit",
            disable=not progress or not todo,
        )
        if scheduler is None or not todo:
            _run_serial(plan, todo, staging, mask, candidates, bar, create)
        else:
            if create is not None:
                create()
            _run_on_dask(plan, todo, staging, mask, candidates, scheduler, workers, bar)
        bar.close()
    counts = np.zeros(len(candidates), np.int64)
    tc = plan.spec.time_chunk
    for unit in units:
        counts[unit[0] * tc : unit[0] * tc + tc] += staging.counts(unit)
    frac = counts / float(np.prod(plan.info.geobox.shape))
    keep = (frac >= plan.spec.min_valid_fraction) & (frac > 0)
    if not keep.any():
        staging.remove()
        _all_cloudy(plan, frac)
    if keep.all() and path is not None:
        # the staging store already is the cube, with its attributes: move it in place
        group: Any = zarr.open_group(staging.store, mode="r+")
        if group.attrs.get("latentcube_request") != plan.fingerprint():
            group.attrs.update(_final_attrs(plan, candidates))  # an area of an older version
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging.store, path)
        staging.remove()
        # values were checked unit by unit (_check_unit); the layout is checked here
        return validate_cube(open_zarr(path), check_values=False)
    dropped = np.ones(len(plan.s2_times), bool)
    dropped[candidates[keep]] = False
    attrs = _attrs(plan)
    attrs["dropped_dates"] = json.dumps(
        [np.datetime_as_string(t, "D") for t in plan.s2_times[dropped]]
    )
    # some candidate date turned out below the threshold (a mask function other
    # than the default, or pixels without data in some band): copy the kept dates
    st = xr.open_zarr(staging.store, decode_coords="all", consolidated=False, chunks={})
    ds = st.isel(time=np.flatnonzero(keep))
    ds.attrs = attrs
    for v in ds.variables.values():
        v.encoding = {}
    enc = _encoding(ds, plan.spec)
    ds = ds.chunk({d: enc["s2"]["chunks"][i] for i, d in enumerate(ds["s2"].dims)})
    if path is None:
        cube = ds.load()
        cube = cube.rio.write_crs(cube.rio.crs)
        staging.remove()
        return validate_cube(cube)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        write_zarr(ds, path, overwrite=True, encoding=enc)
    staging.remove()
    # values were checked unit by unit (_check_unit) and dates without a valid
    # pixel dropped above; the layout is checked on the store as written
    return validate_cube(open_zarr(path), check_values=False)
