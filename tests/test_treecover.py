"""Tree-cover regression probe: checked against scikit-learn and numpy directly."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latentcube.errors import EvaluationError
from latentcube.evaluation.probes import block_ids
from latentcube.evaluation.treecover import (
    pixel_summary,
    read_tree_cover,
    ridge_blocked_cv,
    treecover_probe,
)

from conftest import shared_path


def _synthetic(n_y=60, n_x=60, seed=0):
    rng = np.random.default_rng(seed)
    good = rng.normal(size=(3, n_y, n_x))
    target = 50 + 10 * good[0] - 5 * good[1] + rng.normal(0, 2, (n_y, n_x))
    noise = rng.normal(size=(3, n_y, n_x))
    return good, noise, target


def test_fixed_alpha_equals_sklearn_cross_val_predict():
    good, _, target = _synthetic()
    iy, ix = np.nonzero(np.ones(target.shape, bool))
    x, y = good[:, iy, ix].T, target[iy, ix]
    groups = block_ids(iy, ix, 20)
    got = ridge_blocked_cv(x, y, groups, n_splits=5, seed=3, alphas=None)
    cv = GroupKFold(n_splits=5, shuffle=True, random_state=3)
    pred = cross_val_predict(
        make_pipeline(StandardScaler(), Ridge(alpha=1.0)), x, y, groups=groups, cv=cv
    )
    assert got["r2"] == pytest.approx(r2_score(y, pred), abs=1e-12)
    assert got["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - y) ** 2))), abs=1e-9)
    assert got["chosen"] == [1.0] * 5


def test_informative_features_beat_noise_with_noise_stated():
    good, noise, target = _synthetic()
    res = treecover_probe({"good": good, "noise": noise}, target, repeats=4, max_samples=1500)
    s = res["scores"]
    assert s["good"]["r2"] > 0.9 and s["noise"]["r2"] < 0.05
    assert len(s["good"]["r2_repeats"]) == 4 and s["good"]["r2_sd"] >= 0
    assert res["paired"]["good"]["noise"]["wins"] == 4 and res["n_blocks"] == 9
    assert set(s["good"]["chosen"]) <= {0.01, 0.1, 1.0, 10.0, 100.0, 1000.0}
    with pytest.raises(EvaluationError, match="larger than the 15 px"):
        treecover_probe({"good": good}, target, block=10)


def test_pixel_summary_is_nan_aware_mean_and_sd():
    rng = np.random.default_rng(1)
    v = rng.random((2, 8, 4, 5))
    v[:, 2, 1, 1] = np.nan
    v[:, :6, 3, 4] = np.nan  # 2 dates left: below min_dates
    da = xr.DataArray(
        v,
        dims=("feature", "time", "y", "x"),
        coords={"time": np.datetime64("2018-01-01") + np.arange(8).astype("timedelta64[D]")},
    )
    s = pixel_summary(da)
    mean = np.nanmean(v, axis=1)
    mean[:, 3, 4] = np.nan
    np.testing.assert_allclose(s[:2], mean, equal_nan=True)
    np.testing.assert_allclose(s[2:, 1, 1], np.nanstd(v[:, :, 1, 1], axis=1))
    assert np.isnan(s[:, 3, 4]).all() and np.isfinite(s[:, 0, 0]).all()
    part = pixel_summary(da, ("2018-01-03", "2018-01-05"), min_dates=1)
    np.testing.assert_allclose(part[:2, 0, 0], v[:, 2:5, 0, 0].mean(axis=1))


def test_tree_cover_raster_on_the_romania_cube_grid():
    from latentcube.cube.readers import open_cube

    cube = open_cube(shared_path("nrt_romania_s2_l2a"))
    tcd = read_tree_cover(
        shared_path("nrt_romania_s2_l2a", "tree_cover_density_2018_romania.tif"), cube
    )
    import rasterio

    with rasterio.open(
        shared_path("nrt_romania_s2_l2a", "tree_cover_density_2018_romania.tif")
    ) as r:
        raw = r.read(1).astype(float)
    raw[raw == 255] = np.nan
    np.testing.assert_array_equal(tcd.values, np.repeat(np.repeat(raw, 2, 0), 2, 1))
