"""Can a stage-1 configuration fit a handful of real windows? (a trainability check)

Trains a fresh model of each named configuration on the same few training
windows of the WorldCereal training patch (the split of ``scripts/train_stage1.py``)
with the spec's loss and AdamW, nothing else (no warm-up, no schedule), and prints
the centre-pixel MAE on those windows (eval mode) every ``--every`` steps, beside
the context mean and persistence of the same windows (no model). A model that
cannot go below the context mean on windows it is trained on is not learning the
centre pixel at all.

    PYTHONPATH=src python scripts/overfit_check.py --windows 4 --steps 240 --every 20 --lr 1e-3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from train_stage1 import DATA, SEED, TRAIN_CUBE, training_windows

from latentcube.cube.readers import open_cube
from latentcube.data.windows import CubeArrays
from latentcube.evaluation.reconstruction import trivial_centre
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.losses import ContextLoss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensor", default="s2", choices=["s2", "s1"])
    ap.add_argument("--variants", nargs="+", default=["paper", "fast"])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cube = CubeArrays.from_cube(open_cube(DATA / TRAIN_CUBE).load(), a.sensor)
    w, _ = training_windows(cube, a.sensor)
    pick = np.sort(np.random.default_rng(SEED).choice(len(w), a.windows, replace=False))
    x, m, g = (torch.from_numpy(v) for v in w.batch(pick))
    t, c = x.shape[1] // 2, x.shape[-1] // 2
    target = x[:, t, :, c, c].numpy()
    ctx, pers = trivial_centre(x.numpy(), m.numpy())
    print(
        f"{a.windows} windows of {TRAIN_CUBE} ({a.sensor}); no model: context mean "
        f"{np.abs(ctx - target).mean():.4f}, persistence {np.abs(pers - target).mean():.4f}"
    )
    for variant in a.variants:
        torch.manual_seed(SEED)
        model = build_autoencoder(AutoencoderConfig.preset(variant, a.sensor))
        loss_fn = ContextLoss(LossConfig.for_sensor(a.sensor))
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1.5e-4)
        curve = []
        c0 = time.process_time()
        for step in range(a.steps + 1):
            if step % a.every == 0:
                model.eval()
                with torch.no_grad():
                    rec, _ = model(x, m, g)
                curve.append(f"{step}: {np.abs(rec[:, t, :, c, c].numpy() - target).mean():.4f}")
            if step == a.steps:
                break
            model.train()
            rec, _ = model(x, m, g)
            loss, _ = loss_fn(rec, x, m)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        print(
            f"{variant} (lr {a.lr:g}, {time.process_time() - c0:.0f} CPU-s), centre MAE by "
            "step: " + ", ".join(curve),
            flush=True,
        )


if __name__ == "__main__":
    main()
