"""Embedding whole cubes with a fused model: one 7-d vector per pixel and date.

Every sensor's stage-1 latent is computed densely with the stage-1 inference
(:func:`latentcube.inference.embed_block`, or window by window for ``paper``
models) on a block carrying a halo; then the fusion model fuses, per pixel-date,
the latents of the sensors that are *present* there (their centre pixel is valid
and the user did not hide them). So a pixel under a cloud on an S2 date still
gets an embedding from S1, and the product says so: ``sensors`` is a per-pixel,
per-date bit mask of the sensors that contributed (CF ``flag_masks``).

One function, :func:`fused_chunk`, embeds one (time, y, x) output chunk from the
cube block it needs (the chunk plus the spatial halo of the widest sensor window
and the temporal context of every sensor on its own dates). The in-memory path
(:func:`embed_fused`) runs it tile by tile; large areas run it as one Dask task
per chunk through :func:`latentcube.inference.embed_to_zarr` (:class:`FusedJob`).
The output does not depend on the chunking (tested).

Time axis: the cube's. On a cube whose time axis is the union of S2 clear dates
and S1 dates (``build_cube(..., time_axis="union")`` or
``read_worldcereal_patch(..., time_axis="union")``), the reference sensor (S2)
is encoded on its own dates only (:func:`reference_dates`: the coordinate
``s2_observed``), as in training, and the other sensors on every date; dates
without S2 are embedded from the other sensors.

Edges: pixel-dates without a full context inside the cube (the border, the
first/last dates of a sensor) get no latent from that sensor; pixel-dates
without any present sensor are NaN (the stage-1 ``nan`` edge policy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import provenance, select_bands
from latentcube.data.multisensor import sensor_offsets
from latentcube.data.windows import CubeArrays
from latentcube.errors import EmbeddingError
from latentcube.inference import embed_block, embed_windows
from latentcube.models.fusion import FusionModel

__all__ = [
    "FusedJob",
    "embed_fused",
    "embed_fused_block",
    "fused_chunk",
    "reference_dates",
]


def reference_dates(cube: xr.Dataset, sensor: str = "s2") -> np.ndarray:
    """Indices of the cube dates on which the reference sensor is encoded.

    Every date of a cube on the S2 time axis (the default). On a union time axis
    (attribute ``time_axis="union"``) the dates flagged by the coordinate
    ``<sensor>_observed``; a union cube without it (written by an older
    latentcube) falls back to the dates with any valid pixel of ``sensor``.
    The choice depends on the whole cube, never on a tile, so tiles and chunks
    agree.
    """
    n = cube.sizes["time"]
    if cube.attrs.get("time_axis", "s2") != "union":
        return np.arange(n)
    name = f"{sensor}_observed"
    if name in cube.coords:
        return np.flatnonzero(np.asarray(cube[name].values, bool))
    return np.flatnonzero(np.asarray(cube[f"{sensor}_valid"].any(dim=("y", "x")).values))


def _context(model: FusionModel, sensor: str) -> tuple[int, int]:
    """(dates, pixels) of context on either side for ``sensor``'s autoencoder."""
    cfg = model.autoencoder(sensor).config
    return cfg.n_dates // 2, cfg.window // 2


def _halo_px(model: FusionModel) -> int:
    """Spatial halo of a fused block: that of the widest sensor window."""
    return max(_context(model, s)[1] for s in model.sensors)


def _sensor_latents(
    model: FusionModel,
    sensor: str,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    dates: np.ndarray,
    centres: np.ndarray,
) -> np.ndarray:
    """(L, T, oy, ox) stage-1 latents of one sensor encoded on ``dates``, kept at ``centres``.

    ``dates`` are the block's dates the sensor is encoded on (its context runs over
    them); latents are computed only for those also in ``centres`` (NaN elsewhere).
    """
    ae = model.autoencoder(sensor)
    h = ae.config.window // 2
    n_t, _, ny, nx = data.shape
    out = np.full((ae.config.latent_dim, n_t, ny - 2 * h, nx - 2 * h), np.nan, np.float32)
    want = np.flatnonzero(np.isin(dates, centres))
    if len(want):
        kw: dict[str, Any] = {"with_error": False}
        fn: Callable[..., tuple[np.ndarray, np.ndarray]]
        if ae.supports_dense:
            kw["centres"] = want.tolist()
            fn = embed_block
        else:
            fn = embed_windows
        lat, _ = fn(ae, data[dates], valid[dates], days[dates], **kw)
        out[:, dates[want]] = lat[:, want]
    return out


def _check_hide(model: FusionModel, hide: Sequence[str]) -> None:
    unknown = [s for s in hide if s not in model.sensors]
    if unknown:
        raise ValueError(f"cannot hide {unknown}: the model's sensors are {list(model.sensors)}")


@torch.no_grad()
def embed_fused_block(
    model: FusionModel,
    data: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    days: np.ndarray,
    offsets: dict[str, np.ndarray],
    *,
    hide: Sequence[str] = (),
    batch_size: int = 8192,
    with_error: bool = True,
    ref_dates: np.ndarray | None = None,
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused embedding of one block carrying a halo of ``h`` pixels (the widest window's).

    Parameters
    ----------
    model
        The fusion model.
    data, valid
        Per sensor, (T, C, H, W) values and (T, H, W) validity on the same dates
        and pixels (a sensor with a narrower window uses the middle of the block).
    days
        (T,) day numbers of the dates.
    offsets
        Per sensor, (T,) day offsets to the reference date.
    hide
        Sensors to leave out on purpose (e.g. ``("s2",)`` for S1-only embeddings);
        they are not encoded at all.
    batch_size
        Pixel-dates per fusion call.
    with_error
        Also return the reference sensor's centre-pixel reconstruction MAE
        (wherever its centre pixel is valid, also when it was hidden).
    ref_dates
        Increasing indices of the dates the reference sensor is encoded on
        (default: all; see :func:`reference_dates`).
    centres
        Indices of the dates to embed (default: all); the others stay NaN.

    Returns
    -------
    tuple
        ``emb`` (embed_dim, T, H - 2h, W - 2h) float32 (NaN without any present
        sensor), ``flags`` (T, H - 2h, W - 2h) uint8 bit mask of the sensors that
        contributed (bit k = ``model.sensors[k]``) and ``err`` (T, H - 2h, W - 2h).
    """
    model.eval()
    cfg = model.config
    _check_hide(model, hide)
    ref = cfg.reference
    n_t = len(days)
    ref_dates = np.arange(n_t) if ref_dates is None else np.asarray(ref_dates, np.int64)
    centres = np.arange(n_t) if centres is None else np.asarray(centres, np.int64)
    h = _halo_px(model)
    lat: dict[str, np.ndarray] = {}
    for s in cfg.sensors:
        h_s = _context(model, s)[1]
        d = h - h_s  # a narrower window reads the middle of the block
        ys = slice(d, data[s].shape[2] - d)
        xs = slice(d, data[s].shape[3] - d)
        if s in hide:
            oy, ox = data[s].shape[2] - 2 * h, data[s].shape[3] - 2 * h
            lat[s] = np.full((cfg.latent_dims[s], n_t, oy, ox), np.nan, np.float32)
            continue
        lat[s] = _sensor_latents(
            model,
            s,
            data[s][:, :, ys, xs],
            valid[s][:, ys, xs],
            days,
            ref_dates if s == ref else np.arange(n_t),
            centres,
        )
    shape = lat[ref].shape[1:]
    present = np.stack([np.isfinite(lat[s]).all(axis=0) for s in cfg.sensors], axis=-1)
    emb = np.full((cfg.embed_dim, *shape), np.nan, np.float32)
    err = np.full(shape, np.nan, np.float32)
    flags = (present * (1 << np.arange(len(cfg.sensors)))).sum(axis=-1).astype(np.uint8)
    c = _context(model, ref)[0]
    # position of each date on the reference sensor's own axis (-1: not a date of it)
    pos = np.full(n_t, -1)
    pos[ref_dates] = np.arange(len(ref_dates))
    tt, yy, xx = np.nonzero(present.any(axis=-1))
    for i in range(0, len(tt), batch_size):
        t, y, x = tt[i : i + batch_size], yy[i : i + batch_size], xx[i : i + batch_size]
        pres = torch.from_numpy(present[t, y, x])
        lats = {s: torch.from_numpy(np.nan_to_num(lat[s][:, t, y, x].T)) for s in cfg.sensors}
        offs = {s: torch.from_numpy(offsets[s][t]) for s in cfg.sensors}
        z = model.fuse(lats, offs, pres)
        emb[:, t, y, x] = z.T.numpy()
        if with_error:
            p = pos[t]
            ok = valid[ref][t, y + h, x + h] & (p >= c) & (p < len(ref_dates) - c)
            if ok.any():
                tk = t[ok]
                g = np.stack([np.diff(days[ref_dates[k - c : k + c + 1]]) for k in p[ok]]).astype(
                    np.int64
                )
                rec = model.decode_centre(z[torch.from_numpy(ok)], ref, torch.from_numpy(g))
                truth = data[ref][tk, :, y[ok] + h, x[ok] + h]
                err[tk, y[ok], x[ok]] = np.abs(rec.numpy() - truth).mean(axis=1)
    return emb, flags, err


def _block_arrays(
    cube: xr.Dataset, model: FusionModel
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values and validity of every sensor of a cube block; a sensor the cube lacks is absent."""
    data, valid = {}, {}
    n_t, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
    for s in model.sensors:
        if s in cube.data_vars:
            a = CubeArrays.from_cube(cube, s)
            data[s], valid[s] = a.data, a.valid
        else:
            n_b = model.autoencoder(s).config.n_bands
            data[s] = np.zeros((n_t, n_b, ny, nx), np.float32)
            valid[s] = np.zeros((n_t, ny, nx), bool)
    return data, valid


def fused_chunk(
    model: FusionModel,
    cube: xr.Dataset,
    ref_dates: np.ndarray,
    offsets: Mapping[str, np.ndarray],
    ts: slice,
    ys: slice,
    xs: slice,
    *,
    hide: Sequence[str] = (),
    batch_size: int | None = None,
    with_error: bool = True,
) -> dict[str, np.ndarray]:
    """Fused embedding of the output chunk ``(ts, ys, xs)`` of a (lazy) cube.

    Reads the chunk plus its context: the spatial halo of the widest sensor
    window, ``n_dates // 2`` cube dates on either side for the sensors encoded on
    every date, and ``n_dates // 2`` of its own dates on either side for the
    reference sensor. Memory is bounded by that block.

    Parameters
    ----------
    model
        The fusion model.
    cube
        The whole cube with the model's bands (:func:`select_bands`); only the
        block is read.
    ref_dates
        :func:`reference_dates` of the whole cube.
    offsets
        Per sensor, :func:`latentcube.data.multisensor.sensor_offsets` of the whole cube.
    ts, ys, xs
        The output chunk (cube indices, step 1).
    hide, batch_size, with_error
        As in :func:`embed_fused_block`.

    Returns
    -------
    dict
        ``embedding`` (embed_dim, t, y, x) float32, ``valid`` and ``sensors``
        (t, y, x) and, with ``with_error``, ``recon_mae`` (t, y, x).
    """
    cfg = model.config
    ref = cfg.reference
    n_t, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
    h = _halo_px(model)
    c_ref = _context(model, ref)[0]
    c_other = max((_context(model, s)[0] for s in cfg.sensors if s != ref), default=0)
    lo, hi = ts.start - c_other, ts.stop + c_other
    i0, i1 = np.searchsorted(ref_dates, [ts.start, ts.stop])
    if i1 > i0:  # the reference sensor's context runs over its own dates
        lo = min(lo, int(ref_dates[max(i0 - c_ref, 0)]))
        hi = max(hi, int(ref_dates[min(i1 + c_ref, len(ref_dates)) - 1]) + 1)
    lo, hi = max(lo, 0), min(hi, n_t)
    y0, y1 = max(ys.start - h, 0), min(ys.stop + h, ny)
    x0, x1 = max(xs.start - h, 0), min(xs.stop + h, nx)
    shape = (ts.stop - ts.start, ys.stop - ys.start, xs.stop - xs.start)
    emb = np.full((cfg.embed_dim, *shape), np.nan, np.float32)
    flags = np.zeros(shape, np.uint8)
    err = np.full(shape, np.nan, np.float32)
    # the block's output covers cube rows [y0 + h, y1 - h) and columns [x0 + h, x1 - h)
    oy0, oy1 = max(ys.start, y0 + h), min(ys.stop, y1 - h)
    ox0, ox1 = max(xs.start, x0 + h), min(xs.stop, x1 - h)
    if oy1 > oy0 and ox1 > ox0:
        sub = cube.isel(time=slice(lo, hi), y=slice(y0, y1), x=slice(x0, x1))
        data, valid = _block_arrays(sub, model)
        kw: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
        e, f, r = embed_fused_block(
            model,
            data,
            valid,
            sub["time"].values.astype("datetime64[D]").astype(np.int64),
            {s: np.asarray(offsets[s][lo:hi]) for s in cfg.sensors},
            hide=hide,
            with_error=with_error,
            ref_dates=ref_dates[(ref_dates >= lo) & (ref_dates < hi)] - lo,
            centres=np.arange(ts.start - lo, ts.stop - lo),
            **kw,
        )
        src = (
            slice(ts.start - lo, ts.stop - lo),
            slice(oy0 - y0 - h, oy1 - y0 - h),
            slice(ox0 - x0 - h, ox1 - x0 - h),
        )
        dst = (
            slice(None),
            slice(oy0 - ys.start, oy1 - ys.start),
            slice(ox0 - xs.start, ox1 - xs.start),
        )
        emb[(slice(None), *dst)] = e[(slice(None), *src)]
        flags[dst] = f[src]
        err[dst] = r[src]
    layers = {"embedding": emb, "valid": flags > 0, "sensors": flags}
    if with_error:
        layers["recon_mae"] = err
    return layers


def _prepare(
    cube: xr.Dataset, model: FusionModel, hide: Sequence[str]
) -> tuple[xr.Dataset, list[str], dict[str, tuple[str, ...]]]:
    """The cube with the model's bands, the sensors it lacks and the bands per sensor it has."""
    _check_hide(model, hide)
    cfg = model.config
    missing = [s for s in cfg.sensors[1:] if s not in cube.data_vars]
    bands = {s: model.autoencoder(s).config.bands for s in cfg.sensors if s not in missing}
    return select_bands(cube, bands), missing, bands


def _fused_dataset(
    cube: xr.Dataset,
    model: FusionModel,
    layers: Mapping[str, Any],
    hide: Sequence[str],
    missing: Sequence[str],
) -> xr.Dataset:
    """The fused embedding dataset (numpy or Dask layers) on the cube's grid, with metadata."""
    cfg = model.config
    dims3 = ("time", "y", "x")
    ds = xr.Dataset(
        {k: (("feature", *dims3) if k == "embedding" else dims3, v) for k, v in layers.items()},
        coords={
            "feature": [f"F{i + 1:02d}" for i in range(cfg.embed_dim)],
            "time": cube["time"].values,
            "y": cube["y"].values,
            "x": cube["x"].values,
        },
        attrs=provenance(
            f"latentcube fused embedding of {cube.attrs.get('source', 'a cube')}",
            fusion_config=cfg.model_dump_json(),
            autoencoder_configs="; ".join(
                model.autoencoder(s).config.model_dump_json() for s in cfg.sensors
            ),
            sensor="+".join(cfg.sensors),
            hidden_sensors=",".join(hide),
            missing_sensors=",".join(missing),
            time_axis=cube.attrs.get("time_axis", "s2"),
            edge_policy="nan: no full context (border, first/last dates) or no sensor present",
            quality_layers=",".join(k for k in layers if k != "embedding"),
            cube_attribution=cube.attrs.get("attribution", ""),
        ),
    )
    ds["embedding"].attrs["long_name"] = f"fused {'+'.join(cfg.sensors)} embedding"
    ds["valid"].attrs["long_name"] = "an embedding exists (some sensor contributed)"
    ds["sensors"].attrs.update(
        long_name="sensors that contributed to the embedding",
        flag_masks=[1 << k for k in range(len(cfg.sensors))],
        flag_meanings=" ".join(cfg.sensors),
    )
    if "recon_mae" in ds:
        ds["recon_mae"].attrs["long_name"] = (
            f"{cfg.reference} centre-pixel reconstruction MAE from the fused embedding (band mean)"
        )
    return ds.rio.write_crs(cube.rio.crs)


def embed_fused(
    cube: xr.Dataset,
    model: FusionModel,
    *,
    hide: Sequence[str] = (),
    tile: int = 256,
    batch_size: int = 8192,
    with_error: bool = True,
    progress: bool = False,
) -> xr.Dataset:
    """Embed every pixel and date of a cube with a fused model, in memory.

    For areas that do not fit in memory use :func:`latentcube.inference.embed_to_zarr`
    (Dask, chunked in time and space, resumable), which gives the same values.

    Parameters
    ----------
    cube
        A cube holding the model's sensors (validated for their bands); a sensor
        other than the reference that the cube lacks is treated as absent
        everywhere (listed in the attribute ``missing_sensors``).
    model
        The fusion model (e.g. from :func:`latentcube.bundle.load_fusion_checkpoint`).
    hide
        Sensors to leave out on purpose (their bit is never set in ``sensors``).
    tile
        Output tile side in pixels; each tile is embedded over all dates from its
        block plus the halo.
    batch_size
        Pixel-dates per fusion call.
    with_error
        Add ``recon_mae``, the reference sensor's centre-pixel reconstruction error.
    progress
        Show a progress bar over tiles.

    Returns
    -------
    xarray.Dataset
        ``embedding`` (feature, time, y, x) float32, ``valid`` (time, y, x; some
        sensor contributed), ``sensors`` (time, y, x) uint8 bit mask of the
        contributing sensors and ``recon_mae``, on the cube's grid with its CRS;
        NaN without full context (border, first/last dates) or without any
        present sensor.
    """
    from tqdm.auto import tqdm

    if tile < 1:
        raise EmbeddingError(f"tile must be a positive integer, got {tile!r}")
    cube, missing, _bands = _prepare(cube, model, hide)
    cfg = model.config
    ref_dates = reference_dates(cube, cfg.reference)
    offsets = {s: sensor_offsets(cube, s) for s in cfg.sensors}
    n_t, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
    out: dict[str, np.ndarray] = {
        "embedding": np.full((cfg.embed_dim, n_t, ny, nx), np.nan, np.float32),
        "valid": np.zeros((n_t, ny, nx), bool),
        "sensors": np.zeros((n_t, ny, nx), np.uint8),
    }
    if with_error:
        out["recon_mae"] = np.full((n_t, ny, nx), np.nan, np.float32)
    h = _halo_px(model)  # the border has no full context: only inner tiles are embedded
    tiles = [
        (slice(y0, min(y0 + tile, ny - h)), slice(x0, min(x0 + tile, nx - h)))
        for y0 in range(h, ny - h, tile)
        for x0 in range(h, nx - h, tile)
    ]
    for ys, xs in tqdm(tiles, disable=not progress, desc="tiles"):
        layers = fused_chunk(
            model,
            cube,
            ref_dates,
            offsets,
            slice(0, n_t),
            ys,
            xs,
            hide=hide,
            batch_size=batch_size,
            with_error=with_error,
        )
        for k, v in layers.items():
            out[k][..., ys, xs] = v
    return _fused_dataset(cube, model, out, hide, missing)


@dataclass(eq=False)
class FusedJob:
    """What every Dask task of a fused :func:`~latentcube.inference.embed_to_zarr` run needs.

    Small and picklable: the cube-wide facts (bands per sensor, the reference
    sensor's dates, the sensors' day offsets) are computed once on the client.
    Built with :meth:`plan`.
    """

    bands: tuple[tuple[str, tuple[str, ...]], ...]
    ref_dates: np.ndarray
    offsets: dict[str, np.ndarray]
    hide: tuple[str, ...]
    missing: tuple[str, ...]
    batch_size: int | None = None

    @classmethod
    def plan(
        cls,
        cube: xr.Dataset,
        model: FusionModel,
        *,
        hide: Sequence[str] = (),
        batch_size: int | None = None,
    ) -> FusedJob:
        """The job of embedding ``cube`` (lazy) with ``model``, leaving out ``hide``."""
        cube, missing, bands = _prepare(cube, model, hide)
        ref = model.config.reference
        return cls(
            bands=tuple(bands.items()),
            ref_dates=reference_dates(cube, ref),
            offsets={s: sensor_offsets(cube, s) for s in model.sensors},
            hide=tuple(hide),
            missing=tuple(missing),
            batch_size=batch_size,
        )

    def identity(self) -> dict[str, Any]:
        """What, beyond model and cube, makes two runs' stores different."""
        return {"hide": sorted(self.hide)}

    def layers(
        self, model: Any, cube: xr.Dataset, ts: slice, ys: slice, xs: slice
    ) -> dict[str, np.ndarray]:
        """The layers of one output chunk (see :func:`fused_chunk`)."""
        return fused_chunk(
            model,
            cube,
            self.ref_dates,
            self.offsets,
            ts,
            ys,
            xs,
            hide=self.hide,
            batch_size=self.batch_size,
        )

    def template(self, cube: xr.Dataset, model: Any, sizes: Mapping[str, int]) -> xr.Dataset:
        """A lazy dataset with the store's variables, chunks and metadata (never computed)."""
        import dask.array as da

        n_t, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
        ch = (sizes["time"], sizes["y"], sizes["x"])
        e = model.config.embed_dim
        layers = {
            "embedding": da.full((e, n_t, ny, nx), np.nan, dtype=np.float32, chunks=(e, *ch)),
            "valid": da.zeros((n_t, ny, nx), dtype=bool, chunks=ch),
            "sensors": da.zeros((n_t, ny, nx), dtype=np.uint8, chunks=ch),
            "recon_mae": da.full((n_t, ny, nx), np.nan, dtype=np.float32, chunks=ch),
        }
        return _fused_dataset(cube, model, layers, self.hide, self.missing)
