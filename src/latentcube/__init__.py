"""latentcube: Sentinel-1/2 time series to compact, analysis-ready embedding cubes.

The public API is the set of names in ``__all__``; everything else is internal.
Heavy modules (torch models, training, inference) are imported on first use, so
``import latentcube`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from latentcube import accessor as _accessor  # noqa: F401  (registers ``.latentcube`` on xarray)
from latentcube._version import __version__
from latentcube.cube.schema import make_cube, validate_cube
from latentcube.errors import (
    CubeError,
    EmbeddingError,
    EvaluationError,
    LatentcubeError,
    ModelError,
    OutputError,
    StacError,
)
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
    "fit": "latentcube.training",
    "fit_autoencoder": "latentcube.training",
    "fit_fusion": "latentcube.training",
    "whiten": "latentcube.training",
    "extend_fusion": "latentcube.training",
    "embed": "latentcube.inference",
    "embed_to_zarr": "latentcube.inference",
    "to_geotiff": "latentcube.io",
    "write_embedding": "latentcube.inference",
    "open_embedding": "latentcube.embedding_store",
    "embedding_dataset": "latentcube.embedding_store",
    "ModelBundle": "latentcube.bundle",
    "run_demo": "latentcube.demo",
    "build_cube": "latentcube.cube.build",
    "CubeSpec": "latentcube.cube.build",
    "grid_for": "latentcube.grid",
    "FusionConfig": "latentcube.models.fusion",
    "FusionModel": "latentcube.models.fusion",
    "default_model_path": "latentcube.bundle",
    "build_cubes": "latentcube.cube.sites",
    "sample_sites": "latentcube.cube.sampling",
    "flux_sites": "latentcube.cube.sites",
    "StreamingWindows": "latentcube.data.streaming",
    "summarise": "latentcube.analysis.summary",
    "change": "latentcube.analysis.change",
    "anomaly": "latentcube.analysis.change",
    "similar": "latentcube.analysis.similarity",
    "register_sensor": "latentcube.sensors",
    "load_sensor_config": "latentcube.sensors",
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
    "CubeSpec",
    "EmbeddingError",
    "EvaluationError",
    "FusionConfig",
    "FusionModel",
    "LatentcubeError",
    "LossConfig",
    "ModelBundle",
    "ModelError",
    "OutputError",
    "SensorSpec",
    "StacError",
    "StreamingWindows",
    "TrainConfig",
    "__version__",
    "anomaly",
    "build_autoencoder",
    "build_cube",
    "build_cubes",
    "change",
    "default_model_path",
    "embed",
    "embed_to_zarr",
    "embedding_dataset",
    "extend_fusion",
    "extract_windows",
    "fit",
    "fit_autoencoder",
    "fit_fusion",
    "flux_sites",
    "grid_for",
    "load_demo_cube",
    "load_sensor_config",
    "make_cube",
    "open_cube",
    "open_embedding",
    "open_zarr",
    "read_flux",
    "register_sensor",
    "run_croptype",
    "run_demo",
    "run_gpp",
    "run_landcover",
    "run_reconstruction",
    "sample_sites",
    "similar",
    "site_features",
    "summarise",
    "to_geotiff",
    "validate_cube",
    "whiten",
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
