"""The cube data model and validate_cube: one test per kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from latentcube import S2_BANDS, CubeError, validate_cube
from latentcube.cube.schema import make_cube, select_bands

from conftest import tiny_cube


def test_valid_cube_passes_and_has_model_layout(cube):
    assert validate_cube(cube) is cube
    assert cube["s2"].dims == ("time", "band", "y", "x")
    assert cube["s1"].dims == ("time", "s1_band", "y", "x")
    assert cube["s2"].dtype == np.float32
    assert cube.rio.crs.to_epsg() == 32631
    assert list(cube["band"].values) == list(S2_BANDS)
    assert cube.attrs["latentcube_version"]
    validate_cube(cube, {"s2": S2_BANDS, "s1": ("VV", "VH")}, resolution=10)


def test_invalid_values_are_nan_in_made_cube(cube):
    s2 = cube["s2"].values
    valid = cube["s2_valid"].values
    assert np.isnan(s2.transpose(1, 0, 2, 3)[:, ~valid]).all()
    assert np.isfinite(s2.transpose(1, 0, 2, 3)[:, valid]).all()


def test_missing_band_is_named(cube):
    with pytest.raises(CubeError, match=r"lacks band\(s\) \['B13'\]"):
        validate_cube(cube, {"s2": ("B02", "B13")})


def test_misnamed_band_gets_a_hint(cube):
    bad = cube.assign_coords(band=["B2", *S2_BANDS[1:]])
    with pytest.raises(CubeError, match="found 'B2': rename it to 'B02'"):
        validate_cube(bad, {"s2": S2_BANDS})


def test_duplicate_band_names(cube):
    bad = cube.assign_coords(band=["B02", "B02", *S2_BANDS[2:]])
    with pytest.raises(CubeError, match="more than once"):
        validate_cube(bad)


def test_missing_sensor_for_model(cube):
    with pytest.raises(CubeError, match="needs sensor 's1'"):
        validate_cube(cube.drop_vars(["s1", "s1_valid"]), {"s1": ("VV", "VH")})


def test_no_s2_variable():
    ds = xr.Dataset({"s2_B02": (("y", "x"), np.zeros((2, 2)))})
    with pytest.raises(CubeError, match=r"no 's2' variable.*s2_B02"):
        validate_cube(ds)


def test_not_a_dataset(cube):
    with pytest.raises(CubeError, match="got DataArray"):
        validate_cube(cube["s2"])


def test_wrong_dtype(cube):
    bad = cube.assign(s2=cube["s2"].astype("float64"))
    with pytest.raises(CubeError, match="dtype float64, expected float32"):
        validate_cube(bad)


def test_wrong_mask_dtype(cube):
    bad = cube.assign(s2_valid=cube["s2_valid"].astype("uint8"))
    with pytest.raises(CubeError, match="'s2_valid' has dtype uint8"):
        validate_cube(bad)


def test_values_out_of_range(cube):
    bad = cube.copy(deep=True)
    bad["s2_valid"][0, 0, 0] = True
    bad["s2"][0, :, 0, 0] = 1.7
    with pytest.raises(CubeError, match=r"outside \[0, 1\]"):
        validate_cube(bad)


def test_reflectance_in_dn_is_out_of_range(cube):
    bad = cube.assign(s2=cube["s2"] * np.float32(10000))
    with pytest.raises(CubeError, match="scale and clip"):
        validate_cube(bad)


def test_nan_under_valid_mask(cube):
    bad = cube.copy(deep=True)
    bad["s2_valid"][:] = True
    with pytest.raises(CubeError, match="non-finite values where 's2_valid' is True"):
        validate_cube(bad)


def test_no_crs(cube):
    bad = cube.drop_vars("spatial_ref")
    for v in bad.data_vars.values():
        v.attrs.pop("grid_mapping", None)
        v.encoding.pop("grid_mapping", None)
    with pytest.raises(CubeError, match="no CRS"):
        validate_cube(bad)


def test_geographic_crs_rejected(cube):
    bad = cube.rio.write_crs("EPSG:4326")
    with pytest.raises(CubeError, match="not projected"):
        validate_cube(bad)


def test_non_monotonic_time(cube):
    t = cube["time"].values.copy()
    t[[2, 3]] = t[[3, 2]]
    with pytest.raises(CubeError, match="time is not increasing"):
        validate_cube(cube.assign_coords(time=t))


def test_duplicate_dates(cube):
    t = cube["time"].values.copy()
    t[3] = t[2] + np.timedelta64(3, "h")
    with pytest.raises(CubeError, match="duplicate dates"):
        validate_cube(cube.assign_coords(time=t))


def test_empty_time_axis(cube):
    with pytest.raises(CubeError, match="empty time axis"):
        validate_cube(cube.isel(time=slice(0, 0)))


def test_all_invalid_date(cube):
    bad = cube.copy(deep=True)
    bad["s2_valid"][4] = False
    bad["s2"][4] = np.nan
    with pytest.raises(CubeError, match=r"1 date\(s\) have no valid S2 pixel"):
        validate_cube(bad)


def test_mismatched_shapes_in_make_cube(cube):
    s2 = cube["s2"].values
    with pytest.raises(CubeError, match="s2_valid has shape"):
        make_cube(
            s2,
            np.ones((s2.shape[0], 3, 3), bool),
            time=cube.time.values,
            y=cube.y.values,
            x=cube.x.values,
            crs="EPSG:32631",
            bands=S2_BANDS,
        )


def test_mismatched_mask_dims(cube):
    bad = cube.assign(s2_valid=cube["s2_valid"].transpose("y", "x", "time"))
    with pytest.raises(CubeError, match="'s2_valid' has dims"):
        validate_cube(bad)


def test_wrong_data_dims(cube):
    bad = cube.assign(s2=cube["s2"].transpose("band", "time", "y", "x"))
    with pytest.raises(CubeError, match="expected \\('time', 'band', 'y', 'x'\\)"):
        validate_cube(bad)


def test_irregular_grid(cube):
    x = cube.x.values.copy()
    x[-1] += 3
    with pytest.raises(CubeError, match="not regularly spaced"):
        validate_cube(cube.assign_coords(x=x))


def test_resolution_requirement(cube):
    with pytest.raises(CubeError, match="resolution is 10 m, the model needs 20 m"):
        validate_cube(cube, resolution=20)


def test_s1_without_time(cube):
    with pytest.raises(CubeError, match="s1_time"):
        validate_cube(cube.drop_vars("s1_time"))


def test_s1_out_of_range_is_named(cube):
    bad = cube.assign(s1=cube["s1"] * 35 - 30)  # dB instead of normalised
    with pytest.raises(CubeError, match="'s1' values span"):
        validate_cube(bad)


def test_lazy_cube_validates(cube):
    validate_cube(cube.chunk({"time": 3}))


def test_select_bands_orders_and_subsets(cube):
    out = select_bands(cube, {"s2": ("B04", "B03", "B02")})
    assert list(out["band"].values) == ["B04", "B03", "B02"]
    np.testing.assert_array_equal(out["s2"].values[:, 0], cube["s2"].sel(band="B04").values)


def test_tiny_cube_is_seeded():
    a, b = tiny_cube(seed=3), tiny_cube(seed=3)
    np.testing.assert_array_equal(a["s2"].values, b["s2"].values)
