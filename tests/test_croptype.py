"""Crop-type probe: season series vs season mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.errors import EvaluationError
from latentcube.evaluation.croptype import croptype_probe, default_season, season_features


def fc(values, times, name="f"):
    return xr.DataArray(
        np.asarray(values, np.float32),
        dims=("feature", "time", "y", "x"),
        coords={"time": pd.DatetimeIndex(times)},
        name=name,
    )


def test_season_features_by_hand():
    t = ["2018-02-01", "2018-03-11", "2018-03-21", "2018-04-10", "2018-11-20"]
    v = np.zeros((1, 5, 1, 2))
    v[0, :, 0, 0] = [99, 1, 2, 4, 99]  # first and last dates lie outside the season
    v[0, :, 0, 1] = [99, np.nan, 2, np.nan, 99]  # one valid in-season date only
    s, m, ok = season_features(fc(v, t), ("2018-03-01", "2018-04-30"), step_days=20, min_dates=2)
    # grid: days 0, 20, 40, 60 from 1 March = 03-01, 03-21, 04-10, 04-30
    np.testing.assert_allclose(s[0, 0], [1, 2, 4, 4])  # held before the first / after the last
    assert m[0, 0, 0] == pytest.approx(7 / 3)
    assert ok.tolist() == [[True, False]] and np.isnan(s[0, 1]).all()
    with pytest.raises(EvaluationError, match="not after"):
        season_features(fc(v, t), ("2018-05-01", "2018-04-01"))


def test_feature_groups_are_interpolated_over_their_own_dates():
    # feature 0 (an "S2" feature) is cloudy on 03-21; feature 1 (an "S1" feature) is not
    t = ["2018-03-01", "2018-03-21", "2018-04-10"]
    v = np.zeros((2, 3, 1, 1))
    v[0, :, 0, 0] = [0, np.nan, 4]
    v[1, :, 0, 0] = [10, 30, 10]
    s, m, ok = season_features(fc(v, t), ("2018-03-01", "2018-04-10"), step_days=20, min_dates=2)
    np.testing.assert_allclose(s[0, 0], [0, 2, 4, 10, 30, 10])  # S2 interpolated, S1 observed
    np.testing.assert_allclose(m[0, 0], [2, 50 / 3], rtol=1e-6)
    assert ok[0, 0]
    # a pixel is dropped when any group has too few dates
    s, m, ok = season_features(fc(v, t), ("2018-03-01", "2018-04-10"), step_days=20, min_dates=3)
    assert not ok[0, 0] and np.isnan(s).all() and np.isnan(m).all()


def test_series_beats_season_mean_when_classes_differ_in_timing():
    # two crops with the same mean greenness but the peak early or late in the season
    rng = np.random.default_rng(0)
    t = pd.date_range("2018-03-01", "2018-10-31", freq="10D")
    ny = nx = 48
    lab = np.where((np.arange(nx) // 8) % 2 == 0, 1110, 1200)[None].repeat(ny, 0)
    phase = np.where(lab == 1110, 0.0, np.pi)
    x = np.linspace(0, 2 * np.pi, len(t))[:, None, None]
    v = np.sin(x + phase[None]) + rng.normal(0, 0.3, (len(t), ny, nx))
    v[rng.random(v.shape) < 0.3] = np.nan  # clouds
    res = croptype_probe(
        [{"ndvi": fc(v[None], t)}],
        [lab],
        [("2018-03-01", "2018-10-31")],
        block=16,
        seed=0,
        tune=False,
    )
    s = res["scores"]
    assert s["ndvi / series"]["logreg"]["macro_f1"] > 0.9
    assert s["ndvi / season mean"]["logreg"]["macro_f1"] < 0.75
    assert res["n_features"] == {"ndvi / series": 17, "ndvi / season mean": 1}


def test_default_season_and_errors():
    t = pd.date_range("2017-08-01", "2018-11-30", freq="30D")
    da = fc(np.zeros((1, len(t), 2, 2)), t)
    assert default_season(da) == ("2018-03-01", "2018-10-31")
    with pytest.raises(EvaluationError, match="one label map"):
        croptype_probe([{"a": da}], [], [("2018-03-01", "2018-10-31")])


def test_score_only_scores_a_subset_on_the_samples_and_folds_of_the_full_run():
    rng = np.random.default_rng(1)
    t = pd.date_range("2018-03-01", "2018-10-31", freq="20D")
    ny = nx = 48
    lab = np.where((np.arange(nx) // 8) % 2 == 0, 1110, 1200)[None].repeat(ny, 0)
    x = np.linspace(0, 2 * np.pi, len(t))[:, None, None]
    a = np.sin(x + np.where(lab == 1110, 0.0, 1.0)[None]) + rng.normal(0, 0.8, (len(t), ny, nx))
    b = rng.normal(0, 1, (len(t), ny, nx))
    b[:, :, :5] = np.nan  # set "b" is never valid in the first 5 columns
    sets = {"a": fc(a[None], t), "b": fc(b[None], t)}
    kw = {"block": 16, "seed": 0, "tune": False}
    season = [("2018-03-01", "2018-10-31")]
    full = croptype_probe([sets], [lab], season, **kw)
    part = croptype_probe([sets], [lab], season, score_only=["a / series"], **kw)
    assert list(part["scores"]) == ["a / series"]
    # same samples as the full run: the pixels where "b" is invalid stay out
    assert part["n_samples"] == full["n_samples"] == ny * (nx - 5)
    assert part["scores"]["a / series"] == full["scores"]["a / series"]
    with pytest.raises(EvaluationError, match="unknown feature sets"):
        croptype_probe([sets], [lab], season, score_only=["c / series"], **kw)


def test_paired_by_kind_pairs_series_with_series_and_means_with_means():
    from latentcube.evaluation.croptype import paired_by_kind

    def s(*f1):
        return {"knn": {"macro_f1": float(np.mean(f1)), "macro_f1_repeats": list(f1)}}

    scores = {
        "emb / series": s(0.8, 0.7),
        "emb / season mean": s(0.5, 0.5),
        "PCA-7 / series": s(0.75, 0.72),
        "PCA-7 / season mean": s(0.6, 0.4),
    }
    got = paired_by_kind(scores, ["emb", "absent"])
    assert set(got) == {"emb / series", "emb / season mean"}
    assert list(got["emb / series"]) == ["PCA-7 / series"]
    d = got["emb / series"]["PCA-7 / series"]["knn"]
    assert d["mean"] == pytest.approx(0.015) and d["wins"] == 1
    assert got["emb / season mean"]["PCA-7 / season mean"]["knn"]["mean"] == pytest.approx(0.0)
    # a screening run without season means pairs the series only
    only = paired_by_kind({k: v for k, v in scores.items() if "series" in k}, ["emb"])
    assert list(only) == ["emb / series"]
