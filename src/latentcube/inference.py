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

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import provenance, select_bands
from latentcube.data.windows import CubeArrays
from latentcube.models.autoencoder import ContextAutoencoder
from latentcube.sensors import band_dim

__all__ = [
    "embed",
    "embed_block",
    "embed_to_zarr",
    "embed_windows",
    "open_embedding",
    "progress_dir",
    "write_embedding",
]


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
    inner_valid = m[:, h : h + oy, h : h + ox].reshape(n_t, -1)
    centre_vals = x[:, :, h : h + oy, h : h + ox].reshape(n_t, x.shape[1], -1)
    c = cfg.n_dates // 2
    cache: dict[int, torch.Tensor] = {}  # date -> (P, F) features; at most n_dates kept

    def features(k: int) -> torch.Tensor:
        if k not in cache:
            f = model.frame_features(x[k : k + 1], m[k : k + 1])[0]  # (F, oy, ox)
            cache[k] = f.reshape(f.shape[0], -1).T.contiguous()
        return cache[k]

    for t in _centres(n_t, cfg.n_dates):
        for old in [k for k in cache if k < t - c]:
            del cache[old]  # memory is bounded by the context, not by the number of dates
        pix = torch.nonzero(inner_valid[t]).squeeze(1)
        if pix.numel() == 0:
            continue
        ctx = torch.stack([features(k) for k in range(t - c, t + c + 1)], dim=1)  # (P, T, F)
        gaps = torch.from_numpy(np.diff(days[t - c : t + c + 1]).astype(np.int64))
        for s in range(0, pix.numel(), batch_size):
            p = pix[s : s + batch_size]
            g = gaps.expand(len(p), -1)
            z = model.encode_features(ctx[p], g)
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


def _embedding_dataset(
    cube: xr.Dataset,
    cfg: Any,
    sensor: str,
    emb: Any,
    valid: Any,
    err: Any | None,
    **attrs: Any,
) -> xr.Dataset:
    """The embedding product on the cube's grid: variables, coordinates, CRS, provenance."""
    data_vars: dict[str, Any] = {
        "embedding": (("feature", "time", "y", "x"), emb),
        "valid": (("time", "y", "x"), valid),
    }
    if err is not None:
        data_vars["recon_mae"] = (("time", "y", "x"), err)
    ds = xr.Dataset(
        data_vars,
        coords={
            "feature": [f"F{i + 1:02d}" for i in range(cfg.latent_dim)],
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
            **attrs,
        ),
    )
    ds["embedding"].attrs["long_name"] = f"{sensor} context-autoencoder latent"
    if err is not None:
        ds["recon_mae"].attrs["long_name"] = "centre-pixel reconstruction MAE (band mean)"
    return ds.rio.write_crs(cube.rio.crs)


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
    return _embedding_dataset(
        cube, cfg, sensor, emb, np.isfinite(emb).all(axis=0), err if with_error else None
    )


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


# --------------------------------------------------------------------------------------
# Large areas: one Dask task per output chunk, written in place, resumable.


def progress_dir(out: str | os.PathLike[str]) -> Path:
    """Folder of the per-chunk completion markers of an unfinished store (beside it)."""
    out = Path(out)
    return out.with_name(f".{out.name}.progress")


@functools.lru_cache(maxsize=4)
def _worker_model(path: str) -> ContextAutoencoder:
    """The model, loaded once per worker process."""
    from latentcube.bundle import load_checkpoint

    torch.set_num_threads(1)
    return load_checkpoint(path)[0]


@functools.lru_cache(maxsize=4)
def _worker_cube(path: str) -> xr.Dataset:
    """The cube, opened lazily once per worker process (reads happen per block).

    The driver has validated the values already; workers check the layout only.
    """
    from latentcube.cube.readers import open_cube

    return open_cube(path, check_values=False)


def _read_block(
    cube: xr.Dataset, sensor: str, bands: tuple[str, ...], ys: slice, xs: slice, h: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Data and mask of output rows ``ys`` / columns ``xs`` plus a halo of ``h`` pixels.

    The halo is read from the cube where it exists and padded as invalid outside.
    """
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    y0, y1 = max(ys.start - h, 0), min(ys.stop + h, ny)
    x0, x1 = max(xs.start - h, 0), min(xs.stop + h, nx)
    sub = cube.isel(y=slice(y0, y1), x=slice(x0, x1))
    sub = sub.sel({band_dim(sensor): list(bands)})
    arr = CubeArrays.from_cube(sub, sensor)
    pad = ((h - (ys.start - y0), h - (y1 - ys.stop)), (h - (xs.start - x0), h - (x1 - xs.stop)))
    data = np.pad(arr.data, ((0, 0), (0, 0), *pad), constant_values=np.nan)
    valid = np.pad(arr.valid, ((0, 0), *pad), constant_values=False)
    return data, valid, arr.days


def _embed_chunk(
    model_path: str,
    cube_path: str,
    out_path: str,
    sensor: str,
    ys: slice,
    xs: slice,
    key: str,
    batch_size: int,
) -> int:
    """Embed one output chunk, write it into the store, then mark it done.

    The marker is written after the data, so a chunk interrupted half way is
    simply recomputed and rewritten by the next run.
    """
    import zarr

    model = _worker_model(model_path)
    cube = _worker_cube(cube_path)
    h = model.config.window // 2
    data, valid, days = _read_block(cube, sensor, model.config.bands, ys, xs, h)
    emb, err = embed_block(model, data, valid, days, batch_size=batch_size)
    # edge policy: no full context within h pixels of the cube border (the padding
    # above only keeps the block shape; it is not data)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    yy = np.arange(ys.start, ys.stop)
    xx = np.arange(xs.start, xs.stop)
    edge = ((yy < h) | (yy >= ny - h))[:, None] | ((xx < h) | (xx >= nx - h))[None, :]
    emb[:, :, edge] = np.nan
    err[:, edge] = np.nan
    ok = np.isfinite(emb).all(axis=0)
    for name, values in (("embedding", emb), ("recon_mae", err), ("valid", ok)):
        arr = zarr.open_array(Path(out_path) / name, mode="r+", zarr_format=3)
        region = (slice(None),) * (values.ndim - 2) + (ys, xs)
        arr[region] = values.astype(arr.dtype)
    marker = progress_dir(out_path) / key
    marker.write_text("done")
    return int(ok.sum())


def _file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embed_to_zarr(
    cube_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    chunk: int = 256,
    dtype: str = "float32",
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    batch_size: int = 8192,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Embed a cube of any size into a Zarr store with Dask, chunk by chunk, resumable.

    Each task reads one output chunk of the cube plus its 7-pixel halo, embeds it
    with the dense path and writes it into the store in place (the chunk grid
    of the store equals the task grid, so every chunk is written by exactly one
    task), then leaves a marker. A run that is killed is resumed by calling
    this function again: chunks with a marker are skipped, the others are
    (re)computed; the result does not depend on the chunking (tested) and the
    chunk files equal those of an uninterrupted run byte for byte.

    Parameters
    ----------
    cube_path
        A cube :func:`latentcube.open_cube` can open lazily (a Zarr store).
    model_path
        A checkpoint of a dense (``fast``/``tiny``) model.
    out
        The output store (directory).
    chunk
        Output chunk side in pixels; worker memory is bounded by
        ``dates x bands x (chunk + 14)^2`` values plus 11 dates of features.
    dtype
        ``float32`` or ``float16`` storage.
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

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from latentcube.bundle import load_checkpoint
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.io import open_zarr, write_zarr

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    model, _meta = load_checkpoint(model_path)
    if not model.supports_dense:
        raise LatentcubeError(
            f"embed_to_zarr needs a dense model (fast/tiny); {model_path} is "
            f"{model.config.variant!r}: use latentcube.embed for window-by-window inference"
        )
    cfg = model.config
    cube = select_bands(open_cube(cube_path), {cfg.sensor: cfg.bands})
    out = Path(out)
    identity = json.dumps(
        {
            "model_sha256": _file_digest(model_path),
            "cube": str(Path(cube_path).resolve()),
            "chunk": chunk,
            "dtype": dtype,
        },
        sort_keys=True,
    )
    if out.exists():
        try:
            existing = open_zarr(out)
        except Exception as err:
            raise LatentcubeError(f"{out} exists and is not an embedding store: {err}") from err
        if not progress_dir(out).exists():
            if not overwrite:
                raise FileExistsError(
                    f"{out} exists and is a complete embedding store; pass overwrite=True"
                )
            shutil.rmtree(out)
        elif existing.attrs.get("latentcube_identity") != identity:
            raise LatentcubeError(
                f"{out} holds an unfinished run of another model, cube, chunking or dtype; "
                "remove it or choose another output"
            )
    ny, nx, n_t = cube.sizes["y"], cube.sizes["x"], cube.sizes["time"]
    if not out.exists():
        import dask.array as dsa

        cy, cx = min(chunk, ny), min(chunk, nx)
        template = _embedding_dataset(
            cube,
            cfg,
            cfg.sensor,
            dsa.full(
                (cfg.latent_dim, n_t, ny, nx),
                np.nan,
                dtype=dtype,
                chunks=(cfg.latent_dim, 1, cy, cx),
            ),
            dsa.zeros((n_t, ny, nx), dtype=bool, chunks=(1, cy, cx)),
            dsa.full((n_t, ny, nx), np.nan, dtype=dtype, chunks=(1, cy, cx)),
            latentcube_identity=identity,
        )
        enc: dict[str, dict[str, Any]] = {
            "embedding": {"chunks": (cfg.latent_dim, 1, cy, cx), "_FillValue": np.nan},
            "valid": {"chunks": (1, cy, cx)},
            "recon_mae": {"chunks": (1, cy, cx), "_FillValue": np.nan},
        }
        if progress_dir(out).exists():  # markers of a store that was removed
            shutil.rmtree(progress_dir(out))
        write_zarr(template, out, encoding=enc, compute=False)
        progress_dir(out).mkdir()
    done = {p.name for p in progress_dir(out).iterdir()}
    tasks = [
        (f"{iy}_{ix}", slice(y0, y1), slice(x0, x1))
        for iy, (y0, y1) in enumerate(_tiles(ny, chunk))
        for ix, (x0, x1) in enumerate(_tiles(nx, chunk))
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
            futures = [
                client.submit(
                    _embed_chunk,
                    str(Path(model_path).resolve()),
                    str(Path(cube_path).resolve()),
                    str(out.resolve()),
                    cfg.sensor,
                    ys,
                    xs,
                    key,
                    batch_size,
                    key=f"latentcube-embed-{key}",
                    pure=False,
                )
                for key, ys, xs in todo
            ]
            t0, n_pd = time.perf_counter(), 0
            bar = tqdm(
                total=len(tasks),
                initial=len(tasks) - len(todo),
                disable=not progress,
                unit="chunk",
                desc="embedding",
            )
            for fut in as_completed(futures):
                n_pd += fut.result()
                bar.update(1)
                bar.set_postfix(pixel_dates_per_s=f"{n_pd / (time.perf_counter() - t0):.0f}")
            bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    shutil.rmtree(progress_dir(out))
    return out
