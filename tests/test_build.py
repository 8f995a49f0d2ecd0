"""build_cube against a static STAC catalog of local COGs holding real Sentinel pixels.

Expected values are computed here from the source NetCDF files with numpy only
(see tests/stac_catalog.py for the few deliberate edits of the catalog).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from latentcube.cube.build import SCLMask, build_cube
from latentcube.errors import StacError
from latentcube.grid import UTMZoneWarning
from latentcube.io import open_zarr
from latentcube.sensors import S2_BANDS
from stac_catalog import (
    BASELINE4_DATE,
    CLOUDY_DATE,
    FLANDERS,
    PATCH,
    S1_DATES,
    S2_10M,
    SPLIT_DATE,
    centre_lonlat,
    make_catalog,
    read_source,
    up2,
)
from stac_server import StacServer

from conftest import shared_path

pytestmark = pytest.mark.shared

START, END = "2018-09-15", "2018-10-20"
INVALID = (0, 1, 3, 8, 9, 10, 11)


@pytest.fixture(scope="module")
def src():
    return read_source(shared_path(FLANDERS, PATCH))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, src):
    return make_catalog(tmp_path_factory.mktemp("stac"), src)


def _place():
    lon, lat = centre_lonlat()
    return {"lat": lat, "lon": lon, "size_m": 640}


@pytest.fixture(scope="module")
def cube(catalog):
    return build_cube(**_place(), start=START, end=END, catalog=str(catalog), progress=False)


# ----------------------------------------------------------------- expectations by hand


def _refl(src, date):
    """(band, 64, 64) reflectance = DN / 10000, 20 m bands repeated 2 x 2."""
    dn = src.s2_dn[date]
    return (
        np.stack([dn[b] if b in S2_10M else up2(dn[b]) for b in S2_BANDS]).astype(np.float64) / 1e4
    )


def _dilate1(m):
    """3 x 3 binary dilation with plain numpy shifts."""
    p = np.pad(m, 1)
    out = np.zeros_like(m)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy : dy + m.shape[0], dx : dx + m.shape[1]]
    return out


def _clear(scl20):
    scl = up2(scl20)
    return ~np.isin(scl, INVALID) & ~_dilate1(np.isin(scl, (3, 8, 9, 10)))


def _s1_expected(src, dates):
    """Normalised dB of the mean linear power over the given acquisitions."""
    out = []
    for pol in ("VV", "VH"):
        lin = np.mean([np.power(10.0, up2(src.s1_db[d][pol]) / 10.0) for d in dates], axis=0)
        db = np.clip(10.0 * np.log10(lin), -30.0, 5.0)
        out.append((db + 30.0) / 35.0)
    return np.stack(out)


def _day(cube, date):
    days = cube["time"].values.astype("datetime64[D]")
    return int(np.flatnonzero(days == np.datetime64(date))[0])


# ----------------------------------------------------------------------------- tests


def test_grid_dates_and_provenance(cube, catalog):
    assert cube.rio.crs.to_epsg() == 32631
    assert cube.rio.bounds() == (574680.0, 5621800.0, 575320.0, 5622440.0)
    days = [str(d) for d in cube["time"].values.astype("datetime64[D]")]
    assert days == ["2018-09-18", "2018-10-13", "2018-10-18"]  # 09-23 is all cloud
    assert CLOUDY_DATE in cube.attrs["dropped_dates"]
    assert "S2_20180918-w" in cube.attrs["s2_items"]
    assert "S2_20180918-e" in cube.attrs["s2_items"]
    assert cube.attrs["catalog"] == str(catalog)
    assert "latentcube_version" in cube.attrs and "odc_stac_version" in cube.attrs
    assert cube["s2"].dtype == np.float32


def test_s2_reflectance_offset_and_mask(cube, src):
    for date in ("2018-10-18", BASELINE4_DATE):  # 10-13 is stored with the +1000 offset
        i = _day(cube, date)
        exp_valid = _clear(src.scl[date])
        np.testing.assert_array_equal(cube["s2_valid"].values[i], exp_valid)
        got = cube["s2"].values[i]
        exp = _refl(src, date)
        np.testing.assert_allclose(got[:, exp_valid], exp[:, exp_valid], atol=1e-6)
        assert np.isnan(got[:, ~exp_valid]).all()
    # the shadow date really has masked and dilated pixels
    assert 0 < (~cube["s2_valid"].values[_day(cube, "2018-10-18")]).sum() < 64 * 64 // 4


def test_same_day_tiles_merged_clear_pixel_wins(cube, src):
    i = _day(cube, SPLIT_DATE)
    valid = cube["s2_valid"].values[i]
    # west tile: its own columns 0-23 clear, column 23 lost to the dilated cloud of its
    # overlap; overlap 24-39 comes from the (clear) east tile; 40-63 east only.
    exp = _clear(src.scl[SPLIT_DATE])
    exp[:, 23] = False
    np.testing.assert_array_equal(valid, exp)
    assert valid[:, 24:40].all()
    np.testing.assert_allclose(
        cube["s2"].values[i][:, valid], _refl(src, SPLIT_DATE)[:, valid], atol=1e-6
    )


def test_s1_rolling_mean_db_and_matching(cube, src):
    s1_time = cube["s1_time"].values
    # 09-18 -> 09-19 (mean with its neighbours 09-13 and 09-25); 10-13 -> 10-07 (5.7 days):
    # 10-13 and 10-19 are missing, so the next neighbour of 10-07 is 10-25
    for date, match, window in [
        (SPLIT_DATE, "2018-09-19", ["2018-09-13", "2018-09-19", "2018-09-25"]),
        (BASELINE4_DATE, "2018-10-07", ["2018-10-01", "2018-10-07", "2018-10-25"]),
    ]:
        i = _day(cube, date)
        assert s1_time[i] == src.s1_time[match]
        np.testing.assert_allclose(cube["s1"].values[i], _s1_expected(src, window), atol=2e-6)
    # 10-18: nearest S1 is 7.3 days away -> masked, never filled
    i = _day(cube, "2018-10-18")
    assert np.isnat(s1_time[i])
    assert not cube["s1_valid"].values[i].any()
    assert np.isnan(cube["s1"].values[i]).all()
    assert list(cube["s1_orbit"].values) == ["ascending", "ascending", ""]
    assert set(S1_DATES) >= {"2018-09-19", "2018-10-07"}


def test_threshold_and_custom_mask(catalog, src):
    c = build_cube(
        **_place(), start=START, end=END, catalog=str(catalog), progress=False,
        sensors=("s2",), min_valid_fraction=0.98, mask_dilation=0,
    )  # fmt: skip
    assert "s1" not in c
    # clear fractions without dilation: 09-18 1.0 (merged), 10-13 1.0, 10-18 0.981
    frac = {d: (~np.isin(up2(src.scl[d]), INVALID)).mean() for d in ("2018-10-13", "2018-10-18")}
    assert frac["2018-10-18"] < 0.985 < frac["2018-10-13"]
    days = [str(d) for d in c["time"].values.astype("datetime64[D]")]
    assert days == ["2018-09-18", "2018-10-13", "2018-10-18"]
    c = build_cube(
        **_place(), start=START, end=END, catalog=str(catalog), progress=False,
        sensors=("s2",), min_valid_fraction=0.985, mask_dilation=0,
    )  # fmt: skip
    days = [str(d) for d in c["time"].values.astype("datetime64[D]")]
    assert days == ["2018-09-18", "2018-10-13"]
    assert "2018-10-18" in c.attrs["dropped_dates"]

    def bright(refl, scl, bands):  # a "better masker": reject bright blue
        return np.nan_to_num(refl[:, list(bands).index("B02")], nan=1.0) < 0.06

    c = build_cube(
        **_place(), start="2018-10-18", end="2018-10-18", catalog=str(catalog),
        progress=False, sensors=("s2",), mask=bright,
    )  # fmt: skip
    exp = _refl(src, "2018-10-18")[0] < 0.06
    np.testing.assert_array_equal(c["s2_valid"].values[0], exp)
    assert "bright" in c.attrs["mask_function"]


class FlakyMask(SCLMask):
    """The default mask that raises after ``budget`` calls (a build killed half way)."""

    calls = 0
    budget = 10**9

    def __call__(self, refl, scl, bands):
        type(self).calls += 1
        if type(self).calls > type(self).budget:
            raise KeyboardInterrupt("killed")
        return super().__call__(refl, scl, bands)


def test_store_resumes_by_time_chunk_and_is_idempotent(tmp_path, catalog, cube):
    out = tmp_path / "cube.zarr"
    kw = dict(**_place(), start=START, end=END, catalog=str(catalog), progress=False,
              time_chunk=1, tile=64)  # fmt: skip
    FlakyMask.calls, FlakyMask.budget = 0, 2  # 4 dates x 1 tile = 4 units
    with pytest.raises(KeyboardInterrupt):
        build_cube(**kw, out=out, mask=FlakyMask())
    assert not out.exists()  # nothing half-written at the target
    partial = tmp_path / ".cube.zarr.partial"
    assert len(list((partial / "done").iterdir())) == 2
    FlakyMask.calls, FlakyMask.budget = 0, 10**9
    c = build_cube(**kw, out=out, mask=FlakyMask())
    assert FlakyMask.calls == 4 - 2  # the two finished units were not read again
    assert not partial.exists()
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)
    disk = open_zarr(out)
    assert disk.rio.crs.to_epsg() == 32631
    # the build's chunks (store_chunks: gcd(time_chunk, 16) dates), also after the
    # all-cloud date was dropped after reading (FlakyMask is not screened)
    assert disk["s2"].encoding["chunks"] == (1, 10, 64, 64)
    assert disk.attrs["proj:code"] == "EPSG:32631"
    assert "grid_mapping" in disk["s2"].attrs or "grid_mapping" in disk["s2"].encoding
    mtime = (out / "zarr.json").stat().st_mtime_ns
    FlakyMask.calls = 0
    again = build_cube(**kw, out=out, mask=FlakyMask())  # same request: nothing to do
    assert FlakyMask.calls == 0
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    assert again.attrs["latentcube_request"] == c.attrs["latentcube_request"]
    with pytest.raises(FileExistsError, match="overwrite"):
        build_cube(**{**kw, "min_valid_fraction": 0.5}, out=out)


def test_last_unit_written_from_two_threads_gives_the_same_cube(tmp_path, catalog, cube):
    """The last unit's S2 chunk rows are written half on each thread (here 4 rows of
    16 px chunks in the only unit), its S1 on the calling one: every chunk is there."""
    out = tmp_path / "cube.zarr"
    c = build_cube(
        **_place(), start=START, end=END, catalog=str(catalog), out=out, progress=False,
        chunks={"time": 16, "y": 16, "x": 16},
    )  # fmt: skip
    assert open_zarr(out)["s2"].encoding["chunks"][2:] == (16, 16)
    for name in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(c[name].values, cube[name].values)


def test_failed_check_of_the_last_unit_leaves_no_s1_load_running(tmp_path, catalog, monkeypatch):
    """The last unit is checked on the calling thread: when that fails, the unit's S1
    load on the helper thread has ended before the error reaches the caller."""
    import time

    from latentcube.cube import build

    load_s1, ended = build._load_s1, []

    def slow_load_s1(*args, **kwargs):
        time.sleep(0.5)
        try:
            return load_s1(*args, **kwargs)
        finally:
            ended.append(True)

    def failing_check(sensor, data, valid):
        raise StacError(f"internal error: {sensor} test failure")

    monkeypatch.setattr(build, "_load_s1", slow_load_s1)
    monkeypatch.setattr(build, "_check_unit", failing_check)
    with pytest.raises(StacError, match="s2 test failure"):
        build_cube(
            **_place(), start=START, end=END, catalog=str(catalog), out=tmp_path / "c.zarr",
            progress=False, chunks={"time": 16, "y": 16, "x": 16},
        )  # fmt: skip
    assert ended == [True]


def test_staging_area_of_another_codec_starts_afresh(tmp_path, catalog, cube):
    """Units written by a version with another chunk codec are not mixed with new ones."""
    out = tmp_path / "cube.zarr"
    kw = dict(**_place(), start=START, end=END, catalog=str(catalog), progress=False,
              time_chunk=1, tile=64)  # fmt: skip
    FlakyMask.calls, FlakyMask.budget = 0, 2
    with pytest.raises(KeyboardInterrupt):
        build_cube(**kw, out=out, mask=FlakyMask())
    request = tmp_path / ".cube.zarr.partial" / "request.json"
    doc = json.loads(request.read_text())
    doc["codec"] = {"name": "zstd", "level": 1}  # as if an older version had started it
    request.write_text(json.dumps(doc))
    FlakyMask.calls, FlakyMask.budget = 0, 10**9
    c = build_cube(**kw, out=out, mask=FlakyMask())
    assert FlakyMask.calls == 4  # every unit read again
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)


def test_units_on_a_dask_cluster_give_the_same_cube(catalog, cube):
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        c = build_cube(
            **_place(), start=START, end=END, catalog=str(catalog), progress=False,
            tile=32, scheduler=cluster.scheduler_address,
        )  # fmt: skip
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)


# ------------------------------------------------------------------------ HTTP layer


def test_http_catalog_with_transient_503s(catalog, cube):
    # the first 3 requests (catalog JSON) and the first request of every COG get 503
    with StacServer(catalog.parent, fail_first=3, fail_per_file=1) as srv:
        c = build_cube(
            **_place(), start=START, end=END, catalog=f"{srv.url}/catalog.json",
            progress=False, backoff=0.01,
        )  # fmt: skip
        tifs = {p for p in srv.failed_paths if p.endswith(".tif")}
        assert len(tifs) >= 40 and srv.failed >= 3 + len(tifs)
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)


def test_load_retried_as_a_whole_when_http_retries_run_out(catalog, cube):
    # GDAL retries once (max_retries=1); this COG fails 3 times, so the load is
    # repeated as a whole, past GDAL's cache of the failed URL
    bad = "cogs/S2_20181018/B04.tif"
    with StacServer(catalog.parent, fail_file={bad: 3}) as srv:
        c = build_cube(
            **_place(), start=START, end=END, catalog=f"{srv.url}/catalog.json",
            progress=False, backoff=0.01, max_retries=1, sensors=("s2",),
        )  # fmt: skip
        assert srv.failed_paths.count(bad) == 3
        assert srv.file_requests[bad] > 3
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)


def test_planetary_computer_signing_and_resigning(tmp_path, src, cube, monkeypatch):
    import planetary_computer
    from planetary_computer.settings import Settings

    root = tmp_path / "blob"
    cat = make_catalog(root, src, href_base="http://teststore.blob.core.windows.net/data")
    with StacServer(root) as srv:
        srv.expire_first_token = True  # the first token is refused: the load must re-sign
        monkeypatch.setenv("PC_SDK_SAS_URL", f"{srv.url}/token")
        monkeypatch.setenv("GDAL_HTTP_PROXY", srv.url.removeprefix("http://"))
        Settings.get.cache_clear()
        planetary_computer.sas.TOKEN_CACHE.clear()
        try:
            c = build_cube(
                **_place(), start=START, end=END, catalog=str(cat), progress=False,
                time_chunk=2, backoff=0.01,
            )  # fmt: skip
        finally:
            Settings.get.cache_clear()
            planetary_computer.sas.TOKEN_CACHE.clear()
        assert srv.data_requests, "no COG was read through the blob URL"
        used = {sig for _, sig in srv.data_requests}
        assert used <= set(srv.tokens)  # every read carried an issued token
        assert srv.rejected >= 1  # the expired first token was refused ...
        assert len(used) >= 4  # ... and each of the 2 x 2 load calls signed afresh
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)


# ------------------------------------------------------------------------- bad input


def _no_store(tmp_path):
    assert list(tmp_path.iterdir()) == []


def test_no_items(tmp_path, catalog):
    with pytest.raises(StacError, match="no Sentinel-2 items"):
        build_cube(**_place(), start="2017-01-01", end="2017-01-31", catalog=str(catalog),
                   out=tmp_path / "c.zarr")  # fmt: skip
    _no_store(tmp_path)


def test_two_utm_zones_warns_and_names_zone(tmp_path, catalog):
    with warnings.catch_warnings(record=True) as rec, pytest.raises(StacError, match="no Sent"):
        warnings.simplefilter("always")
        build_cube(lat=50.75, lon=5.999, size_m=2000, start=START, end=END,
                   catalog=str(catalog), out=tmp_path / "c.zarr")  # fmt: skip
    msgs = [str(w.message) for w in rec if issubclass(w.category, UTMZoneWarning)]
    assert msgs and "EPSG:32631" in msgs[0] and "EPSG:32632" in msgs[0]
    _no_store(tmp_path)


def test_missing_asset(tmp_path, src):
    cat = make_catalog(tmp_path / "stac", src, drop_asset=("S2_20181013", "B11"))
    out = tmp_path / "out" / "c.zarr"
    with pytest.raises(StacError, match=r"S2_20181013.*B11"):
        build_cube(**_place(), start=START, end=END, catalog=str(cat), out=out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_all_cloudy_span(tmp_path, catalog):
    with pytest.raises(StacError, match="cloudy"):
        build_cube(**_place(), start=CLOUDY_DATE, end=CLOUDY_DATE, catalog=str(catalog),
                   out=tmp_path / "c.zarr", progress=False)  # fmt: skip
    _no_store(tmp_path)


def test_dates_in_wrong_order(tmp_path, catalog):
    with pytest.raises(StacError, match="after end"):
        build_cube(**_place(), start=END, end=START, catalog=str(catalog),
                   out=tmp_path / "c.zarr")  # fmt: skip
    _no_store(tmp_path)


def test_catalog_without_collection(tmp_path, src):
    cat = make_catalog(tmp_path / "stac", src, collections=("sentinel-2-l2a",))
    out = tmp_path / "out" / "c.zarr"
    with pytest.raises(StacError, match="no collection 'sentinel-1-rtc'"):
        build_cube(**_place(), start=START, end=END, catalog=str(cat), out=out)
    assert not out.parent.exists()
    with pytest.raises(StacError, match="Earth Search has no"):
        from latentcube.cube.stac import CATALOGS, search_items

        search_items(None, CATALOGS["earth-search"], "s1", bbox=[0, 0, 1, 1],
                     start=START, end=END)  # fmt: skip


def test_nbar_with_local_granule_metadata(catalog, src, cube):
    pytest.importorskip("sen2nbar")
    from sen2nbar.c_factor import c_factor

    c = build_cube(**_place(), start="2018-10-18", end="2018-10-18", catalog=str(catalog),
                   progress=False, sensors=("s2",), nbar=True)  # fmt: skip
    base = cube.sel(time=c["time"].values)
    sz, sa, vz, va = src.angles["2018-10-18"]
    ratio = c["s2"].values[0] / base["s2"].values[0]
    for k, band in enumerate(S2_BANDS):
        r = ratio[k][np.isfinite(ratio[k])]
        if band == "B8A":  # sen2nbar has no coefficients for B8A
            np.testing.assert_allclose(r, 1.0, atol=1e-6)
            continue
        exp = float(_c_scalar(c_factor, sz, vz, sa - va, band))
        assert 0.85 < exp < 1.15 and abs(exp - 1) > 1e-4
        np.testing.assert_allclose(r, exp, rtol=2e-5)
    assert c.attrs["latentcube_config"].count('"nbar":true') == 1


def _c_scalar(c_factor, sz, vz, phi, band):
    import xarray as xr

    def one(v):
        return xr.DataArray([v], dims="band", coords={"band": [band]})

    return c_factor(xr.DataArray(sz), one(vz), one(phi)).values[0]


_KILL_SCRIPT = """
import sys, time
sys.path[:0] = {paths!r}
from latentcube.cube.build import build_cube, SCLMask

class SlowMask(SCLMask):
    def __call__(self, refl, scl, bands):
        time.sleep(1.0)  # a wide window to kill in between two units
        return super().__call__(refl, scl, bands)

SlowMask.__qualname__ = "FlakyMask"  # the same request as the rerun below
build_cube(lat={lat!r}, lon={lon!r}, size_m=640, start={start!r}, end={end!r},
           catalog={catalog!r}, out={out!r}, progress=False, time_chunk=1, tile=64,
           mask=SlowMask())
"""


def test_sigkill_half_way_then_rerun_gives_the_same_cube(tmp_path, catalog, cube):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "cube.zarr"
    root = Path(__file__).resolve().parents[1]
    code = _KILL_SCRIPT.format(
        paths=[str(root / "src"), str(root / "tests")], **_place(), start=START, end=END,
        catalog=str(catalog), out=str(out),
    )  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code])
    done = tmp_path / ".cube.zarr.partial" / "done"

    def markers() -> int:  # complete markers only: a marker is written as NAME.tmp, then renamed
        return len([p for p in done.iterdir() if p.suffix != ".tmp"]) if done.exists() else 0

    t0 = time.time()
    while time.time() - t0 < 120 and markers() < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = markers()
    assert 2 <= n_done < 4 and not out.exists()
    FlakyMask.calls, FlakyMask.budget = 0, 10**9
    c = build_cube(**_place(), start=START, end=END, catalog=str(catalog), out=out,
                   progress=False, time_chunk=1, tile=64, mask=FlakyMask())  # fmt: skip
    assert FlakyMask.calls == 4 - n_done
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)


def test_bbox_area_covers_the_box_on_the_same_pixels(catalog, cube):
    from pyproj import Transformer

    tr = Transformer.from_crs(32631, 4326, always_xy=True)
    w, s, e, n = tr.transform_bounds(574700.0, 5621820.0, 575300.0, 5622420.0)
    c = build_cube(bbox=(w, s, e, n), start=START, end=END, catalog=str(catalog),
                   progress=False, sensors=("s2",))  # fmt: skip
    left, bottom, right, top = c.rio.bounds()
    assert left <= 574700 and bottom <= 5621820 and right >= 575300 and top >= 5622420
    assert (left - 574680) % 10 == 0 and (top - 5622440) % 10 == 0  # same pixel lattice
    inner = c.sel(x=cube.x[2:-2], y=cube.y[2:-2])
    ref = cube.sel(x=cube.x[2:-2], y=cube.y[2:-2])
    np.testing.assert_array_equal(inner["s2"].values, ref["s2"].values)


# ------------------------------------------------------------------- fast paths


def _s2_items(catalog):
    from latentcube.cube.stac import open_client, resolve_catalog, search_items

    cat = resolve_catalog(str(catalog))
    box = [-180.0, -90.0, 180.0, 90.0]
    return search_items(open_client(cat), cat, "s2", bbox=box, start=START, end=END), cat


def test_aligned_reads_equal_odc_stac_nearest(catalog):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from latentcube.cube.stac import (
        S1_ASSETS,
        S2_ASSETS,
        grid_aligned,
        load_items,
        open_client,
        read_aligned,
        resolve_assets,
        search_items,
    )
    from stac_catalog import LEFT, TOP

    items, cat = _s2_items(catalog)
    assets = resolve_assets(items, {b: S2_ASSETS[b] for b in (*S2_BANDS, "SCL")})
    # an odd offset (the tile starts inside a 20 m pixel) reaching 3 px beyond the
    # sources on two sides, so the split date's half tiles and the edges are covered
    gb = GeoBox((50, 64), Affine(10.0, 0, LEFT + 30.0, 0, -10.0, TOP - 170.0), "EPSG:32631")
    nearest = {"*": "nearest"}
    assert grid_aligned(items, assets, gb, 32631, nearest)
    fast = read_aligned(items, assets, gb, dtype="uint16", nodata=0, pool=2)
    ref = load_items(items, assets, gb, dtype="uint16", nodata=0, resampling=nearest, pool=2)
    assert set(fast) == set(ref) == set(assets)
    for band in assets:
        np.testing.assert_array_equal(fast[band], ref[band], err_msg=band)
    for band in ("B02", "B11", "SCL"):  # beyond the sources: nodata; within: data
        a = fast[band]
        assert (a[:, -3:] == 0).all() and (a[:, :, -3:] == 0).all()
        assert (a[:, :-3, :-3] > 0).mean() > 0.5
    # S1 (float32, NaN nodata, 10 m): the same as odc-stac's bilinear, which pastes
    s1 = search_items(open_client(cat), cat, "s1", bbox=[-180, -90, 180, 90],
                      start=START, end=END)  # fmt: skip
    s1_assets = resolve_assets(s1, S1_ASSETS)
    bil = {"*": "bilinear"}
    assert grid_aligned(s1, s1_assets, gb, 32631, bil)
    f1 = read_aligned(s1, s1_assets, gb, dtype="float32", nodata=float("nan"))
    r1 = load_items(s1, s1_assets, gb, dtype="float32", nodata=float("nan"), resampling=bil)
    for band in s1_assets:
        np.testing.assert_array_equal(f1[band], r1[band])
    # not aligned: half-pixel shift, bilinear upsampling, another CRS
    shifted = GeoBox((50, 47), Affine(10.0, 0, LEFT + 5.0, 0, -10.0, TOP), "EPSG:32631")
    assert not grid_aligned(items, assets, shifted, 32631, nearest)
    assert not grid_aligned(items, assets, gb, 32631, {"*": "bilinear", "SCL": "nearest"})
    assert not grid_aligned(items, assets, gb, 32632, nearest)


def test_odc_stac_path_gives_the_same_cube(tmp_path, src, cube):
    import json

    # without proj:transform the sources cannot be checked for alignment: odc-stac warps
    cat = make_catalog(tmp_path / "stac", src)
    n = 0
    for f in (tmp_path / "stac").rglob("*.json"):
        doc = json.loads(f.read_text())
        for a in doc.get("assets", {}).values():
            n += a.pop("proj:transform", None) is not None
        f.write_text(json.dumps(doc))
    assert n > 40
    c = build_cube(**_place(), start=START, end=END, catalog=str(cat), progress=False)
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1"].values, cube["s1"].values)
    np.testing.assert_array_equal(c["time"].values, cube["time"].values)


def test_screening_skips_cloudy_dates_and_writes_in_place(tmp_path, catalog, cube):
    from zarr.codecs import BloscCodec

    out = tmp_path / "c.zarr"
    with StacServer(catalog.parent) as srv:
        c = build_cube(
            **_place(), start=START, end=END, catalog=f"{srv.url}/catalog.json", out=out,
            progress=False, time_chunk=2,
        )  # fmt: skip
        cloudy = f"S2_{CLOUDY_DATE.replace('-', '')}"
        reads = {p for p in srv.file_requests if p.startswith(f"cogs/{cloudy}/")}
    # the cloudy date (every SCL pixel invalid) was screened on SCL alone
    assert reads == {f"cogs/{cloudy}/SCL.tif"}
    assert CLOUDY_DATE in c.attrs["dropped_dates"]
    np.testing.assert_array_equal(c["s2"].values, cube["s2"].values)
    np.testing.assert_array_equal(c["s1_time"].values, cube["s1_time"].values)
    disk = open_zarr(out)
    assert disk["s2"].encoding["chunks"] == (2, 10, 64, 64)  # gcd(time_chunk, 16) dates
    assert disk.attrs["proj:code"] == "EPSG:32631"
    assert disk.attrs["latentcube_request"] == c.attrs["latentcube_request"]
    codecs = [type(x) for x in disk["s2"].encoding["compressors"]]
    assert codecs == [BloscCodec]
    assert disk["s2"].encoding["compressors"][0].cname.value == "lz4"
    assert not (tmp_path / ".c.zarr.partial").exists()


@pytest.mark.parametrize("dilation", [0, 1, 2])
def test_scl_mask_lookup_equals_scl_valid(dilation):
    from latentcube.cube.sentinel2 import scl_valid

    rng = np.random.default_rng(dilation)
    scl = rng.choice(np.array([0, 3, 4, 5, 8, 9, 11], np.uint8), size=(3, 17, 23),
                     p=[0.05, 0.02, 0.5, 0.3, 0.05, 0.03, 0.05])  # fmt: skip
    m = SCLMask(dilation=dilation)
    ref = scl_valid(scl, invalid_classes=m.invalid_classes)
    if dilation:
        ref &= scl_valid(scl, invalid_classes=m.dilate_classes, dilation=dilation)
    np.testing.assert_array_equal(m.clear(scl), ref)
    np.testing.assert_array_equal(m.clear(scl.astype(np.int32)), ref)  # the generic path


# ------------------------------------------------------------ fast paths vs references


def _plan_for(catalog, **options):
    from latentcube.cube.plan import CubeSpec
    from latentcube.cube.plan import check_dates as _check_dates
    from latentcube.cube.plan import make_plan as _plan
    from latentcube.cube.plan import place_grid as _grid

    p = _place()
    info = _grid(p["lat"], p["lon"], p["size_m"], None, 10.0)
    t0, t1 = _check_dates(START, END)
    return _plan(info, t0, t1, str(catalog), CubeSpec(**options), "SCLMask")


class SameAsSCLMask:
    """The default mask behind a foreign type: the build takes its general path
    (every item's reflectance with the halo, no screening)."""

    halo = 1

    def __call__(self, refl, scl, bands):
        return SCLMask()(refl, scl, bands)


def test_plane_path_gives_the_same_cube_as_the_general_path(catalog, cube):
    c = build_cube(
        **_place(), start=START, end=END, catalog=str(catalog), progress=False,
        mask=SameAsSCLMask(),
    )  # fmt: skip
    assert list(c["time"].values) == list(cube["time"].values)  # the cloudy date dropped late
    for v in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(c[v].values, cube[v].values, err_msg=v)


def test_plane_merge_equals_item_merge_with_offsets_and_overlaps():
    """Two items on one date with different baselines and holes, one item on another,
    one overcast date."""
    from types import SimpleNamespace

    from latentcube.cube.plan import CubeSpec
    from latentcube.cube.sentinel2 import baseline_offset, remove_baseline_offset
    from latentcube.cube.sentinel2 import merge_s2_items as _merge_s2_items
    from latentcube.cube.sentinel2 import merge_s2_planes as _merge_s2_planes

    rng = np.random.default_rng(0)
    bands = ("B02", "B03", "B04")
    n, ny, nx = 4, 9, 11
    arrays = {b: rng.integers(0, 12000, (n, ny, nx)).astype(np.uint16) for b in bands}
    arrays["B03"][0, :4] = 0  # no data in one band of item 0: item 1 fills in
    arrays["SCL"] = rng.choice(np.array([4, 5, 8, 3], np.uint8), (n, ny, nx))
    arrays["SCL"][3] = 9  # item 3's date is overcast
    keys = ["02.07", "04.00", None, None]
    luts = [remove_baseline_offset(np.arange(65536, dtype=np.uint16), k) for k in keys]
    groups = [[0, 1], [2], [3]]
    mask = SCLMask(dilation=0)
    plan = SimpleNamespace(spec=CubeSpec(s2_bands=bands), s2_metadata=[None] * n, sign=False)
    crop = (slice(0, ny), slice(0, nx))
    gb = SimpleNamespace(shape=(ny, nx))
    idx = [0, 1, 2, 3]
    ref, ref_valid = _merge_s2_items(plan, arrays, bands, luts, idx, groups, gb, crop, mask)
    offsets = [baseline_offset(k) for k in keys]
    assert offsets == [0.0, 1000.0, 0.0, 0.0]
    got, got_valid = _merge_s2_planes(arrays, bands, offsets, mask.clear(arrays["SCL"]), groups)
    np.testing.assert_array_equal(got_valid, ref_valid)
    np.testing.assert_array_equal(got, ref)
    assert not ref_valid[2].any() and np.isnan(got[2]).all()  # the overcast date
    assert ref_valid[0].sum() > ref_valid[1].sum()  # the merge took pixels of both items
    # by hand: a pixel of date 0 clear in item 0 only holds item 0's reflectance
    only0 = mask.clear(arrays["SCL"])[0] & ~mask.clear(arrays["SCL"])[1] & (arrays["B03"][0] > 0)
    assert only0.any()
    np.testing.assert_array_equal(got[0, 0][only0], luts[0][arrays["B02"][0][only0]])


def test_s1_float32_chain_within_tolerance_of_float64(catalog):
    """The S1 chain runs in float32; a float64 reference (mean, dB, clip, scale)
    differs by at most 3e-7 in normalised units (about 1e-5 dB): a few float32
    rounding steps of values in [0, 1] (unit roundoff 6e-8), see docs/design.md."""
    from latentcube.cube.plan import read_assets as _read
    from latentcube.cube.sentinel1 import linear_to_db, normalise_db
    from latentcube.cube.sentinel1 import load_s1 as _load_s1

    plan = _plan_for(catalog)
    dates = list(range(len(plan.s2_times)))
    ys, xs = slice(0, 64), slice(0, 64)
    got, valid = _load_s1(plan, dates, ys, xs)
    assert got.dtype == np.float32 and valid.any()
    half = plan.spec.s1_window // 2
    for d, m in enumerate(plan.s1_match[dates]):
        if m < 0:
            assert not valid[d].any() and np.isnan(got[d]).all()
            continue
        win, prev, nxt = [int(m)], int(m), int(m)
        for _ in range(half):
            prev = int(plan.s1_prev[prev]) if prev >= 0 else -1
            nxt = int(plan.s1_next[nxt]) if nxt >= 0 else -1
            win += [g for g in (prev, nxt) if g >= 0]
        items = [plan.s1_items[i] for g in win for i in plan.s1_groups[g]]
        assert len(items) == len(win)  # one item per acquisition here
        arrays = _read(
            plan,
            plan.s1_aligned,
            items,
            plan.s1_assets,
            plan.info.geobox,
            dtype="float32",
            nodata=float("nan"),
            resampling={"*": "bilinear"},
        )  # fmt: skip  (the builder's input, then float64 from here on)
        lin = np.stack([arrays[b] for b in ("VV", "VH")], axis=1).astype(np.float64)
        lin[~(lin > 0)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(lin, axis=0)
        ref = ((np.clip(linear_to_db(mean), -30.0, 5.0) + 30.0) / 35.0)[:, ys, xs]
        ok = np.isfinite(ref).all(axis=0)
        np.testing.assert_array_equal(valid[d], ok)
        err = np.abs(got[d][:, ok] - ref[:, ok]).max()
        print(f"S1 float32 vs float64, date {d}: max abs difference {err:.3g}")
        assert err <= 3e-7
        # the float32 result also agrees with the float64 chain rounded once to float32
        once = normalise_db(linear_to_db(mean))[:, ys, xs]
        np.testing.assert_allclose(got[d][:, ok], once[:, ok], rtol=0, atol=2.4e-7)


@pytest.mark.parametrize("sensors,gap", [(("s2", "s1"), 6.0), (("s2",), 6.0), (("s2", "s1"), 0.0)])
def test_store_metadata_equals_the_xarray_template(tmp_path, catalog, sensors, gap):
    """The store written directly has xarray's documents and coordinates byte for byte."""
    import json

    import xarray as xr

    from latentcube.cube.write import final_attrs as _final_attrs
    from latentcube.cube.write import template as _template
    from latentcube.cube.write import write_store as _write_store

    plan = _plan_for(catalog, sensors=sensors, s1_max_gap_days=gap)
    dates = np.array([0, 2, 3])
    attrs = _final_attrs(plan, dates)
    ref, new = tmp_path / "ref.zarr", tmp_path / "new.zarr"
    tpl, enc = _template(plan, dates)
    tpl.attrs = attrs
    tpl.to_zarr(ref, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=enc)
    _write_store(new, plan, dates, attrs)
    files = sorted(str(f.relative_to(ref)) for f in ref.rglob("*") if f.is_file())
    assert files == sorted(str(f.relative_to(new)) for f in new.rglob("*") if f.is_file())
    for f in files:
        if f.endswith("zarr.json"):
            assert json.loads((ref / f).read_text()) == json.loads((new / f).read_text()), f
        else:
            assert (ref / f).read_bytes() == (new / f).read_bytes(), f
    xr.testing.assert_identical(open_zarr(new).load(), open_zarr(ref).load())
    if gap == 0.0:
        assert np.isnat(open_zarr(new)["s1_time"].values).all()


@pytest.mark.parametrize("kind", ["f4", "bool"])
def test_chunk_writer_equals_zarr_byte_for_byte(tmp_path, kind):
    """_write_chunks writes the files zarr writes, edge chunks (padded) included."""
    import json

    import zarr

    from latentcube.cube.write import array_doc as _array_doc
    from latentcube.cube.write import compressor_doc as _compressor_doc
    from latentcube.cube.write import write_chunks as _write_chunks

    rng = np.random.default_rng(3)
    shape, chunks = (11, 3, 70, 45), (4, 3, 32, 32)  # partial chunks on t, y and x
    if kind == "bool":
        shape, chunks = (shape[0], *shape[2:]), (chunks[0], *chunks[2:])
        data = rng.random(shape) < 0.5
    else:
        data = np.where(rng.random(shape) < 0.3, np.nan, rng.random(shape)).astype(np.float32)
    dims = ("time", "band", "y", "x")[-len(shape) :]
    doc = _array_doc(shape, chunks, np.dtype(kind), dims, {}, _compressor_doc(np.dtype(kind)))
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    for d in (ours, ref):
        d.mkdir()
        (d / "zarr.json").write_text(json.dumps(doc))
    z = zarr.open_array(ref, mode="r+")
    # units as a build writes them: whole chunks, the last ones cut by the array's edge
    for t0 in range(0, shape[0], 8):
        for y0 in range(0, shape[-2], 64):
            sel = (slice(t0, t0 + 8), ..., slice(y0, y0 + 64), slice(0, 32))
            block = data[sel]
            z.with_config({"write_empty_chunks": True})[sel] = block
            origin = (t0, *([0] * (len(shape) - 3)), y0, 0)
            _write_chunks(ours, block, origin, chunks, shape)
    files = sorted(str(f.relative_to(ref)) for f in ref.rglob("c/**/*") if f.is_file())
    assert len(files) == 3 * 3 * 1  # chunks of t x y for x chunk 0
    assert files == sorted(str(f.relative_to(ours)) for f in ours.rglob("c/**/*") if f.is_file())
    for f in files:
        assert (ref / f).read_bytes() == (ours / f).read_bytes(), f
    got = zarr.open_array(ours, mode="r")[...]
    np.testing.assert_array_equal(got[..., :32], data[..., :32])
    with pytest.raises(ValueError, match="chunk grid"):
        _write_chunks(ours, data[:4], (2, *([0] * (len(shape) - 1))), chunks, shape)


def test_unit_value_check_catches_every_rule():
    from latentcube.cube.build import _check_unit

    rng = np.random.default_rng(1)
    valid = rng.random((2, 5, 6)) < 0.7
    data = np.where(valid[:, None], rng.random((2, 3, 5, 6)), np.nan).astype(np.float32)
    _check_unit("s2", data, valid)  # a consistent unit passes
    _check_unit("s2", np.full_like(data, np.nan), np.zeros_like(valid))  # all masked
    for bad, what in [
        (1.5, "outside"), (-0.1, "outside"), (np.inf, "outside"), (np.nan, "disagree"),
    ]:  # fmt: skip
        d = data.copy()
        t, y, x = (int(v[0]) for v in np.nonzero(valid))
        d[t, 1, y, x] = bad
        with pytest.raises(StacError, match=what):
            _check_unit("s2", d, valid)
    d = data.copy()
    t, y, x = (int(v[0]) for v in np.nonzero(~valid))
    d[t, 2, y, x] = 0.5  # a value under an invalid pixel
    with pytest.raises(StacError, match="disagree"):
        _check_unit("s2", d, valid)


def test_union_time_axis_adds_s1_only_days(tmp_path, catalog, cube, src):
    union = build_cube(
        **_place(), start=START, end=END, catalog=str(catalog), progress=False, time_axis="union"
    )
    days = [str(d) for d in union["time"].values.astype("datetime64[D]")]
    s2_days = ["2018-09-18", "2018-10-13", "2018-10-18"]
    # S1 acquisition days in [START, END] without an S2 date (09-19 is a day after 09-18)
    s1_only = [d for d in S1_DATES if START <= d <= END and d not in s2_days]
    assert s1_only == ["2018-09-19", "2018-09-25", "2018-10-01", "2018-10-07"]
    assert days == sorted(s2_days + s1_only)
    assert union.attrs["time_axis"] == "union" and "time_axis" not in cube.attrs
    observed = union["s2_observed"].values
    assert [d for d, o in zip(days, observed, strict=True) if o] == s2_days
    # S2 dates: the S2-axis cube unchanged
    for name in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(union[name].values[observed], cube[name].values)
    # S1-only dates: S2 masked, S1 is that acquisition (rolling mean with its neighbours)
    assert not union["s2_valid"].values[~observed].any()
    assert np.isnan(union["s2"].values[~observed]).all()
    i = days.index("2018-09-25")
    assert union["s1_time"].values[i] == src.s1_time["2018-09-25"]
    exp = _s1_expected(src, ["2018-09-19", "2018-09-25", "2018-10-01"])
    np.testing.assert_allclose(union["s1"].values[i], exp, atol=2e-6)
    # 10-07's next neighbour is 10-25 (10-13 and 10-19 are missing from the catalog)
    i = days.index("2018-10-07")
    exp = _s1_expected(src, ["2018-10-01", "2018-10-07", "2018-10-25"])
    np.testing.assert_allclose(union["s1"].values[i], exp, atol=2e-6)
    assert union["s1_valid"].values[~observed].all()
    # a store: written once, reused by the same request, S2-axis stores are another request
    out = tmp_path / "u.zarr"
    kw = {**_place(), "start": START, "end": END, "catalog": str(catalog), "progress": False}
    stored = build_cube(**kw, out=out, time_axis="union")
    np.testing.assert_array_equal(stored["s1"].values, union["s1"].values)
    assert stored.attrs["time_axis"] == "union"
    assert not (tmp_path / ".u.zarr.s2.zarr").exists()
    mtime = (out / "zarr.json").stat().st_mtime_ns
    build_cube(**kw, out=out, time_axis="union")
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="not built for this request"):
        build_cube(**kw, out=out)
    with pytest.raises(StacError, match="needs sensors"):
        build_cube(**kw, sensors=("s2",), time_axis="union")
    with pytest.raises(StacError, match="time_axis must be one of"):
        build_cube(**kw, time_axis="s1")


def test_build_opens_each_file_once_and_closes_it(tmp_path, catalog, cube, monkeypatch):
    import rasterio

    opened = []
    plain_open = rasterio.open

    def recording_open(path, *args, **kwargs):
        ds = plain_open(path, *args, **kwargs)
        opened.append((str(path), ds))
        return ds

    monkeypatch.setattr(rasterio, "open", recording_open)
    # four loading tiles, each reading every file; the SCL is read again after the screening
    c = build_cube(
        **_place(), start=START, end=END, catalog=str(catalog), out=tmp_path / "c.zarr",
        progress=False, tile=32,
    )  # fmt: skip
    hrefs = [h for h, _ in opened]
    assert any(h.endswith("SCL.tif") for h in hrefs) and any("S1_" in h for h in hrefs)
    assert len(hrefs) == len(set(hrefs))  # each file opened once for the whole build
    assert all(ds.closed for _, ds in opened)  # and closed by the end of it
    for name in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(c[name].values, cube[name].values, err_msg=name)
