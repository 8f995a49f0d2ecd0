"""AgERA5 weather as a third sensor, and the union time axis (S2 clear dates + S1 dates)."""

from __future__ import annotations

import glob

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.cube.readers import read_agera5, read_worldcereal_patch
from latentcube.data.multisensor import sensor_offsets
from latentcube.sensors import AGERA5, SENSORS

PATCH = ("worldcereal_s1_s2_training_patches_flanders", "00002806639B424A")

pytestmark = pytest.mark.shared


def test_agera5_bands_by_hand(shared):
    folder = shared.path(*PATCH)
    daily = read_agera5(folder)
    raw = xr.open_dataset(glob.glob(f"{folder}/AgERA5_DAILY_1000m_*.nc")[0])
    t = raw["temperature_mean"].values[:, 0, 0].astype(float)
    p = raw["precipitation_flux"].values[:, 0, 0].astype(float)
    k = 100  # a day with a full 30-day history
    assert daily["tmean"].iloc[k] == pytest.approx((t[k] - 253.15) / 60)
    assert daily["tmean_30d"].iloc[k] == pytest.approx((t[k - 29 : k + 1].mean() - 253.15) / 60)
    assert daily["precip_10d"].iloc[k] == pytest.approx(min(p[k - 9 : k + 1].sum() / 100, 1.0))
    assert daily.index[0] == pd.Timestamp("2017-08-01") and len(daily) == 487


def test_attach_agera5_to_cube(shared):
    try:
        cube = read_worldcereal_patch(shared.path(*PATCH), with_agera5=True)
        assert SENSORS["agera5"] == AGERA5
        assert cube["agera5"].dims == ("time", "agera5_band", "y", "x")
        assert cube["agera5_valid"].all()
        daily = read_agera5(shared.path(*PATCH))
        day = pd.Timestamp(cube["time"].values[10]).normalize()
        np.testing.assert_allclose(
            cube["agera5"].values[10, :, 5, 7], daily.loc[day].to_numpy(), rtol=1e-6
        )
        assert (sensor_offsets(cube, "agera5") == 0).all()  # same day as the S2 date
    finally:
        SENSORS.pop("agera5", None)


def test_union_time_axis(shared):
    s2 = read_worldcereal_patch(shared.path(*PATCH))
    u = read_worldcereal_patch(shared.path(*PATCH), time_axis="union")
    assert u.attrs["time_axis"] == "union" and s2.attrs["time_axis"] == "s2"
    assert set(s2["time"].values) <= set(u["time"].values)
    s2_dates = u["s2_valid"].any(dim=("y", "x")).values
    assert s2_dates.sum() == s2.sizes["time"] and (~s2_dates).sum() > 50
    # S1-only dates are S1 acquisitions themselves: offset 0, S1 valid, S2 masked
    only = ~s2_dates
    assert (sensor_offsets(u, "s1")[only] == 0).all()
    assert u["s1_valid"].values[only].all() and np.isnan(u["s2"].values[only]).all()
    days = u["time"].values.astype("datetime64[D]")
    assert (np.diff(days) > np.timedelta64(0, "D")).all()
    # the S2 dates carry the same data as on the S2 axis
    same = u.sel(time=s2["time"].values)
    np.testing.assert_array_equal(same["s2"].values, s2["s2"].values)
    with pytest.raises(ValueError, match="time_axis"):
        read_worldcereal_patch(shared.path(*PATCH), time_axis="daily")
