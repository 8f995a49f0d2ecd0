"""The plan of a cube build: its options, grid, dates and STAC items, before any pixel is read.

:func:`make_plan` searches the catalog (every problem the metadata shows is raised
here, before any pixel is read or any file written), groups S2 items by solar day
and S1 items by solar day and orbit direction, and gives every S2 date the nearest
S1 acquisition within ``s1_max_gap_days`` (:func:`match_dates`). The :class:`Plan`
holds all of it; :func:`read_assets` reads a plan's assets onto a part of its grid
(:func:`unit_geobox`), retried as a whole by :func:`load_with_retries`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from latentcube.cube._reading import (
    NotAligned,
    configure_http,
    grid_aligned,
    load_items,
    read_aligned,
)
from latentcube.cube.masks import SCL_INVALID
from latentcube.cube.stac import (
    S1_ASSETS,
    S2_ASSETS,
    group_items,
    needs_signing,
    open_client,
    parse_time,
    resolve_assets,
    resolve_catalog,
    search_items,
    signer,
    with_retries,
)
from latentcube.errors import StacError
from latentcube.grid import GridInfo, grid_info, grid_info_bbox
from latentcube.sensors import S2_BANDS

__all__ = [
    "CubeSpec",
    "Plan",
    "all_cloudy_error",
    "check_dates",
    "load_with_retries",
    "make_plan",
    "match_dates",
    "neighbours",
    "place_grid",
    "read_assets",
    "unit_geobox",
]


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
    mask
        The cloud mask (:data:`~latentcube.cube.masks.MASK_NAMES`): ``"scl"``
        (default; Sen2Cor's scene classes, :class:`~latentcube.cube.masks.SCLMask`),
        ``"csmask"`` (the learned mask of ukis-csmask,
        :class:`~latentcube.cube.csmask.CSMask`; ``pip install 'latentcube[cloudmask]'``)
        or ``"scl+csmask"`` (clear only where both say clear). A mask function
        given to :func:`~latentcube.cube.build.build_cube` replaces it.
    mask_dilation
        Pixels by which clouds and shadows are grown (every mask).
    scl_invalid
        SCL classes masked by ``"scl"``.
    csmask_bands
        The learned mask's model: 6 (B02, B03, B04, B08, B11, B12) or 4 (no SWIR).
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
    mask: Literal["scl", "csmask", "scl+csmask"] = "scl"
    mask_dilation: int = Field(default=1, ge=0)
    scl_invalid: tuple[int, ...] = SCL_INVALID
    csmask_bands: Literal[4, 6] = 6
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
class Plan:
    """Everything known before reading a pixel (made by :func:`make_plan`).

    Items are grouped by solar day (``s2_groups``, ``s2_times``; S1 also by orbit
    direction); ``s1_match`` gives each S2 date its S1 group (-1 when none lies
    within the gap), ``s1_prev``/``s1_next`` the neighbours of an S1 group in
    the same orbit direction (for the rolling mean).
    """

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
    mask_info: dict[str, Any] = field(default_factory=dict)  # the cube's ``mask`` attribute

    @property
    def with_s1(self) -> bool:
        """Whether the cube has Sentinel-1."""
        return "s1" in self.spec.sensors

    def fingerprint(self) -> str:
        """The request's identity: grid, options, catalog, items and mask (20 hex digits)."""
        gb = self.info.geobox
        # the mask is identified by ``mask_name`` (with its options and model digest);
        # the spec's mask fields are left out so that SCL builds keep their identity
        spec = self.spec.model_dump(mode="json", exclude={"mask", "csmask_bands"})
        doc = {
            "grid": [str(gb.crs), list(gb.affine)[:6], list(gb.shape)],
            "spec": spec,
            "catalog": self.catalog_url,
            "collections": self.collections,
            "s2": [it.id for it in self.s2_items],
            "s1": [it.id for it in self.s1_items],
            "mask": self.mask_name,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]

    def s1_time(self) -> np.ndarray:
        """Time of the S1 acquisition matched to each S2 date (NaT where none)."""
        out = np.full(self.s2_times.shape, np.datetime64("NaT"), "datetime64[ns]")
        ok = self.s1_match >= 0
        out[ok] = self.s1_times[self.s1_match[ok]]
        return out

    def s1_orbit(self) -> np.ndarray:
        """Orbit direction of the S1 acquisition matched to each S2 date ("" where none)."""
        return np.array(
            [self.s1_orbits[m] if m >= 0 else "" for m in self.s1_match], dtype=object
        ).astype(str)


def match_dates(
    s2_times: np.ndarray, s1_times: np.ndarray, max_gap_days: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest S1 acquisition for every S2 date.

    Parameters
    ----------
    s2_times, s1_times
        datetime64 arrays; ``s1_times`` need not be sorted.
    max_gap_days
        Matches farther apart than this are rejected (index -1); they are left
        masked, never filled.

    Returns
    -------
    index : numpy.ndarray
        int64 index into ``s1_times`` per S2 date, -1 where none within the gap.
        Ties go to the earlier acquisition.
    gap_days : numpy.ndarray
        Absolute distance in days of the nearest acquisition (NaN when there is
        no S1 acquisition at all).
    """
    s2 = np.asarray(s2_times, dtype="datetime64[ns]").astype(np.int64)
    s1 = np.asarray(s1_times, dtype="datetime64[ns]")
    if s1.size == 0:
        return np.full(s2.shape, -1, np.int64), np.full(s2.shape, np.nan)
    order = np.argsort(s1, kind="stable")
    s1s = s1[order].astype(np.int64)
    pos = np.searchsorted(s1s, s2)
    left = np.clip(pos - 1, 0, s1s.size - 1)
    right = np.clip(pos, 0, s1s.size - 1)
    dl = np.abs(s2 - s1s[left])
    dr = np.abs(s1s[right] - s2)
    pick = np.where(dr < dl, right, left)
    gap = np.minimum(dl, dr) / 86400e9
    idx = np.where(gap <= max_gap_days, order[pick], -1).astype(np.int64)
    return idx, gap


def neighbours(times: np.ndarray, orbits: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Previous/next acquisition of the same orbit direction (-1 at the ends)."""
    prev = np.full(len(times), -1, np.int64)
    nxt = np.full(len(times), -1, np.int64)
    for orbit in set(orbits):
        idx = [i for i in np.argsort(times, kind="stable") if orbits[i] == orbit]
        for a, b in itertools.pairwise(idx):
            nxt[a], prev[b] = b, a
    return prev, nxt


def check_dates(start: Any, end: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """UTC start and end (a date as ``end`` covers that whole day)."""
    if start is None or end is None:
        raise StacError(f"start and end are required dates, got start={start!r}, end={end!r}")
    try:
        t0, t1 = parse_time(start, False), parse_time(end, True)
    except (ValueError, TypeError) as err:
        raise StacError(f"cannot read the dates start={start!r}, end={end!r}: {err}") from None
    if pd.isna(t0) or pd.isna(t1):
        raise StacError(f"start and end are required dates, got start={start!r}, end={end!r}")
    if t0 > t1:
        raise StacError(f"start {t0.date()} is after end {t1.date()}: give the dates in time order")
    return t0, t1


def place_grid(
    lat: float | None,
    lon: float | None,
    size_m: float | None,
    bbox: Sequence[float] | None,
    resolution: float,
) -> GridInfo:
    """The cube's grid from a centre and size or a lon/lat box (exactly one of them)."""
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


def make_plan(
    info: GridInfo,
    t0: pd.Timestamp,
    t1: pd.Timestamp,
    catalog: str,
    spec: CubeSpec,
    mask_name: str,
    mask_info: dict[str, Any] | None = None,
) -> Plan:
    """Search the catalog and plan the build of ``info`` between ``t0`` and ``t1``.

    Raises :class:`~latentcube.errors.StacError` for every problem the metadata
    shows (no items, a missing asset, a catalog without the collection), before
    any pixel is read.
    """
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
        prev, nxt = neighbours(s1_times, s1_orbits)
        collections["s1"] = str(cat.collections.get("s1"))
    return Plan(
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
        mask_info=dict(mask_info or {}),
        s2_aligned=grid_aligned(
            s2_items, s2_assets, info.geobox, info.epsg,
            {"*": spec.resampling_s2, "SCL": "nearest"},
        ),
        s1_aligned=bool(s1_items)
        and grid_aligned(s1_items, s1_assets, info.geobox, info.epsg, {"*": spec.resampling_s1}),
    )  # fmt: skip


def all_cloudy_error(plan: Plan, frac: np.ndarray) -> StacError:
    """The error of a build whose every date is below the threshold (``frac``: valid fractions)."""
    return StacError(
        f"every one of the {len(plan.s2_times)} S2 date(s) between "
        f"{np.datetime_as_string(plan.s2_times[0], 'D')} and "
        f"{np.datetime_as_string(plan.s2_times[-1], 'D')} is cloudy or masked "
        f"(best valid fraction {float(frac.max()):.3f}, threshold "
        f"{plan.spec.min_valid_fraction}); widen the dates or lower min_valid_fraction"
    )


# --------------------------------------------------------------------------- reads


def unit_geobox(geobox: Any, ys: slice, xs: slice, halo: int) -> Any:
    """The sub-grid ``[ys, xs]`` grown by ``halo`` pixels (also beyond the grid)."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    a = geobox.affine
    ny, nx = ys.stop - ys.start + 2 * halo, xs.stop - xs.start + 2 * halo
    origin = a * (xs.start - halo, ys.start - halo)
    return GeoBox((ny, nx), Affine(a.a, 0.0, origin[0], 0.0, a.e, origin[1]), geobox.crs)


def load_with_retries(fn: Any, spec: CubeSpec, what: str) -> Any:
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


def read_assets(
    plan: Plan,
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
