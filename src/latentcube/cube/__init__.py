"""Sensor cubes: the data model, readers and (later) builders."""

from latentcube.cube.readers import (
    demo_cube_path,
    load_demo_cube,
    open_cube,
    read_geotiff_stack,
    read_greenearthnet,
    read_labels,
    read_openeo_mol,
    read_worldcereal_labels,
    read_worldcereal_patch,
)
from latentcube.cube.schema import CubeError, make_cube, select_bands, validate_cube

__all__ = [
    "CubeError",
    "demo_cube_path",
    "load_demo_cube",
    "make_cube",
    "open_cube",
    "read_geotiff_stack",
    "read_greenearthnet",
    "read_labels",
    "read_openeo_mol",
    "read_worldcereal_labels",
    "read_worldcereal_patch",
    "select_bands",
    "validate_cube",
]
