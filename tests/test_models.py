"""Models: shapes, the exact dense path, the paper's size, configs, MAC counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latentcube.models.autoencoder import (
    build_autoencoder,
    count_macs,
    count_parameters,
    day_offsets,
)
from latentcube.models.config import AutoencoderConfig


def _batch(cfg, b=3, seed=0, p_invalid=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, cfg.n_dates, cfg.n_bands, cfg.window, cfg.window, generator=g)
    mask = torch.rand(b, cfg.n_dates, cfg.window, cfg.window, generator=g) > p_invalid
    x[~mask.unsqueeze(2).expand_as(x)] = float("nan")
    gaps = torch.randint(1, 15, (b, cfg.n_dates - 1), generator=g)
    return x, mask, gaps


@pytest.mark.parametrize("variant", ["paper", "fast", "tiny"])
@pytest.mark.parametrize("sensor", ["s2", "s1"])
def test_shapes_and_nan_safety(variant, sensor):
    torch.manual_seed(0)
    cfg = AutoencoderConfig.preset(variant, sensor)
    model = build_autoencoder(cfg).eval()
    x, mask, gaps = _batch(cfg)
    with torch.no_grad():
        recon, z = model(x, mask, gaps)
    assert recon.shape == x.shape
    assert z.shape == (3, 9 if sensor == "s2" else 2)
    assert torch.isfinite(recon).all() and torch.isfinite(z).all()
    assert (z >= 0).all()  # Softplus bottleneck


def test_paper_parameter_count_matches_spec():
    # spec section 4: "about 3.7 M parameters per modality AE"
    n_s2 = count_parameters(build_autoencoder(AutoencoderConfig.preset("paper", "s2")))
    n_s1 = count_parameters(build_autoencoder(AutoencoderConfig.preset("paper", "s1")))
    assert abs(n_s2 - 3.7e6) / 3.7e6 < 0.05, n_s2
    assert abs(n_s1 - 3.7e6) / 3.7e6 < 0.05, n_s1


@pytest.mark.parametrize("variant", ["fast", "tiny"])
def test_dense_equals_window_by_window(variant):
    torch.manual_seed(1)
    cfg = AutoencoderConfig.preset(variant)
    model = build_autoencoder(cfg).eval()
    t, h, w = cfg.n_dates, 29, 33
    g = torch.Generator().manual_seed(2)
    tile = torch.rand(t, cfg.n_bands, h, w, generator=g)
    valid = torch.rand(t, h, w, generator=g) > 0.25
    tile[~valid.unsqueeze(1).expand_as(tile)] = float("nan")
    gaps = torch.randint(1, 20, (1, t - 1), generator=g)
    with torch.no_grad():
        feats = model.frame_features(tile, valid)  # (T, F, h-14, w-14)
        assert feats.shape[-2:] == (h - 14, w - 14)
        # corners, edges and random interior pixels of the output
        pix = [(0, 0), (0, w - 15), (h - 15, 0), (h - 15, w - 15), (7, 3), (11, 18)]
        for iy, ix in pix:
            win = tile[:, :, iy : iy + 15, ix : ix + 15].unsqueeze(0)
            wm = valid[:, iy : iy + 15, ix : ix + 15].unsqueeze(0)
            ref = model.encode(win, wm, gaps)
            dense = model.encode_features(feats[:, :, iy, ix].unsqueeze(0), gaps)
            torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)


def test_fast_ignores_values_under_the_mask():
    cfg = AutoencoderConfig.preset("tiny")
    model = build_autoencoder(cfg).eval()
    x, mask, gaps = _batch(cfg, seed=4)
    x2 = x.clone()
    x2[~mask.unsqueeze(2).expand_as(x2)] = 123.0
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x, mask, gaps), model.encode(x2, mask, gaps))


def test_eval_is_deterministic_and_train_uses_dropout():
    cfg = AutoencoderConfig.preset("fast")
    model = build_autoencoder(cfg)
    x, mask, gaps = _batch(cfg)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode(x, mask, gaps), model.encode(x, mask, gaps))
    model.train()
    torch.manual_seed(0)
    a = model.encode(x, mask, gaps)
    b = model.encode(x, mask, gaps)
    assert not torch.equal(a, b)


def test_config_round_trip_and_validation():
    for v in ("paper", "fast", "tiny"):
        cfg = AutoencoderConfig.preset(v, "s1")
        assert AutoencoderConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValueError, match="receptive field"):
        AutoencoderConfig(variant="fast", bands=("B02",), latent_dim=2, conv_dilations=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="must be odd"):
        AutoencoderConfig(variant="tiny", bands=("B02",), latent_dim=2, n_dates=10)
    with pytest.raises(ValueError, match="unknown variant"):
        AutoencoderConfig.preset("huge")
    with pytest.raises(ValueError, match="x must be"):
        m = build_autoencoder(AutoencoderConfig.preset("tiny"))
        m(
            torch.zeros(1, 11, 9, 15, 15),
            torch.ones(1, 11, 15, 15, dtype=torch.bool),
            torch.ones(1, 10, dtype=torch.long),
        )


def test_day_offsets():
    gaps = torch.tensor([[5, 5, 10, 400]])
    np.testing.assert_array_equal(day_offsets(gaps).numpy(), [[0, 5, 10, 20, 350]])
    np.testing.assert_array_equal(day_offsets(gaps, centre=2).numpy(), [[-10, -5, 0, 10, 350]])


@pytest.mark.parametrize("variant", ["fast", "tiny"])
def test_count_macs_matches_flop_counter(variant):
    cfg = AutoencoderConfig.preset(variant)
    model = build_autoencoder(cfg).eval()
    macs = count_macs(cfg)
    h, w = 64, 48
    x = torch.rand(1, cfg.n_bands, h, w)
    m = torch.ones(1, h, w, dtype=torch.bool)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.frame_features(x, m)
    # every layer computes one output per pixel of its (shrinking) output grid
    expected, cin, shrink = 0, cfg.n_bands + 1, 0
    for cout, dil in zip(cfg.conv_channels, cfg.conv_dilations, strict=True):
        shrink += 2 * dil
        expected += cin * cout * 9 * (h - shrink) * (w - shrink)
        cin = cout
    assert fc.get_total_flops() == 2 * expected
    # per output pixel, count_macs is the tile-size-independent (amortised) cost
    n_out = (h - 14) * (w - 14)
    assert macs["spatial"] <= expected / n_out < 1.6 * macs["spatial"]
    feats = torch.rand(1, cfg.n_dates, model.feat_dim)
    gaps = torch.ones(1, cfg.n_dates - 1, dtype=torch.long)
    model.train()  # the fused eval fast path of nn.TransformerEncoderLayer is not counted
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.encode_features(feats, gaps)
    # the counter sees the projections, feed-forward and head matmuls; whether it sees the
    # attention products depends on the kernel torch picks for the head size
    counted = fc.get_total_flops() / 2
    assert counted in (macs["temporal"], macs["temporal"] - macs["attention"])


@pytest.mark.parametrize(("activation", "norm_first"), [("gelu", True), ("relu", False)])
def test_transformer_stack_equals_the_torch_encoder_built_by_hand(activation, norm_first):
    from latentcube.models.blocks import transformer_stack

    torch.manual_seed(5)
    got = transformer_stack(16, 4, 32, 0.1, 3, activation=activation, norm_first=norm_first)
    torch.manual_seed(5)
    layer = torch.nn.TransformerEncoderLayer(
        16, 4, 32, 0.1, activation=activation, batch_first=True, norm_first=norm_first
    )
    ref = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    assert len(got.layers) == 3
    assert got.layers[0].norm_first is norm_first
    assert got.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    x = torch.randn(5, 11, 16)  # batch first: (batch, tokens, width)
    with torch.no_grad():
        torch.testing.assert_close(got.eval()(x), ref.eval()(x))


def test_written_out_encoder_forward_equals_the_module():
    from latentcube.models.blocks import encoder_inference

    torch.manual_seed(0)
    for variant in ("fast", "tiny"):
        model = build_autoencoder(AutoencoderConfig.preset(variant)).eval()
        x = torch.randn(300, 11, model.config.d_model)
        with torch.no_grad():
            for stack in (model.temporal, model.dec_temporal):
                torch.testing.assert_close(
                    encoder_inference(stack, x), stack(x), atol=1e-5, rtol=1e-5
                )
        # training (with autograd) keeps the module's own forward
        model.train()
        gaps = torch.randint(1, 20, (4, 10))
        z = model.encode_tokens(torch.randn(4, 11, model.config.d_model), gaps)
        assert z.requires_grad


@pytest.mark.parametrize("variant", ["paper", "fast"])
def test_decode_centre_equals_the_centre_of_decode(variant):
    torch.manual_seed(0)
    cfg = AutoencoderConfig.preset(variant, "s2")
    model = build_autoencoder(cfg).eval()
    x, mask, gaps = _batch(cfg)
    with torch.no_grad():
        z = model.encode(x, mask, gaps)
        full = model.decode(z, gaps)[:, cfg.n_dates // 2, :, cfg.window // 2, cfg.window // 2]
        torch.testing.assert_close(model.decode_centre(z, gaps), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_decode_centre_gradients_equal_the_full_decoder(layers):
    """Frozen decoders in fusion training: the centre-only path back-propagates the same."""
    torch.manual_seed(1)
    cfg = AutoencoderConfig.preset("fast", "s2").model_copy(
        update={"decoder_layers": layers, "dropout": 0.0}
    )
    model = build_autoencoder(cfg).eval()
    _, _, gaps = _batch(cfg)
    z = torch.rand(gaps.shape[0], cfg.latent_dim, requires_grad=True)
    weights = torch.randn(gaps.shape[0], cfg.n_bands)
    full = model.decode(z, gaps)[:, cfg.n_dates // 2, :, cfg.window // 2, cfg.window // 2]
    (g_full,) = torch.autograd.grad((full * weights).sum(), z)
    centre = model.decode_centre(z, gaps)
    (g_centre,) = torch.autograd.grad((centre * weights).sum(), z)
    torch.testing.assert_close(centre, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_centre, g_full, rtol=1e-4, atol=1e-6)
    # the module path (training mode; dropout 0 here) agrees as well
    model.train()
    torch.testing.assert_close(model.decode_centre(z, gaps), full, rtol=1e-5, atol=1e-6)
