"""Readers of the real S2 series without the full band set: nrt cubes and 20 m WorldCereal patches.

Checked against the files read independently with xarray (values, grid, mask).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from pyproj import CRS

from latentcube.cube.readers import open_cube, read_worldcereal_labels
from latentcube.cube.schema import cube_crs

from conftest import shared_path

NRT = "nrt_romania_s2_l2a"
PATCHES = "worldcereal_s1_s2_20m_patches"
CLEAR = [2, 4, 5, 6, 7]  # SCL classes scl_valid keeps


def test_nrt_romania_merges_10m_and_20m_bands_on_the_10m_grid():
    cube = open_cube(shared_path(NRT))
    assert cube.attrs["reader"] == "read_nrt"
    assert [str(b) for b in cube["band"].values] == ["B02", "B03", "B04", "B08", "B8A", "B11"]
    crs = CRS.from_user_input(cube_crs(cube))
    assert crs.equals(CRS.from_epsg(3035), ignore_axis_order=True)
    assert float(cube["x"][1] - cube["x"][0]) == 10.0
    d10 = xr.open_dataset(shared_path(NRT, "sentinel2_cube_subset_romania_10m.nc"))
    d20 = xr.open_dataset(shared_path(NRT, "sentinel2_cube_subset_romania_20m.nc"))
    np.testing.assert_array_equal(cube["x"].values, d10["x"].values)
    t = np.flatnonzero(np.isin(d10["time"].values, cube["time"].values))
    assert t.size == cube.sizes["time"] and t.size < d10.sizes["time"]  # cloudy dates dropped
    k = t[len(t) // 2]
    i = int(np.flatnonzero(cube["time"].values == d10["time"].values[k])[0])
    ok = np.isin(d10["SCL"].values[k], CLEAR) & np.isin(
        np.repeat(np.repeat(d20["SCL"].values[k], 2, 0), 2, 1), CLEAR
    )
    np.testing.assert_array_equal(cube["s2_valid"].values[i], ok)
    got = cube["s2"].sel(band="B04").values[i]
    np.testing.assert_allclose(got[ok], d10["B4"].values[k][ok] / 1e4, rtol=1e-6)
    b11 = np.repeat(np.repeat(d20["B11"].values[k], 2, 0), 2, 1) / 1e4
    np.testing.assert_allclose(cube["s2"].sel(band="B11").values[i][ok], b11[ok], rtol=1e-6)


def test_nrt_single_20m_file():
    cube = open_cube(shared_path(NRT, "sentinel2_subset.nc"))
    assert [str(b) for b in cube["band"].values] == ["B03", "B04", "B8A", "B11"]
    assert cube.sizes["y"] == cube.sizes["x"] == 20


def test_worldcereal_20m_patch_has_its_six_bands_and_the_label_grid():
    folder = shared_path(PATCHES, "000028085BF08E7E")
    cube = open_cube(folder, with_s1=False)
    assert [str(b) for b in cube["band"].values] == ["B05", "B06", "B07", "B8A", "B11", "B12"]
    assert cube.rio.crs.to_epsg() == 32631
    labels = read_worldcereal_labels(folder)
    np.testing.assert_array_equal(labels["x"].values, cube["x"].values)
    np.testing.assert_array_equal(labels["y"].values, cube["y"].values)
    assert np.unique(cube["time"].values.astype("datetime64[D]")).size == cube.sizes["time"]
    tza = open_cube(shared_path(PATCHES, "2021_TZA_COPERNICUS-GEOGLAM_POLY_1101950"))
    assert tza.rio.crs.to_epsg() == 32737 and "s1" in tza
