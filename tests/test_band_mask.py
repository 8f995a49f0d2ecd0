"""Band-mask models: any subset of the model's bands in, absent bands out of the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube import CubeError
from latentcube.cube.schema import band_positions, expand_bands
from latentcube.data.streaming import StreamingWindows
from latentcube.data.windows import CubeArrays, extract_windows
from latentcube.inference import embed, embed_block, embed_windows, embedding_dataset
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.losses import ContextLoss, centre_abs_error
from latentcube.sensors import S2_BANDS

from conftest import tiny_cube

SUBSET = ("B05", "B06", "B07", "B8A", "B11", "B12")  # the 20 m WorldCereal patches


def _config(**kw):
    base = AutoencoderConfig.preset("tiny")
    return AutoencoderConfig.model_validate({**base.model_dump(), "band_mask": True, **kw})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_autoencoder(_config()).eval()


def test_presets_dump_as_before():
    """Configs without a band mask dump without the new fields (identities unchanged)."""
    dump = AutoencoderConfig.preset("fast").model_dump()
    assert not {"band_mask", "band_dropout", "min_bands"} & set(dump)
    cfg = _config(band_dropout=0.5)
    assert AutoencoderConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ValueError, match="band_dropout needs band_mask"):
        AutoencoderConfig.model_validate(
            {**AutoencoderConfig.preset("tiny").model_dump(), "band_dropout": 0.2}
        )


def test_loss_ignores_absent_bands_like_the_loss_without_them():
    """An all-NaN band gives the loss of the same tensors with that band removed."""
    g = torch.Generator().manual_seed(3)
    b, t, c, w = 4, 11, 10, 15
    recon = torch.rand(b, t, c, w, w, generator=g)
    target = torch.rand(b, t, c, w, w, generator=g)
    mask = torch.rand(b, t, w, w, generator=g) > 0.3
    absent = [0, 3, 6]
    keep = [k for k in range(c) if k not in absent]
    target_nan = target.clone()
    target_nan[:, :, absent] = float("nan")
    target_nan = torch.where(mask[:, :, None], target_nan, torch.nan)
    loss = ContextLoss(LossConfig())
    got, parts = loss(recon, target_nan, mask)
    want, wparts = loss(
        recon[:, :, keep], torch.where(mask[:, :, None], target, 0)[:, :, keep], mask
    )
    for k in ("mae", "sam", "ssim", "center"):
        torch.testing.assert_close(parts[k], wparts[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    s, n = centre_abs_error(recon, target_nan, mask)
    ctr = mask[:, t // 2, w // 2, w // 2]
    ref = (recon[:, t // 2, keep, 7, 7] - target[:, t // 2, keep, 7, 7]).abs().mean(1)
    assert int(n) == int(ctr.sum())
    assert float(s) == pytest.approx(float(ref[ctr].sum()), rel=1e-6)


def test_band_positions_and_refusal():
    assert band_positions(["B11", "B05"], ["B05", "B08", "B11"], min_bands=2) == [1, None, 0]
    with pytest.raises(CubeError, match=r"has 1 of the model's 3 bands .*lacks \['B08', 'B11'\]"):
        band_positions(["B05"], ["B05", "B08", "B11"], min_bands=2, where="x.zarr")
    with pytest.raises(CubeError, match=r"lacks band\(s\) \['B08'\]"):
        band_positions(["B05", "B11"], ["B05", "B08", "B11"])
    a = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    out = expand_bands(a, [1, None, 0], axis=1)
    assert np.isnan(out[:, 1]).all()
    np.testing.assert_array_equal(out[:, 0], a[:, 1])
    np.testing.assert_array_equal(out[:, 2], a[:, 0])


def test_band_dropout_hides_bands_but_keeps_min_bands():
    cfg = _config(band_dropout=1.0, min_bands=4)
    net = build_autoencoder(cfg).train()
    x = torch.rand(64, 11, 10, 15, 15)
    torch.manual_seed(1)
    out = net.drop_bands(x)
    gone = torch.isnan(out).all(dim=(1, 3, 4))  # (B, C) dropped bands
    kept = (~gone).sum(dim=1)
    assert int(kept.min()) >= 4 and int(kept.max()) <= 9
    assert len(set(kept.tolist())) > 1  # the number kept varies
    np.testing.assert_array_equal(out[~torch.isnan(out)], x[~torch.isnan(out)])
    torch.manual_seed(1)
    torch.testing.assert_close(net.drop_bands(x), out, equal_nan=True)
    m, g = torch.ones(2, 11, 15, 15, dtype=bool), torch.ones(2, 10)
    assert net.eval().encode(x[:2], m, g).isfinite().all()


def test_subset_cube_embeds_dense_equal_to_windows_and_records_bands(model):
    full = tiny_cube(n_time=13, ny=20, nx=19, seed=4, with_s1=False, cloud_fraction=0.2)
    sub = full.sel(band=list(SUBSET))
    ds = embedding_dataset(embed(sub, model)).compute()
    assert ds.attrs["bands_present"] == ",".join(SUBSET)
    assert ds.attrs["bands_absent"] == "B02,B03,B04,B08"
    arr = CubeArrays.from_cube(sub, "s2", S2_BANDS, min_bands=3)
    assert np.isnan(arr.data[:, [0, 1, 2, 6]]).all()
    days = full["time"].values.astype("datetime64[D]").astype(np.int64)
    e_d, r_d = embed_block(model, arr.data, arr.valid, days)
    e_w, r_w = embed_windows(model, arr.data, arr.valid, days)
    np.testing.assert_allclose(e_d, e_w, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(r_d, r_w, atol=1e-5, equal_nan=True)
    emb = ds["embedding"].values[:, :, 7:-7, 7:-7]
    np.testing.assert_allclose(emb, e_d, atol=1e-5, equal_nan=True)
    ok = np.isfinite(r_d)
    assert ok.any() and np.isfinite(e_d[:, ok]).all()
    # the absent bands' values do not matter: the model never sees them
    emb_full = embedding_dataset(embed(full, model)).compute()["embedding"].values
    assert np.nanmax(np.abs(emb_full - ds["embedding"].values)) > 1e-4


def test_too_few_bands_refused_in_one_line(model):
    cube = tiny_cube(n_time=13, ny=20, nx=19, seed=4, with_s1=False).sel(band=["B05", "B12"])
    with pytest.raises(CubeError, match=r"has 2 of the model's 10 bands") as err:
        embed(cube, model)
    assert "\n" not in str(err.value)
    full_band = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    with pytest.raises(CubeError, match="lacks band"):
        embed(cube, full_band)


def test_streaming_fills_absent_bands_like_memory(tmp_path):
    sub = tiny_cube(n_time=14, ny=24, nx=20, seed=5, with_s1=False).sel(band=list(SUBSET))
    store = write_zarr(sub, tmp_path / "sub.zarr")
    opts = {"mode": "consecutive", "stride_t": 3, "stride_xy": 4}
    sw = StreamingWindows([store], index_dir=tmp_path, bands=S2_BANDS, min_bands=3, **opts)
    mem = extract_windows(
        CubeArrays.from_cube(sub, "s2", S2_BANDS, min_bands=3),
        mode="consecutive",
        stride_t=3,
        stride_xy=4,
    )
    assert len(sw) == len(mem) > 0
    idx = np.arange(len(sw))
    for a, b in zip(sw.batch(idx), mem.batch(idx), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CubeError, match="no band"):
        StreamingWindows([store], index_dir=tmp_path, bands=S2_BANDS, **opts).batch(idx[:1])
    few = StreamingWindows([store], index_dir=tmp_path, bands=S2_BANDS, min_bands=7, **opts)
    with pytest.raises(CubeError, match="has 6 of the model's 10 bands"):
        few.batch(idx[:1])


def test_embed_to_zarr_on_a_subset_store_equals_memory(model, tmp_path):
    """The task path (workers reopen the store, read the present bands) agrees with memory."""
    from latentcube.bundle import save_checkpoint
    from latentcube.inference import open_embedding

    from conftest import embed_to_zarr_in_process

    sub = tiny_cube(n_time=13, ny=20, nx=19, seed=6, with_s1=False).sel(band=list(SUBSET))
    store = write_zarr(sub, tmp_path / "sub.zarr")
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    embed_to_zarr_in_process(store, ckpt, tmp_path / "emb.zarr", chunk=10, time_chunk=5)
    got = open_embedding(tmp_path / "emb.zarr")
    want = embedding_dataset(embed(sub, model)).compute()
    np.testing.assert_allclose(
        got["embedding"].values, want["embedding"].values, atol=1e-5, equal_nan=True
    )
    assert got.attrs["bands_absent"] == "B02,B03,B04,B08"


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_train_cli_trains_a_band_mask_model_on_cubes_lacking_bands(tmp_path, data):
    """``latentcube train`` with a ``band_mask`` recipe keeps all the model's bands and
    trains on a cube that lacks four of them beside a full one (in memory and streamed);
    the same cubes without the band mask train a model on the six common bands only."""
    import yaml
    from typer.testing import CliRunner

    from latentcube.bundle import ModelBundle
    from latentcube.cli import app

    full = tiny_cube(n_time=24, ny=24, nx=24, seed=1, with_s1=False)
    part = tiny_cube(n_time=24, ny=24, nx=24, seed=2, with_s1=False).sel(band=list(SUBSET))
    paths = [write_zarr(c, tmp_path / f"{n}.zarr") for n, c in (("full", full), ("part", part))]
    recipe = tmp_path / "mask.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"variant": "tiny", "band_mask": True}}))
    common = ["--max-epochs", "1", "--no-progress", "--data", data, "--workers", "0"]
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", *map(str, paths), "--model", str(recipe), "-o", str(tmp_path / "m"),
              *common],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    bundle = ModelBundle.load(tmp_path / "m")
    assert bundle.model.config.band_mask and bundle.bands["s2"] == tuple(S2_BANDS)
    res = runner.invoke(
        app, ["train", *map(str, paths), "--model", "tiny", "-o", str(tmp_path / "p"), *common]
    )
    assert res.exit_code == 0, res.output
    assert ModelBundle.load(tmp_path / "p").bands["s2"] == SUBSET
