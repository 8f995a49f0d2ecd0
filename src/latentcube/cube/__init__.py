"""Sensor cubes: the data model, readers and (later) builders."""

from latentcube.cube.schema import CubeError, make_cube, select_bands, validate_cube

__all__ = ["CubeError", "make_cube", "select_bands", "validate_cube"]
