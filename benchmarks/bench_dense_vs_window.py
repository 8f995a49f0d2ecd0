"""Dense `fast` inference vs window-by-window `fast` and `paper`, and vs the CPU matmul rate.

Prints, from one run on this machine:
* (a) pixel-dates per second of the `fast` dense path, the `fast` window-by-window path
  and the `paper` window-by-window path on the same cube, and their ratios;
* (b) the `fast` dense path's useful multiply-accumulate rate as a fraction of the fp32
  matmul rate (a 2048^2 torch.matmul) measured with the same number of threads just
  before and after (the higher of the two is used). Useful MACs per pixel-date are
  ``count_macs`` minus the token projections the dense path shares between windows
  (it projects each date once, not once per window), so the count is what the dense
  path must compute, never more. Measured with one thread (one single-threaded Dask
  worker per core, the default of ``embed_to_zarr``) and with all threads.

Speed does not depend on training, so the models are randomly initialised.
Usage: ``python benchmarks/bench_dense_vs_window.py [--size 96] [--dates 31]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from latentcube.data.windows import CubeArrays
from latentcube.inference import embed_block, embed_windows
from latentcube.models.autoencoder import build_autoencoder, count_macs
from latentcube.models.config import AutoencoderConfig

from conftest import tiny_cube


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.matmul(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--size", type=int, default=96, help="cube side in pixels")
    ap.add_argument("--dates", type=int, default=31)
    args = ap.parse_args()
    torch.manual_seed(0)
    cube = tiny_cube(n_time=args.dates, ny=args.size, nx=args.size, seed=0, cloud_fraction=0.0)
    arr = CubeArrays.from_cube(cube)
    fast = build_autoencoder(AutoencoderConfig.preset("fast")).eval()
    paper = build_autoencoder(AutoencoderConfig.preset("paper")).eval()
    n_pd = (args.dates - 10) * (args.size - 14) ** 2  # pixel-dates with full context
    cfg = fast.config
    macs = count_macs(cfg)
    shared = (cfg.n_dates - 1) * fast.feat_dim * cfg.d_model
    useful_macs = macs["total"] - shared

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"cube: {args.dates} dates x {args.size} x {args.size} px, {n_pd} pixel-dates with context"
    )
    print(
        f"fast MACs per pixel-date: count_macs {macs['total']} (spatial {macs['spatial']}, "
        f"temporal {macs['temporal']}); the dense path projects each date once, so "
        f"{shared} of them are shared: useful {useful_macs}"
    )
    rng = np.random.default_rng(0)
    h = args.size - 14
    sub = np.stack(
        [rng.integers(5, args.dates - 5, 512), rng.integers(0, h, 512), rng.integers(0, h, 512)], 1
    )
    sub_p = sub[:64]
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        tag = f"[{threads} thread{'s' if threads > 1 else ''}]"
        embed_block(fast, arr.data[:, :, :30, :30], arr.valid[:, :30, :30], arr.days)  # warm-up
        peak0 = matmul_gflops()
        (dense, _), t_dense = timed(
            embed_block, fast, arr.data, arr.valid, arr.days, with_error=False
        )
        peak = max(peak0, matmul_gflops())
        r_dense = n_pd / t_dense
        useful = r_dense * useful_macs * 2 / 1e9
        windowed = {}
        for name, net, pixels, bs in (("fast", fast, sub, 128), ("paper", paper, sub_p, 32)):
            windowed[name] = timed(
                embed_windows,
                net,
                arr.data,
                arr.valid,
                arr.days,
                pixels=pixels,
                with_error=False,
                batch_size=bs,
            )
        (win, _), t_fwin = windowed["fast"]
        t_paper = windowed["paper"][1]
        diff = np.abs(
            dense[:, sub[:, 0], sub[:, 1], sub[:, 2]] - win[:, sub[:, 0], sub[:, 1], sub[:, 2]]
        )
        r_fwin = len(sub) / t_fwin
        r_paper = len(sub_p) / t_paper
        print(f"{tag} fast  dense            {r_dense:12.0f} pixel-dates/s ({t_dense:.1f} s)")
        print(f"{tag} fast  window-by-window {r_fwin:12.1f} pixel-dates/s ({len(sub)} sampled)")
        print(f"{tag} paper window-by-window {r_paper:12.2f} pixel-dates/s ({len(sub_p)} sampled)")
        print(f"{tag} ratio fast dense / fast windows : {r_dense / r_fwin:10.1f}x")
        print(f"{tag} ratio fast dense / paper windows: {r_dense / r_paper:10.1f}x")
        print(f"{tag} max |dense - window| on the sampled pixel-dates: {np.nanmax(diff):.2e}")
        print(
            f"{tag} fp32 matmul rate {peak:.1f} GFLOP/s; fast dense useful rate "
            f"{useful:.1f} GFLOP/s = {useful / peak:.1%} of the matmul rate"
        )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
