"""GDAL opens the embedding store written by ``latentcube embed`` north-up, georeferenced.

The GDAL is the 3.12 libgdal of pyogrio's wheels (rasterio's wheels bundle GDAL 3.10,
which cannot read Zarr v3), run in a subprocess by ``tests/_gdal.py``. That build has
no Zstandard, so the store GDAL reads is written with ``--compression gzip``; the
default zstd store is checked to differ from it only in its codecs, and to be refused
by this build with the codec error alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

import _gdal
from latentcube.bundle import save_checkpoint
from latentcube.cli import app
from latentcube.embedding_store import (
    COMPRESSION_ATTR,
    IDENTITY_ATTR,
    embedding_dataset,
    open_embedding,
)
from latentcube.inference import write_embedding
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig

from conftest import pretend_unfinished, snapshot, tiny_cube

LIB = _gdal.library()
pytestmark = pytest.mark.skipif(
    LIB is None, reason="needs pyogrio's wheel (its libgdal has the Zarr driver)"
)
runner = CliRunner()
RUN = ["--no-progress", "--workers", "1", "--no-processes"]
#: what this GDAL says of the string ``feature`` coordinate (harmless: not read for a slice)
STRING_ERROR = "ERROR 1: Invalid or unsupported format for data_type: string"
ZSTD_ERROR = "ERROR 1: zstd compressor not available"


def _embed(cube: Path, model: Path, out: Path, *extra: str) -> Path:
    res = runner.invoke(app, ["embed", str(cube), "--model", str(model), "--out", str(out),
                              *RUN, *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same cube embedded by ``latentcube embed`` twice: zstd (default) and gzip."""
    root = tmp_path_factory.mktemp("gdal")
    torch.manual_seed(0)
    model = save_checkpoint(root / "tiny.pt", build_autoencoder(AutoencoderConfig.preset("tiny")))
    cube = write_zarr(tiny_cube(n_time=13, ny=20, nx=18, seed=3, with_s1=False), root / "c.zarr")
    return {
        "root": root,
        "cube": cube,
        "model": model,
        "zstd": _embed(cube, model, root / "zstd.zarr"),
        "gzip": _embed(cube, model, root / "gzip.zarr", "--compression", "gzip"),
    }


def _root(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())


def _valid_pixel(ds) -> tuple[int, float, float]:
    """(time index, y, x) of the middle valid pixel-date."""
    t, iy, ix = np.argwhere(ds["valid"].values)[int(ds["valid"].sum()) // 2]
    return int(t), float(ds["y"][iy]), float(ds["x"][ix])


def check_gdal_reads(store: Path, tmp_path: Path, feature: int = 2) -> None:
    """gdal_translate one (feature, date) slice and one quality layer of ``store`` to GeoTIFF;
    rasterio must find the store's CRS, its north-up transform and its values."""
    ds = open_embedding(store).load()
    t, yc, xc = _valid_pixel(ds)
    tif = tmp_path / f"{store.stem}_{feature}_{t}.tif"
    res = _gdal.translate(f'ZARR:"{store}":/embedding:{feature}:{t}', tif, LIB)
    assert res.ok, res.messages
    layer = tmp_path / f"{store.stem}_recon_{t}.tif"
    assert _gdal.translate(f'ZARR:"{store}":/recon_mae_s2:{t}', layer, LIB).ok
    x, y = ds["x"].values, ds["y"].values
    transform = _root(store)["attributes"]["spatial:transform"]
    with rasterio.open(tif) as src:
        assert src.crs == ds.rio.crs and src.crs.to_epsg() == 32631
        assert src.transform.e < 0 < src.transform.a  # north-up
        np.testing.assert_allclose(tuple(src.transform)[:6], transform, rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            tuple(src.bounds), (x[0] - 5, y[-1] - 5, x[-1] + 5, y[0] + 5), rtol=0, atol=1e-9
        )
        assert src.shape == (ds.sizes["y"], ds.sizes["x"])
        row, col = src.index(xc, yc)
        one = src.read(1, window=((row, row + 1), (col, col + 1)))[0, 0]
        whole = src.read(1)
    want = ds["embedding"].isel(feature=feature, time=t)
    assert np.isfinite(want.sel(x=xc, y=yc).values)
    assert one == want.sel(x=xc, y=yc).values
    np.testing.assert_array_equal(whole, want.values)  # every pixel, NaN where no embedding
    with rasterio.open(layer) as src:
        assert tuple(src.transform)[:6] == pytest.approx(transform, abs=1e-9)
        np.testing.assert_array_equal(src.read(1), ds["recon_mae_s2"].isel(time=t).values)


def test_gdal_reads_the_gzip_store_north_up_with_its_crs_transform_and_values(stores, tmp_path):
    assert _root(stores["gzip"])["attributes"][COMPRESSION_ATTR] == "gzip"
    check_gdal_reads(stores["gzip"], tmp_path)


def test_the_check_fails_on_a_store_written_south_up(stores, tmp_path):
    """A store whose rows run south to north is georeferenced by GDAL with the rows
    flipped: the check above must see it."""
    ds = open_embedding(stores["gzip"]).load()
    flipped = embedding_dataset(ds.isel(y=slice(None, None, -1)))
    for v in flipped.variables.values():
        v.encoding = {}
    store = write_embedding(flipped, tmp_path / "south_up.zarr", compression="gzip")
    with pytest.raises(AssertionError):
        check_gdal_reads(store, tmp_path)


def test_the_zstd_store_differs_from_the_gzip_store_in_its_codecs_only(stores):
    zstd, gzip = stores["zstd"], stores["gzip"]
    files = sorted(p.relative_to(zstd) for p in zstd.rglob("zarr.json"))
    assert files == sorted(p.relative_to(gzip) for p in gzip.rglob("zarr.json"))
    assert len(files) == 9  # root; embedding, valid, recon_mae_s2; time, y, x, feature, spatial_ref
    for rel in files:
        a, b = (json.loads((s / rel).read_text()) for s in (zstd, gzip))
        if a["node_type"] == "array":
            names = {c["name"] for c in a.pop("codecs")}, {c["name"] for c in b.pop("codecs")}
            assert "zstd" in names[0] and "gzip" not in names[0], rel
            assert "gzip" in names[1] and "zstd" not in names[1], rel
        else:
            attrs_a, attrs_b = a["attributes"], b["attributes"]
            assert (attrs_a.pop(COMPRESSION_ATTR), attrs_b.pop(COMPRESSION_ATTR)) == (
                "zstd",
                "gzip",
            )
            ident_a = json.loads(attrs_a.pop(IDENTITY_ATTR))
            ident_b = json.loads(attrs_b.pop(IDENTITY_ATTR))
            assert ident_b.pop("compression") == "gzip" and ident_a == ident_b
            attrs_a.pop("created"), attrs_b.pop("created")
        assert a == b, rel
    za, gz = open_embedding(zstd).load(), open_embedding(gzip).load()
    for name in za.data_vars:
        np.testing.assert_array_equal(za[name].values, gz[name].values, err_msg=name)


def test_this_gdal_reads_the_zstd_store_or_names_the_missing_codec(stores, tmp_path):
    """pyogrio 0.13's GDAL 3.12.4 is built without Zstandard: it refuses the default store
    with the codec error and nothing else. A build with Zstandard must read it right."""
    store = stores["zstd"]
    res = _gdal.translate(f'ZARR:"{store}":/embedding:0:0', tmp_path / "z.tif", LIB)
    if res.ok:
        check_gdal_reads(store, tmp_path)
        return
    errors = {line for line in res.messages.splitlines() if line.startswith("ERROR")}
    assert errors == {STRING_ERROR, ZSTD_ERROR}, res.messages


def test_resuming_with_another_compression_is_refused_in_one_line(stores, tmp_path):
    out = _embed(stores["cube"], stores["model"], tmp_path / "e.zarr")
    pretend_unfinished(out)
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(stores["cube"]), "--model", str(stores["model"]),
                              "--out", str(out), *RUN, "--compression", "gzip"])  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "unfinished run of another" in lines[0], res.output
    assert "compression" in lines[0]
    assert snapshot(tmp_path) == before
    _embed(stores["cube"], stores["model"], out)  # the same compression resumes it


def test_info_shows_the_compression(stores):
    for codec in ("zstd", "gzip"):
        res = runner.invoke(app, ["info", str(stores[codec])])
        assert res.exit_code == 0, res.output
        assert f"compression: {codec}" in res.output
