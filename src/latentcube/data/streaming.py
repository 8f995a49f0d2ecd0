"""Context windows streamed from any number of Zarr cubes, without loading them whole.

For training on hundreds of cubes the in-memory :class:`~latentcube.data.windows.Windows`
would hold every cube's arrays at once. :class:`StreamingWindows` holds only an index:

* **Index, built once per cube.** The windows of a cube are enumerated exactly as
  :func:`~latentcube.data.windows.extract_windows` does (same strides, same seeded
  draw of 11 of 20 dates, same validity and gap rules), reading only the validity
  of the candidate centre pixels (the strided grid, every date) and the time axis.
  The result, (dates, top-left pixel) per window, is saved as a small ``.npz`` in an
  index folder (default ``.latentcube-windows/`` beside the cubes) and reused by the
  next run while the cube is unchanged: the file records a fingerprint of the store
  (its metadata documents, and the name, size and modification time of every file of
  the validity array and of the time axis) and the window options, and is rebuilt
  when either differs.
* **Slabs, read per batch.** ``batch(idx)`` reads, for the windows of ``idx``
  that lie in the same store chunk block, one box covering their 11 x C x 15 x 15
  slabs through xarray (only the Zarr chunks under the box are decoded), with the
  reader's casts (float32, CF scale and fill decoded, NaN where invalid), and cuts
  the windows out of it. Nothing is kept between batches: memory is one batch and
  its boxes, whatever the number of cubes.
* **Order with locality.** :meth:`StreamingWindows.epoch_order` shuffles blocks of
  windows that share a store chunk block (a cube, a time chunk of the first date, a
  spatial chunk) and then the windows of every run of ``mix`` consecutive blocks
  together, so a batch touches a few chunk blocks instead of one per window. It is a
  function of ``(seed, epoch)`` only, the same in every process.

Stores are opened lazily, per process: a copy of a :class:`StreamingWindows` sent to
a ``DataLoader`` worker (fork or spawn) opens its own stores on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from latentcube.cube.schema import band_positions, expand_bands
from latentcube.errors import CubeError
from latentcube.io import hash_zarr_metadata
from latentcube.sensors import band_dim

__all__ = [
    "CubeWindowIndex",
    "StreamingWindows",
    "WindowOptions",
    "build_index",
    "store_fingerprint",
]

INDEX_FORMAT = 1
INDEX_DIR = ".latentcube-windows"


@dataclass(frozen=True)
class WindowOptions:
    """How windows are cut: the options of :func:`~latentcube.data.windows.extract_windows`.

    Attributes
    ----------
    sensor
        Sensor whose ``<sensor>_valid`` decides the windows (the centre pixel
        must be valid at the centre date).
    mode
        ``"train"``: ``n_dates`` random dates out of each run of ``pool``;
        ``"consecutive"``: ``n_dates`` consecutive dates.
    n_dates, pool, window
        Context size.
    stride_t, stride_xy
        Strides between window starts in dates and pixels.
    max_total_gap
        Windows whose gaps sum to this many days or more are dropped.
    max_windows
        At most this many windows per cube (a seeded subset).
    seed
        Seed of the date draw and of the subset.
    """

    sensor: str = "s2"
    mode: str = "train"
    n_dates: int = 11
    pool: int = 20
    window: int = 15
    stride_t: int = 17
    stride_xy: int = 9
    max_total_gap: int = 200
    max_windows: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.mode not in ("train", "consecutive"):
            raise ValueError(f"mode must be 'train' or 'consecutive', got {self.mode!r}")
        if min(self.n_dates, self.pool, self.window, self.stride_t, self.stride_xy) < 1:
            raise ValueError(f"window options must be positive: {self}")

    def key(self) -> str:
        """The options as canonical JSON (part of an index file's identity)."""
        return json.dumps(asdict(self), sort_keys=True)


def store_fingerprint(path: str | os.PathLike[str], sensor: str = "s2") -> str:
    """A digest that changes when the windows of the cube at ``path`` may change.

    For a Zarr directory store: the SHA-256 of every array's and the group's
    ``zarr.json`` (shapes, chunks, attributes: the build request, items and
    creation time) and of the relative path, size and modification time of every
    file of ``<sensor>_valid`` and ``time``. For a ``.zip`` store or anything else:
    of the file's size and modification time. Cheap: no chunk is read.
    """
    root = Path(path)
    h = hashlib.sha256()
    if hash_zarr_metadata(root, h):
        for name in (f"{sensor}_valid", "time"):
            for f in sorted(p for p in (root / name).rglob("*") if p.is_file()):
                st = f.stat()
                h.update(f"{f.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()
    st = root.stat()
    h.update(f"{root.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclass
class CubeWindowIndex:
    """The windows of one cube: what the index file holds.

    Attributes
    ----------
    path
        The store.
    fingerprint
        :func:`store_fingerprint` of the store when the index was built.
    shape
        ``(time, y, x)`` of the cube.
    chunks
        ``(time, y, x)`` chunks of the sensor's array in the store.
    days
        (time,) int64 days since 1970-01-01.
    t_idx
        (N, T) int32 date indices of every window.
    iy, ix
        (N,) int32 top-left pixel of every window.
    """

    path: Path
    fingerprint: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    days: np.ndarray
    t_idx: np.ndarray
    iy: np.ndarray
    ix: np.ndarray

    def __len__(self) -> int:
        return int(self.iy.shape[0])


def _index_file(path: Path, index_dir: Path | None) -> Path:
    folder = index_dir if index_dir is not None else path.parent / INDEX_DIR
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return folder / f"{path.name}-{tag}.npz"


def _enumerate(
    valid_c: np.ndarray, days: np.ndarray, shape: tuple[int, int, int], opt: WindowOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of a cube from the validity at the strided centres (``extract_windows``' rules).

    ``valid_c`` is (time, len(ys), len(xs)): the validity at ``(ys + W//2, xs + W//2)``.
    The random numbers are drawn in the order ``extract_windows`` draws them, so both
    give the same windows for the same seed.
    """
    n_t, ny, nx = shape
    w, n = opt.window, opt.n_dates
    rng = np.random.default_rng(opt.seed)
    span = n if opt.mode == "consecutive" else min(opt.pool, n_t)
    empty = np.zeros(0, np.int32)
    if n_t < n or ny < w or nx < w:
        return np.zeros((0, n), np.int32), empty, empty
    starts = np.arange(0, n_t - span + 1, opt.stride_t)
    ys = np.arange(0, ny - w + 1, opt.stride_xy)
    xs = np.arange(0, nx - w + 1, opt.stride_xy)
    gy, gx = np.meshgrid(np.arange(ys.size), np.arange(xs.size), indexing="ij")
    jy, jx = gy.ravel(), gx.ravel()
    s = np.repeat(starts, jy.size)
    jy, jx = np.tile(jy, starts.size), np.tile(jx, starts.size)
    if opt.mode == "train":
        pick = np.sort(np.argsort(rng.random((s.size, span)), axis=1)[:, :n], axis=1)
        t_idx = s[:, None] + pick
    else:
        t_idx = s[:, None] + np.arange(n)
    keep = valid_c[t_idx[:, n // 2], jy, jx]
    keep &= (days[t_idx[:, -1]] - days[t_idx[:, 0]]) < opt.max_total_gap
    idx = np.flatnonzero(keep)
    if opt.max_windows is not None and idx.size > opt.max_windows:
        idx = np.sort(rng.choice(idx, opt.max_windows, replace=False))
    return (
        t_idx[idx].astype(np.int32),
        ys[jy[idx]].astype(np.int32),
        xs[jx[idx]].astype(np.int32),
    )


def build_index(
    path: str | os.PathLike[str],
    opt: WindowOptions,
    *,
    index_dir: str | os.PathLike[str] | None = None,
) -> CubeWindowIndex:
    """The window index of one cube: loaded from its file when still valid, else built and saved.

    Parameters
    ----------
    path
        A latentcube Zarr store (directory or ``.zip``).
    opt
        Window options.
    index_dir
        Folder of the index files; default ``.latentcube-windows/`` beside the
        store. When it cannot be written the index is kept in memory only (a
        warning says so).

    Returns
    -------
    CubeWindowIndex
        The windows of the cube.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no cube at {p}")
    fp = store_fingerprint(p, opt.sensor)
    file = _index_file(p, Path(index_dir) if index_dir is not None else None)
    if file.exists():
        try:
            with np.load(file, allow_pickle=False) as z:
                if (
                    int(z["format"]) == INDEX_FORMAT
                    and str(z["fingerprint"]) == fp
                    and str(z["options"]) == opt.key()
                ):
                    return CubeWindowIndex(
                        p,
                        fp,
                        tuple(int(v) for v in z["shape"]),  # type: ignore[arg-type]
                        tuple(int(v) for v in z["chunks"]),  # type: ignore[arg-type]
                        z["days"],
                        z["t_idx"],
                        z["iy"],
                        z["ix"],
                    )
        except (OSError, KeyError, ValueError):
            pass  # unreadable or of another version: rebuilt below
    index = _scan(p, fp, opt)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(
            tmp,
            format=INDEX_FORMAT,
            fingerprint=fp,
            options=opt.key(),
            shape=np.array(index.shape),
            chunks=np.array(index.chunks),
            days=index.days,
            t_idx=index.t_idx,
            iy=index.iy,
            ix=index.ix,
        )
        os.replace(tmp, file)
    except OSError as err:
        warnings.warn(
            f"window index of {p} not saved ({err}); it is rebuilt next run", stacklevel=2
        )
    return index


def _scan(path: Path, fp: str, opt: WindowOptions) -> CubeWindowIndex:
    """Enumerate a cube's windows, reading its time axis and the validity at the centres."""
    from latentcube.io import open_zarr

    ds = open_zarr(path, chunks=None)
    name = f"{opt.sensor}_valid"
    if opt.sensor not in ds or name not in ds:
        raise CubeError(
            f"{path}: no {opt.sensor!r} or {name!r} variable; not a cube with this sensor"
        )
    valid = ds[name].variable.transpose("time", "y", "x")
    n_t, ny, nx = (int(v) for v in valid.shape)
    days = ds["time"].values.astype("datetime64[D]").astype(np.int64)
    c = opt.window // 2
    ys = np.arange(0, max(ny - opt.window + 1, 0), opt.stride_xy) + c
    xs = np.arange(0, max(nx - opt.window + 1, 0), opt.stride_xy) + c
    if ys.size and xs.size and n_t:
        valid_c = np.asarray(valid[:, ys, xs].values, dtype=bool)  # outer (orthogonal) indexing
    else:
        valid_c = np.zeros((n_t, ys.size, xs.size), bool)
    t_idx, iy, ix = _enumerate(valid_c, days, (n_t, ny, nx), opt)
    return CubeWindowIndex(path, fp, (n_t, ny, nx), _chunks(ds, opt.sensor), days, t_idx, iy, ix)


def _chunks(ds: Any, sensor: str) -> tuple[int, int, int]:
    """(time, y, x) chunk sizes of ``sensor`` in its store (the full size where unchunked)."""
    var = ds[sensor]
    enc = var.encoding.get("chunks") or var.encoding.get("preferred_chunks")
    sizes: dict[Any, int] = dict(var.sizes)
    if isinstance(enc, dict):
        got = {d: int(enc.get(d) or sizes[d]) for d in sizes}
    elif enc is not None:
        got = {d: int(c) for d, c in zip(var.dims, enc, strict=True)}
    else:
        got = {d: int(s) for d, s in sizes.items()}
    return got["time"], got["y"], got["x"]


class _Reader:
    """One opened cube: boxes of the sensor's values and validity, decoded as the reader does."""

    def __init__(
        self,
        path: Path,
        sensor: str,
        bands: Sequence[str] | None,
        min_bands: int | None = None,
    ) -> None:
        from latentcube.io import open_zarr

        ds = open_zarr(path, chunks=None)
        bdim = band_dim(sensor)
        var = ds[sensor].variable.transpose("time", bdim, "y", "x")
        names = [str(b) for b in ds[bdim].values]
        #: positions of the bands in the read, None for absent bands (NaN planes)
        self.expand: list[int | None] | None = None
        if bands is None:
            self.band_sel: Any = slice(None)
            self.bands = names
        else:
            missing = [b for b in bands if b not in names]
            if missing and min_bands is None:
                raise CubeError(f"{path}: {sensor} has no band(s) {missing}; it has {names}")
            where = str(path)
            full = band_positions(names, bands, min_bands=min_bands, sensor=sensor, where=where)
            pos = [p for p in full if p is not None]
            same = pos == list(range(len(names)))
            self.band_sel = slice(None) if same else pos
            self.bands = list(bands)
            if len(pos) < len(full):
                it = iter(range(len(pos)))
                self.expand = [None if p is None else next(it) for p in full]
        self.var = var
        self.valid = ds[f"{sensor}_valid"].variable.transpose("time", "y", "x")

    def read(
        self, t0: int, t1: int, y0: int, y1: int, x0: int, x1: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(data, valid)`` of dates ``t0:t1`` and pixels ``[y0:y1, x0:x1]``."""
        data = np.asarray(self.var[t0:t1, self.band_sel, y0:y1, x0:x1].values, dtype=np.float32)
        if self.expand is not None:
            data = expand_bands(data, self.expand)
        valid = np.asarray(self.valid[t0:t1, y0:y1, x0:x1].values, dtype=bool)
        return data, valid


class StreamingWindows:
    """Context windows of many Zarr cubes, read from the stores batch by batch.

    A :class:`~latentcube.data.source.WindowSource`: ``len``, ``window``,
    ``n_dates`` and ``batch(idx)`` returning ``(x, mask, gaps)`` exactly as
    :meth:`~latentcube.data.windows.Windows.batch` does for the same windows.

    Parameters
    ----------
    paths
        Zarr cube stores (directories or ``.zip``).
    bands
        Band order of ``x``; default every band of the sensor in store order
        (the same in every cube).
    min_bands
        Band-mask models: a store may lack some of ``bands`` (they are NaN in
        ``x``) if it has at least ``min_bands`` of them; default None: every
        store must have every band.
    index_dir
        Folder of the window index files (default ``.latentcube-windows/``
        beside each store).
    mix
        Chunk blocks whose windows are shuffled together by :meth:`epoch_order`.
    max_open
        Stores kept open per process (least recently used closed first), so
        memory does not grow with the number of cubes an epoch visits.
    progress
        Show a bar while index files are built or checked.
    **options
        Fields of :class:`WindowOptions` (``sensor``, ``mode``, ``n_dates``,
        ``pool``, ``window``, ``stride_t``, ``stride_xy``, ``max_total_gap``,
        ``max_windows``, ``seed``).

    Examples
    --------
    >>> train = StreamingWindows(sorted(Path("cubes").glob("*.zarr")), stride_t=3,
    ...                          stride_xy=3)  # doctest: +SKIP
    >>> x, mask, gaps = train.batch(train.epoch_order(seed=42, epoch=0)[:256])  # doctest: +SKIP
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        bands: Sequence[str] | None = None,
        min_bands: int | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        mix: int = 8,
        max_open: int = 16,
        progress: bool = False,
        **options: Any,
    ) -> None:
        from tqdm.auto import tqdm

        if not paths:
            raise ValueError("no cube stores given")
        if mix < 1:
            raise ValueError(f"mix must be at least 1, got {mix}")
        self.options = WindowOptions(**options)
        self.paths = [Path(p) for p in paths]
        self.bands = None if bands is None else tuple(bands)
        self.min_bands = min_bands
        self.mix = int(mix)
        self.max_open = max(1, int(max_open))
        self.window = self.options.window
        self.indexes = [
            build_index(p, self.options, index_dir=index_dir)
            for p in tqdm(self.paths, desc="window index", unit="cube", disable=not progress)
        ]
        counts = np.array([len(i) for i in self.indexes], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.cube_id = np.repeat(np.arange(len(self.indexes), dtype=np.int32), counts)
        n = self.options.n_dates
        self.t_idx = (
            np.concatenate([i.t_idx for i in self.indexes])
            if counts.sum()
            else np.zeros((0, n), np.int32)
        )
        self.iy = (
            np.concatenate([i.iy for i in self.indexes]) if counts.sum() else np.zeros(0, np.int32)
        )
        self.ix = (
            np.concatenate([i.ix for i in self.indexes]) if counts.sum() else np.zeros(0, np.int32)
        )
        self.group = self._groups()
        self._readers: OrderedDict[int, _Reader] = OrderedDict()
        self._pid = os.getpid()
        self._n_bands: int | None = None

    # ------------------------------------------------------------------ interface

    def __len__(self) -> int:
        return int(self.iy.shape[0])

    @property
    def n_dates(self) -> int:
        """Dates per window."""
        return self.options.n_dates

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # open stores stay in the process that opened them
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def reader(self, k: int) -> _Reader:
        """The opened store of cube ``k`` (opened on first use in this process)."""
        if self._pid != os.getpid():  # a forked copy: never use the parent's handles
            self._readers, self._pid = OrderedDict(), os.getpid()
        reader = self._readers.pop(k, None)
        if reader is None:
            reader = _Reader(self.paths[k], self.options.sensor, self.bands, self.min_bands)
            while len(self._readers) >= self.max_open:
                self._readers.popitem(last=False)
        self._readers[k] = reader  # most recently used last
        return reader

    def gaps(self, idx: np.ndarray) -> np.ndarray:
        """(n, T-1) int64 day gaps between consecutive dates of windows ``idx``."""
        idx = np.asarray(idx, np.int64)
        out = np.empty((idx.size, self.n_dates - 1), np.int64)
        cid = self.cube_id[idx]
        for k in np.unique(cid):
            m = cid == k
            out[m] = np.diff(self.indexes[k].days[self.t_idx[idx[m]]], axis=1)
        return out

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Materialise windows ``idx``, reading only the store chunks under their slabs.

        Returns
        -------
        tuple
            ``x`` (n, T, C, W, W) float32 (NaN where invalid), ``mask``
            (n, T, W, W) bool, ``gaps`` (n, T-1) int64.
        """
        idx = np.asarray(idx, np.int64).ravel()
        n, t, w = idx.size, self.n_dates, self.window
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for sel in self._boxes(idx):
            parts.append((sel, *self._read_box(idx[sel])))
        c = parts[0][1].shape[2] if parts else self._bands_count()
        x = np.empty((n, t, c, w, w), np.float32)
        mask = np.empty((n, t, w, w), bool)
        for sel, xs, ms in parts:
            if xs.shape[2] != c:
                raise CubeError(
                    f"cubes differ in their number of {self.options.sensor} bands ({xs.shape[2]} "
                    f"vs {c}); pass bands= to select the same bands in every cube"
                )
            x[sel], mask[sel] = xs, ms
        np.copyto(x, np.float32(np.nan), where=~mask[:, :, None])
        return x, mask, self.gaps(idx)

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The order of the windows in ``epoch``: chunk blocks shuffled, then windows within runs.

        The blocks (windows sharing a cube, the time chunk of their first date and
        a spatial chunk) are put in a seeded random order; the windows of every run
        of ``mix`` consecutive blocks are then shuffled together. A function of
        ``(seed, epoch)`` only.

        Returns
        -------
        numpy.ndarray
            (len(self),) int64, a permutation of the window indices.
        """
        rng = np.random.default_rng([seed, epoch, 7])
        if len(self) == 0:
            return np.zeros(0, np.int64)
        by_group = np.argsort(self.group, kind="stable")
        bounds = np.flatnonzero(np.diff(self.group[by_group])) + 1
        blocks = np.split(by_group, bounds)
        perm = rng.permutation(len(blocks))
        out = []
        for r in range(0, len(blocks), self.mix):
            run = np.concatenate([blocks[b] for b in perm[r : r + self.mix]])
            out.append(run[rng.permutation(run.size)])
        return np.concatenate(out).astype(np.int64)

    # ------------------------------------------------------------------ internals

    def _bands_count(self) -> int:
        if self._n_bands is None:
            self._n_bands = len(self.reader(0).bands)
        return self._n_bands

    def _groups(self) -> np.ndarray:
        """(N,) int64 chunk-block id of every window (cube, time chunk, y chunk, x chunk)."""
        if len(self) == 0:
            return np.zeros(0, np.int64)
        ch = np.array([i.chunks for i in self.indexes], np.int64)[self.cube_id]
        keys = np.stack(
            [
                self.cube_id.astype(np.int64),
                self.t_idx[:, 0] // ch[:, 0],
                self.iy // ch[:, 1],
                self.ix // ch[:, 2],
            ],
            axis=1,
        )
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        return inverse.ravel().astype(np.int64)

    def _boxes(self, idx: np.ndarray) -> list[np.ndarray]:
        """Positions in ``idx`` grouped into boxes: one read each.

        Windows of one chunk block share a box, unless the box would be more
        than 4 times the volume of their slabs (windows far apart): then each
        window is read on its own.
        """
        out: list[np.ndarray] = []
        g = self.group[idx]
        order = np.argsort(g, kind="stable")
        for sel in np.split(order, np.flatnonzero(np.diff(g[order])) + 1):
            if sel.size == 0:
                continue
            w = idx[sel]
            span_t = self.t_idx[w, -1] - self.t_idx[w, 0] + 1
            slabs = int(np.sum(span_t)) * self.window**2
            box = (
                (int(self.t_idx[w, -1].max()) - int(self.t_idx[w, 0].min()) + 1)
                * (int(self.iy[w].max()) - int(self.iy[w].min()) + self.window)
                * (int(self.ix[w].max()) - int(self.ix[w].min()) + self.window)
            )
            if sel.size > 1 and box > 4 * slabs:
                out.extend(sel[i : i + 1] for i in range(sel.size))
            else:
                out.append(sel)
        return out

    def _read_box(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``w`` (one cube) cut from one read of the box around them."""
        k = int(self.cube_id[w[0]])
        tt, iy, ix = self.t_idx[w], self.iy[w], self.ix[w]
        t0, y0, x0 = int(tt[:, 0].min()), int(iy.min()), int(ix.min())
        t1 = int(tt[:, -1].max()) + 1
        y1, x1 = int(iy.max()) + self.window, int(ix.max()) + self.window
        data, valid = self.reader(k).read(t0, t1, y0, y1, x0, x1)
        # every W x W window of the box as a view; one gather per array: the advanced
        # indices (window, date) come first, then band and the W x W pixels
        ws = (self.window, self.window)
        rt, ry, rx = tt - t0, (iy - y0)[:, None], (ix - x0)[:, None]
        xs = sliding_window_view(data, ws, axis=(2, 3))[rt, :, ry, rx]
        ms = sliding_window_view(valid, ws, axis=(1, 2))[rt, ry, rx]
        return xs, ms
