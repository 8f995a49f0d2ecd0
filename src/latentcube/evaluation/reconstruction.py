"""Centre-pixel reconstruction error per band of a trained checkpoint on a cube.

The stage-1 objective is dominated by the centre pixel of the centre date
(paper spec section 3.4); this task reports its mean absolute error per band
(reflectance units for S2) over consecutive-date windows of a cube, with the
error of two trivial reconstructions beside it: the per-band mean of the
window's valid context (spatial-temporal mean) and the same pixel on the
nearest other valid date of the window (persistence).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.errors import EvaluationError

__all__ = ["reconstruction_errors", "run_reconstruction", "trivial_centre"]


def trivial_centre(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two model-free reconstructions of each window's centre pixel at the centre date.

    Parameters
    ----------
    x
        Windows ``(n, dates, bands, y, x)``.
    m
        Their validity ``(n, dates, y, x)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n, bands)`` each: the per-band mean of the window's valid entries other
        than the target (context mean), and the same pixel on the nearest other
        valid date, the earlier one first on a tie (persistence; the context mean
        where the pixel has no other valid date). NaN where the window has no
        valid context at all.
    """
    n_dates, c = x.shape[1], x.shape[-1] // 2
    t = n_dates // 2
    ctx = np.where(m[:, :, None], x, np.nan)
    ctx[:, t, :, c, c] = np.nan  # the target itself is not context
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a window without context: NaN
        ctx_mean = np.nanmean(ctx, axis=(1, 3, 4))
    pix = ctx[:, :, :, c, c]  # (n, dates, bands)
    pers = np.full_like(ctx_mean, np.nan)
    for k in sorted(range(n_dates), key=lambda k: (abs(k - t), k))[1:]:
        fill = np.isnan(pers) & np.isfinite(pix[:, k])
        pers[fill] = pix[:, k][fill]
    return ctx_mean, np.where(np.isnan(pers), ctx_mean, pers)


@torch.no_grad()
def reconstruction_errors(
    checkpoint: str | os.PathLike[str],
    cube: xr.Dataset,
    *,
    stride_xy: int = 5,
    stride_t: int = 3,
    max_windows: int | None = 4000,
    batch_size: int = 256,
    seed: int = 0,
    sensor: str | None = None,
    inputs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-band centre-pixel MAE of a checkpoint's reconstruction and of two trivial ones.

    Parameters
    ----------
    checkpoint
        A model written by ``latentcube train``: a stage-1 checkpoint, or a fused
        bundle (file or folder), whose ``sensor`` autoencoder is evaluated.
    cube
        The cube to reconstruct (must have the model's bands).
    stride_xy, stride_t, max_windows, seed
        Consecutive-date windows taken (seeded subset).
    batch_size
        Windows per model call.
    sensor
        The sensor whose autoencoder is evaluated (default: the bundle's first,
        the reference sensor).
    inputs
        Band-mask models: the bands the model is given (the others are hidden
        from it as absent bands); every band the cube has is still scored, so
        the hidden ones measure how well the model infers them. Default: all.

    Returns
    -------
    dict
        ``bands``, ``model``/``context_mean``/``persistence`` per-band MAE, their
        band means, and ``n_windows``.
    """
    from latentcube.bundle import ModelBundle
    from latentcube.data.windows import CubeArrays, extract_windows

    bundle = ModelBundle.load(checkpoint)
    model = bundle.autoencoder(sensor or bundle.sensors[0])
    cfg = model.config
    if inputs is not None and not cfg.band_mask:
        raise EvaluationError(f"{checkpoint} has no band mask: it needs all of {list(cfg.bands)}")
    hidden = [k for k, b in enumerate(cfg.bands) if inputs is not None and b not in inputs]
    w = extract_windows(
        CubeArrays.from_cube(
            cube, cfg.sensor, cfg.bands, min_bands=cfg.min_bands if cfg.band_mask else None
        ),
        cfg.sensor,
        cfg.bands,
        mode="consecutive",
        n_dates=cfg.n_dates,
        window=cfg.window,
        stride_xy=stride_xy,
        stride_t=stride_t,
        max_windows=max_windows,
        seed=seed,
    )
    if len(w) == 0:
        raise EvaluationError("the cube yields no complete context window for this model")
    t, c = cfg.n_dates // 2, cfg.window // 2
    sums = {k: np.zeros(cfg.n_bands) for k in ("model", "context_mean", "persistence")}
    n = 0
    for i in range(0, len(w), batch_size):
        x, m, g = w.batch(np.arange(i, min(i + batch_size, len(w))))
        x_in = x.copy()
        x_in[:, :, hidden] = np.nan
        recon, _ = model(torch.from_numpy(x_in), torch.from_numpy(m), torch.from_numpy(g))
        ok = m[:, t, c, c]
        if not ok.any():
            continue
        target = x[ok, t, :, c, c]
        sums["model"] += np.abs(recon.numpy()[ok, t, :, c, c] - target).sum(0)
        ctx_mean, pers = trivial_centre(x_in[ok], m[ok])
        sums["context_mean"] += np.abs(ctx_mean - target).sum(0)
        sums["persistence"] += np.abs(pers - target).sum(0)
        n += int(ok.sum())
    if n == 0:
        raise EvaluationError("no window has a valid centre pixel")
    present = [b for k, b in enumerate(cfg.bands) if np.isfinite(sums["model"][k])]
    out: dict[str, Any] = {
        "bands": present,
        "inputs": [b for k, b in enumerate(present) if cfg.bands.index(b) not in hidden],
        "n_windows": n,
        "checkpoint": str(checkpoint),
        "sensor": cfg.sensor,
    }
    keep = [cfg.bands.index(b) for b in present]
    for name, v in sums.items():
        out[name] = dict(zip(present, (v[keep] / n).tolist(), strict=True))
        out[f"{name}_mean"] = float((v[keep] / n).mean())
    return out


def run_reconstruction(
    checkpoint: str | os.PathLike[str],
    cube: xr.Dataset | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    command: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`reconstruction_errors` written as a report folder with a per-band bar chart.

    ``cube`` is a cube in memory or a path :func:`~latentcube.cube.readers.open_cube` reads.
    """
    from matplotlib.figure import Figure

    from latentcube.evaluation.report import write_report
    from latentcube.io import check_output

    check_output(out_dir, [checkpoint, *([] if isinstance(cube, xr.Dataset) else [cube])])
    if not isinstance(cube, xr.Dataset):
        from latentcube.cube.readers import open_cube

        cube = open_cube(cube).load()
    res = reconstruction_errors(checkpoint, cube, seed=seed, **kwargs)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot()
    bands = res["bands"]
    for k, name in enumerate(("model", "context_mean", "persistence")):
        ax.bar(np.arange(len(bands)) + 0.27 * k, [res[name][b] for b in bands], 0.27, label=name)
    ax.set_xticks(np.arange(len(bands)) + 0.27, bands)
    ax.set_ylabel("centre-pixel MAE")
    ax.legend()
    fig_path = out / "figures" / "reconstruction_mae.png"
    fig.savefig(fig_path, dpi=110)
    rows = ["| band | model | context mean | persistence |", "|---|---|---|---|"]
    for b in bands:
        rows.append(
            f"| {b} | {res['model'][b]:.4f} | {res['context_mean'][b]:.4f} | "
            f"{res['persistence'][b]:.4f} |"
        )
    rows.append(
        f"| mean | {res['model_mean']:.4f} | {res['context_mean_mean']:.4f} | "
        f"{res['persistence_mean']:.4f} |"
    )
    body = f"{res['n_windows']} windows with a valid centre pixel.\n\n" + "\n".join(rows)
    write_report(
        out,
        "Centre-pixel reconstruction",
        {"reconstruction": res},
        [("Results", body)],
        figures=[fig_path],
        command=command,
        seed=seed,
    )
    return res
