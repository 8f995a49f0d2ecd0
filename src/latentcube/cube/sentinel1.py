"""Sentinel-1 backscatter: dB/linear conversion, smoothing, normalisation, date matching, loading.

The cube stores S1 as ``(clip(dB, -30, 5) + 30) / 35`` after a centred rolling
mean over three acquisitions in linear power (paper spec section 2.1).
:func:`preprocess_s1` is that chain for arrays in memory (the readers);
:func:`load_s1` reads and converts one loading unit of a cube build (the builder).
The date matching (:func:`match_dates`) belongs to the build's plan and is
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latentcube.cube.plan import Plan, load_with_retries, match_dates, read_assets, unit_geobox
from latentcube.sensors import S1_BANDS

__all__ = [
    "DB_RANGE",
    "db_to_linear",
    "denormalise",
    "linear_to_db",
    "load_s1",
    "match_dates",
    "normalise_db",
    "preprocess_s1",
    "smooth_linear",
]

#: The dB interval that is mapped to [0, 1].
DB_RANGE: tuple[float, float] = (-30.0, 5.0)


def db_to_linear(db: np.ndarray) -> np.ndarray:
    """Backscatter in dB to linear power: ``10 ** (dB / 10)``."""
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 10.0)


def linear_to_db(linear: np.ndarray) -> np.ndarray:
    """Linear power to dB; non-positive values give NaN."""
    lin = np.asarray(linear, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lin > 0, 10.0 * np.log10(np.where(lin > 0, lin, 1.0)), np.nan)


def normalise_db(db: np.ndarray) -> np.ndarray:
    """Map dB to [0, 1]: ``(clip(dB, -30, 5) + 30) / 35``; NaN stays NaN."""
    lo, hi = DB_RANGE
    return ((np.clip(db, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def denormalise(value: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise_db` (within the clipped range)."""
    lo, hi = DB_RANGE
    return np.asarray(value, dtype=np.float64) * (hi - lo) + lo


def smooth_linear(linear: np.ndarray, window: int = 3) -> np.ndarray:
    """Centred rolling mean over ``window`` acquisitions along axis 0, NaN-aware.

    Equivalent to pandas ``rolling(window, center=True, min_periods=1).mean()``
    applied to every pixel: NaN entries are skipped, an all-NaN neighbourhood
    gives NaN.
    """
    a = np.asarray(linear, dtype=np.float64)
    half = window // 2
    finite = np.isfinite(a)
    vals = np.where(finite, a, 0.0)
    pad = [(half, window - 1 - half)] + [(0, 0)] * (a.ndim - 1)
    csum = np.cumsum(np.pad(vals, pad), axis=0)
    ccnt = np.cumsum(np.pad(finite.astype(np.int64), pad), axis=0)
    zero = np.zeros((1, *a.shape[1:]))
    csum = np.concatenate([zero, csum])
    ccnt = np.concatenate([zero, ccnt])
    s = csum[window:] - csum[:-window]
    n = ccnt[window:] - ccnt[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def preprocess_s1(values: np.ndarray, *, input: str = "db", window: int = 3) -> np.ndarray:
    """The paper's S1 chain: linear -> rolling mean over 3 acquisitions -> dB -> clip -> [0, 1].

    Parameters
    ----------
    values
        (time, ...) backscatter, NaN where missing, on the S1 acquisition axis.
    input
        ``"db"`` or ``"linear"`` (gamma0/sigma0 power).
    window
        Number of acquisitions of the centred rolling mean.

    Returns
    -------
    numpy.ndarray
        float32 in [0, 1], NaN where missing.
    """
    if input not in ("db", "linear"):
        raise ValueError(f"input must be 'db' or 'linear', got {input!r}")
    lin = db_to_linear(values) if input == "db" else np.asarray(values, dtype=np.float64)
    return normalise_db(linear_to_db(smooth_linear(lin, window)))


# --------------------------------------------------------------------------- builds


def _s1_linear(
    plan: Plan, order: Sequence[int], arrays: dict[str, np.ndarray]
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


def load_s1(
    plan: Plan, dates: Sequence[int], ys: slice, xs: slice
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
    gb = unit_geobox(plan.info.geobox, ys, xs, 0)
    arrays = load_with_retries(
        lambda: read_assets(
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
