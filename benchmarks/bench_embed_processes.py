"""``latentcube embed`` on Dask worker processes (the default) against ``--no-processes``.

Both embed the bundled 64 x 64 px x 57-date sample with the shipped default model
in more chunks than cores (``--chunk 32 --time-chunk 16``: 16 chunks), so that the
run takes the local-cluster path rather than the in-process one. Each run is the
wall time of ``latentcube embed`` in a fresh Python process (interpreter start,
imports, cluster start, embedding, writing, the summary line), taken in turn
(processes, threads, processes, ...) so that both see the same load on a shared
machine. Prints each pair, the median of each and the processes / threads ratio, and
checks that both stores hold the same embedding.

Usage: ``python benchmarks/bench_embed_processes.py [--repeats 3] [--workers N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(cube: Path, out: Path, workers: int | None, *extra: str) -> float:
    """Wall seconds of one ``latentcube embed`` run in a fresh process."""
    cmd = [sys.executable, "-m", "latentcube", "embed", str(cube), "--out", str(out)]
    cmd += ["--no-progress", "--chunk", "32", "--time-chunk", "16", "--overwrite", *extra]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    from latentcube.cube.readers import demo_cube_path
    from latentcube.inference import open_embedding

    cube = demo_cube_path()
    print(f"cube {cube.name}; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        procs, threads = [], []
        for i in range(args.repeats):
            procs.append(run(cube, Path(tmp) / "p.zarr", args.workers))
            threads.append(run(cube, Path(tmp) / "t.zarr", args.workers, "--no-processes"))
            print(f"pair {i + 1}: processes {procs[-1]:.1f} s, threads {threads[-1]:.1f} s")
        a, b = open_embedding(Path(tmp) / "p.zarr"), open_embedding(Path(tmp) / "t.zarr")
        same = np.allclose(a["embedding"].values, b["embedding"].values, atol=1e-6, equal_nan=True)
    p, t = statistics.median(procs), statistics.median(threads)
    print(f"median: processes {p:.1f} s, threads {t:.1f} s; processes / threads {p / t:.2f}")
    print(f"same embedding (atol 1e-6): {same}; load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
