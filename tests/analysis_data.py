"""A small synthetic embedding store with known gaps, for the analysis tests.

Three years of dates (2018-2020, irregular gaps, acquisitions at 10:30), 3 features on
a 6 x 5 px, 10 m UTM grid. Known awkward cases:

* pixel (0, 0) is never valid;
* pixel (1, 1) has a gap of a whole year (no valid date in 2019);
* invalid pixel-dates are NaN, except a few that hold finite values under
  ``valid = False`` (they must not count);
* one pixel-date is ``valid`` but has a NaN feature (it must not count either);
* ``recon_mae_s2`` is missing (NaN) on a few valid dates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

CRS = "EPSG:32631"


def synthetic_embedding(
    *, n_feat: int = 3, ny: int = 6, nx: int = 5, seed: int = 0, chunks: dict | None = None
) -> xr.Dataset:
    """An embedding dataset in the store layout (``embedding``, ``valid``, ``recon_mae_s2``)."""
    rng = np.random.default_rng(seed)
    days = np.cumsum(rng.integers(5, 20, size=200))
    times = pd.Timestamp("2018-01-02 10:30") + pd.to_timedelta(days, "D")
    times = times[times < pd.Timestamp("2021-01-01")]
    n_t = len(times)
    doy = np.asarray(times.dayofyear)
    season = np.sin(2 * np.pi * doy / 365.25)
    base = rng.normal(size=(n_feat, 1, ny, nx))
    emb = base + season[None, :, None, None] * rng.uniform(0.5, 1.5, size=(n_feat, 1, ny, nx))
    emb = (emb + 0.3 * rng.normal(size=(n_feat, n_t, ny, nx))).astype(np.float32)
    valid = rng.random((n_t, ny, nx)) > 0.3
    valid[:, 0, 0] = False
    in_2019 = np.asarray(times.year == 2019)
    valid[in_2019, 1, 1] = False
    finite_but_invalid = ~valid.copy()
    finite_but_invalid[:, 0, 0] = False
    keep = finite_but_invalid & (rng.random(valid.shape) < 0.2)
    emb[:, ~valid & ~keep] = np.nan
    t_nan = int(np.flatnonzero(valid[:, 2, 3])[3])
    emb[1, t_nan, 2, 3] = np.nan  # valid, but one feature is missing
    err = rng.uniform(0.005, 0.05, size=(n_t, ny, nx)).astype(np.float32)
    err[~valid] = np.nan
    miss = valid & (rng.random(valid.shape) < 0.05)
    err[miss] = np.nan
    ds = xr.Dataset(
        {
            "embedding": (("feature", "time", "y", "x"), emb),
            "valid": (("time", "y", "x"), valid),
            "recon_mae_s2": (("time", "y", "x"), err),
        },
        coords={
            "feature": [f"F{i + 1:02d}" for i in range(n_feat)],
            "time": times.values.astype("datetime64[ns]"),
            "y": 5_600_005.0 - 10.0 * np.arange(ny),
            "x": 500_005.0 + 10.0 * np.arange(nx),
        },
        attrs={"source": "synthetic embedding", "sensor": "s2"},
    ).rio.write_crs(CRS)
    if chunks:
        ds = ds.chunk(chunks)
    return ds


def counted(ds: xr.Dataset) -> np.ndarray:
    """(time, y, x): the pixel-dates an analysis must count (valid and all features finite)."""
    return ds["valid"].values & np.isfinite(ds["embedding"].values).all(0)


class CountingScheduler:
    """A Dask scheduler that counts how often a graph is computed (synchronously)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        import dask

        self.calls += 1
        return dask.get(dsk, keys, **kwargs)
