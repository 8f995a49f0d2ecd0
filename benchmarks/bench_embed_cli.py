"""``latentcube embed`` (the CLI, as a user runs it) against in-memory ``embed(...).compute()``.

Both embed the same cube with the shipped default model (fused S2 + S1), each in a
fresh Python process, taken in turn (in-memory, CLI, in-memory, CLI, ...) so that
both see the same load on a shared machine:

* CLI: the wall time of ``latentcube embed CUBE --out OUT --no-progress`` (interpreter
  start, imports, cube checks, cluster start if any, embedding, writing the store,
  the summary line): what a user waits for.
* in-memory: the wall time of ``embed(open_cube(CUBE), ModelBundle.load(MODEL))``
  followed by ``embedding_dataset(...).compute()`` inside a process that has already
  imported latentcube (the figure the CLI is held against).

Cubes: the bundled 64 x 64 px x 57-date sample as shipped (a zipped store, S2 uint16
with a scale factor), and a larger cube made from it by :func:`tiled_cube` (the
sample repeated in space to 512 x 512 px, its first ``--big-dates`` dates, written as
a float32 Zarr store chunked like built cubes). Prints each pair and the median
CLI / in-memory ratio per cube.

Usage: ``python benchmarks/bench_embed_cli.py [--repeats 2] [--big-repeats 1]
[--big-side 512] [--big-dates 16]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import xarray as xr

IN_MEMORY = textwrap.dedent(
    """
    import sys, time
    from latentcube.bundle import ModelBundle, default_model_path
    from latentcube.cube.readers import open_cube
    from latentcube.inference import embed, embedding_dataset
    if __name__ == "__main__":
        cube, bundle = open_cube(sys.argv[1]), ModelBundle.load(default_model_path())
        t0 = time.perf_counter()
        ds = embedding_dataset(embed(cube, bundle)).compute()
        print(time.perf_counter() - t0, int(ds["valid"].sum()))
    """
)


def tiled_cube(cube: xr.Dataset, side: int, n_dates: int | None = None) -> xr.Dataset:
    """``cube`` repeated in space to ``side`` x ``side`` px (its first ``n_dates`` dates).

    The copies are laid side by side on the cube's grid continued to the east and
    south (same CRS and pixel size), so the result is a valid cube of real values
    whose cost per pixel-date equals the sample's.
    """
    cube = cube.isel(time=slice(0, n_dates)).load()
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    reps_y, reps_x = -(-side // ny), -(-side // nx)
    dy = float(cube["y"][1] - cube["y"][0])
    dx = float(cube["x"][1] - cube["x"][0])
    out = {}
    for name, var in cube.data_vars.items():
        if {"y", "x"} <= set(var.dims):
            axes = [reps_y if d == "y" else reps_x if d == "x" else 1 for d in var.dims]
            data = np.tile(var.values, axes)[..., :side, :side]
            out[name] = (var.dims, data, var.attrs)
        else:
            out[name] = var
    coords = {k: v for k, v in cube.coords.items() if k not in ("y", "x")}
    coords["y"] = float(cube["y"][0]) + dy * np.arange(side)
    coords["x"] = float(cube["x"][0]) + dx * np.arange(side)
    big = xr.Dataset(out, coords=coords, attrs=cube.attrs)
    return big.rio.write_crs(cube.rio.crs)


def _write_cube(cube: xr.Dataset, path: Path) -> Path:
    from latentcube.io import write_zarr

    enc = {}
    for name, var in cube.data_vars.items():
        if {"y", "x"} <= set(var.dims):
            enc[name] = {
                "chunks": tuple(
                    8 if d == "time" else min(256, cube.sizes[d]) if d in "yx" else cube.sizes[d]
                    for d in var.dims
                )
            }
    return write_zarr(cube, path, encoding=enc)


def _cli(cube: Path, out: Path) -> float:
    exe = Path(sys.executable).with_name("latentcube")
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "embed", str(cube), "--out", str(out), "--no-progress"],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0


def _in_memory(cube: Path, script: Path) -> float:
    res = subprocess.run(
        [sys.executable, str(script), str(cube)], check=True, capture_output=True, text=True
    )
    return float(res.stdout.split()[0])


def _pairs(name: str, cube: Path, root: Path, script: Path, repeats: int) -> list[float]:
    ratios = []
    for i in range(repeats):
        mem = _in_memory(cube, script)
        cli = _cli(cube, root / f"{name}-{i}.zarr")
        ratios.append(cli / mem)
        print(
            f"{name:>22}  pair {i + 1}: CLI {cli:6.1f} s  in-memory {mem:6.1f} s  "
            f"ratio {cli / mem:.2f}",
            flush=True,
        )
    print(f"{name:>22}  median CLI / in-memory: {statistics.median(ratios):.2f}", flush=True)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="pairs on the sample")
    ap.add_argument("--big-repeats", type=int, default=1, help="pairs on the tiled cube")
    ap.add_argument("--big-side", type=int, default=512)
    ap.add_argument("--big-dates", type=int, default=16)
    args = ap.parse_args()

    import torch

    from latentcube.cube.readers import demo_cube_path, load_demo_cube

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "in_memory.py"
        script.write_text(IN_MEMORY)
        sample = demo_cube_path()
        _pairs("sample 64^2 px x 57 d", sample, root, script, args.repeats)
        if args.big_repeats:
            big = tiled_cube(load_demo_cube(), args.big_side, args.big_dates)
            path = _write_cube(big, root / "big.zarr")
            label = f"tiled {args.big_side}^2 px x {big.sizes['time']} d"
            _pairs(label, path, root, script, args.big_repeats)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
