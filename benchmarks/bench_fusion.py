"""Cost of a fusion training step against a stage-1 training step of one sensor.

Usage: ``nice -n 5 python benchmarks/bench_fusion.py [--shared ../shared/data] [--steps 20]``.

All steps use the same real windows (WorldCereal patch 00002806639B424A, batch 32, the
``fast`` configuration, one thread) and include forward, loss, backward and the
optimiser step. The fusion step in ``frozen`` mode runs on latents computed once per
run (the frozen encoders give the same latent every epoch), so that one-off cost is
reported separately and also amortised over a 10-epoch run. Prints medians and ratios
measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from latentcube.cube.readers import read_worldcereal_patch
from latentcube.data.multisensor import split_fusion_windows
from latentcube.fusion_training import fusion_latents
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.fusion import FusionConfig, FusionLoss, FusionModel, drop_sensors
from latentcube.models.losses import ContextLoss

ROOT = Path(__file__).resolve().parents[1]
PATCH = "worldcereal_s1_s2_training_patches_flanders/00002806639B424A"
BATCH = 32


def _median_step(step, n: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cube = read_worldcereal_patch(args.shared / PATCH)
    tr, _ = split_fusion_windows([cube], ("s2", "s1"), seed=42)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(tr), BATCH, replace=False)) for _ in range(args.steps + 1)]
    it = iter(range(10**9))

    def next_idx() -> np.ndarray:
        return batches[next(it) % len(batches)]

    res: dict[str, float] = {}
    for s in ("s2", "s1"):
        ae = build_autoencoder(AutoencoderConfig.preset("fast", s)).train()
        loss_fn = ContextLoss(LossConfig.for_sensor(s))
        opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)

        def stage1_step(ae=ae, loss_fn=loss_fn, opt=opt, s=s) -> None:
            b = tr.tensors(next_idx())[s]
            recon, _ = ae(b.x, b.mask, b.gaps)
            loss, _ = loss_fn(recon, b.x, b.mask)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()

        res[f"stage1_{s}"] = _median_step(stage1_step, args.steps)

    def fusion_setup(mode: str) -> tuple[FusionModel, FusionLoss, torch.optim.Optimizer]:
        aes = {s: build_autoencoder(AutoencoderConfig.preset("fast", s)) for s in ("s2", "s1")}
        cfg = FusionConfig.for_autoencoders(aes, mode=mode, sensor_dropout=0.3)
        model = FusionModel(cfg, aes).train()
        return model, FusionLoss(cfg), torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

    for mode, cached in (("frozen", True), ("frozen", False), ("finetune", False)):
        model, loss_fn, opt = fusion_setup(mode)
        cache = {}
        if cached:
            index = np.unique(np.concatenate(batches))
            t0 = time.perf_counter()
            lat = fusion_latents(model, tr.subset(index), ("s2", "s1"))
            res["latent_cache_per_window"] = (time.perf_counter() - t0) / len(index)
            cache = {"lat": lat, "where": {int(w): i for i, w in enumerate(index)}}

        def fusion_step(model=model, loss_fn=loss_fn, opt=opt, cache=cache) -> None:
            idx = next_idx()
            b = tr.tensors(idx)
            present = torch.stack([b[s].centre_valid() for s in model.sensors], dim=1)
            vis = drop_sensors(present, model.config.sensor_dropout)
            lat = None
            if cache:
                rows = torch.tensor([cache["where"][int(i)] for i in idx])
                lat = {s: v[rows] for s, v in cache["lat"].items()}
            out = model(b, visible=vis, latents=lat)
            loss, _ = loss_fn(out, b)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
            opt.step()

        key = f"fusion_{mode}" + ("_cached" if cached else "")
        res[key] = _median_step(fusion_step, args.steps)

    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch threads 1; batch {BATCH}")
    print(f"windows: {len(tr)} training windows of the real patch")
    for k, v in res.items():
        unit = "per window" if k == "latent_cache_per_window" else "per step"
        print(f"{k:<28} {v * 1000:9.1f} ms {unit}")
    s2 = res["stage1_s2"]
    s1 = res["stage1_s1"]
    fz = res["fusion_frozen_cached"]
    amort = fz + res["latent_cache_per_window"] * BATCH / 10
    print(f"stage-1 S2 step / fusion step (frozen, cached latents):   {s2 / fz:6.1f}x")
    print(f"stage-1 S1 step / fusion step (frozen, cached latents):   {s1 / fz:6.1f}x")
    print(f"stage-1 S2 step / fusion step incl. cache over 10 epochs: {s2 / amort:6.1f}x")
    nc, ft = res["fusion_frozen"], res["fusion_finetune"]
    print(f"stage-1 S2 step / fusion step (frozen, no cache):         {s2 / nc:6.1f}x")
    print(f"stage-1 S2 step / fusion step (fine-tuned):               {s2 / ft:6.1f}x")


if __name__ == "__main__":
    main()
