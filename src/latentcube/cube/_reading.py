"""Reading STAC assets onto the cube's grid: odc-stac loads, unwarped aligned reads, GDAL set-up.

The pixel side of :mod:`latentcube.cube.stac` (which re-exports these names):
:func:`load_items` warps any asset with odc-stac; :func:`read_aligned` reads assets
whose pixels lie on the grid's lattice (:func:`grid_aligned`) at their native
resolution and repeats them, through a :class:`DatasetPool` of open files inside
:func:`reuse_datasets`; :func:`configure_http` sets GDAL's HTTP options for both.
The STAC dependencies (core dependencies of latentcube) are imported inside
the functions (:func:`require`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from latentcube.errors import StacError

__all__ = [
    "CACHE_BYTES",
    "DatasetPool",
    "NotAligned",
    "configure_http",
    "grid_aligned",
    "load_items",
    "read_aligned",
    "require",
    "reuse_datasets",
]


def require(module: str) -> Any:
    """Import an optional dependency of STAC builds, or raise :class:`StacError` naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise StacError(
            f"building cubes from STAC needs the package {module.split('.')[0]!r}: "
            "reinstall latentcube (pip install latentcube), which depends on them"
        ) from err


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
    odc_stac = require("odc.stac")
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
    odc_stac = require("odc.stac")
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
