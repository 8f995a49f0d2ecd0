"""Random-order streamed batches: store chunking of the real Romania cube, default against small.

The training loop draws windows in a random order, so each window of a batch is read
on its own from its store. Measures, in one run on this machine, the seconds per batch
of 32 random training windows (11 dates x 15 x 15 px, all ten model bands, absent bands
as NaN) read by ``StreamingWindows`` from the nrt Romania forest cube written twice:
with ``write_zarr``'s default chunks and with chunks of 10 dates x 32 x 32 px (what
``scripts/train_all_real.py`` writes). Prints both and their ratio.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_stream_chunks.py [--batches 20]

Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from latentcube.cube.readers import open_cube
from latentcube.data.streaming import StreamingWindows
from latentcube.io import write_zarr
from latentcube.sensors import S2_BANDS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nrt_romania_s2_l2a"


def per_batch(store: Path, index: Path, batches: int) -> float:
    """Median seconds of one 32-window batch drawn at random (seeded)."""
    sw = StreamingWindows(
        [store], bands=S2_BANDS, min_bands=3, index_dir=index, stride_t=3, stride_xy=5, seed=0
    )
    rng = np.random.default_rng(0)
    sw.batch(rng.choice(len(sw), 32, replace=False))  # open the store
    times = []
    for _ in range(batches):
        idx = rng.choice(len(sw), 32, replace=False)
        t0 = time.perf_counter()
        sw.batch(idx)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    a = ap.parse_args()
    cube = open_cube(DATA)[["s2", "s2_valid"]].load()
    nb = cube.sizes["band"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_zarr(cube, t / "default.zarr")
        enc = {"s2": {"chunks": (10, nb, 32, 32)}, "s2_valid": {"chunks": (10, 32, 32)}}
        write_zarr(cube, t / "small.zarr", encoding=enc)
        chunks = {k: zarr.open(t / f"{k}.zarr")["s2"].chunks for k in ("default", "small")}
        res = {k: per_batch(t / f"{k}.zarr", t / f"index-{k}", a.batches) for k in chunks}
    load = os.getloadavg()[0]
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, load {load:.1f}")
    for k, s in res.items():
        print(f"{k:8s} s2 chunks {chunks[k]}: {s * 1000:.0f} ms per batch of 32")
    print(f"ratio default / small: {res['default'] / res['small']:.1f}x")


if __name__ == "__main__":
    main()
