"""The fused job: one 7-d vector per pixel and date from every sensor present.

Every sensor's stage-1 latent is computed densely with the stage-1 block code
(:func:`latentcube.inference.autoencoder.embed_block`, or window by window for
``paper`` models) on a block carrying a halo; then the fusion model fuses, per
pixel-date, the latents of the sensors that are *present* there (their centre
pixel is valid and the user did not hide them). So a pixel under a cloud on an S2
date still gets an embedding from S1, and the product says so: ``sensors`` is a
per-pixel, per-date bit mask of the sensors that contributed (CF ``flag_masks``).

One output chunk is embedded from the cube block it needs (:meth:`FusionJob.block`:
the chunk plus the spatial halo of the widest sensor window and the temporal
context of every sensor on its own dates); the engine runs it lazily in memory or
as one Dask task per chunk into a store, with the same values. The output does not
depend on the chunking (tested).

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import provenance, select_bands
from latentcube.data.multisensor import sensor_offsets
from latentcube.embedding_store import layer_attrs, recon_layer
from latentcube.errors import EmbeddingError
from latentcube.inference.autoencoder import default_batch, embed_block, embed_windows, model_device
from latentcube.inference.job import Arrays, EmbedJob, Options, Reads
from latentcube.models.fusion import FusionModel

__all__ = ["FusionJob", "embed_fused_block", "reference_dates"]


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
    batch_size: int | None = None,
) -> np.ndarray:
    """(L, T, oy, ox) stage-1 latents of one sensor encoded on ``dates``, kept at ``centres``.

    ``dates`` are the block's dates the sensor is encoded on (its context runs over
    them); latents are computed only for those also in ``centres`` (NaN elsewhere).
    ``batch_size``: pixels per encoder call (default: the device's, :func:`default_batch`).
    """
    ae = model.autoencoder(sensor)
    h = ae.config.window // 2
    n_t, _, ny, nx = data.shape
    out = np.full((ae.config.latent_dim, n_t, ny - 2 * h, nx - 2 * h), np.nan, np.float32)
    want = np.flatnonzero(np.isin(dates, centres))
    if len(want):
        kw: dict[str, Any] = {"with_error": False, "batch_size": batch_size}
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
        raise EmbeddingError(
            f"cannot hide {unknown}: the model's sensors are {list(model.sensors)}"
        )


@torch.no_grad()
def embed_fused_block(
    model: FusionModel,
    data: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    days: np.ndarray,
    offsets: dict[str, np.ndarray],
    *,
    hide: Sequence[str] = (),
    batch_size: int | None = None,
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
        Items per model call: pixel-dates per fusion call and pixels per stage-1
        encoder call. Default on a CPU 8192 pixel-dates and 2048 pixels; on an
        accelerator the whole block (every pixel-date per fusion call, every pixel
        of a date per encoder call).
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
    dev = model_device(model)
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
            batch_size,
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
    batch_size = batch_size or default_batch(dev, len(tt), cpu=8192)
    for i in range(0, len(tt), batch_size):
        t, y, x = tt[i : i + batch_size], yy[i : i + batch_size], xx[i : i + batch_size]
        pres = torch.from_numpy(present[t, y, x]).to(dev)
        lats = {
            s: torch.from_numpy(np.nan_to_num(lat[s][:, t, y, x].T)).to(dev) for s in cfg.sensors
        }
        offs = {s: torch.from_numpy(offsets[s][t]).to(dev) for s in cfg.sensors}
        z = model.fuse(lats, offs, pres)
        emb[:, t, y, x] = z.T.cpu().numpy()
        if with_error:
            p = pos[t]
            ok = valid[ref][t, y + h, x + h] & (p >= c) & (p < len(ref_dates) - c)
            if ok.any():
                tk = t[ok]
                g = np.stack([np.diff(days[ref_dates[k - c : k + c + 1]]) for k in p[ok]]).astype(
                    np.int64
                )
                rec = model.decode_centre(
                    z[torch.from_numpy(ok).to(dev)], ref, torch.from_numpy(g).to(dev)
                )
                truth = data[ref][tk, :, y[ok] + h, x[ok] + h]
                err[tk, y[ok], x[ok]] = np.abs(rec.cpu().numpy() - truth).mean(axis=1)
    return emb, flags, err


def _block_arrays(
    model: FusionModel, arrays: Arrays, shape: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values and validity of every sensor of a block; a sensor the cube lacks is all invalid."""
    data, valid = {}, {}
    n_t, ny, nx = shape
    for s in model.sensors:
        if s in arrays:
            data[s], valid[s] = arrays[s]
        else:
            n_b = model.autoencoder(s).config.n_bands
            data[s] = np.zeros((n_t, n_b, ny, nx), np.float32)
            valid[s] = np.zeros((n_t, ny, nx), bool)
    return data, valid


@dataclass(eq=False)
class FusionJob(EmbedJob):
    """Embedding with a fused bundle (``kind="fusion"``); edge policy ``nan`` only."""

    kind = "fusion"

    reads: Reads
    shape: tuple[int, int, int]
    n_features: int
    days: np.ndarray  # day numbers of the cube dates
    ref_dates: np.ndarray  # reference_dates of the whole cube
    offsets: dict[str, np.ndarray]  # per sensor, day offsets to the reference date
    context: tuple[int, int, int]  # halo in px, reference dates, other sensors' dates
    hide: tuple[str, ...]
    missing: tuple[str, ...]
    layers: dict[str, str]
    layer_attrs: dict[str, dict[str, Any]]
    attrs: dict[str, Any]
    batch_size: int | None = None
    with_error: bool = True

    @classmethod
    def plan(cls, bundle: Any, cube: xr.Dataset, options: Options) -> FusionJob:
        """See :meth:`latentcube.inference.job.EmbedJob.plan`."""
        edge, sensor, hide = options.edge, options.sensor, options.hide
        model: FusionModel = bundle.model
        cfg = model.config
        if edge != "nan":
            raise EmbeddingError(
                f"fused models embed with the 'nan' edge policy only, got edge={edge!r}"
            )
        if sensor is not None:
            raise EmbeddingError(
                f"sensor={sensor!r} is for stage-1 models; a fused model embeds "
                f"{'+'.join(cfg.sensors)}"
            )
        _check_hide(model, hide)
        ref = cfg.reference
        missing = [s for s in cfg.sensors[1:] if s not in cube.data_vars]
        bands = {s: tuple(model.autoencoder(s).config.bands) for s in cfg.sensors}
        cube = select_bands(cube, {s: b for s, b in bands.items() if s not in missing})
        cls.check_grid(cube, bundle.meta)
        n_t, ny, nx = (int(cube.sizes[d]) for d in ("time", "y", "x"))
        ref_dates = reference_dates(cube, ref)
        used = [s for s in cfg.sensors if s not in hide and s not in missing]
        if not used:
            gone = [f"{s} (hidden)" for s in hide] + [f"{s} (not in the cube)" for s in missing]
            raise EmbeddingError(
                f"every sensor of the model is left out, {', '.join(gone)}: nothing can be embedded"
            )
        h = _halo_px(model)
        # some sensor left in must have its full context somewhere in the cube
        dates = {s: len(ref_dates) if s == ref else n_t for s in used}
        need = {s: _context(model, s)[0] * 2 + 1 for s in used}
        enough = [s for s in used if dates[s] >= need[s]] or used[:1]
        s = enough[0]
        if options.refuse_empty:
            cls.check_context(f"the {s} encoder", dates[s], (ny, nx), 2 * h + 1, need[s])
        c_other = max((_context(model, s)[0] for s in cfg.sensors if s != ref), default=0)
        layers = {"valid": "bool", "sensors": "uint8"}
        if options.with_error:
            layers[recon_layer(None)] = "float32"
        return cls(
            reads=tuple((s, b) for s, b in bands.items() if s not in missing),
            shape=(n_t, ny, nx),
            n_features=int(cfg.embed_dim),
            days=cube["time"].values.astype("datetime64[D]").astype(np.int64),
            ref_dates=ref_dates,
            offsets={s: sensor_offsets(cube, s) for s in cfg.sensors},
            context=(h, _context(model, ref)[0], c_other),
            hide=tuple(hide),
            missing=tuple(missing),
            layers=layers,
            layer_attrs={
                k: layer_attrs(k, fused=True, sensors=cfg.sensors, reference=ref) for k in layers
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
                quality_layers=",".join(layers),
                cube_attribution=cube.attrs.get("attribution", ""),
            ),
            batch_size=options.batch_size,
            with_error=options.with_error,
        )

    def identity(self) -> dict[str, Any]:
        """See :meth:`latentcube.inference.job.EmbedJob.identity`."""
        return {"hide": sorted(self.hide)}

    def _region(
        self, ts: slice, ys: slice, xs: slice
    ) -> tuple[slice, slice, slice, tuple[slice, slice] | None]:
        """The block of chunk ``(ts, ys, xs)`` and the part of the chunk it can embed.

        The block is the chunk plus the widest window's halo, ``n_dates // 2``
        cube dates on either side for the sensors encoded on every date and
        ``n_dates // 2`` of its own dates on either side for the reference sensor.
        """
        n_t, ny, nx = self.shape
        h, c_ref, c_other = self.context
        lo, hi = ts.start - c_other, ts.stop + c_other
        i0, i1 = np.searchsorted(self.ref_dates, [ts.start, ts.stop])
        if i1 > i0:  # the reference sensor's context runs over its own dates
            lo = min(lo, int(self.ref_dates[max(i0 - c_ref, 0)]))
            hi = max(hi, int(self.ref_dates[min(i1 + c_ref, len(self.ref_dates)) - 1]) + 1)
        lo, hi = max(lo, 0), min(hi, n_t)
        y0, y1 = max(ys.start - h, 0), min(ys.stop + h, ny)
        x0, x1 = max(xs.start - h, 0), min(xs.stop + h, nx)
        # the block's output covers cube rows [y0 + h, y1 - h) and columns [x0 + h, x1 - h)
        oy = slice(max(ys.start, y0 + h), min(ys.stop, y1 - h))
        ox = slice(max(xs.start, x0 + h), min(xs.stop, x1 - h))
        if oy.stop <= oy.start or ox.stop <= ox.start:  # only border: nothing to read
            return slice(lo, hi), slice(y0, y0), slice(x0, x0), None
        return slice(lo, hi), slice(y0, y1), slice(x0, x1), (oy, ox)

    def block(self, ts: slice, ys: slice, xs: slice) -> tuple[slice, slice, slice]:
        """See :meth:`latentcube.inference.job.EmbedJob.block`."""
        tsl, ysl, xsl, _ = self._region(ts, ys, xs)
        return tsl, ysl, xsl

    def compute(
        self, model: Any, arrays: Arrays, ts: slice, ys: slice, xs: slice
    ) -> dict[str, np.ndarray]:
        """See :meth:`latentcube.inference.job.EmbedJob.compute`."""
        cfg = model.config
        h = self.context[0]
        tsl, ysl, xsl, box = self._region(ts, ys, xs)
        shape = (ts.stop - ts.start, ys.stop - ys.start, xs.stop - xs.start)
        emb = np.full((cfg.embed_dim, *shape), np.nan, np.float32)
        flags = np.zeros(shape, np.uint8)
        err = np.full(shape, np.nan, np.float32)
        if box is not None:
            (lo, hi), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in (tsl, ysl, xsl))
            (oy0, oy1), (ox0, ox1) = ((s.start, s.stop) for s in box)
            data, valid = _block_arrays(model, arrays, (hi - lo, y1 - y0, x1 - x0))
            kw: dict[str, Any] = {} if self.batch_size is None else {"batch_size": self.batch_size}
            rd = self.ref_dates
            e, f, r = embed_fused_block(
                model,
                data,
                valid,
                self.days[lo:hi],
                {s: np.asarray(self.offsets[s][lo:hi]) for s in cfg.sensors},
                hide=self.hide,
                with_error=self.with_error,
                ref_dates=rd[(rd >= lo) & (rd < hi)] - lo,
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
        if self.with_error:
            layers[recon_layer(None)] = err
        return layers
