"""Reproduce the land-cover and crop-type probe numbers of docs/research/evaluation.md.

One command, fixed seed, fixed number of epochs (so the result does not depend
on machine speed)::

    PYTHONPATH=src nice -n 5 python scripts/evaluate_probes.py --out eval-probes

Crop type (WorldCereal Flanders, S1 + S2): the shipped default model
(``latentcube.bundle.default_model_path()``, fused S1 + S2, 7-d) embeds both
patches three times: with both sensors, with S2 hidden (S1 only) and with S1
hidden (S2 only); its own stage-1 S2 latent (9-d) is probed too. No training.

Land cover (GreenEarthNet, 4 S2 bands, no S1): a ``fast`` S2 context
autoencoder with a 7-d latent is trained on the two minicubes (no labels; a
fixed number of epochs, seed 42; validation by spatial blocks), then embeds
them densely. A trained model is reused (or a killed training resumed) when the
script is run again with the same output folder.

Every embedding is probed beside every baseline feature set on the same
samples, spatial blocks and folds (logistic regression and k-NN, regularisation
chosen by inner blocked CV on the training folds only); one report folder per
task (``landcover/`` and ``croptype/``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from latentcube.bundle import ModelBundle, default_model_path
from latentcube.cube.readers import open_cube, read_worldcereal_labels
from latentcube.data.multisensor import split_fusion_windows
from latentcube.data.windows import split_windows
from latentcube.evaluation.croptype import run_croptype
from latentcube.evaluation.landcover import run_landcover
from latentcube.evaluation.report import f1_cell, paired_table
from latentcube.inference import embed, embedding_dataset
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.training import AutoencoderTask, fit, train_config_preset
from latentcube.training.fusion import fit_fusion_whitening
from latentcube.training.stage1 import fit_whitening

SHARED = Path(
    os.environ.get(
        "LATENTCUBE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
GEN_DIR = SHARED / "greenearthnet_replicated_minicubes"
FLANDERS_DIR = SHARED / "worldcereal_s1_s2_training_patches_flanders"
GEN_BANDS = ("B02", "B03", "B04", "B8A")
TRAIN_PATCH = "00002806639B424A"  # the Flanders patch the shipped model was trained on
# crop type: the fused embedding kept only where S2 contributed (bit 0 of ``sensors``);
# elsewhere (S2 cloudy or missing at the pixel) it was embedded from S1 alone
S2_PIXEL_DATES = "fused 7-d (S1+S2), S2 pixel-dates"
#: The fused crop-type sets of a bundle: name -> the sensors hidden from the model.
FUSED_SETS: dict[str, tuple[str, ...]] = {
    "fused 7-d (S1+S2)": (),
    "fused 7-d, S2 hidden (S1 only)": ("s2",),
    "fused 7-d, S1 hidden (S2 only)": ("s1",),
}
#: ``--only-model`` name of the bundle's stage-1 S2 latent (scored as "S2 stage-1 latent (D-d)").
S2_LATENT = "S2 stage-1 latent"
ONLY_MODEL_SETS = (*FUSED_SETS, S2_LATENT)
# land cover: the context window of the model (the preset's, 15 px) and the ``fast``
# spatial encoder of each other window (receptive field 1 + 2 * sum(dilations) = window)
DEFAULT_WINDOW = AutoencoderConfig.model_fields["window"].default
SPATIAL_ENCODERS = {
    DEFAULT_WINDOW: {},  # the preset's own encoder
    11: {"conv_channels": (32, 48, 64, 64), "conv_dilations": (1, 1, 1, 2)},
    9: {"conv_channels": (32, 48, 64, 64), "conv_dilations": (1, 1, 1, 1)},
    7: {"conv_channels": (32, 48, 64), "conv_dilations": (1, 1, 1)},
}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(x.ru_utime + x.ru_stime for x in r)


def probe_model_windows(cubes, bands, *, seed, stride_xy, split_by="cube", window=DEFAULT_WINDOW):
    """Training and validation windows of the land-cover model.

    ``split_by="cube"``: the library's split of several cubes (whole cubes);
    ``"block"``: each cube split by its own spatial blocks, then joined.
    """
    if split_by not in ("cube", "block"):
        raise ValueError(f"split_by must be 'cube' or 'block', not {split_by!r}")
    return split_windows(
        cubes,
        "s2",
        bands,
        seed=seed,
        stride_xy=stride_xy,
        window=window,
        within_cubes=split_by == "block",
    )


def train_s2(
    cubes,
    bands,
    out,
    *,
    latent_dim,
    epochs,
    seed,
    stride_xy,
    max_val,
    early_stop=None,
    hide_centre=0.0,
    hide_other=0.0,
    train_seed=None,
    loss=None,
    split_by="cube",
    window=DEFAULT_WINDOW,
):
    """Train (or resume / reuse) a ``fast`` S2 autoencoder for at most ``epochs`` epochs.

    ``early_stop``: stop after this many epochs without a better validation centre
    MAE (``None``: the preset's patience, 8, i.e. in effect a fixed epoch count).
    ``hide_centre``, ``hide_other``: the gap-filling option of training (the centre
    pixel-date, and other valid entries, hidden from the input with these
    probabilities while the loss still scores them).
    ``train_seed``: seed of the initialisation and data order (default ``seed``);
    the split and the validation subset always follow ``seed``.
    ``loss``: overrides of the S2 context-loss weights (:class:`LossConfig` fields).
    ``split_by``: ``"cube"`` trains on one cube and validates on the other (the
    library's split of several cubes); ``"block"`` splits each cube by its own
    spatial blocks, so the model trains on part of every cube it embeds (as the
    PCA baseline is fitted on all cubes; no labels either way).
    ``window``: the context window in pixels (a key of :data:`SPATIAL_ENCODERS`).
    """
    if window not in SPATIAL_ENCODERS:
        raise ValueError(f"window must be one of {sorted(SPATIAL_ENCODERS)}, not {window}")
    cfg = AutoencoderConfig.model_validate(
        {
            **AutoencoderConfig.preset("fast", "s2", bands=bands).model_dump(),
            "latent_dim": latent_dim,
            "window": window,
            **SPATIAL_ENCODERS[window],
        }
    )
    tr, va = probe_model_windows(
        cubes, bands, seed=seed, stride_xy=stride_xy, split_by=split_by, window=window
    )
    if len(va) > max_val:
        va = va.subset(np.sort(np.random.default_rng(seed).choice(len(va), max_val, False)))
    print(f"  {len(tr)} training / {len(va)} validation windows", flush=True)
    update: dict[str, object] = {
        "max_epochs": epochs,
        "seed": seed if train_seed is None else train_seed,
        "num_threads": 2,
        "hide_centre_prob": hide_centre,
        "hide_prob": hide_other,
    }
    if early_stop is not None:
        update["early_stopping_patience"] = early_stop
    if epochs == 0:  # the control: the encoder as initialised, never trained
        torch.manual_seed(update["seed"])
        info = {"model": f"fast S2, latent {latent_dim}, untrained", "train_seed": update["seed"]}
        print(f"  {info}", flush=True)
        return build_autoencoder(cfg).eval(), info, tr
    tcfg = train_config_preset("quick").model_copy(update=update)
    c0, t0 = cpu_seconds(), time.perf_counter()
    loss_cfg = LossConfig.for_sensor("s2").model_copy(update=loss or {})
    res = fit(AutoencoderTask(cfg, tr, va, loss_config=loss_cfg), tcfg, out, progress=False)
    model = ModelBundle.load(Path(out) / "best.pt", expect_bands=bands).model
    rows = np.genfromtxt(Path(out) / "metrics.csv", delimiter=",", names=True)
    info = {
        "model": f"fast S2, latent {latent_dim}",
        "hide_centre_prob": hide_centre,
        "hide_prob": hide_other,
        "epochs": epochs,
        "train_seed": update["seed"],
        "loss_overrides": dict(loss or {}),
        "epochs_run": res.epochs,
        "stopped": res.stopped,
        "early_stopping_patience": tcfg.early_stopping_patience,
        "best_epoch": int(np.atleast_1d(rows["epoch"])[np.argmin(rows["val_centre_mae"])]),
        "best_val_centre_mae": round(float(res.best_val), 5),
        "train_windows": len(tr),
        "val_windows": len(va),
        "stride_xy": stride_xy,
        "split_by": split_by,
        "window": window,
        "cpu_seconds_this_call": round(cpu_seconds() - c0, 1),
        "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
    }
    print(f"  {info}", flush=True)
    return model, info, tr


def whitened_copy(model, windows, seed):
    """A copy of ``model`` with its output whitening fitted on ``windows`` (no labels)."""
    import copy

    wm = copy.deepcopy(model)
    if hasattr(wm, "fuse"):
        fit_fusion_whitening(wm, windows, seed=seed)
    else:
        fit_whitening(wm, windows, seed=seed)
    v = wm.whitening.variance
    print(f"  whitening fitted on {len(windows)} windows; axis variances {v.numpy().round(4)}")
    return wm


def same_pixels(emb, border=DEFAULT_WINDOW // 2):
    """``emb`` loaded, NaN within ``border`` pixels of the cube's edge.

    A model with a window under 15 px embeds pixels nearer the edge than the
    15 px model does; masking them keeps the probe's samples and folds (pixel-dates
    where every set is finite) equal to those of the other runs.
    """
    emb = emb.load()
    inner = np.zeros((emb.sizes["y"], emb.sizes["x"]), bool)
    inner[border:-border, border:-border] = True
    return emb.where(xr.DataArray(inner, dims=("y", "x")))


def landcover(a, cmd):
    print("land cover: GreenEarthNet minicubes (B02 B03 B04 B8A, 20 m; no S1)", flush=True)
    cubes = [open_cube(p).load() for p in sorted(GEN_DIR.glob("*.nc"))]
    gap = f"_hide{a.hide_centre:g}-{a.hide_other:g}" if a.hide_centre or a.hide_other else ""
    ts = f"_seed{a.train_seed}" if a.train_seed is not None else ""
    ts += "".join(f"_{k}{v:g}" for k, v in a.loss.items())
    ts += "_splitblock" if a.split_by == "block" else ""
    ts += f"_w{a.window}" if a.window != DEFAULT_WINDOW else ""
    model, info, tr = train_s2(
        cubes,
        GEN_BANDS,
        a.out / f"model_gen_fast{a.latent_dim}{gap}{ts}",
        latent_dim=a.latent_dim,
        epochs=a.epochs,
        seed=a.seed,
        stride_xy=a.stride_xy,
        max_val=a.max_val,
        early_stop=a.early_stop,
        hide_centre=a.hide_centre,
        hide_other=a.hide_other,
        train_seed=a.train_seed,
        loss=a.loss,
        split_by=a.split_by,
        window=a.window,
    )
    ran = (
        f"{info['epochs_run']} epochs, best {info['best_epoch']}"
        if a.early_stop
        else f"{a.epochs} epochs"
        if a.epochs
        else "untrained"
    )
    hid = f", centre hidden {a.hide_centre:g} / other {a.hide_other:g}" if gap else ""
    seed_ = f", training seed {a.train_seed}" if a.train_seed is not None else ""
    seed_ += "".join(f", {k} {v:g}" for k, v in a.loss.items())
    seed_ += ", trained on blocks of both cubes" if a.split_by == "block" else ""
    seed_ += f", {a.window} px window" if a.window != DEFAULT_WINDOW else ""
    name = f"S2 embedding (fast, {a.latent_dim}-d, {ran}{hid}{seed_})"
    sets = {name: [same_pixels(embed(c, model, sensor="s2", with_error=False)) for c in cubes]}
    if a.whiten:
        wm = whitened_copy(model, tr, a.seed)
        ModelBundle(wm).save(
            a.out / f"model_gen_fast{a.latent_dim}{gap}{ts}" / "best_whitened.pt",
            extra={"whitening": {"fitted_on": f"{len(tr)} training windows", "seed": a.seed}},
        )
        sets[f"{name[:-1]}, whitened)"] = [
            same_pixels(embed(c, wm, sensor="s2", with_error=False)) for c in cubes
        ]
    res = run_landcover(
        cubes,
        sets,
        a.out / "landcover",
        seed=a.seed,
        command=cmd,
        notes=f"Model: {info}",
        repeats=a.repeats,
        progress=a.progress,
        resume=a.resume,
    )
    print(f"  wrote {a.out / 'landcover'}: {res['n_samples']} samples", flush=True)


def s2_pixel_dates(fused: xr.Dataset, sensors) -> xr.DataArray:
    """The fused embedding where S2 contributed (``sensors`` flag bit of S2), else NaN.

    Elsewhere (S2 cloudy or missing at the pixel) the model embedded S1 alone.
    """
    bit = 1 << list(sensors).index("s2")
    return fused["embedding"].where((fused["sensors"] & bit) > 0)


def croptype(a, cmd):
    print("crop type: WorldCereal Flanders patches (10 S2 bands + S1 VV/VH, 10 m)", flush=True)
    folders = sorted(p for p in FLANDERS_DIR.iterdir() if p.is_dir())
    cubes = [open_cube(p, time_axis=a.time_axis).load() for p in folders]
    labels = [read_worldcereal_labels(p)["CT"].values for p in folders]
    path = Path(a.model) if a.model else default_model_path()
    model = ModelBundle.load(path, kind="fusion").model
    torch.set_num_threads(2)
    hides = dict(FUSED_SETS)
    if a.only_model:
        hides = {k: v for k, v in hides.items() if k in a.only_model}
    if a.s2_pixel_dates:
        hides[S2_PIXEL_DATES] = ()
    embs: dict[str, list] = {k: [] for k in hides}
    models = {k: model for k in hides}
    train_cube = cubes[[p.name for p in folders].index(TRAIN_PATCH)]
    if a.whiten and "fused 7-d (S1+S2)" in hides:
        tr, _ = split_fusion_windows([train_cube], model.sensors, seed=42)
        wname = "fused 7-d (S1+S2), whitened"
        hides[wname] = ()
        models[wname] = whitened_copy(model, tr, a.seed)
        embs[wname] = []
    s2_ae = model.autoencoder("s2")
    s2_latent = f"S2 stage-1 latent ({s2_ae.config.latent_dim}-d)"
    s2_aes = {}
    if not a.only_model or S2_LATENT in a.only_model:
        s2_aes[s2_latent] = s2_ae
        if a.whiten:  # fitted on the stage-1 training windows (the split of seed 42)
            tr, _ = split_windows([train_cube], "s2", s2_ae.config.bands, seed=42)
            s2_aes[f"{s2_latent}, whitened"] = whitened_copy(s2_ae, tr, a.seed)
    embs.update({k: [] for k in s2_aes})
    for c in cubes:
        fused: dict[tuple, xr.Dataset] = {}  # one embedding per (model, hidden sensors)
        for name, hide in hides.items():
            key = (id(models[name]), hide)
            if key not in fused:
                lazy = embed(c, models[name], hide=hide, with_error=False)
                fused[key] = embedding_dataset(lazy).compute()
            emb = fused[key]["embedding"]
            if name == S2_PIXEL_DATES:
                emb = s2_pixel_dates(fused[key], models[name].config.sensors)
            embs[name].append(emb)
        for name, ae in s2_aes.items():
            embs[name].append(embed(c, ae, sensor="s2", with_error=False).load())
    cfg = model.config
    notes = (
        f"Model: {path} ({'shipped default' if not a.model else 'fused bundle'}, S1+S2 "
        f"`fast`, mode {cfg.mode}, objective {cfg.objective}, loss weights "
        f"{ {s: round(cfg.weight(s), 3) for s in cfg.sensors} }, sensor dropout "
        f"{cfg.sensor_dropout}); trained without labels on patch 00002806639B424A, "
        "patch 0000280849BAC91C never seen in training."
    )
    only = [f"{k} / series" for k in [*embs, *a.also]] if a.only_model else None
    res = run_croptype(
        cubes,
        labels,
        embs,
        a.out / "croptype",
        seed=a.seed,
        command=cmd,
        notes=notes,
        score_only=only,
        repeats=a.repeats,
        progress=a.progress,
        resume=a.resume,
    )
    print(f"  wrote {a.out / 'croptype'}: {res['n_samples']} samples", flush=True)
    if a.pair_with:
        out = a.out / "croptype" / "paired_with_earlier.json"
        pair_with_earlier(res, a.pair_with, out, a.seed)


def pair_with_earlier(res, earlier: Path, out: Path, seed: int) -> dict:
    """Pair this screen's embeddings with the sets scored by an earlier run.

    Both runs must have scored the same samples with the same fold assignments
    (same sample count, blocks, class counts, repeats and seed), so each
    repeat's scores can be paired as in one run.
    """
    import json

    from latentcube.evaluation.probes import paired_differences

    saved = json.loads(Path(earlier).read_text())
    old, meta_seed = saved["croptype"], saved["meta"]["seed"]
    for key in ("n_samples", "n_blocks", "class_counts", "repeats"):
        if old[key] != res[key]:
            raise SystemExit(f"--pair-with: {key} differs ({old[key]} vs {res[key]})")
    new_sets = list(res["scores"])
    if meta_seed != seed:
        raise SystemExit(f"--pair-with: the earlier run used seed {meta_seed}, this one {seed}")
    merged = {**old["scores"], **res["scores"]}
    others = [k for k in old["scores"] if k not in new_sets]
    paired = {k: paired_differences(merged, k, others) for k in new_sets}
    out.write_text(json.dumps({"earlier": str(earlier), "paired": paired}, indent=2))
    print(paired_table({"paired": paired}), flush=True)
    return paired


def tables(out: Path) -> str:
    """Markdown tables of docs/research/evaluation.md from the reports' ``results.json``."""
    import json

    md = []
    lc = out / "landcover" / "results.json"
    if lc.exists():
        r = json.loads(lc.read_text())["landcover"]
        md += [
            "| feature set | dims | macro-F1 logreg | macro-F1 k-NN | accuracy logreg "
            "| accuracy k-NN |",
            "|---|---|---|---|---|---|",
        ]
        for name, by in r["scores"].items():
            md.append(
                f"| {name} | {r['n_features'][name]} | {f1_cell(by['logreg'])} | "
                f"{f1_cell(by['knn'])} | {by['logreg']['accuracy']:.3f} | "
                f"{by['knn']['accuracy']:.3f} |"
            )
        md.append("")
        md += [paired_table(r), ""] if r.get("repeats", 1) > 1 else []
    ct = out / "croptype" / "results.json"
    if ct.exists():
        r = json.loads(ct.read_text())["croptype"]
        sc, nf = r["scores"], r["n_features"]
        names = [k[: -len(" / series")] for k in sc if k.endswith(" / series")]
        if any(f"{n} / season mean" not in sc for n in names):  # a screening run
            md += ["| feature set | dims | series logreg | series k-NN |", "|---|---|---|---|"]
            for n in names:
                s_ = sc[f"{n} / series"]
                md.append(
                    f"| {n} | {nf[n + ' / series']} | {f1_cell(s_['logreg'])} | "
                    f"{f1_cell(s_['knn'])} |"
                )
            md.append(f"\n{r['n_samples']} samples, {r['n_blocks']} blocks")
            md += ["", paired_table(r)] if r.get("repeats", 1) > 1 else []
            return "\n".join(md)
        md += [
            "| feature set | dims (series / mean) | series logreg | series k-NN "
            "| season mean logreg | season mean k-NN |",
            "|---|---|---|---|---|---|",
        ]
        for n in names:
            s_, m_ = sc[f"{n} / series"], sc[f"{n} / season mean"]
            md.append(
                f"| {n} | {nf[n + ' / series']} / {nf[n + ' / season mean']} | "
                f"{f1_cell(s_['logreg'])} | {f1_cell(s_['knn'])} | "
                f"{f1_cell(m_['logreg'])} | {f1_cell(m_['knn'])} |"
            )
        classes = list(r["class_counts"])
        md += ["", "| feature set (series, logreg) | " + " | ".join(classes) + " |"]
        md.append("|---|" + "---|" * len(classes))
        for n in names:
            pc = sc[f"{n} / series"]["logreg"]["per_class_f1"]
            md.append(f"| {n} | " + " | ".join(f"{pc[c]:.2f}" for c in classes) + " |")
    return "\n".join(md)


def parse_loss(items) -> dict[str, float]:
    """``["field=value", ...]`` -> the overridden S2 loss weights (checked by LossConfig)."""
    try:
        cfg = LossConfig.from_overrides("s2", items)
    except ValueError as err:
        raise SystemExit(f"--loss: {err}") from None
    fields = [it.partition("=")[0] for it in items]
    return {k: getattr(cfg, k) for k in dict.fromkeys(fields)}


def set_probe_grid(kind: str, text: str) -> list[float] | list[int]:
    """Set the inner-CV grid of one probe from ``"v,v,..."`` (k >= 1 for knn, C > 0)."""
    from latentcube.evaluation import probes

    ((param, _),) = probes.PARAM_GRIDS[kind].items()
    try:
        values = [int(v) if kind == "knn" else float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None
    bad = [v for v in values if (v < 1 if kind == "knn" else not 0 < v < float("inf"))]
    if bad:
        raise ValueError(f"{param} must be {'>= 1' if kind == 'knn' else 'finite and > 0'}: {bad}")
    probes.PARAM_GRIDS[kind] = {param: sorted(set(values))}
    return probes.PARAM_GRIDS[kind][param]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("eval-probes"))
    ap.add_argument(
        "--epochs",
        type=int,
        default=8,
        help="land-cover model epochs (fixed); 0 scores the untrained encoder (its "
        "initial weights, seed --train-seed): the control for what the context alone gives",
    )
    ap.add_argument("--latent-dim", type=int, default=7, help="land-cover model latent size")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="land cover: seed of the model's initialisation and data order only (default "
        "--seed); the window split, the probe samples and the folds keep --seed",
    )
    ap.add_argument("--stride-xy", type=int, default=4)
    ap.add_argument("--max-val", type=int, default=1000)
    ap.add_argument("--model", default=None, help="fused bundle (default: the shipped model)")
    ap.add_argument("--tasks", default="landcover,croptype")
    ap.add_argument(
        "--early-stop",
        type=int,
        default=None,
        help="land cover: stop after this many epochs without a better validation MAE "
        "(default: the preset's 8, in effect the fixed --epochs)",
    )
    ap.add_argument(
        "--hide-centre",
        type=float,
        default=0.0,
        help="land cover: train with the centre pixel-date hidden from the input with this "
        "probability (the gap-filling option; default 0, the paper's training)",
    )
    ap.add_argument(
        "--hide-other",
        type=float,
        default=0.0,
        help="land cover: with --hide-centre, also hide other valid entries with this probability",
    )
    ap.add_argument(
        "--only-model",
        nargs="*",
        default=None,
        metavar="SET",
        help="crop type screening: embed only these sets of --model (default with no "
        f"names: 'fused 7-d (S1+S2)'; known: {', '.join(ONLY_MODEL_SETS)}) and score only "
        "their series, on the same samples and folds as a full run (baselines are not "
        f"scored; '{S2_LATENT}' is the bundle's stage-1 S2 latent, of its own size)",
    )
    ap.add_argument(
        "--also",
        nargs="*",
        default=[],
        metavar="SET",
        help="crop type screening: also score the series of these baseline sets (e.g. "
        "PCA-7 NDVI EVI NIRv kNDVI) on the same samples and folds",
    )
    ap.add_argument(
        "--pair-with",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="crop type screening: pair this run's embedding with every set of an earlier "
        "run's croptype/results.json scored on the same samples, folds and repeats "
        "(written to croptype/paired_with_earlier.json)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat the blocked CV with this many fold assignments (fold seeds seed, "
        "seed+1, ...): mean ± sd and each embedding's paired differences to every set",
    )
    ap.add_argument(
        "--knn-grid",
        default=None,
        metavar="K,K,...",
        help="k values the inner CV chooses from for every feature set's k-NN probe "
        "(default: PARAM_GRIDS of latentcube.evaluation.probes, 5,10,20,40)",
    )
    ap.add_argument(
        "--c-grid",
        default=None,
        metavar="C,C,...",
        help="inverse regularisation values the inner CV chooses from for every feature "
        "set's logistic regression (default: PARAM_GRIDS of "
        "latentcube.evaluation.probes, 0.01,0.1,1,10)",
    )
    ap.add_argument(
        "--loss",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="land cover: override weights of the S2 context loss (LossConfig fields, e.g. "
        "temporal_decay=0.7 spatial_scale=0.1); default the paper's weights",
    )
    ap.add_argument(
        "--split-by",
        choices=("cube", "block"),
        default="cube",
        help="land cover: 'cube' trains the model on one minicube and validates on the "
        "other (default); 'block' splits each minicube by its own spatial blocks, so the "
        "model trains on part of both (no labels; the PCA baseline is fitted on both)",
    )
    ap.add_argument(
        "--window",
        type=int,
        choices=sorted(SPATIAL_ENCODERS),
        default=DEFAULT_WINDOW,
        help="land cover: the model's context window in pixels (default 15, the paper's; "
        "the GreenEarthNet pixels are 20 m, so 7 px covers about the paper's 150 m)",
    )
    ap.add_argument(
        "--whiten",
        action="store_true",
        help="also score each embedding with its output whitening fitted on the model's "
        "training windows (decorrelated, unit-variance axes; no labels); crop type: the "
        "fused S1+S2 set and the stage-1 S2 latent, when scored",
    )
    ap.add_argument(
        "--s2-pixel-dates",
        action="store_true",
        help="crop type: also score the fused embedding kept only on the pixel-dates S2 "
        "contributed to (its `sensors` flag), so each series is interpolated over the "
        "pixel's clear S2 dates as the S2 baselines are, not over S1-only embeddings",
    )
    ap.add_argument(
        "--time-axis",
        choices=("s2", "union"),
        default="s2",
        help="crop type: the patches' time axis; 'union' adds every S1-only day, which the "
        "fused model embeds from S1 (the S2 baselines stay on the clear S2 dates)",
    )
    ap.add_argument(
        "--tables", action="store_true", help="only print the docs tables of an earlier run"
    )
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bar of the probe fits on stderr (default: when stderr is a terminal)",
    )
    ap.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep each probe result in <out>/<task>/.probe-cache as it is computed, so a "
        "killed run started again with the same arguments fits only the missing probes "
        "(the folder is removed when the report is written)",
    )
    a = ap.parse_args(argv)
    a.loss = parse_loss(a.loss)
    for kind, flag, text in (("knn", "--knn-grid", a.knn_grid), ("logreg", "--c-grid", a.c_grid)):
        if text:
            try:
                set_probe_grid(kind, text)
            except ValueError as err:
                ap.error(f"{flag}: {err}")
    if a.only_model == []:
        a.only_model = ["fused 7-d (S1+S2)"]
    unknown = [n for n in a.only_model or () if n not in ONLY_MODEL_SETS]
    if unknown:
        ap.error(f"--only-model: unknown sets {unknown}; known: {list(ONLY_MODEL_SETS)}")
    if a.tables:
        print(tables(a.out))
        return
    torch.set_num_threads(2)
    cmd = "PYTHONPATH=src nice -n 5 python scripts/evaluate_probes.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    c0, t0 = cpu_seconds(), time.perf_counter()
    tasks = a.tasks.split(",")
    if "landcover" in tasks:
        landcover(a, cmd)
    if "croptype" in tasks:
        croptype(a, cmd)
    print(tables(a.out), flush=True)
    print(
        f"CPU {cpu_seconds() - c0:.0f} s, wall {time.perf_counter() - t0:.0f} s, "
        f"load average {os.getloadavg()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
