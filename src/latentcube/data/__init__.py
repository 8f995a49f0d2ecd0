"""Training samples: context windows cut from cubes."""

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
    "WindowDataset",
    "Windows",
    "block_regions",
    "extract_windows",
    "hide_entries",
    "split_cubes",
    "split_windows",
]
