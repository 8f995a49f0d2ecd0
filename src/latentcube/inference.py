"""Embedding whole cubes: dense (``fast``/``tiny``) or window by window (``paper``).

Dense path: the spatial features of every date are computed once per tile with
the model's unpadded convolutions and shared by every pixel and every window
that uses that date; then, for every centre date with a full temporal context,
the temporal encoder runs on each pixel's 11 feature vectors. The result equals
window-by-window evaluation of the same model to float rounding (tested).

Tiling: the cube is processed in (y, x) tiles carrying a halo of ``window // 2``
pixels, so the output does not depend on the tiling (tested) and memory is
bounded by the tile size.

Edge policy (``edge="nan"``, the paper's crop kept on the full grid): pixels
within ``window // 2`` of the border and the first/last ``n_dates // 2`` dates
have no full context and are NaN; so is every pixel-date whose centre pixel is
not valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import provenance, select_bands
from latentcube.data.windows import CubeArrays
from latentcube.models.autoencoder import ContextAutoencoder

__all__ = ["embed", "embed_block", "embed_windows", "open_embedding", "write_embedding"]


def _centres(n_t: int, n_dates: int) -> range:
    c = n_dates // 2
    return range(c, n_t - c)


@torch.no_grad()
def embed_block(
    model: ContextAutoencoder,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    *,
    batch_size: int = 8192,
    with_error: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense embedding of one block that carries a halo of ``window // 2`` pixels.

    Parameters
    ----------
    model
        A model with ``supports_dense``.
    data
        (T, C, H, W) float32, anything where ``valid`` is False.
    valid
        (T, H, W) bool.
    days
        (T,) int day numbers of the dates.
    batch_size
        Pixels per temporal-encoder call.
    with_error
        Also return the centre-pixel reconstruction MAE.

    Returns
    -------
    tuple
        ``emb`` (latent_dim, T, H - 2h, W - 2h) and ``err`` (T, H - 2h, W - 2h),
        float32, NaN without full context or with an invalid centre.
    """
    if not model.supports_dense:
        raise ValueError(f"the {model.config.variant!r} model has no dense path; use embed_windows")
    cfg = model.config
    model.eval()
    h = cfg.window // 2
    n_t, _, ny, nx = data.shape
    oy, ox = ny - 2 * h, nx - 2 * h
    emb = np.full((cfg.latent_dim, n_t, max(oy, 0), max(ox, 0)), np.nan, np.float32)
    err = np.full((n_t, max(oy, 0), max(ox, 0)), np.nan, np.float32)
    if oy <= 0 or ox <= 0 or n_t < cfg.n_dates:
        return emb, err
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    m = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))
    feats = torch.cat([model.frame_features(x[i : i + 4], m[i : i + 4]) for i in range(0, n_t, 4)])
    feats = feats.permute(2, 3, 0, 1).reshape(oy * ox, n_t, -1)  # (P, T, F)
    inner_valid = m[:, h : h + oy, h : h + ox].reshape(n_t, -1)
    centre_vals = x[:, :, h : h + oy, h : h + ox].reshape(n_t, x.shape[1], -1)
    c = cfg.n_dates // 2
    for t in _centres(n_t, cfg.n_dates):
        pix = torch.nonzero(inner_valid[t]).squeeze(1)
        if pix.numel() == 0:
            continue
        gaps = torch.from_numpy(np.diff(days[t - c : t + c + 1]).astype(np.int64))
        for s in range(0, pix.numel(), batch_size):
            p = pix[s : s + batch_size]
            g = gaps.expand(len(p), -1)
            z = model.encode_features(feats[p, t - c : t + c + 1], g)
            emb[:, t].reshape(cfg.latent_dim, -1)[:, p.numpy()] = z.T.numpy()
            if with_error:
                rec = model.decode_centre(z, g)
                e = (rec - centre_vals[t][:, p].T).abs().mean(dim=1)
                err[t].reshape(-1)[p.numpy()] = e.numpy()
    return emb, err


@torch.no_grad()
def embed_windows(
    model: ContextAutoencoder,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    *,
    batch_size: int = 256,
    with_error: bool = True,
    pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Window-by-window embedding of a block with halo (the reference, and the ``paper`` path).

    Same inputs and outputs as :func:`embed_block`; every pixel-date's 11 x 15 x 15
    window is cut out and passed to ``model.encode``. ``pixels`` optionally
    restricts the work to (t, iy, ix) triples in output coordinates.
    """
    cfg = model.config
    model.eval()
    h, c, w = cfg.window // 2, cfg.n_dates // 2, cfg.window
    n_t, n_c, ny, nx = data.shape
    oy, ox = ny - 2 * h, nx - 2 * h
    emb = np.full((cfg.latent_dim, n_t, max(oy, 0), max(ox, 0)), np.nan, np.float32)
    err = np.full((n_t, max(oy, 0), max(ox, 0)), np.nan, np.float32)
    if oy <= 0 or ox <= 0 or n_t < cfg.n_dates:
        return emb, err
    if pixels is None:
        tt, yy, xx = np.meshgrid(np.arange(c, n_t - c), np.arange(oy), np.arange(ox), indexing="ij")
        pixels = np.stack([tt.ravel(), yy.ravel(), xx.ravel()], 1)
    pixels = np.asarray(pixels)
    keep = valid[pixels[:, 0], pixels[:, 1] + h, pixels[:, 2] + h]
    keep &= (pixels[:, 0] >= c) & (pixels[:, 0] < n_t - c)
    pixels = pixels[keep]
    off_t, off = np.arange(-c, c + 1), np.arange(w)
    for s in range(0, len(pixels), batch_size):
        p = pixels[s : s + batch_size]
        ti = (p[:, 0:1] + off_t)[:, :, None, None]
        yi = (p[:, 1:2] + off)[:, None, :, None]
        xi = (p[:, 2:3] + off)[:, None, None, :]
        xw = data[
            ti[:, :, None],
            np.arange(n_c)[None, None, :, None, None],
            yi[:, :, None],
            xi[:, :, None],
        ]
        mw = valid[ti, yi, xi]
        gaps = np.diff(days[p[:, 0:1] + off_t], axis=1).astype(np.int64)
        xt, mt, gt = torch.from_numpy(xw), torch.from_numpy(mw), torch.from_numpy(gaps)
        z = model.encode(xt, mt, gt)
        emb[:, p[:, 0], p[:, 1], p[:, 2]] = z.T.numpy()
        if with_error:
            rec = model.decode_centre(z, gt)
            e = (rec - torch.from_numpy(xw[:, c, :, h, h])).abs().mean(dim=1)
            err[p[:, 0], p[:, 1], p[:, 2]] = e.numpy()
    return emb, err


def _tiles(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def embed(
    cube: xr.Dataset,
    model: ContextAutoencoder,
    *,
    sensor: str | None = None,
    tile: int = 256,
    batch_size: int = 8192,
    with_error: bool = True,
    progress: bool = False,
) -> xr.Dataset:
    """Embed every pixel and date of a cube.

    Parameters
    ----------
    cube
        A cube in the data model; it is validated for the model's bands.
    model
        A stage-1 autoencoder (dense path when ``supports_dense``, else window
        by window).
    sensor
        Sensor to embed (default: the model's).
    tile
        Output tile side in pixels; memory is bounded by the tile plus its halo.
    batch_size
        Pixels per model call.
    with_error
        Add ``recon_mae``, the centre-pixel reconstruction error.
    progress
        Show a progress bar over tiles.

    Returns
    -------
    xarray.Dataset
        ``embedding`` (feature, time, y, x) float32 with features ``F01``...,
        ``valid`` (time, y, x) and ``recon_mae`` (time, y, x), on the cube's
        grid with its CRS; NaN where there is no full context (edge policy in
        the module docstring).
    """
    from tqdm.auto import tqdm

    cfg = model.config
    sensor = sensor or cfg.sensor
    cube = select_bands(cube, {sensor: cfg.bands})
    arr = CubeArrays.from_cube(cube, sensor)
    h = cfg.window // 2
    n_t, _, ny, nx = arr.data.shape
    emb = np.full((cfg.latent_dim, n_t, ny, nx), np.nan, np.float32)
    err = np.full((n_t, ny, nx), np.nan, np.float32)
    fn = embed_block if model.supports_dense else embed_windows
    tiles = [(y, x) for y in _tiles(ny - 2 * h, tile) for x in _tiles(nx - 2 * h, tile)]
    for (y0, y1), (x0, x1) in tqdm(tiles, disable=not progress, desc="tiles"):
        sl = (slice(y0, y1 + 2 * h), slice(x0, x1 + 2 * h))
        e, r = fn(
            model,
            arr.data[:, :, sl[0], sl[1]],
            arr.valid[:, sl[0], sl[1]],
            arr.days,
            batch_size=batch_size,
            with_error=with_error,
        )
        emb[:, :, y0 + h : y1 + h, x0 + h : x1 + h] = e
        err[:, y0 + h : y1 + h, x0 + h : x1 + h] = r
    names = [f"F{i + 1:02d}" for i in range(cfg.latent_dim)]
    ds = xr.Dataset(
        {
            "embedding": (("feature", "time", "y", "x"), emb),
            "valid": (("time", "y", "x"), np.isfinite(emb).all(axis=0)),
        },
        coords={
            "feature": names,
            "time": cube["time"].values,
            "y": cube["y"].values,
            "x": cube["x"].values,
        },
        attrs=provenance(
            f"latentcube embedding of {cube.attrs.get('source', 'a cube')}",
            model_config=cfg.model_dump_json(),
            sensor=sensor,
            edge_policy="nan: no full context (border, first/last dates) or invalid centre",
            cube_attribution=cube.attrs.get("attribution", ""),
        ),
    )
    if with_error:
        ds["recon_mae"] = (("time", "y", "x"), err)
        ds["recon_mae"].attrs["long_name"] = "centre-pixel reconstruction MAE (band mean)"
    ds["embedding"].attrs["long_name"] = f"{sensor} context-autoencoder latent"
    return ds.rio.write_crs(cube.rio.crs)


def write_embedding(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    chunk_xy: int = 512,
) -> Path:
    """Write an embedding dataset as Zarr v3 (atomic), chunked (feature, 1, y, x).

    Parameters
    ----------
    ds
        Output of :func:`embed`.
    path
        Target store.
    dtype
        ``float32`` or ``float16`` storage of the embedding.
    overwrite
        Replace an existing store.
    chunk_xy
        Spatial chunk side.
    """
    from latentcube.io import write_zarr

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    cy, cx = min(chunk_xy, ds.sizes["y"]), min(chunk_xy, ds.sizes["x"])
    enc: dict[str, dict[str, Any]] = {
        "embedding": {"dtype": dtype, "chunks": (ds.sizes["feature"], 1, cy, cx)},
        "valid": {"chunks": (1, cy, cx)},
    }
    if "recon_mae" in ds:
        enc["recon_mae"] = {"dtype": dtype, "chunks": (1, cy, cx)}
    return write_zarr(ds, path, overwrite=overwrite, encoding=enc)


def open_embedding(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open an embedding store with its CRS; the embedding as float32."""
    from latentcube.io import open_zarr

    ds = open_zarr(path)
    for v in ("embedding", "recon_mae"):
        if v in ds and ds[v].dtype != np.float32:
            ds[v] = ds[v].astype(np.float32)
    return ds
