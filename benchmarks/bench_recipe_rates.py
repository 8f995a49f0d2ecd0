"""Rates the recipe's cost model rests on, measured on this machine (``reproduce --dry-run``).

Writes ``src/latentcube/samples/recipe_rates.json`` (or ``--out``) and prints it:

* cube building: process CPU seconds per 10 m pixel and candidate S2 date of a build
  of the real Flanders patch from the local static STAC catalog of the tests (its whole
  record, 2018-08 to 2019-11, S2 and S1; local COGs, so no network time), the bytes of
  its COGs per pixel (S2 bands per date, SCL per date, S1 per acquisition), the share
  of dates the screening keeps, the share of valid pixels, and the store's bytes per
  pixel-date;
* training: process CPU seconds per optimisation step (batch 16, one PyTorch thread,
  one epoch of the real training loop, validation and checkpoints included) for
  stage 1 S2 and S1 and the fused model, for each preset (``tiny``, ``fast``,
  ``paper``), on two 24 x 24 px crops of the bundled demo cube (one for training, one
  for validation);
* embedding: pixel-dates per process CPU second of each fused model (in memory; the
  pixel-dates with a full context, the only ones a fused model computes) on the whole
  demo cube (64 x 64 px, 57 dates; the ``paper`` model, which embeds window by window,
  on a 20 x 20 px x 15-date crop), and the bytes per pixel-date (of the whole grid) of an
  embedding store.

CPU time, not wall time, is what the plan's CPU hours need, and it depends far less
on the other processes of a shared machine. GPU rates are not measured here (no GPU
on this machine): the JSON has none, and the plan prints "not measured on a GPU".

Usage: ``python benchmarks/bench_recipe_rates.py [--out FILE] [--variants tiny,fast,paper]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cube_rates(tmp: Path) -> dict[str, float]:
    from latentcube.cube.build import build_cube
    from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, patch_dates, read_source

    folder = ROOT.parent / "shared" / "data" / FLANDERS / PATCH
    s2, s1 = patch_dates(folder)
    catalog = make_catalog(tmp / "stac", read_source(folder, s2, s1), s2_dates=s2, s1_dates=s1)
    cogs = tmp / "stac" / "cogs"
    px = 64 * 64
    band_bytes = scl_bytes = s1_bytes = 0
    for item in cogs.iterdir():
        for f in item.glob("*.tif"):
            size = f.stat().st_size
            if item.name.startswith("S1_"):
                s1_bytes += size
            elif f.stem == "SCL":
                scl_bytes += size
            else:
                band_bytes += size
    # the split date is published as two tiles of 40 columns: count their pixels
    s2_px = px * (len(s2) - 1) + 2 * 64 * 40
    lon, lat = centre_lonlat()
    c0, t0 = time.process_time(), time.perf_counter()
    cube = build_cube(
        lat=lat,
        lon=lon,
        size_m=640.0,
        start=s2[0],
        end=s2[-1],
        out=tmp / "cube.zarr",
        catalog=str(catalog),
        progress=False,
    )
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    n = cube.sizes["y"] * cube.sizes["x"]
    kept = cube.sizes["time"]
    print(f"cube: {n} px, {len(s2)} S2 dates, {kept} kept, {cpu:.2f} s CPU, {wall:.2f} s wall")
    return {
        "cpu_s_per_px_date": cpu / (n * len(s2)),
        "s2_bytes_per_px": band_bytes / s2_px,
        "scl_bytes_per_px": scl_bytes / s2_px,
        "s1_bytes_per_px": s1_bytes / (px * len(s1)),
        "store_bytes_per_px_date": _du(tmp / "cube.zarr") / (n * kept),
        "kept_date_fraction": kept / len(s2),
        "valid_fraction": float(cube["s2_valid"].mean()),
    }


def training_rates(tmp: Path, variants: list[str]) -> tuple[dict, dict, dict]:
    import torch

    from latentcube.cube.readers import load_demo_cube
    from latentcube.inference import embed, embed_to_zarr
    from latentcube.training.fusion import fit_fusion
    from latentcube.training.stage1 import fit_autoencoder

    torch.set_num_threads(1)
    full = load_demo_cube()
    demo = full.isel(y=slice(0, 24), x=slice(0, 24)).load()
    other = full.isel(y=slice(32, 56), x=slice(0, 24)).load()  # the validation cube
    small = full.isel(y=slice(0, 20), x=slice(0, 20), time=slice(0, 15)).load()
    whole = full.load()
    demo_path = tmp / "demo.zarr"
    from latentcube.io import write_zarr

    write_zarr(demo, demo_path)
    train = {"max_epochs": 1, "batch_size": 16, "num_threads": 1}
    steps: dict[str, dict[str, float]] = {"s2": {}, "s1": {}, "fusion": {}}
    embed_rates: dict[str, float] = {}
    store_bytes = 0.0
    for v in variants:
        aes = {}
        for sensor in ("s2", "s1"):
            c0 = time.process_time()
            res = fit_autoencoder(
                [demo, other], v, tmp / f"{v}-{sensor}", sensor=sensor, train=train, progress=False
            )
            cpu = time.process_time() - c0
            steps[sensor][v] = cpu / res.steps
            aes[sensor] = res.checkpoint
            print(f"{v} {sensor}: {res.steps} steps, {cpu:.1f} s CPU, {res.seconds:.1f} s wall")
        c0 = time.process_time()
        res = fit_fusion([demo, other], aes, tmp / f"{v}-fusion", train=train, progress=False)
        cpu = time.process_time() - c0
        steps["fusion"][v] = cpu / res.steps
        print(f"{v} fusion: {res.steps} steps, {cpu:.1f} s CPU, {res.seconds:.1f} s wall")
        # fused models embed with the paper's crop: 7 px and 5 dates at each edge stay NaN.
        # Dense models (tiny, fast) on the whole demo cube (64 x 64 px, 57 dates), so the
        # halo costs little; the paper's window-by-window model on a 20 x 20 px x 15-date
        # crop (no work is shared between windows, so the crop changes nothing per
        # pixel-date; 12032 pixel-dates of a 30 x 30 px crop ran past 12 minutes)
        target = small if v == "paper" else whole
        n = (target.sizes["time"] - 10) * (target.sizes["y"] - 14) * (target.sizes["x"] - 14)
        t0, c0 = time.perf_counter(), time.process_time()
        embed(target, res.checkpoint).compute()
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        embed_rates[v] = n / cpu
        print(f"{v} fused embedding: {n} px-dates, {cpu:.2f} s CPU, {sec:.2f} s wall")
        if not store_bytes:
            store = embed_to_zarr(demo_path, res.checkpoint, tmp / "emb.zarr", progress=False)
            all_px = demo.sizes["time"] * demo.sizes["y"] * demo.sizes["x"]
            store_bytes = _du(Path(store)) / all_px
    return steps, embed_rates, {"bytes": store_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "src/latentcube/samples/recipe_rates.json")
    ap.add_argument("--variants", default="tiny,fast,paper")
    args = ap.parse_args()
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; load average before {load[0]:.2f} {load[1]:.2f}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cube = cube_rates(tmp)
        steps, emb, store = training_rates(tmp, args.variants.split(","))
    import torch

    load = os.getloadavg()
    rates = {
        "machine": f"{os.cpu_count()} shared cores {platform.machine()}, no GPU, torch "
        f"{torch.__version__}, load average after {load[0]:.1f}",
        "measured": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "script": "benchmarks/bench_recipe_rates.py",
        "cube": cube,
        "train_batch_size": 16,
        "train_s_per_step": {"cpu": steps},
        "train_s_per_step_gpu": None,
        "embed_px_dates_per_s": {"cpu": emb},
        "embed_px_dates_per_s_gpu": None,
        "embedding_bytes_per_px_date": store["bytes"],
    }
    text = json.dumps(rates, indent=1)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
