"""The learned cloud mask (latentcube.cube.csmask) on real pixels, offline.

Unit tests run on ``tests/data/csmask/flanders_4dates.npz`` (a committed cut of a
real WorldCereal patch, made by ``tests/data/csmask/make_fixture.py``); build tests
on the local STAC catalog of ``tests/stac_catalog.py`` (real pixels of ../shared).
CI installs ``.[dev]``, which includes the ``cloudmask`` extra, so nothing here is
skipped; the missing-extra tests hide the packages instead of needing their absence.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from latentcube.cube import csmask as csmask_module
from latentcube.cube.build import build_cube, make_mask
from latentcube.cube.csmask import MODEL_BANDS, NODATA, CSMask, _block_mean, _starts, _weights
from latentcube.cube.masks import AllMasks, SCLMask, describe_cube_mask
from latentcube.cube.sentinel2 import mask_reflectance
from latentcube.errors import CubeError
from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

from conftest import shared_path

FIXTURE = Path(__file__).parent / "data" / "csmask" / "flanders_4dates.npz"
ROMANIA = FIXTURE.with_name("romania_2dates.npz")
BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
CLEAR, OVERCAST, BROKEN, CIRRUS = range(4)  # the fixture's dates, see make_fixture.py
START, END = "2018-09-15", "2018-10-20"
INSTALL = "pip install 'latentcube[cloudmask]'"


def _up(a):
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def _load(path, bands):
    """(date, band, 64, 64) reflectance as a build gives the mask (not clipped at 1), SCL."""
    with np.load(path) as f:
        dn = np.stack([f[b] if f[b].shape[-1] == 64 else _up(f[b]) for b in bands], axis=1)
        scl = f["SCL"] if f["SCL"].shape[-1] == 64 else _up(f["SCL"])
        return mask_reflectance(dn, 0.0), scl, f["time"]


@pytest.fixture(scope="module")
def fixture():
    """The six model bands of four Flanders dates (tests/data/csmask/make_fixture.py)."""
    return _load(FIXTURE, BANDS)


@pytest.fixture(scope="module")
def classes(fixture):
    return CSMask(dilation=0).classify(fixture[0], BANDS)


def _hide(monkeypatch, *modules):
    """Make ``modules`` look uninstalled (an import fails, ``find_spec`` finds nothing)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


# --------------------------------------------------------------------- the mask itself


def test_classes_on_real_dates(fixture, classes):
    refl = fixture[0]
    assert classes.shape == refl[:, 0].shape and classes.dtype == np.uint8
    assert set(np.unique(classes)) <= {0, 1, 2}
    flagged = (classes != 0).mean(axis=(1, 2))
    assert flagged[CLEAR] < 0.02  # SCL: all vegetation / bare soil
    assert flagged[OVERCAST] > 0.98  # SCL: all cloud
    assert flagged[CIRRUS] > 0.5
    # broken cloud: both clouds and shadows are found
    assert (classes[BROKEN] == 1).mean() > 0.1 and (classes[BROKEN] == 2).mean() > 0.1


def test_deterministic_and_batch_size_free(fixture, classes):
    refl = fixture[0]
    again = CSMask(dilation=0).classify(refl, BANDS)
    np.testing.assert_array_equal(again, classes)
    four = CSMask(dilation=0, batch_size=4).classify(refl, BANDS)
    assert (four == classes).mean() > 0.999


def test_band_order_by_name_and_extra_bands_ignored(fixture, classes):
    refl = fixture[0]
    order = [5, 3, 0, 4, 1, 2]
    shuffled = refl[:, order]
    extra = np.concatenate([shuffled, np.full_like(shuffled[:, :1], 0.3)], axis=1)
    names = [BANDS[i] for i in order] + ["B05"]
    np.testing.assert_array_equal(CSMask(dilation=0).classify(extra, names), classes)


def test_no_data_pixels_are_class_255_and_never_clear(fixture):
    refl = fixture[0][:1].copy()
    refl[0, 4, :10, :] = np.nan  # B11 missing on the top rows
    cls = CSMask(dilation=0).classify(refl, BANDS)
    assert (cls[0, :10] == NODATA).all() and (cls[0, 10:] != NODATA).all()
    clear = CSMask(dilation=0)(refl, np.zeros(refl[:, 0].shape, np.uint8), BANDS)
    assert not clear[0, :10].any() and clear[0, 10:].mean() > 0.9
    empty = np.full_like(refl, np.nan)
    assert (CSMask(dilation=0).classify(np.concatenate([empty, refl]), BANDS)[0] == NODATA).all()


def test_dilation_grows_clouds_and_shadows_only(fixture, classes):
    clear0 = CSMask(dilation=0).clear_from_classes(classes)
    clear2 = CSMask(dilation=2).clear_from_classes(classes)
    assert (clear2 <= clear0).all()
    assert clear2[CLEAR].all() == clear0[CLEAR].all()
    # a single cloud pixel grows into a 5 x 5 square
    one = np.zeros((1, 9, 9), np.uint8)
    one[0, 4, 4] = 1
    assert (~CSMask(dilation=2).clear_from_classes(one)).sum() == 25
    nodata = np.full((1, 9, 9), NODATA, np.uint8)
    nodata[0, :, 5:] = 0
    assert CSMask(dilation=2).clear_from_classes(nodata)[0, :, 5:].all()  # no data not grown


def test_four_band_model_needs_no_swir(fixture):
    refl = fixture[0][:, :4]
    cls = CSMask(bands=4, dilation=0).classify(refl, BANDS[:4])
    flagged = (cls != 0).mean(axis=(1, 2))
    assert flagged[CLEAR] < 0.05 and flagged[OVERCAST] > 0.95


def test_bright_clouds_are_seen_unclipped():
    """Overcast Romania (reflectance up to 1.8): cloud as it is, 'clear' when clipped at 1.

    The reason a build gives the learned mask reflectance not clipped at 1.
    """
    refl, scl, _ = _load(ROMANIA, BANDS[:4])
    assert np.nanmax(refl[1]) > 1.5 and (scl[1] == 9).all()
    flagged = (CSMask(bands=4, dilation=0).classify(refl, BANDS[:4]) != 0).mean(axis=(1, 2))
    assert flagged[0] < 0.05 and flagged[1] > 0.95
    clipped = CSMask(bands=4, dilation=0).classify(np.clip(refl, 0, 1), BANDS[:4])
    assert (clipped[1] != 0).mean() < 0.5


def test_mask_reflectance():
    dn = np.array([[0, 500, 1000, 11000, 20000]], np.uint16)
    np.testing.assert_allclose(mask_reflectance(dn, 0.0), [[np.nan, 0.05, 0.1, 1.1, 2.0]])
    np.testing.assert_allclose(mask_reflectance(dn, 1000.0), [[np.nan, 0.0, 0.0, 1.0, 1.9]])


def test_large_images_are_tiled_and_blended(fixture):
    """An image larger than one model tile: overlapping tiles, same classes inside."""
    refl = fixture[0][BROKEN : BROKEN + 1]
    big = np.concatenate([refl, refl[..., ::-1, :]] * 3, axis=-2)[..., :300, :]
    big = np.concatenate([big, big[..., ::-1]] * 3, axis=-1)[..., :300]  # 300 x 300, mirrored
    mask = CSMask(dilation=0, scale=1)
    whole = mask.classify(big, BANDS)
    assert whole.shape == (1, 300, 300) and set(np.unique(whole)) <= {0, 1, 2}
    part = mask.classify(big[..., :256, :256], BANDS)
    inner = (slice(None), slice(32, 224), slice(32, 224))
    assert (whole[inner] == part[inner]).mean() > 0.9


def test_helpers():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    x[0, 0, 0] = np.nan
    m = _block_mean(x, 2)
    np.testing.assert_allclose(m[0], [[(1 + 4 + 5) / 3, (2 + 3 + 6 + 7) / 4], [10.5, 12.5]])
    assert _block_mean(np.full((1, 5, 5), np.nan, np.float32), 3).shape == (1, 2, 2)
    for size in (256, 300, 700, 1000):
        starts = _starts(size, 256, 32)
        assert starts[0] == 0 and starts[-1] == size - 256
        assert all(b - a <= 256 - 32 for a, b in itertools.pairwise(starts))
    w = _weights(256, 32)
    assert w.min() > 0 and w.max() == 1.0 and w[128, 128] == 1.0


def _plain_classes(mask, refl, bands):
    """:meth:`CSMask.classify` written plainly (the code before 2026-12-07 09:00): the reference.

    Whole (image, band, y, x) stacks, the block means as NaN-filtered strided
    sums, one tile per network call, blended; no views, no batching.
    """
    mean, std, tile, _ = mask._stats()
    idx = [list(bands).index(b) for b in mask.model_bands]
    x = refl[:, idx]
    n, _, h, w = x.shape
    s = mask.scale
    hs, ws = -(-h // s), -(-w // s)
    total = np.zeros((n, len(idx), hs, ws), np.float32)
    count = np.zeros_like(total)
    for i in range(s):
        for j in range(s):
            part = x[..., i::s, j::s]
            ok = np.isfinite(part)
            total[..., : part.shape[-2], : part.shape[-1]] += np.where(ok, part, np.float32(0))
            count[..., : part.shape[-2], : part.shape[-1]] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(count > 0, total / count, np.float32(np.nan)).astype(np.float32)
    x = np.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
    ph, pw = max(tile - hs, 0), max(tile - ws, 0)
    x = np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), "symmetric")
    ys = _starts(hs + ph, tile, 32)
    xs = _starts(ws + pw, tile, 32)
    weights = _weights(tile, 32)
    session = csmask_module._session(str(mask.model_file), 1)
    name = session.get_inputs()[0].name
    out = np.full((n, h, w), NODATA, np.uint8)
    for k in range(n):
        prob = np.zeros((3, hs + ph, ws + pw), np.float32)
        wsum = np.zeros((hs + ph, ws + pw), np.float32)
        for y0 in ys:
            for x0 in xs:
                wsum[y0 : y0 + tile, x0 : x0 + tile] += weights
                t = x[k : k + 1, :, y0 : y0 + tile, x0 : x0 + tile]
                logits = session.run(None, {name: np.ascontiguousarray(t)})[0]
                e = np.exp(logits - logits.max(axis=1, keepdims=True))
                prob[:, y0 : y0 + tile, x0 : x0 + tile] += (e / e.sum(axis=1, keepdims=True))[
                    0
                ] * weights
        cls = np.argmax(prob / wsum, axis=0).astype(np.uint8)
        cls = cls[ph // 2 : ph // 2 + hs, pw // 2 : pw // 2 + ws]
        out[k] = np.repeat(np.repeat(cls, s, axis=0), s, axis=1)[:h, :w]
    out[~np.isfinite(refl[:, idx]).all(axis=1)] = NODATA
    return out


def _unit_with_halo(fixture, side=512, halo=65):
    """The fixture dates mirrored to a ``side`` px unit, a ``halo`` without data on two sides."""
    refl = fixture[0]
    reps = -(-(side + halo) // refl.shape[-1])
    row = np.concatenate([refl, refl[..., ::-1]] * reps, axis=-1)[..., : side + halo]
    big = np.concatenate([row, row[..., ::-1, :]] * reps, axis=-2)[..., : side + halo, :]
    out = np.full((*refl.shape[:2], side + 2 * halo, side + 2 * halo), np.nan, np.float32)
    out[..., halo:, halo:] = big  # north and west: beyond the catalog's edge
    return out


def test_classes_equal_the_plain_implementation(fixture):
    """Same classes, pixel for pixel, as the plain code: fixtures, a whole 512 px date, tiling."""
    refl = fixture[0]
    mask = CSMask(dilation=0)
    np.testing.assert_array_equal(mask.classify(refl, BANDS), _plain_classes(mask, refl, BANDS))
    gappy = refl.copy()
    gappy[1, 4, :10] = np.nan  # B11 missing on some rows of one date
    gappy[2, :, 20:23, 30:31] = np.nan  # and a hole through a block
    np.testing.assert_array_equal(mask.classify(gappy, BANDS), _plain_classes(mask, gappy, BANDS))
    four = CSMask(bands=4, dilation=0)
    ro = _load(ROMANIA, BANDS[:4])[0]
    np.testing.assert_array_equal(four.classify(ro, BANDS[:4]), _plain_classes(four, ro, BANDS[:4]))
    unit = _unit_with_halo(fixture)  # 642 px: one model tile per date, as in a build
    got = mask.classify(unit, BANDS)
    assert (got[:, 65:, 65:] != NODATA).all() and (got[:, :65] == NODATA).all()
    np.testing.assert_array_equal(got, _plain_classes(mask, unit, BANDS))
    big = unit[BROKEN : BROKEN + 1, :, 65:365, 65:365]  # 300 px at 10 m: 4 blended tiles
    ten = CSMask(dilation=0, scale=1)
    np.testing.assert_array_equal(ten.classify(big, BANDS), _plain_classes(ten, big, BANDS))


def test_threads_do_not_change_the_classes(fixture, classes):
    refl = fixture[0]
    for threads in (1, 2):
        got = CSMask(dilation=0, threads=threads).classify(refl, BANDS)
        np.testing.assert_array_equal(got, classes)
    with pytest.raises(CubeError, match="threads must be >= 1"):
        CSMask(threads=0)


def test_concurrent_calls_do_not_change_the_classes(fixture, classes, monkeypatch):
    import threading

    refl = fixture[0].copy()
    assert refl.shape[0] == 4
    refl[1] = np.nan  # an image without data on one of the threads: no run, class 255
    want = CSMask(dilation=0, calls=1).classify(refl, BANDS)
    assert (want[1] == 255).all()
    np.testing.assert_array_equal(np.delete(want, 1, 0), np.delete(classes, 1, 0))
    seen: list[tuple[str, list[int]]] = []
    real = CSMask._run

    def spy(self, pending, grid, out):
        seen.append((threading.current_thread().name, [k for k, _, _ in pending]))
        return real(self, pending, grid, out)

    monkeypatch.setattr(CSMask, "_run", spy)
    for calls in (2, 3, 4):
        seen.clear()
        np.testing.assert_array_equal(CSMask(dilation=0, calls=calls).classify(refl, BANDS), want)
        assert sorted(k for _, ks in seen for k in ks) == [k for k in range(len(refl)) if k != 1]
        # images go to the threads in turn; the one without data runs nowhere
        assert len({name for name, _ in seen}) == len({k % calls for k in range(4) if k != 1})
    with pytest.raises(CubeError, match="calls must be >= 1"):
        CSMask(calls=0)


def test_concurrent_calls_share_one_session(fixture):
    """Threads that each found no session would each load the model (about 250 MiB)."""
    from latentcube.cube import csmask

    csmask._session.cache_clear()
    CSMask(dilation=0, calls=2).classify(fixture[0], BANDS)
    assert csmask._session.cache_info().misses == 1


def test_by_date_classifies_each_date_once_as_a_mosaic(fixture, monkeypatch):
    refl = fixture[0][[BROKEN, BROKEN, CLEAR]].copy()
    refl[0, :, :, 32:] = np.nan  # two "tiles" of one pass: west and east halves
    refl[1, :, :, :24] = np.nan
    calls = []
    real = CSMask._classes

    def spy(self, images, size):
        calls.append(len(images))
        return real(self, images, size)

    monkeypatch.setattr(CSMask, "_classes", spy)
    mask = CSMask(dilation=0)
    clear = mask.by_date(refl, np.zeros(refl[:, 0].shape, np.uint8), BANDS, [[0, 1], [2]])
    assert calls == [2]  # one image per date
    whole = mask.classify(fixture[0][[BROKEN]], BANDS)
    assert calls == [2, 1]
    np.testing.assert_array_equal(clear[0], whole[0] == 0)  # the mosaic is the whole date
    np.testing.assert_array_equal(clear[0], clear[1])


def test_combined_mask_is_both_and_skips_dates_scl_leaves_nothing_clear(fixture, monkeypatch):
    refl, scl, _ = fixture
    calls = []
    real = CSMask._classes
    monkeypatch.setattr(
        CSMask, "_classes", lambda self, im, size: calls.append(len(im)) or real(self, im, size)
    )
    both = make_mask("scl+csmask", dilation=0)
    assert isinstance(both, AllMasks) and both.name == "scl+csmask"
    groups = [[k] for k in range(len(refl))]
    got = both.by_date(refl, scl, BANDS, groups)
    assert calls == [3]  # the overcast date is all cloud in SCL: not classified
    calls.clear()
    learned = CSMask(dilation=0).by_date(refl, scl, BANDS, groups)
    np.testing.assert_array_equal(got, SCLMask(dilation=0).clear(scl) & learned)
    assert both.halo == CSMask(dilation=0).halo
    assert both.screen == SCLMask(dilation=0)


def test_describe_cube_mask_reads_older_attributes():
    assert describe_cube_mask({"mask_function": "SCLMask(invalid=[0], dilation=1)"}) == (
        "SCLMask(invalid=[0], dilation=1)"
    )
    assert describe_cube_mask({"s2_mask": "SCL not in (0, 1)"}) == "SCL not in (0, 1)"
    assert describe_cube_mask({}) == "not recorded"
    custom = json.dumps({"name": "bright", "module": "mine"})
    assert describe_cube_mask({"mask": custom}) == "bright (a mask function)"


# ----------------------------------------------------------------------- errors


def test_missing_extra_is_one_line_naming_the_extra(monkeypatch, fixture):
    _hide(monkeypatch, "ukis_csmask")
    with pytest.raises(CubeError, match="ukis-csmask") as err:
        CSMask().classify(fixture[0], BANDS)
    assert INSTALL in str(err.value) and "\n" not in str(err.value)
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(CubeError, match="onnxruntime.*" + INSTALL.replace("[", r"\[")):
        CSMask().check(BANDS)


def test_missing_extra_fails_a_build_before_the_catalog_is_read(monkeypatch, tmp_path):
    _hide(monkeypatch, "ukis_csmask", "onnxruntime")
    lon, lat = centre_lonlat()
    for mask in ("csmask", "scl+csmask"):
        with pytest.raises(CubeError, match=r"ukis-csmask and onnxruntime.*cloudmask"):
            build_cube(lat=lat, lon=lon, size_m=640, start=START, end=END, mask=mask,
                       catalog=str(tmp_path / "none" / "catalog.json"), progress=False)  # fmt: skip
    assert not (tmp_path / "none").exists()


def test_missing_band_is_one_line_naming_it(tmp_path, fixture):
    lon, lat = centre_lonlat()
    bands = ("B02", "B03", "B04", "B08", "B8A")
    with pytest.raises(CubeError) as err:
        build_cube(lat=lat, lon=lon, size_m=640, start=START, end=END, mask="csmask",
                   s2_bands=bands, catalog=str(tmp_path / "c.json"), progress=False)  # fmt: skip
    msg = str(err.value)
    assert "B11, B12" in msg and "6-band" in msg and "--csmask-bands 4" in msg and "\n" not in msg
    with pytest.raises(CubeError, match="B03"):
        CSMask(bands=4).classify(fixture[0][:, [0, 2, 3]], ["B02", "B04", "B08"])
    with pytest.raises(CubeError, match="4 or 6"):
        CSMask(bands=5)


def test_cli_names_the_extra_on_one_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from latentcube.cli import app

    _hide(monkeypatch, "ukis_csmask")
    lon, lat = centre_lonlat()
    res = CliRunner().invoke(app, [
        "cube", "--out", str(tmp_path / "c.zarr"), "--start", START, "--end", END,
        "--lat", str(lat), "--lon", str(lon), "--size-m", "640", "--mask", "csmask",
        "--catalog", str(tmp_path / "catalog.json"),
    ])  # fmt: skip
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and INSTALL in lines[0]


# ------------------------------------------------------------------------- builds


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    src = read_source(shared_path(FLANDERS, PATCH))
    return make_catalog(tmp_path_factory.mktemp("stac"), src)


def _kw(catalog):
    lon, lat = centre_lonlat()
    return dict(lat=lat, lon=lon, size_m=640, start=START, end=END, catalog=str(catalog),
                progress=False, sensors=("s2",))  # fmt: skip


@pytest.fixture(scope="module")
def cube_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cubes")


@pytest.fixture(scope="module")
def cubes(catalog, cube_dir):
    return {
        m: build_cube(**_kw(catalog), mask=m, out=cube_dir / f"{m}.zarr")
        for m in ("scl", "csmask", "scl+csmask")
    }


@pytest.mark.shared
def test_build_has_the_cube_grid_and_provenance(cubes):
    scl, learned, both = cubes["scl"], cubes["csmask"], cubes["scl+csmask"]
    for c in (learned, both):
        for k in ("x", "y"):
            np.testing.assert_array_equal(c[k].values, scl[k].values)
        assert c.rio.crs == scl.rio.crs and c["s2_valid"].shape[1:] == scl["s2_valid"].shape[1:]
    info = json.loads(learned.attrs["mask"])
    path = CSMask().model_file
    assert info["name"] == "csmask" and info["package"] == "ukis-csmask"
    assert info["model_file"] == "model_6b_l2a.onnx" == path.name
    assert info["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["package_version"] == "1.0.0" and info["bands"] == list(MODEL_BANDS[6])
    assert json.loads(learned.attrs["latentcube_config"])["mask"] == "csmask"
    combined = json.loads(both.attrs["mask"])
    assert [m["name"] for m in combined["masks"]] == ["scl", "csmask"]
    assert json.loads(scl.attrs["mask"])["name"] == "scl"
    assert info["model_sha256"] in describe_cube_mask(learned.attrs)
    # the fully SCL-cloudy date is screened out of scl and scl+csmask, not of csmask
    assert learned.sizes["time"] == 4 and both.sizes["time"] == scl.sizes["time"] == 3
    # scl+csmask is clear exactly where both are clear (same dates)
    sub = learned.sel(time=scl["time"])
    np.testing.assert_array_equal(
        both["s2_valid"].values, scl["s2_valid"].values & sub["s2_valid"].values
    )
    valid = learned["s2_valid"].values
    assert np.isnan(learned["s2"].values[:, 0][~valid]).all()
    assert np.isfinite(learned["s2"].values[:, 0][valid]).all()


@pytest.mark.shared
def test_info_shows_the_mask(cubes, cube_dir):
    from typer.testing import CliRunner

    from latentcube.cli import app

    res = CliRunner().invoke(app, ["info", str(cube_dir / "csmask.zarr")])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("mask"))
    sha = json.loads(cubes["csmask"].attrs["mask"])["model_sha256"]
    assert "csmask (ukis-csmask 1.0.0, model_6b_l2a.onnx sha256 " + sha in line
    res = CliRunner().invoke(app, ["info", str(cube_dir / "scl.zarr")])
    assert "mask    scl (SCL classes 0, 1, 3, 8, 9, 10, 11 masked; dilation 1 px)" in res.output


@pytest.mark.shared
def test_cli_and_spec_select_the_mask(catalog, cubes, tmp_path):
    from typer.testing import CliRunner

    from latentcube.cli import app
    from latentcube.cube.plan import CubeSpec
    from latentcube.io import open_zarr

    lon, lat = centre_lonlat()
    out = tmp_path / "cli.zarr"
    res = CliRunner().invoke(app, [
        "cube", "--out", str(out), "--start", START, "--end", END, "--lat", str(lat),
        "--lon", str(lon), "--size-m", "640", "--sensors", "s2", "--mask", "scl+csmask",
        "--catalog", str(catalog), "--no-progress",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    c = open_zarr(out)
    assert c.attrs["mask"] == cubes["scl+csmask"].attrs["mask"]
    np.testing.assert_array_equal(c["s2_valid"].values, cubes["scl+csmask"]["s2_valid"].values)
    kw = {k: v for k, v in _kw(catalog).items() if k != "sensors"}
    by_spec = build_cube(**kw, sensors=("s2",), spec=CubeSpec(mask="scl+csmask"))
    assert by_spec.attrs["latentcube_request"] == c.attrs["latentcube_request"]
    res = CliRunner().invoke(app, ["cube", "--out", str(tmp_path / "x.zarr"), "--start", START,
                                   "--end", END, "--mask", "clouds"])  # fmt: skip
    assert res.exit_code == 2
    assert res.output.strip() == (
        "error: invalid cube options: mask: Input should be 'scl', 'csmask' or 'scl+csmask' "
        "(got 'clouds')"
    )


class KilledMask(CSMask):
    """The learned mask, killed after ``budget`` dates (a build stopped half way).

    A subclass: the build takes its general path (every band's reflectance with
    the halo), so comparing with a ``CSMask`` build also tests the plane path.
    """

    calls = 0
    budget = 10**9

    def by_date(self, refl, scl, bands, groups, need=None):
        type(self).calls += 1
        if type(self).calls > type(self).budget:
            raise KeyboardInterrupt("killed")
        return super().by_date(refl, scl, bands, groups, need)


@pytest.mark.shared
def test_build_resumes_and_gives_the_uninterrupted_cube(tmp_path, catalog, cubes):
    out = tmp_path / "cube.zarr"
    kw = {**_kw(catalog), "time_chunk": 1, "tile": 64, "out": out}
    KilledMask.calls, KilledMask.budget = 0, 2  # 4 dates x 1 tile = 4 units
    with pytest.raises(KeyboardInterrupt):
        build_cube(**kw, mask=KilledMask())
    assert not out.exists()
    assert len(list((tmp_path / ".cube.zarr.partial" / "done").iterdir())) == 2
    KilledMask.calls, KilledMask.budget = 0, 10**9
    c = build_cube(**kw, mask=KilledMask())
    assert KilledMask.calls == 2  # the finished units were not run again
    ref = cubes["csmask"]
    np.testing.assert_array_equal(c["s2_valid"].values, ref["s2_valid"].values)
    np.testing.assert_array_equal(c["s2"].values, ref["s2"].values)
    KilledMask.calls = 0
    build_cube(**kw, mask=KilledMask())  # same request: nothing to do
    assert KilledMask.calls == 0


@pytest.mark.shared
def test_other_model_or_options_is_another_request(tmp_path, catalog, cubes):
    four = CSMask(bands=4)
    assert four.describe() != CSMask().describe()
    out = tmp_path / "c.zarr"
    build_cube(**_kw(catalog), mask="csmask", out=out)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_cube(**_kw(catalog), mask="csmask", csmask_bands=4, out=out)


@pytest.mark.shared
@pytest.mark.slow
def test_units_on_a_dask_cluster_give_the_same_cube(catalog, cubes):
    c = build_cube(**_kw(catalog), mask="csmask", scheduler="local", workers=2,
                   time_chunk=2, tile=64)  # fmt: skip
    ref = cubes["csmask"]
    np.testing.assert_array_equal(c["s2_valid"].values, ref["s2_valid"].values)
    np.testing.assert_array_equal(c["s2"].values, ref["s2"].values)


def test_comparison_script_agreement_kappa_iou(monkeypatch):
    """The figures of docs/cloudmask.md: agreement, Cohen's kappa and IoU of two masks."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_cloud_masks.py"
    spec = importlib.util.spec_from_file_location("compare_cloud_masks", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compare_cloud_masks", mod)  # for its dataclass
    spec.loader.exec_module(mod)
    a = np.array([1, 1, 0, 0, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 0, 1, 1, 0], bool)
    got = mod.agreement(a, b)
    po, pe = 6 / 8, (3 / 8) ** 2 + (5 / 8) ** 2
    assert got["agreement"] == po and got["iou"] == 2 / 4
    assert abs(got["kappa"] - (po - pe) / (1 - pe)) < 1e-12
    same = mod.agreement(np.zeros(4, bool), np.zeros(4, bool))
    assert same["agreement"] == 1.0 and np.isnan(same["kappa"]) and np.isnan(same["iou"])
