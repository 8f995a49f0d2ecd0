"""Embedding whole cubes: dense (``fast``/``tiny``) or window by window (``paper``).

Dense path: the spatial features of every date are computed once per block with
the model's unpadded convolutions and shared by every pixel and every window
that uses that date; then, for every centre date, the temporal encoder runs on
each pixel's 11 feature vectors. The result equals window-by-window evaluation
of the same model to float rounding (tested).

Blocks: the cube is cut into (time, y, x) output chunks; each chunk is computed
from its cube block plus a halo of ``window // 2`` pixels and ``n_dates // 2``
dates, so the output does not depend on the chunking (tested, also with chunks
smaller than the context) and memory is bounded by the chunk size.

Edge policy (``edge=``): pixels within ``window // 2`` of the border and the
first/last ``n_dates // 2`` dates have no full context.

* ``"nan"`` (default, the paper's crop kept on the full grid): they are NaN.
* ``"pad"``: their context is completed with invalid pixels (mask False) and,
  beyond the first/last date, with fully invalid dates spaced by the cube's median
  date gap; they are embedded and flagged in the ``padded`` quality layer.

Under both policies every pixel-date whose centre pixel is invalid is NaN.

Quality layers travel with the embedding (as coordinates of the lazy
``DataArray``, as variables in a store): ``valid`` (an embedding exists),
``recon_mae_<sensor>`` (the model's reconstruction of the centre pixel at the
centre date against the input, mean absolute error over bands) and, with
``edge="pad"``, ``padded``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import provenance, select_bands
from latentcube.data.windows import CubeArrays
from latentcube.errors import EmbeddingError
from latentcube.models.autoencoder import ContextAutoencoder
from latentcube.sensors import band_dim

__all__ = [
    "EDGE_POLICIES",
    "embed",
    "embed_block",
    "embed_to_zarr",
    "embed_windows",
    "embedding_dataset",
    "extended_days",
    "open_embedding",
    "progress_dir",
    "quality_layers",
    "write_embedding",
]

EdgePolicy = Literal["nan", "pad"]
EDGE_POLICIES: tuple[str, ...] = ("nan", "pad")
DEFAULT_CHUNKS = {"time": 64, "y": 256, "x": 256}


def _centres(n_t: int, n_dates: int) -> range:
    c = n_dates // 2
    return range(c, n_t - c)


@torch.inference_mode()
def embed_block(
    model: ContextAutoencoder,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    *,
    batch_size: int = 2048,
    with_error: bool = True,
    centres: Sequence[int] | None = None,
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
        Pixels per temporal-encoder call (2048 keeps a batch's activations in cache).
    with_error
        Also return the centre-pixel reconstruction MAE.
    centres
        Increasing indices of the centre dates to embed (default: every date with
        ``n_dates // 2`` dates on either side); the others stay NaN. Callers that
        discard some dates (the ``nan`` edge policy) skip their cost this way.

    Returns
    -------
    tuple
        ``emb`` (latent_dim, T, H - 2h, W - 2h) and ``err`` (T, H - 2h, W - 2h),
        float32, NaN without full context or with an invalid centre.

    Notes
    -----
    Per date, the spatial features and their token projection
    (``model.project``) are computed once for the whole block and kept for the
    ``n_dates`` centre dates that use them; the windows of one centre date share
    their day gaps, so the positional encoding is computed once per date too.
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
    inner_valid = m[:, h : h + oy, h : h + ox].reshape(n_t, -1)
    centre_vals = x[:, :, h : h + oy, h : h + ox].reshape(n_t, x.shape[1], -1)
    c = cfg.n_dates // 2
    cache: dict[int, torch.Tensor] = {}  # date -> (P, d) tokens; at most n_dates kept
    emb_t = torch.from_numpy(emb)
    err_t = torch.from_numpy(err)

    def tokens(k: int) -> torch.Tensor:
        if k not in cache:
            f = model.frame_features(x[k : k + 1], m[k : k + 1])[0]  # (F, oy, ox)
            cache[k] = model.project(f.reshape(f.shape[0], -1).T)
        return cache[k]

    todo: Sequence[int] = _centres(n_t, cfg.n_dates)
    if centres is not None:
        todo = [int(k) for k in centres if k in todo]
    for t in todo:
        for old in [k for k in cache if k < t - c]:
            del cache[old]  # memory is bounded by the context, not by the number of dates
        pix = torch.nonzero(inner_valid[t]).squeeze(1)
        if pix.numel() == 0:
            continue
        ctx = torch.stack([tokens(k) for k in range(t - c, t + c + 1)], dim=1)  # (P, T, d)
        if pix.numel() < ctx.shape[0]:
            ctx = ctx[pix]
        g = torch.from_numpy(np.diff(days[t - c : t + c + 1]).astype(np.int64))[None]
        out = emb_t[:, t].reshape(cfg.latent_dim, -1)
        for s in range(0, pix.numel(), batch_size):
            p = pix[s : s + batch_size]
            z = model.encode_tokens(ctx[s : s + batch_size], g)
            out[:, p] = z.T
            if with_error:
                rec = model.decode_centre(z, g)
                err_t[t].reshape(-1)[p] = (rec - centre_vals[t][:, p].T).abs().mean(dim=1)
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


def _check_edge(edge: str) -> None:
    if edge not in EDGE_POLICIES:
        raise EmbeddingError(f"edge must be one of {EDGE_POLICIES}, got {edge!r}")


def _chunk_sizes(
    chunks: int | Mapping[str, int] | None, sizes: Mapping[str, int]
) -> dict[str, int]:
    """Output chunk sizes along time, y and x (an int sets y and x)."""
    want = dict(DEFAULT_CHUNKS)
    if isinstance(chunks, int):
        want.update(y=chunks, x=chunks)
    elif chunks is not None:
        unknown = set(chunks) - set(want)
        if unknown:
            raise EmbeddingError(f"chunks has unknown dimensions {sorted(unknown)}; use time, y, x")
        want.update(chunks)
    for dim, size in want.items():
        if not isinstance(size, int | np.integer) or size < 1:
            raise EmbeddingError(f"chunk size along {dim} must be a positive integer, got {size!r}")
    return {dim: int(min(size, max(sizes[dim], 1))) for dim, size in want.items()}


def extended_days(days: np.ndarray, pad: int) -> np.ndarray:
    """Day numbers of the dates with ``pad`` invented dates before and after.

    The invented dates continue the series with the median gap (at least one day);
    they only ever carry invalid frames (edge policy ``"pad"``). Index ``k`` of the
    result is date ``k - pad`` of the cube.
    """
    days = np.asarray(days, np.int64)
    gap = max(int(np.median(np.diff(days))), 1) if days.size > 1 else 1
    before = days[0] - gap * np.arange(pad, 0, -1, dtype=np.int64)
    after = days[-1] + gap * np.arange(1, pad + 1, dtype=np.int64)
    return np.concatenate([before, days, after])


def _halo(start: int, stop: int, n: int, h: int) -> tuple[slice, tuple[int, int]]:
    """Slice of ``[start - h, stop + h)`` inside ``[0, n)`` and the padding outside it."""
    lo, hi = start - h, stop + h
    return slice(max(lo, 0), min(hi, n)), (max(0, -lo), max(0, hi - n))


def _incomplete(
    ts: slice, ys: slice, xs: slice, shape: tuple[int, int, int], c: int, h: int
) -> np.ndarray:
    """(t, y, x) True where the context window reaches outside the cube."""
    n_t, ny, nx = shape
    tt, yy, xx = (np.arange(s.start, s.stop) for s in (ts, ys, xs))
    return (
        ((tt < c) | (tt >= n_t - c))[:, None, None]
        | ((yy < h) | (yy >= ny - h))[None, :, None]
        | ((xx < h) | (xx >= nx - h))[None, None, :]
    )


def _embed_region(
    model: ContextAutoencoder,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    pads: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    ts: slice,
    ys: slice,
    xs: slice,
    shape: tuple[int, int, int],
    edge: str,
    batch_size: int | None,
    with_error: bool,
) -> np.ndarray:
    """Embed one output chunk from its cube block (with halo, cut at the cube's border).

    ``data`` (T', C, Y', X') and ``valid`` are the block inside the cube; ``pads``
    the (before, after) padding along time, y and x that completes the halo
    outside the cube; ``days`` the :func:`extended_days` of the padded block.
    Returns (latent_dim + 1, t, y, x) float32: the embedding, then the
    reconstruction error, with the edge policy applied.
    """
    (tb, ta), (yb, ya), (xb, xa) = pads
    data = np.pad(
        np.asarray(data, np.float32), ((tb, ta), (0, 0), (yb, ya), (xb, xa)), constant_values=0.0
    )
    valid = np.pad(np.asarray(valid, bool), ((tb, ta), (yb, ya), (xb, xa)), constant_values=False)
    kw: dict[str, Any] = {"with_error": with_error}
    if batch_size is not None:
        kw["batch_size"] = batch_size
    c, h = model.config.n_dates // 2, model.config.window // 2
    if edge == "nan" and model.supports_dense:
        # dates without a full context in the cube are discarded below: skip their cost
        # (block index of cube date tau is tau - ts.start + c)
        kw["centres"] = [
            tau - ts.start + c for tau in range(ts.start, ts.stop) if c <= tau < shape[0] - c
        ]
    fn = embed_block if model.supports_dense else embed_windows
    emb, err = fn(model, data, valid, days, **kw)
    out = np.concatenate([emb[:, c : emb.shape[1] - c], err[None, c : err.shape[0] - c]])
    if edge == "nan":
        out[:, _incomplete(ts, ys, xs, shape, c, h)] = np.nan
    bar = _BlockProgress.active
    if bar is not None:
        bar.update(int(np.prod(out.shape[1:])))
    return out


def quality_layers(sensor: str, edge: str = "nan", with_error: bool = True) -> tuple[str, ...]:
    """Names of the quality layers stored beside an embedding of ``sensor``."""
    names = ["valid"]
    if with_error:
        names.append(f"recon_mae_{sensor}")
    if edge == "pad":
        names.append("padded")
    return tuple(names)


def embed(
    cube: xr.Dataset,
    model: ContextAutoencoder,
    *,
    sensor: str | None = None,
    chunks: int | Mapping[str, int] | None = None,
    edge: EdgePolicy = "nan",
    batch_size: int | None = None,
    with_error: bool = True,
) -> xr.DataArray:
    """Embed every pixel and date of a cube, lazily.

    Parameters
    ----------
    cube
        A cube in the data model (numpy- or dask-backed); validated for the
        model's bands (layout only; :func:`latentcube.open_cube` checks values).
    model
        A stage-1 autoencoder: dense path when ``supports_dense`` (``fast``,
        ``tiny``), else window by window (``paper``).
    sensor
        Sensor to embed (default: the model's).
    chunks
        Output chunk sizes ``{"time": 64, "y": 256, "x": 256}`` (an int sets y
        and x). Each chunk is one Dask task reading its cube block plus the
        context halo, so memory is bounded by the chunk size; the output does
        not depend on the chunking.
    edge
        ``"nan"`` (default, the paper's crop) or ``"pad"``; see the module docstring.
    batch_size
        Pixels per model call (default 2048 dense, 256 window by window).
    with_error
        Add the centre-pixel reconstruction error layer ``recon_mae_<sensor>``.

    Returns
    -------
    xarray.DataArray
        ``embedding`` (feature, time, y, x) float32, features ``F01``, ``F02``,
        ..., on the cube's grid and time axis with its CRS, backed by Dask
        (nothing is computed until asked). Coordinates ``valid`` (time, y, x),
        ``recon_mae_<sensor>`` and, with ``edge="pad"``, ``padded`` are the
        quality layers. Compute them together (``emb.to_dataset().compute()``
        or :func:`write_embedding`) so that each chunk runs the model once.
    """
    import dask
    import dask.array as da

    _check_edge(edge)
    cfg = model.config
    sensor = sensor or cfg.sensor
    cube = select_bands(cube, {sensor: cfg.bands})
    var = cube[sensor].transpose("time", band_dim(sensor), "y", "x")
    n_t, _, ny, nx = var.shape
    size = _chunk_sizes(chunks, {"time": n_t, "y": ny, "x": nx})
    data, valid = (
        da.asarray(v.data)
        for v in (var, cube[f"{sensor}_valid"].transpose(*var.dims[:1], "y", "x"))
    )
    c, h = cfg.n_dates // 2, cfg.window // 2
    days = extended_days(cube["time"].values.astype("datetime64[D]").astype(np.int64), c)
    model.eval()
    token = uuid.uuid4().hex[:12]
    dmodel = dask.delayed(model, name=f"latentcube-model-{token}", traverse=False)
    task = dask.delayed(_embed_region, pure=False)
    blocks: list[Any] = []
    for it, (t0, t1) in enumerate(_tiles(n_t, size["time"])):
        rows: list[Any] = []
        for iy, (y0, y1) in enumerate(_tiles(ny, size["y"])):
            cols: list[Any] = []
            for ix, (x0, x1) in enumerate(_tiles(nx, size["x"])):
                (tsl, tp), (ysl, yp), (xsl, xp) = (
                    _halo(t0, t1, n_t, c),
                    _halo(y0, y1, ny, h),
                    _halo(x0, x1, nx, h),
                )
                out = task(
                    dmodel,
                    data[tsl, :, ysl, xsl],
                    valid[tsl, ysl, xsl],
                    days[t0 : t1 + 2 * c],
                    (tp, yp, xp),
                    slice(t0, t1),
                    slice(y0, y1),
                    slice(x0, x1),
                    (n_t, ny, nx),
                    edge,
                    batch_size,
                    with_error,
                    dask_key_name=f"latentcube-block-{token}-{it}-{iy}-{ix}",
                )
                shape = (cfg.latent_dim + 1, t1 - t0, y1 - y0, x1 - x0)
                cols.append(da.from_delayed(out, shape, dtype=np.float32))
            rows.append(cols)
        blocks.append(rows)
    stacked = da.block(blocks)
    emb = stacked[: cfg.latent_dim]
    ok = da.isfinite(emb).all(axis=0)
    dims3 = ("time", "y", "x")
    coords: dict[str, Any] = {
        "feature": [f"F{i + 1:02d}" for i in range(cfg.latent_dim)],
        "time": cube["time"].values,
        "y": cube["y"].values,
        "x": cube["x"].values,
        "valid": (
            dims3,
            ok,
            {"long_name": "an embedding exists (full or padded context, valid centre)"},
        ),
    }
    if with_error:
        coords[f"recon_mae_{sensor}"] = (
            dims3,
            stacked[cfg.latent_dim],
            {
                "long_name": f"{sensor} centre-pixel reconstruction error, mean absolute "
                "error over bands at the centre date",
                "units": "1",
            },
        )
    if edge == "pad":
        one = [
            da.from_array(m, chunks=size[d])
            for d, m in zip(
                dims3,
                (
                    (np.arange(n_t) < c) | (np.arange(n_t) >= n_t - c),
                    (np.arange(ny) < h) | (np.arange(ny) >= ny - h),
                    (np.arange(nx) < h) | (np.arange(nx) >= nx - h),
                ),
                strict=True,
            )
        ]
        padded = (one[0][:, None, None] | one[1][None, :, None] | one[2][None, None, :]) & ok
        coords["padded"] = (
            dims3,
            padded,
            {"long_name": "embedded from a padded (incomplete) context"},
        )
    out_da = xr.DataArray(
        emb,
        dims=("feature", *dims3),
        coords=coords,
        name="embedding",
        attrs=provenance(
            f"latentcube embedding of {cube.attrs.get('source', 'a cube')}",
            model_config=cfg.model_dump_json(),
            sensor=sensor,
            edge_policy=edge,
            quality_layers=",".join(quality_layers(sensor, edge, with_error)),
            cube_attribution=cube.attrs.get("attribution", ""),
        ),
    )
    return out_da.rio.write_crs(cube.rio.crs)


def embedding_dataset(emb: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """The storable form of an embedding: ``embedding`` plus the quality layers as variables.

    Accepts the ``DataArray`` of :func:`embed` (quality layers as coordinates) or a
    dataset already in this form (returned unchanged).
    """
    if isinstance(emb, xr.Dataset):
        return emb
    quality = [k for k in emb.coords if k not in emb.dims and k != "spatial_ref"]
    ds = emb.to_dataset(promote_attrs=True).reset_coords([str(k) for k in quality])
    sensor = emb.attrs.get("sensor", "")
    ds["embedding"].attrs = {"long_name": f"{sensor} context-autoencoder latent".strip()}
    return ds.rio.write_crs(emb.rio.crs)


class _BlockProgress:
    """A tqdm bar fed by every chunk computed in this process: chunks and pixel-dates per second.

    Used as a context manager around a local (threaded or synchronous) Dask compute;
    the distributed path (:func:`embed_to_zarr`) has its own bar.
    """

    active: _BlockProgress | None = None

    def __init__(self, total: int, enabled: bool) -> None:
        import threading

        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, unit="chunk", desc="embedding")
        self.lock = threading.Lock()
        self.t0, self.n_pd = time.perf_counter(), 0

    def update(self, pixel_dates: int) -> None:
        with self.lock:
            self.n_pd += pixel_dates
            self.bar.update(1)
            rate = self.n_pd / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(pixel_dates_per_s=f"{rate:.0f}")

    def __enter__(self) -> _BlockProgress:
        _BlockProgress.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        _BlockProgress.active = None
        self.bar.close()


def _n_blocks(ds: xr.Dataset) -> int:
    chunks = ds["embedding"].chunks
    return int(np.prod([len(c) for c in chunks[1:]])) if chunks else 0


def write_embedding(
    emb: xr.DataArray | xr.Dataset,
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    chunk_xy: int = 512,
    progress: bool = False,
    compute: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write an embedding as Zarr v3 (atomic), the quality layers beside it.

    Parameters
    ----------
    emb
        Output of :func:`embed` (lazy; computed here, chunk by chunk) or
        :func:`embedding_dataset`.
    path
        Target store.
    dtype
        ``float32`` or ``float16`` storage of the embedding and the error layer.
    overwrite
        Replace an existing store.
    chunk_xy
        Spatial chunk side of the store for in-memory input; Dask-backed input
        keeps its spatial chunks. Store chunks are (feature, 1, y, x).
    progress
        Show a progress bar (chunks done, pixel-dates per second).
    compute
        ``False`` writes the metadata only (a template for region writes).
    attrs
        Extra attributes of the store.
    """
    from latentcube.io import write_zarr

    if dtype not in ("float32", "float16"):
        raise EmbeddingError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    ds = embedding_dataset(emb)
    if attrs:
        ds = ds.assign_attrs(dict(attrs))
    chunks = ds["embedding"].chunks
    if chunks:
        cy, cx = chunks[2][0], chunks[3][0]
    else:
        cy, cx = min(chunk_xy, ds.sizes["y"]), min(chunk_xy, ds.sizes["x"])
    enc: dict[str, dict[str, Any]] = {
        "embedding": {
            "dtype": dtype,
            "chunks": (ds.sizes["feature"], 1, cy, cx),
            "_FillValue": np.nan,
        }
    }
    for name in ds.data_vars:
        if name == "embedding":
            continue
        enc[str(name)] = {"chunks": (1, cy, cx)}
        if ds[name].dtype.kind == "f":
            enc[str(name)].update(dtype=dtype, _FillValue=np.nan)
    if not compute or not chunks:
        return write_zarr(ds, path, overwrite=overwrite, encoding=enc, compute=compute)
    with _BlockProgress(_n_blocks(ds), progress):
        return write_zarr(ds, path, overwrite=overwrite, encoding=enc)


def open_embedding(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open an embedding store with its CRS; floating layers as float32."""
    from latentcube.io import open_zarr

    ds = open_zarr(path)
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f" and ds[v].dtype != np.float32:
            enc = ds[v].encoding
            ds[v] = ds[v].astype(np.float32)
            ds[v].encoding = enc
    return ds


# --------------------------------------------------------------------------------------
# Large areas: one Dask task per output chunk, written in place, resumable.


def progress_dir(out: str | os.PathLike[str]) -> Path:
    """Folder of the per-chunk completion markers of an unfinished store (beside it)."""
    out = Path(out)
    return out.with_name(f".{out.name}.progress")


@functools.lru_cache(maxsize=4)
def _worker_model(path: str, digest: str) -> Any:
    """The model (stage-1 autoencoder or fused bundle), loaded once per worker process.

    Keyed by the file's SHA-256 (``digest``, from the driver) as well as its path,
    so a worker of a long-lived cluster loads a checkpoint replaced at the same
    path afresh instead of reusing the old weights.
    """
    from latentcube.bundle import load_any

    torch.set_num_threads(1)
    return load_any(path)[0]


@functools.lru_cache(maxsize=4)
def _worker_cube(
    path: str, fingerprint: str, bands: tuple[tuple[str, tuple[str, ...]], ...]
) -> xr.Dataset:
    """The cube with the bands a job needs, opened once per worker process.

    Keyed by :func:`cube_fingerprint` (from the driver) as well as the path, so a
    cube rebuilt at the same path is opened again, not read through stale metadata.

    A Zarr store is opened without Dask (lazily indexed arrays), so a task reads
    only the store chunks its block touches, in the task itself. The driver has
    validated the values already; workers check the layout only.
    """
    from latentcube.cube.readers import open_cube
    from latentcube.io import open_zarr

    p = Path(path)
    if p.suffix == ".zip" or (p / "zarr.json").exists():
        cube = open_zarr(p, chunks=None)
    else:
        cube = open_cube(p, check_values=False)
    return select_bands(cube, dict(bands))


class EmbedJob(Protocol):
    """What one :func:`embed_to_zarr` run computes per output chunk, beside the shared machinery.

    The machinery (one Dask task per chunk, halo reads, in-place writes, markers,
    resume, progress) is the same for every model; a job says which bands the
    tasks read, what a chunk's layers are and what the store looks like.
    Implementations: :class:`SensorJob` (a stage-1 autoencoder) and
    :class:`latentcube.fusion_inference.FusedJob` (a fused bundle).
    """

    @property
    def bands(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(sensor, bands) the tasks read from the cube."""
        ...

    def identity(self) -> dict[str, Any]:
        """Options that make two runs' stores differ (beyond model, cube, chunks, dtype)."""
        ...

    def layers(
        self, model: Any, cube: xr.Dataset, ts: slice, ys: slice, xs: slice
    ) -> dict[str, np.ndarray]:
        """Every layer of the output chunk ``(ts, ys, xs)``, read from the lazy ``cube``."""
        ...

    def template(self, cube: xr.Dataset, model: Any, sizes: Mapping[str, int]) -> xr.Dataset:
        """A lazy dataset with the store's variables, chunks ``sizes`` and metadata."""
        ...


@dataclasses.dataclass(frozen=True)
class SensorJob:
    """An :class:`EmbedJob` for a dense stage-1 autoencoder of one sensor."""

    sensor: str
    bands: tuple[tuple[str, tuple[str, ...]], ...]
    edge: str = "nan"
    batch_size: int | None = None

    def identity(self) -> dict[str, Any]:
        return {"edge": self.edge}

    def layers(
        self, model: Any, cube: xr.Dataset, ts: slice, ys: slice, xs: slice
    ) -> dict[str, np.ndarray]:
        cfg = model.config
        days = cube["time"].values.astype("datetime64[D]").astype(np.int64)
        c, h = cfg.n_dates // 2, cfg.window // 2
        n_t, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
        (tsl, tp), (ysl, yp), (xsl, xp) = (
            _halo(ts.start, ts.stop, n_t, c),
            _halo(ys.start, ys.stop, ny, h),
            _halo(xs.start, xs.stop, nx, h),
        )
        sub = cube.isel(time=tsl, y=ysl, x=xsl)
        arr = CubeArrays.from_cube(sub, self.sensor)
        out = _embed_region(
            model,
            arr.data,
            arr.valid,
            extended_days(days, c)[ts.start : ts.stop + 2 * c],
            (tp, yp, xp),
            ts,
            ys,
            xs,
            (n_t, ny, nx),
            self.edge,
            self.batch_size,
            True,
        )
        emb, err = out[:-1], out[-1]
        ok = np.isfinite(emb).all(axis=0)
        layers = {"embedding": emb, "valid": ok, f"recon_mae_{self.sensor}": err}
        if self.edge == "pad":
            layers["padded"] = _incomplete(ts, ys, xs, (n_t, ny, nx), c, h) & ok
        return layers

    def template(self, cube: xr.Dataset, model: Any, sizes: Mapping[str, int]) -> xr.Dataset:
        lazy = embed(cube, model, sensor=self.sensor, chunks=sizes, edge=self.edge)  # type: ignore[arg-type]
        return embedding_dataset(lazy)


def _embed_chunk(
    model_path: str,
    model_digest: str,
    cube_path: str,
    cube_print: str,
    out_path: str,
    job: EmbedJob,
    ts: slice,
    ys: slice,
    xs: slice,
    key: str,
) -> int:
    """Embed one output chunk, write it into the store, then mark it done.

    Returns the number of pixel-dates of the chunk. The marker is written after the
    data, so a chunk interrupted half way is recomputed and rewritten by the next
    run; a chunk that already has a marker (a task rerun after a lost worker) is
    not computed again.
    """
    import zarr

    marker = progress_dir(out_path) / key
    if marker.exists():
        return int(marker.read_text())
    model = _worker_model(model_path, model_digest)
    layers = job.layers(model, _worker_cube(cube_path, cube_print, job.bands), ts, ys, xs)
    for name, values in layers.items():
        arr_z = zarr.open_array(Path(out_path) / name, mode="r+", zarr_format=3)
        region = (slice(None),) * (values.ndim - 3) + (ts, ys, xs)
        arr_z[region] = values.astype(arr_z.dtype)
    n = int(layers["valid"].size)
    marker.write_text(str(n))
    return n


def _file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cube_fingerprint(path: str | os.PathLike[str]) -> str:
    """A digest that changes when the cube at ``path`` is replaced by another one.

    For a Zarr store: the SHA-256 of the ``zarr.json`` of its root group and of each
    array in it (a cube is one flat group): shapes, chunks, coordinates' metadata
    and the cube's attributes, which hold the build request, the item ids and the
    creation time. So a store replaced by another build, even of the same request,
    has another fingerprint, while reading or embedding it leaves its fingerprint
    unchanged. For other inputs (a ``.zip`` store, a folder of per-date files): the
    SHA-256 of every file's relative path, size and modification time.
    """
    root = Path(path)
    h = hashlib.sha256()
    if root.is_dir() and (root / "zarr.json").exists():
        # the metadata files only: a walk of the whole store would visit every chunk file
        for meta in [root / "zarr.json", *sorted(root.glob("*/zarr.json"))]:
            h.update(meta.relative_to(root).as_posix().encode())
            h.update(meta.read_bytes())
        return h.hexdigest()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for f in files:
        st = f.stat()
        name = f.relative_to(root) if root.is_dir() else f.name
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def embed_to_zarr(
    cube_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    chunk: int = 256,
    time_chunk: int = 64,
    dtype: str = "float32",
    edge: EdgePolicy = "nan",
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    hide: Sequence[str] = (),
    loaded: Any | None = None,
) -> Path:
    """Embed a cube of any size into a Zarr store with Dask, chunk by chunk, resumable.

    The model is a dense stage-1 autoencoder (``fast``/``tiny``) or a fused bundle
    (all its sensors, e.g. the shipped default model). Each task reads one output
    chunk of the cube plus its context halo (7 pixels, 5 dates; for a fused
    bundle the widest sensor window and every sensor's context on its own dates,
    see :func:`latentcube.fusion_inference.fused_chunk`), embeds it with the dense
    path and writes it into the store in place
    (the store's chunk files are (feature, 1, chunk, chunk) and every one of them
    belongs to exactly one task; Zarr writes each file to a temporary name and
    renames it), then leaves a marker. A run that is killed is resumed by calling
    this function again: chunks with a marker are skipped, the others are
    (re)computed; the result does not depend on the chunking (tested) and the
    store equals that of an uninterrupted run byte for byte (tested). A worker
    that dies costs only the chunks it was computing: the scheduler reruns them
    elsewhere and finished chunks are not recomputed.

    Parameters
    ----------
    cube_path
        A cube :func:`latentcube.open_cube` can open lazily (a Zarr store).
    model_path
        A checkpoint of a dense (``fast``/``tiny``) model, or a fused bundle (file
        or folder). A fused store holds ``embedding``, ``valid``, ``sensors`` (bit
        mask of the contributing sensors) and ``recon_mae``.
    out
        The output store (directory).
    chunk, time_chunk
        Output chunk side in pixels and in dates; worker memory is bounded by
        ``(time_chunk + 10) x bands x (chunk + 14)^2`` input values plus 11 dates
        of features, whatever the area and the number of dates.
    dtype
        ``float32`` or ``float16`` storage.
    edge
        Edge policy, ``"nan"`` (default) or ``"pad"`` (see the module docstring;
        fused bundles: ``"nan"`` only).
    scheduler
        Address of a running Dask scheduler; default a new ``LocalCluster``.
    workers, threads_per_worker, processes
        Size of the local cluster (default: one single-threaded worker process
        per core).
    batch_size
        Pixels per model call.
    overwrite
        Replace a complete store at ``out``.
    progress
        Show a progress bar with chunks done and pixel-dates per second.
    hide
        Fused bundles: sensors to leave out on purpose (e.g. ``("s2",)``).
    loaded
        The model already loaded from ``model_path`` (the file is then not
        deserialised again here; workers load their own copy).

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from latentcube.bundle import load_any, resolve_bundle
    from latentcube.cube.readers import open_cube
    from latentcube.fusion_inference import FusedJob
    from latentcube.io import open_zarr
    from latentcube.models.fusion import FusionModel

    _check_edge(edge)
    if dtype not in ("float32", "float16"):
        raise EmbeddingError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    model_path = resolve_bundle(model_path)
    model = loaded if loaded is not None else load_any(model_path)[0]
    cube = open_cube(cube_path)
    job: EmbedJob
    if isinstance(model, FusionModel):
        if edge != "nan":
            raise EmbeddingError(
                f"fused models embed with the 'nan' edge policy only, got edge={edge!r}"
            )
        try:
            job = FusedJob.plan(cube, model, hide=hide, batch_size=batch_size)
        except ValueError as err:
            raise EmbeddingError(str(err)) from err
    else:
        if hide:
            raise EmbeddingError(
                f"hide={list(hide)} needs a fused model; {model_path} is a "
                f"{model.config.sensor!r} autoencoder"
            )
        if not model.supports_dense:
            raise EmbeddingError(
                f"embed_to_zarr needs a dense model (fast/tiny); {model_path} is "
                f"{model.config.variant!r}: use latentcube.embed for window-by-window inference"
            )
        cfg = model.config
        job = SensorJob(cfg.sensor, ((cfg.sensor, cfg.bands),), edge, batch_size)
    out = Path(out)
    model_digest, cube_print = _file_digest(model_path), cube_fingerprint(cube_path)
    identity = json.dumps(
        {
            "model_sha256": model_digest,
            "cube": str(Path(cube_path).resolve()),
            "cube_fingerprint": cube_print,
            "chunk": chunk,
            "time_chunk": time_chunk,
            "dtype": dtype,
            **job.identity(),
        },
        sort_keys=True,
    )
    if out.exists():
        try:
            existing = open_zarr(out)
        except Exception as err:
            raise EmbeddingError(f"{out} exists and is not an embedding store: {err}") from err
        if not progress_dir(out).exists():
            if not overwrite:
                raise FileExistsError(
                    f"{out} exists and is a complete embedding store; pass overwrite=True"
                )
            shutil.rmtree(out)
        elif existing.attrs.get("latentcube_identity") != identity:
            raise EmbeddingError(
                f"{out} holds an unfinished run of another model, cube, chunking, dtype, "
                "edge policy or hidden sensors; remove it or choose another output"
            )
    sizes = _chunk_sizes(
        {"time": time_chunk, "y": chunk, "x": chunk},
        {str(k): int(v) for k, v in cube.sizes.items()},
    )
    if not out.exists():
        template = job.template(cube, model, sizes)
        if progress_dir(out).exists():  # markers of a store that was removed
            shutil.rmtree(progress_dir(out))
        write_embedding(
            template, out, dtype=dtype, compute=False, attrs={"latentcube_identity": identity}
        )
        progress_dir(out).mkdir()
    done = {p.name for p in progress_dir(out).iterdir()}
    n_t, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
    tasks = [
        (f"{it}_{iy}_{ix}", slice(t0, t1), slice(y0, y1), slice(x0, x1))
        for it, (t0, t1) in enumerate(_tiles(n_t, sizes["time"]))
        for iy, (y0, y1) in enumerate(_tiles(ny, sizes["y"]))
        for ix, (x0, x1) in enumerate(_tiles(nx, sizes["x"]))
    ]
    todo = [t for t in tasks if t[0] not in done]
    if todo:
        cluster = None
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=threads_per_worker,
                processes=processes,
                dashboard_address=None,
            )
        client = Client(scheduler or cluster)
        try:
            pending = as_completed(
                client.submit(
                    _embed_chunk,
                    str(Path(model_path).resolve()),
                    model_digest,
                    str(Path(cube_path).resolve()),
                    cube_print,
                    str(out.resolve()),
                    job,
                    ts,
                    ys,
                    xs,
                    key,
                    key=f"latentcube-embed-{key}",
                    pure=False,
                )
                for key, ts, ys, xs in todo
            )
            t0, n_pd = time.perf_counter(), 0
            bar = tqdm(
                total=len(tasks),
                initial=len(tasks) - len(todo),
                disable=not progress,
                unit="chunk",
                desc="embedding",
            )
            for fut in pending:
                n_pd += fut.result()
                fut.release()  # results are not kept on the workers
                bar.update(1)
                bar.set_postfix(pixel_dates_per_s=f"{n_pd / (time.perf_counter() - t0):.0f}")
            bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    shutil.rmtree(progress_dir(out))
    return out
