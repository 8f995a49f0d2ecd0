"""Cost of putting a large label raster on a small cube: the cube's window vs the whole tile.

``latentcube.cube.readers.read_labels`` (used by ``latentcube evaluate landcover|croptype
--labels``) clips the raster to the cube's bounds before reading it. This script writes a
generated land-cover tile (``--size`` x ``--size`` px of uint8 codes at 10 m, tiled and
compressed like an ESA WorldCover tile, in the cube's UTM zone), then, in one run, times
``read_labels`` for a 24 x 20 px cube inside it against reading the whole tile and
resampling it to the same grid (the path before the clip: all values as float64, then
nearest-neighbour ``reproject_match``). Peak memory of each is measured with tracemalloc
(numpy registers its buffers there); the two label maps must be equal.

    PYTHONPATH=src python benchmarks/bench_labels.py [--size 12000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
import rioxarray as rxr
import xarray as xr
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

from latentcube.cube.readers import read_labels
from latentcube.cube.schema import make_cube
from latentcube.sensors import S2_BANDS


def small_cube(ny: int = 24, nx: int = 20) -> xr.Dataset:
    """A 2-date S2 cube of ny x nx pixels at 10 m near x 500000, y 5600000 (EPSG:32631)."""
    return make_cube(
        np.full((2, len(S2_BANDS), ny, nx), 0.1, np.float32),
        np.ones((2, ny, nx), bool),
        time=np.array(["2021-05-01", "2021-05-11"], "datetime64[ns]"),
        y=5600005.0 - 10 * np.arange(ny),
        x=500005.0 + 10 * np.arange(nx),
        crs="EPSG:32631",
        bands=S2_BANDS,
    )


def write_tile(path: Path, size: int) -> None:
    """Random WorldCover codes centred on :func:`small_cube`."""
    half = size * 10 // 2
    transform = from_origin(500000 - half, 5600000 + half, 10, 10)
    rng = np.random.default_rng(0)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
        crs="EPSG:32631", nodata=0, transform=transform, tiled=True, blockxsize=512,
        blockysize=512, compress="deflate",
    ) as dst:  # fmt: skip
        for row in range(0, size, 1000):
            rows = min(1000, size - row)
            codes = rng.choice(np.array([10, 20, 30, 40, 50], np.uint8), size=(rows, size))
            dst.write(codes, 1, window=Window(0, row, size, rows))


def whole_tile(path: Path, cube: xr.Dataset) -> np.ndarray:
    """The tile read whole, then resampled to the cube's grid by nearest neighbour."""
    da = rxr.open_rasterio(path, masked=False).squeeze("band", drop=True)
    v = np.asarray(da.values, np.float64)
    lab = da.copy(data=np.where(v == da.rio.nodata, 0, v).astype(np.int32)).rio.write_nodata(0)
    grid = xr.DataArray(
        np.zeros((cube.sizes["y"], cube.sizes["x"]), np.int32),
        coords={"y": cube["y"].values, "x": cube["x"].values},
        dims=("y", "x"),
    ).rio.write_crs(cube.rio.crs)
    return np.asarray(lab.rio.reproject_match(grid, resampling=Resampling.nearest).values)


def measure(fn, *args) -> tuple[np.ndarray, float, float]:
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12000, help="tile side in pixels")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    cube = small_cube()
    with tempfile.TemporaryDirectory() as tmp:
        tif = Path(tmp) / "tile.tif"
        write_tile(tif, a.size)
        print(f"tile: {a.size} x {a.size} px uint8, {tif.stat().st_size / 2**20:.0f} MiB on disk")
        window, t_win, m_win = measure(lambda: read_labels(tif, cube).values)
        whole, t_all, m_all = measure(whole_tile, tif, cube)
    print(f"read_labels (cube window): {t_win:7.2f} s, peak {m_win:8.1f} MiB")
    print(f"whole tile, then resample: {t_all:7.2f} s, peak {m_all:8.1f} MiB")
    print(f"ratio whole / window: time {t_all / t_win:.0f}x, memory {m_all / m_win:.0f}x")
    ny, nx = window.shape
    print(f"label maps equal: {np.array_equal(window, whole)} ({ny} x {nx} px)")


if __name__ == "__main__":
    main()
