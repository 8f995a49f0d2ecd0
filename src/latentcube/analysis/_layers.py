"""What the analysis functions read from an embedding: the vectors, the valid mask, the error.

An embedding comes either as a store opened with :func:`latentcube.open_embedding`
(a ``Dataset``: ``embedding`` (feature, time, y, x) with the quality layers as
variables beside it) or as the lazy ``DataArray`` of :func:`latentcube.embed` (the
quality layers as non-index coordinates). Layers read here:

* ``valid`` (time, y, x): an embedding exists. A pixel-date counts only where
  ``valid`` is true *and* every feature is finite; without a ``valid`` layer,
  finiteness alone decides.
* ``recon_mae`` (fused models) or ``recon_mae_<sensor>`` (stage-1 models): the
  centre-pixel reconstruction error, used for quality weighting.

The names come from :mod:`latentcube.embedding_store`, which defines the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.embedding_store import DIMS, VARIABLE
from latentcube.errors import EmbeddingError

__all__ = [
    "BLOCK_BYTES",
    "EmbeddingParts",
    "embedding_parts",
    "grid_attrs",
    "parse_period",
    "source_of",
    "whole_time",
    "with_crs",
]

# The layout of an embedding store is defined once, in latentcube.embedding_store.


@dataclass(frozen=True)
class EmbeddingParts:
    """The pieces of an embedding the analysis uses.

    Attributes
    ----------
    embedding
        (feature, time, y, x), with only index coordinates and ``spatial_ref``.
    valid
        (time, y, x) bool: the pixel-date counts (``valid`` and all features finite).
    error
        (time, y, x) reconstruction error, or None when the embedding has none.
    error_name
        The name of the error layer (``""`` when there is none).
    attrs
        The attributes of the embedding (dataset attributes for a store).
    source
        The store's path, or the ``source`` attribute.
    """

    embedding: xr.DataArray
    valid: xr.DataArray
    error: xr.DataArray | None
    error_name: str
    attrs: dict[str, Any]
    source: str


def _layer(obj: xr.Dataset | xr.DataArray, name: str) -> xr.DataArray | None:
    if isinstance(obj, xr.Dataset):
        return obj[name] if name in obj.variables and name not in obj.dims else None
    return obj.coords[name] if name in obj.coords and name not in obj.dims else None


def _error_name(obj: xr.Dataset | xr.DataArray, wanted: str | None) -> str:
    names = list(obj.variables if isinstance(obj, xr.Dataset) else obj.coords)
    errors = sorted(
        str(n) for n in names if str(n) == "recon_mae" or str(n).startswith("recon_mae_")
    )
    if wanted is not None:
        if wanted not in errors:
            raise EmbeddingError(
                f"the embedding has no error layer {wanted!r}; it has {errors or 'none'}"
            )
        return wanted
    if not errors:
        return ""
    if "recon_mae" in errors:
        return "recon_mae"
    if len(errors) > 1:
        raise EmbeddingError(f"several error layers {errors}: choose one with error_layer=")
    return errors[0]


def source_of(obj: xr.Dataset | xr.DataArray) -> str:
    """The store path an embedding was opened from, else its ``source`` attribute."""
    src = obj.encoding.get("source")
    if src:
        return str(src)
    return str(obj.attrs.get("source", ""))


def embedding_parts(
    obj: xr.Dataset | xr.DataArray, *, error_layer: str | None = None
) -> EmbeddingParts:
    """Split an embedding into its vectors, its valid mask and its error layer.

    Parameters
    ----------
    obj
        An embedding store opened with :func:`latentcube.open_embedding` or the
        result of :func:`latentcube.embed` / :func:`latentcube.embed_fused`.
    error_layer
        Name of the error layer; default ``recon_mae`` if present, else the single
        ``recon_mae_<sensor>``.

    Returns
    -------
    EmbeddingParts
        Lazy where the input is lazy; nothing is computed here.

    Raises
    ------
    EmbeddingError
        When there is no ``embedding`` (feature, time, y, x).
    """
    if isinstance(obj, xr.Dataset):
        if VARIABLE not in obj.data_vars:
            raise EmbeddingError("this dataset has no 'embedding' variable")
        emb = obj[VARIABLE]
        attrs = {**emb.attrs, **obj.attrs}
    else:
        emb = obj
        attrs = dict(obj.attrs)
    if tuple(emb.dims) != DIMS:
        raise EmbeddingError(f"expected an embedding {DIMS}, got {tuple(emb.dims)}")
    extra = [k for k in emb.coords if k not in emb.dims and k != "spatial_ref"]
    vectors = emb.drop_vars(extra)
    finite = (abs(vectors) < np.inf).all("feature")  # False for NaN and +-inf
    valid = _layer(obj, "valid")
    if valid is not None:
        if tuple(valid.dims) != DIMS[1:]:
            raise EmbeddingError(f"'valid' must be (time, y, x), got {tuple(valid.dims)}")
        ok = valid.astype(bool) & finite
    else:
        ok = finite
    ok = ok.drop_vars([k for k in ok.coords if k not in ok.dims and k != "spatial_ref"])
    name = _error_name(obj, error_layer)
    error = None
    if name:
        layer = _layer(obj, name)
        assert layer is not None
        error = layer.drop_vars([k for k in layer.coords if k not in layer.dims])
    return EmbeddingParts(
        embedding=vectors,
        valid=ok.rename("valid"),
        error=error,
        error_name=name,
        attrs=attrs,
        source=source_of(obj),
    )


def grid_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The GeoZarr ``proj:``/``spatial:`` attributes among ``attrs`` (the grid is unchanged)."""
    return {k: v for k, v in attrs.items() if k.startswith(("proj:", "spatial:"))}


def with_crs(ds: xr.Dataset, like: xr.DataArray) -> xr.Dataset:
    """``ds`` with the CRS of ``like`` written as CF ``spatial_ref`` (when it has one)."""
    crs = like.rio.crs
    return ds.rio.write_crs(crs) if crs is not None else ds


def parse_period(period: str | tuple[Any, Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``"A/B"`` or ``(A, B)`` as the first day and the last day (inclusive) of the period.

    Both ends are dates; a time of day is dropped, so ``"2019-07-01/2020-06-30"``
    holds every acquisition from 2019-07-01 00:00 to 2020-06-30 23:59:59.
    """
    if isinstance(period, str):
        parts = period.split("/")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise EmbeddingError(f"a period is 'START/END' (dates), got {period!r}")
        a, b = parts
    else:
        try:
            a, b = period
        except (TypeError, ValueError):
            raise EmbeddingError(
                f"a period is 'START/END' or (start, end), got {period!r}"
            ) from None
    try:
        start, end = (
            pd.Timestamp(str(a).strip()).normalize(),
            pd.Timestamp(str(b).strip()).normalize(),
        )
    except ValueError as exc:
        raise EmbeddingError(f"cannot read the period {period!r} as dates: {exc}") from None
    if end < start:
        raise EmbeddingError(f"the period {period!r} ends before it starts")
    return start, end


#: Memory a block with the whole time axis may take (float64 values and work arrays).
BLOCK_BYTES = 256 * 2**20


def whole_time(arrays: list[xr.DataArray], n_values: int) -> list[xr.DataArray]:
    """Rechunk Dask-backed arrays to the whole time axis (and all features), spatially bounded.

    A per-pixel computation over all dates (medians, quantiles, anomalies) needs each
    pixel's series in one block. The spatial chunks are kept, or split so that
    ``n_values`` float64 numbers per pixel (features x dates, times a few work
    arrays) stay under :data:`BLOCK_BYTES` per block. NumPy-backed arrays are
    returned unchanged.
    """
    if all(a.chunks is None for a in arrays):
        return arrays
    ref = next(a for a in arrays if a.chunks is not None)
    side = max(8, int(np.sqrt(BLOCK_BYTES / (8 * 4 * max(n_values, 1)))))
    cy = min(max(ref.chunksizes["y"]), side)
    cx = min(max(ref.chunksizes["x"]), side)
    out = []
    for a in arrays:
        spec = {"time": -1, "y": cy, "x": cx}
        if "feature" in a.dims:
            spec["feature"] = -1
        out.append(a.chunk(spec))
    return out
