"""Fused embedding of whole cubes: dense == per-window model, flags, hidden sensors, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube.data.multisensor import extract_fusion_windows
from latentcube.fusion_inference import embed_fused
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.models.fusion import FusionConfig, FusionModel

from conftest import tiny_cube


@pytest.fixture(scope="module")
def setup():
    cube = tiny_cube(n_time=14, ny=20, nx=19, seed=3, cloud_fraction=0.3)
    # S1 missing on some dates (no acquisition within the gap) -> S2-only pixel-dates
    s1v = cube["s1_valid"].values.copy()
    s1v[7, :10] = False
    cube["s1_valid"] = (("time", "y", "x"), s1v)
    cube["s1"] = cube["s1"].where(cube["s1_valid"])
    torch.manual_seed(0)
    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes).eval()
    return cube, model


def _windows(cube):
    return extract_fusion_windows(
        cube, ("s2", "s1"), mode="consecutive", stride_t=1, stride_xy=2, max_total_gap=10_000
    )


def test_dense_equals_per_window_model(setup):
    cube, model = setup
    ds = embed_fused(cube, model, tile=256)
    w = _windows(cube)
    b = w.tensors(np.arange(len(w)))
    with torch.no_grad():
        ref = model(b).embedding.numpy()
    ws = w.windows["s2"]
    t, y, x = ws.t_idx[:, 5], ws.iy + 7, ws.ix + 7
    got = ds["embedding"].values[:, t, y, x].T
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert ds["sensors"].attrs["flag_meanings"] == "s2 s1"
    assert (ds["sensors"].values[t, y, x] & 1).all()  # S2 was valid at every window centre
    # the S2 reconstruction error is reported where S2 is valid
    assert np.isfinite(ds["recon_mae"].values[t, y, x]).all()


def test_cloudy_pixels_are_embedded_from_s1_and_flagged(setup):
    cube, model = setup
    ds = embed_fused(cube, model)
    flags = ds["sensors"].values
    inner = (slice(5, -5), slice(7, -7), slice(7, -7))
    s2v = cube["s2_valid"].values[inner]
    s1v = cube["s1_valid"].values[inner]
    f = flags[inner]
    assert ((f & 1) > 0).tolist() == s2v.tolist()
    assert ((f & 2) > 0).tolist() == s1v.tolist()
    cloudy = ~s2v & s1v
    assert cloudy.any()
    emb = ds["embedding"].values[(slice(None), *inner)]
    assert np.isfinite(emb[:, cloudy]).all()
    assert np.isnan(emb[:, ~s2v & ~s1v]).all()
    assert (ds["valid"].values[inner] == (s2v | s1v)).all()


def test_hidden_s2_equals_model_without_s2(setup):
    cube, model = setup
    ds = embed_fused(cube, model, hide=("s2",))
    w = _windows(cube)
    b = w.tensors(np.arange(len(w)))
    vis = torch.tensor([False, True]).expand(len(w), -1)
    with torch.no_grad():
        out = model(b, visible=vis)
    ws = w.windows["s2"]
    t, y, x = ws.t_idx[:, 5], ws.iy + 7, ws.ix + 7
    got = ds["embedding"].values[:, t, y, x].T
    ok = out.present[:, 1].numpy()
    np.testing.assert_allclose(got[ok], out.embedding.numpy()[ok], rtol=1e-4, atol=1e-5)
    assert not (ds["sensors"].values & 1).any()
    assert np.isfinite(ds["recon_mae"].values[t[ok], y[ok], x[ok]]).all()
    with pytest.raises(ValueError, match="cannot hide"):
        embed_fused(cube, model, hide=("s3",))


def test_tiling_does_not_change_the_result(setup):
    cube, model = setup
    a = embed_fused(cube, model, tile=256)
    b = embed_fused(cube, model, tile=4)
    np.testing.assert_allclose(
        a["embedding"].values, b["embedding"].values, rtol=1e-5, atol=1e-6, equal_nan=True
    )
    assert np.array_equal(a["sensors"].values, b["sensors"].values)


@pytest.mark.shared
def test_union_axis_embeds_s1_dates_and_keeps_s2_dates(setup, shared):
    from latentcube.cube.readers import read_worldcereal_patch

    _cube, model = setup
    folder = shared.path("worldcereal_s1_s2_training_patches_flanders", "00002806639B424A")
    crop = {"y": slice(0, 17), "x": slice(0, 17)}
    u = read_worldcereal_patch(folder, time_axis="union").isel({**crop, "time": slice(0, 45)})
    s2 = read_worldcereal_patch(folder).isel(crop)
    s2 = s2.sel(time=s2["time"] <= u["time"][-1])
    a = embed_fused(s2, model, hide=("s1",))
    b = embed_fused(u, model, hide=("s1",))
    # S2 is encoded on its own dates on either axis, so S2-only embeddings agree
    np.testing.assert_allclose(
        b["embedding"].sel(time=a["time"]).values,
        a["embedding"].values,
        rtol=1e-5,
        atol=1e-6,
        equal_nan=True,
    )
    full = embed_fused(u, model)
    s1_only = ~u["s2_valid"].any(dim=("y", "x")).values
    f = full["sensors"].values[s1_only][:, 7:-7, 7:-7]
    assert (f == 2).any() and not (f & 1).any()
    assert full.attrs["time_axis"] == "union"


def test_cube_without_s1_is_embedded_from_s2(setup):
    cube, model = setup
    s2_only = cube.drop_vars(["s1", "s1_valid", "s1_time", "s1_band"])
    ds = embed_fused(s2_only, model)
    ref = embed_fused(cube, model, hide=("s1",))
    np.testing.assert_allclose(
        ds["embedding"].values, ref["embedding"].values, rtol=0, atol=1e-6, equal_nan=True
    )
    assert ds.attrs["missing_sensors"] == "s1" and not (ds["sensors"].values & 2).any()
