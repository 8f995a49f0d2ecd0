"""Compare the SCL cloud mask with the learned one (ukis-csmask) on the real patches.

The numbers and figures of docs/research/cloudmask.md::

    PYTHONPATH=src nice -n 5 python scripts/compare_cloud_masks.py --out runs/cloudmask

Part ``masks`` (``--part masks``): for every date of the per-date S2 patches in
../shared/data (the two WorldCereal Flanders patches, 10 bands: the 6-band model;
the five-year Romania forest cube, 4 bands: the 4-band model; the Mol openEO patch,
whose bands B01/B04/B08/B11 neither model can use), the share of pixels flagged by
each mask as the cube builder applies it (``SCLMask()`` and ``CSMask()``, both
with their default 1 px dilation), their pixel agreement, Cohen's kappa and the IoU
of the flagged pixels; the same summaries for the learned mask at 10 m and, on
Flanders, with the 4-band model; figures of the dates where the two disagree most
(true colour beside both masks) and of the flagged share over time. No cloud
ground truth exists for these patches: the figures show disagreement, not accuracy.

Part ``train`` (``--part train``): the downstream effect. The ``fast`` S2 context
autoencoder is trained on the two Flanders patches masked each way (SCL, learned,
both), with the same seeds, a fixed number of epochs and one CPU thread pair,
through the library's training function (:func:`fit`, below); split by patch.
Each model's validation reconstruction (centre-pixel MAE) is reported on its own
validation windows and on the windows every mask calls clear (the ``scl+csmask``
cube), so the numbers compare; the spread over seeds is the noise. The crop-type
probe of docs/research/evaluation.md runs on the S2 bands of each masked cube (no model:
what the mask alone changes) and on the trained models' embeddings.

Results: ``<out>/masks.json``, ``<out>/masks_per_date.csv``, ``<out>/train.json``;
figures in ``docs/images/`` (``--figures``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from latentcube.cube.csmask import CSMask
from latentcube.cube.masks import SCLMask
from latentcube.cube.sentinel2 import mask_reflectance
from latentcube.errors import CubeError
from latentcube.sensors import S2_BANDS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTCUBE_SHARED_DATA", ROOT.parent / "shared" / "data"))
FLANDERS = SHARED / "worldcereal_s1_s2_training_patches_flanders"
PATCHES = ("00002806639B424A", "0000280849BAC91C")
ROMANIA = SHARED / "nrt_romania_s2_l2a" / "sentinel2_cube_subset_romania_10m.nc"
MOL = SHARED / "openeo_gfmap_s1_s2_mol_april2023" / "cdse_sentinel2_l2a.nc"
SCL_NAMES = {0: "no data", 1: "saturated", 3: "shadow", 8: "cloud med.", 9: "cloud high",
             10: "cirrus", 11: "snow"}  # fmt: skip


@dataclass
class Site:
    """Raw per-date reflectance (NaN: no data) and SCL of one patch, every date kept."""

    name: str
    times: np.ndarray
    refl: np.ndarray  # (time, band, y, x) float32 >= 0 (not clipped at 1), NaN: no data
    bands: tuple[str, ...]
    scl: np.ndarray  # (time, y, x) uint8
    x: np.ndarray
    y: np.ndarray
    crs: str
    attribution: str


def _up2(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def _refl(dn: np.ndarray) -> np.ndarray:
    """DN -> reflectance as a build gives it to the masks (no offset before baseline 04.00;
    not clipped at 1, :func:`~latentcube.cube.sentinel2.mask_reflectance`)."""
    return mask_reflectance(dn, 0.0)


def read_flanders(patch: str) -> Site:
    folder = FLANDERS / patch
    with (
        xr.open_dataset(next(folder.glob("S2_L2A_10m_*.nc")), mask_and_scale=False) as a,
        xr.open_dataset(next(folder.glob("S2_L2A_20m_*.nc")), mask_and_scale=False) as b,
    ):
        refl = np.stack(
            [_refl(a[k].values if k in a else _up2(b[k].values)) for k in S2_BANDS], axis=1
        )
        return Site(
            f"Flanders {patch}", a["timestamp"].values, refl, S2_BANDS,
            _up2(b["SCL"].values).astype(np.uint8), a["x"].values, a["y"].values, "EPSG:32631",
            "WorldCereal (MIT); Copernicus Sentinel data",
        )  # fmt: skip


def read_romania() -> Site:
    with xr.open_dataset(ROMANIA, mask_and_scale=False) as d:
        refl = np.stack([_refl(d[f"B{b}"].values) for b in (2, 3, 4, 8)], axis=1)
        return Site(
            "Romania forest", d["time"].values, refl, ("B02", "B03", "B04", "B08"),
            d["SCL"].values.astype(np.uint8), d["x"].values, d["y"].values, "EPSG:3035",
            "nrt 0.1.0 (EUPL-1.2); Copernicus Sentinel data",
        )  # fmt: skip


def read_mol() -> Site:
    with xr.open_dataset(MOL, mask_and_scale=False) as d:
        bands = ("B01", "B04", "B08", "B11")
        refl = np.stack([_refl(d[f"S2-L2A-{b}"].values) for b in bands], axis=1)
        return Site(
            "Mol openEO", d["t"].values, refl, bands, d["S2-L2A-SCL"].values.astype(np.uint8),
            d["x"].values, d["y"].values, "EPSG:32631",
            "openEO-GFMap (Apache-2.0); Copernicus Sentinel data",
        )  # fmt: skip


# --------------------------------------------------------------------------- metrics


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pixel agreement, Cohen's kappa and IoU of two flagged (True = masked) arrays."""
    a, b = a.ravel().astype(bool), b.ravel().astype(bool)
    po = float((a == b).mean())
    pa, pb = float(a.mean()), float(b.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    union = int((a | b).sum())
    return {
        "agreement": po,
        "kappa": (po - pe) / (1 - pe) if pe < 1 - 1e-12 else float("nan"),
        "iou": float((a & b).sum() / union) if union else float("nan"),
    }


def compare_site(site: Site, model_bands: int, variants: bool) -> dict:
    """Per-date comparison of SCL and the learned mask (builder defaults) on one site."""
    scl_flag = ~SCLMask()(site.refl, site.scl, site.bands)
    learned = CSMask(bands=model_bands)
    t0 = time.perf_counter()
    classes = learned.classify(site.refl, site.bands)
    seconds = time.perf_counter() - t0
    cs_flag = ~learned.clear_from_classes(classes)
    rows = []
    for t in range(len(site.times)):
        codes = site.scl[t]
        row = {
            "site": site.name,
            "date": str(site.times[t])[:10],
            "scl_flagged": float(scl_flag[t].mean()),
            "csmask_flagged": float(cs_flag[t].mean()),
            "csmask_cloud": float((classes[t] == 1).mean()),
            "csmask_shadow": float((classes[t] == 2).mean()),
            **{f"scl_{SCL_NAMES[c]}": float((codes == c).mean()) for c in SCL_NAMES},
            **agreement(scl_flag[t], cs_flag[t]),
        }
        rows.append(row)
    pooled = agreement(scl_flag, cs_flag)
    fs, fc = scl_flag.mean(axis=(1, 2)), cs_flag.mean(axis=(1, 2))
    summary = {
        "dates": len(site.times),
        "pixels_per_date": int(np.prod(site.scl.shape[1:])),
        "model": learned.provenance()["model_file"],
        "csmask_ms_per_date": 1e3 * seconds / len(site.times),
        "scl_flagged_mean": float(fs.mean()),
        "csmask_flagged_mean": float(fc.mean()),
        **{f"pooled_{k}": v for k, v in pooled.items()},
        "dates_diff_over_0.5": int((np.abs(fs - fc) > 0.5).sum()),
        "dates_clear_80_scl": int((fs <= 0.2).sum()),
        "dates_clear_80_csmask": int((fc <= 0.2).sum()),
        "dates_clear_80_both": int(((fs <= 0.2) & (fc <= 0.2)).sum()),
        "median_date_agreement": float(np.median([r["agreement"] for r in rows])),
    }
    if variants:  # the same against SCL with other settings of the learned mask
        other = {"10 m (scale 1)": CSMask(bands=model_bands, scale=1)}
        if model_bands == 6:
            other["4-band model"] = CSMask(bands=4)
        summary["variants"] = {}
        for label, m in other.items():
            flag = ~m(site.refl, site.scl, site.bands)
            summary["variants"][label] = {
                "flagged_mean": float(flag.mean()),
                **agreement(scl_flag, flag),
                "agreement_with_default": float((flag == cs_flag).mean()),
            }
    return {"summary": summary, "rows": rows, "scl_flag": scl_flag, "classes": classes,
            "cs_flag": cs_flag}  # fmt: skip


# --------------------------------------------------------------------------- figures


def _rgb(site: Site, t: int) -> np.ndarray:
    idx = [site.bands.index(b) for b in ("B04", "B03", "B02")]
    return np.clip(np.moveaxis(site.refl[t, idx], 0, -1) * 3.5, 0, 1)


def _overlay(rgb: np.ndarray, layers: list[tuple[np.ndarray, tuple[float, float, float]]]):
    out = 0.45 * rgb.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    for m, colour in layers:
        out[m] = 0.25 * out[m] + 0.75 * np.asarray(colour)
    return np.clip(out, 0, 1)


def plot_disagreements(site: Site, res: dict, path: Path, n: int = 5) -> list[str]:
    """True colour beside both masks for the ``n`` dates of lowest agreement."""
    from matplotlib.figure import Figure

    rows = res["rows"]
    order = np.argsort([r["agreement"] - 1e-3 * abs(r["scl_flagged"] - r["csmask_flagged"])
                        for r in rows], kind="stable")[:n]  # fmt: skip
    order = sorted(order, key=lambda t: rows[t]["date"])
    fig = Figure(figsize=(7.2, 2.35 * len(order)), layout="constrained")
    axes = fig.subplots(len(order), 3, squeeze=False)
    red, orange, blue, cyan = (0.9, 0.1, 0.1), (1.0, 0.6, 0.0), (0.1, 0.3, 1.0), (0.0, 0.9, 0.9)
    for r, t in enumerate(order):
        rgb = _rgb(site, t)
        codes, cls = site.scl[t], res["classes"][t]
        dil = res["scl_flag"][t] & ~np.isin(codes, (0, 1, 3, 8, 9, 10, 11))
        scl_img = _overlay(rgb, [(np.isin(codes, (8, 9)), red), (codes == 10, orange),
                                 (codes == 3, blue), (codes == 11, cyan),
                                 (dil, (0.9, 0.5, 0.7))])  # fmt: skip
        learned_dil = res["cs_flag"][t] & (cls == 0)
        cs_img = _overlay(rgb, [(cls == 1, red), (cls == 2, blue), (learned_dil, (0.9, 0.5, 0.7))])
        row = rows[t]
        titles = [
            f"{row['date']} true colour",
            f"SCL: {100 * row['scl_flagged']:.0f}% flagged",
            f"learned: {100 * row['csmask_flagged']:.0f}% (agree {100 * row['agreement']:.0f}%)",
        ]
        for c, (img, title) in enumerate(zip((rgb, scl_img, cs_img), titles, strict=True)):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].set_axis_off()
    fig.suptitle(
        f"{site.name}: the {len(order)} dates where SCL and the learned mask disagree most\n"
        "red cloud, orange cirrus (SCL), blue shadow, cyan snow (SCL), pink dilation. "
        "No ground truth: disagreement, not accuracy",
        fontsize=8,
    )
    fig.savefig(path, dpi=110)
    return [rows[t]["date"] for t in order]


def plot_timeline(results: dict[str, dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.1 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, (name, res) in zip(axes, results.items(), strict=True):
        t = np.array([np.datetime64(r["date"]) for r in res["rows"]])
        ax.plot(t, [r["scl_flagged"] for r in res["rows"]], "o-", ms=3, lw=0.7, label="SCL")
        ax.plot(t, [r["csmask_flagged"] for r in res["rows"]], "s-", ms=3, lw=0.7,
                label="learned (ukis-csmask)", alpha=0.8)  # fmt: skip
        ax.set_ylabel("flagged share")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)


def check_against_ukis(site: Site, res: dict, dates: list[str], model_bands: int) -> float:
    """Share of model pixels where ukis-csmask's own ``CSmask`` gives our classes.

    Its class runs the same network on the same 30 m image (our block means),
    with its own tiling (20 % overlap) and padding; on patches smaller than a
    tile the padding differs from ours, so a few per cent of pixels may differ.
    """
    import warnings

    from ukis_csmask.mask import CSmask

    from latentcube.cube.csmask import _block_mean

    names = ["blue", "green", "red", "nir", "swir16", "swir22"][:model_bands]
    idx = [site.bands.index(b) for b in CSMask(bands=model_bands).model_bands]
    days = [str(t)[:10] for t in site.times]
    same = []
    for d in dates:
        t = days.index(d)
        img = np.ascontiguousarray(np.moveaxis(_block_mean(site.refl[t, idx], 3), 0, -1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = CSmask(img, names, product_level="l2a", invalid_buffer=0,
                            intra_op_num_threads=1, inter_op_num_threads=1).csm[..., 0]  # fmt: skip
        same.append(float((res["classes"][t][::3, ::3] == theirs).mean()))
    return float(np.mean(same))


def run_masks(out: Path, figures: Path) -> dict:
    sites = [(read_flanders(p), 6) for p in PATCHES] + [(read_romania(), 4)]
    results, summary = {}, {}
    for site, nb in sites:
        print(f"{site.name}: {len(site.times)} dates, {site.refl.shape[-2:]} px", flush=True)
        res = compare_site(site, nb, variants=True)
        results[site.name] = res
        slug = site.name.lower().replace(" ", "_")
        res["summary"]["figure_dates"] = plot_disagreements(
            site, res, figures / f"cloudmask_{slug}.png"
        )
        res["summary"]["same_classes_as_ukis_csmask_class"] = check_against_ukis(
            site, res, res["summary"]["figure_dates"], nb
        )
        summary[site.name] = {**res["summary"], "attribution": site.attribution}
        print(json.dumps(res["summary"], indent=1), flush=True)
    plot_timeline(results, figures / "cloudmask_timeline.png")
    mol = read_mol()
    try:
        CSMask(bands=4).check(mol.bands)
        mol_note = "ran"
    except CubeError as err:
        mol_note = f"not run: {err}"
    summary[mol.name] = {
        "dates": len(mol.times),
        "scl_flagged_per_date": [round(float(v), 3) for v in
                                 (~SCLMask()(mol.refl, mol.scl, mol.bands)).mean(axis=(1, 2))],
        "csmask": mol_note,
    }  # fmt: skip
    print(f"{mol.name}: {mol_note}", flush=True)
    (out / "masks.json").write_text(json.dumps(summary, indent=1))
    with open(out / "masks_per_date.csv", "w", newline="") as f:
        rows = [r for res in results.values() for r in res["rows"]]
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return summary


# --------------------------------------------------------------------------- downstream

MASKS = ("scl", "csmask", "scl+csmask")
TRAIN_PATCH, VAL_PATCH = PATCHES  # the shipped model's training patch; the other one


def masked_cube(site: Site, mask: str, min_valid_fraction: float = 0.05) -> xr.Dataset:
    """The patch as a cube masked by ``mask`` (builder defaults), dates below 5 % dropped."""
    from latentcube.cube.build import make_mask
    from latentcube.cube.schema import make_cube, provenance

    fn = make_mask(mask)
    valid = np.asarray(fn(site.refl, site.scl, site.bands), bool)
    valid &= np.isfinite(site.refl).all(axis=1)
    keep = valid.mean(axis=(1, 2)) >= min_valid_fraction
    s2 = np.where(valid[:, None], np.clip(site.refl, 0, 1), np.float32(np.nan))[keep]
    return make_cube(
        s2, valid[keep], time=site.times[keep], y=site.y, x=site.x, crs=site.crs,
        bands=site.bands, attrs=provenance(f"{site.name}, mask {mask}", mask=mask),
    )  # fmt: skip


def fit(train_windows, val_windows, out: Path, *, seed: int, epochs: int):
    """Train the ``fast`` S2 autoencoder: the one call of the library's training function."""
    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import AutoencoderTask, train_config_preset
    from latentcube.training import fit as fit_task

    cfg = AutoencoderConfig.preset("fast", "s2", bands=S2_BANDS)
    update = {"max_epochs": epochs, "seed": seed, "num_threads": 2}
    update["early_stopping_patience"] = epochs  # a fixed number of epochs
    tcfg = train_config_preset("quick").model_copy(update=update)
    task = AutoencoderTask(cfg, train_windows, val_windows)
    return fit_task(task, tcfg, out, progress=False)


def _windows(cube: xr.Dataset, mode: str, seed: int, max_windows: int | None = None):
    from latentcube.data.windows import extract_windows

    return extract_windows(cube, "s2", S2_BANDS, mode=mode, stride_t=3, stride_xy=3,
                           seed=seed, max_windows=max_windows)  # fmt: skip


def run_train(out: Path, seeds: list[int], epochs: int, probe_repeats: int) -> dict:
    """Train on each masking, compare validation reconstruction and the crop-type probe."""
    import torch

    from latentcube.bundle import ModelBundle
    from latentcube.cube.readers import read_worldcereal_labels
    from latentcube.evaluation.baselines import raw_bands
    from latentcube.evaluation.croptype import croptype_probe, default_season
    from latentcube.inference import embed
    from latentcube.models.config import LossConfig
    from latentcube.models.losses import ContextLoss
    from latentcube.training.stage1 import evaluate

    torch.set_num_threads(2)
    sites = {p: read_flanders(p) for p in PATCHES}
    cubes = {m: {p: masked_cube(sites[p], m) for p in PATCHES} for m in MASKS}
    common_val = _windows(cubes["scl+csmask"][VAL_PATCH], "consecutive", 0, 1000)
    loss_fn = ContextLoss(LossConfig.for_sensor("s2"))
    result: dict = {"train_patch": TRAIN_PATCH, "val_patch": VAL_PATCH, "epochs": epochs,
                    "seeds": seeds, "cubes": {}, "runs": []}  # fmt: skip
    for m in MASKS:
        result["cubes"][m] = {
            p: {"dates": int(c.sizes["time"]), "valid_pixel_dates": int(c["s2_valid"].sum())}
            for p, c in cubes[m].items()
        }
    models: dict[tuple[str, int], object] = {}
    for seed in seeds:
        for m in MASKS:
            tr = _windows(cubes[m][TRAIN_PATCH], "train", seed)
            va = _windows(cubes[m][VAL_PATCH], "consecutive", 0, 1000)
            run_dir = out / "models" / f"{m.replace('+', '_')}-seed{seed}"
            t0 = time.perf_counter()
            res = fit(tr, va, run_dir, seed=seed, epochs=epochs)
            model = ModelBundle.load(run_dir / "best.pt", expect_bands=S2_BANDS).model
            common = evaluate(model, common_val, loss_fn)
            models[(m, seed)] = model
            row = {"mask": m, "seed": seed, "train_windows": len(tr), "val_windows": len(va),
                   "own_val_centre_mae": float(res.best_val), "epochs_run": res.epochs,
                   "common_val_centre_mae": float(common["val_centre_mae"]),
                   "common_val_windows": len(common_val),
                   "seconds": time.perf_counter() - t0}  # fmt: skip
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            (out / "train.json").write_text(json.dumps(result, indent=1))
    # crop type: the S2 bands of each masked cube, and each mask's embeddings (first seed)
    if probe_repeats:
        labels = [read_worldcereal_labels(FLANDERS / p)["CT"].values for p in PATCHES]
        seasons = [default_season(cubes["scl"][p]) for p in PATCHES]
        sets: list[dict] = [{} for _ in PATCHES]
        for i, p in enumerate(PATCHES):
            for m in MASKS:
                sets[i][f"S2 bands, {m}"] = raw_bands(cubes[m][p])
                model = models[(m, seeds[0])]
                emb = embed(cubes[m][p], model, edge="pad").compute()
                sets[i][f"fast S2 latent, {m}"] = emb.rename(f"fast S2 latent, {m}")
        t0 = time.perf_counter()
        probe = croptype_probe(sets, labels, seasons, repeats=probe_repeats, seed=0)
        result["croptype"] = {
            "scores": probe["scores"], "samples": probe.get("n_samples"),
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        (out / "train.json").write_text(json.dumps(result, indent=1, default=str))
    return result


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/cloudmask"))
    ap.add_argument("--figures", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--part", choices=("masks", "train", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--probe-repeats", type=int, default=3, help="0: no crop-type probe")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    if args.part in ("masks", "all"):
        run_masks(args.out, args.figures)
    if args.part in ("train", "all"):
        run_train(args.out, args.seeds, args.epochs, args.probe_repeats)


if __name__ == "__main__":
    main()
