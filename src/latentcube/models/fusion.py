"""Stage 2: the fusion model (paper spec section 4), over any set of registered sensors.

Each sensor ``s`` keeps its stage-1 context autoencoder. Its latent ``z_s`` becomes
one token::

    token_s = proj_s(z_s) + type_s + offset(|t_s - t_ref|) / sqrt(d)

where ``type_s`` is a learned sensor-type embedding and ``offset`` a learned
embedding of the day offset between the sensor's acquisition and the reference
(S2) date. A small pre-norm transformer runs over the tokens of the sensors that
are *present* (the others are masked out of attention and pooling), the tokens
are mean-pooled, normalised (LayerNorm) and mapped to the embedding by
``Linear(d, 7) + Softplus``. Per-sensor heads ``Linear(7, latent_s)`` map the
embedding back into each pretrained decoder, which reconstructs that sensor's
whole context window; the loss is a weighted sum of the sensors' stage-1 context
losses (:class:`FusionLoss`).

A sensor is *present* for a sample when its centre pixel is valid at the centre
date and it was not hidden on purpose (sensor dropout in training, or a user's
choice at inference); a model trained with sensor dropout yields an embedding
from any non-empty subset of its sensors, e.g. S1 alone on a cloudy date.

Parameters are keyed by sensor name (``ModuleDict`` / ``ParameterDict``), so a
sensor added to an existing model gets new entries and leaves every existing
tensor's shape and value as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from latentcube.data.batch import SensorBatch
from latentcube.models.autoencoder import ContextAutoencoder
from latentcube.models.blocks import transformer_stack
from latentcube.models.config import LossConfig
from latentcube.models.losses import ContextLoss, centre_abs_error, spectral_angle
from latentcube.models.whitening import Whitening

__all__ = [
    "FusionConfig",
    "FusionLoss",
    "FusionModel",
    "FusionOutput",
    "centre_errors",
    "drop_sensors",
]

FusionMode = Literal["frozen", "finetune"]
FusionObjective = Literal["context", "centre"]


class FusionConfig(BaseModel):
    """Configuration of the fusion model.

    Attributes
    ----------
    sensors
        Sensors in token order; the first is the reference sensor whose dates
        form the time axis (``s2``).
    latent_dims
        Latent size of each sensor's stage-1 autoencoder.
    embed_dim
        Size of the fused embedding (7 in the paper).
    d_model, n_heads, n_layers, ff_dim, dropout
        The fuser transformer (paper: 128, 4, 2, 256, 0.1, pre-norm).
    max_offset_days
        Day offsets between a sensor and the reference date are clamped to this.
    mode
        ``"frozen"``: the stage-1 encoders and decoders keep their weights (the
        paper's abstract); ``"finetune"``: they are trained jointly with the
        fusion layers (the authors' released code).
    frozen_sensors
        Sensors whose autoencoders stay frozen in ``finetune`` mode too (the
        sensors of an existing model when a new sensor is added).
    loss_weights
        Weight of each sensor's context loss; sensors not listed get an equal
        share of what is left (default: equal weights, 0.5 / 0.5 for S1 + S2).
    sensor_dropout
        Training only: probability of hiding each present sensor's input from a
        sample (its reconstruction still counts), so that the model learns to
        embed from any subset. At least one sensor per sample stays visible.
    objective
        What the loss scores. ``"context"`` (default, the paper's loss): every
        sensor's whole reconstructed context window through its decoder, with
        the sensor's stage-1 context loss (MAE, SAM, SSIM, centre terms).
        ``"centre"``: only what the embedding stands for, the centre pixel at the
        centre date of each sensor, decoded without the rest of the window
        (:meth:`~latentcube.models.autoencoder.ContextAutoencoder.decode_centre`),
        scored by ``lambda_mae * |error| + lambda_sam * spectral angle`` with the
        sensor's stage-1 weights (see :class:`FusionLoss`). Much cheaper per
        step; meant for ``frozen`` mode, where the decoders already know how to
        draw the context from a latent.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensors: tuple[str, ...]
    latent_dims: dict[str, int]
    embed_dim: int = Field(default=7, ge=1)
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    ff_dim: int = 256
    dropout: float = 0.1
    max_offset_days: int = Field(default=350, ge=1)
    mode: FusionMode = "frozen"
    frozen_sensors: tuple[str, ...] = ()
    loss_weights: dict[str, float] = Field(default_factory=dict)
    sensor_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    objective: FusionObjective = "context"

    @model_validator(mode="after")
    def _check(self) -> FusionConfig:
        if not self.sensors:
            raise ValueError("a fusion model needs at least one sensor")
        if len(set(self.sensors)) != len(self.sensors):
            raise ValueError(f"sensors listed more than once: {list(self.sensors)}")
        if set(self.latent_dims) != set(self.sensors):
            raise ValueError(
                f"latent_dims has sensors {sorted(self.latent_dims)}, expected {list(self.sensors)}"
            )
        for name in (*self.loss_weights, *self.frozen_sensors):
            if name not in self.sensors:
                raise ValueError(f"{name!r} is not one of the sensors {list(self.sensors)}")
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.loss_weights}")
        if sum(self.loss_weights.values()) > 1 + 1e-9 and len(self.loss_weights) < len(
            self.sensors
        ):
            raise ValueError("loss weights of the listed sensors leave nothing for the others")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self

    @property
    def reference(self) -> str:
        """The sensor whose dates form the time axis."""
        return self.sensors[0]

    def weight(self, sensor: str) -> float:
        """Loss weight of ``sensor`` (see ``loss_weights``)."""
        if sensor in self.loss_weights:
            return float(self.loss_weights[sensor])
        rest = [s for s in self.sensors if s not in self.loss_weights]
        return (1.0 - sum(self.loss_weights.values())) / len(rest) if rest else 0.0

    def is_frozen(self, sensor: str) -> bool:
        """Whether the autoencoder of ``sensor`` keeps its stage-1 weights."""
        return self.mode == "frozen" or sensor in self.frozen_sensors

    @classmethod
    def for_autoencoders(
        cls, autoencoders: Mapping[str, ContextAutoencoder], **kwargs: object
    ) -> FusionConfig:
        """A configuration over ``autoencoders`` (in their order) with the paper's sizes."""
        dims = {s: int(ae.config.latent_dim) for s, ae in autoencoders.items()}
        return cls.model_validate({"sensors": tuple(dims), "latent_dims": dims, **kwargs})


@dataclass
class FusionOutput:
    """Result of :meth:`FusionModel.forward`.

    Attributes
    ----------
    embedding
        (B, embed_dim); NaN for samples without any present sensor.
    present
        (B, S) bool: which sensors contributed, in ``config.sensors`` order.
    recon
        Per sensor, the reconstruction (B, T, C, W, W) of its context window
        (objective ``"context"``).
    latents
        Per sensor, its stage-1 latent (B, latent_dim).
    centre
        Per sensor, the reconstruction (B, C) of its centre pixel at the centre
        date alone (objective ``"centre"``).
    """

    embedding: Tensor
    present: Tensor
    recon: dict[str, Tensor]
    latents: dict[str, Tensor]
    centre: dict[str, Tensor] = field(default_factory=dict)

    def centre_recon(self, sensor: str) -> Tensor:
        """(B, C) reconstruction of ``sensor``'s centre pixel at the centre date."""
        if sensor in self.centre:
            return self.centre[sensor]
        r = self.recon[sensor]
        t, w = r.shape[1] // 2, r.shape[-1] // 2
        return r[:, t, :, w, w]


def drop_sensors(present: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Hide each present sensor with probability ``p``, keeping at least one per sample.

    Parameters
    ----------
    present
        (B, S) bool.
    p
        Drop probability.
    generator
        Random generator (default: torch's global one).

    Returns
    -------
    torch.Tensor
        (B, S) bool, a subset of ``present`` that is non-empty wherever
        ``present`` is.
    """
    if p <= 0:
        return present
    keep = present & (torch.rand(present.shape, generator=generator) >= p)
    empty = present.any(dim=1) & ~keep.any(dim=1)
    if empty.any():
        # restore one present sensor, drawn uniformly, in samples that lost all
        score = torch.rand(present.shape, generator=generator).masked_fill(~present, -1.0)
        pick = F.one_hot(score.argmax(dim=1), present.shape[1]).bool()
        keep = keep | (pick & empty[:, None])
    return keep


class FusionModel(nn.Module):
    """The fusion model over pretrained per-sensor autoencoders (see the module docstring).

    Parameters
    ----------
    config
        The fusion configuration.
    autoencoders
        One stage-1 autoencoder per sensor of ``config.sensors``.
    """

    def __init__(
        self, config: FusionConfig, autoencoders: Mapping[str, ContextAutoencoder]
    ) -> None:
        super().__init__()
        if set(autoencoders) != set(config.sensors):
            raise ValueError(
                f"autoencoders for {sorted(autoencoders)} given, the configuration lists "
                f"{list(config.sensors)}"
            )
        for s in config.sensors:
            ae = autoencoders[s]
            if ae.config.latent_dim != config.latent_dims[s]:
                raise ValueError(
                    f"the {s!r} autoencoder has a {ae.config.latent_dim}-d latent, the "
                    f"configuration says {config.latent_dims[s]}"
                )
        self.config = config
        d = config.d_model
        self.autoencoders = nn.ModuleDict({s: autoencoders[s] for s in config.sensors})
        self.proj = nn.ModuleDict({s: nn.Linear(config.latent_dims[s], d) for s in config.sensors})
        self.sensor_type = nn.ParameterDict(
            {s: nn.Parameter(0.02 * torch.randn(d)) for s in config.sensors}
        )
        self.offset = nn.Embedding(config.max_offset_days + 1, d)
        self.fuser = transformer_stack(
            d,
            config.n_heads,
            config.ff_dim,
            config.dropout,
            config.n_layers,
            activation="relu",
            norm_first=True,
        )
        self.norm = nn.LayerNorm(d)
        self.to_embedding = nn.Linear(d, config.embed_dim)
        self.heads = nn.ModuleDict(
            {s: nn.Linear(config.embed_dim, config.latent_dims[s]) for s in config.sensors}
        )
        #: Output whitening (identity until fitted, see :mod:`latentcube.models.whitening`).
        self.whitening = Whitening(config.embed_dim)
        self.apply_mode()

    def autoencoder(self, sensor: str) -> ContextAutoencoder:
        """The stage-1 autoencoder of ``sensor``."""
        return cast(ContextAutoencoder, self.autoencoders[sensor])

    @property
    def sensors(self) -> tuple[str, ...]:
        """Sensors in token order."""
        return self.config.sensors

    def apply_mode(self) -> None:
        """Switch gradients off for the frozen autoencoders, on for the others."""
        for s, ae in self.autoencoders.items():
            for p in ae.parameters():
                p.requires_grad_(not self.config.is_frozen(s))

    def train(self, mode: bool = True) -> FusionModel:
        """Training mode for the trainable parts; frozen autoencoders always run in eval mode."""
        super().train(mode)
        for s, ae in self.autoencoders.items():
            if self.config.is_frozen(s):
                ae.eval()
        return self

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the fusion layers (everything but the autoencoders)."""
        ae_ids = {id(p) for p in self.autoencoders.parameters()}
        return [p for p in self.parameters() if id(p) not in ae_ids]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates under the configured mode."""
        return [p for p in self.parameters() if p.requires_grad]

    def encode_sensor(self, sensor: str, batch: SensorBatch) -> Tensor:
        """Stage-1 latent (B, latent_dim) of one sensor's windows."""
        return self.autoencoder(sensor).encode(batch.x, batch.mask, batch.gaps)

    def fuse(
        self, latents: Mapping[str, Tensor], offsets: Mapping[str, Tensor], present: Tensor
    ) -> Tensor:
        """The embedding from per-sensor latents.

        Parameters
        ----------
        latents
            Per sensor, (B, latent_dim); any finite value where the sensor is absent.
        offsets
            Per sensor, (B,) day offsets to the reference date.
        present
            (B, S) bool, which sensors contribute.

        Returns
        -------
        torch.Tensor
            (B, embed_dim), non-negative (whitened instead once :attr:`whitening` is
            fitted); NaN where no sensor is present.
        """
        c = self.config
        tokens = []
        for k, s in enumerate(c.sensors):
            z = torch.where(present[:, k : k + 1], latents[s], torch.zeros_like(latents[s]))
            off = offsets[s].abs().round().to(torch.int64).clamp(0, c.max_offset_days)
            tokens.append(
                self.proj[s](z) + self.sensor_type[s] + self.offset(off) / math.sqrt(c.d_model)
            )
        h = torch.stack(tokens, dim=1)  # (B, S, d)
        any_present = present.any(dim=1)
        # rows without any sensor attend to all tokens (finite garbage), then become NaN
        attend = present | ~any_present[:, None]
        h = self.fuser(h, src_key_padding_mask=~attend)
        w = attend.to(h.dtype).unsqueeze(-1)
        pooled = (h * w).sum(dim=1) / w.sum(dim=1)
        z = self.whitening(F.softplus(self.to_embedding(self.norm(pooled))))
        return torch.where(any_present[:, None], z, torch.full_like(z, float("nan")))

    def decode(self, embedding: Tensor, gaps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-sensor reconstructions of the whole context window from the embedding."""
        z = self.whitening.inverse_transform(embedding)
        return {s: self.autoencoder(s).decode(self.heads[s](z), gaps[s]) for s in gaps}

    def decode_centre(self, embedding: Tensor, sensor: str, gaps: Tensor) -> Tensor:
        """Reconstruction (B, C) of one sensor's centre pixel and date from the embedding."""
        z = self.whitening.inverse_transform(embedding)
        return self.autoencoder(sensor).decode_centre(self.heads[sensor](z), gaps)

    def forward(
        self,
        batch: Mapping[str, SensorBatch],
        *,
        visible: Tensor | None = None,
        latents: Mapping[str, Tensor] | None = None,
        decode: bool = True,
    ) -> FusionOutput:
        """Embed (and reconstruct) context windows of all sensors.

        Parameters
        ----------
        batch
            One :class:`SensorBatch` per sensor of the model.
        visible
            Optional (B, S) bool: sensors the caller lets the model see (for
            sensor dropout or to hide a sensor on purpose); a sensor contributes
            where it is visible *and* its centre pixel is valid.
        latents
            Precomputed latents of some sensors (frozen autoencoders give the
            same latents every epoch); the others are encoded here.
        decode
            Also reconstruct, as the configured ``objective`` needs: every
            sensor's whole window (``"context"``) or its centre pixel at the
            centre date (``"centre"``).

        Returns
        -------
        FusionOutput
        """
        c = self.config
        missing = [s for s in c.sensors if s not in batch]
        if missing:
            raise ValueError(f"the fusion model needs windows of {missing}")
        present = torch.stack([batch[s].centre_valid() for s in c.sensors], dim=1)
        if visible is not None:
            present = present & visible
        lat: dict[str, Tensor] = {}
        for s in c.sensors:
            if latents is not None and s in latents:
                lat[s] = latents[s]
            else:
                lat[s] = self.encode_sensor(s, batch[s])
        z = self.fuse(lat, {s: batch[s].offset for s in c.sensors}, present)
        recon: dict[str, Tensor] = {}
        centre: dict[str, Tensor] = {}
        if decode:
            safe = torch.nan_to_num(z)
            if c.objective == "centre":
                centre = {s: self.decode_centre(safe, s, batch[s].gaps) for s in c.sensors}
            else:
                recon = self.decode(safe, {s: batch[s].gaps for s in c.sensors})
        return FusionOutput(z, present, recon, lat, centre)


class FusionLoss(nn.Module):
    """Weighted sum of per-sensor losses: ``total = sum_s weight_s * L_s``.

    Objective ``"context"`` (the paper's): ``L_s = ContextLoss_s(recon_s, x_s,
    mask_s)``, the sensor's stage-1 loss of its whole window. Objective
    ``"centre"``: the same loss shrunk to the centre pixel at the centre date,
    where the context weights are 1 and SSIM (which needs a neighbourhood)
    drops out::

        L_s = (lambda_mae + lambda_center) * mean |r_s - x_s|
              + lambda_sam * mean angle(r_s, x_s)

    over the samples whose centre pixel of ``s`` is valid (``r_s``, ``x_s``: the
    (C,) centre spectra; the angle only for several bands). In both, samples
    without any present sensor are left out.

    Parameters
    ----------
    config
        The fusion configuration (sensors and weights).
    loss_configs
        Per-sensor loss weights (default: :meth:`LossConfig.for_sensor`).
    """

    def __init__(
        self, config: FusionConfig, loss_configs: Mapping[str, LossConfig] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        cfgs = dict(loss_configs or {})
        self.losses = nn.ModuleDict(
            {s: ContextLoss(cfgs.get(s) or LossConfig.for_sensor(s)) for s in config.sensors}
        )

    def forward(
        self, out: FusionOutput, batch: Mapping[str, SensorBatch]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and the per-sensor terms ``loss_<s>`` and ``centre_mae_<s>``."""
        ok = out.present.any(dim=1)
        total = out.embedding.new_zeros(())
        parts: dict[str, Tensor] = {}
        for s in self.config.sensors:
            b = batch[s]
            if self.config.objective == "centre":
                loss, centre = self._centre_loss(s, out.centre_recon(s), b, ok)
            else:
                mask = b.mask & ok[:, None, None, None]
                loss, terms = self.losses[s](out.recon[s], b.x, mask)
                centre = terms["center"]
            parts[f"loss_{s}"] = loss
            parts[f"centre_mae_{s}"] = centre
            total = total + self.config.weight(s) * loss
        return total, parts

    def _centre_loss(
        self, sensor: str, pred: Tensor, batch: SensorBatch, ok: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The ``"centre"`` loss of one sensor and its centre MAE."""
        cfg = cast(ContextLoss, self.losses[sensor]).config
        t, w = batch.x.shape[1] // 2, batch.x.shape[-1] // 2
        target = torch.nan_to_num(batch.x[:, t, :, w, w])
        valid = (batch.centre_valid() & ok).to(pred.dtype)
        n = valid.sum().clamp(min=1)
        mae = ((pred - target).abs().mean(dim=1) * valid).sum() / n
        loss = (cfg.lambda_mae + cfg.lambda_center) * mae
        if cfg.lambda_sam > 0 and pred.shape[1] > 1:
            loss = loss + cfg.lambda_sam * (spectral_angle(pred, target, dim=1) * valid).sum() / n
        return loss, mae


def centre_errors(
    out: FusionOutput, batch: Mapping[str, SensorBatch], sensors: Sequence[str]
) -> dict[str, tuple[float, int]]:
    """Per sensor, the summed centre-pixel MAE over valid samples and their count."""
    ok = out.present.any(dim=1)
    res = {}
    for s in sensors:
        b = batch[s]
        pred = out.centre_recon(s)[:, None, :, None, None]  # a 1 x 1 window, 1 date
        t, w = b.x.shape[1] // 2, b.x.shape[-1] // 2
        target = b.x[:, t : t + 1, :, w : w + 1, w : w + 1]
        mask = (b.centre_valid() & ok)[:, None, None, None]
        s_sum, n = centre_abs_error(pred, target, mask)
        res[s] = (float(s_sum), int(n))
    return res
