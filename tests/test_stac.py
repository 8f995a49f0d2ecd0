"""Catalog resolution, item grouping, asset checks and retries of latentcube.cube.stac."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pystac
import pytest

from latentcube.cube.stac import (
    CATALOGS,
    PC_URL,
    StacError,
    group_items,
    needs_signing,
    resolve_assets,
    resolve_catalog,
    with_retries,
)


def _item(iid, when, lon=4.0, orbit=None, assets=("B02",), href="/x.tif"):
    props = {"sat:orbit_state": orbit} if orbit else {}
    it = pystac.Item(iid, None, [lon - 0.1, 50.0, lon + 0.1, 50.1], when, props)
    for a in assets:
        it.add_asset(a, pystac.Asset(href))
    return it


def test_resolve_catalog_names_urls_and_paths(tmp_path):
    assert resolve_catalog("planetary-computer").sign
    assert resolve_catalog("earth-search").collections["s1"] is None
    assert resolve_catalog(PC_URL + "/").sign
    assert not resolve_catalog("https://example.org/stac").sign
    (tmp_path / "catalog.json").write_text("{}")
    assert resolve_catalog(tmp_path).url == str((tmp_path / "catalog.json").resolve())
    with pytest.raises(StacError, match="unknown catalog 'nowhere'"):
        resolve_catalog("nowhere")
    assert set(CATALOGS) == {"planetary-computer", "earth-search"}


def test_group_items_by_solar_day_and_orbit():
    t = dt.datetime(2020, 5, 1, 23, 30, tzinfo=dt.UTC)
    items = [
        _item("a", t, lon=10.0, orbit="ascending"),  # solar time 00:10 on May 2
        _item("b", t + dt.timedelta(minutes=1), lon=10.0, orbit="ascending"),
        _item("c", t + dt.timedelta(hours=6), lon=10.0, orbit="descending"),  # May 2 too
        _item("d", t + dt.timedelta(days=3), lon=10.0, orbit="ascending"),
    ]
    groups, times = group_items(items)
    assert groups == [[0, 1, 2], [3]]
    groups, times = group_items(items, by_orbit=True)
    assert groups == [[0, 1], [2], [3]]
    assert times[0] == np.datetime64("2020-05-01T23:30")


def test_resolve_assets_checks_every_item():
    t = dt.datetime(2020, 5, 1, tzinfo=dt.UTC)
    ok = _item("a", t, assets=("blue", "scl"))
    assert resolve_assets([ok], {"B02": ("B02", "blue"), "SCL": ("SCL", "scl")}) == {
        "B02": "blue",
        "SCL": "scl",
    }
    bad = _item("b", t, assets=("blue",))
    with pytest.raises(StacError, match=r"item 'b' lacks asset\(s\) \['scl'\]"):
        resolve_assets([ok, bad], {"B02": ("B02", "blue"), "SCL": ("SCL", "scl")})


def test_needs_signing_for_blob_storage():
    t = dt.datetime(2020, 5, 1, tzinfo=dt.UTC)
    spec = resolve_catalog("https://example.org/stac")
    assert not needs_signing(spec, [_item("a", t)])
    blob = _item("b", t, href="https://acct.blob.core.windows.net/c/x.tif")
    assert needs_signing(spec, [blob])


def test_with_retries_backs_off_on_transient_errors_only():
    waits, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("HTTP response code: 503")
        return "ok"

    assert with_retries(flaky, what="x", max_retries=3, backoff=0.5, sleep=waits.append) == "ok"
    assert waits == [0.5, 1.0]
    with pytest.raises(StacError, match="x failed after 1 attempt"):
        with_retries(lambda: 1 / 0, what="x", sleep=waits.append)
    calls.clear()
    with pytest.raises(StacError, match="after 3 attempt"):
        with_retries(
            lambda: (_ for _ in ()).throw(OSError("connection reset by peer")),
            what="y", max_retries=2, backoff=0.0, sleep=waits.append,
        )  # fmt: skip


# ------------------------------------------------------------ open datasets kept per build


def _tifs(tmp_path, n=3):
    """``n`` tiny single-band GeoTIFFs: 8 x 8 px at 20 m, values i * 100 + pixel index."""
    import rasterio
    from affine import Affine

    paths = []
    for i in range(n):
        p = tmp_path / f"f{i}.tif"
        data = (i * 100 + np.arange(64, dtype=np.uint16)).reshape(8, 8)
        with rasterio.open(
            p, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
            crs="EPSG:32631", transform=Affine(20.0, 0, 500000.0, 0, -20.0, 5600000.0),
        ) as ds:  # fmt: skip
            ds.write(data, 1)
        paths.append(str(p))
    return paths


def test_dataset_pool_lends_reuses_evicts_and_closes(tmp_path):
    import threading

    from latentcube.cube.stac import DatasetPool

    a, b, c = _tifs(tmp_path)
    pool = DatasetPool(max_idle=2)
    with pool.checkout(a) as ds1:
        assert ds1.read(1)[0, 0] == 0
        with pool.checkout(a) as ds2:  # lent out: a second dataset of the same file
            assert ds2 is not ds1
    with pool.checkout(a) as again:
        assert again is ds1  # the most recently returned one
    assert pool.opened == 2 and pool.idle == 2
    with pool.checkout(b) as db:  # a third idle one: the least recently used is closed
        pass
    assert ds2.closed and not ds1.closed and not db.closed and pool.idle == 2
    # a failed read closes its dataset; the next checkout opens the file again
    with pytest.raises(ZeroDivisionError), pool.checkout(b) as bad:
        assert bad is db
        raise ZeroDivisionError
    assert db.closed
    with pool.checkout(b) as db2:
        assert db2 is not db and db2.read(1)[0, 0] == 100
    # another thread gets its own dataset while one is lent out
    seen = []
    with pool.checkout(c) as mine:
        t = threading.Thread(target=lambda: seen.append(pool.checkout(c).__enter__()))
        t.start()
        t.join()
        assert seen[0] is not mine
        seen[0].close()
        # closing the pool closes the idle datasets; a lent one when it comes back
        pool.close()
        assert ds1.closed and db2.closed and pool.idle == 0
        assert not mine.closed
    assert mine.closed


def test_dataset_pool_bounds_the_blocks_its_idle_datasets_hold(tmp_path):
    from latentcube.cube.stac import DatasetPool

    a, b, c = _tifs(tmp_path)
    pool = DatasetPool(max_idle=8, max_bytes=100)
    with pool.checkout(a) as da:
        pool.charge(da, 60)
    with pool.checkout(b) as db:
        pool.charge(db, 30)
    assert pool.idle == 2 and not da.closed  # 90 bytes: both kept
    with pool.checkout(a) as again:
        assert again is da
        pool.charge(da, 20)  # 110 with b's: the least recently used (b) is closed
    assert db.closed and not da.closed and pool.idle == 1
    with pool.checkout(c) as dc:
        pool.charge(dc, 101)  # more than the whole budget alone: closed on return
    assert dc.closed and pool.idle == 1 and not da.closed
    pool.close()
    assert da.closed


def test_reuse_datasets_caps_gdal_block_cache_and_restores_it():
    """Files stay open for a whole build, so GDAL's block cache (one per process) is
    capped meanwhile instead: the blocks they decoded cannot grow with the area."""
    import rasterio
    from rasterio.env import get_gdal_config

    from latentcube.cube.stac import CACHE_BYTES, reuse_datasets

    def cache() -> int:
        return int(get_gdal_config("GDAL_CACHEMAX"))

    with rasterio.Env(GDAL_CACHEMAX=3 * CACHE_BYTES):  # the caller's own setting
        with reuse_datasets() as pool:
            assert cache() == CACHE_BYTES and pool.max_bytes is None
            with reuse_datasets(cache_bytes=2**20):
                assert cache() == 2**20
            assert cache() == CACHE_BYTES
        assert cache() == 3 * CACHE_BYTES
        with reuse_datasets(cache_bytes=None, max_bytes=100) as pool:
            assert cache() == 3 * CACHE_BYTES and pool.max_bytes == 100


def test_read_aligned_reuses_open_files_with_the_same_values(tmp_path):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from latentcube.cube.stac import read_aligned, reuse_datasets

    paths = _tifs(tmp_path)
    t = dt.datetime(2020, 5, 1, tzinfo=dt.UTC)
    items = [_item(f"i{k}", t, href=p) for k, p in enumerate(paths)]
    # two 10 m tiles of the 20 m files, the second one reaching 2 px beyond them
    tiles = [
        GeoBox((6, 8), Affine(10.0, 0, 500020.0, 0, -10.0, 5599980.0), "EPSG:32631"),
        GeoBox((6, 8), Affine(10.0, 0, 500140.0, 0, -10.0, 5599900.0), "EPSG:32631"),
    ]
    plain = [read_aligned(items, {"B02": "B02"}, g, dtype="uint16", nodata=0)["B02"] for g in tiles]
    with reuse_datasets() as pool:
        kept = [read_aligned(items, {"B02": "B02"}, g, dtype="uint16", nodata=0, pool=2)["B02"]
                for g in tiles]  # fmt: skip
        assert pool.opened == len(paths)  # each file once for both tiles
        handles = [ds for _, ds in pool._idle.values()]
    assert pool.idle == 0 and handles and all(ds.closed for ds in handles)
    for k in range(len(paths)):
        full = np.repeat(np.repeat(k * 100 + np.arange(64).reshape(8, 8), 2, 0), 2, 1)
        np.testing.assert_array_equal(plain[0][k], full[2:8, 2:10])  # by hand
        expected = np.zeros((6, 8), np.int64)  # rows 10-15 and columns 14-21: 2 beyond
        expected[:, :2] = full[10:16, 14:16]
        np.testing.assert_array_equal(plain[1][k], expected)
        for a, b in zip(plain, kept, strict=True):
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "dtype,src_nodata,nodata", [("uint16", 5, 0), ("float32", -9999.0, np.nan), ("uint8", 5, 0)]
)
def test_read_aligned_maps_source_nodata(tmp_path, dtype, src_nodata, nodata):
    """Source nodata becomes ``nodata`` whether GDAL decodes into the output (whole 10 m
    planes of the same dtype) or through a temporary (part of a plane, another dtype)."""
    import rasterio
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from latentcube.cube.stac import read_aligned, reuse_datasets

    data = (np.arange(48) % 7).astype(dtype).reshape(6, 8)
    data[data == 3] = src_nodata
    path = tmp_path / "f.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=6, count=1, dtype=dtype, nodata=src_nodata,
        crs="EPSG:32631", transform=Affine(10.0, 0, 500000.0, 0, -10.0, 5600000.0),
    ) as ds:  # fmt: skip
        ds.write(data, 1)
    items = [_item("i0", dt.datetime(2020, 5, 1, tzinfo=dt.UTC), assets=("B",), href=str(path))]
    out_dtype = "uint16" if dtype == "uint8" else dtype
    expected = np.where(data == src_nodata, nodata, data).astype(out_dtype)
    whole = GeoBox((6, 8), Affine(10.0, 0, 500000.0, 0, -10.0, 5600000.0), "EPSG:32631")
    # 3 px beyond the file's right edge and 1 row above it: a part of each plane
    beyond = GeoBox((7, 8), Affine(10.0, 0, 500030.0, 0, -10.0, 5600010.0), "EPSG:32631")
    part = np.full((7, 8), nodata, out_dtype)
    part[1:, :5] = expected[:, 3:]
    for pool in (None, 2):
        with reuse_datasets():
            got = read_aligned(items, {"B": "B"}, whole, dtype=out_dtype, nodata=nodata, pool=pool)
            np.testing.assert_array_equal(got["B"][0], expected)
            got = read_aligned(items, {"B": "B"}, beyond, dtype=out_dtype, nodata=nodata, pool=pool)
            np.testing.assert_array_equal(got["B"][0], part)
