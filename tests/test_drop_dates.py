"""Dates dropped after the full mask: the kept dates' stored values copied, not re-encoded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from latentcube.cube.build import SCLMask, build_cube
from latentcube.io import open_zarr
from stac_catalog import CLOUDY_DATE, FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

from conftest import shared_path

START, END = "2018-09-15", "2018-10-20"


def scl_unscreened(refl, scl, bands):
    """The default mask as a plain function: builds do not screen it, so they read
    every date and drop the all-cloud one after the full mask."""
    return SCLMask()(refl, scl, bands)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("drop")
    catalog = make_catalog(root / "stac", read_source(shared_path(FLANDERS, PATCH)))
    lon, lat = centre_lonlat()
    kw = dict(lat=lat, lon=lon, size_m=640, start=START, end=END, catalog=str(catalog),
              progress=False, time_chunk=2, tile=32)  # fmt: skip
    screened = build_cube(**kw, out=root / "screened.zarr")
    dropped = build_cube(**kw, out=root / "dropped.zarr", mask=scl_unscreened)
    return root, screened, dropped


def test_the_store_equals_the_cube_whose_date_was_screened_out(built):
    root, screened, _ = built
    assert CLOUDY_DATE not in [str(d)[:10] for d in screened["time"].values]
    disk = open_zarr(root / "dropped.zarr").load()
    assert CLOUDY_DATE in disk.attrs["dropped_dates"]
    assert disk.sizes["time"] == screened.sizes["time"] == 3
    for name in ("s2", "s2_valid", "s1", "s1_valid", "time", "s1_time", "s1_orbit"):
        np.testing.assert_array_equal(disk[name].values, screened[name].values, err_msg=name)
    assert disk.rio.crs == screened.rio.crs
    assert disk.attrs["mask_function"] != screened.attrs.get("mask_function")


def test_the_stored_values_chunks_and_codecs_are_those_of_the_screened_store(built):
    root, _, _ = built
    a = zarr.open_group(root / "screened.zarr", mode="r")
    b = zarr.open_group(root / "dropped.zarr", mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        meta_a = json.loads((root / "screened.zarr" / name / "zarr.json").read_text())
        meta_b = json.loads((root / "dropped.zarr" / name / "zarr.json").read_text())
        assert meta_a == meta_b, name  # shape, chunks, codecs, packing attributes
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name)  # as stored
    # dates across time chunks of 2: the 4 candidates' chunks [0, 1] [2, 3] become [0, 2] [3]
    assert b["s2"].chunks[0] == 2 and b["s2"].shape[0] == 3


def test_a_copy_killed_half_way_is_redone_on_the_next_run(built, monkeypatch):
    import latentcube.cube.build as build

    root, screened, _ = built
    lon, lat = centre_lonlat()
    kw = dict(lat=lat, lon=lon, size_m=640, start=START, end=END,
              catalog=str(root / "stac" / "catalog.json"), progress=False, time_chunk=2,
              tile=32, out=root / "again.zarr", mask=scl_unscreened)  # fmt: skip
    real = build.drop_dates

    def killed(src, dst, keep, attrs):
        real(src, dst, keep, attrs)
        (dst / "s2" / "c" / "0" / "0" / "0" / "0").write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "drop_dates", killed)
    with pytest.raises(KeyboardInterrupt):
        build_cube(**kw)
    assert not (root / "again.zarr").exists()  # nothing at the output yet
    monkeypatch.setattr(build, "drop_dates", real)
    c = build_cube(**kw)
    np.testing.assert_array_equal(c["s2"].values, screened["s2"].values)
