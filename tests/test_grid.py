"""The 10 m UTM grid of a place: cubo's centre-pixel convention, zones, boxes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from latentcube.grid import (
    GridError,
    UTMZoneWarning,
    grid_for,
    grid_for_bbox,
    grid_info,
    utm_epsg,
)


def _bounds(gb):
    bb = gb.boundingbox
    return (bb.left, bb.bottom, bb.right, bb.top)


def test_known_patch_grid_by_hand():
    # the WorldCereal patch centre (575000 E, 5622120 N in EPSG:32631)
    gb = grid_for(50.74601310439754, 4.063057782796558, 640)
    assert gb.crs.epsg == 32631
    assert tuple(gb.shape) == (64, 64)
    assert _bounds(gb) == (574680.0, 5621800.0, 575320.0, 5622440.0)


def test_same_pixels_for_every_run_and_nearby_centres():
    a = grid_for(50.7460, 4.0630, 640)
    b = grid_for(50.7460, 4.0630, 640)
    assert a == b
    c = grid_for(50.7481, 4.0677, 900)  # another place in the zone: edges on the 10 m lattice
    for v in (*_bounds(a), *_bounds(c)):
        assert v % 10 == 0


@pytest.mark.parametrize(
    ("lat", "lon", "edge_px"),
    [(50.746, 4.063, 64), (-33.91, 18.42, 90), (61.2, 24.9, 128), (0.31, -77.5, 16)],
)
def test_parity_with_cubo(lat, lon, edge_px):
    utils = pytest.importorskip("cubo.utils")
    bbox_utm, _, _, epsg = utils._central_pixel_bbox(lat, lon, edge_px, 10)
    xs = [p[0] for p in bbox_utm["coordinates"][0]]
    ys = [p[1] for p in bbox_utm["coordinates"][0]]
    gb = grid_for(lat, lon, edge_px * 10)
    assert gb.crs.epsg == epsg
    assert _bounds(gb) == (min(xs), min(ys), max(xs), max(ys))
    assert tuple(gb.shape) == (edge_px, edge_px)


def test_area_across_two_zones_uses_the_centre_zone_and_says_so():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        info = grid_info(51.0, 5.99, 20000)
    assert info.epsg == 32631 == utm_epsg(51.0, 5.99)
    assert info.zones == (32631, 32632)
    assert "EPSG:32631" in info.note and "EPSG:32632" in info.note
    assert any(issubclass(w.category, UTMZoneWarning) for w in rec)
    assert info.attrs()["grid_note"] == info.note


def test_bbox_grid_covers_the_box():
    from pyproj import Transformer

    w, s, e, n = 4.05, 50.74, 4.07, 50.75
    gb = grid_for_bbox(w, s, e, n)
    tr = Transformer.from_crs(4326, 32631, always_xy=True)
    left, bottom, right, top = tr.transform_bounds(w, s, e, n)
    bl, bb_, br, bt = _bounds(gb)
    assert bl <= left and bb_ <= bottom and br >= right and bt >= top
    assert br - bl < right - left + 40 and bt - bb_ < top - bottom + 40
    assert all(v % 10 == 0 for v in _bounds(gb))


@pytest.mark.parametrize(
    ("args", "match"),
    [((85.0, 4.0, 640), "latitude"), ((50.0, 200.0, 640), "longitude"),
     ((50.0, 4.0, 0), "size_m"), ((50.0, 4.0, 5), "smaller than two pixels")],
)  # fmt: skip
def test_bad_places(args, match):
    with pytest.raises(GridError, match=match):
        grid_for(*args)
    with pytest.raises(GridError, match="min < max"):
        grid_for_bbox(4.1, 50.0, 4.0, 50.1)
    assert np.isfinite(utm_epsg(50.0, 4.0))
