"""The ``.latentcube`` xarray accessor: registered on import, PCA-RGB and GeoTIFF export."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from latentcube.errors import EmbeddingError
from latentcube.inference import embed, open_embedding, write_embedding
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.plotting import pca_rgb

from conftest import tiny_cube


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    cube = tiny_cube(n_time=13, ny=20, nx=18, seed=4)
    return write_embedding(embed(cube, model), tmp_path_factory.mktemp("acc") / "e.zarr")


def test_registered_on_import_of_latentcube():
    code = (
        "import latentcube, xarray as xr; "
        "print(hasattr(xr.Dataset, 'latentcube'), hasattr(xr.DataArray, 'latentcube'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_pca_rgb_on_dataset_and_dataarray(store):
    ds = open_embedding(store)
    rgb = ds.latentcube.pca_rgb()
    assert rgb.dims == ("time", "y", "x", "rgb") and rgb.rio.crs == ds.rio.crs
    np.testing.assert_array_equal(rgb.values, pca_rgb(ds["embedding"].values), strict=True)
    one = ds["embedding"].latentcube.pca_rgb(time=6)
    np.testing.assert_array_equal(one.values, rgb.values[6])
    assert np.isnan(one.values[:7]).all() and np.isfinite(one.values[7:-7, 7:-7]).any()
    by_date = ds.latentcube.pca_rgb(time=str(ds["time"].values[6])[:10])
    np.testing.assert_array_equal(by_date.values, one.values)
    with pytest.raises(EmbeddingError, match="no 'embedding'"):
        xr.Dataset({"a": ("x", [1.0])}).latentcube.pca_rgb()


@pytest.mark.parametrize("by", ["date", "feature"])
def test_to_geotiff_writes_cogs_that_read_back_equal(store, tmp_path, by):
    import rasterio

    ds = open_embedding(store)
    files = ds.latentcube.to_geotiff(tmp_path / "tif", by=by, times=ds["time"].values[4:8])
    assert len(files) == (4 if by == "date" else 9)
    emb = ds["embedding"].isel(time=slice(4, 8)).values
    for i, f in enumerate(files):
        with rasterio.open(f) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert src.crs.to_epsg() == 32631
            assert src.transform == ds.rio.transform()
            got = src.read()
            want = emb[:, i] if by == "date" else emb[i]
            np.testing.assert_array_equal(got, want)
            if by == "date":
                assert src.descriptions == tuple(f"F{k:02d}" for k in range(1, 10))
                assert f.name == f"embedding_{str(ds['time'].values[4 + i])[:10]}.tif"
            else:
                assert src.descriptions[0] == str(ds["time"].values[4])[:10]
                assert f.name == f"embedding_F{i + 1:02d}.tif"
    with pytest.raises(FileExistsError):
        ds.latentcube.to_geotiff(tmp_path / "tif", by=by, times=ds["time"].values[4:8])
    with pytest.raises(EmbeddingError, match="by must be"):
        ds.latentcube.to_geotiff(tmp_path / "x", by="band")  # type: ignore[arg-type]
