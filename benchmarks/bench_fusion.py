"""Cost of a fusion training step against a stage-1 training step of one sensor.

Usage: ``nice -n 5 python benchmarks/bench_fusion.py [--shared ../shared/data] [--steps 15]
[--paper-steps 3] [--configs fast,paper]``.

For each model configuration (``fast`` and ``paper``), all steps use the same real
windows (WorldCereal patch 00002806639B424A, batch 32, one thread) and include forward,
loss, backward and the optimiser step:

- stage 1 of S2 and of S1 (one autoencoder, the context loss, loading that sensor's
  windows);
- fusion in ``frozen`` mode on latents computed once per run (the frozen encoders give
  the same latent every epoch), with the paper's ``context`` objective (both frozen
  decoders reconstruct whole windows) and with the ``centre`` objective (centre pixel
  and date only; as in ``train_fusion`` the step then loads only the windows' centres);
  the one-off cost of the latents is reported separately and also
  amortised over a 10-epoch run;
- fusion in ``frozen`` mode without the cache (``fast`` only) and in ``finetune`` mode.

Prints medians and the ratios measured in this run. ``paper`` steps take seconds each,
hence fewer of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from latentcube.cube.readers import read_worldcereal_patch
from latentcube.data.multisensor import FusionWindows, split_fusion_windows
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.fusion import FusionConfig, FusionLoss, FusionModel, drop_sensors
from latentcube.models.losses import ContextLoss
from latentcube.training.fusion import fusion_centre_batches, fusion_latents

ROOT = Path(__file__).resolve().parents[1]
PATCH = "worldcereal_s1_s2_training_patches_flanders/00002806639B424A"
BATCH = 32
SENSORS = ("s2", "s1")


def _median_step(step: Callable[[], None], n: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _optimiser_step(loss: torch.Tensor, params: list, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def measure(variant: str, tr: FusionWindows, n_steps: int) -> dict[str, float]:
    """Median step times (seconds) of every step kind for one model configuration."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(tr), BATCH, replace=False)) for _ in range(n_steps + 1)]
    it = iter(range(10**9))

    def next_idx() -> np.ndarray:
        return batches[next(it) % len(batches)]

    res: dict[str, float] = {}
    for s in SENSORS:
        ae = build_autoencoder(AutoencoderConfig.preset(variant, s)).train()
        loss_fn = ContextLoss(LossConfig.for_sensor(s))
        opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)

        def stage1_step(ae=ae, loss_fn=loss_fn, opt=opt, s=s) -> None:
            # loads this sensor's windows only, as stage-1 training does
            x, m, g = (torch.from_numpy(a) for a in tr.windows[s].batch(next_idx()))
            recon, _ = ae(x, m, g)
            _optimiser_step(loss_fn(recon, x, m)[0], list(ae.parameters()), opt)

        res[f"stage1_{s}"] = _median_step(stage1_step, n_steps)

    runs = [("frozen", "context", True), ("frozen", "centre", True)]
    if variant != "paper":
        runs.append(("frozen", "context", False))
    runs.append(("finetune", "context", False))
    for mode, objective, cached in runs:
        aes = {s: build_autoencoder(AutoencoderConfig.preset(variant, s)) for s in SENSORS}
        cfg = FusionConfig.for_autoencoders(aes, mode=mode, objective=objective, sensor_dropout=0.3)
        model = FusionModel(cfg, aes).train()
        loss_fn = FusionLoss(cfg)
        params = model.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as train_fusion
        cache: dict = {}
        if cached:
            index = np.unique(np.concatenate(batches))
            t0 = time.perf_counter()
            lat = fusion_latents(model, tr.subset(index), SENSORS)
            res["latent_cache_per_window"] = (time.perf_counter() - t0) / len(index)
            cache = {"lat": lat, "where": {int(w): i for i, w in enumerate(index)}}
            if objective == "centre":
                # as train_fusion: the step needs only the windows' centres
                cache["centre"] = fusion_centre_batches(tr.subset(index))

        def fusion_step(model=model, loss_fn=loss_fn, opt=opt, params=params, cache=cache) -> None:
            idx = next_idx()
            lat = None
            if cache:
                rows = torch.tensor([cache["where"][int(i)] for i in idx])
                lat = {s: v[rows] for s, v in cache["lat"].items()}
            if "centre" in cache:
                b = {s: v.take(rows) for s, v in cache["centre"].items()}
            else:
                b = tr.tensors(idx)
            present = torch.stack([b[s].centre_valid() for s in model.sensors], dim=1)
            vis = drop_sensors(present, model.config.sensor_dropout)
            out = model(b, visible=vis, latents=lat)
            _optimiser_step(loss_fn(out, b)[0], params, opt)

        key = f"fusion_{mode}" + (f"_{objective}" if mode == "frozen" else "")
        res[key + ("_cached" if cached else "")] = _median_step(fusion_step, n_steps)
    return res


def report(variant: str, res: dict[str, float], n_steps: int) -> None:
    """Print the step times and the ratios of one configuration."""
    print(f"\n[{variant}] median of {n_steps} steps")
    for k, v in res.items():
        unit = "per window" if k == "latent_cache_per_window" else "per step"
        print(f"  {k:<32} {v * 1000:10.1f} ms {unit}")
    s2, s1 = res["stage1_s2"], res["stage1_s1"]
    fusion = {
        "frozen, context objective, cached latents": res["fusion_frozen_context_cached"],
        "frozen, centre objective, cached latents": res["fusion_frozen_centre_cached"],
    }
    cache = res["latent_cache_per_window"] * BATCH / 10
    fusion["frozen, centre objective, incl. cache over 10 epochs"] = (
        res["fusion_frozen_centre_cached"] + cache
    )
    if "fusion_frozen_context" in res:
        fusion["frozen, context objective, no cache"] = res["fusion_frozen_context"]
    fusion["fine-tuned, context objective"] = res["fusion_finetune"]
    print(f"  {'stage-1 step / fusion step':<56} {'S2':>7} {'S1':>7}")
    for name, t in fusion.items():
        print(f"  {name:<56} {s2 / t:6.1f}x {s1 / t:6.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per kind (fast)")
    ap.add_argument("--paper-steps", type=int, default=3, help="timed steps per kind (paper)")
    ap.add_argument("--configs", default="fast,paper")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cube = read_worldcereal_patch(args.shared / PATCH)
    tr, _ = split_fusion_windows([cube], SENSORS, seed=42)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch threads 1; batch {BATCH}")
    print(f"windows: {len(tr)} training windows of the real patch")
    for variant in args.configs.split(","):
        n = args.paper_steps if variant == "paper" else args.steps
        report(variant, measure(variant, tr, n), n)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
