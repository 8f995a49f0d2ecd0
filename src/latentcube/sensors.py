"""The sensor registry: which bands a sensor has and how its values are scaled.

A sensor is declared once by a :class:`SensorSpec`. The cube data model
(:mod:`latentcube.cube.schema`) stores every sensor as a variable of the same
name, and a model declares the bands it needs from each sensor, so the cube is
checked against the model rather than against a fixed band list.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AGERA5",
    "S1_BANDS",
    "S2_BANDS",
    "SENSORS",
    "SensorSpec",
    "band_dim",
    "ensure_sensor",
    "load_sensor_config",
    "register_sensor",
]

#: The ten Sentinel-2 L2A bands the paper's model uses, in its order.
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: The Sentinel-1 polarisations, stored as normalised dB.
S1_BANDS: tuple[str, ...] = ("VV", "VH")


class SensorSpec(BaseModel):
    """Declaration of one sensor.

    Parameters
    ----------
    name
        Variable name of the sensor in a cube (``"s2"``, ``"s1"``, ...).
    bands
        Default band names, in model order.
    value_range
        Closed interval every valid value must lie in once the cube is built.
    units
        Human-readable description of the stored values.
    latent_dim
        Size of the sensor's stage-1 latent in the paper configuration.
    max_gap_days
        Largest distance in days between this sensor's acquisition and the S2
        date it is matched to; ``0`` for the sensor that defines the time axis.
    date_matching
        How the sensor's dates are matched to the S2 dates: ``"reference"`` (it
        defines the time axis), ``"nearest"`` acquisition within
        ``max_gap_days`` (its time in the coordinate ``<name>_time``),
        ``"daily"`` (a daily product: the value of the S2 day) or ``"static"``
        (no time dimension, e.g. elevation, repeated on every date).
    normalisation
        How stored values are derived from the source values (documentation,
        e.g. ``"(T - 253.15) / 60"``).
    model
        Overrides of the stage-1 autoencoder configuration for this sensor
        (fields of :class:`latentcube.models.config.AutoencoderConfig`, e.g.
        ``{"conv_channels": [8, 8, 16, 16]}``), applied by
        ``AutoencoderConfig.preset``.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    bands: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)
    units: str = ""
    latent_dim: int = Field(default=8, ge=1)
    max_gap_days: float = Field(default=6.0, ge=0)
    date_matching: Literal["reference", "nearest", "daily", "static"] = "nearest"
    normalisation: str = ""
    model: dict[str, Any] = Field(default_factory=dict)


SENSORS: dict[str, SensorSpec] = {
    "s2": SensorSpec(
        name="s2",
        bands=S2_BANDS,
        units="surface reflectance (L2A, offset removed), clipped to [0, 1]",
        latent_dim=9,
        max_gap_days=0.0,
        date_matching="reference",
        normalisation="L2A DN * 1e-4 (offset removed), clipped to [0, 1]",
    ),
    "s1": SensorSpec(
        name="s1",
        bands=S1_BANDS,
        units="backscatter, (clip(dB, -30, 5) + 30) / 35",
        latent_dim=2,
        max_gap_days=6.0,
        normalisation=(
            "3-acquisition rolling mean in linear power, then (clip(dB, -30, 5) + 30) / 35"
        ),
    ),
}


def register_sensor(spec: SensorSpec, *, overwrite: bool = False) -> SensorSpec:
    """Add a sensor to :data:`SENSORS`.

    Parameters
    ----------
    spec
        The declaration.
    overwrite
        Replace an existing sensor of the same name instead of raising.

    Returns
    -------
    SensorSpec
        The registered declaration.
    """
    if spec.name in SENSORS and not overwrite:
        raise ValueError(f"sensor {spec.name!r} is already registered")
    SENSORS[spec.name] = spec
    return spec


#: Daily AgERA5 weather at a patch (a declaration, not registered by default):
#: :func:`latentcube.cube.readers.attach_agera5` registers it when it adds the data.
AGERA5 = SensorSpec(
    name="agera5",
    bands=("tmean", "tmean_30d", "precip_10d", "rad_10d", "vapour_pressure"),
    units="daily AgERA5 weather on the S2 day and the days before it, scaled to [0, 1]",
    latent_dim=2,
    max_gap_days=0.0,
    date_matching="daily",
    normalisation=(
        "tmean, tmean_30d: (K - 253.15) / 60 (day, 30-day mean); precip_10d: 10-day sum "
        "mm / 100; rad_10d: 10-day mean J m-2 d-1 / 3.5e7; vapour_pressure: hPa / 30; "
        "all clipped to [0, 1]"
    ),
    model={"conv_channels": [8, 8, 16, 16], "d_model": 32, "n_heads": 2, "ff_dim": 64},
)


def load_sensor_config(
    path: str | os.PathLike[str], *, register: bool = True, overwrite: bool = False
) -> SensorSpec:
    """Read a sensor declaration from a YAML (or JSON) file and register it.

    The file holds the fields of :class:`SensorSpec`, e.g.::

        name: agera5
        bands: [temperature_mean, precipitation_flux]
        latent_dim: 2
        date_matching: daily
        normalisation: "(K - 253.15) / 60; mm / 30"
        model: {conv_channels: [8, 8, 16, 16]}

    Parameters
    ----------
    path
        The file.
    register
        Add it to :data:`SENSORS`; an identical existing declaration is accepted.
    overwrite
        Replace a different declaration of the same name instead of raising.

    Returns
    -------
    SensorSpec
        The declaration.
    """
    from latentcube._yaml import read_yaml

    spec = SensorSpec.model_validate(read_yaml(path))
    if register:
        ensure_sensor(spec, overwrite=overwrite)
    return spec


def ensure_sensor(spec: SensorSpec, *, overwrite: bool = False) -> SensorSpec:
    """Register ``spec`` unless an identical declaration of that name already is.

    Raises
    ------
    ValueError
        When a *different* declaration of the same name is registered and
        ``overwrite`` is False.
    """
    if SENSORS.get(spec.name) == spec:
        return spec
    if spec.name in SENSORS and not overwrite:
        raise ValueError(
            f"sensor {spec.name!r} is already registered with another declaration: "
            f"{SENSORS[spec.name].model_dump()} (pass overwrite=True to replace it)"
        )
    SENSORS[spec.name] = spec
    return spec


def band_dim(sensor: str) -> str:
    """Name of the band dimension of ``sensor`` in a cube.

    Sentinel-2 uses ``band``; every other sensor ``<name>_band`` so that the
    sensors' band coordinates never collide.
    """
    return "band" if sensor == "s2" else f"{sensor}_band"
