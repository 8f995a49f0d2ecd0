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
