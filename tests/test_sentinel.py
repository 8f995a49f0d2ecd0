"""S1 conversion, date matching and S2 masking against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from latentcube.cube.sentinel1 import (
    db_to_linear,
    denormalise,
    linear_to_db,
    match_dates,
    normalise_db,
    preprocess_s1,
    smooth_linear,
)
from latentcube.cube.sentinel2 import (
    drop_invalid_dates,
    merge_same_day,
    remove_baseline_offset,
    scl_valid,
)

from conftest import tiny_cube


def test_db_linear_round_trip():
    db = np.array([-20.0, -10.0, 0.0, 3.0])
    np.testing.assert_allclose(db_to_linear(db), [0.01, 0.1, 1.0, 10**0.3])
    np.testing.assert_allclose(linear_to_db(db_to_linear(db)), db)
    assert np.isnan(linear_to_db(np.array([0.0, -1.0]))).all()


def test_normalise_db_clips_and_scales():
    out = normalise_db(np.array([-40.0, -30.0, -12.5, 5.0, 9.0, np.nan]))
    np.testing.assert_allclose(out[:5], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.isnan(out[5])
    np.testing.assert_allclose(denormalise(np.float32(0.5)), -12.5)


def test_preprocess_s1_by_hand():
    # three acquisitions of one pixel: -10, -13, -16 dB
    db = np.array([-10.0, -13.0, -16.0])[:, None]
    lin = [10 ** (-1.0), 10 ** (-1.3), 10 ** (-1.6)]
    # centred rolling mean with min_periods=1 in linear power
    means = [(lin[0] + lin[1]) / 2, sum(lin) / 3, (lin[1] + lin[2]) / 2]
    expected = [((10 * math.log10(m)) + 30) / 35 for m in means]
    np.testing.assert_allclose(preprocess_s1(db)[:, 0], expected, rtol=1e-6)


def test_smooth_linear_matches_pandas_and_skips_nan():
    rng = np.random.default_rng(0)
    a = rng.random((9, 4))
    a[2, 1] = np.nan
    a[3:6, 3] = np.nan
    ref = pd.DataFrame(a).rolling(3, center=True, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(smooth_linear(a), ref, equal_nan=True)
    assert np.isnan(smooth_linear(a)[4, 3])  # all three neighbours missing


def test_match_dates_nearest_ties_and_gap():
    s2 = np.array(["2020-01-10", "2020-01-20", "2020-02-20", "2020-01-15"], "datetime64[ns]")
    s1 = np.array(["2020-01-18", "2020-01-12", "2020-01-22", "2020-03-10"], "datetime64[ns]")
    idx, gap = match_dates(s2, s1, max_gap_days=6)
    # 01-10 -> 01-12 (2 d); 01-20 -> tie 01-18/01-22, earlier wins; 02-20 -> 03-10 is 19 d: none
    # 01-15 -> tie 01-12/01-18 (3 d each): earlier
    assert idx.tolist() == [1, 0, -1, 1]
    np.testing.assert_allclose(gap, [2, 2, 19, 3])  # 2020 is a leap year
    idx, _ = match_dates(s2, s1[:0])
    assert (idx == -1).all()


def test_scl_mask_and_dilation():
    scl = np.full((5, 5), 4)
    scl[2, 2] = 9  # cloud
    scl[0, 4] = 3  # shadow
    m = scl_valid(scl)
    assert m.sum() == 23 and not m[2, 2] and not m[0, 4]
    d = scl_valid(scl, dilation=1)
    expected = np.ones((5, 5), bool)
    expected[1:4, 1:4] = False
    expected[0:2, 3:5] = False
    np.testing.assert_array_equal(d, expected)
    stack = scl_valid(np.stack([scl, np.full((5, 5), 4)]), dilation=1)
    assert stack[1].all()  # dilation does not leak across dates


def test_remove_baseline_offset():
    dn = np.array([0, 1000, 1500, 11000, 30000], np.uint16)
    np.testing.assert_allclose(
        remove_baseline_offset(dn, "04.00"), [np.nan, 0.0, 0.05, 1.0, 1.0], equal_nan=True
    )
    np.testing.assert_allclose(
        remove_baseline_offset(dn, "03.01"), [np.nan, 0.1, 0.15, 1.0, 1.0], equal_nan=True
    )
    assert remove_baseline_offset(dn, None)[1] == pytest.approx(0.1)


def test_merge_same_day_takes_first_valid():
    t = np.array(["2020-01-01T10:00", "2020-01-01T10:05", "2020-01-03T10:00"], "datetime64[ns]")
    data = np.arange(3 * 1 * 2 * 2, dtype=np.float32).reshape(3, 1, 2, 2)
    valid = np.array([[[1, 0], [0, 0]], [[1, 1], [0, 1]], [[1, 1], [1, 1]]], bool)
    d, v, tt = merge_same_day(data, valid, t)
    assert d.shape == (2, 1, 2, 2) and tt[0] == t[0]
    np.testing.assert_array_equal(v[0], [[1, 1], [0, 1]])
    np.testing.assert_array_equal(d[0, 0], [[0, 5], [np.nan, 7]])


def test_drop_invalid_dates():
    cube = tiny_cube()
    cube["s2_valid"][2, :10] = False
    frac = cube["s2_valid"].mean(("y", "x")).values
    kept = drop_invalid_dates(cube, 0.8)
    assert kept.sizes["time"] == int((frac >= 0.8).sum()) < cube.sizes["time"]
