"""Change and anomaly maps of five years over a forest in W Romania: embedding against NDVI.

Reproduces the figures and numbers of ``docs/analysis.md``::

    PYTHONPATH=src nice -n 5 python scripts/romania_change.py --out runs/romania

Data (read-only, ``../shared/data/nrt_romania_s2_l2a``, see its README section 10):
Sentinel-2 L2A B2/B3/B4/B8 + SCL, 140 dates 2015-08 .. 2021-01 on 100 x 100 px at 10 m
(EPSG:3035), and the Copernicus HRL Tree Cover Density 2018 (20 m). Files from the PyPI
package ``nrt`` 0.1.0 (JRC; EUPL-1.2). Contains modified Copernicus Sentinel data
2015-2021; Tree Cover Density: (c) European Union, Copernicus Land Monitoring Service
2018, European Environment Agency (EEA). No disturbance labels exist for this place.

Steps (seeded; a rerun reuses the trained model and the embedding store in ``--out``):

1. a latentcube cube from the files (``make_cube``; valid = SCL 4/5/6, i.e. vegetation,
   bare soil, water; reflectance = DN / 10000, no offset before 2022; dates without a
   valid pixel dropped);
2. a small ``fast`` S2 stage-1 model on the 4 bands, trained on this cube (2 x 2
   spatial blocks: three for training, one for 256 validation windows) for 4 epochs
   (520 steps, seeded, so the result does not depend on the machine's load);
3. the embedding of every pixel-date (``edge="pad"``, so the border is embedded too);
4. the same analyses on the embedding and on NDVI alone (a 1-feature "embedding"):
   ``change`` (mean vector of 2016-2017 against 2019-2020) and ``anomaly`` (each
   date against the same season +-30 days of the other years), summarised per pixel
   as the median anomaly of the 2019-2020 dates;
5. numbers: Spearman rank correlation of the two methods' maps, the fraction of
   pixels flagged (robust z-score > 3.5), their overlap, and both against tree cover;
6. figures ``docs/images/change_romania_maps.png`` (true colour before/after, tree
   cover, the two change maps side by side) and ``docs/images/change_romania_anomaly.png``
   (the two anomaly maps and the anomaly through time of the flagged pixels).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.analysis import anomaly, change, robust_zscore, summarise
from latentcube.cube.schema import make_cube

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTCUBE_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED / "nrt_romania_s2_l2a"
IMAGES = ROOT / "docs" / "images"
BANDS = {"B2": "B02", "B3": "B03", "B4": "B04", "B8": "B08"}
CLEAR_SCL = (4, 5, 6)
BEFORE, AFTER = "2016-01-01/2017-12-31", "2019-01-01/2020-12-31"
MONTHS = (6, 7, 8)  # leaf-on summer of every year: the periods compare like with like
HALF_WINDOW = 30
Z_FLAG = 3.0
TOP = 5  # percent of pixels with the largest change, for a threshold-free overlap
SEED = 42
ATTRIBUTION = (
    "Contains modified Copernicus Sentinel data 2015-2021; TCD (c) EU, CLMS 2018, EEA; "
    "files from the nrt package (JRC, EUPL-1.2)"
)


def load_cube() -> xr.Dataset:
    """The 10 m Romania files as a latentcube cube (S2, 4 bands, SCL mask)."""
    src = xr.open_dataset(DATA / "sentinel2_cube_subset_romania_10m.nc")
    refl = np.stack([src[b].values for b in BANDS], axis=1).astype(np.float32) / 1e4
    scl = src["SCL"].values
    valid = np.isin(scl, CLEAR_SCL) & np.isfinite(refl).all(1) & (refl > 0).all(1)
    keep = valid.any(axis=(1, 2))  # a cube holds no date without a valid pixel
    return make_cube(
        np.clip(refl[keep], 0, 1),
        valid[keep],
        time=src["time"].values[keep],
        y=src["y"].values,
        x=src["x"].values,
        crs="EPSG:3035",
        bands=list(BANDS.values()),
        attrs={
            "source": "nrt 0.1.0 sentinel2_cube_subset_romania_10m.nc (W Romania)",
            "attribution": ATTRIBUTION,
        },
    )


def tree_cover() -> np.ndarray:
    """HRL Tree Cover Density 2018 (%) on the cube's 10 m grid (nearest), NaN as nodata."""
    import rasterio

    with rasterio.open(DATA / "tree_cover_density_2018_romania.tif") as r:
        tcd = r.read(1).astype(np.float64)
    tcd[tcd == 255] = np.nan
    return np.repeat(np.repeat(tcd, 2, 0), 2, 1)


def train_model(cube: xr.Dataset, out: Path, epochs: int, seconds: float | None) -> Path:
    """Train the 4-band ``fast`` S2 model on the cube; return the best checkpoint.

    A fixed number of epochs (seeded), so that the result does not depend on the
    machine's load; ``seconds`` adds a wall-time budget.

    The one place that calls the training API (its names may move).
    """
    import latentcube.training as training
    from latentcube.data.windows import CubeArrays, block_regions, extract_windows
    from latentcube.models.config import AutoencoderConfig

    best = out / "model" / "best.pt"
    if best.exists():
        print(f"[model] reusing {best}")
        return best
    cfg = AutoencoderConfig.preset("fast", "s2", bands=tuple(BANDS.values()))
    arrays = CubeArrays.from_cube(cube, "s2", cfg.bands)
    # 2 x 2 blocks of 50 px: three train, one validates; windows never cross blocks
    tr_r, va_r = block_regions(arrays.valid.shape[1:], 50, (0.75, 0.25), seed=SEED)
    common = {"seed": SEED, "window": cfg.window}
    tr = extract_windows(arrays, "s2", mode="train", region=tr_r, stride_t=2, stride_xy=3, **common)
    va = extract_windows(
        arrays,
        "s2",
        mode="consecutive",
        region=va_r,
        stride_t=3,
        stride_xy=4,
        max_windows=256,
        **common,
    )
    print(f"[model] fast S2 on {list(cfg.bands)}: {len(tr)} training, {len(va)} validation windows")
    budget = {"max_epochs": epochs, "max_seconds": seconds, "seed": SEED}
    if hasattr(training, "fit_autoencoder"):  # the training package
        res = training.fit_autoencoder(
            [],
            "fast",
            out / "model",
            sensor="s2",
            model={"bands": list(cfg.bands)},
            train=budget,
            windows=(tr, va),
            preset="quick",
            seed=SEED,
            progress=False,
            provenance=dict(cube.attrs),
        )
    else:  # the single training module it replaced
        tc = training.train_config_preset("quick").model_copy(update=budget)
        res = training.train(
            cfg, tr, va, tc, out / "model", progress=False, provenance=dict(cube.attrs)
        )
    print(
        f"[model] {res.epochs} epochs in {res.seconds:.0f} s ({res.stopped}); "
        f"best validation centre MAE {res.best_val:.4f}"
    )
    return Path(res.checkpoint)


def embed_store(cube: xr.Dataset, checkpoint: Path, out: Path) -> xr.Dataset:
    """Embed the cube (``edge="pad"``) into ``out/embedding.zarr`` and open it."""
    from latentcube.bundle import load_checkpoint
    from latentcube.inference import embed, open_embedding, write_embedding

    store = out / "embedding.zarr"
    if store.exists() and store.stat().st_mtime > checkpoint.stat().st_mtime:
        print(f"[embed] reusing {store}")
        return open_embedding(store)
    model, _ = load_checkpoint(checkpoint, expect_bands=tuple(BANDS.values()))
    t0 = time.perf_counter()
    write_embedding(embed(cube, model, edge="pad"), store, overwrite=True)
    print(f"[embed] {store} in {time.perf_counter() - t0:.0f} s")
    return open_embedding(store)


def ndvi_embedding(cube: xr.Dataset) -> xr.Dataset:
    """NDVI as a 1-feature embedding in the store layout (same valid mask, grid, CRS)."""
    nir, red = (cube["s2"].sel(band=b) for b in ("B08", "B04"))
    ndvi = ((nir - red) / (nir + red)).where(cube["s2_valid"])
    ds = xr.Dataset(
        {
            "embedding": ndvi.expand_dims(feature=["NDVI"]).transpose("feature", "time", "y", "x"),
            "valid": cube["s2_valid"] & np.isfinite(ndvi),
        },
        attrs={"source": "NDVI of the Romania cube"},
    )
    return ds.drop_vars("band", errors="ignore").rio.write_crs(cube.rio.crs)


def analyse(emb: xr.Dataset) -> dict[str, Any]:
    """Change map, anomaly per date and the per-pixel median anomaly of the after period."""
    ch = change(emb, BEFORE, AFTER, min_count=3, months=MONTHS).compute()
    an = anomaly(emb, half_window=HALF_WINDOW, min_count=2).compute()
    per_date = an["euclidean"]
    a, b = AFTER.split("/")
    after_median = per_date.sel(time=slice(a, b)).median("time", skipna=True)
    counts = summarise(emb, [BEFORE, AFTER], months=MONTHS)["count"].compute()
    return {"change": ch, "anomaly": an, "anomaly_after": after_median, "counts": counts}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def compare(emb_map: np.ndarray, ndvi_map: np.ndarray, tcd: np.ndarray) -> dict[str, Any]:
    """Rank correlation, flagged fractions and overlap of two maps, and their relation to TCD."""
    ze, zn = robust_zscore(emb_map), robust_zscore(ndvi_map)
    both = np.isfinite(ze) & np.isfinite(zn)
    fe, fn = (ze > Z_FLAG) & both, (zn > Z_FLAG) & both
    union = (fe | fn).sum()
    te, tn = ((m > np.nanpercentile(m[both], 100 - TOP)) & both for m in (emb_map, ndvi_map))
    classes = {"TCD 0%": tcd == 0, "TCD 1-50%": (tcd > 0) & (tcd <= 50), "TCD >50%": tcd > 50}
    per_class = {
        name: {
            "pixels": int((m & both).sum()),
            "flagged_embedding": float(fe[m & both].mean()) if (m & both).any() else float("nan"),
            "flagged_ndvi": float(fn[m & both].mean()) if (m & both).any() else float("nan"),
            "median_z_embedding": float(np.median(ze[m & both])) if (m & both).any() else np.nan,
            "median_z_ndvi": float(np.median(zn[m & both])) if (m & both).any() else np.nan,
        }
        for name, m in classes.items()
    }
    return {
        "pixels": int(both.sum()),
        "spearman_embedding_ndvi": _spearman(emb_map, ndvi_map),
        "flagged_embedding": float(fe.sum() / both.sum()),
        "flagged_ndvi": float(fn.sum() / both.sum()),
        "flagged_both": float((fe & fn).sum() / both.sum()),
        "jaccard": float((fe & fn).sum() / union) if union else float("nan"),
        f"top{TOP}_jaccard": float((te & tn).sum() / (te | tn).sum()),
        "spearman_embedding_tcd": _spearman(emb_map, tcd),
        "spearman_ndvi_tcd": _spearman(ndvi_map, tcd),
        "by_tree_cover": per_class,
        "_flags": (fe, fn),
    }


def _clear_date(cube: xr.Dataset, period: str) -> int:
    a, b = period.split("/")
    t = pd.DatetimeIndex(cube["time"].values)
    frac = cube["s2_valid"].mean(("y", "x")).values
    summer = (t >= pd.Timestamp(a)) & (t <= pd.Timestamp(b)) & t.month.isin([6, 7, 8, 9])
    cand = np.flatnonzero(np.asarray(summer))
    return int(cand[np.argmax(frac[cand])])


def figure_maps(cube, tcd, res_e, res_n, cmp_change, path) -> Path:  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    from latentcube.analysis._figures import extent_km, map_panel, save_png
    from latentcube.plotting import true_colour

    ext = extent_km(cube)
    fig = Figure(figsize=(12.5, 7.6), layout="constrained")
    ax = fig.subplots(2, 3)
    for j, period in enumerate((BEFORE, AFTER)):
        t = _clear_date(cube, period)
        date = np.datetime_as_string(cube["time"].values[t], "D")
        map_panel(ax[0, j], true_colour(cube, t, gain=4.0), ext, f"true colour {date}")
    map_panel(
        ax[0, 2], tcd, ext, "tree cover density 2018", cmap="Greens", vmin=0, vmax=100, label="%"
    )
    e, n = (res["change"]["euclidean"].values for res in (res_e, res_n))
    for k, (vals, name) in enumerate(((e, "embedding (9 features)"), (n, "NDVI"))):
        map_panel(
            ax[1, k],
            vals,
            ext,
            f"change {name}",
            vmin=0,
            vmax=float(np.nanpercentile(vals, 99)),
            label="Euclidean distance",
        )
    fe, fn = cmp_change["_flags"]
    agree = np.full(e.shape, np.nan)
    agree[np.isfinite(e) & np.isfinite(n)] = 0
    agree[fe & ~fn], agree[fn & ~fe], agree[fe & fn] = 1, 2, 3
    import matplotlib as mpl

    cmap = mpl.colors.ListedColormap(["#f0f0f0", "#d95f02", "#1b9e77", "#7570b3"])
    im = ax[1, 2].imshow(
        np.ma.masked_invalid(agree),
        extent=ext,
        cmap=cmap,
        vmin=-0.5,
        vmax=3.5,
        interpolation="nearest",
    )
    cb = fig.colorbar(im, ax=ax[1, 2], shrink=0.8, ticks=[0, 1, 2, 3])
    cb.ax.set_yticklabels(["neither", "embedding", "NDVI", "both"], fontsize=7)
    ax[1, 2].set_title(f"flagged (robust z > {Z_FLAG})", fontsize=9)
    ax[1, 2].set_xlabel("km", fontsize=8)
    fig.suptitle(
        f"mean {BEFORE} against mean {AFTER}; rank correlation of the change maps "
        f"{cmp_change['spearman_embedding_ndvi']:.2f}\n{ATTRIBUTION}",
        fontsize=8,
    )
    return save_png(fig, path, overwrite=True)


def figure_anomaly(cube, res_e, res_n, cmp_anom, path) -> Path:  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    from latentcube.analysis._figures import extent_km, map_panel, save_png

    ext = extent_km(cube)
    fig = Figure(figsize=(12.5, 7.4), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=[1.2, 1])
    for k, (res, name) in enumerate(((res_e, "embedding"), (res_n, "NDVI"))):
        vals = res["anomaly_after"].values
        map_panel(
            fig.add_subplot(gs[0, k]),
            vals,
            ext,
            f"median anomaly of the 2019-2020 dates, {name}",
            vmin=0,
            vmax=float(np.nanpercentile(vals, 99)),
            label="distance from other years",
        )
    ax = fig.add_subplot(gs[1, :])
    t = res_e["anomaly"]["time"].values
    for res, name, flags, colour in (
        (res_e, "embedding", cmp_anom["_flags"][0], "#d95f02"),
        (res_n, "NDVI", cmp_anom["_flags"][1], "#1b9e77"),
    ):
        per_date = res["anomaly"]["euclidean"].values
        if flags.any() and (~flags).any():
            with np.errstate(all="ignore"):
                ratio = np.nanmedian(per_date[:, flags], 1) / np.nanmedian(per_date[:, ~flags], 1)
            ok = np.isfinite(ratio)
            ax.plot(
                t[ok],
                ratio[ok],
                "-",
                color=colour,
                marker=".",
                ms=4,
                label=f"{name}: its {int(flags.sum())} flagged px against the rest",
            )
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.axvspan(np.datetime64(AFTER[:10]), np.datetime64(AFTER[11:]), color="0.9", zorder=0)
    ax.set_ylabel("median anomaly, flagged / other pixels", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, ncols=2)
    ax.set_title(
        f"anomaly per date (each date against the same season +-{HALF_WINDOW} days of the other "
        f"years); rank correlation of the maps {cmp_anom['spearman_embedding_ndvi']:.2f}",
        fontsize=9,
    )
    fig.suptitle(ATTRIBUTION, fontsize=8)
    return save_png(fig, path, overwrite=True)


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "romania")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs (130 steps each)")
    ap.add_argument("--train-seconds", type=float, default=None, help="optional time budget")
    ap.add_argument("--images", type=Path, default=IMAGES)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cube = load_cube()
    print(f"[cube] {dict(cube.sizes)}; valid pixel-dates {float(cube['s2_valid'].mean()):.1%}")
    stages = {"start": time.perf_counter()}
    ckpt = train_model(cube, args.out, args.epochs, args.train_seconds)
    stages["train"] = time.perf_counter()
    emb = embed_store(cube, ckpt, args.out)
    stages["embed"] = time.perf_counter()
    tcd = tree_cover()
    res_e, res_n = analyse(emb), analyse(ndvi_embedding(cube))
    cmp_change = compare(
        res_e["change"]["euclidean"].values, res_n["change"]["euclidean"].values, tcd
    )
    cmp_anom = compare(res_e["anomaly_after"].values, res_n["anomaly_after"].values, tcd)
    stages["analyse"] = time.perf_counter()
    counts = res_e["counts"].values
    names = list(stages)
    report = {
        "before": BEFORE,
        "after": AFTER,
        "valid_dates_median": {
            "before": float(np.median(counts[0])),
            "after": float(np.median(counts[1])),
        },
        "change": _public(cmp_change),
        "anomaly_after": _public(cmp_anom),
        "seconds": time.perf_counter() - t0,
        "stage_seconds": {b: stages[b] - stages[a] for a, b in itertools.pairwise(names)},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=1))
    (args.out / "summary.json").write_text(json.dumps(report, indent=1))
    for p in (
        figure_maps(cube, tcd, res_e, res_n, cmp_change, args.images / "change_romania_maps.png"),
        figure_anomaly(cube, res_e, res_n, cmp_anom, args.images / "change_romania_anomaly.png"),
    ):
        print(f"[figure] {p}")
    print(f"[done] {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
