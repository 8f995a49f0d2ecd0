"""Dense embedding on a device: throughput, GPU memory and agreement with the CPU, per tile size.

Usage: ``nice -n 5 python benchmarks/_gpu_embed.py --device cpu|cuda|cuda:N [--seconds 300]
[--tiles 128 256 512] [--dates 2] [--work /tmp/gpu-embed]``; ``benchmarks/bench_gpu.py``
imports it and prints the lines :func:`run` returns.

Inputs: the bundled sample cube (WorldCereal patch, 64 x 64 px) mirrored to each tile
size plus the model's halo, its first ``--dates`` + 10 dates (the centre dates and
their context), and the shipped default model (fused S1 + S2 ``fast``); no downloads.
For each tile the output chunk is the whole tile over ``--dates`` centre dates,
embedded by the fused job's ``compute`` (what one Dask task runs):

* on ``--device``, the model moved there and one model call per date for the whole
  tile (``batch_size`` = every pixel-date of the tile: the accelerator's batching, run
  through the same code on a CPU);
* on the CPU with the CPU defaults (2048 pixels per stage-1 call, 8192 pixel-dates per
  fusion call): the reference.

Printed per tile: pixel-dates per second of both and their ratio (one run, one
machine), the peak GPU memory (``torch.cuda.max_memory_allocated``, CUDA only) and the
largest absolute difference between the two embeddings (must be <= 1e-4 in fp32). Tile
sizes whose estimated cost (from the previous tile's rate) would overrun ``--seconds``
are skipped and said so. On a CPU the GPU figures are "not measured on a GPU".
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

#: Largest allowed |device - CPU| of the embedding in fp32.
TOLERANCE = 1e-4


def _tile_cube(cube: xr.Dataset, side: int, n_dates: int) -> xr.Dataset:
    """``cube``'s first ``n_dates`` dates mirrored (numpy ``symmetric``) to ``side`` px square."""
    sub = cube.isel(time=slice(0, n_dates), y=slice(0, side), x=slice(0, side))
    ny, nx = sub.sizes["y"], sub.sizes["x"]
    out = {}
    for name, var in sub.data_vars.items():
        pad = [(0, 0)] * (var.ndim - 2) + [(0, side - ny), (0, side - nx)]
        out[name] = (var.dims, np.pad(var.values, pad, mode="symmetric"))
    y0, x0 = float(sub["y"][0]), float(sub["x"][0])
    dy, dx = float(sub["y"][1] - sub["y"][0]), float(sub["x"][1] - sub["x"][0])
    coords = {k: v for k, v in sub.coords.items() if "y" not in v.dims and "x" not in v.dims}
    coords["y"] = y0 + dy * np.arange(side)
    coords["x"] = x0 + dx * np.arange(side)
    tiled = xr.Dataset(out, coords=coords, attrs=dict(sub.attrs))
    return tiled.rio.write_crs(cube.rio.crs)


def _embed_tile(job: Any, model: Any, arrays: dict, chunk: tuple) -> tuple[np.ndarray, float]:
    """The embedding of one chunk and the seconds it took (results back on the host)."""
    t0 = time.perf_counter()
    layers = job.compute(model, arrays, *chunk)
    return layers["embedding"], time.perf_counter() - t0


def _machine(device: torch.device) -> str:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    what = f"{platform.node()} ({os.cpu_count()} CPUs, load {load})"
    if device.type == "cuda":
        what += f", GPU {torch.cuda.get_device_name(device)}"
    return f"machine: {what}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"


def run(args: argparse.Namespace) -> list[str]:
    """Measure dense embedding per tile size on ``args.device``; the report's lines.

    ``args`` needs ``device`` (str), ``seconds`` (float, the whole run's budget) and
    ``work`` (a scratch folder; nothing is left in it); optional ``tiles`` (sides in
    px, default 128 256 512), ``dates`` (centre dates per tile, default 2) and
    ``threads`` (CPU threads of torch, default torch's).
    """
    from latentcube.bundle import ModelBundle, default_model_path
    from latentcube.cube.readers import load_demo_cube
    from latentcube.devices import resolve_device
    from latentcube.inference.engine import on_device, plan
    from latentcube.inference.job import Options
    from latentcube.inference.tasks import sensor_arrays

    device = resolve_device(args.device)
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    tiles = list(getattr(args, "tiles", None) or (128, 256, 512))
    n_centre = int(getattr(args, "dates", None) or 2)
    budget = float(args.seconds)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bundle = ModelBundle.load(default_model_path())
    cpu_model = bundle.model.eval()
    dev_model = on_device(cpu_model, device)
    cube = load_demo_cube()
    c = 5  # dates of context on either side (every sensor of the default model)
    h = 7  # pixels of context on either side
    gpu = device.type == "cuda"
    lines = [
        _machine(device),
        f"model: shipped default ({bundle.kind}, {'+'.join(bundle.sensors)}); input: the "
        f"sample cube mirrored to each tile + {h} px halo, {n_centre} centre date(s) + "
        f"{2 * c} context dates; device {device}, whole-tile batches; reference: CPU, "
        "default batches",
    ]
    if not gpu:
        lines.append(
            "GPU throughput and GPU memory: not measured on a GPU (this run is on "
            f"{device}; the device path below is the whole-tile batching run on it)"
        )
    # warm-up of both paths on a small tile: lazy initialisation, kernels, allocator
    small = _tile_cube(cube, 16 + 2 * h, 1 + 2 * c)
    job = plan(bundle, small, Options())
    arrays = {s: sensor_arrays(small, s) for s, _ in job.reads}
    for model in (dev_model, cpu_model):
        job.compute(model, arrays, slice(c, c + 1), slice(h, h + 16), slice(h, h + 16))
    worst = 0.0
    rate_ref: float | None = None
    for side in sorted(tiles):
        n_pd = n_centre * side * side
        spent = time.perf_counter() - t_start
        if rate_ref is not None and spent + 2.5 * n_pd / rate_ref > budget:
            lines.append(
                f"tile {side:4d} px: skipped, its estimated "
                f"{2.5 * n_pd / rate_ref:.0f} s would overrun the {budget:.0f} s budget "
                f"({spent:.0f} s spent)"
            )
            continue
        tiled = _tile_cube(cube, side + 2 * h, n_centre + 2 * c)
        whole = Options(batch_size=n_pd)
        job = plan(bundle, tiled, whole)
        ref_job = plan(bundle, tiled, Options())
        arrays = {
            s: tuple(np.ascontiguousarray(a) for a in sensor_arrays(tiled, s)) for s, _ in job.reads
        }
        chunk = (slice(c, c + n_centre), slice(h, h + side), slice(h, h + side))
        if gpu:
            _embed_tile(job, dev_model, arrays, chunk)  # warm-up at this size (allocator)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        emb_dev, t_dev = _embed_tile(job, dev_model, arrays, chunk)
        mem = (
            f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"
            if gpu
            else "peak GPU memory not measured on a GPU"
        )
        emb_cpu, t_cpu = _embed_tile(ref_job, cpu_model, arrays, chunk)
        rate_ref = n_pd / t_cpu
        both = np.isfinite(emb_dev) & np.isfinite(emb_cpu)
        same_nan = bool((np.isfinite(emb_dev) == np.isfinite(emb_cpu)).all())
        diff = float(np.abs(emb_dev[both] - emb_cpu[both]).max()) if both.any() else 0.0
        worst = max(worst, diff if same_nan else float("inf"))
        ok = "ok" if same_nan and diff <= TOLERANCE else "FAILED"
        lines.append(
            f"tile {side:4d} px: {device} {n_pd / t_dev:9,.0f} pixel-dates/s ({t_dev:6.2f} s), "
            f"CPU reference {rate_ref:9,.0f} pixel-dates/s ({t_cpu:6.2f} s), "
            f"{device}/CPU {t_cpu / t_dev:5.2f}x; {mem}; max |{device} - CPU| {diff:.1e} "
            f"(NaN pattern {'equal' if same_nan else 'DIFFERENT'}; <= {TOLERANCE:g}: {ok})"
        )
    lines.append(
        f"largest |{device} - CPU| over the tiles: {worst:.1e} "
        f"({'within' if worst <= TOLERANCE else 'OVER'} {TOLERANCE:g}); "
        f"{time.perf_counter() - t_start:.0f} s in all"
    )
    return lines


def main() -> None:
    """Command line: print :func:`run`'s lines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seconds", type=float, default=300.0, help="budget of the whole run")
    p.add_argument("--work", type=Path, default=Path("/tmp/latentcube-gpu-embed"))
    p.add_argument("--tiles", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--dates", type=int, default=2, help="centre dates per tile")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch")
    for line in run(p.parse_args()):
        print(line, flush=True)


if __name__ == "__main__":
    main()
