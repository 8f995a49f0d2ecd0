"""Training samples: context windows cut from cubes."""

from latentcube.data.batch import SensorBatch
from latentcube.data.windows import (
    CubeArrays,
    WindowDataset,
    Windows,
    block_regions,
    extract_windows,
    hide_entries,
    split_cubes,
    split_windows,
)

__all__ = [
    "CubeArrays",
    "SensorBatch",
    "WindowDataset",
    "Windows",
    "block_regions",
    "extract_windows",
    "hide_entries",
    "split_cubes",
    "split_windows",
]
