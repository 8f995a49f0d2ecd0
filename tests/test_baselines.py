"""Baseline feature cubes and predictors against hand formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentcube.errors import EvaluationError
from latentcube.evaluation.baselines import (
    baseline_feature_cubes,
    climatology,
    feature_sets,
    pca_bands,
    raw_bands,
    s1_backscatter,
    spectral_indices,
)

from conftest import tiny_cube


def test_raw_bands_mask_invalid(cube):
    rb = raw_bands(cube)
    assert rb.dims == ("feature", "time", "y", "x") and rb.sizes["feature"] == 10
    invalid = ~cube["s2_valid"].values
    assert np.isnan(rb.values[:, invalid]).all()
    assert np.isfinite(rb.values[:, ~invalid]).all()


def test_indices_match_hand_formulas(cube):
    idx = spectral_indices(cube)
    ok = cube["s2_valid"].values
    b, r, n = (cube["s2"].sel(band=k).values.astype(float) for k in ("B02", "B04", "B08"))
    ndvi = (n - r) / (n + r)
    np.testing.assert_allclose(idx.sel(feature="NDVI").values[ok], ndvi[ok], rtol=1e-5)
    evi = 2.5 * (n - r) / (n + 6 * r - 7.5 * b + 1)
    np.testing.assert_allclose(idx.sel(feature="EVI").values[ok], evi[ok], rtol=1e-5)
    np.testing.assert_allclose(idx.sel(feature="NIRv").values[ok], (ndvi * n)[ok], rtol=1e-5)
    np.testing.assert_allclose(
        idx.sel(feature="kNDVI").values[ok], np.tanh(ndvi**2)[ok], rtol=1e-4, atol=1e-7
    )
    assert np.isnan(idx.values[:, ~ok]).all()
    with pytest.raises(EvaluationError, match="unknown index"):
        spectral_indices(cube, ["SAVI2"])


def test_nir_falls_back_to_b8a():
    c = tiny_cube(with_s1=False).sel(band=["B02", "B03", "B04", "B8A"])
    n, r = c["s2"].sel(band="B8A").values, c["s2"].sel(band="B04").values
    ok = c["s2_valid"].values
    np.testing.assert_allclose(
        spectral_indices(c, ["NDVI"]).values[0][ok], ((n - r) / (n + r))[ok], rtol=1e-5
    )


def test_pca_components_are_uncorrelated_and_sized(cube):
    p = pca_bands(cube)
    assert p.sizes["feature"] == 7 and p.name == "PCA-7"
    flat = p.values.reshape(7, -1)
    flat = flat[:, np.isfinite(flat).all(0)]
    cov = np.cov(flat)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-3 * np.diag(cov).max()
    assert np.all(np.diff(np.diag(cov)) <= 1e-9)  # decreasing variance
    small = pca_bands(cube.sel(band=["B02", "B04", "B08"]))
    assert small.name == "PCA-3"


def test_feature_sets_and_checks(cube):
    sets = baseline_feature_cubes(cube, with_s1=False)
    assert list(sets) == ["S2 bands", "NDVI", "EVI", "NIRv", "kNDVI", "indices (4)", "PCA-7"]
    with_s1 = baseline_feature_cubes(cube)  # the cube holds S1: its inputs without a model
    assert list(with_s1)[-2:] == ["S1 VV/VH", "PCA-7 + S1 VV/VH"]
    assert with_s1["PCA-7 + S1 VV/VH"].sizes["feature"] == 9
    emb = raw_bands(cube).isel(feature=[0, 1])
    per = feature_sets([cube], {"emb": [emb]})
    assert next(iter(per[0])) == "emb"
    with pytest.raises(EvaluationError, match="embeddings for"):
        feature_sets([cube, cube], {"emb": [emb]})


def test_s1_backscatter_masks_invalid_dates(cube):
    c = cube.copy()
    ok = c["s1_valid"].values.copy()
    ok[1, 0, :] = False
    c["s1_valid"] = (c["s1_valid"].dims, ok)
    s1 = s1_backscatter(c)
    assert s1.dims == ("feature", "time", "y", "x") and s1.sizes["feature"] == 2
    raw = c["s1"].transpose("time", ..., "y", "x").values  # (time, band, y, x)
    np.testing.assert_array_equal(s1.values[:, ok], raw.transpose(1, 0, 2, 3)[:, ok])
    assert np.isnan(s1.values[:, 1, 0, :]).all()
    with pytest.raises(EvaluationError, match="no 's1'"):
        s1_backscatter(c.drop_vars(["s1", "s1_valid"]))


def test_climatology_is_the_smoothed_day_of_year_mean():
    days = pd.date_range("2015-01-01", "2016-12-31")
    gpp = pd.Series(np.where(days.year == 2015, 2.0, 4.0), index=days)
    gpp.iloc[10] = np.nan
    got = climatology(gpp, pd.DatetimeIndex(["2018-06-01"]), half_window=3)
    assert got[0] == pytest.approx(3.0)
    ramp = pd.Series(days.dayofyear.to_numpy(float), index=days)
    got = climatology(ramp, pd.DatetimeIndex(["2017-03-01"]), half_window=2)
    # 2015 and 2016 differ by one day-of-year step after February (leap year)
    assert got[0] == pytest.approx(60.0)
