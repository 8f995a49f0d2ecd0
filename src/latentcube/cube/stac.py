"""STAC search and loading: pystac-client to find items, odc-stac to read them on a grid.

The optional dependencies (``pip install latentcube[stac]``: odc-stac,
pystac-client, planetary-computer) are imported inside the functions.

Catalogs
--------
``"planetary-computer"``
    Microsoft Planetary Computer, ``sentinel-2-l2a`` and ``sentinel-1-rtc``;
    asset URLs are signed with :func:`planetary_computer.sign` at every load
    call, so a long build that loads chunk by chunk picks up fresh tokens.
``"earth-search"``
    Element 84 Earth Search v1, ``sentinel-2-l2a`` only (it holds no
    terrain-corrected Sentinel-1).
any URL or path
    A STAC API (item search) or a static catalog (``catalog.json``, local or
    over HTTP); static catalogs are walked and their items filtered by bbox,
    time and collection here.

HTTP
----
STAC JSON requests go through :class:`pystac_client.stac_api_io.StacApiIO`
with a :class:`urllib3.util.retry.Retry` (exponential backoff on 429/5xx);
COG reads go through GDAL with ``GDAL_HTTP_MAX_RETRY`` and
``GDAL_HTTP_RETRY_DELAY`` (GDAL doubles the delay at every attempt).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import functools
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcube.errors import StacError

__all__ = [
    "CATALOGS",
    "S1_ASSETS",
    "S2_ASSETS",
    "CatalogSpec",
    "DatasetPool",
    "StacError",
    "configure_http",
    "grid_aligned",
    "group_items",
    "item_datetime",
    "load_items",
    "needs_signing",
    "open_client",
    "read_aligned",
    "resolve_assets",
    "resolve_catalog",
    "reuse_datasets",
    "search_items",
    "signer",
    "with_retries",
]

#: Model band -> asset keys tried in order (Planetary Computer names first,
#: then Earth Search v1 common names).
S2_ASSETS: dict[str, tuple[str, ...]] = {
    "B02": ("B02", "blue"),
    "B03": ("B03", "green"),
    "B04": ("B04", "red"),
    "B05": ("B05", "rededge1"),
    "B06": ("B06", "rededge2"),
    "B07": ("B07", "rededge3"),
    "B08": ("B08", "nir"),
    "B8A": ("B8A", "nir08"),
    "B11": ("B11", "swir16"),
    "B12": ("B12", "swir22"),
    "SCL": ("SCL", "scl"),
}

#: S1 RTC polarisations -> asset keys.
S1_ASSETS: dict[str, tuple[str, ...]] = {"VV": ("vv", "VV"), "VH": ("vh", "VH")}

#: HTTP status codes retried with backoff.
RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class CatalogSpec:
    """Where to search and how to read.

    Attributes
    ----------
    name
        Short name (``"planetary-computer"``, ``"earth-search"``) or the URL/path.
    url
        STAC API root, catalog URL or local ``catalog.json`` path.
    collections
        Sensor (``"s2"``, ``"s1"``) -> collection id; ``None`` when the catalog
        has no suitable collection.
    sign
        Sign asset URLs with :func:`planetary_computer.sign`.
    notes
        Sensor -> why it is unavailable, used in error messages.
    """

    name: str
    url: str
    collections: Mapping[str, str | None]
    sign: bool = False
    notes: Mapping[str, str] = field(default_factory=dict)


PC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"

CATALOGS: dict[str, CatalogSpec] = {
    "planetary-computer": CatalogSpec(
        "planetary-computer",
        PC_URL,
        {"s2": "sentinel-2-l2a", "s1": "sentinel-1-rtc"},
        sign=True,
    ),
    "earth-search": CatalogSpec(
        "earth-search",
        EARTH_SEARCH_URL,
        {"s2": "sentinel-2-l2a", "s1": None},
        notes={
            "s1": "Earth Search has no radiometrically terrain-corrected Sentinel-1 (RTC) "
            "collection (only sentinel-1-grd); use catalog='planetary-computer' for S1 or "
            "sensors=('s2',)"
        },
    ),
}


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise StacError(
            f"building cubes from STAC needs the optional package {module.split('.')[0]!r}: "
            "pip install 'latentcube[stac]'"
        ) from err


def resolve_catalog(
    catalog: str | os.PathLike[str], collections: Mapping[str, str] | None = None
) -> CatalogSpec:
    """A :class:`CatalogSpec` from a short name, a STAC URL or a ``catalog.json`` path.

    Parameters
    ----------
    catalog
        ``"planetary-computer"``, ``"earth-search"``, an ``http(s)://`` URL, or a
        local path (to a ``catalog.json``/``collection.json`` or a folder holding one).
    collections
        Override sensor -> collection id (default ``sentinel-2-l2a`` and
        ``sentinel-1-rtc`` for URLs and paths).

    Returns
    -------
    CatalogSpec
        The catalog.
    """
    name = os.fspath(catalog)
    if name in CATALOGS:
        spec = CATALOGS[name]
    elif name.startswith(("http://", "https://")):
        sign = name.rstrip("/") == PC_URL
        spec = CatalogSpec(name, name, {"s2": "sentinel-2-l2a", "s1": "sentinel-1-rtc"}, sign)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            path = path / "catalog.json"
        if not path.exists():
            known = ", ".join(CATALOGS)
            raise StacError(
                f"unknown catalog {name!r}: give one of {known}, a STAC URL, or the path "
                "of a catalog.json"
            )
        spec = CatalogSpec(
            name, str(path.resolve()), {"s2": "sentinel-2-l2a", "s1": "sentinel-1-rtc"}
        )
    if collections:
        spec = CatalogSpec(
            spec.name, spec.url, {**spec.collections, **collections}, spec.sign, spec.notes
        )
    return spec


def _retry(max_retries: int, backoff: float) -> Any:
    from urllib3.util.retry import Retry

    return Retry(
        total=max_retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # also retry POST /search
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def open_client(spec: CatalogSpec, *, max_retries: int = 5, backoff: float = 0.5) -> Any:
    """Open a catalog with pystac-client, retrying transient HTTP errors.

    Parameters
    ----------
    spec
        The catalog.
    max_retries
        Retries per request (429 and 5xx answers, connection errors).
    backoff
        Backoff factor in seconds: waits ``backoff * 2 ** (n - 1)`` before retry n.

    Returns
    -------
    pystac_client.Client
        The client (also for static catalogs).
    """
    pystac_client = _need("pystac_client")
    from pystac_client.stac_api_io import StacApiIO

    io = StacApiIO(max_retries=_retry(max_retries, backoff))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _need("pystac_client.warnings").NoConformsTo)
            return pystac_client.Client.open(spec.url, stac_io=io)
    except Exception as err:
        raise StacError(f"cannot open catalog {spec.name!r} at {spec.url}: {err}") from err


def _collection_ids(client: Any) -> list[str]:
    try:
        return sorted(c.id for c in client.get_collections())
    except Exception:
        return []


def _parse_time(value: str | _dt.date | _dt.datetime | np.datetime64, end: bool) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    else:
        ts = ts.tz_convert("UTC")
    is_date = isinstance(value, str) and len(value.strip()) <= 10
    is_date = is_date or (isinstance(value, _dt.date) and not isinstance(value, _dt.datetime))
    if end and is_date:  # a date as end means the whole day
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    return ts


def item_datetime(item: Any) -> pd.Timestamp:
    """Acquisition time of an item (``datetime``, else ``start_datetime``), in UTC."""
    t = item.datetime or _dt.datetime.fromisoformat(
        str(item.properties.get("start_datetime")).replace("Z", "+00:00")
    )
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def search_items(
    client: Any,
    spec: CatalogSpec,
    sensor: str,
    *,
    bbox: Sequence[float],
    start: Any,
    end: Any,
    max_items: int | None = None,
) -> list[Any]:
    """Items of ``sensor``'s collection intersecting ``bbox`` within ``[start, end]``.

    Parameters
    ----------
    client
        From :func:`open_client`.
    spec
        The catalog.
    sensor
        ``"s2"`` or ``"s1"``.
    bbox
        (lon_min, lat_min, lon_max, lat_max).
    start, end
        Inclusive time range (dates or datetimes; a date as ``end`` covers that day).
    max_items
        Stop after this many items.

    Returns
    -------
    list of pystac.Item
        Sorted by time then id.

    Raises
    ------
    StacError
        The catalog has no collection for the sensor.
    """
    cid = spec.collections.get(sensor)
    if cid is None:
        why = spec.notes.get(sensor, f"no collection is configured for sensor {sensor!r}")
        raise StacError(f"catalog {spec.name!r} cannot provide {sensor.upper()}: {why}")
    t0, t1 = _parse_time(start, False), _parse_time(end, True)
    from pystac_client.warnings import FallbackToPystac

    with warnings.catch_warnings():  # static catalogs are walked on purpose
        warnings.simplefilter("ignore", FallbackToPystac)
        return _search(client, spec, cid, bbox, t0, t1, max_items)


def _search(
    client: Any,
    spec: CatalogSpec,
    cid: str,
    bbox: Sequence[float],
    t0: pd.Timestamp,
    t1: pd.Timestamp,
    max_items: int | None,
) -> list[Any]:
    try:
        collection = client.get_collection(cid)
    except Exception:
        collection = None
    # pystac-client's fallback for static catalogs returns the last collection
    # it walked when none matches, so the id is checked here
    if collection is None or collection.id != cid:
        have = _collection_ids(client)
        raise StacError(
            f"catalog {spec.name!r} has no collection {cid!r} (it has "
            f"{', '.join(have) if have else 'no collections'})"
        )
    from pystac_client import ConformanceClasses

    try:
        searchable = client.conforms_to(ConformanceClasses.ITEM_SEARCH)
    except Exception:
        searchable = False
    try:
        if searchable:
            search = client.search(
                collections=[cid],
                bbox=list(bbox),
                datetime=[t0.to_pydatetime(), t1.to_pydatetime()],
                max_items=max_items,
            )
            items = list(search.items())
        else:
            items = []
            for it in collection.get_items(recursive=True):
                if it.bbox is not None and not _intersects(it.bbox, bbox):
                    continue
                if not (t0 <= item_datetime(it) <= t1):
                    continue
                items.append(it)
                if max_items is not None and len(items) >= max_items:
                    break
    except StacError:
        raise
    except Exception as err:
        raise StacError(f"searching {cid!r} in catalog {spec.name!r} failed: {err}") from err
    items.sort(key=lambda it: (item_datetime(it), it.id))
    return items


def resolve_assets(items: Sequence[Any], wanted: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Map band names to the asset keys the items use, checking every item has them.

    Parameters
    ----------
    items
        pystac items of one collection.
    wanted
        Band -> candidate asset keys (e.g. :data:`S2_ASSETS`).

    Returns
    -------
    dict
        Band -> asset key.

    Raises
    ------
    StacError
        An item lacks a band (the message names the items and their assets).
    """
    if not items:
        return {}
    out: dict[str, str] = {}
    first = items[0]
    for band, keys in wanted.items():
        hit = next((k for k in keys if k in first.assets), None)
        if hit is None:
            raise StacError(
                f"item {first.id!r} has no asset for band {band} (looked for "
                f"{', '.join(keys)}; it has {', '.join(sorted(first.assets))})"
            )
        out[band] = hit
    for it in items[1:]:
        missing = [b for b, k in out.items() if k not in it.assets]
        if missing:
            raise StacError(
                f"item {it.id!r} lacks asset(s) {[out[b] for b in missing]} for band(s) "
                f"{missing} (it has {', '.join(sorted(it.assets))})"
            )
    return out


def group_items(
    items: Sequence[Any], *, by_orbit: bool = False
) -> tuple[list[list[int]], np.ndarray]:
    """Group items by solar day (tile overlaps of one pass), optionally also by orbit.

    The solar day uses the item centre's longitude (``time + lon / 15`` hours),
    like odc-stac's ``groupby="solar_day"``.

    Parameters
    ----------
    items
        pystac items, sorted by time.
    by_orbit
        Also split by ``sat:orbit_state`` (ascending and descending passes of
        one day stay separate acquisitions).

    Returns
    -------
    groups : list of list of int
        Item indices per group, groups in time order.
    times : numpy.ndarray
        datetime64[ns] (UTC, naive) of the first item of each group.
    """
    keys: dict[tuple[Any, ...], list[int]] = {}
    for i, it in enumerate(items):
        t = item_datetime(it)
        lon = 0.0
        if it.bbox is not None:
            lon = (it.bbox[0] + it.bbox[2]) / 2.0
        day = (t + pd.Timedelta(hours=lon / 15.0)).date()
        key: tuple[Any, ...] = (day,)
        if by_orbit:
            key = (day, str(it.properties.get("sat:orbit_state", "")))
        keys.setdefault(key, []).append(i)
    groups = sorted(keys.values(), key=lambda g: min(item_datetime(items[i]) for i in g))
    times = np.array(
        [min(item_datetime(items[i]) for i in g).tz_convert(None).to_datetime64() for g in groups],
        dtype="datetime64[ns]",
    )
    return groups, times


#: GDAL options of :func:`read_aligned`, set by :func:`configure_http`.
_GDAL_ENV: dict[str, str] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def configure_http(max_retries: int = 5, retry_delay: float = 0.5, *, cache: bool = True) -> None:
    """Configure GDAL (used by odc-stac for COG reads) for cloud reads with retries.

    Parameters
    ----------
    max_retries
        ``GDAL_HTTP_MAX_RETRY``: retries on 429/5xx answers.
    retry_delay
        ``GDAL_HTTP_RETRY_DELAY`` in seconds; GDAL doubles it at every retry.
    cache
        False switches off GDAL's cache of remote file properties
        (``CPL_VSIL_CURL_NON_CACHED``), which also remembers failed reads: a
        load retried after GDAL gave up on a URL must bypass it.
    """
    odc_stac = _need("odc.stac")
    extra = {} if cache else {"CPL_VSIL_CURL_NON_CACHED": "/vsicurl/"}
    opts = {
        "GDAL_HTTP_MAX_RETRY": str(int(max_retries)),
        "GDAL_HTTP_RETRY_DELAY": str(float(retry_delay)),
        "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF,.jp2,.JP2",
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "VSI_CACHE": "FALSE",
        **extra,
    }
    odc_stac.configure_rio(cloud_defaults=True, **opts)
    # the same options for read_aligned (odc-stac's cloud defaults included)
    _GDAL_ENV.clear()
    _GDAL_ENV.update({"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", **opts})


def load_items(
    items: Sequence[Any],
    assets: Mapping[str, str],
    geobox: Any,
    *,
    dtype: str,
    nodata: float | int,
    resampling: Mapping[str, str],
    patch_url: Callable[[str], str] | None = None,
    pool: int | None = None,
) -> dict[str, np.ndarray]:
    """Read bands of items onto a grid with odc-stac, one time step per item.

    Items are not fused here: the caller merges items of one day after
    masking, so that a clear pixel of one tile wins over a cloudy pixel of an
    overlapping tile (odc-stac's fusion keeps the first non-nodata pixel).

    Parameters
    ----------
    items
        pystac items.
    assets
        Band name -> asset key.
    geobox
        Output grid (:class:`odc.geo.geobox.GeoBox`).
    dtype, nodata
        Output dtype and nodata of every band (explicit, so that the result
        does not depend on the raster extension of the items).
    resampling
        Band name (or ``"*"``) -> GDAL resampling name.
    patch_url
        Applied to every asset URL at this call (signing); called again at
        every call, so tokens are fresh for each time chunk of a long build.
    pool
        Reader threads.

    Returns
    -------
    dict
        Band name -> numpy array (item, y, x), items in the given order.
    """
    odc_stac = _need("odc.stac")
    if not items:
        raise StacError("nothing to load: no items")
    inv = {v: k for k, v in assets.items()}
    res = {assets[b]: r for b, r in resampling.items() if b in assets}
    if "*" in resampling:
        res["*"] = resampling["*"]
    ds = odc_stac.load(
        list(items),
        bands=list(assets.values()),
        geobox=geobox,
        groupby="id",  # one step per item, in the given order
        dtype=dtype,
        nodata=nodata,
        resampling=res,
        patch_url=patch_url,
        pool=pool,
        chunks=None,
        fail_on_error=True,
        preserve_original_order=True,
        progress=None,
    )
    if ds.sizes.get("time", 0) != len(items):
        raise StacError(
            f"odc-stac returned {ds.sizes.get('time', 0)} time steps for {len(items)} items"
        )
    return {inv[str(name)]: ds[name].values for name in ds.data_vars if name in inv}


class NotAligned(StacError):
    """A source raster is not aligned with the output grid (use :func:`load_items`)."""


def _asset_grid(item: Any, key: str) -> tuple[int | None, list[float] | None]:
    """EPSG code and ``proj:transform`` of an asset (asset fields before item fields)."""
    asset = item.assets[key]
    fields = {**item.properties, **asset.extra_fields}
    code = fields.get("proj:code") or fields.get("proj:epsg")
    epsg = None
    if code is not None:
        text = str(code).upper().removeprefix("EPSG:")
        epsg = int(text) if text.isdigit() else None
    tr = fields.get("proj:transform")
    return epsg, (list(tr) if tr is not None else None)


def _factor(transform: Sequence[float], geobox: Any) -> int | None:
    """Integer upsampling factor from a source grid to ``geobox``, None when not aligned.

    Aligned means: no rotation, square pixels whose size is a whole multiple
    ``f`` of the output pixel size, and source pixel edges on output pixel
    edges, so that every output pixel lies inside exactly one source pixel.
    """
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    g = geobox.affine
    res = float(g.a)
    if b != 0.0 or d != 0.0 or g.b != 0.0 or g.d != 0.0 or a <= 0 or e != -a or g.e != -res:
        return None
    k = a / res
    ox, oy = (c - g.c) / res, (g.f - f) / res
    tol = 1e-6
    if not all(abs(v - round(v)) < tol for v in (k, ox, oy)) or round(k) < 1:
        return None
    return round(k)


def grid_aligned(
    items: Sequence[Any], assets: Mapping[str, str], geobox: Any, epsg: int,
    resampling: Mapping[str, str],
) -> bool:  # fmt: skip
    """Whether :func:`read_aligned` can read these assets exactly onto ``geobox``.

    True when every asset declares ``proj:code``/``proj:epsg`` equal to
    ``epsg`` and a ``proj:transform`` aligned with the grid (see
    :func:`_factor`), and every band that needs upsampling (factor > 1) is
    resampled with ``nearest``; then reading at the native resolution and
    repeating every pixel ``f x f`` times gives exactly what a nearest-neighbour
    warp gives. Otherwise use :func:`load_items`.
    """
    for it in items:
        for band, key in assets.items():
            code, tr = _asset_grid(it, key)
            if code != epsg or tr is None:
                return False
            k = _factor(tr, geobox)
            if k is None:
                return False
            if k > 1 and resampling.get(band, resampling.get("*", "nearest")) != "nearest":
                return False
    return True


class DatasetPool:
    """Open rasterio datasets kept for reuse by :func:`read_aligned` (one build's reads).

    A build reads every file once per loading tile (and the SCL once more for
    the screening); opening a COG (header, tile offsets) is a large part of
    reading a small window of it. The pool lends an open dataset to one thread
    at a time (GDAL datasets are not thread-safe) and takes it back after the
    read. It keeps at most ``max_idle`` idle datasets (the least recently
    used are closed first). An open dataset keeps the blocks it decoded in
    GDAL's block cache until it is closed or GDAL evicts them: under
    :func:`reuse_datasets` GDAL's cache is capped, so memory stays flat
    whatever the area with the files left open. Without such a cap
    ``max_bytes`` bounds what the idle datasets hold: blocks of at most
    ``max_bytes`` read through them in all (see :meth:`charge`; the least
    recently used are closed first; a dataset that alone read more is closed
    when it comes back). A read that fails closes its dataset instead of
    returning it, so a retry opens the file afresh. :meth:`close` closes
    every idle dataset; a dataset still lent out is closed when it comes back.

    Parameters
    ----------
    max_idle
        Idle datasets kept open at most.
    max_bytes
        Bytes of the blocks read (see :meth:`charge`) through the idle datasets
        at most; None: no such bound.
    """

    def __init__(self, max_idle: int = 128, max_bytes: int | None = 64 * 2**20) -> None:
        self.max_idle = max_idle
        self.max_bytes = max_bytes
        self._idle: OrderedDict[int, tuple[str, Any]] = OrderedDict()
        self._read: dict[int, int] = {}  # bytes read through each dataset since it opened
        self._idle_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # datasets opened so far (for tests and benchmarks)

    def _take(self, href: str) -> Any:
        with self._lock:
            for key, (h, ds) in reversed(self._idle.items()):
                if h == href:
                    del self._idle[key]
                    self._idle_bytes -= self._read[key]
                    return ds
            self.opened += 1
        return None

    def _forget(self, ds: Any) -> Any:
        self._read.pop(id(ds), None)
        return ds

    def _give(self, href: str, ds: Any) -> None:
        evicted = []
        with self._lock:
            key = id(ds)
            budget = float("inf") if self.max_bytes is None else self.max_bytes
            if self._closed or self._read.get(key, 0) > budget:
                evicted.append(self._forget(ds))
            else:
                self._idle[key] = (href, ds)
                self._idle_bytes += self._read.setdefault(key, 0)
                while len(self._idle) > self.max_idle or self._idle_bytes > budget:
                    old_key, (_, old) = self._idle.popitem(last=False)
                    self._idle_bytes -= self._read[old_key]
                    evicted.append(self._forget(old))
        for old in evicted:
            old.close()

    def charge(self, ds: Any, nbytes: int) -> None:
        """Count ``nbytes`` of blocks read through ``ds`` (lent by :meth:`checkout`)."""
        with self._lock:
            self._read[id(ds)] = self._read.get(id(ds), 0) + int(nbytes)

    @contextlib.contextmanager
    def checkout(self, href: str) -> Iterator[Any]:
        """An open dataset of ``href`` for the calling thread alone, returned afterwards."""
        import rasterio

        ds = self._take(href)
        if ds is None:
            ds = rasterio.open(href, sharing=False)
        ok = False
        try:
            yield ds
            ok = True
        finally:
            if ok:
                self._give(href, ds)
            else:  # a failed read: a retry opens the file afresh
                with self._lock:
                    self._forget(ds)
                ds.close()

    def close(self) -> None:
        """Close every idle dataset; datasets lent out are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = [self._forget(ds) for _, ds in self._idle.values()]
            self._idle.clear()
            self._idle_bytes = 0
        for ds in idle:
            ds.close()

    @property
    def idle(self) -> int:
        """Idle datasets currently open."""
        return len(self._idle)


_DATASETS: contextvars.ContextVar[DatasetPool | None] = contextvars.ContextVar(
    "latentcube_datasets", default=None
)


#: GDAL's block cache during a build (:func:`reuse_datasets`): a few loading units' blocks.
CACHE_BYTES = 64 * 2**20


@contextlib.contextmanager
def reuse_datasets(
    max_idle: int = 128, max_bytes: int | None = None, cache_bytes: int | None = CACHE_BYTES
) -> Iterator[DatasetPool]:
    """Reuse open datasets across :func:`read_aligned` calls in this context.

    Calls made in this context (and in threads started with a copy of it,
    :func:`contextvars.copy_context`) read through one :class:`DatasetPool`;
    every dataset is closed when the context ends. Without it each read
    opens and closes its file.

    Parameters
    ----------
    max_idle, max_bytes
        The pool's bounds (:class:`DatasetPool`).
    cache_bytes
        GDAL's block cache (``GDAL_CACHEMAX``) while the context lasts, in
        bytes: blocks decoded through the open datasets beyond it are evicted
        (least recently used first), so memory stays flat whatever the area
        while the files stay open. GDAL has one block cache per process: its
        other reads share the cap meanwhile, and the previous setting is
        restored afterwards. None: GDAL's setting is left as it is.
    """
    import rasterio

    pool = DatasetPool(max_idle, max_bytes)
    token = _DATASETS.set(pool)
    env = rasterio.Env(GDAL_CACHEMAX=cache_bytes) if cache_bytes else contextlib.nullcontext()
    try:
        with env:
            yield pool
    finally:
        _DATASETS.reset(token)
        pool.close()


@contextlib.contextmanager
def _opened(href: str, pool: DatasetPool | None) -> Iterator[Any]:
    """``href`` opened when entered (inside the caller's GDAL environment), from ``pool``."""
    import rasterio

    if pool is not None:
        with pool.checkout(href) as ds:
            yield ds
    else:
        with rasterio.open(href, sharing=False) as ds:
            yield ds


def _read_one(
    href: str, geobox: Any, out: np.ndarray, nodata: float | int, pool: DatasetPool | None = None
) -> None:
    """Read one aligned single-band raster into ``out`` (the whole ``geobox``), in place."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.Env(**_GDAL_ENV), _opened(href, pool) as src:
        if src.crs is None or geobox.crs.epsg is None or src.crs.to_epsg() != geobox.crs.epsg:
            raise NotAligned(f"{href}: CRS {src.crs} differs from the grid's {geobox.crs}")
        k = _factor(tuple(src.transform)[:6], geobox)
        if k is None:
            raise NotAligned(f"{href}: pixel grid {tuple(src.transform)[:6]} is not aligned")
        g = geobox.affine
        res = float(g.a)
        ox = round((src.transform.c - g.c) / res)  # source origin in output pixels
        oy = round((g.f - src.transform.f) / res)
        ny, nx = out.shape
        i0, i1 = max(0, oy), min(ny, oy + src.height * k)
        j0, j1 = max(0, ox), min(nx, ox + src.width * k)
        if i0 >= i1 or j0 >= j1:
            out[...] = nodata  # no overlap
            return
        r0, r1 = (i0 - oy) // k, -(-(i1 - oy) // k)
        c0, c1 = (j0 - ox) // k, -(-(j1 - ox) // k)
        window = Window(c0, r0, c1 - c0, r1 - r0)
        dst = out[i0:i1, j0:j1]
        # same pixels and dtype: GDAL decodes straight into the output (no temporary)
        direct = k == 1 and src.dtypes[0] == out.dtype.name and dst.flags.c_contiguous
        arr = src.read(1, window=window, out=dst) if direct else src.read(1, window=window)
        src_nodata = src.nodata
        if pool is not None and pool.max_bytes is not None:  # blocks kept while it is open
            bh, bw = src.block_shapes[0]
            blocks = (-(-r1 // bh) - r0 // bh) * (-(-c1 // bw) - c0 // bw)
            pool.charge(src, blocks * bh * bw * arr.itemsize)
    if src_nodata is not None and not (
        src_nodata == nodata or (np.isnan(src_nodata) and np.isnan(float(nodata)))
    ):  # map the source's nodata at the source resolution
        bad = np.isnan(arr) if np.isnan(src_nodata) else arr == src_nodata
        arr = arr if direct else arr.astype(out.dtype)
        arr[bad] = nodata
    for rows, cols in ((slice(0, i0), slice(None)), (slice(i1, ny), slice(None)),
                       (slice(i0, i1), slice(0, j0)), (slice(i0, i1), slice(j1, nx))):  # fmt: skip
        out[rows, cols] = nodata  # outside the source
    di, dj = (i0 - oy) - r0 * k, (j0 - ox) - c0 * k
    if direct:
        return  # already in place
    if k == 1:
        dst[...] = arr
    elif di == 0 and dj == 0 and dst.shape == (arr.shape[0] * k, arr.shape[1] * k):
        # every source pixel fills k x k output pixels: one broadcast copy into a
        # view of ``dst`` (splitting both axes never needs a copy)
        dst.reshape(arr.shape[0], k, arr.shape[1], k)[...] = arr[:, None, :, None]
    else:
        dst[...] = np.repeat(np.repeat(arr, k, axis=0), k, axis=1)[
            di : di + i1 - i0, dj : dj + j1 - j0
        ]


def read_aligned(
    items: Sequence[Any],
    assets: Mapping[str, str],
    geobox: Any,
    *,
    dtype: str,
    nodata: float | int,
    patch_url: Callable[[str], str] | None = None,
    pool: int | None = None,
    geoboxes: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Read grid-aligned bands of items onto ``geobox`` without warping.

    The fast path of :func:`load_items` for assets that pass
    :func:`grid_aligned`: each asset is read once at its native resolution
    (only the window under ``geobox``) and every pixel repeated ``f x f`` times
    for a source ``f`` times coarser than the grid (Sentinel-2's 20 m bands
    and SCL on the 10 m grid), which equals a nearest-neighbour warp.
    Pixels outside a source get ``nodata``; a source nodata value is mapped to
    ``nodata``. ``geoboxes`` gives some bands another grid of the same lattice
    (e.g. a mask band with a halo), read in the same round of the pool.
    Inside :func:`reuse_datasets` local files stay open between calls (remote
    ones are opened per read).
    Raises :class:`NotAligned` when an opened file does not match its metadata.

    Returns
    -------
    dict
        Band name -> numpy array (item, y, x), items in the given order.
    """
    if not items:
        raise StacError("nothing to load: no items")
    boxes = {b: (geoboxes or {}).get(b, geobox) for b in assets}
    out = {b: np.empty((len(items), *boxes[b].shape), dtype=dtype) for b in assets}
    jobs = []
    for k, it in enumerate(items):
        for band, key in assets.items():
            href = it.assets[key].get_absolute_href() or it.assets[key].href
            jobs.append((patch_url(href) if patch_url else href, boxes[band], out[band][k]))
    ex = _executor(pool or 1)
    datasets = _DATASETS.get()  # the reader threads do not see this thread's context
    # local files only: a remote (/vsicurl/) dataset is opened per read, as GDAL's HTTP
    # connections belong to the thread that opened them (a kept one hung a test server)
    futures = [
        ex.submit(_read_one, h, g, o, nodata, None if "://" in h else datasets) for h, g, o in jobs
    ]
    for fut in futures:
        fut.result()
    return out


@functools.cache
def _executor(workers: int) -> Any:
    """A reader thread pool kept for the process (starting threads per unit is not free)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latentcube-read")


def _transient(err: BaseException) -> bool:
    """Whether a failed load is worth repeating: HTTP 403/429/5xx, timeouts, remote reads."""
    import re

    text = f"{type(err).__name__}: {err}".lower()
    if re.search(r"\b(403|429|500|502|503|504)\b", text):
        return True
    words = ("timed out", "timeout", "connection", "temporarily", "reset by peer",
             "curl error", "http response code", "forbidden", "/vsicurl/")  # fmt: skip
    return any(w in text for w in words)


def with_retries(
    fn: Callable[[], Any],
    *,
    what: str,
    max_retries: int = 3,
    backoff: float = 1.0,
    sleep: Callable[[float], None] | None = None,
    on_retry: Callable[[], None] | None = None,
) -> Any:
    """Call ``fn`` and retry transient failures with exponential backoff.

    A load is retried as a whole (re-signing its URLs), which also recovers
    from an expired token (HTTP 403) in a long build.

    Parameters
    ----------
    fn
        The call.
    what
        Description for the error message.
    max_retries
        Retries after the first attempt.
    backoff
        Wait ``backoff * 2 ** n`` seconds before retry ``n + 1``.
    sleep
        Sleep function (for tests); :func:`time.sleep` by default.
    on_retry
        Called before every retry.

    Returns
    -------
    Any
        What ``fn`` returns.

    Raises
    ------
    StacError
        When every attempt failed, or at once for a non-transient error.
    """
    import time

    wait = sleep or time.sleep
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except StacError:
            raise
        except Exception as err:
            if attempt >= max_retries or not _transient(err):
                raise StacError(
                    f"{what} failed after {attempt + 1} attempt(s): {type(err).__name__}: {err}"
                ) from err
            wait(backoff * 2**attempt)
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")  # pragma: no cover


BLOB_DOMAIN = ".blob.core.windows.net"


def needs_signing(spec: CatalogSpec, items: Iterable[Any]) -> bool:
    """Whether asset URLs must be signed with :mod:`planetary_computer`.

    True for the Planetary Computer catalog and for any item whose assets
    live in Azure blob storage (where Planetary Computer keeps its data).
    """
    if spec.sign:
        return True
    from urllib.parse import urlparse

    for it in items:
        for asset in it.assets.values():
            if urlparse(asset.href).netloc.endswith(BLOB_DOMAIN):
                return True
    return False


def signer(sign: bool) -> Callable[[str], str] | None:
    """The ``patch_url`` function: :func:`planetary_computer.sign` or None.

    :func:`planetary_computer.sign` caches a token per storage container and
    fetches a new one when fewer than 60 s of validity remain, so calling it
    at every load re-signs long builds.
    """
    if not sign:
        return None
    pc = _need("planetary_computer")

    def patch(url: str) -> str:
        return str(pc.sign(url))

    return patch
