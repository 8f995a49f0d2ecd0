"""Sentinel-1 helpers against hand-computed values."""

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


def test_known_numbers():
    assert db_to_linear(np.array(-3.0)) == pytest.approx(10**-0.3)
    assert linear_to_db(np.array(0.5)) == pytest.approx(10 * math.log10(0.5))
    # -30 dB -> 0, 5 dB -> 1, -23 dB -> 7/35 = 0.2
    np.testing.assert_allclose(normalise_db(np.array([-30.0, 5.0, -23.0])), [0, 1, 0.2], atol=1e-7)
    np.testing.assert_allclose(
        denormalise(normalise_db(np.array([-29.0, 0.0]))), [-29, 0], atol=1e-5
    )


def test_preprocess_linear_input_equals_db_input():
    db = np.array([[-8.0, -15.0], [-9.5, np.nan], [-7.0, -14.0], [-12.0, -18.0]])
    a = preprocess_s1(db, input="db")
    b = preprocess_s1(db_to_linear(db), input="linear")
    np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=False)
    assert a.dtype == np.float32
    # the NaN at t=1 in the second column is filled by its neighbours (-15, -14 dB)
    expected = (10 * math.log10((10**-1.5 + 10**-1.4) / 2) + 30) / 35
    assert a[1, 1] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="input must be"):
        preprocess_s1(db, input="gamma")


def test_preprocess_clips_before_scaling():
    # a strong reflector smoothed with itself stays above 5 dB -> 1; very dark -> 0
    out = preprocess_s1(np.array([[12.0, -45.0]] * 3))
    np.testing.assert_array_equal(out, [[1, 0]] * 3)


def test_smooth_window_5_and_single_acquisition():
    a = np.arange(6, dtype=float)
    # centred window 5, min_periods=1:
    # t=0 -> mean(0,1,2)=1, t=2 -> mean(0..4)=2, t=5 -> mean(3,4,5)=4
    np.testing.assert_allclose(smooth_linear(a, window=5), [1, 1.5, 2, 3, 3.5, 4])
    np.testing.assert_allclose(smooth_linear(np.array([[2.0, np.nan]])), [[2.0, np.nan]])


def test_match_dates_gap_boundary_and_unmatched():
    s2 = np.array(["2021-05-01", "2021-05-20", "2021-06-30"], "datetime64[s]")
    s1 = np.array(["2021-05-07", "2021-05-26T00:00:01"], "datetime64[s]")
    idx, gap = match_dates(s2, s1, max_gap_days=6.0)
    # exactly 6 days is accepted; 6 days + 1 s is not; 35 days is not
    assert idx.tolist() == [0, -1, -1]
    assert gap[0] == pytest.approx(6.0) and gap[1] > 6.0 and gap[2] == pytest.approx(35.0, abs=1e-4)
    idx, _ = match_dates(s2, s1, max_gap_days=7)
    assert idx.tolist() == [0, 1, -1]


def test_match_dates_sub_day_tie_goes_to_earlier():
    s2 = np.array(["2021-05-10T12:00"], "datetime64[ns]")
    s1 = np.array(["2021-05-11T00:00", "2021-05-10T00:00"], "datetime64[ns]")
    idx, gap = match_dates(s2, s1)
    assert idx.tolist() == [1] and gap[0] == pytest.approx(0.5)


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
