"""latentcube: Sentinel-1/2 time series to compact, analysis-ready embedding cubes.

The public API is the set of names in ``__all__``; everything else is internal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentcube")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from latentcube.cube.schema import make_cube, validate_cube
from latentcube.errors import CubeError, LatentcubeError, ModelError, StacError
from latentcube.sensors import S1_BANDS, S2_BANDS, SENSORS, SensorSpec

__all__ = [
    "S1_BANDS",
    "S2_BANDS",
    "SENSORS",
    "CubeError",
    "LatentcubeError",
    "ModelError",
    "SensorSpec",
    "StacError",
    "__version__",
    "make_cube",
    "validate_cube",
]
