"""The union time axis of a built cube: S2 clear dates plus S1 acquisition days without one.

The paper's time axis (``time_axis="s2"``, the default) holds the S2 dates with a
clear pixel; S1 is matched to them. A fused model can also embed the days S2
does not see, so :func:`latentcube.cube.build.build_cube` offers
``time_axis="union"``: the same cube plus every S1 acquisition day (one per day,
within the requested dates) that has no S2 date. On those days S2 is masked
(NaN, ``s2_valid`` False), S1 is the acquisition itself (``s1_time`` equals the
date) with the same preprocessing (centred rolling mean over acquisitions of one
orbit direction, dB, normalisation), and the coordinate ``s2_observed`` is
False. The cube's attribute ``time_axis`` is ``"union"``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube.plan import Plan
from latentcube.cube.sentinel1 import load_s1
from latentcube.errors import StacError

__all__ = ["TIME_AXES", "add_s1_dates", "check_time_axis", "s1_only_groups"]

#: Time axes a cube can be built on.
TIME_AXES: tuple[str, ...] = ("s2", "union")


def check_time_axis(time_axis: str, sensors: Sequence[str]) -> None:
    """Raise :class:`StacError` for an unknown time axis, or ``"union"`` without S1."""
    if time_axis not in TIME_AXES:
        raise StacError(f"time_axis must be one of {TIME_AXES}, got {time_axis!r}")
    if time_axis == "union" and "s1" not in sensors:
        raise StacError("time_axis='union' adds the S1 dates: it needs sensors ('s2', 's1')")


def s1_only_groups(
    s2_times: np.ndarray, s1_times: np.ndarray, start: pd.Timestamp, end: pd.Timestamp
) -> np.ndarray:
    """Indices of ``s1_times``: the first acquisition of each day in [start, end] without S2.

    Parameters
    ----------
    s2_times
        The cube's (S2) dates.
    s1_times
        Times of the S1 acquisitions (groups).
    start, end
        First and last day requested (inclusive).

    Returns
    -------
    numpy.ndarray
        int64 indices, in time order.
    """
    s2_days = set(np.asarray(s2_times, "datetime64[ns]").astype("datetime64[D]").tolist())
    t1 = np.asarray(s1_times, "datetime64[ns]")
    days = t1.astype("datetime64[D]")
    lo, hi = np.datetime64(start.date(), "D"), np.datetime64(end.date(), "D")
    seen: set[Any] = set()
    keep = []
    for g in np.argsort(t1, kind="stable"):
        d = days[g]
        if lo <= d <= hi and d.tolist() not in s2_days and d.tolist() not in seen:
            seen.add(d.tolist())
            keep.append(int(g))
    return np.asarray(keep, np.int64)


def add_s1_dates(
    plan: Plan, cube: xr.Dataset, start: pd.Timestamp, end: pd.Timestamp
) -> xr.Dataset:
    """The cube on the union time axis (lazy: the S1-only dates load when computed).

    Parameters
    ----------
    plan
        The build plan of ``cube`` (items, S1 acquisitions and their neighbours).
    cube
        The cube built on the S2 time axis, with S1.
    start, end
        The requested days.

    Returns
    -------
    xarray.Dataset
        ``cube`` plus the S1-only dates, sorted by time, with the coordinate
        ``s2_observed`` and the attributes ``time_axis="union"`` and
        ``s1_only_dates``. S1 of the added dates is loaded by one Dask task per
        (``time_chunk`` dates, tile) unit, so memory is bounded by a unit.
    """
    import dask
    import dask.array as da

    groups = s1_only_groups(cube["time"].values, plan.s1_times, start, end)
    n, ny, nx = len(groups), cube.sizes["y"], cube.sizes["x"]
    attrs = {
        **cube.attrs,
        "time_axis": "union",
        "s1_only_dates": json.dumps([np.datetime_as_string(t, "D") for t in plan.s1_times[groups]]),
    }
    observed = np.ones(cube.sizes["time"], bool)
    if n == 0:
        return cube.assign_coords(s2_observed=("time", observed)).assign_attrs(attrs)
    # S1 is loaded for "S2 dates" that are the S1 acquisitions themselves
    view = dataclasses.replace(plan, s2_times=plan.s1_times[groups], s1_match=groups)
    load = dask.delayed(load_s1, pure=True, nout=2)
    tc, tile = plan.spec.time_chunk, plan.spec.tile
    s1_blocks, valid_blocks = [], []
    for k0 in range(0, n, tc):
        dates = list(range(k0, min(k0 + tc, n)))
        rows_d, rows_v = [], []
        for y0 in range(0, ny, tile):
            ys = slice(y0, min(y0 + tile, ny))
            cols_d, cols_v = [], []
            for x0 in range(0, nx, tile):
                xs = slice(x0, min(x0 + tile, nx))
                d, v = load(view, dates, ys, xs)
                shape = (len(dates), ys.stop - ys.start, xs.stop - xs.start)
                cols_d.append(da.from_delayed(d, (shape[0], 2, *shape[1:]), dtype=np.float32))
                cols_v.append(da.from_delayed(v, shape, dtype=bool))
            rows_d.append(da.concatenate(cols_d, axis=3))
            rows_v.append(da.concatenate(cols_v, axis=2))
        s1_blocks.append(da.concatenate(rows_d, axis=2))
        valid_blocks.append(da.concatenate(rows_v, axis=1))
    nb = cube.sizes["band"]
    times = plan.s1_times[groups]
    extra = xr.Dataset(
        {
            "s2": (
                ("time", "band", "y", "x"),
                da.full((n, nb, ny, nx), np.nan, dtype=np.float32, chunks=(tc, nb, tile, tile)),
            ),
            "s2_valid": (
                ("time", "y", "x"),
                da.zeros((n, ny, nx), dtype=bool, chunks=(tc, tile, tile)),
            ),
            "s1": (("time", "s1_band", "y", "x"), da.concatenate(s1_blocks, axis=0)),
            "s1_valid": (("time", "y", "x"), da.concatenate(valid_blocks, axis=0)),
        },
        coords={
            "time": times,
            "s1_time": ("time", times),
            "s1_orbit": (
                "time",
                np.array([plan.s1_orbits[g] for g in groups], dtype=str),
            ),
            "s2_observed": ("time", np.zeros(n, bool)),
            **{k: cube[k] for k in ("band", "s1_band", "y", "x", "spatial_ref") if k in cube},
        },
    )
    # (a store may give s1_orbit a dimension of its own: put it back on time)
    base = cube.drop_vars("s1_orbit").assign_coords(
        s2_observed=("time", observed),
        s1_orbit=("time", np.array([str(v) for v in cube["s1_orbit"].values])),
    )
    union = xr.concat(
        [base, extra],
        dim="time",
        data_vars="all",
        coords="minimal",
        compat="override",
        join="exact",
        combine_attrs="override",
    )
    union = union.isel(time=np.argsort(union["time"].values, kind="stable"))
    for v in union.variables.values():
        v.encoding = {}
    return union.assign_attrs(attrs)
