"""Train a band-mask S2 ``fast`` model on every real S2 image series in ``../shared/data``.

Reproduces ``docs/research/all-real-data.md``::

    PYTHONPATH=src nice -n 5 python scripts/train_all_real.py --work runs/all_real

Steps (each skipped when its output exists, so a killed run resumes):

1. ``cubes``: every real per-date S2 image series the readers open is converted to a
   Zarr cube (S2 only) in ``WORK/cubes``: the two 10-band Flanders patches, the two 20 m
   WorldCereal patches (B05 B06 B07 B8A B11 B12), the Romania forest cube of ``nrt``
   (B02 B03 B04 B08 B8A B11), nrt's small French cube (B03 B04 B8A B11), the two
   GreenEarthNet minicubes (B02 B03 B04 B8A, 20 m repeated onto 10 m) and the openEO
   Mol cube (B04 B08 B11 of the model's bands). Not used: the Hesbaye monthly
   composites (no reader; composites, not dates), the eo-learn patch (NDVI only, no
   bands) and the Presto pixel series (no images).
2. ``train``: Flanders patch 0000280849BAC91C (never seen by the shipped model either)
   is held out; the others are read through :class:`~latentcube.data.streaming.StreamingWindows`
   (absent bands as NaN, ``min_bands=3``) and a ``fast`` S2 model with ``band_mask``
   and ``band_dropout`` 0.3 is trained on them (``quick`` preset, seed 42) under a CPU
   budget. The loop's validation windows are the held-out cube's. This is far below the
   paper's scale (millions of windows for days on a GPU): minutes on a shared CPU.
3. ``report``: per-band centre-pixel MAE on the held-out cube of the new model (all
   bands in; only the 10 m bands in; only the 20 m bands in) and of the shipped
   default model's S2 autoencoder, with the context-mean and persistence baselines,
   written to ``WORK/reconstruction.json`` and printed as a Markdown table.

The training loop (``latentcube.training.fit``) reads its windows through the
``batch`` method only; the task below gives it a data digest made from the stores'
fingerprints and the window indices, since streamed windows have no arrays in memory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from latentcube.bundle import ModelBundle, default_model_path
from latentcube.cube.readers import open_cube
from latentcube.data.streaming import StreamingWindows, store_fingerprint
from latentcube.data.windows import array_digest
from latentcube.evaluation.reconstruction import reconstruction_errors
from latentcube.io import write_zarr
from latentcube.models.config import AutoencoderConfig
from latentcube.sensors import S2_BANDS
from latentcube.training.config import train_config, train_config_preset
from latentcube.training.loop import fit
from latentcube.training.stage1 import AutoencoderTask

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FLANDERS = "worldcereal_s1_s2_training_patches_flanders"
PATCHES = "worldcereal_s1_s2_20m_patches"
GEN = "greenearthnet_replicated_minicubes"
#: name -> (path under DATA, reader options)
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "flanders_kortrijk": (f"{FLANDERS}/00002806639B424A", {"with_s1": False}),
    "flanders_brussels": (f"{FLANDERS}/0000280849BAC91C", {"with_s1": False}),
    "east_flanders_20m": (f"{PATCHES}/000028085BF08E7E", {"with_s1": False}),
    "tanzania_20m": (f"{PATCHES}/2021_TZA_COPERNICUS-GEOGLAM_POLY_1101950", {"with_s1": False}),
    "romania_forest": ("nrt_romania_s2_l2a", {}),
    "france_nrt": ("nrt_romania_s2_l2a/sentinel2_subset.nc", {}),
    "greenearthnet_portugal": (
        f"{GEN}/JAS2021_replicated_minicube_0_29SND_39.29_-8.56.nc",
        {"resolution": 10.0},
    ),
    "greenearthnet_hungary": (
        f"{GEN}/MJJ2021_replicated_minicube_225_34TET_47.37_22.05.nc",
        {"resolution": 10.0},
    ),
    "mol": ("openeo_gfmap_s1_s2_mol_april2023", {}),
}
HELD_OUT = "flanders_brussels"
TEN_M, TWENTY_M = ("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A", "B11", "B12")
SEED = 42
WINDOWS = {"stride_t": 3, "stride_xy": 5, "n_dates": 11, "window": 15}


def convert(work: Path) -> dict[str, Path]:
    """Every source as an S2-only Zarr cube in ``work/cubes`` (kept when it exists)."""
    out = {}
    for name, (rel, kw) in SOURCES.items():
        path = work / "cubes" / f"{name}.zarr"
        if not path.exists():
            cube = open_cube(DATA / rel, **kw)
            cube = cube[["s2", "s2_valid"]]
            cube = cube.drop_vars([c for c in cube.coords if str(c).startswith("s1")])
            nb = cube.sizes["band"]
            enc = {"s2": {"chunks": (10, nb, 32, 32)}, "s2_valid": {"chunks": (10, 32, 32)}}
            # the chunks the documented run used (not faster: benchmarks/RESULTS.md,
            # "Random-order streamed batches")
            write_zarr(cube, path, encoding=enc)
        out[name] = path
    return out


class StreamedAutoencoderTask(AutoencoderTask):
    """Stage 1 on streamed windows: the data digest from store fingerprints and indices."""

    def data_digest(self) -> str:
        """SHA-256 over the stores' fingerprints and both splits' window indices."""
        parts: list[np.ndarray] = []
        for w in (self.train_windows, self.val_windows):
            prints = "".join(store_fingerprint(p) for p in w.paths)  # type: ignore[attr-defined]
            parts.append(np.frombuffer(prints.encode(), np.uint8))
            parts += [w.cube_id, w.t_idx, w.iy, w.ix]  # type: ignore[attr-defined]
        return array_digest(parts)


def train(
    cubes: dict[str, Path], work: Path, cpu_minutes: float, wall_minutes: float, threads: int
) -> Path:
    """Train the band-mask model on every cube but the held-out one."""
    paths = [p for n, p in cubes.items() if n != HELD_OUT]
    opts = {"bands": S2_BANDS, "min_bands": 3, "index_dir": work / "index", **WINDOWS}
    tr = StreamingWindows(paths, mode="train", max_windows=3000, seed=SEED, **opts)
    va = StreamingWindows(
        [cubes[HELD_OUT]], mode="consecutive", max_windows=1000, seed=SEED, **opts
    )
    counts = {p.stem: len(i) for p, i in zip(paths, tr.indexes, strict=True)}
    print(f"{len(tr)} training windows {counts}; {len(va)} validation windows ({HELD_OUT})")
    base = AutoencoderConfig.preset("fast").model_dump()
    mcfg = AutoencoderConfig.model_validate(
        {**base, "band_mask": True, "band_dropout": 0.3, "min_bands": 3}
    )
    tcfg = train_config(
        train_config_preset("quick"),
        {},
        {
            "seed": SEED,
            "max_cpu_seconds": cpu_minutes * 60,
            "max_seconds": wall_minutes * 60,
            "num_threads": threads,
        },
    )
    t0 = time.time()
    res = fit(
        StreamedAutoencoderTask(mcfg, tr, va),  # type: ignore[arg-type]
        tcfg,
        work / "model",
        provenance={"cubes": [str(p) for p in paths], "held_out": HELD_OUT, "seed": SEED},
    )
    wall = time.time() - t0
    (work / "model" / "done.json").write_text(json.dumps({"wall_s": wall, "result": str(res)}))
    print(f"trained in {wall:.0f} s wall; {res}")
    return work / "model" / "best.pt"


def report(cubes: dict[str, Path], model: Path, work: Path) -> dict[str, Any]:
    """Per-band reconstruction on the held-out cube: new model (three inputs) and shipped."""
    cube = open_cube(cubes[HELD_OUT]).load()
    kw = {"stride_xy": 5, "stride_t": 3, "max_windows": 4000, "seed": 0}
    rows = {
        "new, all 10 bands in": reconstruction_errors(model, cube, **kw),
        "new, 10 m bands in": reconstruction_errors(model, cube, inputs=TEN_M, **kw),
        "new, 20 m bands in": reconstruction_errors(model, cube, inputs=TWENTY_M, **kw),
        "shipped default (S2 stage 1)": reconstruction_errors(default_model_path(), cube, **kw),
    }
    rows["paired"] = paired_difference(model, cube, **kw)
    out = work / "reconstruction.json"
    out.write_text(json.dumps(rows, indent=1))
    return rows


def paired_difference(
    model: Path, cube: Any, *, stride_xy: int, stride_t: int, max_windows: int, seed: int
) -> dict[str, float]:
    """New minus shipped centre MAE (band mean) on the same windows, with its noise.

    The noise is the sd of the mean difference over 2,000 bootstrap draws of 16 px
    spatial blocks of the window centres (windows of one block overlap, so they are
    drawn together).
    """
    import torch

    from latentcube.data.windows import extract_windows

    new = ModelBundle.load(model).autoencoder("s2")
    ship = ModelBundle.load(default_model_path()).autoencoder("s2")
    w = extract_windows(
        cube,
        "s2",
        S2_BANDS,
        mode="consecutive",
        stride_xy=stride_xy,
        stride_t=stride_t,
        max_windows=max_windows,
        seed=seed,
    )
    x, m, g = (torch.from_numpy(a) for a in w.batch(np.arange(len(w))))
    ok = m[:, 5, 7, 7].numpy()
    errs = []
    with torch.no_grad():
        for net in (new, ship):
            rec = torch.cat(
                [
                    net(x[i : i + 256], m[i : i + 256], g[i : i + 256])[0]
                    for i in range(0, len(w), 256)
                ]
            )
            errs.append((rec[:, 5, :, 7, 7] - x[:, 5, :, 7, 7]).abs().mean(1).numpy()[ok])
    d = errs[0] - errs[1]
    blocks = ((w.iy + 7) // 16 * 1000 + (w.ix + 7) // 16)[ok]
    ids, inv = np.unique(blocks, return_inverse=True)
    sums, counts = np.bincount(inv, d), np.bincount(inv)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, ids.size, (2000, ids.size))
    boot = sums[draws].sum(1) / counts[draws].sum(1)
    return {
        "new_minus_shipped": float(d.mean()),
        "block_bootstrap_sd": float(boot.std(ddof=1)),
        "windows": int(d.size),
        "blocks": int(ids.size),
        "windows_new_better": int((d < 0).sum()),
    }


def table(rows: dict[str, Any]) -> str:
    """A Markdown table: one row per model, one column per band, then the mean."""
    first = next(iter(rows.values()))
    bands = first["bands"]
    lines = [
        "| model | " + " | ".join(bands) + " | mean |",
        "|---" * (len(bands) + 2) + "|",
    ]
    for name, r in rows.items():
        if name == "paired":
            continue
        vals = [f"{r['model'][b]:.4f}" for b in bands]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {r['model_mean']:.4f} |")
    for base in ("context_mean", "persistence"):
        r = rows["shipped default (S2 stage 1)"]
        vals = [f"{r[base][b]:.4f}" for b in bands]
        lines.append(f"| {base} | " + " | ".join(vals) + f" | {r[base + '_mean']:.4f} |")
    n = {k: r["n_windows"] for k, r in rows.items() if k != "paired"}
    return "\n".join(lines) + f"\n\nwindows with a valid centre: {n}\n{rows['paired']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "all_real")
    ap.add_argument("--cpu-minutes", type=float, default=12.0, help="training CPU budget")
    ap.add_argument("--wall-minutes", type=float, default=22.0, help="training wall budget")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    AutoencoderConfig.preset("fast")  # fail early on a broken install
    cubes = convert(a.work)
    model = a.work / "model" / "best.pt"
    if not (a.work / "model" / "done.json").exists():
        model = train(cubes, a.work, a.cpu_minutes, a.wall_minutes, a.threads)
    rows = report(cubes, model, a.work)
    print(table(rows))


if __name__ == "__main__":
    main()
