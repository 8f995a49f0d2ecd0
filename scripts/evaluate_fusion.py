"""Evidence for the fusion model on held-out real data (the tables of docs/research/fusion.md).

Usage: ``nice -n 5 python scripts/evaluate_fusion.py [--shared DIR] [--work DIR]``
after ``scripts/train_default_model.py`` (or its ``--steps export,fusion,finetune,centre``).
Deterministic: no random draw but the probe's block split (seed 0).

Test data: WorldCereal patch 0000280849BAC91C (Flanders, 2018-2019), never seen in
training (the models were trained on patch 00002806639B424A). Windows: 11 consecutive
S2 dates x 15 x 15 px centred on every pixel-date whose S2 centre pixel is valid
(strides 2 dates, 3 px). Prints markdown tables:

1. centre-pixel reconstruction MAE of S2 and S1 from the stage-1 latents (S2 9-d,
   S1 2-d) and from the fused 7-d embedding with both sensors, S2 only or S1 only
   (the other sensor hidden although present), for the fused models of ``MODELS``
   (frozen with the paper's context objective, frozen with the centre objective,
   fine-tuned) and the shipped default model;
2. the S1-only embedding against the S1+S2 embedding of the same pixel and date
   (Pearson r per feature, mean absolute difference in feature standard deviations);
3. a crop-type probe (logistic regression on one embedding per pixel-date, labels of
   the patch's LPIS parcels, train and test on disjoint 16 x 16 px blocks, balanced
   accuracy).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FLANDERS = "worldcereal_s1_s2_training_patches_flanders"
TEST_PATCH = "0000280849BAC91C"
TRAIN_PATCH = "00002806639B424A"
PROBE_CLASSES = (1110, 1200, 1510, 9120)  # wheat, maize, potatoes, grassland (>= 290 px each)
#: Fused models compared (label: folder under --work), all trained by
#: scripts/train_default_model.py on the same data, seed and number of optimiser steps.
MODELS = {
    "frozen": "fusion_frozen",
    "frozen-centre": "fusion_frozen_centre",
    "finetune": "fusion_finetune",
}
SHIPPED = "shipped"
SHIP = ROOT / "src" / "latentcube" / "samples" / "default_model" / "model.pt"


@torch.no_grad()
def run(
    shared: Path, work: Path, variants: tuple[str, ...] = (), *, held_out_blocks: bool = False
) -> None:
    """Print the tables; ``held_out_blocks``: test on the validation blocks of the test
    patch only (the split of seed 42), which a recipe trained on both patches never saw."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from latentcube.bundle import load_checkpoint, load_fusion_checkpoint
    from latentcube.cube.readers import read_worldcereal_labels, read_worldcereal_patch
    from latentcube.data.multisensor import extract_fusion_windows, split_fusion_windows
    from latentcube.data.windows import block_regions

    torch.set_num_threads(1)
    cube = read_worldcereal_patch(shared / FLANDERS / TEST_PATCH)
    train_cube = read_worldcereal_patch(shared / FLANDERS / TRAIN_PATCH)
    if held_out_blocks:
        _, w = split_fusion_windows([cube], ("s2", "s1"), stride_t=2, stride_xy=3, seed=42)
    else:
        w = extract_fusion_windows(cube, ("s2", "s1"), mode="consecutive", stride_t=2, stride_xy=3)
    b = w.tensors(np.arange(len(w)))
    n = len(w)
    ws = w.windows["s2"]
    cy, cx = ws.iy + 7, ws.ix + 7
    s2c = b["s2"].x[:, 5, :, 7, 7]
    s1c = b["s1"].x[:, 5, :, 7, 7]
    s1_ok = b["s1"].centre_valid()
    where = "the validation blocks (seed 42) of patch" if held_out_blocks else "patch"
    print(f"test windows: {n} pixel-dates of {where} {TEST_PATCH} ({cube.sizes['time']} S2 dates)")

    def mae(pred: torch.Tensor, truth: torch.Tensor, ok: torch.Tensor | None = None) -> float:
        e = (pred - truth).abs().mean(dim=1)
        return float(e[ok].mean() if ok is not None else e.mean())

    # stage-1 latents
    aes = {s: load_checkpoint(work / f"stage1_{s}" / "best.pt", sensor=s)[0] for s in ("s2", "s1")}
    lat = {s: aes[s].encode(b[s].x, b[s].mask, b[s].gaps) for s in aes}
    rows = [
        (
            "S2 stage-1 latent (9-d)",
            mae(aes["s2"].decode_centre(lat["s2"], b["s2"].gaps), s2c),
            float("nan"),
        ),
        (
            "S1 stage-1 latent (2-d)",
            float("nan"),
            mae(aes["s1"].decode_centre(lat["s1"], b["s1"].gaps), s1c, s1_ok),
        ),
    ]
    mean_s2 = torch.from_numpy(np.nanmean(train_cube["s2"].values, axis=(0, 2, 3)))
    mean_s1 = torch.from_numpy(np.nanmean(train_cube["s1"].values, axis=(0, 2, 3)))
    rows.append(
        (
            "training-patch mean spectrum (no model)",
            mae(mean_s2.expand_as(s2c), s2c),
            mae(mean_s1.expand_as(s1c), s1c, s1_ok),
        )
    )
    embeddings = {}
    models = {label: work / folder / "best.pt" for label, folder in MODELS.items()}
    models.update({v: work / f"fusion_{v}" / "best.pt" for v in variants})
    models[SHIPPED] = SHIP
    for mode, path in models.items():
        if not path.exists():
            continue
        model, meta = load_fusion_checkpoint(path)
        print(
            f"{mode}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}, "
            f"mode {model.config.mode}, objective {model.config.objective}, "
            f"best epoch {meta['metrics']['epoch']}"
        )
        # frozen: the stage-1 latents; fine-tuned: its own encoders' latents (computed once)
        mlat = (
            lat if model.config.mode == "frozen" else {s: model.encode_sensor(s, b[s]) for s in lat}
        )
        for name, vis in (
            ("S1+S2", (True, True)),
            ("S2 only", (True, False)),
            ("S1 only", (False, True)),
        ):
            visible = torch.tensor(vis).expand(n, -1)
            out = model(b, visible=visible, latents=mlat, decode=False)
            z = out.embedding
            ok = torch.isfinite(z).all(dim=1)
            zz = torch.nan_to_num(z)
            e2 = model.decode_centre(zz, "s2", b["s2"].gaps)
            e1 = model.decode_centre(zz, "s1", b["s1"].gaps)
            rows.append(
                (
                    f"fused 7-d, {mode}, {name}",
                    mae(e2, s2c, ok),
                    mae(e1, s1c, ok & s1_ok),
                )
            )
            embeddings[(mode, name)] = (z, ok)
    print("\n### Centre-pixel reconstruction MAE (normalised units), held-out patch\n")
    print("| representation | S2 MAE (reflectance) | S1 MAE (normalised dB) |")
    print("|---|---|---|")
    for name, a, c in rows:
        print(f"| {name} | {a:.4f} | {c:.4f} |")
    ref = rows[0][1]
    for name, a, _ in rows:
        if name.startswith("fused") and name.endswith("S1+S2"):
            print(f"\n{name}: S2 MAE / S2-only 9-d latent MAE = {a / ref:.3f} (target <= 1.15)")

    print("\n### S1-only embedding vs S1+S2 embedding of the same pixel-date\n")
    print("| model | Pearson r per feature (F01..F07) | mean abs diff (feature std) |")
    print("|---|---|---|")
    for mode in models:
        if (mode, "S1+S2") not in embeddings:
            continue
        za, oka = embeddings[(mode, "S1+S2")]
        zb, okb = embeddings[(mode, "S1 only")]
        ok = (oka & okb).numpy()
        a, c = za.numpy()[ok], zb.numpy()[ok]
        r = [np.corrcoef(a[:, k], c[:, k])[0, 1] for k in range(a.shape[1])]
        d = np.mean(np.abs(a - c) / (a.std(axis=0) + 1e-12))
        print(f"| {mode} | {', '.join(f'{v:.2f}' for v in r)} | {d:.2f} |")

    if held_out_blocks:  # too few pixel-dates for the probe's own block split
        return
    labels = read_worldcereal_labels(shared / FLANDERS / TEST_PATCH)["CT"].values
    y = labels[cy, cx]
    keep = np.isin(y, PROBE_CLASSES)
    train_r, _test_r = block_regions(labels.shape, 16, (0.5, 0.5), seed=0)
    in_train = train_r[cy, cx]
    feats = {
        "S2 stage-1 latent (9-d)": (lat["s2"].numpy(), np.ones(n, bool)),
        "S1 stage-1 latent (2-d)": (lat["s1"].numpy(), s1_ok.numpy()),
    }
    for (mode, name), (z, ok) in embeddings.items():
        feats[f"fused 7-d, {mode}, {name}"] = (z.numpy(), ok.numpy())
    print("\n### Crop-type probe (balanced accuracy, disjoint 16 x 16 px blocks)\n")
    tr_n = int((keep & in_train).sum())
    te_n = int((keep & ~in_train).sum())
    print(f"classes {PROBE_CLASSES}; {tr_n} training / {te_n} test pixel-dates\n")
    print("| features | balanced accuracy |")
    print("|---|---|")
    for name, (x, ok) in feats.items():
        m_tr, m_te = keep & in_train & ok, keep & ~in_train & ok
        sc = StandardScaler().fit(x[m_tr])
        clf = LogisticRegression(max_iter=2000).fit(sc.transform(x[m_tr]), y[m_tr])
        acc = balanced_accuracy_score(y[m_te], clf.predict(sc.transform(x[m_te])))
        print(f"| {name} | {acc:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "default-model")
    ap.add_argument(
        "--variants",
        default="",
        help="comma-separated recipes of train_default_model.py --variants to add "
        "(folders work/fusion_NAME)",
    )
    ap.add_argument(
        "--held-out-blocks",
        action="store_true",
        help="test on the validation blocks of the test patch only (seed 42): held out "
        "for the recipes trained on blocks of both patches too",
    )
    args = ap.parse_args()
    run(
        args.shared,
        args.work,
        tuple(filter(None, args.variants.split(","))),
        held_out_blocks=args.held_out_blocks,
    )


if __name__ == "__main__":
    main()
