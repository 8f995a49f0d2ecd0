"""Fused embedding of whole cubes: dense == per-window model, flags, hidden sensors, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube.data.multisensor import extract_fusion_windows
from latentcube.inference import embed, embedding_dataset
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.models.fusion import FusionConfig, FusionModel

from conftest import embed_to_zarr_in_process, pretend_unfinished, tiny_cube


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
    ds = embedding_dataset(embed(cube, model, chunks=256)).compute()
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
    ds = embedding_dataset(embed(cube, model)).compute()
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
    ds = embedding_dataset(embed(cube, model, hide=("s2",))).compute()
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
        embedding_dataset(embed(cube, model, hide=("s3",))).compute()


def test_tiling_does_not_change_the_result(setup):
    cube, model = setup
    a = embedding_dataset(embed(cube, model, chunks=256)).compute()
    b = embedding_dataset(embed(cube, model, chunks=4)).compute()
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
    # the reader flags the S2 dates of the union axis
    np.testing.assert_array_equal(u["time"].values[u["s2_observed"].values], s2["time"].values)
    a = embedding_dataset(embed(s2, model, hide=("s1",))).compute()
    b = embedding_dataset(embed(u, model, hide=("s1",))).compute()
    # S2 is encoded on its own dates on either axis, so S2-only embeddings agree
    np.testing.assert_allclose(
        b["embedding"].sel(time=a["time"]).values,
        a["embedding"].values,
        rtol=1e-5,
        atol=1e-6,
        equal_nan=True,
    )
    full = embedding_dataset(embed(u, model)).compute()
    s1_only = ~u["s2_valid"].any(dim=("y", "x")).values
    f = full["sensors"].values[s1_only][:, 7:-7, 7:-7]
    assert (f == 2).any() and not (f & 1).any()
    assert full.attrs["time_axis"] == "union"


def test_cube_without_s1_is_embedded_from_s2(setup):
    cube, model = setup
    s2_only = cube.drop_vars(["s1", "s1_valid", "s1_time", "s1_band"])
    ds = embedding_dataset(embed(s2_only, model)).compute()
    ref = embedding_dataset(embed(cube, model, hide=("s1",))).compute()
    np.testing.assert_allclose(
        ds["embedding"].values, ref["embedding"].values, rtol=0, atol=1e-6, equal_nan=True
    )
    assert ds.attrs["missing_sensors"] == "s1" and not (ds["sensors"].values & 2).any()


# ----------------------------------------------------------------------------------------
# Large areas: fused bundles through embed_to_zarr (Dask), chunked in time and space


def _union(cube, s1_only=(3, 8, 9)):
    """``cube`` on a union time axis: some dates carry S1 only (S2 masked, not observed)."""
    u = cube.copy(deep=True)
    s2v = u["s2_valid"].values.copy()
    s2v[list(s1_only)] = False
    u["s2_valid"] = (("time", "y", "x"), s2v)
    u["s2"] = u["s2"].where(u["s2_valid"])
    observed = np.ones(u.sizes["time"], bool)
    observed[list(s1_only)] = False
    return u.assign_coords(s2_observed=("time", observed)).assign_attrs(time_axis="union")


@pytest.fixture(scope="module")
def stores(setup, tmp_path_factory):
    from latentcube.bundle import save_fusion_checkpoint
    from latentcube.io import write_zarr

    cube, model = setup
    root = tmp_path_factory.mktemp("fused-dask")
    bundle = save_fusion_checkpoint(root / "fused.pt", model)
    union = _union(cube)
    return {
        "bundle": bundle,
        "s2": (write_zarr(cube, root / "s2.zarr"), embedding_dataset(embed(cube, model)).compute()),
        "union": (
            write_zarr(union, root / "union.zarr"),
            embedding_dataset(embed(union, model)).compute(),
        ),
    }


def _to_zarr(src, bundle, out, chunk, time_chunk, **kw):
    from latentcube.inference import open_embedding

    path = embed_to_zarr_in_process(src, bundle, out, chunk=chunk, time_chunk=time_chunk, **kw)
    return open_embedding(path)


def _assert_same(got, ref):
    assert set(got.data_vars) == {"embedding", "valid", "sensors", "recon_mae"}
    np.testing.assert_allclose(
        got["embedding"].values, ref["embedding"].values, rtol=0, atol=1e-5, equal_nan=True
    )
    np.testing.assert_array_equal(got["sensors"].values, ref["sensors"].values)
    np.testing.assert_array_equal(got["valid"].values, ref["valid"].values)
    np.testing.assert_allclose(
        got["recon_mae"].values, ref["recon_mae"].values, rtol=0, atol=1e-5, equal_nan=True
    )


@pytest.mark.parametrize(
    ("axis", "chunk", "time_chunk"),
    [("s2", 4, 2), ("union", 4, 2), ("union", 7, 1), ("union", 64, 3)],
)
def test_dask_store_equals_in_memory_for_any_chunking(stores, tmp_path, axis, chunk, time_chunk):
    src, ref = stores[axis]
    got = _to_zarr(src, stores["bundle"], tmp_path / "e.zarr", chunk, time_chunk)
    _assert_same(got, ref)
    assert got["sensors"].attrs["flag_meanings"] == "s2 s1"
    assert got.attrs["time_axis"] == axis and got.rio.crs == ref.rio.crs
    assert got["embedding"].encoding["chunks"] == (7, 1, min(chunk, 20), min(chunk, 19))
    assert int(got["valid"].sum()) > 0


def test_union_axis_in_chunks_encodes_s2_on_its_own_dates(setup, stores, tmp_path):
    """Independent of the fused code's date bookkeeping: S2-only embeddings of the S2 dates
    of a union cube, embedded one date per chunk, equal those of the cube without the
    S1-only dates."""
    cube, model = setup
    src, _ = stores["union"]
    got = _to_zarr(src, stores["bundle"], tmp_path / "u.zarr", 5, 1, hide=("s1",))
    s2_dates = np.setdiff1d(np.arange(cube.sizes["time"]), [3, 8, 9])
    ref = embedding_dataset(embed(cube.isel(time=s2_dates), model, hide=("s1",))).compute()
    np.testing.assert_allclose(
        got["embedding"].values[:, s2_dates],
        ref["embedding"].values,
        rtol=0,
        atol=1e-5,
        equal_nan=True,
    )
    assert np.isnan(got["embedding"].values[:, [3, 8, 9]]).all()
    assert int(got["valid"].sum()) > 0 and not (got["sensors"].values & 2).any()


def test_hide_and_bad_options_on_dask(setup, stores, tmp_path):
    from latentcube.bundle import save_checkpoint
    from latentcube.errors import EmbeddingError, LatentcubeError

    cube, model = setup
    src, _ = stores["s2"]
    got = _to_zarr(src, stores["bundle"], tmp_path / "h.zarr", 6, 4, hide=("s2",))
    _assert_same(got, embedding_dataset(embed(cube, model, hide=("s2",))).compute())
    assert got.attrs["hidden_sensors"] == "s2" and not (got["sensors"].values & 1).any()
    with pytest.raises(EmbeddingError, match="cannot hide"):
        _to_zarr(src, stores["bundle"], tmp_path / "x.zarr", 6, 4, hide=("s3",))
    with pytest.raises(EmbeddingError, match="'nan' edge policy only"):
        _to_zarr(src, stores["bundle"], tmp_path / "x.zarr", 6, 4, edge="pad")
    ae = save_checkpoint(tmp_path / "s2.pt", model.autoencoder("s2"))
    with pytest.raises(EmbeddingError, match="needs a fused model"):
        _to_zarr(src, ae, tmp_path / "x.zarr", 6, 4, hide=("s1",))
    assert not (tmp_path / "x.zarr").exists()
    # an unfinished store of another --hide is not resumed with other options
    out = tmp_path / "r.zarr"
    _to_zarr(src, stores["bundle"], out, 6, 4)
    pretend_unfinished(out)
    with pytest.raises(LatentcubeError, match="unfinished run of another"):
        _to_zarr(src, stores["bundle"], out, 6, 4, hide=("s1",))


@pytest.mark.slow
def test_fused_run_killed_and_rerun_gives_a_byte_identical_store(stores, tmp_path):
    from test_embed_dask import _store_files, kill_part_way_then_rerun

    src, ref = stores["union"]
    want = _to_zarr(src, stores["bundle"], tmp_path / "ref.zarr", 5, 4)
    _assert_same(want, ref)
    out = tmp_path / "killed.zarr"  # 4 x 4 x 4 = 64 chunks
    kill_part_way_then_rerun(
        tmp_path, src, stores["bundle"], out, 64, module="latentcube.inference.fusion",
        function="embed_fused_block", sleep=0.15, chunk=5, time_chunk=4,
    )  # fmt: skip
    a, b = _store_files(tmp_path / "ref.zarr"), _store_files(out)
    assert sorted(a) == sorted(b) and sum(k.startswith("embedding/c/") for k in a) >= 10
    for rel, data in a.items():
        assert b[rel] == data, rel
