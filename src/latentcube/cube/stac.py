"""STAC search and loading: pystac-client to find items, odc-stac to read them on a grid.

This module finds items (catalogs, search, asset keys, grouping by day), signs
their URLs and retries failed loads; reading their pixels onto a grid is
:mod:`latentcube.cube._reading`, whose public names are re-exported here.
The STAC dependencies (odc-stac, pystac-client, planetary-computer; core
dependencies of latentcube) are imported inside the functions.

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

import datetime as _dt
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcube.cube._reading import (
    CACHE_BYTES,
    DatasetPool,
    NotAligned,
    configure_http,
    grid_aligned,
    load_items,
    read_aligned,
    require,
    reuse_datasets,
)
from latentcube.errors import StacError

__all__ = [
    "CACHE_BYTES",
    "CATALOGS",
    "S1_ASSETS",
    "S2_ASSETS",
    "CatalogSpec",
    "DatasetPool",
    "NotAligned",
    "StacError",
    "configure_http",
    "grid_aligned",
    "group_items",
    "item_datetime",
    "load_items",
    "needs_signing",
    "open_client",
    "parse_time",
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
    pystac_client = require("pystac_client")
    from pystac_client.stac_api_io import StacApiIO

    io = StacApiIO(max_retries=_retry(max_retries, backoff))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", require("pystac_client.warnings").NoConformsTo)
            return pystac_client.Client.open(spec.url, stac_io=io)
    except Exception as err:
        raise StacError(f"cannot open catalog {spec.name!r} at {spec.url}: {err}") from err


def _collection_ids(client: Any) -> list[str]:
    try:
        return sorted(c.id for c in client.get_collections())
    except Exception:
        return []


def parse_time(value: str | _dt.date | _dt.datetime | np.datetime64, end: bool) -> pd.Timestamp:
    """A UTC timestamp; a date (no time of day) as ``end`` means the end of that day."""
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
    t0, t1 = parse_time(start, False), parse_time(end, True)
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
    pc = require("planetary_computer")

    def patch(url: str) -> str:
        return str(pc.sign(url))

    return patch
