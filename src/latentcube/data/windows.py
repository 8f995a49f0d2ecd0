"""Context windows (T dates x W x W pixels) from cubes, as in paper spec section 2.5.

Windows are stored as *indices* into a cube's arrays (:class:`Windows`) and
materialised batch by batch with one vectorised fancy-indexing call, so tens of
thousands of windows cost a few MB instead of ~100 kB each.

Training mode: from each run of ``pool`` (20) consecutive valid dates, ``n_dates``
(11) are drawn at random (sorted), so the day gaps vary; consecutive mode (for
validation and inference) takes 11 consecutive dates. Windows whose centre
pixel is invalid at the centre date, or whose gaps sum to ``max_total_gap`` (200)
days or more, are dropped. Splits are by cube (:func:`split_cubes`) or by
spatial blocks of one cube (:func:`block_regions` + ``region=``), never by
window, so overlapping neighbours cannot leak between training and validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import band_positions, expand_bands, select_bands
from latentcube.sensors import band_dim

T = TypeVar("T")
W = TypeVar("W")  # windows of one kind: Windows, FusionWindows

__all__ = [
    "CubeArrays",
    "WindowDataset",
    "Windows",
    "array_digest",
    "block_regions",
    "extract_windows",
    "hide_entries",
    "split_cubes",
    "split_windows",
]


@dataclass
class CubeArrays:
    """One sensor of one cube as plain arrays.

    Attributes
    ----------
    data
        (time, band, y, x) float32, NaN where invalid.
    valid
        (time, y, x) bool.
    days
        (time,) int64 days since 1970-01-01 of each date.
    """

    data: np.ndarray
    valid: np.ndarray
    days: np.ndarray

    @classmethod
    def from_cube(
        cls,
        cube: xr.Dataset,
        sensor: str = "s2",
        bands: Sequence[str] | None = None,
        *,
        min_bands: int | None = None,
    ) -> CubeArrays:
        """Load ``sensor`` of a cube (validated for ``bands``) into memory.

        With ``min_bands`` (band-mask models), bands of ``bands`` that the cube
        lacks are NaN planes, as long as it has at least ``min_bands`` of them
        (:func:`~latentcube.cube.schema.band_positions`).
        """
        pos: list[int | None] | None = None
        if bands is not None and min_bands is not None:
            names = [str(b) for b in cube[band_dim(sensor)].values]
            where = str(cube.attrs.get("source", "the cube"))[:80]
            pos = band_positions(names, bands, min_bands=min_bands, sensor=sensor, where=where)
            have = [b for b in bands if b in names]
            cube = select_bands(cube, {sensor: have})
            pos = [have.index(b) if b in have else None for b in bands]
        elif bands is not None:
            cube = select_bands(cube, {sensor: bands})
        var = cube[sensor].transpose("time", band_dim(sensor), "y", "x")
        days = cube["time"].values.astype("datetime64[D]").astype(np.int64)
        values = var.values
        if pos is not None:
            values = expand_bands(values, pos)
        return cls(
            np.ascontiguousarray(values, dtype=np.float32),
            np.ascontiguousarray(cube[f"{sensor}_valid"].values, dtype=bool),
            days,
        )


@dataclass
class Windows:
    """Index-based context windows over one or more cubes.

    Attributes
    ----------
    cubes
        The cubes' arrays.
    cube_id
        (N,) index into ``cubes``.
    t_idx
        (N, T) date indices, increasing.
    iy, ix
        (N,) top-left pixel of each window; the centre is ``(iy + W//2, ix + W//2)``.
    window
        Window side W in pixels.
    """

    cubes: list[CubeArrays]
    cube_id: np.ndarray
    t_idx: np.ndarray
    iy: np.ndarray
    ix: np.ndarray
    window: int = 15
    _order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def __len__(self) -> int:
        return int(self.cube_id.shape[0])

    @property
    def n_dates(self) -> int:
        """Dates per window."""
        return int(self.t_idx.shape[1])

    def gaps(self, idx: np.ndarray | None = None) -> np.ndarray:
        """(n, T-1) day gaps between consecutive dates of the windows."""
        sel = slice(None) if idx is None else idx
        out = np.empty((len(self.cube_id[sel]), self.n_dates - 1), np.int64)
        for k, c in enumerate(self.cubes):
            m = self.cube_id[sel] == k
            if m.any():
                out[m] = np.diff(c.days[self.t_idx[sel][m]], axis=1)
        return out

    def centre_days(self) -> np.ndarray:
        """(N,) day number of every window's centre date."""
        out = np.empty(len(self), np.int64)
        for k, c in enumerate(self.cubes):
            m = self.cube_id == k
            out[m] = c.days[self.t_idx[m, self.n_dates // 2]]
        return out

    def centre_valid(self) -> np.ndarray:
        """(N,) whether each window's centre pixel is valid at its centre date."""
        out = np.zeros(len(self), bool)
        c = self.window // 2
        for k, cube in enumerate(self.cubes):
            m = self.cube_id == k
            out[m] = cube.valid[self.t_idx[m, self.n_dates // 2], self.iy[m] + c, self.ix[m] + c]
        return out

    def arrays(self) -> list[np.ndarray]:
        """Every array the windows read (for :func:`array_digest`).

        The cubes' values, validity and days, then the window indices.
        """
        out = [a for c in self.cubes for a in (c.data, c.valid, c.days)]
        return [*out, self.cube_id, self.t_idx, self.iy, self.ix, np.array([self.window])]

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Materialise windows ``idx``.

        Returns
        -------
        tuple
            ``x`` (n, T, C, W, W) float32 (NaN where invalid), ``mask``
            (n, T, W, W) bool, ``gaps`` (n, T-1) int64.
        """
        idx = np.asarray(idx)
        w = self.window
        n, t = len(idx), self.n_dates
        c0 = self.cubes[0].data.shape[1]
        x = np.empty((n, t, c0, w, w), np.float32)
        mask = np.empty((n, t, w, w), bool)
        off = np.arange(w)
        for k, c in enumerate(self.cubes):
            m = self.cube_id[idx] == k
            if not m.any():
                continue
            sel = idx[m]
            ti = self.t_idx[sel][:, :, None, None]
            yi = (self.iy[sel][:, None] + off)[:, None, :, None]
            xi = (self.ix[sel][:, None] + off)[:, None, None, :]
            mask[m] = c.valid[ti, yi, xi]
            x[m] = c.data[
                ti[:, :, None],
                np.arange(c0)[None, None, :, None, None],
                yi[:, :, None],
                xi[:, :, None],
            ]
        return x, mask, self.gaps(idx)

    def subset(self, idx: np.ndarray) -> Windows:
        """The windows ``idx`` (sharing the cube arrays)."""
        return Windows(
            self.cubes, self.cube_id[idx], self.t_idx[idx], self.iy[idx], self.ix[idx], self.window
        )

    @staticmethod
    def concat(parts: Sequence[Windows]) -> Windows:
        """Concatenate windows of different cubes."""
        cubes: list[CubeArrays] = []
        ids, ts, ys, xs = [], [], [], []
        for p in parts:
            ids.append(p.cube_id + len(cubes))
            cubes.extend(p.cubes)
            ts.append(p.t_idx)
            ys.append(p.iy)
            xs.append(p.ix)
        return Windows(
            cubes,
            np.concatenate(ids),
            np.concatenate(ts),
            np.concatenate(ys),
            np.concatenate(xs),
            parts[0].window,
        )


def block_regions(
    shape: tuple[int, int],
    block_px: int,
    fractions: Sequence[float] = (0.75, 0.25),
    seed: int = 42,
    *,
    merge_remainder: bool = False,
) -> list[np.ndarray]:
    """Assign square blocks of a grid to splits.

    Parameters
    ----------
    shape
        (ny, nx) of the cube.
    block_px
        Block side in pixels; make it larger than the window so that every split
        keeps whole windows.
    fractions
        Share of blocks per split (normalised).
    seed
        Seed of the block shuffle.
    merge_remainder
        If True, the pixels left over when an axis is not a multiple of
        ``block_px`` join the last whole block of that axis instead of forming a
        strip of their own (a strip narrower than the window holds no window, so
        a split made only of strips would be empty).

    Returns
    -------
    list of numpy.ndarray
        One (ny, nx) bool region per split; pass to ``extract_windows(region=...)``.
    """
    ny, nx = shape
    if merge_remainder:
        by, bx = max(1, ny // block_px), max(1, nx // block_px)
    else:
        by, bx = -(-ny // block_px), -(-nx // block_px)
    n = by * bx
    order = np.random.default_rng(seed).permutation(n)
    frac = np.asarray(fractions, float) / np.sum(fractions)
    cuts = np.round(np.cumsum(frac) * n).astype(int)
    cuts[-1] = n
    label = np.empty(n, int)
    start = 0
    for k, stop in enumerate(cuts):
        label[order[start:stop]] = k
        start = stop
    grid = label.reshape(by, bx)
    iy = np.minimum(np.arange(ny) // block_px, by - 1)
    ix = np.minimum(np.arange(nx) // block_px, bx - 1)
    full = grid[np.ix_(iy, ix)]
    return [full == k for k in range(len(fractions))]


def split_cubes(
    ids: Sequence[T], fractions: Sequence[float] = (0.75, 0.17, 0.08), seed: int = 42
) -> list[list[T]]:
    """Split cube (or site) identifiers into groups, never windows.

    Parameters
    ----------
    ids
        The identifiers (``range(n)`` for n cubes).
    fractions
        Share per group (normalised); the spec uses 75 / 17 / 8.
    seed
        Seed of the shuffle.

    Returns
    -------
    list of lists
        One list of identifiers per group, each sorted in input order.
    """
    items = list(ids)
    order = np.random.default_rng(seed).permutation(len(items))
    frac = np.asarray(fractions, float) / np.sum(fractions)
    cuts = np.round(np.cumsum(frac) * len(items)).astype(int)
    cuts[-1] = len(items)
    out, start = [], 0
    for stop in cuts:
        out.append([items[i] for i in sorted(order[start:stop])])
        start = stop
    return out


def extract_windows(
    cube: xr.Dataset | CubeArrays,
    sensor: str = "s2",
    bands: Sequence[str] | None = None,
    *,
    mode: str = "train",
    n_dates: int = 11,
    pool: int = 20,
    window: int = 15,
    stride_t: int = 17,
    stride_xy: int = 9,
    max_total_gap: int = 200,
    region: np.ndarray | None = None,
    max_windows: int | None = None,
    seed: int = 42,
) -> Windows:
    """Cut context windows from a cube.

    Parameters
    ----------
    cube
        A cube (validated for ``bands``) or its :class:`CubeArrays`.
    sensor, bands
        Sensor and band order.
    mode
        ``"train"``: ``n_dates`` random dates out of each run of ``pool``
        consecutive dates; ``"consecutive"``: ``n_dates`` consecutive dates.
    n_dates, pool, window
        Context size.
    stride_t, stride_xy
        Strides between window starts in dates and pixels (spec: 17 and 9).
    max_total_gap
        Windows whose gaps sum to this many days or more are dropped.
    region
        Optional (y, x) bool mask; only windows lying entirely inside it are
        kept (see :func:`block_regions`).
    max_windows
        Keep at most this many windows (random subset).
    seed
        Seed of the date draw and the subset.

    Returns
    -------
    Windows
        Windows whose centre pixel is valid at the centre date.
    """
    arr = cube if isinstance(cube, CubeArrays) else CubeArrays.from_cube(cube, sensor, bands)
    n_t, _, ny, nx = arr.data.shape
    if mode not in ("train", "consecutive"):
        raise ValueError(f"mode must be 'train' or 'consecutive', got {mode!r}")
    rng = np.random.default_rng(seed)
    span = n_dates if mode == "consecutive" else min(pool, n_t)
    if n_t < n_dates or ny < window or nx < window:
        empty = np.zeros(0, np.int64)
        return Windows([arr], empty, np.zeros((0, n_dates), np.int64), empty, empty, window)
    starts = np.arange(0, n_t - span + 1, stride_t)
    ys = np.arange(0, ny - window + 1, stride_xy)
    xs = np.arange(0, nx - window + 1, stride_xy)
    if region is not None:
        ok = _inside(np.asarray(region, bool), window)[np.ix_(ys, xs)]
        yy, xx = np.nonzero(ok)
        ys_all, xs_all = ys[yy], xs[xx]
    else:
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        ys_all, xs_all = gy.ravel(), gx.ravel()
    s = np.repeat(starts, ys_all.size)
    iy = np.tile(ys_all, starts.size)
    ix = np.tile(xs_all, starts.size)
    if mode == "train":
        pick = np.sort(np.argsort(rng.random((s.size, span)), axis=1)[:, :n_dates], axis=1)
        t_idx = s[:, None] + pick
    else:
        t_idx = s[:, None] + np.arange(n_dates)
    c = window // 2
    keep = arr.valid[t_idx[:, n_dates // 2], iy + c, ix + c]
    gaps_sum = arr.days[t_idx[:, -1]] - arr.days[t_idx[:, 0]]
    keep &= gaps_sum < max_total_gap
    idx = np.flatnonzero(keep)
    if max_windows is not None and idx.size > max_windows:
        idx = np.sort(rng.choice(idx, max_windows, replace=False))
    return Windows(
        [arr],
        np.zeros(idx.size, np.int64),
        t_idx[idx].astype(np.int64),
        iy[idx].astype(np.int64),
        ix[idx].astype(np.int64),
        window,
    )


def split_by_place(
    cubes: Sequence[xr.Dataset],
    extract: Callable[[xr.Dataset, str, np.ndarray | None], W],
    concat: Callable[[list[W]], W],
    *,
    window: int,
    val_fraction: float,
    seed: int,
    within_cubes: bool = False,
) -> tuple[W, W]:
    """The leakage-free split shared by stage 1 and fusion: cubes or blocks, never windows.

    With two cubes or more, whole cubes go to one split (:func:`split_cubes`, at
    least one each); with a single cube, or with ``within_cubes``, square blocks
    larger than the window do (2 x 2 blocks at least per cube,
    :func:`block_regions`), so that every cube gives windows to both splits.

    Parameters
    ----------
    cubes
        The cubes.
    extract
        ``extract(cube, mode, region)``: the windows of one cube in ``mode``
        (``"train"`` or ``"consecutive"``), inside ``region`` when it is given.
    concat
        Joins the windows of several cubes.
    window, val_fraction, seed
        Window side (blocks are larger), validation share, seed of the split.
    within_cubes
        Split every cube by its own blocks even when there are several (to train
        on part of every place to be embedded); default: whole cubes.

    Returns
    -------
    tuple
        ``(train, validation)``: training windows in ``"train"`` mode, validation
        windows in ``"consecutive"`` mode.
    """
    if not cubes:
        raise ValueError("no cubes given")
    if len(cubes) >= 2 and not within_cubes:
        train_ids, val_ids = split_cubes(range(len(cubes)), (1 - val_fraction, val_fraction), seed)
        if not val_ids:
            train_ids, val_ids = train_ids[:-1], train_ids[-1:]
        return (
            concat([extract(cubes[i], "train", None) for i in train_ids]),
            concat([extract(cubes[i], "consecutive", None) for i in val_ids]),
        )

    def by_blocks(cube: xr.Dataset) -> tuple[W, W]:
        ny, nx = cube.sizes["y"], cube.sizes["x"]
        block = max(window + 1, min(ny, nx) // 2)
        train_r, val_r = block_regions(
            (ny, nx), block, (1 - val_fraction, val_fraction), seed, merge_remainder=True
        )
        return extract(cube, "train", train_r), extract(cube, "consecutive", val_r)

    if len(cubes) == 1:
        return by_blocks(cubes[0])
    parts = [by_blocks(c) for c in cubes]
    return concat([p[0] for p in parts]), concat([p[1] for p in parts])


def split_windows(
    cubes: Sequence[xr.Dataset],
    sensor: str = "s2",
    bands: Sequence[str] | None = None,
    *,
    val_fraction: float = 0.25,
    window: int = 15,
    stride_t: int = 3,
    stride_xy: int = 3,
    seed: int = 42,
    within_cubes: bool = False,
    min_bands: int | None = None,
) -> tuple[Windows, Windows]:
    """Training and validation windows from cubes, split without leakage.

    With two cubes or more, whole cubes go to one split (:func:`split_cubes`);
    with a single cube, or with ``within_cubes``, square blocks larger than the
    window do (2 x 2 blocks at least per cube, :func:`block_regions`).
    Training windows draw 11 of 20 dates at random, validation windows take
    consecutive dates.

    ``min_bands`` (band-mask models): a cube may lack some of ``bands`` (NaN planes)
    as long as it has at least this many of them.

    Returns
    -------
    tuple
        ``(train, validation)`` windows.
    """
    common: dict[str, Any] = {
        "window": window,
        "stride_t": stride_t,
        "stride_xy": stride_xy,
        "seed": seed,
    }
    arrays: dict[int, CubeArrays] = {}  # each cube converted once, for both its splits

    def extract(cube: xr.Dataset, mode: str, region: np.ndarray | None) -> Windows:
        if id(cube) not in arrays:
            arrays[id(cube)] = CubeArrays.from_cube(cube, sensor, bands, min_bands=min_bands)
        return extract_windows(arrays[id(cube)], sensor, mode=mode, region=region, **common)

    return split_by_place(
        cubes,
        extract,
        Windows.concat,
        window=window,
        val_fraction=val_fraction,
        seed=seed,
        within_cubes=within_cubes,
    )


def array_digest(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``arrays``, in order.

    The identity of what a run reads (e.g. :meth:`Windows.arrays` of its splits):
    two cubes that differ in any value, validity flag or date give another
    digest, whatever their paths and metadata say. Each array object is read
    once, however often it is listed (splits share their cubes).
    """
    done: dict[int, bytes] = {}
    alive = []  # ids stay unique while the arrays are alive
    total = hashlib.sha256()
    for a in arrays:
        alive.append(a)
        if id(a) not in done:
            c = np.ascontiguousarray(a)
            h = hashlib.sha256(f"{c.dtype.str} {c.shape};".encode())
            h.update(c.reshape(-1).view(np.uint8).data)
            done[id(a)] = h.digest()
        total.update(done[id(a)])
    return total.hexdigest()


def hide_entries(
    mask: np.ndarray, rng: np.random.Generator, centre_prob: float = 1.0, other_prob: float = 0.0
) -> np.ndarray:
    """Entries to hide from a model's input for gap-filling training.

    Parameters
    ----------
    mask
        (n, T, W, W) bool validity of a batch of windows.
    rng
        Random generator (seed it per batch for reproducible runs).
    centre_prob
        Probability that a window's centre pixel at the centre date is hidden.
    other_prob
        Probability that any other pixel-date is hidden.

    Returns
    -------
    numpy.ndarray
        (n, T, W, W) bool, True where a *valid* entry is to be hidden from the
        input; the loss still uses it as a target.
    """
    n, t, w, _ = mask.shape
    hide = rng.random(mask.shape) < other_prob if other_prob > 0 else np.zeros(mask.shape, bool)
    hide[:, t // 2, w // 2, w // 2] = rng.random(n) < centre_prob
    return hide & mask


def _inside(region: np.ndarray, window: int) -> np.ndarray:
    """(ny-W+1, nx-W+1) True where the W x W window at that top-left lies inside ``region``."""
    s = np.pad(region.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    w = window
    tot = s[w:, w:] - s[:-w, w:] - s[w:, :-w] + s[:-w, :-w]
    return tot == w * w


class WindowDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """A ``torch`` dataset over :class:`Windows` yielding ``{"x", "mask", "gaps"}`` tensors."""

    def __init__(self, windows: Windows) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, mask, gaps = self.windows.batch(np.array([i]))
        return {
            "x": torch.from_numpy(x[0]),
            "mask": torch.from_numpy(mask[0]),
            "gaps": torch.from_numpy(gaps[0]),
        }
