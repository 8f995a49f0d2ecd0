"""The sensor registry: which bands a sensor has and how its values are scaled.

A sensor is declared once by a :class:`SensorSpec`. The cube data model
(:mod:`latentcube.cube.schema`) stores every sensor as a variable of the same
name, and a model declares the bands it needs from each sensor, so the cube is
checked against the model rather than against a fixed band list.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["S1_BANDS", "S2_BANDS", "SENSORS", "SensorSpec", "band_dim", "register_sensor"]

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
    """

    model_config = ConfigDict(frozen=True)

    name: str
    bands: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)
    units: str = ""
    latent_dim: int = Field(default=8, ge=1)
    max_gap_days: float = Field(default=6.0, ge=0)


SENSORS: dict[str, SensorSpec] = {
    "s2": SensorSpec(
        name="s2",
        bands=S2_BANDS,
        units="surface reflectance (L2A, offset removed), clipped to [0, 1]",
        latent_dim=9,
        max_gap_days=0.0,
    ),
    "s1": SensorSpec(
        name="s1",
        bands=S1_BANDS,
        units="backscatter, (clip(dB, -30, 5) + 30) / 35",
        latent_dim=2,
        max_gap_days=6.0,
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


def band_dim(sensor: str) -> str:
    """Name of the band dimension of ``sensor`` in a cube.

    Sentinel-2 uses ``band``; every other sensor ``<name>_band`` so that the
    sensors' band coordinates never collide.
    """
    return "band" if sensor == "s2" else f"{sensor}_band"
