"""Site features: footprint means, date dropping, gap filling, potential radiation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.errors import EvaluationError
from latentcube.evaluation.features import (
    as_feature_cube,
    extraterrestrial_radiation,
    gap_fill,
    potential_radiation,
    site_features,
    site_series,
)


def feature_cube(values, times, name="emb"):
    values = np.asarray(values, np.float32)
    return xr.DataArray(
        values,
        dims=("feature", "time", "y", "x"),
        coords={
            "feature": [f"F{i + 1:02d}" for i in range(values.shape[0])],
            "time": pd.DatetimeIndex(times),
        },
        name=name,
    )


def test_fao56_example_8_extraterrestrial_radiation():
    # FAO-56 (Allen et al. 1998) example 8: 20 deg S, 3 September -> Ra = 32.2 MJ m-2 d-1
    ra = extraterrestrial_radiation(pd.DatetimeIndex(["2015-09-03"]), -20.0)
    assert ra[0] == pytest.approx(32.2, abs=0.05)
    rso = potential_radiation(pd.DatetimeIndex(["2015-09-03"]), -20.0, elevation_m=100.0)
    assert rso.iloc[0] == pytest.approx((0.75 + 2e-5 * 100.0) * ra[0])


@pytest.mark.parametrize("lat", [56.1, 0.0, -35.0, 75.0])
def test_radiation_equals_numerical_integral_of_toa_irradiance(lat):
    days = pd.DatetimeIndex(["2018-01-15", "2018-04-10", "2018-06-21", "2018-10-01"])
    got = extraterrestrial_radiation(days, lat)
    j = days.dayofyear.to_numpy(float)
    dr = 1 + 0.033 * np.cos(2 * np.pi * j / 365)
    decl = 0.409 * np.sin(2 * np.pi * j / 365 - 1.39)
    h = np.linspace(-np.pi, np.pi, 200001)[:, None]  # hour angle over one day
    phi = np.deg2rad(lat)
    cosz = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(h)
    # Gsc (MJ m-2 min-1) * minutes per radian of hour angle (1440 / 2 pi)
    integral = np.trapezoid(np.maximum(cosz, 0), h[:, 0], axis=0) * 0.0820 * dr * 1440 / (2 * np.pi)
    np.testing.assert_allclose(got, integral, rtol=1e-4, atol=1e-6)


def test_site_series_mean_footprint_and_dropping():
    t = ["2020-05-01", "2020-05-06", "2020-05-11"]
    v = np.zeros((2, 3, 4, 4))
    v[0] = np.arange(16).reshape(4, 4)
    v[1] = 1.0
    v[:, 1] = np.nan  # date 2 fully invalid -> dropped
    v[0, 2, 0, :] = np.nan  # date 3: one row invalid in feature 0 -> the pixel-date is invalid
    s = site_series(feature_cube(v, t), min_valid_fraction=0.5)
    assert list(s.index) == [pd.Timestamp(t[0]), pd.Timestamp(t[2])]
    assert list(s.columns) == ["emb:F01", "emb:F02"]
    assert s.iloc[0, 0] == pytest.approx(np.arange(16).mean())
    assert s.iloc[1, 0] == pytest.approx(np.arange(4, 16).mean())
    assert s.attrs["valid_fraction"].iloc[1] == pytest.approx(0.75)
    assert site_series(feature_cube(v, t), min_valid_fraction=0.8).shape[0] == 1
    centre = site_series(feature_cube(v, t), footprint=2, feature_set="x")
    assert centre.iloc[0, 0] == pytest.approx(np.mean([5, 6, 9, 10]))
    w = np.zeros((4, 4))
    w[3, 3] = 1.0
    assert site_series(feature_cube(v, t), footprint=w).iloc[0, 0] == pytest.approx(15.0)
    with pytest.raises(EvaluationError, match="shape"):
        site_series(feature_cube(v, t), footprint=np.ones((3, 3)))


def test_as_feature_cube_checks_dims():
    with pytest.raises(EvaluationError, match="dims"):
        as_feature_cube(xr.DataArray(np.zeros((2, 3)), dims=("a", "b")))
    with pytest.raises(EvaluationError, match="embedding"):
        as_feature_cube(xr.Dataset({"x": ("t", [1.0])}))


def test_linear_gap_fill_is_exact_between_dates_and_does_not_extrapolate():
    s = pd.DataFrame(
        {"a": [0.0, 10.0, 4.0]}, index=pd.DatetimeIndex(["2020-01-05", "2020-01-15", "2020-01-18"])
    )
    f = gap_fill(s, "linear", start="2020-01-01", end="2020-01-20")
    assert len(f) == 20
    assert f.loc["2020-01-10", "a"] == pytest.approx(5.0)
    assert f.loc["2020-01-17", "a"] == pytest.approx(6.0)
    assert f.loc[:"2020-01-04", "a"].isna().all() and f.loc["2020-01-19":, "a"].isna().all()
    with pytest.raises(EvaluationError, match="method"):
        gap_fill(s, "cubic")  # type: ignore[arg-type]


def test_ucm_gap_fill_recovers_a_smooth_signal():
    t = pd.date_range("2020-01-01", "2020-12-31")
    rng = np.random.default_rng(0)
    truth = np.sin(2 * np.pi * np.arange(len(t)) / 365)
    keep = rng.random(len(t)) < 0.15
    s = pd.DataFrame({"a": truth[keep] + rng.normal(0, 0.05, keep.sum())}, index=t[keep])
    f = gap_fill(s, "ucm", start=t[0], end=t[-1])
    inside = f["a"].notna().to_numpy()
    assert inside.sum() == (t >= s.index[0]).sum() - (t > s.index[-1]).sum()
    err = np.abs(f["a"].to_numpy()[inside & ~keep] - truth[inside & ~keep]).mean()
    lin = gap_fill(s, "linear", start=t[0], end=t[-1])["a"].to_numpy()
    lin_err = np.abs(lin[inside & ~keep] - truth[inside & ~keep]).mean()
    assert err < 0.03
    assert err < lin_err  # the smoother also removes the observation noise


def test_site_features_joins_sets_and_radiation():
    t = pd.date_range("2020-03-01", periods=6, freq="10D")
    v = np.broadcast_to(np.arange(6, dtype=float)[None, :, None, None], (1, 6, 3, 3))
    out = site_features(
        {"ndvi": feature_cube(v, t)}, lat=50.0, start="2020-03-01", end="2020-05-01"
    )
    assert list(out.columns) == ["rad:Rso", "ndvi:F01"]
    assert out.loc["2020-03-06", "ndvi:F01"] == pytest.approx(0.5)
    assert out["rad:Rso"].is_monotonic_increasing  # spring in the north


def test_embedding_store_path_is_a_feature_cube(tmp_path, cube):
    from latentcube.evaluation.baselines import raw_bands
    from latentcube.io import write_zarr

    emb = raw_bands(cube).isel(feature=slice(0, 3))
    store = write_zarr(
        emb.to_dataset(name="embedding").rio.write_crs("EPSG:32631"), tmp_path / "e.zarr"
    )
    got = as_feature_cube(store, "emb")
    assert got.dims == ("feature", "time", "y", "x") and got.dtype == np.float32
    np.testing.assert_array_equal(got.values, emb.values)
    assert got.name == "emb"
