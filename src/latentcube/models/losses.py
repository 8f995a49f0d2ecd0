"""The context loss of the stage-1 autoencoders (paper spec section 3.4).

Weights: ``w[t, y, x] = temporal[t] * spatial[y, x]`` with spatial 1 at the
centre pixel and ``spatial_scale * spatial_decay ** (d - 1)`` at Chebyshev
distance ``d >= 1``, temporal ``temporal_decay ** |t - centre|``. Per sample the
weights are renormalised to sum to 1 *over valid entries*, so masked pixels
neither count nor dilute the others; a window without any valid entry
contributes 0 (and no gradient).

Terms (each averaged over the batch):

* ``mae``: ``sum_{t,y,x} w * mean_c |recon - target|`` over valid entries;
* ``sam``: spectral angle between recon and target band vectors per (t, y, x),
  weighted the same way;
* ``ssim``: ``1 - SSIM`` with a 7 x 7 Gaussian window (sigma 1.5, L = 1) over
  every frame and band that has a valid pixel, invalid target entries replaced
  by the (detached) reconstruction so they carry no error;
* ``center``: MAE at the centre pixel and date, over samples where it is valid.

Absent bands (band-mask models, :class:`~latentcube.models.config.AutoencoderConfig`):
a band that is NaN where the pixel mask is True is not a target. Every term then uses
the present bands only (MAE and the centre term average over them, SAM is the angle
within their subspace, SSIM skips the absent band's frames), and a pixel without any
present band counts as masked. Inputs without absent bands take exactly the code path
they took before.

Total = ``lambda_mae * mae + lambda_sam * sam + lambda_ssim * ssim + lambda_center * center``.

Not in the paper, off by default: with ``lambda_decorrelation > 0`` and the
batch's latents passed, the total also holds ``lambda_decorrelation *
decorrelation`` (:func:`latent_decorrelation`), which keeps the latent
dimensions from repeating one another.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latentcube.models.config import LossConfig

__all__ = [
    "ContextLoss",
    "band_presence",
    "centre_abs_error",
    "centre_mae",
    "context_weights",
    "latent_decorrelation",
    "spectral_angle",
    "ssim",
    "ssim_map",
]


def context_weights(
    n_dates: int, window: int, config: LossConfig | None = None, device: torch.device | None = None
) -> Tensor:
    """Unnormalised weights (T, W, W) of the context loss."""
    cfg = config or LossConfig()
    c = window // 2
    yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    d = torch.maximum((yy - c).abs(), (xx - c).abs()).to(torch.float64)
    spatial = torch.where(
        d == 0, torch.ones_like(d), cfg.spatial_scale * cfg.spatial_decay ** (d - 1)
    )
    dt = (torch.arange(n_dates) - n_dates // 2).abs().to(torch.float64)
    temporal = cfg.temporal_decay**dt
    return (temporal[:, None, None] * spatial[None]).to(torch.float32).to(device)


def centre_abs_error(recon: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the centre-pixel band-mean absolute errors over valid samples, and their count.

    Bands that are NaN under a valid centre (absent bands) are left out of the mean;
    a centre without any present band does not count.
    """
    t, c = recon.shape[1] // 2, recon.shape[-1] // 2
    valid = mask[:, t, c, c]
    tgt = target[:, t, :, c, c]
    present = torch.isfinite(tgt)
    if bool((present | ~valid[:, None]).all()):
        err = (recon[:, t, :, c, c] - torch.nan_to_num(tgt)).abs().mean(dim=1)
        return torch.where(valid, err, torch.zeros_like(err)).sum(), valid.sum()
    diff = torch.where(present, recon[:, t, :, c, c] - torch.nan_to_num(tgt), 0.0).abs()
    n = present.sum(dim=1)
    valid = valid & (n > 0)
    err = diff.sum(dim=1) / n.clamp(min=1)
    return torch.where(valid, err, torch.zeros_like(err)).sum(), valid.sum()


def band_presence(target: Tensor, mask: Tensor) -> Tensor | None:
    """(B, T, C, W, W) bool: valid pixel and finite band; None when no band is absent.

    ``target`` (B, T, C, W, W), ``mask`` (B, T, W, W). None means every band is
    finite wherever the mask is True (the usual case, computed the usual way).
    """
    present = torch.isfinite(target) & mask.unsqueeze(2)
    if bool((present == mask.unsqueeze(2)).all()):
        return None
    return present


def spectral_angle(recon: Tensor, target: Tensor, dim: int) -> Tensor:
    """Angle (radians) between the spectra ``recon`` and ``target`` along ``dim``.

    The cosine is clamped to (-1, 1) so that the gradient stays finite.
    """
    dot = (recon * target).sum(dim=dim)
    # sqrt of the summed squares: same values as Tensor.norm, far faster over the band axis
    norm = (recon * recon).sum(dim=dim).clamp_min(1e-30).sqrt() * (
        (target * target).sum(dim=dim).sqrt()
    )
    cos = (dot / norm.clamp(min=1e-8)).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.acos(cos)


def centre_mae(recon: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error at the centre pixel and date (the validation metric); 0 if none valid."""
    s, n = centre_abs_error(recon, target, mask)
    return s / n.clamp(min=1)


def _gaussian(size: int = 7, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _band(n: int, g: Tensor) -> Tensor:
    """(n - len(g) + 1, n) matrix whose rows are ``g`` shifted: a 1-D valid convolution."""
    w = g.numel()
    rows = torch.arange(n - w + 1)[:, None] + torch.arange(w)[None]
    out = torch.zeros(n - w + 1, n, dtype=g.dtype, device=g.device)
    out[torch.arange(n - w + 1)[:, None], rows] = g
    return out


def ssim_map(
    a: Tensor, b: Tensor, window: int = 7, sigma: float = 1.5, data_range: float = 1.0
) -> Tensor:
    """SSIM map of images ``a``, ``b`` (N, 1, H, W) with a Gaussian window (no padding).

    The window shrinks to the image size (odd) for images smaller than ``window``.
    The separable Gaussian filter is applied as two small matrix products
    (``Ky @ img @ Kx.T``), the same as a 2-D valid convolution but several
    times faster than a one-channel convolution on CPU, with and without gradients.
    """
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2
    x = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    ky, kx = _band(a.shape[-2], g), _band(a.shape[-1], g)

    def blur(img: Tensor) -> Tensor:
        return ky @ img @ kx.T

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return num / den


def ssim(
    a: Tensor, b: Tensor, window: int = 7, sigma: float = 1.5, data_range: float = 1.0
) -> Tensor:
    """Mean SSIM of images ``a``, ``b`` (N, 1, H, W); see :func:`ssim_map`."""
    return ssim_map(a, b, window, sigma, data_range).mean()


def latent_decorrelation(latent: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean squared off-diagonal correlation of the latent dimensions over a batch.

    Parameters
    ----------
    latent
        (B, D) latents of one batch.
    eps
        Floor of each dimension's variance, so a constant dimension gives 0.

    Returns
    -------
    torch.Tensor
        A scalar in [0, 1]: 0 when the D dimensions are uncorrelated over the
        batch, 1 when they are all perfectly (anti-)correlated; 0 for B < 2 or D < 2.
        It does not depend on the scale or offset of any dimension.
    """
    b, d = latent.shape
    if b < 2 or d < 2:
        return latent.new_zeros(())
    zc = latent - latent.mean(dim=0)
    zs = zc / zc.pow(2).mean(dim=0).clamp(min=eps).sqrt()
    corr = zs.T @ zs / b
    off = corr - torch.diag(torch.diagonal(corr))
    return off.pow(2).sum() / (d * (d - 1))


class ContextLoss(nn.Module):
    """Weighted masked context loss; see the module docstring."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(
        self, recon: Tensor, target: Tensor, mask: Tensor, latent: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of ``recon`` against ``target`` (B, T, C, W, W) under ``mask`` (B, T, W, W).

        ``latent`` (B, D) adds the decorrelation term when ``lambda_decorrelation
        > 0`` (training passes it; validation scores the reconstruction only).

        Returns
        -------
        tuple
            The total (scalar) and a dict of the terms ``mae``, ``sam``,
            ``ssim`` and ``center`` (and ``decorrelation`` when it was added).
        """
        cfg = self.config
        b, t, ch, w, _ = recon.shape
        present = band_presence(target, mask)
        target = torch.nan_to_num(target)
        if present is not None:  # absent bands: targets only where present
            mask = present.any(dim=2)
            pf = present.to(recon.dtype)
            n_present = pf.sum(dim=2).clamp(min=1)
        m = mask.to(recon.dtype)
        wts = context_weights(t, w, cfg, recon.device) * m
        wts = wts / wts.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
        if present is None:
            abs_err = (recon - target).abs().mean(dim=2)
        else:
            abs_err = ((recon - target).abs() * pf).sum(dim=2) / n_present
        mae = (wts * abs_err).sum(dim=(1, 2, 3)).mean()
        parts = {"mae": mae}
        zero = recon.new_zeros(())
        if cfg.lambda_sam > 0 and ch > 1:
            r_s, t_s = (recon, target) if present is None else (recon * pf, target * pf)
            parts["sam"] = (wts * spectral_angle(r_s, t_s, dim=2)).sum(dim=(1, 2, 3)).mean()
        else:
            parts["sam"] = zero
        if cfg.lambda_ssim > 0:
            per_band = mask.unsqueeze(2) if present is None else present
            tgt = torch.where(per_band, target, recon.detach())
            smap = ssim_map(recon.reshape(-1, 1, w, w), tgt.reshape(-1, 1, w, w))
            frame_ok = per_band.any(dim=(3, 4)).expand(b, t, ch).reshape(-1)
            per_frame = (1 - smap).mean(dim=(1, 2, 3))
            parts["ssim"] = (per_frame * frame_ok).sum() / frame_ok.sum().clamp(min=1)
        else:
            parts["ssim"] = zero
        if present is None:
            s, n = centre_abs_error(recon, target, mask)
        else:
            s, n = centre_abs_error(recon, torch.where(present, target, torch.nan), mask)
        parts["center"] = s / n.clamp(min=1)
        total = (
            cfg.lambda_mae * parts["mae"]
            + cfg.lambda_sam * parts["sam"]
            + cfg.lambda_ssim * parts["ssim"]
            + cfg.lambda_center * parts["center"]
        )
        if cfg.lambda_decorrelation > 0 and latent is not None:
            parts["decorrelation"] = latent_decorrelation(latent)
            total = total + cfg.lambda_decorrelation * parts["decorrelation"]
        return total, parts
