"""Embedding whole cubes with a fused model: one 7-d vector per pixel and date.

Every sensor's stage-1 latent is computed densely with the stage-1 inference
(:func:`latentcube.inference.embed_block`, or window by window for ``paper``
models), tile by tile with a halo; then the fusion model fuses, per pixel-date,
the latents of the sensors that are *present* there (their centre pixel is valid
and the user did not hide them). So a pixel under a cloud on an S2 date still
gets an embedding from S1, and the product says so: ``sensors`` is a per-pixel,
per-date bit mask of the sensors that contributed (CF ``flag_masks``).

Time axis: the cube's. On a cube whose time axis is the union of S2 clear dates
and S1 dates (``read_worldcereal_patch(..., time_axis="union")``), the reference
sensor (S2) is encoded on its own dates only (those with any valid pixel), as in
training, and the other sensors on every date; dates without S2 are embedded from
the other sensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import provenance, select_bands
from latentcube.data.multisensor import sensor_offsets
from latentcube.data.windows import CubeArrays
from latentcube.inference import embed_block, embed_windows
from latentcube.models.fusion import FusionModel

__all__ = ["embed_fused", "embed_fused_block"]


def _sensor_latents(
    model: FusionModel,
    sensor: str,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    dates: np.ndarray,
) -> np.ndarray:
    """(L, T, oy, ox) stage-1 latents of one sensor on the dates ``dates`` (NaN elsewhere)."""
    ae = model.autoencoder(sensor)
    fn = embed_block if ae.supports_dense else embed_windows
    h = ae.config.window // 2
    n_t, _, ny, nx = data.shape
    out = np.full((ae.config.latent_dim, n_t, ny - 2 * h, nx - 2 * h), np.nan, np.float32)
    if len(dates):
        lat, _ = fn(ae, data[dates], valid[dates], days[dates], with_error=False)
        out[:, dates] = lat
    return out


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused embedding of one block carrying a halo of ``window // 2`` pixels.

    Parameters
    ----------
    model
        The fusion model.
    data, valid
        Per sensor, (T, C, H, W) values and (T, H, W) validity on the same dates.
    days
        (T,) day numbers of the dates.
    offsets
        Per sensor, (T,) day offsets to the reference date.
    hide
        Sensors to leave out on purpose (e.g. ``("s2",)`` for S1-only embeddings).
    batch_size
        Pixel-dates per fusion call.
    with_error
        Also return the reference sensor's centre-pixel reconstruction MAE
        (wherever its centre pixel is valid, also when it was hidden).

    Returns
    -------
    tuple
        ``emb`` (embed_dim, T, H - 2h, W - 2h) float32 (NaN without any present
        sensor), ``flags`` (T, H - 2h, W - 2h) uint8 bit mask of the sensors that
        contributed (bit k = ``model.sensors[k]``) and ``err`` (T, H - 2h, W - 2h).
    """
    model.eval()
    cfg = model.config
    unknown = [s for s in hide if s not in cfg.sensors]
    if unknown:
        raise ValueError(f"cannot hide {unknown}: the model's sensors are {list(cfg.sensors)}")
    ref = cfg.reference
    n_t = len(days)
    # the reference sensor runs on its own dates (all of them on an S2 date axis)
    ref_dates = np.flatnonzero(valid[ref].any(axis=(1, 2)))
    lat = {
        s: _sensor_latents(
            model, s, data[s], valid[s], days, ref_dates if s == ref else np.arange(n_t)
        )
        for s in cfg.sensors
    }
    shape = lat[ref].shape[1:]
    present = np.stack(
        [np.isfinite(lat[s]).all(axis=0) & (s not in hide) for s in cfg.sensors], axis=-1
    )  # (T, oy, ox, S)
    emb = np.full((cfg.embed_dim, *shape), np.nan, np.float32)
    err = np.full(shape, np.nan, np.float32)
    flags = (present * (1 << np.arange(len(cfg.sensors)))).sum(axis=-1).astype(np.uint8)
    ae_ref = model.autoencoder(ref)
    h, c = ae_ref.config.window // 2, ae_ref.config.n_dates // 2
    tt, yy, xx = np.nonzero(present.any(axis=-1))
    for i in range(0, len(tt), batch_size):
        t, y, x = tt[i : i + batch_size], yy[i : i + batch_size], xx[i : i + batch_size]
        pres = torch.from_numpy(present[t, y, x])
        lats = {s: torch.from_numpy(np.nan_to_num(lat[s][:, t, y, x].T)) for s in cfg.sensors}
        offs = {s: torch.from_numpy(offsets[s][t]) for s in cfg.sensors}
        z = model.fuse(lats, offs, pres)
        emb[:, t, y, x] = z.T.numpy()
        if with_error:
            # position of each date on the reference sensor's own axis (-1: not a date of it)
            pos = np.full(n_t, -1)
            pos[ref_dates] = np.arange(len(ref_dates))
            p = pos[t]
            ok = valid[ref][t, y + h, x + h] & (p >= c) & (p < len(ref_dates) - c)
            if ok.any():
                tk = t[ok]
                g = np.stack([np.diff(days[ref_dates[k - c : k + c + 1]]) for k in p[ok]]).astype(
                    np.int64
                )
                rec = model.decode_centre(z[torch.from_numpy(ok)], ref, torch.from_numpy(g))
                truth = data[ref][tk, :, y[ok] + h, x[ok] + h]
                err[tk, y[ok], x[ok]] = (rec.numpy() - truth).__abs__().mean(axis=1)
    return emb, flags, err


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
    """Embed every pixel and date of a cube with a fused model.

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
        Output tile side in pixels; memory is bounded by the tile plus its halo.
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

    cfg = model.config
    missing = [s for s in cfg.sensors[1:] if s not in cube.data_vars]
    have = [s for s in cfg.sensors if s not in missing]
    cube = select_bands(cube, {s: model.autoencoder(s).config.bands for s in have})
    arrs = {s: CubeArrays.from_cube(cube, s) for s in have}
    ref_arr = arrs[cfg.reference]
    for s in missing:  # a sensor the cube lacks is absent everywhere (never encoded)
        n_b = model.autoencoder(s).config.n_bands
        shape = ref_arr.valid.shape
        arrs[s] = CubeArrays(
            np.zeros((shape[0], n_b, *shape[1:]), np.float32),
            np.zeros(shape, bool),
            ref_arr.days,
        )
    offsets = {s: sensor_offsets(cube, s) for s in cfg.sensors}
    days = arrs[cfg.reference].days
    h = max(model.autoencoder(s).config.window for s in cfg.sensors) // 2
    n_t, _, ny, nx = arrs[cfg.reference].data.shape
    emb = np.full((cfg.embed_dim, n_t, ny, nx), np.nan, np.float32)
    flags = np.zeros((n_t, ny, nx), np.uint8)
    err = np.full((n_t, ny, nx), np.nan, np.float32)
    tiles = [
        (y0, min(y0 + tile, ny - 2 * h), x0, min(x0 + tile, nx - 2 * h))
        for y0 in range(0, max(ny - 2 * h, 0), tile)
        for x0 in range(0, max(nx - 2 * h, 0), tile)
    ]
    for y0, y1, x0, x1 in tqdm(tiles, disable=not progress, desc="tiles"):
        sy, sx = slice(y0, y1 + 2 * h), slice(x0, x1 + 2 * h)
        e, f, r = embed_fused_block(
            model,
            {s: a.data[:, :, sy, sx] for s, a in arrs.items()},
            {s: a.valid[:, sy, sx] for s, a in arrs.items()},
            days,
            offsets,
            hide=hide,
            batch_size=batch_size,
            with_error=with_error,
        )
        emb[:, :, y0 + h : y1 + h, x0 + h : x1 + h] = e
        flags[:, y0 + h : y1 + h, x0 + h : x1 + h] = f
        err[:, y0 + h : y1 + h, x0 + h : x1 + h] = r
    data_vars = {
        "embedding": (("feature", "time", "y", "x"), emb),
        "valid": (("time", "y", "x"), flags > 0),
        "sensors": (("time", "y", "x"), flags),
    }
    if with_error:
        data_vars["recon_mae"] = (("time", "y", "x"), err)
    ds = xr.Dataset(
        data_vars,
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
            cube_attribution=cube.attrs.get("attribution", ""),
        ),
    )
    ds["embedding"].attrs["long_name"] = f"fused {'+'.join(cfg.sensors)} embedding"
    ds["sensors"].attrs.update(
        long_name="sensors that contributed to the embedding",
        flag_masks=[1 << k for k in range(len(cfg.sensors))],
        flag_meanings=" ".join(cfg.sensors),
    )
    if with_error:
        ds["recon_mae"].attrs["long_name"] = (
            f"{cfg.reference} centre-pixel reconstruction MAE from the fused embedding (band mean)"
        )
    return ds.rio.write_crs(cube.rio.crs)
