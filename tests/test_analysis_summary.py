"""analysis.summary: summaries over windows equal per-pixel numpy references, lazily."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import latentcube  # noqa: F401  (registers the accessor)
from analysis_data import CRS, CountingScheduler, counted, synthetic_embedding
from latentcube.analysis.summary import make_windows, summarise, weighted_quantile
from latentcube.errors import EmbeddingError
from latentcube.io import open_zarr, write_zarr

WINDOWS = ["2018-03-01/2018-08-31", "2019-07-01/2020-06-30", "2019-01-01/2019-12-31"]


def _dates_in(ds: xr.Dataset, label: str) -> np.ndarray:
    a, b = label.split("/")
    t = pd.DatetimeIndex(ds["time"].values)
    return np.asarray((t >= pd.Timestamp(a)) & (t < pd.Timestamp(b) + pd.Timedelta(days=1)))


def _reference(ds: xr.Dataset, label: str, fn) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel loop: fn over the counted dates of the window, NaN where none."""
    emb, ok = ds["embedding"].values, counted(ds)
    sel = _dates_in(ds, label)
    n_f, _, ny, nx = emb.shape
    out = np.full((n_f, ny, nx), np.nan)
    count = np.zeros((ny, nx), int)
    for iy in range(ny):
        for ix in range(nx):
            use = sel & ok[:, iy, ix]
            count[iy, ix] = use.sum()
            if use.any():
                for f in range(n_f):
                    out[f, iy, ix] = fn(emb[f, use, iy, ix].astype(np.float64))
    return out, count


@pytest.fixture(scope="module")
def ds():
    return synthetic_embedding()


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    ("stat", "fn"), [("mean", np.mean), ("median", np.median), ("std", np.std)]
)
def test_statistics_match_numpy_per_pixel(ds, stat, fn, chunked):
    src = ds.chunk({"time": 7, "y": 4, "x": 3}) if chunked else ds
    res = summarise(src, WINDOWS, stat=stat).compute()
    assert res["embedding"].dims == ("feature", "window", "y", "x")
    assert list(res["window"].values) == WINDOWS
    for i, label in enumerate(WINDOWS):
        ref, count = _reference(ds, label, fn)
        np.testing.assert_allclose(res["embedding"].values[:, i], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res["count"].values[i], count)
    assert res["embedding"].dtype == np.float32 and res["count"].dtype == np.int32


def test_quantiles_match_nanquantile(ds):
    q = (0.1, 0.5, 0.9)
    res = summarise(ds.chunk({"time": 5}), WINDOWS, stat="quantiles", quantiles=q).compute()
    assert res["embedding"].dims == ("stat", "feature", "window", "y", "x")
    assert list(res["stat"].values) == ["q0.1", "q0.5", "q0.9"]
    np.testing.assert_array_equal(res["quantile"].values, q)
    for i, label in enumerate(WINDOWS):
        for k, qk in enumerate(q):
            ref, _ = _reference(ds, label, lambda v, qk=qk: np.nanquantile(v, qk))
            np.testing.assert_allclose(res["embedding"].values[k, :, i], ref, rtol=1e-5, atol=1e-6)


def test_nan_where_no_valid_date_and_the_awkward_pixels(ds):
    res = summarise(ds, WINDOWS).compute()
    assert np.isnan(res["embedding"].values[:, :, 0, 0]).all()  # never valid
    assert (res["count"].values[:, 0, 0] == 0).all()
    i2019 = WINDOWS.index("2019-01-01/2019-12-31")
    assert res["count"].values[i2019, 1, 1] == 0  # no valid date in 2019
    assert np.isnan(res["embedding"].values[:, i2019, 1, 1]).all()
    assert res["count"].values[i2019 - 1, 1, 1] > 0  # but in the July-June year
    # the fixture has finite values under valid=False and a valid date with a NaN
    # feature; the per-pixel references above count neither, and neither does this
    finite = np.isfinite(ds["embedding"].values).all(0)
    assert (finite & ~ds["valid"].values).any() and (ds["valid"].values & ~finite).any()
    whole = summarise(ds).compute()
    np.testing.assert_array_equal(whole["count"].values[0], counted(ds).sum(0))


def test_quality_weighting_matches_hand_computation(ds):
    eps = 0.01
    res = summarise(ds.chunk({"time": 9}), WINDOWS[1], weight="quality", eps=eps).compute()
    emb, ok, err = ds["embedding"].values, counted(ds), ds["recon_mae_s2"].values
    sel = _dates_in(ds, WINDOWS[1])
    for iy in range(ds.sizes["y"]):
        for ix in range(ds.sizes["x"]):
            use = sel & ok[:, iy, ix]
            if not use.any():
                assert np.isnan(res["embedding"].values[:, 0, iy, ix]).all()
                continue
            e = err[use, iy, ix].astype(np.float64)
            e = np.where(np.isfinite(e), e, np.nanmean(e) if np.isfinite(e).any() else 0.0)
            w = 1 / (e + eps)
            ref = (emb[:, use, iy, ix] * w).sum(1) / w.sum()
            np.testing.assert_allclose(res["embedding"].values[:, 0, iy, ix], ref, rtol=1e-5)
    assert res.attrs["weight"] == "quality" and "recon_mae_s2 + 0.01" in res.attrs["weight_formula"]


def test_weighted_median_is_numpy_inverted_cdf(ds):
    res = summarise(ds, WINDOWS[1], stat="median", weight="quality").compute()
    emb, ok, err = ds["embedding"].values, counted(ds), ds["recon_mae_s2"].values
    sel = _dates_in(ds, WINDOWS[1])
    iy, ix = 3, 2
    use = sel & ok[:, iy, ix]
    e = err[use, iy, ix].astype(np.float64)
    e = np.where(np.isfinite(e), e, np.nanmean(e))
    for f in range(ds.sizes["feature"]):
        ref = np.quantile(
            emb[f, use, iy, ix].astype(np.float64),
            0.5,
            weights=1 / (e + 0.01),
            method="inverted_cdf",
        )
        assert res["embedding"].values[f, 0, iy, ix] == pytest.approx(ref)


def test_weighted_quantile_against_numpy():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(50, 13))
    v[rng.random(v.shape) < 0.3] = np.nan
    v[0] = np.nan
    w = rng.uniform(0.1, 2, size=v.shape)
    q = (0.0, 0.1, 0.5, 0.9, 1.0)
    got_w, got = weighted_quantile(v, w, q), weighted_quantile(v, None, q)
    for i in range(1, 50):
        ok = np.isfinite(v[i])
        for k, qk in enumerate(q):
            ref_w = np.quantile(v[i, ok], qk, weights=w[i, ok], method="inverted_cdf")
            assert got_w[k, i] == pytest.approx(ref_w)
            assert got[k, i] == pytest.approx(np.nanquantile(v[i], qk))
    assert np.isnan(got[:, 0]).all() and np.isnan(got_w[:, 0]).all()


def test_windows_by_every():
    times = pd.date_range("2018-01-05", "2020-12-20", freq="10D").values
    quarters = make_windows(times, "2019-07-01/2020-06-30", every="3M")
    assert [w.label for w in quarters] == [
        "2019-07-01/2019-09-30",
        "2019-10-01/2019-12-31",
        "2020-01-01/2020-03-31",
        "2020-04-01/2020-06-30",
    ]
    years = make_windows(times, None, every="1Y")
    assert [w.label for w in years] == [
        "2018-01-05/2019-01-04",
        "2019-01-05/2020-01-04",
        "2020-01-05/2020-12-20",  # the last one ends with the series
    ]
    same = make_windows(times, None, every=pd.DateOffset(years=1))
    assert [w.label for w in same] == [w.label for w in years]
    days = make_windows(times, "2019-01-01/2019-01-31", every=dt.timedelta(days=10))
    assert [w.label for w in days] == [
        "2019-01-01/2019-01-10",
        "2019-01-11/2019-01-20",
        "2019-01-21/2019-01-30",
        "2019-01-31/2019-01-31",
    ]
    rolling = make_windows(times, "2019-01-01/2019-12-31", every="1M", length="6M")
    assert rolling[0].label == "2019-01-01/2019-06-30"
    assert (
        rolling[6].label == "2019-07-01/2019-12-31" and rolling[-1].label == "2019-12-01/2019-12-31"
    )
    two = make_windows(times, ["2018-06-01/2018-06-30", ("2019-06-01", "2019-07-31")], every="1M")
    assert len(two) == 3
    with pytest.raises(EmbeddingError, match="ends before"):
        make_windows(times, "2020-01-01/2019-01-01")
    with pytest.raises(EmbeddingError, match="cannot read every"):
        make_windows(times, None, every="fortnight-ish")


def test_every_gives_the_window_coordinates(ds):
    res = summarise(ds, "2019-07-01/2020-06-30", every="3M")
    assert res.sizes["window"] == 4
    np.testing.assert_array_equal(
        res["window_start"].values,
        pd.to_datetime(["2019-07-01", "2019-10-01", "2020-01-01", "2020-04-01"]).values,
    )
    np.testing.assert_array_equal(
        res["window_end"].values,
        pd.to_datetime(["2019-09-30", "2019-12-31", "2020-03-31", "2020-06-30"]).values,
    )
    whole = summarise(ds, "2019-07-01/2020-06-30").compute()
    np.testing.assert_array_equal(res["count"].sum("window").values, whole["count"].values[0])


def test_lazy_on_dask_one_compute_and_chunks_kept(tmp_path):
    store = write_zarr(
        synthetic_embedding(ny=8, nx=6).chunk({"time": 1, "y": 4, "x": 3}), tmp_path / "e.zarr"
    )
    emb = open_zarr(store)
    sched = CountingScheduler()
    import dask

    with dask.config.set(scheduler=sched):
        res = {s: summarise(emb, every="1Y", stat=s) for s in ("mean", "quantiles")}
        assert sched.calls == 0  # building the result computes nothing
        for r in res.values():
            assert r["embedding"].chunks is not None and r["count"].chunks is not None
            assert r["embedding"].chunksizes["y"] == (4, 4) and r["embedding"].chunksizes["x"] == (
                3,
                3,
            )
        computed = res["mean"].compute()
        assert sched.calls == 1
    ref = summarise(synthetic_embedding(ny=8, nx=6), every="1Y").compute()
    np.testing.assert_allclose(computed["embedding"].values, ref["embedding"].values, rtol=1e-6)
    assert computed.attrs["source_store"] == str(store)


def test_crs_grid_and_attributes_kept(ds, tmp_path):
    res = summarise(ds, WINDOWS[:2], stat="median")
    assert res.rio.crs == ds.rio.crs and str(res.rio.crs) == CRS
    np.testing.assert_array_equal(res["x"].values, ds["x"].values)
    np.testing.assert_array_equal(res["y"].values, ds["y"].values)
    assert res.rio.transform() == ds.rio.transform()
    assert res.attrs["stat"] == "median" and res.attrs["windows"] == ";".join(WINDOWS[:2])
    assert res.attrs["weight"] == "none" and res.attrs["sensor"] == "s2"
    back = open_zarr(write_zarr(res, tmp_path / "s.zarr"))
    assert back.rio.crs == ds.rio.crs
    np.testing.assert_array_equal(back["embedding"].values, res["embedding"].values)


def test_dataarray_with_quality_coordinates_and_accessor(ds):
    da_in = ds["embedding"].assign_coords(valid=ds["valid"], recon_mae_s2=ds["recon_mae_s2"])
    a = summarise(da_in, WINDOWS, weight="quality").compute()
    b = ds.latentcube.summarise(WINDOWS, weight="quality").compute()
    c = da_in.latentcube.summarise(WINDOWS, weight="quality").compute()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    xr.testing.assert_identical(a.drop_attrs(), c.drop_attrs())


def test_refusals(ds):
    with pytest.raises(EmbeddingError, match="stat must be"):
        summarise(ds, stat="max")  # type: ignore[arg-type]
    with pytest.raises(EmbeddingError, match="quantiles must be"):
        summarise(ds, stat="quantiles", quantiles=(0.5, 1.5))
    with pytest.raises(EmbeddingError, match="needs a reconstruction error"):
        summarise(ds.drop_vars("recon_mae_s2"), weight="quality")
    with pytest.raises(EmbeddingError, match="START/END"):
        summarise(ds, "2019-01-01")
    with pytest.raises(EmbeddingError, match="no 'embedding'"):
        summarise(ds.drop_vars("embedding"))


def test_months_keep_only_those_calendar_months(ds):
    res = summarise(ds, "2018-01-01/2020-12-31", months=range(5, 10)).compute()
    t = pd.DatetimeIndex(ds["time"].values)
    season = np.asarray(t.month.isin([5, 6, 7, 8, 9]))
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    iy, ix = 4, 2
    use = season & ok[:, iy, ix]
    np.testing.assert_allclose(
        res["embedding"].values[:, 0, iy, ix], emb[:, use, iy, ix].mean(1), rtol=1e-5
    )
    np.testing.assert_array_equal(res["count"].values[0], (ok & season[:, None, None]).sum(0))
    assert res.attrs["months"] == "5,6,7,8,9"
    with pytest.raises(EmbeddingError, match="months"):
        summarise(ds, months=[0, 13])
