"""Inference: dense equals window by window, chunking invariance, edge policies, quality layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube import CubeError
from latentcube.data.windows import CubeArrays
from latentcube.errors import EmbeddingError
from latentcube.inference import (
    embed,
    embed_block,
    embed_windows,
    embedding_dataset,
    extended_days,
    open_embedding,
    write_embedding,
)
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


@pytest.fixture(scope="module")
def ref(model, cube):
    """The default embedding, computed once (embedding and quality layers together)."""
    return embedding_dataset(embed(cube, model)).compute()


def _window(cube, t, y, x):
    s2 = cube["s2"].values
    valid = cube["s2_valid"].values
    days = cube["time"].values.astype("datetime64[D]").astype(np.int64)
    ts = np.arange(t - 5, t + 6)
    win = s2[ts][:, :, y - 7 : y + 8, x - 7 : x + 8]
    m = valid[ts][:, y - 7 : y + 8, x - 7 : x + 8]
    return (
        torch.from_numpy(win[None]),
        torch.from_numpy(m[None]),
        torch.from_numpy(np.diff(days[ts])[None]),
    )


def _reference(model, cube, t, y, x):
    """One pixel-date embedded from an explicitly cut 11 x 15 x 15 window."""
    with torch.no_grad():
        return model.encode(*_window(cube, t, y, x))[0].numpy()


def _picks(cube, n=12, seed=0):
    rng = np.random.default_rng(seed)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    picks = [(5, 7, 7), (9, ny - 8, nx - 8), (5, 7, nx - 8), (9, ny - 8, 7)]
    return picks + [
        (int(rng.integers(5, 10)), int(rng.integers(7, ny - 7)), int(rng.integers(7, nx - 7)))
        for _ in range(n)
    ]


def test_dense_equals_explicit_windows(model, cube, ref):
    emb = ref["embedding"].values
    valid = cube["s2_valid"].values
    checked = 0
    for t, y, x in _picks(cube):
        if not valid[t, y, x]:
            assert np.isnan(emb[:, t, y, x]).all()
            continue
        np.testing.assert_allclose(emb[:, t, y, x], _reference(model, cube, t, y, x), atol=1e-5)
        checked += 1
    assert checked >= 8


def test_recon_error_is_the_centre_pixel_error_of_the_full_decoder(model, cube, ref):
    err = ref["recon_mae_s2"].values
    checked = 0
    for t, y, x in _picks(cube, seed=1):
        if not cube["s2_valid"].values[t, y, x]:
            assert np.isnan(err[t, y, x])
            continue
        x_w, m_w, g_w = _window(cube, t, y, x)
        with torch.no_grad():
            rec = model.decode(model.encode(x_w, m_w, g_w), g_w)[0, 5, :, 7, 7]
        want = float((rec - x_w[0, 5, :, 7, 7]).abs().mean())
        assert err[t, y, x] == pytest.approx(want, abs=1e-5)
        checked += 1
    assert checked >= 8


def test_dense_block_equals_window_path(model, cube):
    arr = CubeArrays.from_cube(cube)
    a, ea = embed_block(model, arr.data, arr.valid, arr.days)
    b, eb = embed_windows(model, arr.data, arr.valid, arr.days)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ea, eb, atol=1e-5)


def test_edges_and_invalid_centres_are_nan(cube, ref):
    emb = ref["embedding"].values
    assert np.isnan(emb[:, :, :7]).all() and np.isnan(emb[:, :, -7:]).all()
    assert np.isnan(emb[:, :, :, :7]).all() and np.isnan(emb[:, :, :, -7:]).all()
    assert np.isnan(emb[:, :5]).all() and np.isnan(emb[:, -5:]).all()
    inner = emb[:, 5:-5, 7:-7, 7:-7]
    inner_valid = cube["s2_valid"].values[5:-5, 7:-7, 7:-7]
    np.testing.assert_array_equal(np.isfinite(inner).all(0), inner_valid)
    np.testing.assert_array_equal(ref["valid"].values, np.isfinite(emb).all(0))
    err = ref["recon_mae_s2"].values
    np.testing.assert_array_equal(np.isfinite(err), ref["valid"].values)
    assert (err[ref["valid"].values] >= 0).all()
    assert "padded" not in ref


# chunks smaller than the context in space (7 px halo) and time (5 dates), single-pixel
# rows and columns, single dates, uneven chunks
CHUNKINGS = [
    {"time": 2, "y": 4, "x": 23},
    {"time": 15, "y": 1, "x": 23},
    {"time": 1, "y": 13, "x": 12},
    {"time": 4, "y": 6, "x": 5},
    {"time": 6, "y": 26, "x": 1},
]


@pytest.fixture(scope="module")
def one_chunk(model, cube):
    """Both edge policies computed in a single chunk."""
    return {
        edge: embedding_dataset(
            embed(cube, model, edge=edge, chunks={"time": 15, "y": 26, "x": 23})
        ).compute()
        for edge in ("nan", "pad")
    }


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=lambda c: "t{time}y{y}x{x}".format(**c))
def test_output_independent_of_chunking(model, cube, one_chunk, chunks):
    edge = "pad" if chunks["x"] < 20 else "nan"  # each policy under several chunkings
    base = one_chunk[edge]
    out = embedding_dataset(embed(cube, model, edge=edge, chunks=chunks)).compute()
    assert set(out.data_vars) == set(base.data_vars)
    for name in base.data_vars:
        a, b = out[name].values, base[name].values
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def _explicitly_padded(cube, h=7, c=5):
    """The cube's S2 arrays surrounded by h invalid pixels and c invalid dates."""
    arr = CubeArrays.from_cube(cube)
    data = np.pad(arr.data, ((c, c), (0, 0), (h, h), (h, h)), constant_values=0.0)
    valid = np.pad(arr.valid, ((c, c), (h, h), (h, h)), constant_values=False)
    gap = int(np.median(np.diff(arr.days)))
    days = np.concatenate(
        [
            arr.days[0] - gap * np.arange(c, 0, -1),
            arr.days,
            arr.days[-1] + gap * np.arange(1, c + 1),
        ]
    )
    return data, valid, days


def test_pad_policy_equals_embedding_an_explicitly_padded_cube(model, cube):
    out = embedding_dataset(
        embed(cube, model, edge="pad", chunks={"time": 4, "y": 6, "x": 5})
    ).compute()
    data, valid, days = _explicitly_padded(cube)
    np.testing.assert_array_equal(days, extended_days(CubeArrays.from_cube(cube).days, 5))
    want, want_err = embed_block(model, data, valid, days)
    want, want_err = want[:, 5:-5], want_err[5:-5]
    np.testing.assert_array_equal(np.isnan(out["embedding"].values), np.isnan(want))
    np.testing.assert_allclose(out["embedding"].values, want, atol=1e-5)
    np.testing.assert_allclose(out["recon_mae_s2"].values, want_err, atol=1e-5)
    # the corners and edges, window by window (the reference path)
    rng = np.random.default_rng(3)
    pix = np.stack(
        [rng.integers(5, 20, 120), rng.integers(0, 26, 120), rng.integers(0, 23, 120)], 1
    )
    pix = np.concatenate([pix, [[5, 0, 0], [19, 25, 22], [5, 25, 0], [19, 0, 22]]])
    win, _ = embed_windows(model, data, valid, days, pixels=pix)
    got = out["embedding"].values[:, pix[:, 0] - 5, pix[:, 1], pix[:, 2]]
    np.testing.assert_allclose(got, win[:, pix[:, 0], pix[:, 1], pix[:, 2]], atol=1e-5)
    assert np.isfinite(got).all(0).sum() > 80
    # every valid centre is embedded; "padded" flags exactly the incomplete contexts
    np.testing.assert_array_equal(out["valid"].values, cube["s2_valid"].values)
    edge = np.ones(out["valid"].shape, bool)
    edge[5:-5, 7:-7, 7:-7] = False
    np.testing.assert_array_equal(out["padded"].values, edge & cube["s2_valid"].values)


def test_pad_and_nan_policies_agree_where_the_context_is_complete(model, cube, ref):
    pad = embedding_dataset(embed(cube, model, edge="pad")).compute()
    full = ~pad["padded"].values
    a, b = pad["embedding"].values[:, full], ref["embedding"].values[:, full]
    np.testing.assert_array_equal(a, b)
    assert np.isnan(ref["embedding"].values[:, pad["padded"].values]).all()


def test_embed_is_lazy_for_dask_backed_cubes(cube):
    torch.manual_seed(0)
    net = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    calls = []
    real = net.frame_features
    net.frame_features = lambda *a: calls.append(1) or real(*a)  # type: ignore[method-assign]
    emb = embed(
        cube.chunk({"time": 5, "y": 13, "x": 12}), net, chunks={"time": 7, "y": 13, "x": 12}
    )
    assert calls == [] and emb.chunks is not None
    assert emb.coords["valid"].chunks is not None
    assert emb.chunks[1:] == ((7, 7, 1), (13, 13), (12, 11))
    emb.isel(time=slice(0, 7), y=slice(0, 13), x=slice(0, 12)).compute()
    assert 0 < len(calls) <= 7 + 10  # one chunk: its dates plus the 5-date halo on each side


def test_output_grid_names_and_metadata(model, cube):
    emb = embed(cube, model)
    assert emb.name == "embedding"
    assert emb.dims == ("feature", "time", "y", "x")
    assert list(emb["feature"].values) == [f"F{i:02d}" for i in range(1, 10)]
    assert emb.rio.crs == cube.rio.crs
    np.testing.assert_array_equal(emb["x"].values, cube["x"].values)
    np.testing.assert_array_equal(emb["time"].values, cube["time"].values)
    assert AutoencoderConfig.model_validate_json(emb.attrs["model_config"]) == model.config
    assert emb.attrs["edge_policy"] == "nan"
    assert {"valid", "recon_mae_s2"} <= set(emb.coords)


def test_bad_options_and_bands_raise_clear_errors(model, cube):
    with pytest.raises(CubeError, match="lacks band"):
        embed(cube.sel(band=["B02", "B03"]), model)
    with pytest.raises(EmbeddingError, match="edge must be one of"):
        embed(cube, model, edge="mirror")  # type: ignore[arg-type]
    with pytest.raises(EmbeddingError, match="positive integer"):
        embed(cube, model, chunks={"time": 0})
    with pytest.raises(EmbeddingError, match="unknown dimensions"):
        embed(cube, model, chunks={"band": 2})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_write_open_round_trip(model, cube, ref, tmp_path, dtype):
    path = write_embedding(
        embed(cube, model, edge="pad", chunks=10), tmp_path / "e.zarr", dtype=dtype
    )
    back = open_embedding(path)
    assert back.rio.crs == cube.rio.crs and back["embedding"].dtype == np.float32
    assert set(back.data_vars) == {"embedding", "valid", "recon_mae_s2", "padded"}
    assert back["embedding"].encoding["chunks"] == (9, 1, 10, 10)
    assert back["valid"].encoding["chunks"] == (1, 10, 10)
    assert back.attrs["edge_policy"] == "pad"
    tol = 1e-6 if dtype == "float32" else 2e-3  # another chunking: float rounding
    full = ~back["padded"].values
    np.testing.assert_allclose(
        back["embedding"].values[:, full], ref["embedding"].values[:, full], atol=tol, rtol=tol
    )
    with pytest.raises(FileExistsError):
        write_embedding(ref, path)
    with pytest.raises(EmbeddingError, match="dtype"):
        write_embedding(ref, tmp_path / "x.zarr", dtype="int8")


def test_dense_block_with_selected_centres_skips_the_others(model, cube):
    arr = CubeArrays.from_cube(cube)
    full, full_err = embed_block(model, arr.data, arr.valid, arr.days)
    some = [5, 7, 8]
    part, part_err = embed_block(model, arr.data, arr.valid, arr.days, centres=some)
    np.testing.assert_array_equal(part[:, some], full[:, some])
    np.testing.assert_array_equal(part_err[some], full_err[some])
    rest = [t for t in range(arr.data.shape[0]) if t not in some]
    assert np.isnan(part[:, rest]).all() and np.isnan(part_err[rest]).all()
