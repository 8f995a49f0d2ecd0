"""The stage-1 job: one sensor's context autoencoder, dense or window by window.

Dense path (``fast``/``tiny``, :func:`embed_block`): the spatial features of every
date are computed once per block with the model's unpadded convolutions and
shared by every pixel and every window that uses that date; then, for every
centre date, the temporal encoder runs on each pixel's 11 feature vectors. The
result equals window-by-window evaluation of the same model to float rounding
(tested). ``paper`` models run window by window (:func:`embed_windows`).

Blocks: each output chunk is computed from its cube block plus a halo of
``window // 2`` pixels and ``n_dates // 2`` dates, so the output does not depend
on the chunking (tested, also with chunks smaller than the context).

Edge policy (``edge=``): pixels within ``window // 2`` of the border and the
first/last ``n_dates // 2`` dates have no full context.

* ``"nan"`` (default, the paper's crop kept on the full grid): they are NaN.
* ``"pad"``: their context is completed with invalid pixels (mask False) and,
  beyond the first/last date, with fully invalid dates spaced by the cube's median
  date gap; they are embedded and flagged in the ``padded`` quality layer.

Under both policies every pixel-date whose centre pixel is invalid is NaN.
Quality layers: ``valid``, ``recon_mae_<sensor>`` and, with ``edge="pad"``,
``padded`` (see :mod:`latentcube.embedding_store`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.cube.schema import band_positions, expand_bands, provenance, select_bands
from latentcube.embedding_store import layer_attrs, recon_layer
from latentcube.errors import EmbeddingError
from latentcube.inference.chunks import check_edge, extended_days, halo, incomplete
from latentcube.inference.job import Arrays, EmbedJob, Options, Reads
from latentcube.models.autoencoder import ContextAutoencoder
from latentcube.sensors import band_dim

__all__ = ["AutoencoderJob", "default_batch", "embed_block", "embed_windows", "model_device"]

#: Pixels per temporal-encoder call on a CPU: a batch's activations stay in cache.
CPU_BATCH = 2048


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters are on (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def default_batch(device: torch.device | str, n_items: int, cpu: int = CPU_BATCH) -> int:
    """Items per model call when the caller gives none.

    On a CPU, ``cpu`` (small batches keep the activations in cache); on an
    accelerator the whole tile at once (``n_items``), one call per date, so the
    device runs few large kernels instead of many small ones.
    """
    return cpu if torch.device(device).type == "cpu" else max(int(n_items), 1)


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
    batch_size: int | None = None,
    with_error: bool = True,
    centres: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense embedding of one block that carries a halo of ``window // 2`` pixels.

    Parameters
    ----------
    model
        A model with ``supports_dense``, on the device it runs on (CPU, CUDA, MPS);
        the block is moved there date by date and the results come back as numpy.
    data
        (T, C, H, W) float32, anything where ``valid`` is False.
    valid
        (T, H, W) bool.
    days
        (T,) int day numbers of the dates.
    batch_size
        Pixels per temporal-encoder call. Default (:func:`default_batch`): 2048 on a
        CPU (a batch's activations stay in cache), every pixel of the block on an
        accelerator (one call per centre date).
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
    dev = model_device(model)
    h = cfg.window // 2
    n_t, _, ny, nx = data.shape
    oy, ox = ny - 2 * h, nx - 2 * h
    if oy <= 0 or ox <= 0 or n_t < cfg.n_dates:
        emb = np.full((cfg.latent_dim, n_t, max(oy, 0), max(ox, 0)), np.nan, np.float32)
        return emb, np.full((n_t, max(oy, 0), max(ox, 0)), np.nan, np.float32)
    batch_size = batch_size or default_batch(dev, oy * ox)
    # the block stays on the host; each date goes to the device when it is first used
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    m = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))
    inner_valid = m[:, h : h + oy, h : h + ox].reshape(n_t, -1).to(dev)
    centre_vals = x[:, :, h : h + oy, h : h + ox].reshape(n_t, x.shape[1], -1)
    c = cfg.n_dates // 2
    cache: dict[int, torch.Tensor] = {}  # date -> (P, d) tokens; at most n_dates kept
    emb_t = torch.full((cfg.latent_dim, n_t, oy, ox), float("nan"), device=dev)
    err_t = torch.full((n_t, oy, ox), float("nan"), device=dev)

    def tokens(k: int) -> torch.Tensor:
        if k not in cache:
            xk, mk = x[k : k + 1].to(dev), m[k : k + 1].to(dev)
            f = model.frame_features(xk, mk)[0]  # (F, oy, ox)
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
        g = torch.from_numpy(np.diff(days[t - c : t + c + 1]).astype(np.int64))[None].to(dev)
        out = emb_t[:, t].reshape(cfg.latent_dim, -1)
        truth = centre_vals[t].to(dev) if with_error else None
        for s in range(0, pix.numel(), batch_size):
            p = pix[s : s + batch_size]
            z = model.encode_tokens(ctx[s : s + batch_size], g)
            out[:, p] = z.T
            if truth is not None:
                rec = model.decode_centre(z, g)
                diff = (rec - truth[:, p].T).abs()
                err_t[t].reshape(-1)[p] = diff.nanmean(dim=1) if cfg.band_mask else diff.mean(1)
    return emb_t.cpu().numpy(), err_t.cpu().numpy()


@torch.no_grad()
def embed_windows(
    model: ContextAutoencoder,
    data: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    *,
    batch_size: int | None = None,
    with_error: bool = True,
    pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Window-by-window embedding of a block with halo (the reference, and the ``paper`` path).

    Same inputs and outputs as :func:`embed_block`; every pixel-date's 11 x 15 x 15
    window is cut out and passed to ``model.encode`` on the model's device.
    ``pixels`` optionally restricts the work to (t, iy, ix) triples in output
    coordinates. ``batch_size``: windows per call, by default 256 on a CPU and
    4096 on an accelerator (about 0.4 GB of S2 windows).
    """
    cfg = model.config
    model.eval()
    dev = model_device(model)
    batch_size = batch_size or (256 if dev.type == "cpu" else 4096)
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
        xt, mt, gt = (torch.from_numpy(a).to(dev) for a in (xw, mw, gaps))
        z = model.encode(xt, mt, gt)
        emb[:, p[:, 0], p[:, 1], p[:, 2]] = z.T.cpu().numpy()
        if with_error:
            rec = model.decode_centre(z, gt)
            diff = (rec - xt[:, c, :, h, h]).abs()
            e = diff.nanmean(dim=1) if cfg.band_mask else diff.mean(dim=1)
            err[p[:, 0], p[:, 1], p[:, 2]] = e.cpu().numpy()
    return emb, err


def embed_region(
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
        out[:, incomplete(ts, ys, xs, shape, c, h)] = np.nan
    return out


@dataclass(eq=False)
class AutoencoderJob(EmbedJob):
    """Embedding with a stage-1 autoencoder of one sensor (``kind="autoencoder"``)."""

    kind = "autoencoder"

    sensor: str
    reads: Reads
    shape: tuple[int, int, int]
    n_features: int
    days: np.ndarray  # extended_days of the whole cube (n_dates // 2 invented on each side)
    context: tuple[int, int]  # (dates, pixels) on either side of a centre
    layers: dict[str, str]
    layer_attrs: dict[str, dict[str, Any]]
    attrs: dict[str, Any]
    edge: str = "nan"
    batch_size: int | None = None
    with_error: bool = True
    #: band-mask models on a cube lacking bands: position of each model band in the
    #: bands read, None for an absent band (a NaN plane)
    expand: tuple[int | None, ...] | None = None

    @classmethod
    def plan(cls, bundle: Any, cube: xr.Dataset, options: Options) -> AutoencoderJob:
        """See :meth:`latentcube.inference.job.EmbedJob.plan`."""
        edge, hide, with_error = options.edge, options.hide, options.with_error
        check_edge(edge)
        if hide:
            raise EmbeddingError(
                f"hide={list(hide)} needs a fused model; {bundle.name} is a "
                f"{bundle.sensors[0]!r} autoencoder"
            )
        model = bundle.model
        cfg = model.config
        sensor = options.sensor or cfg.sensor
        read, expand, extra = tuple(cfg.bands), None, {}
        if cfg.band_mask:  # any subset of the model's bands, at least min_bands
            bdim = band_dim(sensor)
            have = [str(b) for b in cube[bdim].values] if bdim in cube.coords else []
            where = str(cube.attrs.get("source", "the cube"))[:80]
            full = band_positions(
                have, cfg.bands, min_bands=cfg.min_bands, sensor=sensor, where=where
            )
            read = tuple(b for b, p in zip(cfg.bands, full, strict=True) if p is not None)
            if len(read) < len(cfg.bands):
                expand = tuple(read.index(b) if b in read else None for b in cfg.bands)
            extra = {
                "bands_present": ",".join(read),
                "bands_absent": ",".join(b for b in cfg.bands if b not in read),
            }
        cube = select_bands(cube, {sensor: read})
        cls.check_grid(cube, bundle.meta)
        n_t, ny, nx = (int(cube.sizes[d]) for d in ("time", "y", "x"))
        if edge == "nan" and options.refuse_empty:
            cls.check_context(f"the {sensor} model", n_t, (ny, nx), cfg.window, cfg.n_dates)
        c, h = cfg.n_dates // 2, cfg.window // 2
        recon = recon_layer(sensor)
        layers = {"valid": "bool"}
        if with_error:
            layers[recon] = "float32"
        if edge == "pad":
            layers["padded"] = "bool"
        return cls(
            sensor=sensor,
            reads=((sensor, read),),
            shape=(n_t, ny, nx),
            n_features=int(cfg.latent_dim),
            days=extended_days(cube["time"].values.astype("datetime64[D]").astype(np.int64), c),
            context=(c, h),
            layers=layers,
            layer_attrs={k: layer_attrs(k) for k in layers},
            attrs=provenance(
                f"latentcube embedding of {cube.attrs.get('source', 'a cube')}",
                model_config=cfg.model_dump_json(),
                sensor=sensor,
                edge_policy=edge,
                quality_layers=",".join(layers),
                cube_attribution=cube.attrs.get("attribution", ""),
                **extra,
            ),
            edge=edge,
            expand=expand,
            batch_size=options.batch_size,
            with_error=with_error,
        )

    def identity(self) -> dict[str, Any]:
        """See :meth:`latentcube.inference.job.EmbedJob.identity`."""
        return {"edge": self.edge}

    def _halos(self, ts: slice, ys: slice, xs: slice) -> list[tuple[slice, tuple[int, int]]]:
        (c, h), (n_t, ny, nx) = self.context, self.shape
        return [
            halo(ts.start, ts.stop, n_t, c),
            halo(ys.start, ys.stop, ny, h),
            halo(xs.start, xs.stop, nx, h),
        ]

    def block(self, ts: slice, ys: slice, xs: slice) -> tuple[slice, slice, slice]:
        """See :meth:`latentcube.inference.job.EmbedJob.block`."""
        tsl, ysl, xsl = (s for s, _ in self._halos(ts, ys, xs))
        return tsl, ysl, xsl

    def compute(
        self, model: Any, arrays: Arrays, ts: slice, ys: slice, xs: slice
    ) -> dict[str, np.ndarray]:
        """See :meth:`latentcube.inference.job.EmbedJob.compute`."""
        (_, tp), (_, yp), (_, xp) = self._halos(ts, ys, xs)
        data, valid = arrays[self.sensor]
        if self.expand is not None:
            data = expand_bands(data, self.expand)
        c, h = self.context
        out = embed_region(
            model,
            data,
            valid,
            self.days[ts.start : ts.stop + 2 * c],
            (tp, yp, xp),
            ts,
            ys,
            xs,
            self.shape,
            self.edge,
            self.batch_size,
            self.with_error,
        )
        emb = out[:-1]
        ok = np.isfinite(emb).all(axis=0)
        layers = {"embedding": emb, "valid": ok}
        if self.with_error:
            layers[recon_layer(self.sensor)] = out[-1]
        if self.edge == "pad":
            layers["padded"] = incomplete(ts, ys, xs, self.shape, c, h) & ok
        return layers
