"""Train and evaluate the stage-1 autoencoders on the real WorldCereal Flanders patches.

Reproduces the figures of ``docs/research/stage1.md``::

    PYTHONPATH=src nice -n 5 python scripts/train_stage1.py --out runs/stage1

Data (read-only, from ``../shared/data``): the two WorldCereal training patches, each
64 x 64 px at 10 m with per-date S2 (10 bands) and S1 (VV, VH) matched to the S2 dates.
The split is by cube: the Kortrijk patch (2017-08 .. 2018-11) is the training cube (its
spatial blocks give a small validation set for model selection), the patch near Brussels
(2018-08 .. 2019-11, another place and year) is held out for testing. The other S2 samples
in ``../shared/data`` have 4 bands (GreenEarthNet, Mol) or monthly composites without B8A
(Hesbaye), so they cannot feed a 10-band model and are not used.

Runs (every model gets the same CPU-time budget, measured with ``time.process_time`` on
one thread, so the comparison is at equal compute, not at convergence):

* S2 ``paper``, S2 ``fast``, S2 ``fast`` with gap filling (centre hidden with
  probability 0.5, other entries with 0.1), S1 ``paper``, S1 ``fast``.

Report (on the held-out cube, per band): centre-pixel MAE of each model; a PCA with as many
components as latents fitted on the training cube's centre spectra; and with the centre
pixel-date hidden, the gap-filling model against linear interpolation in time between the
pixel's neighbouring valid dates. Everything is seeded; the runs resume after a kill.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from latentcube.bundle import ModelBundle
from latentcube.cube.readers import open_cube
from latentcube.data.windows import CubeArrays, Windows, block_regions, extract_windows
from latentcube.evaluation.reconstruction import trivial_centre
from latentcube.models.config import AutoencoderConfig
from latentcube.training import fit_autoencoder, train_config_preset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "worldcereal_s1_s2_training_patches_flanders"
TRAIN_CUBE, TEST_CUBE = "00002806639B424A", "0000280849BAC91C"
SEED = 42


def centre_spectra(w: Windows) -> np.ndarray:
    """(n, C) centre pixel at the centre date of every window."""
    c = w.window // 2
    out = np.empty((len(w), w.cubes[0].data.shape[1]), np.float32)
    for k, cube in enumerate(w.cubes):
        m = w.cube_id == k
        out[m] = cube.data[w.t_idx[m, w.n_dates // 2], :, w.iy[m] + c, w.ix[m] + c]
    return out


def training_windows(cube: CubeArrays, sensor: str) -> tuple[Windows, Windows]:
    """Training and validation windows of the training cube, split by 32 px spatial blocks.

    Training windows draw 11 of 20 consecutive dates (strides 2 dates, 3 px);
    validation windows take 11 consecutive dates (at most 128); seeded.
    """
    tr_r, va_r = block_regions(cube.valid.shape[1:], 32, (0.75, 0.25), seed=SEED)
    common = {"seed": SEED, "window": 15}
    train_w = extract_windows(
        cube, sensor, mode="train", region=tr_r, stride_t=2, stride_xy=3, **common
    )
    val_w = extract_windows(
        cube,
        sensor,
        mode="consecutive",
        region=va_r,
        stride_t=3,
        stride_xy=4,
        max_windows=128,
        **common,
    )
    return train_w, val_w


def trivial_mae(w: Windows) -> dict[str, list[float]]:
    """Per-band centre MAE of the context mean and persistence (no model) on ``w``.

    ``*_all`` is the mean over bands and windows, the figure the training loop
    reports as ``val_centre_mae`` for a model.
    """
    x, m, _ = w.batch(np.arange(len(w)))
    t, c = x.shape[1] // 2, x.shape[-1] // 2
    ok = m[:, t, c, c]
    target = x[ok, t, :, c, c]
    out: dict[str, list[float]] = {}
    preds = trivial_centre(x[ok], m[ok])
    for name, pred in zip(("context_mean", "persistence"), preds, strict=True):
        err = np.abs(pred - target)
        out[name] = err.mean(0).tolist()
        out[f"{name}_all"] = [float(err.mean())]
    return out


def pca_mae(train_x: np.ndarray, test_x: np.ndarray, k: int) -> np.ndarray:
    """Per-band MAE of a k-component PCA fitted on ``train_x``, applied to ``test_x``."""
    mean = train_x.mean(0)
    _, _, vt = np.linalg.svd(train_x - mean, full_matrices=False)
    comp = vt[:k]
    rec = (test_x - mean) @ comp.T @ comp + mean
    return np.abs(rec - test_x).mean(0)


def linear_interp_centre(w: Windows) -> np.ndarray:
    """(n, C) linear interpolation in time of each window's centre pixel at its centre date.

    Uses the pixel's nearest valid date before and after the centre date in the whole
    cube (the centre date itself excluded); a single neighbour is carried over.
    """
    cube = w.cubes[0]
    c = w.window // 2
    out = np.full((len(w), cube.data.shape[1]), np.nan, np.float32)
    for i in range(len(w)):
        t0 = w.t_idx[i, w.n_dates // 2]
        y, x = w.iy[i] + c, w.ix[i] + c
        ok = np.flatnonzero(cube.valid[:, y, x])
        before, after = ok[ok < t0], ok[ok > t0]
        if before.size and after.size:
            a, b = before[-1], after[0]
            f = (cube.days[t0] - cube.days[a]) / (cube.days[b] - cube.days[a])
            out[i] = (1 - f) * cube.data[a, :, y, x] + f * cube.data[b, :, y, x]
        elif before.size or after.size:
            out[i] = cube.data[before[-1] if before.size else after[0], :, y, x]
    return out


@torch.no_grad()
def predict_centre(path: Path, w: Windows, hide_centre: bool, batch: int = 64) -> np.ndarray:
    """(n, C) reconstruction of the centre pixel at the centre date."""
    model = ModelBundle.load(path).model
    out = []
    for i in range(0, len(w), batch):
        x, m, g = (torch.from_numpy(a) for a in w.batch(np.arange(i, min(i + batch, len(w)))))
        if hide_centre:
            t, c = x.shape[1] // 2, x.shape[-1] // 2
            m = m.clone()
            m[:, t, c, c] = False
            x = x.clone()
            x[:, t, :, c, c] = float("nan")
        recon, _ = model(x, m, g)
        t, c = recon.shape[1] // 2, recon.shape[-1] // 2
        out.append(recon[:, t, :, c, c].numpy())
    return np.concatenate(out)


def score(
    ckpt: Path,
    variant: str,
    test_w: Windows,
    truth: np.ndarray,
    test_big: Windows,
    truth_big: np.ndarray,
    ok: np.ndarray,
) -> dict:
    """Per-band centre MAE on the shared test windows (and, for cheap models, the big set)."""
    pred = predict_centre(ckpt, test_w, hide_centre=False)
    out = {"mae": np.abs(pred - truth).mean(0).tolist()}
    if variant != "paper":
        pred = predict_centre(ckpt, test_big, hide_centre=False)
        out["mae_fast_set"] = np.abs(pred - truth_big).mean(0).tolist()
        pred = predict_centre(ckpt, test_big, hide_centre=True)
        out["mae_centre_hidden"] = np.abs(pred[ok] - truth_big[ok]).mean(0).tolist()
    return out


def earlier_run(run: Path) -> tuple[Path, dict[str, str]]:
    """Checkpoint and last metrics row of a run folder written by :func:`train`.

    The row gains ``best_val``, ``best_epoch`` and ``best_step``: the lowest
    validation centre MAE of its epochs and where it was reached, i.e. the
    checkpoint ``best.pt`` that is scored (the first such epoch, as training
    keeps a new best only when it is lower).
    """
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    if not rows:
        raise SystemExit(f"{run} has no completed epoch")
    best = min(rows, key=lambda r: float(r["val_centre_mae"]))
    row = dict(rows[-1])
    row["best_val"] = best["val_centre_mae"]
    row["best_epoch"], row["best_step"] = best["epoch"], best["step"]
    return run / "best.pt", row


def load_results(files: list[Path]) -> tuple[dict, dict]:
    """Runs (with their file's learning rate) and evaluations of ``results_*.json`` files.

    A later file's run or evaluation of the same name replaces an earlier one's.
    """
    runs: dict = {}
    evals: dict = {}
    for f in files:
        r = json.loads(f.read_text())
        for name, run in r["runs"].items():
            runs[name] = {**run, "lr": r.get("lr")}
        for sensor, ev in r["eval"].items():
            evals.setdefault(sensor, {}).update(ev)
    return runs, evals


def report(out: Path) -> str:
    """Markdown tables of every ``results_*.json`` in ``out``."""
    runs, evals = load_results(sorted(out.glob("results_*.json")))
    lines = ["| run | steps | samples | CPU s | stopped | best val centre MAE |", "|---" * 6 + "|"]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['steps']} | {r['samples']} | {r['cpu_seconds_this_call']:.0f} | "
            f"{r['stopped']} | {r['best_val_centre_mae']:.4f} |"
        )
    for sensor, ev in evals.items():
        bands, n = ev["bands"], ev["n_test_windows"]
        paper, fast = ev.get(f"{sensor}-paper"), ev.get(f"{sensor}-fast")
        unit = "reflectance" if sensor == "s2" else "normalised (x 35 = dB)"
        lines += [
            "",
            f"**{sensor.upper()}**, held-out cube {TEST_CUBE}, centre-pixel MAE ({unit}), "
            f"{n} windows shared by all models:",
            "",
            "| band | paper | fast | fast / paper | PCA " + str(ev["pca"]["components"]) + " |",
            "|---|---|---|---|---|",
        ]
        for i, b in enumerate(bands):
            p = paper["mae"][i] if paper else float("nan")
            q = fast["mae"][i] if fast else float("nan")
            lines.append(f"| {b} | {p:.4f} | {q:.4f} | {q / p:.2f} | {ev['pca']['mae'][i]:.4f} |")
        big = ev["n_test_windows_fast"]
        gap = ev.get(f"{sensor}-fast-gapfill")
        lines += [
            "",
            f"{sensor.upper()} on {big} held-out windows (fast models): centre visible, and "
            "centre pixel-date hidden from the input against linear interpolation in time "
            f"({ev['linear_interp']['n']} windows):",
            "",
            "| band | fast | PCA | fast, centre hidden"
            + (" | gap-fill model, visible | gap-fill model, hidden" if gap else "")
            + " | linear interpolation |",
            "|---|---|---|---" + ("|---|---" if gap else "") + "|---|",
        ]
        for i, b in enumerate(bands):
            row = (
                f"| {b} | {fast['mae_fast_set'][i]:.4f} | {ev['pca']['mae_fast_set'][i]:.4f} | "
                f"{fast['mae_centre_hidden'][i]:.4f} | "
            )
            if gap:
                row += f"{gap['mae_fast_set'][i]:.4f} | {gap['mae_centre_hidden'][i]:.4f} | "
            row += f"{ev['linear_interp']['mae_centre_hidden'][i]:.4f} |"
            lines.append(row)
    return "\n".join(lines)


def compare(files: list[Path]) -> str:
    """Per-band held-out table of ``paper`` against ``fast``, each from its own results file.

    For runs trained at different learning rates (each architecture at the rate it
    trains best with): every file is a ``results_*.json`` of this script; the last file
    naming a run wins. Both runs are scored on the same held-out windows (same seed).
    """
    runs, evals = load_results(files)
    lines = [
        "| run | peak lr | epochs | steps | stopped | best val centre MAE |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in sorted(runs.items()):
        lines.append(
            f"| {name} | {r['lr']:g} | {r['epochs']} | {r['steps']} | {r['stopped']} | "
            f"{r['best_val_centre_mae']:.4f} |"
        )
    for sensor, ev in evals.items():
        for ref in ("context_mean", "persistence") if "trivial_val" in ev else ():
            name = ref.replace("_", " ")
            value = ev["trivial_val"][f"{ref}_all"][0]
            lines.append(f"| {sensor} {name} (no model) | | | | | {value:.4f} |")
    for sensor, ev in evals.items():
        paper, fast = ev.get(f"{sensor}-paper"), ev.get(f"{sensor}-fast")
        if paper is None or fast is None:
            continue
        triv = ev.get("trivial")
        ratios = [q / p for p, q in zip(paper["mae"], fast["mae"], strict=True)]
        lines += [
            "",
            f"**{sensor.upper()}**, held-out cube {TEST_CUBE}, centre-pixel MAE, "
            f"{ev['n_test_windows']} windows shared by both runs "
            f"(`paper` at lr {runs[sensor + '-paper']['lr']:g}, "
            f"`fast` at lr {runs[sensor + '-fast']['lr']:g}):",
            "",
            "| band | `paper` | `fast` | `fast` / `paper` |"
            + (" context mean | persistence |" if triv else ""),
            "|---|---|---|---|" + ("---|---|" if triv else ""),
        ]
        for i, (b, p, q, k) in enumerate(
            zip(ev["bands"], paper["mae"], fast["mae"], ratios, strict=True)
        ):
            row = f"| {b} | {p:.4f} | {q:.4f} | {k:.2f} |"
            if triv:
                row += f" {triv['context_mean'][i]:.4f} | {triv['persistence'][i]:.4f} |"
            lines.append(row)
        lines.append(
            f"\nlargest `fast` / `paper` ratio: {max(ratios):.2f} (target <= 1.10: "
            f"{'met' if max(ratios) <= 1.10 else 'missed'})"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "stage1")
    ap.add_argument("--cpu-seconds-s2", type=float, default=150.0)
    ap.add_argument("--cpu-seconds-s1", type=float, default=100.0)
    ap.add_argument("--test-windows", type=int, default=200, help="shared by all models")
    ap.add_argument("--test-windows-fast", type=int, default=4000, help="fast models only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sensors", nargs="+", default=["s2", "s1"], choices=["s2", "s1"])
    ap.add_argument("--only", nargs="+", default=None, help="run only these models (names)")
    ap.add_argument("--report", action="store_true", help="print the tables of earlier runs")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="equal-samples mode: every model trains exactly this many epochs (no CPU budget)",
    )
    ap.add_argument("--epoch-windows", type=int, default=2000, help="training windows per epoch")
    ap.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate of every model (default: the 'quick' preset's 2e-3)",
    )
    ap.add_argument(
        "--evaluate",
        nargs="+",
        default=[],
        metavar="NAME=RUN_DIR",
        help="score the checkpoint of an earlier run (e.g. one stopped after k epochs) "
        "instead of training NAME; its metrics.csv gives the epochs and samples",
    )
    ap.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="print the per-band held-out table of paper against fast from these results "
        "files (e.g. each model trained at its own learning rate) and exit",
    )
    args = ap.parse_args()
    if args.compare:
        print(compare(args.compare))
        return
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    given = dict(item.split("=", 1) for item in args.evaluate)
    lr = args.lr if args.lr is not None else train_config_preset("quick").lr

    cubes = {k: open_cube(DATA / k).load() for k in (TRAIN_CUBE, TEST_CUBE)}
    results: dict = {
        "train_cube": TRAIN_CUBE,
        "test_cube": TEST_CUBE,
        "seed": SEED,
        "threads": args.threads,
        "cpu_budget_seconds": None
        if args.epochs
        else {"s2": args.cpu_seconds_s2, "s1": args.cpu_seconds_s1},
        "equal_epochs": args.epochs,
        "epoch_windows": args.epoch_windows,
        "lr": lr,
        "runs": {},
        "eval": {},
    }
    runs = [
        ("s2", "paper", 0.0, 0.0),
        ("s2", "fast", 0.0, 0.0),
        ("s2", "fast", 0.5, 0.1),
        ("s1", "paper", 0.0, 0.0),
        ("s1", "fast", 0.0, 0.0),
    ]
    for sensor in args.sensors:
        tr_cube = CubeArrays.from_cube(cubes[TRAIN_CUBE], sensor)
        te_cube = CubeArrays.from_cube(cubes[TEST_CUBE], sensor)
        train_w, val_w = training_windows(tr_cube, sensor)
        # an epoch of 2000 windows keeps validation frequent under a small budget
        train_ep = train_w.subset(
            np.sort(np.random.default_rng(SEED).permutation(len(train_w))[: args.epoch_windows])
        )
        test_all = extract_windows(te_cube, sensor, mode="consecutive", stride_t=1, stride_xy=1)
        order = np.random.default_rng(SEED + 1).permutation(len(test_all))
        test_w = test_all.subset(np.sort(order[: args.test_windows]))
        test_big = test_all.subset(np.sort(order[: args.test_windows_fast]))
        bands = [str(b) for b in cubes[TRAIN_CUBE]["band" if sensor == "s2" else "s1_band"].values]
        ev: dict = {
            "bands": bands,
            "n_train_windows": len(train_w),
            "n_epoch_windows": len(train_ep),
            "n_val_windows": len(val_w),
            "n_test_windows_all": len(test_all),
            "n_test_windows": len(test_w),
            "n_test_windows_fast": len(test_big),
        }
        truth, truth_big = centre_spectra(test_w), centre_spectra(test_big)
        k = AutoencoderConfig.preset("fast", sensor).latent_dim
        train_centres = centre_spectra(train_w)
        ev["pca"] = {
            "components": k,
            "mae": pca_mae(train_centres, truth, k).tolist(),
            "mae_fast_set": pca_mae(train_centres, truth_big, k).tolist(),
        }
        ev["trivial"] = trivial_mae(test_w)  # the 200 windows every model is scored on
        ev["trivial_val"] = trivial_mae(val_w)
        interp = linear_interp_centre(test_big)
        ok = np.isfinite(interp).all(1)  # pixels with another valid date (nearly all)
        ev["linear_interp"] = {
            "mae_centre_hidden": np.abs(interp[ok] - truth_big[ok]).mean(0).tolist(),
            "n": int(ok.sum()),
        }

        for s, variant, pc, po in runs:
            if s != sensor:
                continue
            name = f"{sensor}-{variant}" + ("-gapfill" if pc > 0 else "")
            if args.only and name not in args.only:
                continue
            budget = args.cpu_seconds_s2 if sensor == "s2" else args.cpu_seconds_s1
            train = {
                "max_cpu_seconds": None if args.epochs else budget,
                "max_epochs": args.epochs or train_config_preset("quick").max_epochs,
                # equal samples: no model stops early, so every one sees the same data
                "early_stopping_patience": 10_000 if args.epochs else 8,
                "num_threads": args.threads,
                "val_batch_size": 64,
                "hide_centre_prob": pc,
                "hide_prob": po,
                "lr": lr,
            }
            batch_size = train_config_preset("quick").batch_size
            if name in given:
                ckpt, row = earlier_run(Path(given[name]))
                results["runs"][name] = {
                    "epochs": int(row["epoch"]),  # of the run so far
                    "steps": int(row["step"]),
                    "samples": int(row["step"]) * batch_size,
                    # the checkpoint scored: best.pt, from the best validation epoch
                    "best_epoch": int(row["best_epoch"]),
                    "best_step": int(row["best_step"]),
                    "stopped": "evaluated_from " + given[name],
                    "best_val_centre_mae": float(row["best_val"]),
                    "wall_seconds_this_call": 0.0,  # no training in this call
                    "cpu_seconds_this_call": float("nan"),  # not in metrics.csv
                }
                print(name, results["runs"][name], flush=True)
                ev[name] = score(ckpt, variant, test_w, truth, test_big, truth_big, ok)
                print(name, ev[name], flush=True)
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            res = fit_autoencoder(
                [],
                variant,
                args.out / name,
                sensor=sensor,
                seed=SEED,
                train=train,
                windows=(train_ep, val_w),
                progress=False,
                provenance={
                    "data": "WorldCereal training patches, Flanders (shared/data)",
                    "train_cube": TRAIN_CUBE,
                    "held_out_cube": TEST_CUBE,
                    "split": "by cube; validation = 25% spatial blocks of the training cube",
                    "script": "scripts/train_stage1.py",
                },
            )
            _, row = earlier_run(res.out_dir)
            results["runs"][name] = {
                "epochs": res.epochs,
                "steps": res.steps,
                "samples": res.steps * batch_size,
                "best_epoch": int(row["best_epoch"]),  # the checkpoint scored below
                "best_step": int(row["best_step"]),
                "stopped": res.stopped,
                "best_val_centre_mae": res.best_val,
                "wall_seconds_this_call": time.perf_counter() - t0,
                "cpu_seconds_this_call": time.process_time() - c0,
            }
            print(name, results["runs"][name], flush=True)
            ev[name] = score(res.checkpoint, variant, test_w, truth, test_big, truth_big, ok)
            print(name, ev[name], flush=True)
        results["eval"][sensor] = ev
        tag = "_".join(args.only or args.sensors)
        (args.out / f"results_{tag}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
