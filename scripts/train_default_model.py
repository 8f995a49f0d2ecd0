"""Train the default model bundle shipped in ``latentcube/samples/default_model``.

Usage: ``nice -n 5 python scripts/train_default_model.py [--shared ../shared/data] [--work build/default-model]``.

Data: the real WorldCereal S1 + S2 patch 00002806639B424A (Flanders) for training and
validation (spatial blocks, seed 42); patch 0000280849BAC91C is never seen in training
and is the held-out test set of the model card. Stage 1 trains the ``fast`` S2 and S1
context autoencoders, stage 2 the fusion model (frozen encoders and decoders), all with
fixed epoch counts and seed 42, so a rerun reproduces the same weights on the same
machine; every stage resumes after an interruption.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLANDERS = "worldcereal_s1_s2_training_patches_flanders"
TRAIN_PATCH = "00002806639B424A"
TEST_PATCH = "0000280849BAC91C"
SEED = 42
STAGE1_EPOCHS = {"s2": 8, "s1": 6}


def stage1(shared: Path, work: Path) -> dict[str, Path]:
    """Train the S2 and S1 ``fast`` autoencoders; returns their best checkpoints."""
    from latentcube.cube.readers import read_worldcereal_patch
    from latentcube.data.windows import split_windows
    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import train, train_config_preset

    cube = read_worldcereal_patch(shared / FLANDERS / TRAIN_PATCH)
    out: dict[str, Path] = {}
    for sensor, epochs in STAGE1_EPOCHS.items():
        mcfg = AutoencoderConfig.preset("fast", sensor)
        tr, va = split_windows([cube], sensor, mcfg.bands, seed=SEED)
        tcfg = train_config_preset("quick").model_copy(
            update={"max_epochs": epochs, "seed": SEED, "num_threads": 1}
        )
        print(f"stage 1 {sensor}: {len(tr)} training / {len(va)} validation windows")
        res = train(
            mcfg,
            tr,
            va,
            tcfg,
            work / f"stage1_{sensor}",
            provenance={"cube": f"{FLANDERS}/{TRAIN_PATCH}", "split": "spatial blocks, seed 42"},
        )
        print(f"stage 1 {sensor}: best validation centre MAE {res.best_val:.4f} ({res.stopped})")
        out[sensor] = res.checkpoint
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "default-model")
    args = ap.parse_args()
    stage1(args.shared, args.work)


if __name__ == "__main__":
    main()
