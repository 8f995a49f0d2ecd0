"""Output chunks and their context halos: the tiling every embedding job shares.

Pure numpy; no model and no Dask. A job embeds one output chunk ``(ts, ys, xs)``
(cube indices, step 1) from a block of the cube that carries the chunk's context
halo; where the halo leaves the cube it is cut (:func:`halo`) and completed by
the job with invalid pixels and dates (:func:`extended_days` gives the invented
dates their day numbers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from latentcube.errors import EmbeddingError

__all__ = [
    "DEFAULT_CHUNKS",
    "EDGE_POLICIES",
    "check_edge",
    "chunk_grid",
    "chunk_sizes",
    "extended_days",
    "halo",
    "incomplete",
    "tiles",
]

EDGE_POLICIES: tuple[str, ...] = ("nan", "pad")
DEFAULT_CHUNKS = {"time": 64, "y": 256, "x": 256}


def check_edge(edge: str) -> None:
    """Refuse an unknown edge policy."""
    if edge not in EDGE_POLICIES:
        raise EmbeddingError(f"edge must be one of {EDGE_POLICIES}, got {edge!r}")


def tiles(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive pieces of ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def chunk_sizes(chunks: int | Mapping[str, int] | None, sizes: Mapping[str, int]) -> dict[str, int]:
    """Output chunk sizes along time, y and x (an int sets y and x), capped at the cube's."""
    want = dict(DEFAULT_CHUNKS)
    if isinstance(chunks, int):
        want.update(y=chunks, x=chunks)
    elif chunks is not None:
        unknown = set(chunks) - set(want)
        if unknown:
            raise EmbeddingError(f"chunks has unknown dimensions {sorted(unknown)}; use time, y, x")
        want.update(chunks)
    for dim, size in want.items():
        if not isinstance(size, int | np.integer) or size < 1:
            raise EmbeddingError(f"chunk size along {dim} must be a positive integer, got {size!r}")
    return {dim: int(min(size, max(sizes[dim], 1))) for dim, size in want.items()}


def chunk_grid(
    shape: tuple[int, int, int], sizes: Mapping[str, int]
) -> list[tuple[str, slice, slice, slice]]:
    """Every output chunk of a (time, y, x) cube: ``(key, ts, ys, xs)``, key ``"it_iy_ix"``."""
    n_t, ny, nx = shape
    return [
        (f"{it}_{iy}_{ix}", slice(t0, t1), slice(y0, y1), slice(x0, x1))
        for it, (t0, t1) in enumerate(tiles(n_t, sizes["time"]))
        for iy, (y0, y1) in enumerate(tiles(ny, sizes["y"]))
        for ix, (x0, x1) in enumerate(tiles(nx, sizes["x"]))
    ]


def extended_days(days: np.ndarray, pad: int) -> np.ndarray:
    """Day numbers of the dates with ``pad`` invented dates before and after.

    The invented dates continue the series with the median gap (at least one day);
    they only ever carry invalid frames (edge policy ``"pad"``). Index ``k`` of the
    result is date ``k - pad`` of the cube.
    """
    days = np.asarray(days, np.int64)
    gap = max(int(np.median(np.diff(days))), 1) if days.size > 1 else 1
    before = days[0] - gap * np.arange(pad, 0, -1, dtype=np.int64)
    after = days[-1] + gap * np.arange(1, pad + 1, dtype=np.int64)
    return np.concatenate([before, days, after])


def halo(start: int, stop: int, n: int, h: int) -> tuple[slice, tuple[int, int]]:
    """Slice of ``[start - h, stop + h)`` inside ``[0, n)`` and the padding outside it."""
    lo, hi = start - h, stop + h
    return slice(max(lo, 0), min(hi, n)), (max(0, -lo), max(0, hi - n))


def incomplete(
    ts: slice, ys: slice, xs: slice, shape: tuple[int, int, int], c: int, h: int
) -> np.ndarray:
    """(t, y, x) True where the context window reaches outside the cube."""
    n_t, ny, nx = shape
    tt, yy, xx = (np.arange(s.start, s.stop) for s in (ts, ys, xs))
    return (
        ((tt < c) | (tt >= n_t - c))[:, None, None]
        | ((yy < h) | (yy >= ny - h))[None, :, None]
        | ((xx < h) | (xx >= nx - h))[None, None, :]
    )
