"""Sentinel-2 L2A: SCL cloud masks, the baseline-04.00 offset, date screening, same-day merging."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = [
    "SCL_INVALID",
    "drop_invalid_dates",
    "merge_same_day",
    "remove_baseline_offset",
    "scl_valid",
]

#: Sen2Cor classes masked by default: no data, saturated, cloud shadow, cloud
#: medium/high probability, thin cirrus, snow/ice.
SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)


def scl_valid(
    scl: np.ndarray, *, invalid_classes: Sequence[int] = SCL_INVALID, dilation: int = 0
) -> np.ndarray:
    """Clear-sky mask from the Sen2Cor scene classification.

    Parameters
    ----------
    scl
        (..., y, x) integer SCL codes.
    invalid_classes
        Codes treated as not clear.
    dilation
        Grow the invalid area by this many pixels (square structuring element)
        in every 2-D slice, to catch cloud edges the classifier misses.

    Returns
    -------
    numpy.ndarray
        bool, True where clear.
    """
    scl = np.asarray(scl)
    invalid = np.isin(scl, np.asarray(invalid_classes))
    if dilation > 0:
        structure = np.zeros((1,) * (scl.ndim - 2) + (2 * dilation + 1,) * 2, bool)
        structure[(0,) * (scl.ndim - 2)] = True
        invalid = ndimage.binary_dilation(invalid, structure=structure)
    return ~invalid


def remove_baseline_offset(dn: np.ndarray, baseline: str | float | None) -> np.ndarray:
    """Digital numbers to reflectance in [0, 1], honouring the processing baseline.

    From processing baseline 04.00 (25 January 2022) L2A digital numbers carry
    an offset of +1000: reflectance = (DN - 1000) / 10000; before it
    DN / 10000. DN 0 is no data and becomes NaN.

    Parameters
    ----------
    dn
        Digital numbers (any integer or float dtype).
    baseline
        ``s2:processing_baseline`` of the product, e.g. ``"04.00"`` (also
        ``"N0400"`` from product names, or a number); None means before 04.00.

    Returns
    -------
    numpy.ndarray
        float32 reflectance clipped to [0, 1], NaN where ``dn == 0``.
    """
    dn = np.asarray(dn)
    refl = np.empty(dn.shape, np.float32)
    reflectance_into(dn, baseline_offset(baseline), refl)
    return np.where(dn == 0, np.float32(np.nan), refl).astype(np.float32)


def baseline_offset(baseline: str | float | None) -> float:
    """The DN offset of a processing baseline: 1000 from 04.00 on, else 0."""
    return 1000.0 if _baseline_number(baseline) >= 4.0 else 0.0


def reflectance_into(dn: np.ndarray, offset: float, out: np.ndarray) -> np.ndarray:
    """``clip((DN - offset) / 10000, 0, 1)`` in float32, written into ``out``.

    The arithmetic of :func:`remove_baseline_offset` without its no-data
    step (DN 0 gives 0 here, not NaN): three passes over ``out``, no
    temporaries; callers mask DN 0 themselves.
    """
    np.subtract(dn, np.float32(offset), out=out, dtype=np.float32)
    np.divide(out, np.float32(10000.0), out=out)
    return np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def _baseline_number(baseline: str | float | None) -> float:
    """``"04.00"``, ``"N0400"``, ``"4"`` or 4.0 -> 4.0; None -> 0."""
    if baseline is None:
        return 0.0
    if isinstance(baseline, int | float):
        return float(baseline)
    text = str(baseline).strip().upper()
    try:
        if text.startswith("N") and text[1:].isdigit() and len(text) == 5:
            return int(text[1:]) / 100.0
        return float(text)
    except ValueError:
        raise ValueError(
            f"cannot read the S2 processing baseline {baseline!r}; expected e.g. '04.00'"
        ) from None


def merge_same_day(
    data: np.ndarray, valid: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge acquisitions of one calendar day (tile overlaps) into one date.

    Per pixel the first valid observation of the day is kept.

    Parameters
    ----------
    data
        (time, band, y, x).
    valid
        (time, y, x) bool.
    times
        (time,) datetime64, sorted.

    Returns
    -------
    tuple
        ``(data, valid, times)`` with one entry per day; the time of a merged
        day is its first acquisition.
    """
    times = np.asarray(times, dtype="datetime64[ns]")
    days = times.astype("datetime64[D]")
    uniq, first = np.unique(days, return_index=True)
    if uniq.size == times.size:
        return data, valid, times
    out = np.full((uniq.size, *data.shape[1:]), np.nan, dtype=data.dtype)
    out_valid = np.zeros((uniq.size, *valid.shape[1:]), bool)
    inverse = np.searchsorted(uniq, days)
    for t in range(times.size):  # over dates only; pixels are vectorised
        k = inverse[t]
        take = valid[t] & ~out_valid[k]
        out[k][:, take] = data[t][:, take]
        out_valid[k] |= take
    return out, out_valid, times[first]


def drop_invalid_dates(cube: xr.Dataset, min_valid_fraction: float = 0.0) -> xr.Dataset:
    """Drop dates whose share of valid S2 pixels is below ``min_valid_fraction``.

    Dates without any valid pixel are always dropped.

    Parameters
    ----------
    cube
        A cube (or any Dataset with ``s2_valid`` (time, y, x)).
    min_valid_fraction
        Smallest share of valid pixels of a kept date, in [0, 1].

    Returns
    -------
    xarray.Dataset
        The cube restricted to the kept dates (possibly empty along ``time``).
    """
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
    frac = cube["s2_valid"].mean(dim=("y", "x")).values
    keep = (frac >= min_valid_fraction) & (frac > 0)
    return cube.isel(time=np.flatnonzero(keep))
