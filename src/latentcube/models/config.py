"""Pydantic configurations of the stage-1 autoencoders and their loss.

Three variants share one code base (:mod:`latentcube.models.autoencoder`):

``paper``
    The architecture of Peters et al. (2025) as rebuilt from the authors' code
    (per-frame CBAM CNN to 16x4x4, 3-layer transformer d=256 shared by encoder
    and decoder, time-token reducer, Softplus bottleneck). Window by window only.
``fast``
    Built for dense inference: a per-date spatial encoder of unpadded
    convolutions whose receptive field is exactly the 15 x 15 context, computed
    once per date over a whole tile, then a small temporal transformer on the
    centre pixel's 11 feature vectors.
``tiny``
    ``fast`` with minimal widths, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from latentcube.sensors import SENSORS

__all__ = ["AutoencoderConfig", "LossConfig"]

Variant = Literal["paper", "fast", "tiny"]

#: Fields left out of a dump when they hold their defaults (see ``AutoencoderConfig._dump``).
_BAND_MASK_FIELDS = ("band_mask", "band_dropout", "min_bands")


class AutoencoderConfig(BaseModel):
    """Configuration of one sensor's context autoencoder.

    Attributes
    ----------
    variant
        ``paper``, ``fast`` or ``tiny``.
    sensor, bands
        The sensor and the band order the model expects.
    n_dates, window
        Context size: dates (odd; centre ``n_dates // 2``) and pixels (odd).
    latent_dim
        Size of the latent (9 for S2, 2 for S1 in the paper).
    max_offset_days
        Day offsets are clamped to this.
    conv_channels, conv_dilations
        ``fast``/``tiny`` spatial encoder: one 3 x 3 unpadded convolution per
        entry; the receptive field ``1 + 2 * sum(dilations)`` must equal ``window``.
    d_model, n_heads, n_layers, ff_dim, dropout, decoder_layers
        Transformer sizes (``paper``: 256, 8, 3, 2, 0.25 as in the authors' code).
    reduced_tokens
        ``paper``: time-token reducer 11 -> R (6 for S2, 7 for S1).
    band_mask
        ``fast``/``tiny``: the spatial encoder sees a validity channel per band
        instead of one per pixel, so the model accepts cubes holding any subset of
        its bands (at least ``min_bands``): an absent band enters as 0 with its
        mask 0 and the loss ignores it (see docs/data-model.md, "Band subsets").
        Off in the presets, so their models and outputs are unchanged.
    band_dropout
        Training only (``band_mask`` models): the share of windows from which a
        random subset of bands is hidden from the encoder (keeping at least
        ``min_bands``); the hidden bands stay targets of the loss.
    min_bands
        Fewest of the model's bands a cube must have (``band_mask`` models).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: Variant
    sensor: str = "s2"
    bands: tuple[str, ...]
    n_dates: int = Field(default=11, ge=3)
    window: int = Field(default=15, ge=3)
    latent_dim: int = Field(ge=1)
    max_offset_days: int = Field(default=350, ge=1)
    conv_channels: tuple[int, ...] = (32, 48, 64, 64)
    conv_dilations: tuple[int, ...] = (1, 1, 2, 3)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.1
    decoder_layers: int = 1
    reduced_tokens: int = 6
    band_mask: bool = False
    band_dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    min_bands: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        if self.n_dates % 2 == 0 or self.window % 2 == 0:
            raise ValueError("n_dates and window must be odd (the centre is the target)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.variant != "paper":
            if len(self.conv_channels) != len(self.conv_dilations):
                raise ValueError("conv_channels and conv_dilations differ in length")
            rf = 1 + 2 * sum(self.conv_dilations)
            if rf != self.window:
                raise ValueError(
                    f"receptive field of the spatial encoder is {rf} px, window is "
                    f"{self.window} px: they must be equal for exact dense inference"
                )
        elif self.window != 15:
            raise ValueError("the paper architecture is defined for 15 x 15 windows only")
        if self.band_mask and self.variant == "paper":
            raise ValueError("band_mask is implemented for the fast and tiny models only")
        if self.band_dropout > 0 and not self.band_mask:
            raise ValueError("band_dropout needs band_mask: true")
        if self.band_mask and self.min_bands > len(self.bands):
            raise ValueError(f"min_bands {self.min_bands} exceeds the {len(self.bands)} bands")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out the band-mask fields at their defaults.

        Configurations without a band mask dump exactly as before the fields existed,
        so checkpoint identities and embedding-store attributes do not change.
        """
        out: dict[str, Any] = handler(self)
        for name in _BAND_MASK_FIELDS:
            if name in out and out[name] == type(self).model_fields[name].default:
                del out[name]
        return out

    @property
    def n_bands(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    @classmethod
    def preset(
        cls, variant: str, sensor: str = "s2", bands: Sequence[str] | None = None
    ) -> AutoencoderConfig:
        """The default configuration of ``variant`` for ``sensor``.

        Parameters
        ----------
        variant
            ``paper``, ``fast`` or ``tiny``.
        sensor
            A registered sensor (:data:`latentcube.sensors.SENSORS`).
        bands
            Band order; default the sensor's bands.
        """
        if sensor not in SENSORS:
            raise ValueError(f"unknown sensor {sensor!r}; registered: {sorted(SENSORS)}")
        spec = SENSORS[sensor]
        common: dict[str, Any] = {
            "sensor": sensor,
            "bands": tuple(bands) if bands is not None else spec.bands,
            "latent_dim": spec.latent_dim,
        }
        cfg = cls._preset(variant, sensor, common)
        if spec.model:
            cfg = cls.model_validate({**cfg.model_dump(), **spec.model})
        return cfg

    @classmethod
    def _preset(cls, variant: str, sensor: str, common: dict[str, Any]) -> AutoencoderConfig:
        if variant == "paper":
            return cls(
                variant="paper",
                d_model=256,
                n_heads=8,
                n_layers=3,
                ff_dim=2,
                dropout=0.25,
                reduced_tokens=7 if sensor == "s1" else 6,
                **common,
            )
        if variant == "fast":
            return cls(variant="fast", **common)
        if variant == "tiny":
            return cls(
                variant="tiny",
                conv_channels=(8, 8, 16, 16),
                d_model=16,
                n_heads=2,
                n_layers=1,
                ff_dim=32,
                dropout=0.0,
                **common,
            )
        raise ValueError(f"unknown variant {variant!r}; expected 'paper', 'fast' or 'tiny'")


class LossConfig(BaseModel):
    """Weights of the context loss terms (paper spec section 3.4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lambda_mae: float = 0.665
    lambda_sam: float = 0.315
    lambda_ssim: float = 0.02
    lambda_center: float = 1.75
    spatial_decay: float = 0.1
    spatial_scale: float = 0.01
    temporal_decay: float = 0.1
    #: Weight of the latent decorrelation term (not in the paper; 0 = the paper's loss):
    #: the mean squared off-diagonal correlation of the latent dimensions over a batch.
    lambda_decorrelation: float = Field(default=0.0, ge=0.0)

    @classmethod
    def for_sensor(cls, sensor: str) -> LossConfig:
        """The authors' weights: S1 (1.0, 0, 0, 1.5), S2 (0.665, 0.315, 0.02, 1.75)."""
        if sensor == "s1":
            return cls(lambda_mae=1.0, lambda_sam=0.0, lambda_ssim=0.0, lambda_center=1.5)
        return cls()

    @classmethod
    def from_overrides(cls, sensor: str, items: Sequence[str]) -> LossConfig:
        """The sensor's weights with ``FIELD=VALUE`` overrides (command-line options).

        Parameters
        ----------
        sensor
            Sensor whose weights (:meth:`for_sensor`) are overridden.
        items
            Overrides such as ``["temporal_decay=0.7", "spatial_scale=0.3"]``.

        Raises
        ------
        ValueError
            Naming the item, for an unknown field or a value that is not a number.
        """
        update: dict[str, float] = {}
        for item in items:
            key, sep, val = item.partition("=")
            if not sep or key not in cls.model_fields:
                raise ValueError(
                    f"loss override {item!r}: expected FIELD=VALUE with FIELD one of "
                    f"{', '.join(cls.model_fields)}"
                )
            try:
                update[key] = float(val)
            except ValueError:
                raise ValueError(f"loss override {item!r}: {val!r} is not a number") from None
        return cls.model_validate({**cls.for_sensor(sensor).model_dump(), **update})
