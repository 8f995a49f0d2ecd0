"""Readers against the real sample files in ../shared/data, and GeoTIFF/Zarr round trips."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

from latentcube import S2_BANDS, CubeError, validate_cube
from latentcube.cube.readers import (
    demo_cube_path,
    load_demo_cube,
    open_cube,
    read_geotiff_stack,
    read_greenearthnet,
    read_labels,
    read_openeo_mol,
    read_worldcereal_labels,
    read_worldcereal_patch,
)
from latentcube.io import write_zarr

from conftest import shared_path, tiny_cube

FLANDERS = "worldcereal_s1_s2_training_patches_flanders"


@pytest.fixture(scope="module")
def patch1():
    return read_worldcereal_patch(shared_path(FLANDERS, "00002806639B424A"))


def test_worldcereal_patch_model_and_grid(patch1):
    c = patch1
    validate_cube(c, {"s2": S2_BANDS, "s1": ("VV", "VH")}, resolution=10)
    assert c.rio.crs.to_epsg() == 32631
    assert (c.sizes["y"], c.sizes["x"]) == (64, 64)
    assert c.rio.bounds() == (501360.0, 5629040.0, 502000.0, 5629680.0)
    assert 50 <= c.sizes["time"] <= 118
    assert "Copernicus Sentinel" in c.attrs["attribution"]


def test_worldcereal_20m_band_covers_2x2_pixels(patch1):
    f = next(shared_path(FLANDERS, "00002806639B424A").glob("S2_L2A_20m_*.nc"))
    with xr.open_dataset(
        f,
        mask_and_scale={
            "SCL": False,
            "sunAzimuthAngles": False,
            "sunZenithAngles": False,
            "viewAzimuthMean": False,
            "viewZenithMean": False,
        },
    ) as d:
        block = patch1["s2_valid"].values[:, 10:12, 14:16].all(axis=(1, 2))
        ti = int(np.argmax(block))
        assert block[ti]
        t = patch1["time"].values[ti]
        src = d["B11"].sel(timestamp=t).values[5, 7]
    ours = patch1["s2"].sel(band="B11").isel(time=ti).values[10:12, 14:16]
    np.testing.assert_allclose(ours, np.full((2, 2), src), rtol=1e-6)


def test_worldcereal_s1_matched_within_gap(patch1):
    gap = (patch1["time"].values - patch1["s1_time"].values) / np.timedelta64(1, "D")
    matched = ~np.isnat(patch1["s1_time"].values)
    assert matched.mean() > 0.9
    assert np.abs(gap[matched]).max() <= 6
    assert (patch1["s1_valid"].values[~matched] == 0).all()
    s1 = patch1["s1"].values[matched]
    assert np.nanmin(s1) >= 0 and np.nanmax(s1) <= 1
    # median VV about -8.6 dB in the source (README); smoothed and normalised here
    vv_db = np.nanmedian(s1[:, 0]) * 35 - 30
    assert -12 < vv_db < -6


def test_worldcereal_clouds_masked(patch1):
    frac = patch1["s2_valid"].mean(("y", "x")).values
    assert frac.min() >= 0.05 and frac.mean() < 1.0


def test_worldcereal_second_patch_and_labels():
    folder = shared_path(FLANDERS, "0000280849BAC91C")
    c = read_worldcereal_patch(folder, with_s1=False, min_valid_fraction=0.5)
    assert "s1" not in c and c.sizes["time"] >= 20
    assert (c["s2_valid"].mean(("y", "x")).values >= 0.5).all()
    labels = read_worldcereal_labels(folder)
    assert labels["CT"].shape == (64, 64) and (labels["CT"].values > 0).any()
    np.testing.assert_array_equal(labels["x"].values, c["x"].values)


def write_labels(path, values, x, y, crs="EPSG:32631", nodata=None, dtype="int16"):
    """A single-band GeoTIFF of ``values`` on pixel centres ``x``, ``y`` (written by hand)."""
    res_x, res_y = x[1] - x[0], y[0] - y[1]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=len(x),
        height=len(y),
        count=np.shape(values)[0] if np.ndim(values) == 3 else 1,
        dtype=dtype,
        crs=crs,
        nodata=nodata,
        transform=from_origin(x[0] - res_x / 2, y[0] + res_y / 2, res_x, res_y),
    ) as dst:
        if np.ndim(values) == 3:
            dst.write(np.asarray(values, dtype))
        else:
            dst.write(np.asarray(values, dtype), 1)
    return path


def test_read_labels_on_the_cube_grid_resampled_and_bad_input(tmp_path):
    cube = tiny_cube(ny=24, nx=20)
    x, y = cube["x"].values, cube["y"].values
    rng = np.random.default_rng(0)
    codes = rng.choice([-1, 0, 1110, 1200, 9120], size=(24, 20))  # -1: the raster's nodata
    got = read_labels(write_labels(tmp_path / "same.tif", codes, x, y, nodata=-1), cube)
    assert got.dims == ("y", "x") and got.dtype == np.int32 and not got.attrs["resampled"]
    np.testing.assert_array_equal(got.values, np.where(codes == -1, 0, codes))
    np.testing.assert_array_equal(got["x"].values, x)
    # 20 m labels aligned with the 10 m grid: every label covers 2 x 2 cube pixels
    coarse = rng.choice([0, 1, 2, 3], size=(12, 10))
    got = read_labels(write_labels(tmp_path / "c.tif", coarse, x[::2] + 5, y[::2] - 5), cube)
    assert got.attrs["resampled"]
    np.testing.assert_array_equal(got.values, np.repeat(np.repeat(coarse, 2, 0), 2, 1))
    # a larger raster, shifted by 3 pixels: the overlapping part, 0 outside
    big = rng.choice([5, 6], size=(30, 30))
    got = read_labels(
        write_labels(
            tmp_path / "b.tif", big, x[0] + 30 + 10 * np.arange(30), y[0] - 10 * np.arange(30)
        ),
        cube,
    )
    np.testing.assert_array_equal(got.values[:, :3], 0)
    np.testing.assert_array_equal(got.values[:, 3:], big[:24, :17])
    # NetCDF with a named variable
    da = xr.DataArray(
        np.where(codes < 0, 0, codes).astype("int32"), coords={"y": y, "x": x}, dims=("y", "x")
    ).rio.write_crs("EPSG:32631")
    da.to_dataset(name="CT").to_netcdf(tmp_path / "l.nc")
    got = read_labels(tmp_path / "l.nc", cube, variable="CT")
    np.testing.assert_array_equal(got.values, da.values)
    with pytest.raises(CubeError, match="no variable 'LC'"):
        read_labels(tmp_path / "l.nc", cube, variable="LC")
    # bad input, each named
    two = write_labels(tmp_path / "two.tif", np.stack([codes, codes]), x, y)
    with pytest.raises(CubeError, match="2 bands"):
        read_labels(two, cube)
    frac = write_labels(tmp_path / "f.tif", codes + 0.5, x, y, dtype="float32")
    with pytest.raises(CubeError, match="integer class codes"):
        read_labels(frac, cube)
    far = write_labels(tmp_path / "far.tif", codes, x + 1e5, y)
    with pytest.raises(CubeError, match="no labelled pixel"):
        read_labels(far, cube)
    nocrs = write_labels(tmp_path / "n.tif", codes, x, y, crs=None)
    with pytest.raises(CubeError, match="no CRS"):
        read_labels(nocrs, cube)
    with pytest.raises(FileNotFoundError, match="no label raster"):
        read_labels(tmp_path / "none.tif", cube)


def test_read_labels_from_another_crs_by_nearest_neighbour(tmp_path):
    """A WorldCover-like tile in EPSG:4326 onto a UTM cube: each pixel takes the class at
    its centre, except within one label pixel of the class boundary."""
    from pyproj import Transformer

    cube = tiny_cube(ny=24, nx=20)
    xx, yy = np.meshgrid(cube["x"].values, cube["y"].values)
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(xx, yy)
    res = 2e-5  # degrees: about 1.4 m east-west, 2.2 m north-south here
    lons = np.arange(lon.min() - 0.001, lon.max() + 0.001, res)
    lats = np.arange(lat.max() + 0.001, lat.min() - 0.001, -res)
    mid = float(np.median(lon))
    tile = np.where(lons[None, :] < mid, 10, 40).repeat(len(lats), 0)
    tif = write_labels(tmp_path / "wc.tif", tile, lons, lats, crs="EPSG:4326", dtype="uint8")
    got = read_labels(tif, cube)
    assert got.attrs["resampled"] and set(np.unique(got.values)) == {10, 40}
    want = np.where(lon < mid, 10, 40)
    near = np.abs(lon - mid) < 2 * res
    np.testing.assert_array_equal(got.values[~near], want[~near])


def test_read_labels_reads_only_the_window_of_the_cube(tmp_path):
    """A raster far larger than the cube (a WorldCover tile) is clipped before it is read:
    fractional values 100 pixels away from the cube are never seen."""
    cube = tiny_cube(ny=24, nx=20)
    x, y = cube["x"].values, cube["y"].values
    xs, ys = x[0] - 1000 + 10 * np.arange(300), y[0] + 1000 - 10 * np.arange(300)
    tile = np.full((300, 300), 0.5, np.float32)  # not a class code
    tile[90:134, 90:130] = 30  # the cube's 24 x 20 pixels start at row and column 100
    tif = write_labels(tmp_path / "tile.tif", tile, xs, ys, dtype="float32")
    got = read_labels(tif, cube)
    np.testing.assert_array_equal(got.values, 30)
    tile[100, 100] = 0.5  # inside the cube: refused
    with pytest.raises(CubeError, match="integer class codes"):
        read_labels(write_labels(tmp_path / "t2.tif", tile, xs, ys, dtype="float32"), cube)


def test_read_labels_of_a_real_patch_equal_its_worldcereal_labels(tmp_path):
    """The WorldCereal crop codes written as a GeoTIFF come back unchanged on the patch grid."""
    folder = shared_path(FLANDERS, "0000280849BAC91C")
    ct = read_worldcereal_labels(folder)["CT"]
    ct.rio.write_nodata(0).rio.to_raster(tmp_path / "ct.tif")
    got = read_labels(tmp_path / "ct.tif", read_worldcereal_patch(folder, with_s1=False))
    np.testing.assert_array_equal(got.values, ct.values)


def test_openeo_mol():
    c = read_openeo_mol(shared_path("openeo_gfmap_s1_s2_mol_april2023"), min_valid_fraction=0.5)
    assert list(c["band"].values) == ["B01", "B04", "B08", "B11"]
    dates = [str(d)[:10] for d in c["time"].values]
    assert dates == ["2023-04-05", "2023-04-15"]  # the two clear dates of April 2023
    assert c.rio.crs.to_epsg() == 32631 and c.sizes["y"] == 66
    with pytest.raises(CubeError, match="lacks band"):
        validate_cube(c, {"s2": S2_BANDS})


@pytest.mark.parametrize(
    ("name", "epsg"),
    [
        ("JAS2021_replicated_minicube_0_29SND_39.29_-8.56.nc", 32629),
        ("MJJ2021_replicated_minicube_225_34TET_47.37_22.05.nc", 32634),
    ],
)
def test_greenearthnet_reprojected_to_utm(name, epsg):
    path = shared_path("greenearthnet_replicated_minicubes", name)
    c = read_greenearthnet(path)
    assert c.rio.crs.to_epsg() == epsg
    assert abs(float(c["x"][1] - c["x"][0])) == 20.0
    assert 120 <= c.sizes["y"] <= 140 and c.sizes["time"] <= 30
    lc = c["landcover"].values
    with xr.open_dataset(path) as src:
        src_classes = set(np.unique(src["esawc_lc"].values[np.isfinite(src["esawc_lc"].values)]))
    # nearest-neighbour resampling keeps the source's class values (no mixing)
    assert set(np.unique(lc[lc > 0]).tolist()) <= src_classes
    assert (lc > 0).mean() > 0.9


def test_geotiff_stack_round_trip(tmp_path):
    cube = tiny_cube(n_time=3, with_s1=False, cloud_fraction=0.0)
    paths = []
    for i in range(3):
        p = tmp_path / f"d{i}.tif"
        dn = np.round(cube["s2"].isel(time=i).values * 10000).astype(np.uint16)
        with rasterio.open(
            p,
            "w",
            driver="GTiff",
            width=20,
            height=24,
            count=10,
            dtype="uint16",
            crs="EPSG:32631",
            transform=from_origin(500000, 5600010, 10, 10),
            nodata=0,
        ) as dst:
            dst.write(dn)
        paths.append(p)
    c = read_geotiff_stack(paths, times=cube["time"].values, bands=S2_BANDS, scale=1e-4)
    np.testing.assert_allclose(c["s2"].values, cube["s2"].values, atol=6e-5)
    np.testing.assert_allclose(c["x"].values, cube["x"].values)
    assert c.rio.crs.to_epsg() == 32631
    with pytest.raises(CubeError, match="bands, expected 4"):
        read_geotiff_stack(paths, times=cube["time"].values, bands=S2_BANDS[:4])


def test_open_cube_dispatch(tmp_path):
    cube = tiny_cube()
    write_zarr(cube, tmp_path / "c.zarr")
    back = open_cube(tmp_path / "c.zarr").load()
    np.testing.assert_array_equal(back["s2"].values, cube["s2"].values)
    assert back.rio.crs == cube.rio.crs
    with pytest.raises(FileNotFoundError, match="no cube at"):
        open_cube(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CubeError, match="not a cube latentcube can read"):
        open_cube(tmp_path / "empty")


def test_open_cube_rejects_a_bad_store(tmp_path):
    cube = tiny_cube()
    bad = cube.assign_coords(band=["X", *S2_BANDS[1:]])
    write_zarr(bad.assign(s2=bad["s2"] * 100), tmp_path / "bad.zarr")
    with pytest.raises(CubeError, match="outside"):
        open_cube(tmp_path / "bad.zarr")


def test_demo_cube_is_real_and_matches_source():
    path = demo_cube_path()
    assert path.stat().st_size < 3 * 2**20
    demo = load_demo_cube()
    validate_cube(demo, {"s2": S2_BANDS, "s1": ("VV", "VH")}, resolution=10)
    src = read_worldcereal_patch(shared_path(FLANDERS, "00002806639B424A"))
    src = src.sel(time=demo["time"].values)
    np.testing.assert_allclose(demo["s2"].values, src["s2"].values, atol=1.1e-4)
    np.testing.assert_allclose(demo["s1"].values, src["s1"].values, atol=2e-5)
    np.testing.assert_array_equal(demo["s2_valid"].values, src["s2_valid"].values)
    assert demo.sizes["time"] >= 40


def test_worldcereal_bounds_equal_file_attribute(patch1):
    f = next(shared_path(FLANDERS, "00002806639B424A").glob("S2_L2A_10m_*.nc"))
    with xr.open_dataset(f) as d:
        b = d.attrs["bounds"]
    want = [float(v) for v in str(b).strip("[]() ").replace(",", " ").split()]
    assert sorted(want) == sorted(patch1.rio.bounds())
    assert patch1.attrs["file_bounds"] == str(b)


def test_mol_s1_decoding_by_hand():
    from latentcube.cube.formats import _mol_db

    v = np.array([0, 1, 2, 1000, 65534], np.uint16)
    out = _mol_db(v)
    assert np.isnan(out[:2]).all()
    np.testing.assert_allclose(out[2:], [20 * np.log10(2) - 83, 60 - 83, 20 * np.log10(65534) - 83])


def test_open_cube_dispatches_real_inputs():
    c = open_cube(shared_path(FLANDERS, "0000280849BAC91C"), with_s1=False)
    assert c.attrs["reader"] == "read_worldcereal_patch"
    name = "JAS2021_replicated_minicube_0_29SND_39.29_-8.56.nc"
    g = open_cube(shared_path("greenearthnet_replicated_minicubes", name), resolution=10.0)
    assert g.attrs["reader"] == "read_greenearthnet" and float(g["x"][1] - g["x"][0]) == 10.0
    m = open_cube(shared_path("openeo_gfmap_s1_s2_mol_april2023"))
    assert m.attrs["reader"] == "read_openeo_mol" and "s1" in m


def test_open_cube_geotiff_folder(tmp_path):
    cube = tiny_cube(n_time=2, with_s1=False, cloud_fraction=0.0)
    for i in range(2):
        with rasterio.open(
            tmp_path / f"d{i}.tif",
            "w",
            driver="GTiff",
            width=20,
            height=24,
            count=10,
            dtype="float32",
            crs="EPSG:32631",
            transform=from_origin(500000, 5600010, 10, 10),
        ) as dst:
            dst.write(cube["s2"].isel(time=i).values)
    with pytest.raises(CubeError, match="pass times="):
        open_cube(tmp_path)
    c = open_cube(tmp_path, times=cube["time"].values, bands=S2_BANDS)
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)


def test_demo_cube_provenance():
    demo = load_demo_cube()
    assert demo["s2"].dtype == np.float32 and demo["s1"].dtype == np.float32
    assert "Contains modified Copernicus Sentinel data 2017–2018" in demo.attrs["attribution"]
    assert "5db1e24d918f99e5b2471b826fbcb8fd2afea252" in demo.attrs["upstream"]
    assert demo.rio.crs.to_epsg() == 32631


def test_geotiff_stack_merges_same_day(tmp_path):
    data = np.full((2, 1, 4, 4), 0.2, np.float32)
    data[1] = 0.4
    data[0, 0, :2] = np.nan  # first acquisition misses the top half
    paths = []
    for i in range(2):
        p = tmp_path / f"t{i}.tif"
        with rasterio.open(
            p,
            "w",
            driver="GTiff",
            width=4,
            height=4,
            count=1,
            dtype="float32",
            crs="EPSG:32631",
            transform=from_origin(500000, 5600040, 10, 10),
        ) as dst:
            dst.write(data[i])
        paths.append(p)
    times = np.array(["2021-06-01T10:30", "2021-06-01T10:31"], "datetime64[ns]")
    c = read_geotiff_stack(paths, times=times, bands=["B04"])
    assert c.sizes["time"] == 1 and bool(c["s2_valid"].all())
    np.testing.assert_allclose(c["s2"].values[0, 0, :2], 0.4)
    np.testing.assert_allclose(c["s2"].values[0, 0, 2:], 0.2)
