"""latentcube: Sentinel-1/2 time series to compact, analysis-ready embedding cubes.

The public API is the set of names in ``__all__``; everything else is internal.
Heavy modules (torch models, training, inference) are imported on first use, so
``import latentcube`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("latentcube")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from latentcube.cube.schema import make_cube, validate_cube
from latentcube.errors import CubeError, EvaluationError, LatentcubeError, ModelError, StacError
from latentcube.sensors import S1_BANDS, S2_BANDS, SENSORS, SensorSpec

_LAZY = {
    "open_cube": "latentcube.cube.readers",
    "load_demo_cube": "latentcube.cube.readers",
    "write_zarr": "latentcube.io",
    "open_zarr": "latentcube.io",
    "extract_windows": "latentcube.data.windows",
    "AutoencoderConfig": "latentcube.models.config",
    "LossConfig": "latentcube.models.config",
    "build_autoencoder": "latentcube.models.autoencoder",
    "TrainConfig": "latentcube.training",
    "train": "latentcube.training",
    "load_checkpoint": "latentcube.bundle",
    "save_checkpoint": "latentcube.bundle",
    "embed": "latentcube.inference",
    "write_embedding": "latentcube.inference",
    "open_embedding": "latentcube.inference",
    "run_demo": "latentcube.demo",
    "read_flux": "latentcube.evaluation.flux",
    "site_features": "latentcube.evaluation.features",
    "run_gpp": "latentcube.evaluation.gpp",
    "run_landcover": "latentcube.evaluation.landcover",
    "run_croptype": "latentcube.evaluation.croptype",
    "run_reconstruction": "latentcube.evaluation.reconstruction",
}

__all__ = [
    "S1_BANDS",
    "S2_BANDS",
    "SENSORS",
    "AutoencoderConfig",
    "CubeError",
    "EvaluationError",
    "LatentcubeError",
    "LossConfig",
    "ModelError",
    "SensorSpec",
    "StacError",
    "TrainConfig",
    "__version__",
    "build_autoencoder",
    "embed",
    "extract_windows",
    "load_checkpoint",
    "load_demo_cube",
    "make_cube",
    "open_cube",
    "open_embedding",
    "open_zarr",
    "read_flux",
    "run_croptype",
    "run_demo",
    "run_gpp",
    "run_landcover",
    "run_reconstruction",
    "save_checkpoint",
    "site_features",
    "train",
    "validate_cube",
    "write_embedding",
    "write_zarr",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'latentcube' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
