"""The fusion model: shapes, masking of absent sensors, loss = weighted sum, modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentcube.data.batch import SensorBatch
from latentcube.data.multisensor import extract_fusion_windows, split_fusion_windows
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.fusion import (
    FusionConfig,
    FusionLoss,
    FusionModel,
    FusionOutput,
    drop_sensors,
)
from latentcube.models.losses import ContextLoss

from conftest import tiny_cube


def _aes(seed=0):
    torch.manual_seed(seed)
    return {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}


def _model(seed=0, **kw):
    aes = _aes(seed)
    torch.manual_seed(seed + 1)
    return FusionModel(FusionConfig.for_autoencoders(aes, **kw), aes)


def _batch(n=6, seed=0):
    cube = tiny_cube(n_time=16, ny=20, nx=20, seed=seed)
    w = extract_fusion_windows(cube, ("s2", "s1"), mode="consecutive", stride_t=2, stride_xy=2)
    return w.tensors(np.arange(min(n, len(w))))


def test_shapes_and_non_negative_embedding():
    model = _model().eval()
    b = _batch()
    out = model(b)
    n = b["s2"].x.shape[0]
    assert out.embedding.shape == (n, 7)
    assert (out.embedding >= 0).all()
    assert out.present.shape == (n, 2) and out.present.all()
    assert out.recon["s2"].shape == b["s2"].x.shape
    assert out.recon["s1"].shape == b["s1"].x.shape
    assert out.latents["s2"].shape == (n, 9) and out.latents["s1"].shape == (n, 2)
    # the paper's fusion sizes: d=128, 2 pre-norm layers, 4 heads, FF 256
    layer = model.fuser.layers[0]
    assert layer.norm_first and layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 256 and len(model.fuser.layers) == 2


def test_absent_sensor_has_no_influence():
    model = _model().eval()
    b = _batch()
    hide_s1 = torch.tensor([True, False]).expand(b["s2"].x.shape[0], -1)
    ref = model(b, visible=hide_s1).embedding
    # any change to the hidden sensor's data, latent or offset leaves the embedding alone
    b2 = dict(b)
    s1 = b["s1"]
    b2["s1"] = SensorBatch(torch.rand_like(s1.x), s1.mask, s1.gaps, s1.offset + 17)
    out = model(b2, visible=hide_s1)
    torch.testing.assert_close(out.embedding, ref, rtol=0, atol=1e-6)
    assert not out.present[:, 1].any()
    # with no sensor at all the embedding is NaN, not garbage
    none = torch.zeros_like(hide_s1)
    assert torch.isnan(model(b, visible=none).embedding).all()
    # an invalid centre pixel means the sensor is absent
    m = s1.mask.clone()
    m[:, m.shape[1] // 2, 7, 7] = False
    b2["s1"] = SensorBatch(s1.x, m, s1.gaps, s1.offset)
    torch.testing.assert_close(model(b2).embedding, ref, rtol=0, atol=1e-6)


def test_offset_embedding_is_used():
    model = _model().eval()
    b = _batch()
    s1 = b["s1"]
    b2 = {**b, "s1": SensorBatch(s1.x, s1.mask, s1.gaps, s1.offset + 5)}
    assert not torch.allclose(model(b).embedding, model(b2).embedding)


@pytest.mark.parametrize("weights", [{}, {"s2": 0.8, "s1": 0.2}])
def test_loss_is_weighted_sum_of_stage1_losses(weights):
    model = _model(loss_weights=weights).eval()
    b = _batch()
    torch.set_grad_enabled(False)
    try:
        _check_weighted_sum(model, b, weights)
    finally:
        torch.set_grad_enabled(True)


def _check_weighted_sum(model, b, weights):
    out = model(b)
    total, parts = FusionLoss(model.config)(out, b)
    w = weights or {"s2": 0.5, "s1": 0.5}
    expect = 0.0
    for s in ("s2", "s1"):
        # independent path: decode the head's latent with the stage-1 decoder, stage-1 loss
        recon = model.autoencoders[s].decode(model.heads[s](out.embedding), b[s].gaps)
        ls, _ = ContextLoss(LossConfig.for_sensor(s))(recon, b[s].x, b[s].mask)
        assert float(parts[f"loss_{s}"]) == pytest.approx(float(ls), rel=1e-6)
        expect += w[s] * float(ls)
    assert float(total) == pytest.approx(expect, rel=1e-6)
    assert LossConfig.for_sensor("s1").lambda_sam == 0  # S1 keeps its own stage-1 weights


def test_config_validation():
    with pytest.raises(ValueError, match="latent_dims"):
        FusionConfig(sensors=("s2", "s1"), latent_dims={"s2": 9})
    with pytest.raises(ValueError, match="not one of"):
        FusionConfig(sensors=("s2",), latent_dims={"s2": 9}, loss_weights={"s1": 1.0})
    cfg = FusionConfig(sensors=("s2", "s1", "x"), latent_dims={"s2": 9, "s1": 2, "x": 1})
    assert cfg.weight("x") == pytest.approx(1 / 3)
    aes = _aes()
    with pytest.raises(ValueError, match="latent"):
        FusionModel(FusionConfig(sensors=("s2", "s1"), latent_dims={"s2": 3, "s1": 2}), aes)


def test_drop_sensors_keeps_one():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(2000, 3, generator=g) > 0.3
    keep = drop_sensors(present, 0.9, g)
    assert not (keep & ~present).any()
    assert (keep.any(1) == present.any(1)).all()
    assert keep.sum() < 0.5 * present.sum()
    assert torch.equal(drop_sensors(present, 0.0), present)


def test_split_matches_stage1_split():
    from latentcube.data.windows import split_windows

    cube = tiny_cube(n_time=22, ny=40, nx=40)
    tr, va = split_fusion_windows([cube], ("s2", "s1"), seed=3)
    tr1, va1 = split_windows([cube], "s2", seed=3)
    assert np.array_equal(tr.windows["s2"].t_idx, tr1.t_idx)
    assert np.array_equal(va.windows["s1"].iy, va1.iy)
    b = tr.batch(np.arange(4))
    assert (b["s1"]["offset"] == 1).all()  # tiny_cube's S1 is acquired one day after S2
    assert (b["s2"]["offset"] == 0).all()


def _window(centre, valid):
    """A (B, 3, C, 3, 3) window with ``centre`` (B, C) at its centre pixel and date."""
    centre = torch.tensor(centre)
    b, c = centre.shape
    x = torch.full((b, 3, c, 3, 3), 0.9)
    x[:, 1, :, 1, 1] = centre
    mask = torch.ones(b, 3, 3, 3, dtype=torch.bool)
    mask[:, 1, 1, 1] = torch.tensor(valid)
    x[:, 1, :, 1, 1][~torch.tensor(valid)] = float("nan")
    return SensorBatch(x, mask, torch.ones(b, 2), torch.zeros(b))


def test_centre_objective_loss_by_hand():
    cfg = FusionConfig(sensors=("s2", "s1"), latent_dims={"s2": 9, "s1": 2}, objective="centre")
    # sample 0: both sensors; sample 1: S2 centre invalid (S1 only); sample 2: nothing
    batch = {
        "s2": _window([[0.3, 0.4], [0.5, 0.5], [0.1, 0.1]], [True, False, False]),
        "s1": _window([[0.4], [0.9], [0.2]], [True, True, False]),
    }
    out = FusionOutput(
        embedding=torch.zeros(3, 7),
        present=torch.tensor([[True, True], [False, True], [False, False]]),
        recon={},
        latents={},
        centre={
            "s2": torch.tensor([[0.2, 0.4], [0.0, 0.0], [0.7, 0.7]]),
            "s1": torch.tensor([[0.5], [0.7], [0.0]]),
        },
    )
    total, parts = FusionLoss(cfg)(out, batch)
    # S2: only sample 0 counts; |errors| 0.1 and 0, band mean 0.05;
    # angle between (0.2, 0.4) and (0.3, 0.4): cos = 0.22 / (sqrt(0.2) * 0.5)
    s2 = (0.665 + 1.75) * 0.05 + 0.315 * math.acos(0.22 / (math.sqrt(0.2) * 0.5))
    # S1 (1 band, no angle, lambda_mae 1, lambda_center 1.5): samples 0 and 1, errors 0.1, 0.2
    s1 = (1.0 + 1.5) * 0.15
    assert float(parts["loss_s2"]) == pytest.approx(s2, rel=1e-5)
    assert float(parts["loss_s1"]) == pytest.approx(s1, rel=1e-5)
    assert float(parts["centre_mae_s2"]) == pytest.approx(0.05, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * s2 + 0.5 * s1, rel=1e-5)


def test_centre_objective_decodes_only_the_centre():
    b = _batch()
    ctx = _model(seed=3).eval()
    cen = _model(seed=3, objective="centre").eval()
    cen.load_state_dict(ctx.state_dict())
    out_ctx, out_cen = ctx(b), cen(b)
    assert out_cen.recon == {} and set(out_cen.centre) == {"s2", "s1"}
    for s in ("s2", "s1"):
        torch.testing.assert_close(out_cen.centre[s], out_ctx.centre_recon(s), rtol=1e-5, atol=1e-6)
    # frozen mode: the gradient of the centre loss reaches the fusion layers only
    cen.train()
    total, _ = FusionLoss(cen.config)(cen(b), b)
    total.backward()
    assert all(p.grad is None for p in cen.autoencoders.parameters())
    assert cen.to_embedding.weight.grad is not None
    assert float(cen.to_embedding.weight.grad.abs().sum()) > 0
