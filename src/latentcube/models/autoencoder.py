"""Stage-1 context autoencoders: pure ``nn.Module`` s built from :class:`AutoencoderConfig`.

Common interface (:class:`ContextAutoencoder`):

* ``forward(x, mask, gaps) -> (recon, latent)`` with ``x`` (B, T, C, W, W)
  reflectance-like values (anything, also NaN, where ``mask`` is False),
  ``mask`` (B, T, W, W) bool pixel validity, ``gaps`` (B, T-1) integer day
  gaps between consecutive dates; ``recon`` (B, T, C, W, W), ``latent``
  (B, latent_dim), non-negative (Softplus) unless the model's output
  whitening (:mod:`latentcube.models.whitening`) has been fitted.
* ``encode`` / ``decode``.
* Dense path (``supports_dense``): ``frame_features(x, mask)`` maps a whole
  tile of one date (N, C, H, W) to features (N, F, H-W+1, W'-W+1) with
  unpadded convolutions whose receptive field is exactly W x W, and
  ``encode_features(feats, gaps)`` runs the temporal part on the centre
  pixel's T feature vectors. ``encode`` is literally the composition of the two,
  so dense and window-by-window results agree to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentcube.models.blocks import (
    ConvAttentionBlock,
    MultiScaleAttentionBlock,
    ResidualPool,
    encoder_inference,
    sinusoidal_encoding,
    transformer_stack,
)
from latentcube.models.config import AutoencoderConfig
from latentcube.models.whitening import Whitening

__all__ = [
    "ContextAutoencoder",
    "FastAutoencoder",
    "PaperAutoencoder",
    "build_autoencoder",
    "day_offsets",
]


def day_offsets(gaps: Tensor, centre: int | None = None, max_offset: int = 350) -> Tensor:
    """Cumulative day offsets from day gaps.

    Parameters
    ----------
    gaps
        (B, T-1) day gaps.
    centre
        If given, offsets are relative to date ``centre`` (signed), else to the
        first date.
    max_offset
        Offsets are clamped to ``[-max_offset, max_offset]``.

    Returns
    -------
    torch.Tensor
        (B, T) int64.
    """
    gaps = gaps.to(torch.int64)
    cum = torch.cat([torch.zeros_like(gaps[:, :1]), torch.cumsum(gaps, dim=1)], dim=1)
    if centre is not None:
        cum = cum - cum[:, centre : centre + 1]
    return cum.clamp(-max_offset, max_offset)


class ContextAutoencoder(nn.Module):
    """Base class of the stage-1 autoencoders (see the module docstring)."""

    supports_dense: bool = False

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        #: Output whitening (identity until fitted, see :mod:`latentcube.models.whitening`):
        #: encoders apply it last, decoders undo it first.
        self.whitening = Whitening(config.latent_dim)

    def encode(self, x: Tensor, mask: Tensor, gaps: Tensor) -> Tensor:
        """Latent (B, latent_dim) of the centre pixel at the centre date."""
        raise NotImplementedError

    def frame_features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Per-date spatial features of whole tiles (dense models only)."""
        raise NotImplementedError(f"the {self.config.variant!r} model has no dense path")

    def encode_features(self, feats: Tensor, gaps: Tensor) -> Tensor:
        """Latent from per-date centre-pixel features (dense models only)."""
        raise NotImplementedError(f"the {self.config.variant!r} model has no dense path")

    def project(self, feats: Tensor) -> Tensor:
        """Per-date tokens from per-date features (dense models only)."""
        raise NotImplementedError(f"the {self.config.variant!r} model has no dense path")

    def encode_tokens(self, tokens: Tensor, gaps: Tensor) -> Tensor:
        """Latent from per-date centre-pixel tokens (dense models only)."""
        raise NotImplementedError(f"the {self.config.variant!r} model has no dense path")

    def decode(self, latent: Tensor, gaps: Tensor) -> Tensor:
        """Reconstruction (B, T, C, W, W) of the whole context window."""
        raise NotImplementedError

    def decode_centre(self, latent: Tensor, gaps: Tensor) -> Tensor:
        """Reconstruction (B, C) of the centre pixel at the centre date only."""
        c = self.config
        return self.decode(latent, gaps)[:, c.n_dates // 2, :, c.window // 2, c.window // 2]

    def forward(self, x: Tensor, mask: Tensor, gaps: Tensor) -> tuple[Tensor, Tensor]:
        """Encode and decode; returns ``(recon, latent)``."""
        self._check(x, mask, gaps)
        z = self.encode(x, mask, gaps)
        return self.decode(z, gaps), z

    def _check(self, x: Tensor, mask: Tensor, gaps: Tensor) -> None:
        c = self.config
        want = (c.n_dates, c.n_bands, c.window, c.window)
        if x.dim() != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must be (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        if tuple(mask.shape) != (x.shape[0], c.n_dates, c.window, c.window):
            raise ValueError(f"mask must be (B, T, W, W), got {tuple(mask.shape)}")
        if tuple(gaps.shape) != (x.shape[0], c.n_dates - 1):
            raise ValueError(f"gaps must be (B, {c.n_dates - 1}), got {tuple(gaps.shape)}")


class FastAutoencoder(ContextAutoencoder):
    """The ``fast``/``tiny`` autoencoder, exact under dense inference.

    Spatial encoder: 3 x 3 *unpadded* (optionally dilated) convolutions with
    GELU on ``[bands filled with 0 where invalid, validity mask]``; receptive
    field = window, so one feature vector per pixel and date depends only on
    that pixel's context. Temporal encoder: linear projection + sinusoidal
    encoding of the day offset to the centre date, pre-norm transformer, the
    centre token and the mean token concatenated, Linear + Softplus. Decoder:
    latent -> per-date tokens with the same positional encoding -> transformer
    -> Linear to C x W x W -> sigmoid.
    """

    supports_dense = True

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        layers: list[nn.Module] = []
        cin = 2 * c.n_bands if c.band_mask else c.n_bands + 1
        for cout, dil in zip(c.conv_channels, c.conv_dilations, strict=True):
            layers += [nn.Conv2d(cin, cout, 3, dilation=dil), nn.GELU()]
            cin = cout
        self.spatial = nn.Sequential(*layers)
        self.feat_dim = cin
        d = c.d_model
        self.in_proj = nn.Linear(cin, d)

        def stack(n: int) -> nn.TransformerEncoder:
            return transformer_stack(
                d, c.n_heads, c.ff_dim, c.dropout, n, activation="gelu", norm_first=True
            )

        self.temporal = stack(c.n_layers)
        self.norm = nn.LayerNorm(d)
        self.to_latent = nn.Linear(2 * d, c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, d)
        self.dec_temporal = stack(c.decoder_layers)
        self.dec_norm = nn.LayerNorm(d)
        self.to_patch = nn.Linear(d, c.n_bands * c.window * c.window)

    def _run(self, stack: nn.TransformerEncoder, h: Tensor) -> Tensor:
        """``stack(h)``; without autograd in eval mode, the faster written-out forward."""
        if self.training or torch.is_grad_enabled():
            return stack(h)
        return encoder_inference(stack, h)

    def _positions(self, gaps: Tensor) -> Tensor:
        c = self.config
        off = day_offsets(gaps, c.n_dates // 2, c.max_offset_days)
        return sinusoidal_encoding(off, c.d_model)

    def frame_features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Spatial features of whole tiles.

        Parameters
        ----------
        x
            (N, C, H, W) values; anything where ``mask`` is False.
        mask
            (N, H, W) bool.

        Returns
        -------
        torch.Tensor
            (N, F, H - window + 1, W - window + 1): the feature of every pixel
            whose full context lies inside the tile.
        """
        if self.config.band_mask:  # one validity channel per band: absent bands are NaN
            bv = mask.unsqueeze(1) & torch.isfinite(x)
            filled = torch.where(bv, x, torch.zeros((), dtype=x.dtype))
            return self.spatial(torch.cat([filled, bv.to(x.dtype)], dim=1))
        m = mask.to(x.dtype).unsqueeze(1)
        filled = torch.where(mask.unsqueeze(1), x, torch.zeros((), dtype=x.dtype))
        return self.spatial(torch.cat([filled, m], dim=1))

    def drop_bands(self, x: Tensor) -> Tensor:
        """``x`` (B, T, C, W, W) with random bands of random windows set to NaN (band dropout).

        A share ``band_dropout`` of the windows keeps a uniformly drawn number of
        bands between ``min_bands`` and C - 1 (a random subset); the others are
        unchanged. Uses the torch generator, which the training loop seeds and
        checkpoints.
        """
        c = self.config
        b, n = x.shape[0], c.n_bands
        if c.band_dropout <= 0 or b == 0 or c.min_bands >= n:
            return x
        hit = torch.rand(b, device=x.device) < c.band_dropout
        keep_n = torch.randint(c.min_bands, n, (b,), device=x.device)
        rank = torch.rand(b, n, device=x.device).argsort(dim=1).argsort(dim=1)
        drop = hit[:, None] & (rank >= keep_n[:, None])
        return x.masked_fill(drop[:, None, :, None, None], float("nan"))

    def encode_features(self, feats: Tensor, gaps: Tensor) -> Tensor:
        """Latent from the centre pixel's per-date features (B, T, F) and gaps (B, T-1)."""
        return self.encode_tokens(self.project(feats), gaps)

    def project(self, feats: Tensor) -> Tensor:
        """Per-date tokens (..., d_model) from per-date features (..., F).

        Position-independent, so dense inference computes it once per pixel and date
        and shares it across the windows that use that date.
        """
        return self.in_proj(feats)

    def encode_tokens(self, tokens: Tensor, gaps: Tensor) -> Tensor:
        """Latent from the centre pixel's per-date tokens (B, T, d) (see :meth:`project`).

        ``gaps`` is (B, T-1), or (1, T-1) when all B windows share their dates.
        """
        h = tokens + self._positions(gaps)
        h = self.norm(self._run(self.temporal, h))
        centre = h[:, self.config.n_dates // 2]
        z = F.softplus(self.to_latent(torch.cat([centre, h.mean(dim=1)], dim=-1)))
        return self.whitening(z)

    def encode(self, x: Tensor, mask: Tensor, gaps: Tensor) -> Tensor:
        """Latent (B, latent_dim) of the centre pixel at the centre date."""
        if self.training and self.config.band_dropout > 0:
            x = self.drop_bands(x)
        b, t, ch, h, w = x.shape
        f = self.frame_features(x.reshape(b * t, ch, h, w), mask.reshape(b * t, h, w))
        return self.encode_features(f.reshape(b, t, -1), gaps)

    def decode(self, latent: Tensor, gaps: Tensor) -> Tensor:
        """Reconstruction (B, T, C, W, W) of the context window, in [0, 1]."""
        c = self.config
        latent = self.whitening.inverse_transform(latent)
        h = self.from_latent(latent).unsqueeze(1) + self._positions(gaps)
        h = self.dec_norm(self._run(self.dec_temporal, h))
        out = torch.sigmoid(self.to_patch(h))
        return out.reshape(latent.shape[0], c.n_dates, c.n_bands, c.window, c.window)

    def decode_centre(self, latent: Tensor, gaps: Tensor) -> Tensor:
        """Reconstruction (B, C) of the centre pixel and date, without the other outputs."""
        c = self.config
        h = self.from_latent(self.whitening.inverse_transform(latent)).unsqueeze(1)
        h = h + self._positions(gaps)
        if self.training:
            h = self.dec_norm(self._run(self.dec_temporal, h))[:, c.n_dates // 2]
        else:  # no dropout: only the centre token's output (frozen decoders in fusion)
            h = self.dec_norm(encoder_inference(self.dec_temporal, h, c.n_dates // 2))[:, 0]
        pix = (c.window // 2) * c.window + c.window // 2
        rows = torch.arange(c.n_bands, device=h.device) * c.window * c.window + pix
        return torch.sigmoid(F.linear(h, self.to_patch.weight[rows], self.to_patch.bias[rows]))


class PaperAutoencoder(ContextAutoencoder):
    """The autoencoder of Peters et al. (2025), rebuilt from the authors' code (spec section 3).

    Per-frame CNN (1x1 stem to 147 channels, multi-scale and CBAM attention
    blocks, strided convolutions 15 -> 7 -> 4, 16 x 4 x 4 = 256 features),
    learned positional embedding of cumulative day offsets (/ sqrt(256)), a
    3-layer post-norm transformer (d=256, 8 heads, feed-forward 2 as in the
    code) shared by encoder and decoder, a time-token reducer 11 -> R and a
    Softplus bottleneck; the decoder mirrors it with transposed convolutions.
    The authors' batch-axis permute in the encoder is not reproduced (it lets
    attention run across samples). Masked inputs are filled with the
    per-window, per-band mean of the valid values, as in the authors' data
    pipeline. About 3.7 M parameters for S2 (see ``tests/test_models.py``).
    """

    supports_dense = False

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        ch = c.n_bands
        self.reducer = nn.Sequential(
            nn.Conv2d(ch, 147, 1),
            nn.SiLU(),
            ResidualPool(MultiScaleAttentionBlock(147, 147)),
            nn.Conv2d(147, 128, 2, stride=2),
            nn.SiLU(),
            nn.Dropout2d(0.07),
            ResidualPool(ConvAttentionBlock(128, 128)),
            nn.Conv2d(128, 64, 2, stride=2, padding=1),
            nn.SiLU(),
            nn.Dropout2d(0.07),
            ConvAttentionBlock(64, 16, reduction=2, spatial_kernel=3),
        )
        d = c.d_model
        self.pos = nn.Embedding(c.max_offset_days + 1, d)
        self.transformer = transformer_stack(
            d, c.n_heads, c.ff_dim, c.dropout, c.n_layers, activation="relu", norm_first=False
        )
        r = c.reduced_tokens
        self.enc_token = nn.Sequential(nn.Linear(d, 16), nn.SELU())
        self.enc_time = nn.Sequential(nn.Linear(c.n_dates, r), nn.SELU())
        self.bottleneck = nn.Linear(16 * r, c.latent_dim)
        self.dec_expand = nn.Linear(c.latent_dim, 16 * r)
        self.dec_time = nn.Sequential(nn.Linear(r, c.n_dates), nn.SELU())
        self.dec_token = nn.Sequential(nn.Linear(16, d), nn.SELU())
        self.upscaler = nn.Sequential(
            ResidualPool(ConvAttentionBlock(16, 16)),
            nn.ConvTranspose2d(16, 64, 2, stride=2),
            nn.SiLU(),
            nn.Dropout2d(0.1),
            ResidualPool(ConvAttentionBlock(64, 64)),
            nn.ConvTranspose2d(64, 128, 2, stride=2, padding=1, output_padding=1),
            nn.Dropout2d(0.1),
            MultiScaleAttentionBlock(128, 147),
            nn.Conv2d(147, ch, 3, padding=1),
        )

    def _pos(self, gaps: Tensor) -> Tensor:
        off = day_offsets(gaps, None, self.config.max_offset_days)
        return self.pos(off) / math.sqrt(self.config.d_model)

    @staticmethod
    def _fill(x: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(2)
        vals = torch.where(m, x, torch.zeros((), dtype=x.dtype))
        cnt = m.expand_as(x).sum(dim=(1, 3, 4)).clamp(min=1)
        mean = vals.sum(dim=(1, 3, 4)) / cnt
        return torch.where(m, x, mean[:, None, :, None, None])

    def encode(self, x: Tensor, mask: Tensor, gaps: Tensor) -> Tensor:
        """Latent (B, latent_dim) of the centre pixel at the centre date."""
        b, t, ch, h, w = x.shape
        f = self.reducer(self._fill(x, mask).reshape(b * t, ch, h, w)).reshape(b, t, -1)
        f = self.transformer(f + self._pos(gaps))
        tok = self.enc_token(f).transpose(1, 2)  # (B, 16, T)
        red = self.enc_time(tok).flatten(1)  # (B, 16 R)
        return self.whitening(F.softplus(self.bottleneck(red)))

    def decode(self, latent: Tensor, gaps: Tensor) -> Tensor:
        """Reconstruction (B, T, C, 15, 15)."""
        c = self.config
        b = latent.shape[0]
        h = F.softplus(self.dec_expand(self.whitening.inverse_transform(latent)))
        h = h.reshape(b, 16, c.reduced_tokens)
        h = self.dec_time(h).transpose(1, 2)  # (B, T, 16)
        h = self.transformer(self.dec_token(h) + self._pos(gaps))
        out = self.upscaler(h.reshape(b * c.n_dates, 16, 4, 4))
        return out.reshape(b, c.n_dates, c.n_bands, c.window, c.window)

    def decode_centre(self, latent: Tensor, gaps: Tensor) -> Tensor:
        """Reconstruction (B, C) of the centre pixel and date.

        The temporal decoder runs over every date (attention mixes them), the
        per-frame upscaler only on the centre date: same values as
        :meth:`decode` at the centre, at about 1 / T of the upscaler's cost.
        """
        c = self.config
        b = latent.shape[0]
        h = F.softplus(self.dec_expand(self.whitening.inverse_transform(latent)))
        h = h.reshape(b, 16, c.reduced_tokens)
        h = self.dec_time(h).transpose(1, 2)
        h = self.transformer(self.dec_token(h) + self._pos(gaps))[:, c.n_dates // 2]
        out = self.upscaler(h.reshape(b, 16, 4, 4))
        return out[:, :, c.window // 2, c.window // 2]


def build_autoencoder(config: AutoencoderConfig) -> ContextAutoencoder:
    """Instantiate the autoencoder described by ``config``."""
    if config.variant == "paper":
        return PaperAutoencoder(config)
    return FastAutoencoder(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(config: AutoencoderConfig) -> dict[str, int]:
    """Multiply-accumulates of the dense encoder per output pixel-date (``fast``/``tiny``).

    Dense inference computes the spatial features once per pixel and date and
    shares them across the T windows that use them, so per output pixel-date
    the cost is one spatial-encoder evaluation plus one temporal encoder pass
    over T tokens.

    Returns
    -------
    dict
        ``spatial``, ``temporal`` (of which ``attention``: the score and
        weighted-sum products) and ``total`` MACs.
    """
    if config.variant == "paper":
        raise ValueError("count_macs describes the dense path of fast/tiny models")
    c = config
    spatial, cin = 0, 2 * c.n_bands if c.band_mask else c.n_bands + 1
    for cout in c.conv_channels:
        spatial += cin * cout * 9
        cin = cout
    t, d, ff = c.n_dates, c.d_model, c.ff_dim
    attention = c.n_layers * 2 * t * t * d
    temporal = t * cin * d + c.n_layers * t * (4 * d * d + 2 * d * ff) + attention
    temporal += 2 * d * c.latent_dim
    return {
        "spatial": spatial,
        "temporal": temporal,
        "attention": attention,
        "total": spatial + temporal,
    }


#: Parameters per sensor autoencoder estimated in the paper's notes.
PAPER_PARAMETERS = 3.7e6


def describe_presets(sensors: Sequence[str] = ("s2", "s1")) -> list[str]:
    """A table (lines) of the stage-1 presets: bands, latent, parameters, dense path.

    The paper architecture's parameter count is compared with the paper's estimate
    (:data:`PAPER_PARAMETERS`). ``latentcube models`` prints it.
    """
    lines = [
        f"{'config':<7} {'sensor':<6} {'bands':>5} {'latent':>6} {'parameters':>11} "
        f"{'receptive field':>15}  dense"
    ]
    for s in sensors:
        for v in ("paper", "fast", "tiny"):
            cfg = AutoencoderConfig.preset(v, s)
            n = count_parameters(build_autoencoder(cfg))
            rf = f"{cfg.window} x {cfg.window}"  # fast/tiny: checked by the config
            dense = "no (window by window)" if v == "paper" else "yes (= window by window)"
            note = f"  spec ~3.7 M: {100 * (n - PAPER_PARAMETERS) / PAPER_PARAMETERS:+.1f}%"
            lines.append(
                f"{v:<7} {s:<6} {cfg.n_bands:>5} {cfg.latent_dim:>6} {n:>11,} {rf:>15}  {dense}"
                + (note if v == "paper" else "")
            )
    return lines
