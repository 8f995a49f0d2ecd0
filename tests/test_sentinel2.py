"""Sentinel-2 helpers against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from latentcube.cube.sentinel2 import (
    SCL_INVALID,
    drop_invalid_dates,
    merge_same_day,
    remove_baseline_offset,
    scl_valid,
)

from conftest import tiny_cube


def test_scl_default_classes_and_custom():
    scl = np.arange(12).reshape(3, 4)
    m = scl_valid(scl)
    np.testing.assert_array_equal(np.flatnonzero(m), [2, 4, 5, 6, 7])
    assert set(SCL_INVALID) == {0, 1, 3, 8, 9, 10, 11}
    # also mask water (6) and unclassified (7)
    m2 = scl_valid(scl, invalid_classes=(*SCL_INVALID, 6, 7))
    np.testing.assert_array_equal(np.flatnonzero(m2), [2, 4, 5])


def test_scl_dilation_2_on_5x5_corner():
    scl = np.full((5, 5), 5, np.uint8)
    scl[0, 0] = 8
    d = scl_valid(scl, dilation=2)
    expected = np.ones((5, 5), bool)
    expected[:3, :3] = False  # square structuring element of radius 2, clipped at the edge
    np.testing.assert_array_equal(d, expected)
    assert scl_valid(scl, dilation=0).sum() == 24


@pytest.mark.parametrize(
    ("baseline", "offset"),
    [
        ("04.00", 1000),
        ("05.09", 1000),
        ("N0400", 1000),
        (4, 1000),
        ("02.14", 0),
        ("N0301", 0),
        (None, 0),
    ],
)
def test_baseline_offset_variants(baseline, offset):
    dn = np.array([[1200, 0], [999, 12000]], np.uint16)
    out = remove_baseline_offset(dn, baseline)
    assert out.dtype == np.float32
    exp = np.clip((dn.astype(float) - offset) / 10000, 0, 1)
    exp[0, 1] = np.nan
    np.testing.assert_allclose(out, exp, rtol=1e-6, equal_nan=True)


def test_baseline_offset_bad_text():
    with pytest.raises(ValueError, match="processing baseline"):
        remove_baseline_offset(np.array([1]), "baseline four")


def test_merge_same_day_three_acquisitions_and_noop():
    t = np.array(
        ["2020-05-01T10:00", "2020-05-01T10:10", "2020-05-01T10:20", "2020-05-02T10:00"],
        "datetime64[ns]",
    )
    data = np.stack([np.full((2, 1, 3), v, np.float32) for v in (1, 2, 3, 4)])
    valid = np.array([[[0, 0, 1]], [[0, 1, 1]], [[1, 1, 1]], [[1, 1, 1]]], bool)
    d, v, tt = merge_same_day(data, valid, t)
    np.testing.assert_array_equal(tt, t[[0, 3]])
    np.testing.assert_array_equal(d[0, :, 0], [[3, 2, 1]] * 2)  # first valid per pixel
    assert v.all()
    same = merge_same_day(d, v, tt)
    assert same[0] is d and same[1] is v


def test_drop_invalid_dates_always_drops_empty_dates():
    cube = tiny_cube(n_time=5, with_s1=False)
    cube["s2_valid"][1] = False
    cube["s2_valid"][3, :, :] = False
    cube["s2_valid"][3, 0, 0] = True  # one valid pixel
    kept = drop_invalid_dates(cube, 0.0)
    assert kept.sizes["time"] == 4 and cube["time"].values[1] not in kept["time"].values
    assert drop_invalid_dates(cube, 0.5).sizes["time"] == 3
    with pytest.raises(ValueError, match="min_valid_fraction"):
        drop_invalid_dates(cube, 50)


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


def test_reflectance_into_all_digital_numbers():
    """Every uint16 DN against the float64 formula: float32 rounding at most."""
    from latentcube.cube.sentinel2 import baseline_offset, reflectance_into

    dn = np.arange(65536, dtype=np.uint16)
    for baseline, offset in (("04.00", 1000.0), ("02.09", 0.0), (None, 0.0)):
        assert baseline_offset(baseline) == offset
        out = np.full(dn.shape, np.nan, np.float32)
        assert reflectance_into(dn, offset, out) is out
        ref = np.clip((dn.astype(np.float64) - offset) / 10000.0, 0.0, 1.0)
        np.testing.assert_allclose(out, ref, rtol=1.2e-7, atol=0)
        assert out[0] == 0.0  # no NaN step: DN 0 is masked by the caller
        # remove_baseline_offset is the same arithmetic plus NaN at DN 0
        np.testing.assert_array_equal(remove_baseline_offset(dn, baseline)[1:], out[1:])


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
