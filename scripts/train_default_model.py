"""Train the default model bundle shipped in ``latentcube/samples/default_model``.

Usage: ``nice -n 5 python scripts/train_default_model.py [--shared DIR] [--work DIR]``.

Steps: stage 1 (S2, S1 ``fast`` autoencoders), the frozen S1 + S2 fusion model (shipped),
a fine-tuned fusion model and a frozen model trained with the cheaper ``centre`` objective
(both for comparison, not shipped; same data, seed, batch size and number of epochs, hence
of optimiser steps, as the shipped model), and AgERA5 weather added as a third sensor to
the shipped model (the how-to in docs/fusion.md). Every fusion step prints its wall and
CPU time.

``--variants s2w08,...`` also trains named fusion recipes (``VARIANTS``: loss weights,
objective, sensor dropout, epochs) into ``WORK/fusion_NAME``, not shipped; e.g. the
S2-weighted recipe of docs/research/evaluation.md (crop type) over the shipped stage-1 models::

    nice -n 5 python scripts/train_default_model.py --steps export --variants s2w08

``--fusion-seed N`` repeats the fusion steps with another initialisation and data order
(the split stays the stage-1 split). ``--steps export,...`` takes the stage-1
autoencoders from the shipped bundle instead of training them (frozen mode keeps them
bit for bit, so they are the stage-1 weights the shipped model was trained on), so the
comparison models can be rebuilt without stage 1.

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

import torch

ROOT = Path(__file__).resolve().parents[1]
FLANDERS = "worldcereal_s1_s2_training_patches_flanders"
TRAIN_PATCH = "00002806639B424A"
TEST_PATCH = "0000280849BAC91C"
SEED = 42
STAGE1_EPOCHS = {"s2": 8, "s1": 6}
FUSION_EPOCHS = 10
FINETUNE_EPOCHS = FUSION_EPOCHS  # equal epochs, hence equal optimiser steps
CENTRE_EPOCHS = FUSION_EPOCHS
AGERA5_EPOCHS = 3
AGERA5_FUSION_EPOCHS = 3
SENSOR_DROPOUT = 0.3
SHIP = ROOT / "src" / "latentcube" / "samples" / "default_model"
#: Named fusion recipes compared on the crop-type probe (docs/research/evaluation.md), each over
#: the same stage-1 autoencoders, data, split and batch size as the shipped model:
#: keyword arguments of :func:`fusion` (mode, epochs, objective, loss weights, dropout).
VARIANTS: dict[str, dict] = {
    "s2w08": {"mode": "frozen", "epochs": FUSION_EPOCHS, "loss_weights": {"s2": 0.8}},
    "s2w09": {"mode": "frozen", "epochs": FUSION_EPOCHS, "loss_weights": {"s2": 0.9}},
    "drop05": {"mode": "frozen", "epochs": FUSION_EPOCHS, "sensor_dropout": 0.5},
    "centre_s2w08": {
        "mode": "frozen",
        "epochs": FUSION_EPOCHS,
        "objective": "centre",
        "loss_weights": {"s2": 0.8},
    },
    "finetune_s2w08": {"mode": "finetune", "epochs": FUSION_EPOCHS, "loss_weights": {"s2": 0.8}},
    "s2w08_e20": {"mode": "frozen", "epochs": 2 * FUSION_EPOCHS, "loss_weights": {"s2": 0.8}},
    "centre_s2w08_e30": {
        "mode": "frozen",
        "epochs": 3 * FUSION_EPOCHS,
        "objective": "centre",
        "loss_weights": {"s2": 0.8},
    },
    # twice as long: the 30-epoch runs of fusion seeds 42-46 kept epoch 25-27 of 30
    "centre_s2w08_e60": {
        "mode": "frozen",
        "epochs": 6 * FUSION_EPOCHS,
        "objective": "centre",
        "loss_weights": {"s2": 0.8},
    },
    # trained on spatial blocks of both Flanders patches (3/4 of each; no labels), as
    # the PCA baseline of the probes is fitted on both
    "centre_s2w08_e30_both": {
        "mode": "frozen",
        "epochs": 3 * FUSION_EPOCHS,
        "objective": "centre",
        "loss_weights": {"s2": 0.8},
        "patches": (TRAIN_PATCH, TEST_PATCH),
    },
    "centre_s2w08_e30_d05": {
        "mode": "frozen",
        "epochs": 3 * FUSION_EPOCHS,
        "objective": "centre",
        "loss_weights": {"s2": 0.8},
        "sensor_dropout": 0.5,
    },
}


def stage1(shared: Path, work: Path) -> dict[str, Path]:
    """Train the S2 and S1 ``fast`` autoencoders; returns their best checkpoints."""
    cube = training_patch(shared)  # read once for both sensors
    return {
        s: train_stage1(cube, work / f"stage1_{s}", s, epochs)
        for s, epochs in STAGE1_EPOCHS.items()
    }


def training_patch(shared: Path):
    """The Flanders patch stage 1 and the fusion steps train on."""
    from latentcube.cube.readers import read_worldcereal_patch

    return read_worldcereal_patch(shared / FLANDERS / TRAIN_PATCH)


def train_stage1(cube, out: Path, sensor: str, epochs: int, latent_dim: int | None = None) -> Path:
    """Train one ``fast`` autoencoder on ``cube`` for ``epochs`` (seed 42) into ``out``;
    returns its best checkpoint. ``latent_dim``: the latent size (default the sensor's)."""
    from latentcube.training import fit_autoencoder

    res = fit_autoencoder(
        [cube],
        "fast",
        out,
        sensor=sensor,
        seed=SEED,
        train={"max_epochs": epochs, "num_threads": 1},
        model={"latent_dim": latent_dim} if latent_dim is not None else None,
        provenance={"cube": f"{FLANDERS}/{TRAIN_PATCH}", "split": "spatial blocks, seed 42"},
        log=lambda line: print(f"stage 1 {sensor}: {line}"),
    )
    print(f"stage 1 {sensor}: best validation centre MAE {res.best_val:.4f} ({res.stopped})")
    return res.checkpoint


def export_stage1(work: Path) -> dict[str, Path]:
    """Write the shipped bundle's (frozen, hence stage-1) autoencoders as stage-1 checkpoints."""
    from latentcube.bundle import ModelBundle

    model = ModelBundle.load(SHIP / "model.pt", kind="fusion").model
    if model.config.mode != "frozen":
        raise SystemExit("the shipped model is not frozen: its autoencoders are not stage 1's")
    out: dict[str, Path] = {}
    for s in ("s2", "s1"):
        path = work / f"stage1_{s}" / "best.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        ModelBundle(model.autoencoder(s)).save(
            path,
            extra={"provenance": {"exported_from": "latentcube/samples/default_model/model.pt"}},
        )
        out[s] = path
    print(f"stage 1: autoencoders exported from {SHIP / 'model.pt'}")
    return out


def fusion(
    shared: Path,
    work: Path,
    ckpts: dict[str, Path],
    mode: str,
    epochs: int,
    objective: str = "context",
    seed: int = SEED,
    *,
    name: str | None = None,
    loss_weights: dict[str, float] | None = None,
    sensor_dropout: float = SENSOR_DROPOUT,
    patches: tuple[str, ...] = (TRAIN_PATCH,),
) -> Path:
    """Train the S1 + S2 fusion model (``mode``: frozen or finetune); returns its bundle.

    ``seed`` sets the initialisation and the data order; the training/validation split
    is always the stage-1 split (seed 42). ``name`` is the output folder under ``work``
    (default from mode and objective); ``loss_weights`` and ``sensor_dropout`` as in
    :class:`~latentcube.models.fusion.FusionConfig` (default: equal weights, 0.3).
    ``patches``: the Flanders patches trained on, each split by its own spatial blocks
    (default: the training patch alone).
    """
    import time

    from latentcube.bundle import ModelBundle
    from latentcube.cube.readers import read_worldcereal_patch
    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.models.fusion import FusionConfig, FusionModel
    from latentcube.training import FusionTask, fit, fusion_train_config

    cubes = [read_worldcereal_patch(shared / FLANDERS / p) for p in patches]
    aes = {s: ModelBundle.load(ckpts[s], sensor=s).autoencoder(s) for s in ("s2", "s1")}
    torch.manual_seed(seed)
    model = FusionModel(
        FusionConfig.for_autoencoders(
            aes,
            mode=mode,
            sensor_dropout=sensor_dropout,
            objective=objective,
            loss_weights=loss_weights or {},
        ),
        aes,
    )
    tr, va = split_fusion_windows(cubes, model.sensors, seed=SEED, within_cubes=True)
    tcfg = fusion_train_config("quick").model_copy(
        update={"max_epochs": epochs, "seed": seed, "num_threads": 1}
    )
    name = name or f"fusion_{mode}" + ("" if objective == "context" else f"_{objective}")
    print(f"{name}: {len(tr)} training / {len(va)} validation windows")
    wall, cpu = time.perf_counter(), time.process_time()
    res = fit(
        FusionTask(model, tr, va),
        tcfg,
        work / name,
        provenance={
            "cube": ", ".join(f"{FLANDERS}/{p}" for p in patches),
            "split": "spatial blocks"
            + (" of each cube" if len(patches) > 1 else "")
            + ", seed 42 (as stage 1)",
            "autoencoders": {s: str(p.relative_to(work)) for s, p in ckpts.items()},
        },
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{name}: best validation centre MAE {res.best_val:.4f} ({res.stopped}); "
        f"{res.epochs} epochs, {res.steps} optimiser steps; this call: {wall:.0f} s wall, "
        f"{cpu:.0f} s CPU (a resumed run counts only its remaining epochs)"
    )
    return res.checkpoint


def add_agera5(shared: Path, work: Path, bundle: Path) -> Path:
    """Add daily AgERA5 weather as a third sensor to the frozen S1 + S2 model.

    Trains the weather autoencoder (stage 1), then only that autoencoder and the
    fusion layers; checks that every S1 and S2 weight is unchanged.
    """
    from latentcube.bundle import ModelBundle
    from latentcube.cube.readers import read_worldcereal_patch
    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.training import (
        FusionTask,
        extend_fusion,
        fit,
        fit_autoencoder,
        fusion_train_config,
    )

    cube = read_worldcereal_patch(shared / FLANDERS / TRAIN_PATCH, with_agera5=True)
    train = {"max_epochs": AGERA5_EPOCHS, "num_threads": 1}
    out = work / "stage1_agera5"
    res = fit_autoencoder([cube], "fast", out, sensor="agera5", seed=SEED, train=train)
    print(f"stage 1 agera5: best validation centre MAE {res.best_val:.4f}")
    wx = ModelBundle.load(res.checkpoint, sensor="agera5").autoencoder("agera5")
    base = ModelBundle.load(bundle, kind="fusion").model
    before = {k: v.clone() for k, v in base.state_dict().items() if k.startswith("autoencoders.")}
    model = extend_fusion(base, {"agera5": wx}, seed=SEED, sensor_dropout=SENSOR_DROPOUT)
    ftr, fva = split_fusion_windows([cube], model.sensors, seed=SEED)
    fcfg = fusion_train_config("quick").model_copy(
        update={"max_epochs": AGERA5_FUSION_EPOCHS, "seed": SEED, "num_threads": 1}
    )
    res = fit(
        FusionTask(model, ftr, fva), fcfg, work / "fusion_agera5", provenance={"base": str(bundle)}
    )
    after = model.state_dict()
    same = all(torch.equal(v, after[k]) for k, v in before.items())
    print(
        f"fusion + agera5: best validation centre MAE {res.best_val:.4f}; "
        f"S1 and S2 weights bit-identical: {same}"
    )
    if not same:
        raise SystemExit("adding a sensor changed an existing weight")
    return res.checkpoint


def ship(work: Path, bundle: Path) -> None:
    """Copy the frozen fusion bundle into the package."""
    import shutil

    SHIP.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, SHIP / "model.pt")
    shutil.copyfile(bundle.with_suffix(".json"), SHIP / "model.json")
    shutil.copyfile(bundle.parent / "metrics.csv", SHIP / "fusion_metrics.csv")
    for s in ("s2", "s1"):
        shutil.copyfile(work / f"stage1_{s}" / "metrics.csv", SHIP / f"stage1_{s}_metrics.csv")
    print(f"shipped {SHIP / 'model.pt'} ({(SHIP / 'model.pt').stat().st_size / 2**20:.2f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "default-model")
    ap.add_argument(
        "--steps",
        default="stage1,fusion,ship,finetune,centre,agera5",
        help="comma-separated steps to run (each resumes or is skipped when done); "
        "'export' instead of 'stage1' takes the stage-1 models from the shipped bundle",
    )
    ap.add_argument(
        "--fusion-seed",
        type=int,
        default=SEED,
        help="seed of the fusion steps' initialisation and data order (not of the split)",
    )
    ap.add_argument(
        "--variants",
        default="",
        help=f"comma-separated fusion recipes to train after the steps, into work/fusion_NAME "
        f"(not shipped): {', '.join(VARIANTS)}",
    )
    ap.add_argument(
        "--s2-stage1-epochs",
        type=int,
        default=None,
        help="with --steps export: train the S2 autoencoder afresh for this many epochs "
        "(seed 42, into work/stage1_s2_eN) and build the fusion steps on it, keeping the "
        "exported S1 autoencoder",
    )
    ap.add_argument(
        "--s2-latent-dim",
        type=int,
        default=None,
        help="with --s2-stage1-epochs: the fresh S2 autoencoder's latent size (default the "
        "paper's 9; into work/stage1_s2_eN_zD)",
    )
    args = ap.parse_args()
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    steps = args.steps.split(",")
    if args.s2_stage1_epochs is not None and "export" not in steps:
        raise SystemExit("--s2-stage1-epochs needs --steps export (S1 from the bundle)")
    if args.s2_latent_dim is not None and args.s2_stage1_epochs is None:
        raise SystemExit("--s2-latent-dim needs --s2-stage1-epochs (a fresh S2 autoencoder)")
    if args.s2_latent_dim is not None and args.s2_latent_dim < 1:
        raise SystemExit(f"--s2-latent-dim must be >= 1, got {args.s2_latent_dim}")
    torch.set_num_threads(1)
    ckpts = export_stage1(args.work) if "export" in steps else stage1(args.shared, args.work)
    if args.s2_stage1_epochs is not None:
        n, d = args.s2_stage1_epochs, args.s2_latent_dim
        out = args.work / (f"stage1_s2_e{n}" if d is None else f"stage1_s2_e{n}_z{d}")
        ckpts["s2"] = train_stage1(training_patch(args.shared), out, "s2", n, latent_dim=d)
    frozen = args.work / "fusion_frozen" / "best.pt"
    if "fusion" in steps:
        frozen = fusion(
            args.shared, args.work, ckpts, "frozen", FUSION_EPOCHS, seed=args.fusion_seed
        )
    if "ship" in steps:
        ship(args.work, frozen)
    if "finetune" in steps:
        fusion(args.shared, args.work, ckpts, "finetune", FINETUNE_EPOCHS, seed=args.fusion_seed)
    if "centre" in steps:
        fusion(
            args.shared,
            args.work,
            ckpts,
            "frozen",
            CENTRE_EPOCHS,
            objective="centre",
            seed=args.fusion_seed,
        )
    if "agera5" in steps:
        add_agera5(args.shared, args.work, frozen)
    for v in filter(None, args.variants.split(",")):
        fusion(
            args.shared, args.work, ckpts, seed=args.fusion_seed, name=f"fusion_{v}", **VARIANTS[v]
        )


if __name__ == "__main__":
    main()
