"""The embedding store: its layout, defined once, and the checks of it.

An embedding store is a Zarr v3 group written by :mod:`latentcube.inference`:

* ``embedding`` (feature, time, y, x), features ``F01``, ``F02``, ..., on the
  cube's grid, time axis and CRS; chunk files (feature, 1, y, x);
* quality layers (time, y, x) beside it, chunk files (1, y, x):

  - ``valid``: an embedding exists there (bool);
  - ``recon_mae_<sensor>`` (a stage-1 model of ``sensor``) or ``recon_mae`` (a
    fused model: the reference sensor's): the model's reconstruction of the
    centre pixel at the centre date against the input, mean absolute error over
    bands;
  - ``padded`` (edge policy ``pad``): embedded from an incomplete context;
  - ``sensors`` (fused models): bit mask of the sensors that contributed
    (CF ``flag_masks`` / ``flag_meanings``);

* attributes: provenance (:func:`latentcube.cube.schema.provenance`), the
  model's configuration, ``sensor``, ``edge_policy``, ``quality_layers`` (the
  names above, comma-separated), the chunk compression (:data:`COMPRESSION_ATTR`)
  and, for stores written chunk by chunk, the run's
  identity (:data:`IDENTITY_ATTR`) and :data:`COMPLETE_ATTR`, written ``False``
  with the store's metadata and set ``True`` only after every chunk is written.
  Completeness is decided by that attribute, i.e. by what was written, never by
  the presence or absence of files beside the store.

Every array of the store (the coordinates too) is compressed with Zstandard
(zarr's default codec, the default) or gzip (``compression="gzip"``): zlib is
part of every GDAL build with the Zarr driver, Zstandard and Blosc are optional,
so a gzip store opens in any GDAL >= 3.11, a zstd store only where GDAL was
built with zstd.

In memory (the lazy result of :func:`latentcube.inference.embed`) the same
layers ride along as non-index coordinates of the ``embedding`` DataArray.

This module imports only numpy, xarray and the base modules, so readers of
embedding stores (the accessor, evaluation) need no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from latentcube.errors import EmbeddingError

__all__ = [
    "COMPLETE_ATTR",
    "COMPRESSIONS",
    "COMPRESSION_ATTR",
    "DIMS",
    "IDENTITY_ATTR",
    "LAYER_DIMS",
    "VARIABLE",
    "check_compression",
    "check_dtype",
    "embedding_array",
    "embedding_dataset",
    "feature_names",
    "layer_attrs",
    "open_embedding",
    "recon_layer",
    "store_encoding",
    "store_status",
]

#: Name of the embedding variable.
VARIABLE = "embedding"
#: Dimensions of the embedding.
DIMS: tuple[str, str, str, str] = ("feature", "time", "y", "x")
#: Dimensions of every quality layer.
LAYER_DIMS: tuple[str, str, str] = ("time", "y", "x")
#: Root attribute holding the identity of a chunk-by-chunk run (model, cube, options).
IDENTITY_ATTR = "latentcube_identity"
#: Root attribute: False while a chunk-by-chunk run is writing, True once every chunk is.
COMPLETE_ATTR = "latentcube_complete"

#: Root attribute: the codec of the store's chunks (one of :data:`COMPRESSIONS`).
COMPRESSION_ATTR = "latentcube:compression"
#: Chunk compressions of an embedding store; the first is the default.
COMPRESSIONS: tuple[str, ...] = ("zstd", "gzip")
#: gzip level: the fastest; float embeddings gain little from higher levels.
GZIP_LEVEL = 1

StoreStatus = Literal["absent", "foreign", "unfinished", "complete", "legacy"]


def feature_names(n: int) -> list[str]:
    """``F01``, ``F02``, ... for ``n`` features."""
    return [f"F{i + 1:02d}" for i in range(n)]


def recon_layer(sensor: str | None) -> str:
    """Name of the reconstruction-error layer: ``recon_mae_<sensor>``, or ``recon_mae`` (fused)."""
    return f"recon_mae_{sensor}" if sensor else "recon_mae"


def layer_attrs(
    name: str, *, fused: bool = False, sensors: Sequence[str] = (), reference: str = "s2"
) -> dict[str, Any]:
    """CF attributes of the quality layer ``name`` (see the module docstring)."""
    if name == "valid":
        what = "some sensor contributed" if fused else "full or padded context, valid centre"
        return {"long_name": f"an embedding exists ({what})"}
    if name == "padded":
        return {"long_name": "embedded from a padded (incomplete) context"}
    if name == "sensors":
        return {
            "long_name": "sensors that contributed to the embedding",
            "flag_masks": [1 << k for k in range(len(sensors))],
            "flag_meanings": " ".join(sensors),
        }
    if name == "recon_mae":
        return {
            "long_name": f"{reference} centre-pixel reconstruction MAE from the fused "
            "embedding (band mean)"
        }
    if name.startswith("recon_mae_"):
        sensor = name.removeprefix("recon_mae_")
        return {
            "long_name": f"{sensor} centre-pixel reconstruction error, mean absolute "
            "error over bands at the centre date",
            "units": "1",
        }
    raise EmbeddingError(f"{name!r} is not a quality layer of an embedding store")


def _embedding_long_name(attrs: Mapping[str, Any]) -> str:
    sensor = str(attrs.get("sensor", ""))
    if "fusion_config" in attrs:
        return f"fused {sensor} embedding"
    return f"{sensor} context-autoencoder latent".strip()


def embedding_array(
    obj: xr.Dataset | xr.DataArray,
    *,
    error: type[Exception] = EmbeddingError,
    any_order: bool = False,
) -> xr.DataArray:
    """The (feature, time, y, x) embedding of a dataset or array, checked.

    Parameters
    ----------
    obj
        An embedding store's dataset (holding :data:`VARIABLE`) or the embedding
        DataArray itself.
    error
        Exception type raised (callers of other layers raise their own).
    any_order
        Accept the four dimensions in any order and return them transposed to
        :data:`DIMS`; otherwise the order must be :data:`DIMS`.
    """
    if isinstance(obj, xr.Dataset):
        if VARIABLE not in obj:
            raise error(f"this dataset has no {VARIABLE!r} variable (has {list(obj.data_vars)})")
        obj = obj[VARIABLE]
    dims = tuple(str(d) for d in obj.dims)
    if dims == DIMS:
        return obj
    if any_order and set(dims) == set(DIMS) and len(dims) == len(DIMS):
        return obj.transpose(*DIMS)
    raise error(f"expected an embedding with dims {DIMS}, got {dims}")


def embedding_dataset(emb: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """The storable form of an embedding: ``embedding`` plus the quality layers as variables.

    Accepts the lazy ``DataArray`` of :func:`latentcube.inference.embed` (quality
    layers as coordinates) or a dataset already in this form (returned unchanged).
    """
    if isinstance(emb, xr.Dataset):
        return emb
    embedding_array(emb)
    quality = [str(k) for k in emb.coords if k not in emb.dims and k != "spatial_ref"]
    ds = emb.to_dataset(promote_attrs=True).reset_coords(quality)
    ds[VARIABLE].attrs = {"long_name": _embedding_long_name(ds.attrs)}
    return ds.rio.write_crs(emb.rio.crs) if emb.rio.crs is not None else ds


def check_dtype(dtype: str) -> str:
    """``dtype`` when a store can hold it (float32, float16), else an :class:`EmbeddingError`."""
    if dtype not in ("float32", "float16"):
        raise EmbeddingError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    return dtype


def check_compression(compression: str) -> str:
    """``compression`` when it is one of :data:`COMPRESSIONS`, else an :class:`EmbeddingError`."""
    if compression not in COMPRESSIONS:
        raise EmbeddingError(
            f"compression must be one of {', '.join(map(repr, COMPRESSIONS))}, got {compression!r}"
        )
    return compression


def store_encoding(
    ds: xr.Dataset, dtype: str, chunk_xy: int = 512, compression: str = "zstd"
) -> dict[str, dict[str, Any]]:
    """Zarr encoding of an embedding dataset: the store's dtype, chunk files, fill values, codec.

    Chunk files are (feature, 1, cy, cx) for the embedding and (1, cy, cx) for
    the layers, so every file holds one date; ``cy``/``cx`` are the dataset's
    Dask chunks, or ``chunk_xy`` for in-memory data. Floating layers are stored
    as ``dtype`` with NaN as fill value. ``compression="zstd"`` leaves zarr's
    default codec (Zstandard level 0), so the arrays of such stores (chunk files
    and metadata) are byte for byte those of earlier versions; ``"gzip"``
    compresses every array, the coordinates too (GDAL reads ``x``/``y`` for the
    georeferencing), with gzip level :data:`GZIP_LEVEL`.
    """
    check_dtype(dtype)
    check_compression(compression)
    chunks = ds[VARIABLE].chunks
    if chunks:
        cy, cx = chunks[2][0], chunks[3][0]
    else:
        cy, cx = min(chunk_xy, ds.sizes["y"]), min(chunk_xy, ds.sizes["x"])
    enc: dict[str, dict[str, Any]] = {
        VARIABLE: {"dtype": dtype, "chunks": (ds.sizes["feature"], 1, cy, cx), "_FillValue": np.nan}
    }
    for name in ds.data_vars:
        if name == VARIABLE:
            continue
        enc[str(name)] = {"chunks": (1, cy, cx)}
        if ds[name].dtype.kind == "f":
            enc[str(name)].update(dtype=dtype, _FillValue=np.nan)
    if compression == "gzip":
        from zarr.codecs import GzipCodec

        for name in ds.variables:
            enc.setdefault(str(name), {})["compressors"] = (GzipCodec(level=GZIP_LEVEL),)
    return enc


def _root_attrs(path: Path) -> dict[str, Any] | None:
    """Attributes of the Zarr v3 group at ``path``, or None when it is not one."""
    meta = path / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else {}


def store_status(path: str | os.PathLike[str]) -> tuple[StoreStatus, str | None]:
    """What is at ``path``, read from the store's own metadata, and the run's identity.

    Returns
    -------
    tuple
        The status and the identity of the run that wrote it (None for stores
        written in one piece). Status: ``"absent"`` (nothing there);
        ``"foreign"`` (something that is not an embedding store, e.g. a cube);
        ``"unfinished"`` (a chunk-by-chunk run that has not written every chunk:
        :data:`COMPLETE_ATTR` is False); ``"complete"``; ``"legacy"`` (a
        chunk-by-chunk store from a version without :data:`COMPLETE_ATTR`,
        whose completeness is unknown).
    """
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return "absent", None
    if p.suffix == ".zip" and p.is_file():  # a zipped store is written in one piece
        return "complete", None
    attrs = _root_attrs(p) if p.is_dir() else None
    if attrs is None or not (p / VARIABLE / "zarr.json").is_file():
        return "foreign", None
    identity = attrs.get(IDENTITY_ATTR)
    identity = str(identity) if identity is not None else None
    done = attrs.get(COMPLETE_ATTR)
    if done is None:
        return ("complete" if identity is None else "legacy"), identity
    return ("complete" if done else "unfinished"), identity


def open_embedding(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open an embedding store with its CRS; floating layers as float32.

    Raises
    ------
    EmbeddingError
        When ``path`` is not an embedding store, or is one whose run has not
        finished (resume it by running the same ``embed`` again).
    FileNotFoundError
        When nothing is at ``path``.
    """
    from latentcube.io import open_zarr

    status, _ = store_status(path)
    if status == "absent":
        raise FileNotFoundError(f"no embedding store at {path}")
    if status == "foreign":
        raise EmbeddingError(f"{path} is not an embedding store (no {VARIABLE!r} array)")
    if status == "unfinished":
        raise EmbeddingError(
            f"{path} is an unfinished embedding run: run the same 'latentcube embed' again "
            "to complete it"
        )
    ds = open_zarr(path)
    embedding_array(ds)
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f" and ds[v].dtype != np.float32:
            enc = ds[v].encoding
            ds[v] = ds[v].astype(np.float32)
            ds[v].encoding = enc
    return ds


def describe_store(path: str | os.PathLike[str]) -> str:
    """One line describing an embedding store: sizes and valid pixel-dates.

    For a fused store, also how many valid pixel-dates had no reference sensor
    (embedded from the others, e.g. S1 under clouds).
    """
    ds = open_embedding(path)
    n = int(ds["valid"].sum())
    line = f"{dict(ds['embedding'].sizes)}, {n} valid pixel-dates"
    if "sensors" in ds:
        only = int(((ds["sensors"] & 1) == 0).where(ds["valid"], False).sum())
        meanings = str(ds["sensors"].attrs.get("flag_meanings", "s2")).split()
        reference = meanings[0] if meanings else "s2"
        line += f" ({only} without {reference})"
    return line
