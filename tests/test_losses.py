"""The context loss against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentcube.models.config import LossConfig
from latentcube.models.losses import ContextLoss, centre_mae, context_weights, ssim, ssim_map


def _hand_weights(t_n, w_n):
    """The spec's weights written out with loops (independent of the implementation)."""
    w = np.zeros((t_n, w_n, w_n))
    c, tc = w_n // 2, t_n // 2
    for t in range(t_n):
        for y in range(w_n):
            for x in range(w_n):
                d = max(abs(y - c), abs(x - c))
                sp = 1.0 if d == 0 else 0.01 * 0.1 ** (d - 1)
                w[t, y, x] = sp * 0.1 ** abs(t - tc)
    return w


def test_weights_by_hand():
    w = context_weights(3, 5).numpy()
    np.testing.assert_allclose(w, _hand_weights(3, 5), rtol=1e-6)
    # centre date: 1 + 8 * 0.01 + 16 * 0.001 ; neighbours: 0.1 of that
    assert w.sum() == pytest.approx((1 + 0.08 + 0.016) * 1.2, rel=1e-6)


def test_masked_mae_by_hand():
    rng = np.random.default_rng(0)
    t_n, c_n, w_n = 3, 2, 3
    recon = rng.random((1, t_n, c_n, w_n, w_n))
    target = rng.random((1, t_n, c_n, w_n, w_n))
    mask = rng.random((1, t_n, w_n, w_n)) > 0.3
    mask[0, 1, 1, 1] = True
    target_nan = np.where(mask[:, :, None], target, np.nan)
    hw = _hand_weights(t_n, w_n) * mask[0]
    hw /= hw.sum()
    expected = 0.0
    for t in range(t_n):
        for y in range(w_n):
            for x in range(w_n):
                if mask[0, t, y, x]:
                    err = np.mean(np.abs(recon[0, t, :, y, x] - target[0, t, :, y, x]))
                    expected += hw[t, y, x] * err
    centre = np.mean(np.abs(recon[0, 1, :, 1, 1] - target[0, 1, :, 1, 1]))
    loss = ContextLoss(LossConfig(lambda_mae=1, lambda_sam=0, lambda_ssim=0, lambda_center=2))
    total, parts = loss(
        torch.tensor(recon, dtype=torch.float32),
        torch.tensor(target_nan, dtype=torch.float32),
        torch.tensor(mask),
    )
    assert parts["mae"].item() == pytest.approx(expected, rel=1e-5)
    assert parts["center"].item() == pytest.approx(centre, rel=1e-5)
    assert total.item() == pytest.approx(expected + 2 * centre, rel=1e-5)


def test_sam_of_orthogonal_vectors_is_right_angle():
    recon = torch.zeros(2, 3, 2, 3, 3)
    recon[:, :, 0] = 0.5
    target = torch.zeros(2, 3, 2, 3, 3)
    target[:, :, 1] = 0.3
    mask = torch.ones(2, 3, 3, 3, dtype=torch.bool)
    _, parts = ContextLoss()(recon, target, mask)
    assert parts["sam"].item() == pytest.approx(math.pi / 2, rel=1e-4)


def test_ssim_of_constant_images_by_hand():
    a = torch.full((1, 1, 15, 15), 0.2, dtype=torch.float64)
    b = torch.full((1, 1, 15, 15), 0.4, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_centre_mae_skips_invalid_centres():
    recon = torch.zeros(2, 3, 1, 3, 3)
    target = torch.ones(2, 3, 1, 3, 3)
    mask = torch.ones(2, 3, 3, 3, dtype=torch.bool)
    mask[1, 1, 1, 1] = False
    target[1, 1, 0, 1, 1] = float("nan")
    assert centre_mae(recon, target, mask).item() == pytest.approx(1.0)


def test_fully_masked_window_is_finite_and_has_no_gradient():
    recon = torch.rand(2, 11, 10, 15, 15, requires_grad=True)
    target = torch.rand(2, 11, 10, 15, 15)
    mask = torch.ones(2, 11, 15, 15, dtype=torch.bool)
    mask[1] = False
    target[1] = float("nan")
    total, parts = ContextLoss()(recon, target, mask)
    assert all(torch.isfinite(v) for v in parts.values()) and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(recon.grad).all()
    # the fully masked sample gets no gradient from the masked terms (mae, sam, center, ssim)
    assert recon.grad[1].abs().max().item() == 0.0
    total_all_masked, _ = ContextLoss()(recon[1:].detach(), target[1:], mask[1:])
    assert total_all_masked.item() == 0.0


def test_loss_config_for_sensor():
    s1, s2 = LossConfig.for_sensor("s1"), LossConfig.for_sensor("s2")
    assert (s1.lambda_mae, s1.lambda_sam, s1.lambda_ssim, s1.lambda_center) == (1.0, 0, 0, 1.5)
    assert (s2.lambda_mae, s2.lambda_sam, s2.lambda_ssim, s2.lambda_center) == (
        0.665,
        0.315,
        0.02,
        1.75,
    )


def _hand_ssim(a, b, sigma=1.5):
    """SSIM of two 7 x 7 images (one output value), written out with sums."""
    g = np.array([math.exp(-((i - 3) ** 2) / (2 * sigma**2)) for i in range(7)])
    g /= g.sum()
    w = np.outer(g, g)
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    va = (w * a * a).sum() - mu_a**2
    vb = (w * b * b).sum() - mu_b**2
    cov = (w * a * b).sum() - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))


def test_all_terms_with_the_default_weights_by_hand():
    """MAE, SAM, SSIM and centre terms and the S2 default total, with a fully masked
    frame in the first window and a fully masked second window."""
    rng = np.random.default_rng(7)
    t_n, c_n, w_n = 3, 2, 7
    recon = rng.random((2, t_n, c_n, w_n, w_n)) * 0.5 + 0.1
    target = rng.random((2, t_n, c_n, w_n, w_n)) * 0.5 + 0.1
    mask = rng.random((2, t_n, w_n, w_n)) > 0.3
    mask[0, 1, 3, 3] = True  # valid centre
    mask[0, 2] = False  # a fully masked frame
    mask[1] = False  # a fully masked window
    hw = _hand_weights(t_n, w_n) * mask[0]
    hw /= hw.sum()
    mae = sam = 0.0
    for t in range(t_n):
        for y in range(w_n):
            for x in range(w_n):
                if mask[0, t, y, x]:
                    r, g = recon[0, t, :, y, x], target[0, t, :, y, x]
                    mae += hw[t, y, x] * np.mean(np.abs(r - g))
                    cos = r @ g / (np.linalg.norm(r) * np.linalg.norm(g))
                    sam += hw[t, y, x] * math.acos(cos)
    mae, sam = mae / 2, sam / 2  # the batch mean counts the empty window as 0
    frames = []
    for t in range(t_n):
        if mask[0, t].any():
            for c in range(c_n):
                tgt = np.where(mask[0, t], target[0, t, c], recon[0, t, c])
                frames.append(1 - _hand_ssim(recon[0, t, c], tgt))
    ssim_term = np.mean(frames)
    centre = np.mean(np.abs(recon[0, 1, :, 3, 3] - target[0, 1, :, 3, 3]))
    target_nan = np.where(mask[:, :, None], target, np.nan)
    total, parts = ContextLoss()(torch.tensor(recon), torch.tensor(target_nan), torch.tensor(mask))
    assert len(frames) == 4
    assert parts["mae"].item() == pytest.approx(mae, rel=1e-9)
    assert parts["sam"].item() == pytest.approx(sam, rel=1e-6)
    assert parts["ssim"].item() == pytest.approx(ssim_term, rel=1e-9)
    assert parts["center"].item() == pytest.approx(centre, rel=1e-9)
    expected = 0.665 * mae + 0.315 * sam + 0.02 * ssim_term + 1.75 * centre
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_ssim_map_equals_a_2d_gaussian_convolution():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, 15, 13, generator=g, dtype=torch.float64)
    b = torch.rand(5, 1, 15, 13, generator=g, dtype=torch.float64)
    x = torch.arange(7, dtype=torch.float64) - 3
    k1 = torch.exp(-(x**2) / (2 * 1.5**2))
    k = (torch.outer(k1, k1) / k1.sum() ** 2)[None, None]
    conv = torch.nn.functional.conv2d
    mu_a, mu_b = conv(a, k), conv(b, k)
    va, vb = conv(a * a, k) - mu_a**2, conv(b * b, k) - mu_b**2
    cov = conv(a * b, k) - mu_a * mu_b
    c1, c2 = 1e-4, 9e-4
    ref = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    torch.testing.assert_close(ssim_map(a, b), ref, rtol=1e-12, atol=1e-12)


def _hand_decorrelation(z):
    """Mean squared off-diagonal Pearson correlation, with numpy."""
    r = np.corrcoef(np.asarray(z, float), rowvar=False)
    d = r.shape[0]
    return (r[~np.eye(d, dtype=bool)] ** 2).sum() / (d * (d - 1))


def test_latent_decorrelation_by_hand():
    from latentcube.models.losses import latent_decorrelation

    rng = np.random.default_rng(3)
    z = rng.normal(size=(64, 5))
    z[:, 1] = 0.7 * z[:, 0] + 0.3 * z[:, 1]  # one correlated pair
    got = float(latent_decorrelation(torch.tensor(z)))
    assert got == pytest.approx(_hand_decorrelation(z), rel=1e-5)
    # scale and offset of a dimension do not matter
    z2 = z * np.array([1, 100, 0.01, 3, 1]) + 5
    assert float(latent_decorrelation(torch.tensor(z2))) == pytest.approx(got, rel=1e-5)
    # two copies of one dimension: 1; an orthogonal design: 0; degenerate batches: 0
    a = rng.normal(size=(16, 1))
    assert float(latent_decorrelation(torch.tensor(np.hstack([a, -2 * a])))) == pytest.approx(
        1.0, rel=1e-4
    )
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(latent_decorrelation(h)) == pytest.approx(0.0, abs=1e-7)
    assert float(latent_decorrelation(torch.ones(1, 4))) == 0.0
    assert float(latent_decorrelation(torch.ones(8, 4))) == 0.0  # constant: no NaN


def test_decorrelation_term_is_added_only_when_weighted_and_given():
    rng = np.random.default_rng(4)
    recon = torch.tensor(rng.random((6, 3, 2, 5, 5)), dtype=torch.float32)
    target = torch.tensor(rng.random((6, 3, 2, 5, 5)), dtype=torch.float32)
    mask = torch.ones(6, 3, 5, 5, dtype=torch.bool)
    z = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    base, parts = ContextLoss(LossConfig())(recon, target, mask, latent=z)
    assert "decorrelation" not in parts  # weight 0: the paper's loss
    cfg = LossConfig(lambda_decorrelation=0.5)
    total, parts = ContextLoss(cfg)(recon, target, mask, latent=z)
    assert float(parts["decorrelation"]) == pytest.approx(_hand_decorrelation(z.numpy()), rel=1e-5)
    assert float(total) == pytest.approx(
        float(base) + 0.5 * float(parts["decorrelation"]), rel=1e-5
    )
    # validation passes no latent: reconstruction terms only
    val, parts = ContextLoss(cfg)(recon, target, mask)
    assert float(val) == pytest.approx(float(base), rel=1e-6) and "decorrelation" not in parts
    with pytest.raises(ValueError):
        LossConfig(lambda_decorrelation=-1)
