"""Reproduce the land-cover and crop-type probe numbers of docs/evaluation.md.

One command, fixed seed, fixed number of epochs (so the result does not depend
on machine speed)::

    PYTHONPATH=src nice -n 5 python scripts/evaluate_probes.py --out eval-probes

It trains a ``fast`` S2 context autoencoder per task on the task's real cubes
(no labels are used for training), embeds the cubes densely, then runs the
probes of the S2 latents and of every baseline feature set and writes one
report folder per task (``landcover/`` and ``croptype/``). Trained models are
reused when the script is run again with the same output folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentcube.bundle import load_checkpoint
from latentcube.cube.readers import open_cube, read_worldcereal_labels
from latentcube.data.windows import split_windows
from latentcube.evaluation.croptype import run_croptype
from latentcube.evaluation.landcover import run_landcover
from latentcube.inference import embed
from latentcube.models.config import AutoencoderConfig
from latentcube.training import train, train_config_preset

SHARED = Path(
    os.environ.get(
        "LATENTCUBE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
GEN = sorted((SHARED / "greenearthnet_replicated_minicubes").glob("*.nc"))
FLANDERS = sorted(
    p for p in (SHARED / "worldcereal_s1_s2_training_patches_flanders").iterdir() if p.is_dir()
)


def train_and_embed(cubes, bands, out, *, epochs, seed, stride_xy, max_val):
    cfg = AutoencoderConfig.preset("fast", "s2", bands=bands)
    ck = out / "best.pt"
    t0 = time.perf_counter()
    if not ck.exists():
        tr, va = split_windows(cubes, "s2", bands, seed=seed, stride_xy=stride_xy)
        if len(va) > max_val:
            va = va.subset(np.sort(np.random.default_rng(seed).choice(len(va), max_val, False)))
        print(f"  {len(tr)} training / {len(va)} validation windows", flush=True)
        tcfg = train_config_preset("quick").model_copy(
            update={"max_epochs": epochs, "seed": seed, "num_threads": 2}
        )
        res = train(cfg, tr, va, tcfg, out, progress=False)
        print(
            f"  trained {res.epochs} epochs, val centre MAE {res.best_val:.4f}, "
            f"{res.seconds:.0f} s",
            flush=True,
        )
    model, meta = load_checkpoint(ck, expect_bands=bands)
    embs = [embed(c, model, sensor="s2")["embedding"] for c in cubes]
    return embs, {
        "checkpoint": str(ck),
        "train_seconds": time.perf_counter() - t0,
        "epochs": epochs,
        "stride_xy": stride_xy,
        **{k: meta.get(k) for k in ("best_val", "epoch") if k in meta},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("eval-probes"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--stride-xy", type=int, default=4)
    ap.add_argument("--max-val", type=int, default=1000)
    ap.add_argument("--tasks", default="landcover,croptype")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    cmd = "PYTHONPATH=src nice -n 5 python scripts/evaluate_probes.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    tasks = a.tasks.split(",")
    if "landcover" in tasks:
        print("land cover: GreenEarthNet minicubes (B02 B03 B04 B8A, 20 m)", flush=True)
        cubes = [open_cube(p).load() for p in GEN]
        embs, info = train_and_embed(
            cubes,
            ("B02", "B03", "B04", "B8A"),
            a.out / "model_gen",
            epochs=a.epochs,
            seed=a.seed,
            stride_xy=a.stride_xy,
            max_val=a.max_val,
        )
        res = run_landcover(
            cubes,
            {"S2 latents (fast, 9-d)": embs},
            a.out / "landcover",
            seed=a.seed,
            command=cmd,
            notes=f"Model: {info}",
        )
        print(f"  wrote {a.out / 'landcover'}: {res['n_samples']} samples", flush=True)
    if "croptype" in tasks:
        print("crop type: WorldCereal Flanders patches (10 S2 bands, 10 m)", flush=True)
        cubes = [open_cube(p, with_s1=False).load() for p in FLANDERS]
        labels = [read_worldcereal_labels(p)["CT"].values for p in FLANDERS]
        embs, info = train_and_embed(
            cubes,
            tuple(str(b) for b in cubes[0]["band"].values),
            a.out / "model_flanders",
            epochs=a.epochs,
            seed=a.seed,
            stride_xy=a.stride_xy,
            max_val=a.max_val,
        )
        res = run_croptype(
            cubes,
            labels,
            {"S2 latents (fast, 9-d)": embs},
            a.out / "croptype",
            seed=a.seed,
            command=cmd,
            notes=f"Model: {info}",
        )
        print(f"  wrote {a.out / 'croptype'}: {res['n_samples']} samples", flush=True)


if __name__ == "__main__":
    main()
