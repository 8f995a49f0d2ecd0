"""Self-describing embedding stores: provenance, geoemb attributes, the STAC Item, GDAL reads."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from pyproj import Transformer
from typer.testing import CliRunner

import latentcube
from latentcube.bundle import save_checkpoint
from latentcube.cli import app
from latentcube.embedding_store import open_embedding, store_status
from latentcube.inference import embed, write_embedding
from latentcube.io import to_geotiff, write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.store_metadata import GEOEMB_CONVENTION, stac_item_path

from conftest import embed_to_zarr_in_process, tiny_cube

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny stage-1 model saved to a file, a cube, and the in-memory path's store."""
    root = tmp_path_factory.mktemp("meta")
    torch.manual_seed(0)
    cfg = AutoencoderConfig.preset("tiny")
    model_file = save_checkpoint(root / "models" / "tiny.pt", build_autoencoder(cfg).eval())
    cube = tiny_cube(n_time=13, ny=20, nx=18, seed=3, with_s1=False)
    store = write_embedding(embed(cube, model_file), root / "emb.zarr")
    return {"root": root, "cfg": cfg, "model": model_file, "cube": cube, "store": store}


def _attrs(store):
    return json.loads((store / "zarr.json").read_text())["attributes"]


def test_the_store_records_the_model_its_hash_sensors_bands_dates_and_version(made):
    attrs = _attrs(made["store"])
    digest = hashlib.sha256(made["model"].read_bytes()).hexdigest()
    assert attrs["model_sha256"] == digest
    assert attrs["model_id"] == "models/tiny.pt"
    assert attrs["model_kind"] == "autoencoder"
    assert attrs["sensors"] == ["s2"]
    assert attrs["bands"] == {"s2": list(made["cfg"].bands)}
    days = [str(t)[:10] for t in made["cube"]["time"].values]
    assert attrs["dates"] == days
    assert (attrs["time_coverage_start"], attrs["time_coverage_end"]) == (days[0], days[-1])
    assert attrs["latentcube_version"] == latentcube.__version__
    # geo-embeddings convention (draft v1), registered in zarr_conventions
    assert GEOEMB_CONVENTION["uuid"] in [c["uuid"] for c in attrs["zarr_conventions"]]
    assert attrs["geoemb:type"] == "pixel"
    assert attrs["geoemb:dimensions"] == made["cfg"].latent_dim
    assert attrs["geoemb:data_type"] == "float32"
    assert attrs["geoemb:gsd"] == 10.0
    prefix = "ni:///sha-256;"
    assert attrs["geoemb:model"].startswith(prefix)
    raw = attrs["geoemb:model"].removeprefix(prefix)
    assert base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex() == digest
    assert attrs["latentcube:temporal_type"] == "per-date"
    # the CRS is still there, and the sidecar does not disturb the store's own checks
    assert attrs["proj:code"] == "EPSG:32631"
    assert store_status(made["store"])[0] == "complete"
    assert open_embedding(made["store"]).rio.crs.to_epsg() == 32631


def test_both_embedding_paths_write_the_same_metadata(made, tmp_path):
    cube_path = write_zarr(made["cube"], tmp_path / "cube.zarr")
    out = embed_to_zarr_in_process(cube_path, made["model"], tmp_path / "big.zarr", chunk=8)
    a, b = _attrs(made["store"]), _attrs(out)
    for key in ("model_sha256", "model_id", "sensors", "bands", "dates", "geoemb:model",
                "geoemb:dimensions", "zarr_conventions", "latentcube:temporal_type"):  # fmt: skip
        assert a[key] == b[key], key
    item = json.loads(stac_item_path(out).read_text())
    assert item["assets"]["data"]["href"] == "./big.zarr"
    assert store_status(out)[0] == "complete"


def test_the_stac_item_matches_the_store_grid_and_dates(made):
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    store = made["store"]
    path = stac_item_path(store)
    assert path.name == "emb.zarr.stac-item.json" and path.parent == store.parent
    doc = json.loads(path.read_text())
    item = pystac.Item.from_dict(doc)
    ds = xr.open_zarr(store, consolidated=False)
    x, y = ds["x"].values, ds["y"].values
    dx, dy = x[1] - x[0], y[0] - y[1]  # independent of rioxarray: from the coordinates
    left, right, top, bottom = x[0] - dx / 2, x[-1] + dx / 2, y[0] + dy / 2, y[-1] - dy / 2
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32631"
    assert proj.shape == [len(y), len(x)]
    np.testing.assert_allclose(proj.transform, [dx, 0, left, 0, -dy, top])
    np.testing.assert_allclose(proj.bbox, [left, bottom, right, top])
    tr = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    lon, lat = tr.transform([left, right, right, left], [bottom, bottom, top, top])
    ring = np.array(doc["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring[:4], np.c_[lon, lat], atol=1e-9)
    np.testing.assert_allclose(doc["bbox"], [min(lon), min(lat), max(lon), max(lat)], atol=1e-9)
    days = [str(t)[:10] for t in made["cube"]["time"].values]
    props = doc["properties"]
    assert props["start_datetime"] == f"{days[0]}T00:00:00Z"
    assert props["end_datetime"] == f"{days[-1]}T00:00:00Z"
    assert props["datetime"] is None
    dims = props["cube:dimensions"]
    assert dims["time"]["values"] == [f"{d}T00:00:00Z" for d in days]
    assert dims["x"]["extent"] == [left, right] and dims["y"]["extent"] == [bottom, top]
    assert dims["feature"]["values"] == [str(f) for f in ds["feature"].values]
    assert props["cube:variables"]["embedding"]["dimensions"] == ["feature", "time", "y", "x"]
    assert props["cube:variables"]["valid"]["type"] == "auxiliary"
    assert props["latentcube:model_sha256"] == _attrs(store)["model_sha256"]
    assert any("projection" in e for e in doc["stac_extensions"])
    assert any("datacube" in e for e in doc["stac_extensions"])
    asset = doc["assets"]["data"]
    assert (path.parent / asset["href"]).resolve() == store.resolve()
    assert asset["type"] == "application/vnd+zarr" and asset["roles"] == ["data"]


def _valid_pixel(ds):
    """(time index, y, x coordinates) of a valid embedding away from the grid's corner."""
    t, iy, ix = np.argwhere(ds["valid"].values)[len(np.argwhere(ds["valid"].values)) // 2]
    return int(t), float(ds["y"][iy]), float(ds["x"][ix])


def test_gdal_reads_the_cog_export_north_up_with_the_store_georeferencing(made, tmp_path):
    ds = open_embedding(made["store"]).load()
    t, yc, xc = _valid_pixel(ds)
    (tif,) = to_geotiff(ds, tmp_path / "cog", times=[ds["time"].values[t]])
    x, y = ds["x"].values, ds["y"].values
    with rasterio.open(tif) as src:
        assert src.driver == "GTiff" and src.crs.to_epsg() == 32631
        assert src.transform.e < 0 and src.transform.a > 0  # north-up
        np.testing.assert_allclose(
            tuple(src.bounds), (x[0] - 5, y[-1] - 5, x[-1] + 5, y[0] + 5), atol=1e-6
        )
        row, col = src.index(xc, yc)
        got = src.read(window=((row, row + 1), (col, col + 1)))[:, 0, 0]
        assert src.descriptions == tuple(str(f) for f in ds["feature"].values)
    want = ds["embedding"].isel(time=t).sel(x=xc, y=yc).values
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)


def test_an_embedding_with_y_increasing_is_still_exported_north_up(made, tmp_path):
    ds = open_embedding(made["store"]).load()
    t, yc, xc = _valid_pixel(ds)
    flipped = ds.isel(y=slice(None, None, -1))  # rows south to north (AlphaEarth-style)
    (tif,) = to_geotiff(flipped, tmp_path / "cog", times=[ds["time"].values[t]])
    with rasterio.open(tif) as src:
        assert src.transform.e < 0
        row, col = src.index(xc, yc)
        got = src.read(window=((row, row + 1), (col, col + 1)))[:, 0, 0]
    np.testing.assert_array_equal(got, ds["embedding"].isel(time=t).sel(x=xc, y=yc).values)


# GDAL on the Zarr store itself: tests/test_gdal_zarr.py (GDAL 3.12 of pyogrio's wheels).


def test_info_shows_the_provenance_of_an_embedding_store(made):
    res = runner.invoke(app, ["info", str(made["store"])])
    assert res.exit_code == 0, res.output
    digest = hashlib.sha256(made["model"].read_bytes()).hexdigest()
    assert "embedding store" in res.output
    assert digest in res.output
    assert "s2 (B02" in res.output
    assert f"dates: {made['cube'].sizes['time']}" in res.output
    assert latentcube.__version__ in res.output
    assert str(stac_item_path(made["store"])) in res.output


def test_info_refuses_an_unfinished_store_in_one_line(made, tmp_path):
    import shutil

    import zarr

    from latentcube.embedding_store import COMPLETE_ATTR

    copy = shutil.copytree(made["store"], tmp_path / "e.zarr")
    zarr.open_group(copy, mode="r+", zarr_format=3).attrs.update({COMPLETE_ATTR: False})
    res = runner.invoke(app, ["info", str(copy)])
    assert res.exit_code == 2
    assert "unfinished" in res.output and len(res.output.strip().splitlines()) == 1


def test_analysis_outputs_inherit_the_provenance_and_get_a_stac_item(made, tmp_path):
    from latentcube.analysis.runs import summarise_store

    out = summarise_store(made["store"], tmp_path / "summary.zarr", every="1M")
    attrs, source = _attrs(out), _attrs(made["store"])
    for key in ("model_sha256", "model_id", "sensors", "bands", "time_coverage_start"):
        assert attrs[key] == source[key], key
    item = json.loads(stac_item_path(out).read_text())
    assert item["properties"]["latentcube:model_sha256"] == source["model_sha256"]
    assert item["properties"]["start_datetime"] == f"{source['dates'][0]}T00:00:00Z"
    assert item["properties"]["proj:transform"] == source["spatial:transform"]
    assert "window" in item["properties"]["cube:dimensions"]


def test_a_fused_store_records_every_sensor_and_its_bands(tmp_path):
    from latentcube.bundle import default_model_path

    model_file = default_model_path() / "model.pt"
    emb = embed(tiny_cube(n_time=13, ny=16, nx=16), model_file)
    store = write_embedding(emb, tmp_path / "f.zarr")
    attrs = _attrs(store)
    assert attrs["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert attrs["model_id"] == "default_model/model.pt"
    assert (attrs["model_kind"], attrs["model_format"]) == ("fusion", "latentcube.fusion")
    assert attrs["sensors"] == ["s2", "s1"]
    assert attrs["bands"]["s1"] == ["VV", "VH"] and len(attrs["bands"]["s2"]) == 10
    assert attrs["geoemb:dimensions"] == 7


def test_a_zipped_store_gets_its_item_and_info_tells_it_from_a_zipped_cube(made, tmp_path):
    zipped = write_embedding(embed(made["cube"], made["model"]), tmp_path / "e.zarr.zip")
    item = json.loads(stac_item_path(zipped).read_text())
    assert item["assets"]["data"] == {
        "href": "./e.zarr.zip",
        "type": "application/zip",
        "title": "e.zarr.zip",
        "roles": ["data"],
    }
    res = runner.invoke(app, ["info", str(zipped)])
    assert res.exit_code == 0 and "embedding store" in res.output, res.output
    cube_zip = write_zarr(made["cube"], tmp_path / "cube.zarr.zip")
    res = runner.invoke(app, ["info", str(cube_zip)])
    assert res.exit_code == 0 and "valid latentcube cube" in res.output, res.output


def test_a_replacement_killed_before_its_item_leaves_no_item_of_the_old_store(
    made, tmp_path, monkeypatch
):
    """``--overwrite``: the old store's Item is removed before the new store is swapped
    in, so a kill between the swap and the new Item leaves no Item, never one that
    describes the replaced store; a rerun of the Item writer restores it."""
    import latentcube.inference.engine as engine
    from latentcube.store_metadata import write_stac_item

    cube_path = write_zarr(made["cube"], tmp_path / "cube.zarr")
    out = embed_to_zarr_in_process(cube_path, made["model"], tmp_path / "e.zarr", chunk=8)
    item = stac_item_path(out)
    old_item = json.loads(item.read_text())
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", build_autoencoder(made["cfg"]).eval())

    def killed(store):
        raise KeyboardInterrupt  # the process dies after the swap, before the new Item

    monkeypatch.setattr(engine, "write_stac_item", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_to_zarr_in_process(cube_path, other, out, chunk=8, overwrite=True)
    assert _attrs(out)["model_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    assert not item.exists()  # not the old store's Item
    monkeypatch.undo()
    write_stac_item(out)
    sha = {i: json.loads(i_text)["properties"]["latentcube:model_sha256"]
           for i, i_text in (("old", json.dumps(old_item)), ("new", item.read_text()))}  # fmt: skip
    assert sha["old"] == hashlib.sha256(made["model"].read_bytes()).hexdigest()
    assert sha["new"] == hashlib.sha256(other.read_bytes()).hexdigest()
