"""analysis.change: period change and per-date anomalies equal hand computations."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import latentcube  # noqa: F401  (registers the accessor)
from analysis_data import CountingScheduler, counted, synthetic_embedding
from latentcube.analysis.change import (
    anomaly,
    change,
    other_year_weights,
    plot_change,
    robust_zscore,
)
from latentcube.errors import EmbeddingError, OutputError

BEFORE, AFTER = "2018-01-01/2018-12-31", "2020-01-01/2020-12-31"


@pytest.fixture(scope="module")
def ds():
    return synthetic_embedding()


def _period(ds, label):
    a, b = label.split("/")
    t = pd.DatetimeIndex(ds["time"].values)
    return np.asarray((t >= pd.Timestamp(a)) & (t <= pd.Timestamp(b) + pd.Timedelta("23:59:59")))


@pytest.mark.parametrize("chunked", [False, True])
def test_change_equals_hand_computed_distances(ds, chunked):
    src = ds.chunk({"time": 10, "y": 3}) if chunked else ds
    res = change(src, before=BEFORE, after=AFTER, min_count=3).compute()
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    pa, pb = _period(ds, BEFORE), _period(ds, AFTER)
    n_checked = 0
    for iy in range(ds.sizes["y"]):
        for ix in range(ds.sizes["x"]):
            ua, ub = pa & ok[:, iy, ix], pb & ok[:, iy, ix]
            assert res["count_before"].values[iy, ix] == ua.sum()
            assert res["count_after"].values[iy, ix] == ub.sum()
            if ua.sum() < 3 or ub.sum() < 3:
                assert np.isnan(res["euclidean"].values[iy, ix])
                assert np.isnan(res["cosine"].values[iy, ix])
                continue
            a, b = emb[:, ua, iy, ix].mean(1), emb[:, ub, iy, ix].mean(1)
            eu = np.sqrt(((b - a) ** 2).sum())
            co = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            assert res["euclidean"].values[iy, ix] == pytest.approx(eu, rel=1e-5)
            assert res["cosine"].values[iy, ix] == pytest.approx(co, rel=1e-4, abs=1e-6)
            np.testing.assert_allclose(res["before"].values[:, iy, ix], a, rtol=1e-5)
            n_checked += 1
    assert n_checked > 20
    assert np.isnan(res["euclidean"].values[0, 0])  # never valid
    assert res.attrs["before"] == BEFORE and res.attrs["after"] == AFTER


def test_change_with_medians_and_accessor(ds):
    res = ds.latentcube.change(before=BEFORE, after=AFTER, stat="median").compute()
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    iy, ix = 4, 3
    a = np.median(emb[:, _period(ds, BEFORE) & ok[:, iy, ix], iy, ix], axis=1)
    b = np.median(emb[:, _period(ds, AFTER) & ok[:, iy, ix], iy, ix], axis=1)
    assert res["euclidean"].values[iy, ix] == pytest.approx(np.linalg.norm(b - a), rel=1e-5)
    with pytest.raises(EmbeddingError, match="'mean' or 'median'"):
        change(ds, BEFORE, AFTER, stat="quantiles")  # type: ignore[arg-type]


def test_other_year_membership():
    t = pd.to_datetime(
        ["2018-06-01", "2018-12-28", "2019-01-03", "2019-06-10", "2019-07-20", "2020-06-01"]
    )
    member, k = other_year_weights(t.values, half_window=15)
    # one year and 9 days away: in; 2020-06-01 is 2 years away exactly: in
    assert member[0, 3] and member[0, 5] and k[0, 5] == 2
    # six days apart across New Year: the same season of the same winter, out
    assert not member[1, 2] and not member[2, 1]
    # 1 year and 49 days away: out; a date never counts for itself
    assert not member[0, 4] and not member.diagonal().any()
    np.testing.assert_array_equal(member, member.T)


def _anomaly_reference(ds, half_window, min_count=1, min_years=1):
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    days = pd.DatetimeIndex(ds["time"].values).normalize()
    days = np.asarray((days - pd.Timestamp("1970-01-01")).days)
    n_t, ny, nx = ok.shape
    eu = np.full((n_t, ny, nx), np.nan)
    co = np.full((n_t, ny, nx), np.nan)
    count = np.zeros((n_t, ny, nx), int)
    n_years = np.zeros((n_t, ny, nx), int)
    for t in range(n_t):
        others = []
        for s in range(n_t):
            d = days[s] - days[t]
            k = round(d / 365.25)
            if k != 0 and abs(d - 365.25 * k) <= half_window:
                others.append((s, k))
        for iy in range(ny):
            for ix in range(nx):
                use = [(s, k) for s, k in others if ok[s, iy, ix]]
                count[t, iy, ix] = len(use)
                n_years[t, iy, ix] = len({k for _, k in use})
                if not ok[t, iy, ix] or len(use) < min_count or n_years[t, iy, ix] < min_years:
                    continue
                e = emb[:, [s for s, _ in use], iy, ix].mean(1)
                v = emb[:, t, iy, ix]
                eu[t, iy, ix] = np.linalg.norm(v - e)
                co[t, iy, ix] = 1 - v @ e / (np.linalg.norm(v) * np.linalg.norm(e))
    return eu, co, count, n_years


@pytest.mark.parametrize(("half_window", "min_years"), [(20, 1), (45, 2)])
def test_anomaly_from_other_years_equals_hand_computation(ds, half_window, min_years):
    res = anomaly(ds.chunk({"time": 13, "x": 2}), half_window=half_window, min_years=min_years)
    res = res.compute()
    eu, co, count, n_years = _anomaly_reference(ds, half_window, min_years=min_years)
    np.testing.assert_array_equal(res["count"].values, count)
    np.testing.assert_array_equal(res["n_years"].values, n_years)
    np.testing.assert_allclose(res["euclidean"].values, eu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res["cosine"].values, co, rtol=1e-4, atol=1e-5)
    assert np.isfinite(eu).sum() > 100
    # pixel (1, 1) has no 2019: its 2020 dates are still compared with 2018 (k = -2)
    in_2020 = np.asarray(pd.DatetimeIndex(ds["time"].values).year == 2020)
    assert np.isfinite(res["euclidean"].values[in_2020, 1, 1]).any()


def test_anomaly_of_one_year_is_empty_and_expected_is_kept(ds):
    # years are counted as time apart, not calendar years: early January and late
    # December of 2019 are a year apart, so the series is cut shorter than that
    one = ds.sel(time=slice("2019-02-01", "2019-11-30"))
    res = anomaly(one, keep_expected=True).compute()
    assert (res["count"].values == 0).all() and np.isnan(res["euclidean"].values).all()
    assert res["expected"].dims == ("feature", "time", "y", "x")


def test_anomaly_and_change_are_lazy_with_one_compute_and_keep_the_crs(ds):
    src = ds.chunk({"time": 8, "y": 3, "x": 5})
    sched = CountingScheduler()
    with dask.config.set(scheduler=sched):
        an = anomaly(src, half_window=30)
        ch = change(src, BEFORE, AFTER)
        assert sched.calls == 0
        assert an["euclidean"].chunks is not None and ch["euclidean"].chunks is not None
        assert an["euclidean"].chunksizes["y"] == (3, 3)
        an.compute()
        assert sched.calls == 1
    for r in (an, ch):
        assert r.rio.crs == ds.rio.crs
        np.testing.assert_array_equal(r["x"].values, ds["x"].values)
        np.testing.assert_array_equal(r["y"].values, ds["y"].values)
    np.testing.assert_array_equal(an["time"].values, ds["time"].values)


def test_robust_zscore_and_change_figure(ds, tmp_path):
    z = robust_zscore(np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan]))
    assert z[2] == 0 and z[4] > 30 and np.isnan(z[5])
    assert z[3] == pytest.approx(1 / 1.4826)
    res = change(ds, BEFORE, AFTER)
    rgb = np.full((ds.sizes["y"], ds.sizes["x"], 3), 0.4)
    out = plot_change(res, tmp_path / "fig" / "change.png", background=rgb)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputError, match="exists"):
        plot_change(res, out)
    plot_change(res, out, variable="cosine", overwrite=True)
    with pytest.raises(EmbeddingError, match="no 'nope'"):
        plot_change(res, out, variable="nope", overwrite=True)


def test_change_over_the_same_months_of_each_period(ds):
    res = change(ds, BEFORE, AFTER, months=[6, 7, 8]).compute()
    t = pd.DatetimeIndex(ds["time"].values)
    summer = np.asarray(t.month.isin([6, 7, 8]))
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    iy, ix = 5, 4
    a = emb[:, _period(ds, BEFORE) & summer & ok[:, iy, ix], iy, ix].mean(1)
    b = emb[:, _period(ds, AFTER) & summer & ok[:, iy, ix], iy, ix].mean(1)
    assert res["euclidean"].values[iy, ix] == pytest.approx(np.linalg.norm(b - a), rel=1e-5)
    assert res.attrs["months"] == "6,7,8"


@pytest.mark.shared
def test_romania_script_cube_ndvi_and_comparison(monkeypatch):
    """The helpers of scripts/romania_change.py that docs/analysis.md's numbers rest on."""
    import importlib.util

    from conftest import ROOT, shared_path

    data = shared_path("nrt_romania_s2_l2a")
    spec = importlib.util.spec_from_file_location("rc", ROOT / "scripts" / "romania_change.py")
    rc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rc)
    monkeypatch.setattr(rc, "DATA", data)
    cube = rc.load_cube()
    assert dict(cube.sizes) == {"time": 117, "band": 4, "y": 100, "x": 100}
    assert cube.rio.crs.to_epsg() == 3035 and list(cube["band"].values) == [
        "B02",
        "B03",
        "B04",
        "B08",
    ]
    assert float(cube["s2_valid"].mean()) == pytest.approx(0.675, abs=0.001)
    nd = rc.ndvi_embedding(cube)
    assert nd["embedding"].dims == ("feature", "time", "y", "x") and nd.rio.crs == cube.rio.crs
    np.testing.assert_array_equal(nd["valid"].values, cube["s2_valid"].values)
    red, nir = (cube["s2"].sel(band=b).values for b in ("B04", "B08"))
    ok = cube["s2_valid"].values
    np.testing.assert_allclose(
        nd["embedding"].values[0][ok], ((nir - red) / (nir + red))[ok], rtol=1e-6
    )
    tcd = rc.tree_cover()
    assert tcd.shape == (100, 100) and np.nanmax(tcd) <= 100
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, size=(100, 100))
    same = rc.compare(a, a, tcd)
    assert same["spearman_embedding_ndvi"] == pytest.approx(1.0) and same["jaccard"] == 1.0
    assert same["flagged_embedding"] == same["flagged_ndvi"] > 0
