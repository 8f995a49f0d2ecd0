"""Cost of summarising a year of embeddings against the cost of making them.

Usage: ``nice -n 5 python benchmarks/bench_summarise.py [--repeats 5] [--threads 1]``.

The bundled demo cube (WorldCereal patch, 57 dates 2017-08 .. 2018-11, 64 x 64 px) is
embedded once, in memory, with the shipped default model (fused S1 + S2 ``fast``,
``latentcube.embed``); that time is the reference. Then
``latentcube.analysis.summarise`` reduces the year 2017-09-01/2018-08-31 of that
embedding to one vector per pixel, with each statistic (mean, median, std, quantiles
0.1/0.5/0.9, quality-weighted mean, and quarters by ``every="3M"``), on the in-memory
embedding and on the same embedding written as a store (``write_embedding``: chunks of
one date x 64 x 64 px) and opened lazily (``open_embedding``; the time includes reading
it), computed with Dask's default scheduler. Each summary is timed ``--repeats`` times
(median). The ratio is embedding time / summary time; the target is at least 20.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import xarray as xr

from latentcube.analysis import summarise
from latentcube.bundle import default_model_path
from latentcube.cube.readers import load_demo_cube
from latentcube.inference import embed, embedding_dataset, open_embedding, write_embedding

YEAR = "2017-09-01/2018-08-31"
TARGET = 20.0
CASES: dict[str, dict[str, object]] = {
    "mean": {"stat": "mean"},
    "median": {"stat": "median"},
    "std": {"stat": "std"},
    "quantiles 0.1/0.5/0.9": {"stat": "quantiles"},
    "mean, weight=quality": {"stat": "mean", "weight": "quality"},
    "mean, every=3M (4 windows)": {"stat": "mean", "every": "3M"},
}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the embedding")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    cube = load_demo_cube()
    t0 = time.perf_counter()
    emb = embedding_dataset(embed(cube, default_model_path())).compute()
    t_embed = time.perf_counter() - t0
    n_pd = cube.sizes["time"] * cube.sizes["y"] * cube.sizes["x"]
    n_year = int(summarise(emb, YEAR)["count"].sum())
    print(
        f"embedding: {dict(emb['embedding'].sizes)}, {n_pd} pixel-dates, "
        f"{t_embed:.2f} s ({n_pd / t_embed:.0f} pixel-dates/s, torch threads {args.threads})"
    )
    print(f"summary window {YEAR}: {n_year} valid pixel-dates")
    tmp = tempfile.TemporaryDirectory()
    store = write_embedding(emb, Path(tmp.name) / "demo_embedding.zarr")
    inputs: dict[str, xr.Dataset] = {"memory": emb, "store": open_embedding(store)}
    print(f"store chunks: {inputs['store']['embedding'].data.chunksize}")
    worst = float("inf")
    for name, kw in CASES.items():
        for kind, src in inputs.items():

            def run(src: xr.Dataset = src, kw: dict[str, object] = kw) -> object:
                return summarise(src, YEAR, **kw).compute()  # type: ignore[arg-type]

            run()  # warm-up
            t = _median_time(run, args.repeats)
            worst = min(worst, t_embed / t)
            print(
                f"  {name:28s} {kind:6s} {t * 1000:8.1f} ms   embedding/summary {t_embed / t:7.1f}x"
            )
    tmp.cleanup()
    print(
        f"slowest summary: {worst:.1f}x faster than the embedding (target {TARGET:.0f}x): "
        f"{'met' if worst >= TARGET else 'NOT met'}"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
