"""Sentinel-1 backscatter: dB/linear conversion, smoothing, normalisation, date matching.

The cube stores S1 as ``(clip(dB, -30, 5) + 30) / 35`` after a centred rolling
mean over three acquisitions in linear power (paper spec section 2.1).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DB_RANGE",
    "db_to_linear",
    "denormalise",
    "linear_to_db",
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
