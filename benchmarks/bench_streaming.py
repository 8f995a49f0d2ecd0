"""Training data at scale: the streaming loader's memory and speed, and many cubes in one call.

Measures, on this machine:

1. peak RSS of the streaming loader (:class:`latentcube.data.streaming.StreamingWindows`
   through :class:`latentcube.data.source.BatchStream`, the same number of batches)
   over 4 and over 64 cubes, each in a fresh subprocess (target: within 20 %);
2. loader samples/s (0 and 2 ``DataLoader`` workers) against the samples/s that a
   training step of the ``fast`` S2 model consumes (target: loader >= 3x), at the
   paper's batch size (16) and at 256;
3. ``build_cubes`` over 64 sites of the local static STAC catalog of the cube tests,
   two of them failing on purpose (one outside the catalog's footprint, one in a
   date range without items), on a ``LocalCluster`` of 2 workers; then a rerun, which
   must build only the two failed sites.

The cubes of 1 and 2 are copies of the bundled sample cube (57 dates, 64 x 64 px,
S2 and S1), re-encoded as ``build_cube`` writes its stores (float32, chunks of
8 dates x all bands x the cube's 64 x 64 px, Blosc LZ4). Windows: training mode,
strides 3 dates and 3 px (``split_windows``' defaults).

    PYTHONPATH=src nice -n 5 python benchmarks/bench_streaming.py [--work DIR]

Needs ../shared/data (the catalog of step 3 is built from a real patch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRIDES = {"stride_t": 3, "stride_xy": 3}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    """Peak RSS of this process (VmHWM: ru_maxrss would include the parent's, see _memory)."""
    from _memory import peak_rss_mib

    return peak_rss_mib()


# ------------------------------------------------------------------------------ cubes


def make_cubes(work: Path, n: int) -> list[Path]:
    """``n`` copies of the sample cube, encoded as build_cube writes its stores."""
    from zarr.codecs import BloscCodec

    from latentcube.cube.readers import load_demo_cube
    from latentcube.io import write_zarr

    folder = work / "cubes"
    paths = [folder / f"cube_{i:03d}.zarr" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cube = load_demo_cube()
    codec = {"compressors": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)}
    enc = {
        str(name): {
            "chunks": tuple({"time": 8}.get(str(d), cube.sizes[d]) for d in var.dims),
            **codec,
        }
        for name, var in cube.data_vars.items()
    }
    write_zarr(cube, paths[0], encoding=enc)
    for p in paths[1:]:
        shutil.copytree(paths[0], p)
    return paths


# ---------------------------------------------------------------------- child processes


def child_rss(paths: list[Path], batches: int, batch_size: int) -> dict[str, float]:
    """Iterate ``batches`` batches of the loader over ``paths``; memory and speed."""
    import numpy as np
    import torch

    from latentcube.data.source import BatchStream
    from latentcube.data.streaming import StreamingWindows

    torch.set_num_threads(1)
    base = rss_mib()
    sw = StreamingWindows(paths, **STRIDES)
    after_index = rss_mib()
    stream = BatchStream(sw, batch_size, seed=0)
    n, t0 = 0, time.perf_counter()
    c0 = time.process_time()
    for k, b in enumerate(stream):
        n += len(b["x"])
        if k + 1 == batches:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    x, mask = b["x"].numpy(), b["mask"].numpy()
    assert not np.isnan(x).any(axis=2)[mask].any() and np.isnan(x).all(axis=2)[~mask].all()
    return {
        "cubes": len(paths),
        "windows": len(sw),
        "rss_before_mib": round(base, 1),
        "rss_after_index_mib": round(after_index, 1),
        "peak_rss_mib": round(peak_mib(), 1),
        "open_stores": len(sw._readers),
        "samples": n,
        "samples_per_s": round(n / wall, 1),
        "samples_per_cpu_s": round(n / cpu, 1),
    }


def child_loader(paths: list[Path], batches: int, batch_size: int, workers: int) -> dict:
    """Loader samples/s through a DataLoader with ``workers`` workers (after a warm-up batch)."""
    import torch

    from latentcube.data.source import BatchStream
    from latentcube.data.streaming import StreamingWindows

    torch.set_num_threads(1)
    sw = StreamingWindows(paths, **STRIDES)
    stream = BatchStream(sw, batch_size, seed=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    it = iter(loader)
    next(it)  # workers started, stores opened
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next(it)["x"])
    wall = time.perf_counter() - t0
    return {"workers": workers, "batch": batch_size, "samples_per_s": round(n / wall, 1)}


def child_train(paths: list[Path], steps: int, batch_size: int, threads: int) -> dict:
    """Samples/s consumed by training steps of the ``fast`` S2 model on real windows."""
    import numpy as np
    import torch

    from latentcube.data.streaming import StreamingWindows
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig, LossConfig
    from latentcube.models.losses import ContextLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sw = StreamingWindows(paths[:1], **STRIDES)
    x, m, g = (torch.from_numpy(a) for a in sw.batch(np.arange(batch_size) % len(sw)))
    cfg = AutoencoderConfig.preset("fast", "s2")
    model = build_autoencoder(cfg)
    loss_fn = ContextLoss(LossConfig.for_sensor("s2"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1.5e-4)
    model.train()

    def step() -> None:
        recon, z = model(x, m, g)
        loss, _ = loss_fn(recon, x, m, latent=z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    return {
        "batch": batch_size,
        "threads": threads,
        "samples_per_s": round(batch_size / statistics.median(walls), 1),
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------- build_cubes


def bench_build_cubes(work: Path, n_sites: int, workers: int) -> None:
    import pandas as pd

    sys.path.insert(0, str(ROOT / "tests"))
    from latentcube.cube.sites import build_cubes
    from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

    shared = ROOT.parent / "shared" / "data"
    cat = make_catalog(work / "stac", read_source(shared / FLANDERS / PATCH))
    lon, lat = centre_lonlat()
    rows = []
    side = math.ceil((n_sites - 2) ** 0.5)
    for i in range(n_sites - 2):  # 200 m cubes on a grid of centres inside the 640 m patch
        dy, dx = divmod(i, side)
        rows.append(
            {
                "id": f"site{i:03d}",
                "lat": lat + (dy - side / 2) * 0.00028,
                "lon": lon + (dx - side / 2) * 0.00042,
                "start": "2018-09-15",
                "end": "2018-10-20",
                "size_m": 200,
            }
        )
    rows.append({"id": "fail_far", "lat": lat + 1.0, "lon": lon, "start": "2018-09-15",
                 "end": "2018-10-20"})  # fmt: skip
    rows.append({"id": "fail_dates", "lat": lat, "lon": lon, "start": "2019-01-01",
                 "end": "2019-02-01"})  # fmt: skip
    sites = pd.DataFrame(rows)
    out = work / "built"
    shutil.rmtree(out, ignore_errors=True)
    kw = {"catalog": str(cat), "scheduler": "local", "workers": workers, "progress": False}
    t0 = time.perf_counter()
    man = build_cubes(sites, out, **kw)
    first = time.perf_counter() - t0
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("site*.zarr/**/*") if p.is_file()}
    status = man["status"].value_counts().to_dict()
    built = man[man["status"] == "ok"]
    print(
        f"build_cubes, {len(sites)} sites (200 m = 20 x 20 px, S2 + S1, 3 dates), "
        f"LocalCluster of {workers} workers: {first:.1f} s wall; status {status}; "
        f"sum of per-site build times {built['seconds'].astype(float).sum():.1f} s "
        f"(median {built['seconds'].astype(float).median():.2f} s)"
    )
    for r in man[man["status"] == "failed"].itertuples():
        print(f"  failed: {r.id}: {r.error[:110]}")
    t0 = time.perf_counter()
    again = build_cubes(sites, out, **kw)
    second = time.perf_counter() - t0
    touched = sum(p.stat().st_mtime_ns != m for p, m in mtimes.items())
    rebuilt = (again.set_index("id")["finished"] != man.set_index("id")["finished"]).sum()
    print(
        f"rerun: {second:.1f} s wall; sites given to build_cube again: {rebuilt} "
        f"({', '.join(again[again['status'] == 'failed']['id'])}); files of the "
        f"{len(built)} complete stores modified: {touched} of {len(mtimes)}"
    )


# ------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sites", type=int, default=64)
    ap.add_argument("--child", nargs="*", default=None)
    args = ap.parse_args()
    if args.child is not None:
        kind, folder, k, *rest = args.child
        paths = sorted(Path(folder).glob("cube_*.zarr"))[: int(k)]
        nums = [int(v) for v in rest]
        fn = {"rss": child_rss, "loader": child_loader, "train": child_train}[kind]
        print(json.dumps(fn(paths, *nums)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}; "
        f"load average before: {load()}"
    )
    paths = make_cubes(work, 64)
    folder = str(paths[0].parent)
    from latentcube.data.streaming import StreamingWindows

    t0 = time.perf_counter()
    sw = StreamingWindows(paths, **STRIDES)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    StreamingWindows(paths, **STRIDES)
    t_reuse = time.perf_counter() - t0
    index_kib = sum(f.stat().st_size for f in (paths[0].parent / ".latentcube-windows").iterdir())
    print(
        f"window index, 64 cubes ({len(sw)} windows): built in {t_build:.2f} s, "
        f"reused in {t_reuse:.2f} s; {index_kib / 1024:.0f} KiB of index files"
    )

    print(f"\n1. peak RSS, {args.batches} batches of 256 (0 workers), fresh process each:")
    res: dict[int, list[dict]] = {4: [], 64: []}
    for _ in range(args.repeats):
        for k in (4, 64):
            r = run_child("rss", folder, str(k), str(args.batches), "256")
            res[k].append(r)
            print(f"   {json.dumps(r)}")
    p4 = statistics.median(r["peak_rss_mib"] for r in res[4])
    p64 = statistics.median(r["peak_rss_mib"] for r in res[64])
    print(f"   median peak RSS: 4 cubes {p4:.0f} MiB, 64 cubes {p64:.0f} MiB: {p64 / p4:.3f}x")

    print("\n2. loader vs training step (samples/s, wall):")
    for b in (16, 256):
        n_batches = max(20, args.batches * 256 // b // 4)
        loaders = [
            run_child("loader", folder, "64", str(n_batches), str(b), str(w)) for w in (0, 2)
        ]
        train = run_child("train", folder, "1", "20" if b == 256 else "60", str(b), "2")
        lo = max(r["samples_per_s"] for r in loaders)
        print(
            f"   batch {b}: loader {loaders[0]['samples_per_s']} (0 workers), "
            f"{loaders[1]['samples_per_s']} (2 workers); fast S2 training step "
            f"{train['samples_per_s']} (2 threads): "
            f"loader / training {lo / train['samples_per_s']:.1f}x"
        )

    print()
    bench_build_cubes(work, args.sites, 2)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
