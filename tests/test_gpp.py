"""The GPP task: windows, splits, metrics, the regressors, and the pipeline on real flux data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from tqdm.std import tqdm

from latentcube.errors import EvaluationError
from latentcube.evaluation.features import site_features
from latentcube.evaluation.flux import read_flux, site_registry
from latentcube.evaluation.gpp import (
    GPPTransformer,
    fit_transformer,
    gpp_metrics,
    leave_one_site_out,
    make_windows,
    random_search,
    run_gpp,
    site_table,
    split_by_years,
)

from conftest import shared_path, spy

TINY_SPACE = {
    "d_model": (8,),
    "n_heads": (2,),
    "n_layers": (1,),
    "dropout": (0.0,),
    "lr": (3e-3,),
    "batch_size": (16,),
}


def daily(n=400, start="2017-01-01", seed=0):
    t = pd.date_range(start, periods=n, freq="D", name="date")
    rng = np.random.default_rng(seed)
    f = np.sin(2 * np.pi * np.arange(n) / 365) + rng.normal(0, 0.01, n)
    return pd.DataFrame({"a:x": f, "b:y": rng.normal(size=n), "GPP": 5 + 4 * f}, index=t)


def test_windows_target_is_last_day_and_nan_windows_dropped():
    df = daily(200)
    df.iloc[150, 0] = np.nan
    w = make_windows({"S": df}, {"a": ["a:x"], "b": ["a:x", "b:y"]}, seq_len=90, stride=10)
    ends = pd.DatetimeIndex(w.end)
    # ends at day 89, 99, ..., 199; those whose window contains day 150 are dropped
    expected = [e for e in range(89, 200, 10) if not e - 89 <= 150 <= e]
    assert [int((e - df.index[0]).days) for e in ends] == expected
    k = 0
    e = expected[k]
    np.testing.assert_allclose(w.x["b"][k][:, 1], df["b:y"].to_numpy()[e - 89 : e + 1], rtol=1e-6)
    assert w.y[k] == df["GPP"].iloc[e]
    assert w.x["a"].shape[1:] == (90, 1) and w.x["b"].shape[1:] == (90, 2)
    with pytest.raises(EvaluationError, match="missing columns"):
        make_windows({"S": df}, {"c": ["c:z"]})
    with pytest.raises(EvaluationError, match="no 90-day window"):
        make_windows({"S": df.iloc[:50]}, {"a": ["a:x"]})


def test_splits():
    end = pd.date_range("2016-06-01", "2018-12-31", freq="10D").to_numpy("datetime64[D]")
    tr, te = split_by_years(end, [2018])
    assert (pd.DatetimeIndex(end[te]).year == 2018).all()
    assert (pd.DatetimeIndex(end[tr]).year < 2018).all() and len(tr) + len(te) == len(end)
    with pytest.raises(EvaluationError, match="no window"):
        split_by_years(end, [2030])
    folds = leave_one_site_out(np.array(["A", "B", "A", "C"]))
    assert [f[0] for f in folds] == ["A", "B", "C"]
    np.testing.assert_array_equal(folds[0][2], [0, 2])
    with pytest.raises(EvaluationError, match="two sites"):
        leave_one_site_out(np.array(["A", "A"]))


def test_metrics_by_hand():
    m = gpp_metrics(np.array([1.0, 2.0, 3.0, 6.0]), np.array([2.0, 2.0, 2.0, 6.0]))
    # errors 1, 0, -1, 0: RMSE sqrt(0.5); mean 3, SS_tot = 4 + 1 + 0 + 9 = 14
    assert m["rmse"] == pytest.approx(np.sqrt(0.5))
    assert m["r2"] == pytest.approx(1 - 2 / 14)
    assert m["nrmse"] == pytest.approx(np.sqrt(0.5) / 3.0)
    assert m["bias"] == pytest.approx(0.0) and m["n"] == 4


def test_transformer_shapes_and_learning():
    net = GPPTransformer(3, seq_len=90, d_model=8, n_heads=2, n_layers=1)
    assert net(torch.zeros(5, 90, 3)).shape == (5,)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 20, 2)).astype(np.float32)
    y = 3.0 * x[:, -1, 0] + 5.0  # GPP depends on the last day's first feature
    fit = fit_transformer(
        x[:120],
        y[:120],
        x[120:],
        y[120:],
        {"d_model": 16, "n_heads": 2, "n_layers": 1, "lr": 3e-3},
        max_epochs=25,
        patience=25,
    )
    mae = np.abs(fit.predict(x[120:]) - y[120:]).mean()
    assert mae < 0.35 * np.abs(y[120:] - y[:120].mean()).mean()


def test_random_search_respects_trials_and_budget():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 10, 1)).astype(np.float32)
    y = x[:, -1, 0]
    _, trials = random_search(
        x[:30], y[:30], x[30:], y[30:], n_trials=3, time_budget=None, space=TINY_SPACE, max_epochs=2
    )
    assert len(trials) == 3
    _, trials = random_search(
        x[:30], y[:30], x[30:], y[30:], n_trials=3, time_budget=0.0, space=TINY_SPACE, max_epochs=2
    )
    assert len(trials) == 1  # the budget is spent after the first trial


@pytest.mark.shared
def test_pipeline_on_real_se_htm_flux_with_real_s2_ndvi_features(tmp_path):
    """Pipeline test, not a result: real SE-Htm GPP with real S2 NDVI of another place.

    No imagery at a flux tower exists in the sample data, so the features are the
    cloud-masked S2 NDVI series of the eo-learn Slovenia patch (2015-07 .. 2017-12),
    passed through the same feature-cube path an embedding takes.
    """
    flux = read_flux(shared_path("icos_se_htm_halfhourly"))
    root = shared_path("eolearn_testeopatch_slovenia")
    times = np.array(json.loads((root / "timestamps.json").read_text()), dtype="datetime64[ns]")
    ndvi = np.load(root / "data" / "NDVI.npy")[..., 0]
    valid = np.load(root / "mask" / "IS_VALID.npy")[..., 0]
    cube = xr.DataArray(
        np.where(valid, ndvi, np.nan)[None],
        dims=("feature", "time", "y", "x"),
        coords={"feature": ["NDVI"], "time": times},
    )
    site = site_registry()["SE-Htm"]
    feats = site_features(
        {"ndvi": cube},
        lat=site.lat,
        start=flux.index.min(),
        end=flux.index.max(),
        min_valid_fraction=0.5,
    )
    table = site_table(flux, feats)
    res = run_gpp(
        {"SE-Htm": table},
        {"rad": ["rad:Rso"], "ndvi": ["ndvi:NDVI", "rad:Rso"]},
        tmp_path,
        test_years=[2017],
        n_trials=1,
        time_budget=None,
        max_epochs=3,
        space=TINY_SPACE,
        seed=0,
    )
    tp = res["test_predictions"]
    assert all(d.startswith("2017") for d in tp["date"])
    # every 10th day of 2017 up to the last S2 date (2017-12-22) ends a complete window
    assert res["n_windows"]["test"] == len(tp["date"]) == 34
    assert max(tp["date"]) <= "2017-12-22"
    # the same windows for every feature set, and the climatology beside them
    assert set(res["scores"]) == {"climatology", "rad", "ndvi"}
    for name in ("rad", "ndvi"):
        for model in ("transformer", "gbr"):
            got = res["scores"][name][model]["overall"]
            pred = np.array(tp[f"{name} / {model}"])
            assert got == gpp_metrics(np.array(tp["observed"]), pred)
    # the climatology of 2015-2016 at this evergreen site explains most of 2017
    assert res["scores"]["climatology"]["mean seasonal cycle"]["overall"]["r2"] > 0.5
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["gpp"]["scores"] == json.loads(json.dumps(res["scores"]))
    assert (tmp_path / "figures" / "gpp_series_SE-Htm.png").stat().st_size > 5000
    assert (tmp_path / "figures" / "gpp_scatter.png").exists()
    md = (tmp_path / "report.md").read_text()
    clim = res["scores"]["climatology"]["mean seasonal cycle"]["overall"]
    assert f"{clim['rmse']:.3f}" in md


def test_leave_one_site_out_run_excludes_the_test_site(tmp_path, capsys):
    # site C has a doubled GPP: a model or climatology that never saw C under-predicts it
    # (bias about -5.5); A's climatology comes from B and C, so it over-predicts by ~2.5
    sites = {s: daily(500, seed=i) for i, s in enumerate("ABC")}
    sites["C"]["GPP"] = 2 * sites["C"]["GPP"]
    res = run_gpp(sites, {"a": ["a:x"]}, None, models=("gbr",), seed=0, progress=True)
    err = capsys.readouterr().err
    assert "GPP fits" in err and "3/3" in err  # 1 set x 1 model x 3 left-out sites
    assert res["split"] == {"type": "leave-one-site-out"}
    per = res["scores"]["climatology"]["mean seasonal cycle"]["per_site"]
    assert set(per) == {"A", "B", "C"}
    assert per["C"]["bias"] < -3.0 and 1.5 < per["A"]["bias"] < 3.5
    assert res["scores"]["a"]["gbr"]["per_site"]["C"]["bias"] < -3.0


def test_run_gpp_resumes_after_a_crash_with_the_same_numbers(tmp_path, monkeypatch):
    """Steps finished before a crash are read back; only the others are fitted again."""
    from latentcube.evaluation import gpp

    sites = {s: daily(500, seed=i) for i, s in enumerate("AB")}
    sets = {"a": ["a:x"], "b": ["a:x", "b:y"]}
    kw = {"models": ("transformer", "gbr"), "n_trials": 1, "max_epochs": 2, "seed": 0}
    out = tmp_path / "rep"
    real = gpp._fit_predict
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill between steps
        return real(*args, **kwargs)

    monkeypatch.setattr(gpp, "_fit_predict", crash_on_third)
    with pytest.raises(KeyboardInterrupt) as crash:
        gpp.run_gpp(sites, sets, out, resume=True, progress=True, **kw)
    assert len(list((out / ".gpp-cache").glob("*.json"))) == 2
    # the progress bar is closed by the crash, not left to the garbage collector:
    # ``crash`` keeps the traceback, and with it the bar, alive (without that
    # reference the collector closes the bar and the check passes with the old code)
    bars = [b for b in tqdm._instances if b.desc == "GPP fits"]
    assert crash.traceback and not bars
    monkeypatch.setattr(gpp, "_fit_predict", real)
    calls = spy(monkeypatch, gpp, "_fit_predict", lambda *args: args[1:3])
    resumed = gpp.run_gpp(sites, sets, out, resume=True, **kw)
    # 2 sets x 2 models x 2 left-out sites = 8 steps, 2 of them from the cache
    assert len(calls) == 6 and not (out / ".gpp-cache").exists()
    monkeypatch.undo()
    fresh = gpp.run_gpp(sites, sets, None, **kw)
    assert resumed["scores"] == fresh["scores"]
    assert resumed["test_predictions"] == fresh["test_predictions"]
