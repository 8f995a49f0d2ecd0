"""Inference: dense equals window by window, tiling invariance, edges, Zarr round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube import CubeError
from latentcube.data.windows import CubeArrays
from latentcube.inference import embed, embed_block, embed_windows, open_embedding, write_embedding
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig

from conftest import tiny_cube


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_autoencoder(AutoencoderConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def cube():
    return tiny_cube(n_time=15, ny=26, nx=23, seed=2, cloud_fraction=0.2)


def _reference(model, cube, t, y, x):
    """One pixel-date embedded from an explicitly cut 11 x 15 x 15 window."""
    s2 = cube["s2"].values
    valid = cube["s2_valid"].values
    days = cube["time"].values.astype("datetime64[D]").astype(np.int64)
    ts = np.arange(t - 5, t + 6)
    win = s2[ts][:, :, y - 7 : y + 8, x - 7 : x + 8]
    m = valid[ts][:, y - 7 : y + 8, x - 7 : x + 8]
    gaps = np.diff(days[ts])
    with torch.no_grad():
        z = model.encode(
            torch.from_numpy(win[None]), torch.from_numpy(m[None]), torch.from_numpy(gaps[None])
        )
    return z[0].numpy()


def test_dense_equals_explicit_windows(model, cube):
    ds = embed(cube, model)
    emb = ds["embedding"].values
    valid = cube["s2_valid"].values
    rng = np.random.default_rng(0)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    picks = [(5, 7, 7), (9, ny - 8, nx - 8), (5, 7, nx - 8), (9, ny - 8, 7)]
    picks += [
        (int(rng.integers(5, 10)), int(rng.integers(7, ny - 7)), int(rng.integers(7, nx - 7)))
        for _ in range(12)
    ]
    checked = 0
    for t, y, x in picks:
        if not valid[t, y, x]:
            assert np.isnan(emb[:, t, y, x]).all()
            continue
        np.testing.assert_allclose(emb[:, t, y, x], _reference(model, cube, t, y, x), atol=1e-5)
        checked += 1
    assert checked >= 8


def test_dense_block_equals_window_path(model, cube):
    arr = CubeArrays.from_cube(cube)
    a, ea = embed_block(model, arr.data, arr.valid, arr.days)
    b, eb = embed_windows(model, arr.data, arr.valid, arr.days)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ea, eb, atol=1e-5)


def test_edges_and_invalid_centres_are_nan(model, cube):
    ds = embed(cube, model)
    emb = ds["embedding"].values
    assert np.isnan(emb[:, :, :7]).all() and np.isnan(emb[:, :, -7:]).all()
    assert np.isnan(emb[:, :, :, :7]).all() and np.isnan(emb[:, :, :, -7:]).all()
    assert np.isnan(emb[:, :5]).all() and np.isnan(emb[:, -5:]).all()
    inner = emb[:, 5:-5, 7:-7, 7:-7]
    inner_valid = cube["s2_valid"].values[5:-5, 7:-7, 7:-7]
    np.testing.assert_array_equal(np.isfinite(inner).all(0), inner_valid)
    np.testing.assert_array_equal(ds["valid"].values, np.isfinite(emb).all(0))
    assert (ds["recon_mae"].values[ds["valid"].values] >= 0).all()


@pytest.mark.parametrize("tile", [1, 4, 9, 15, 100])
def test_output_independent_of_tiling(model, cube, tile):
    ref = embed(cube, model, tile=256)["embedding"].values
    out = embed(cube, model, tile=tile)["embedding"].values
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


def test_output_grid_and_metadata(model, cube):
    ds = embed(cube, model)
    assert ds["embedding"].dims == ("feature", "time", "y", "x")
    assert list(ds["feature"].values) == [f"F{i:02d}" for i in range(1, 10)]
    assert ds.rio.crs == cube.rio.crs
    np.testing.assert_array_equal(ds["x"].values, cube["x"].values)
    np.testing.assert_array_equal(ds["time"].values, cube["time"].values)
    assert AutoencoderConfig.model_validate_json(ds.attrs["model_config"]) == model.config


def test_embed_validates_bands(model, cube):
    with pytest.raises(CubeError, match="lacks band"):
        embed(cube.sel(band=["B02", "B03"]), model)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_write_open_round_trip(model, cube, tmp_path, dtype):
    ds = embed(cube, model)
    path = write_embedding(ds, tmp_path / "e.zarr", dtype=dtype)
    back = open_embedding(path)
    assert back.rio.crs == cube.rio.crs and back["embedding"].dtype == np.float32
    tol = 1e-7 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(back["embedding"].values, ds["embedding"].values, atol=tol, rtol=tol)
    with pytest.raises(FileExistsError):
        write_embedding(ds, path)
