"""The cube's Zarr store as a build writes it: layout, metadata, chunk files, staging area.

A build creates the store of its candidate dates in a staging folder next to the
output (:class:`Staging`; metadata and coordinates written directly in xarray's
layout by :func:`write_store`), every loading unit writes its own compressed chunk
files into it (:func:`write_chunks`) and is marked done with its valid pixel counts,
so an interrupted build resumes without reading those units again. The cube's
attributes (provenance, dropped dates, GeoZarr) are :func:`final_attrs`.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.cube.masks import MaskFunction
from latentcube.cube.plan import CubeSpec, Plan, all_cloudy_error
from latentcube.cube.schema import provenance
from latentcube.cube.sentinel2 import screen_s2
from latentcube.sensors import S1_BANDS

__all__ = [
    "CODEC",
    "Staging",
    "array_doc",
    "compressor_doc",
    "cube_attrs",
    "drop_dates",
    "final_attrs",
    "json_attrs",
    "store_chunks",
    "store_encoding",
    "template",
    "write_chunks",
    "write_store",
]


#: Codec of the cube's data variables: Blosc with LZ4 (level 5) after a byte
#: shuffle. Units are compressed as they are written (there is no second pass
#: over the data), so the codec is on the critical path. On real reflectance
#: (a 1024 x 1024 px S2 cube, benchmarks/bench_cube.py) it encodes 3.9x and
#: decodes 3.8x faster than Zstandard level 1 (the codec until 2026-12-02) for a
#: 23 % larger store (1.83x against 2.25x); docs/design.md, "Chunks".
CODEC: dict[str, Any] = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}


def _codecs() -> dict[str, Any]:
    from zarr.codecs import BloscCodec

    return {"compressors": (BloscCodec(**CODEC),)}


def compressor_doc(dtype: np.dtype[Any]) -> dict[str, Any]:
    """The ``zarr.json`` entry of :data:`CODEC` for ``dtype``, as zarr writes it."""
    return {"name": "blosc", "configuration": {"typesize": dtype.itemsize, **CODEC, "blocksize": 0}}


def _compressor() -> Any:
    """:data:`CODEC` as the numcodecs codec that encodes a chunk (typesize: its itemsize)."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
               "bitshuffle": Blosc.BITSHUFFLE}[CODEC["shuffle"]]  # fmt: skip
    return Blosc(cname=CODEC["cname"], clevel=CODEC["clevel"], shuffle=shuffle)


def store_chunks(plan: Plan, nt: int) -> tuple[int, int, int]:
    """(time, y, x) chunks of a store written unit by unit: every unit covers whole chunks.

    ``gcd(time_chunk, chunks["time"])`` dates and ``gcd(tile, chunks["y"|"x"])``
    pixels (clipped to the cube), so that each chunk file is written by exactly
    one unit: no read-modify-write, units can run concurrently, and a chunk torn
    by a kill is rewritten whole on resume.
    """
    spec = plan.spec
    ny, nx = plan.info.geobox.shape
    ct = math.gcd(spec.time_chunk, spec.chunks.get("time", 16))
    cy = math.gcd(spec.tile, spec.chunks.get("y", 256))
    cx = math.gcd(spec.tile, spec.chunks.get("x", 256))
    return min(ct, nt), min(cy, ny), min(cx, nx)


_Coords = dict[str, tuple[str, np.ndarray]]
_DataVars = dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], Any]]


def _layout(plan: Plan, dates: np.ndarray) -> tuple[_Coords, _DataVars]:
    """The store of the candidate ``dates``: coordinates and data variables.

    Coordinates as ``name -> (dim, values)``, data variables as
    ``name -> (dims, shape, chunks, dtype)``.
    """
    gb = plan.info.geobox
    ny, nx = gb.shape
    nt = len(dates)
    spec = plan.spec
    ct, cy, cx = store_chunks(plan, nt)
    nb = len(spec.s2_bands)
    coords = gb.coordinates
    c: _Coords = {
        "time": ("time", plan.s2_times[dates]),
        "band": ("band", np.array(spec.s2_bands, dtype=object)),
        "y": ("y", coords["y"].values.astype(np.float64)),
        "x": ("x", coords["x"].values.astype(np.float64)),
    }
    data: _DataVars = {
        "s2": (("time", "band", "y", "x"), (nt, nb, ny, nx), (ct, nb, cy, cx), np.float32),
        "s2_valid": (("time", "y", "x"), (nt, ny, nx), (ct, cy, cx), np.bool_),
    }
    if plan.with_s1:
        c["s1_band"] = ("s1_band", np.array(S1_BANDS, dtype=object))
        c["s1_time"] = ("time", plan.s1_time()[dates])
        c["s1_orbit"] = ("time", plan.s1_orbit()[dates].astype(object))
        data["s1"] = (("time", "s1_band", "y", "x"), (nt, 2, ny, nx), (ct, 2, cy, cx), np.float32)
        data["s1_valid"] = (("time", "y", "x"), (nt, ny, nx), (ct, cy, cx), np.bool_)
    return c, data


def template(plan: Plan, dates: np.ndarray) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The cube of the candidate ``dates`` (lazy, all masked) and its encoding.

    The store's layout as an xarray dataset: :func:`write_store` writes the
    same store without building it (tested: identical documents and
    coordinate chunks to ``template(...).to_zarr(...)``).
    """
    import dask.array as dsa

    c, data = _layout(plan, dates)
    data_vars = {
        name: (dims, dsa.full(shape, np.nan if np.dtype(dt).kind == "f" else False, dtype=dt,
                              chunks=chunks))
        for name, (dims, shape, chunks, dt) in data.items()
    }  # fmt: skip
    ds = xr.Dataset(data_vars, coords=c)
    ds = ds.rio.write_crs(f"EPSG:{plan.info.epsg}")
    ds = ds.rio.set_spatial_dims(x_dim="x", y_dim="y")
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc[str(name)] = {"chunks": var.data.chunksize, **_codecs()}
        gm = var.encoding.get("grid_mapping") or var.attrs.get("grid_mapping")
        if gm:  # an explicit encoding must keep the CRS link
            enc[str(name)]["grid_mapping"] = gm
    return ds, enc


#: Zarr's default compressor, with which xarray writes the coordinates.
_ZSTD0 = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}


#: ``_FillValue`` attribute xarray writes for a NaN fill value (float64 NaN, base64).
_NAN_ATTR = "AAAAAAAA+H8="


def array_doc(
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: np.dtype[Any],
    dims: Sequence[str],
    attrs: dict[str, Any],
    compressor: dict[str, Any],
) -> dict[str, Any]:
    """Zarr v3 ``zarr.json`` of an array, as xarray writes it (see ``write_store``).

    ``compressor`` is the codec entry after ``bytes``: :data:`_ZSTD0` for
    coordinates, :func:`compressor_doc` for data variables.
    """
    fill: str | bool | int
    if dtype.kind in "OUT":
        data_type, fill, codecs = "string", "", [{"name": "vlen-utf8", "configuration": {}}]
    else:
        data_type = dtype.name
        fill = "NaN" if dtype.kind == "f" else (False if dtype.kind == "b" else 0)
        endian = {} if dtype.itemsize == 1 else {"configuration": {"endian": "little"}}
        codecs = [{"name": "bytes", **endian}]
        if dtype.kind == "f":
            attrs = {**attrs, "_FillValue": _NAN_ATTR}
    return {
        "shape": list(shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [*codecs, compressor],
        "attributes": attrs,
        **({"dimension_names": list(dims)} if dims else {}),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


@functools.cache
def _crs_attrs(epsg: int) -> dict[str, Any]:
    """The ``spatial_ref`` attributes rioxarray writes for a CRS (CF grid mapping)."""
    ds = xr.Dataset(coords={"y": [0.0], "x": [0.0]}).rio.write_crs(f"EPSG:{epsg}")
    return dict(json_attrs(dict(ds["spatial_ref"].attrs)))


def write_store(store: Path, plan: Plan, dates: np.ndarray, attrs: dict[str, Any]) -> None:
    """Create the cube's empty store for the candidate ``dates``: metadata and coordinates.

    Writes the ``zarr.json`` documents and coordinate chunks directly, with
    the same layout, encodings and CF attributes as ``template(...).to_zarr``
    (tested: the same documents, an identical dataset when opened), without
    building a dataset (most of a small build's fixed cost). Coordinates are
    CF-encoded by xarray (:func:`xarray.conventions.encode_cf_variable`) and
    compressed with zarr's default Zstandard level, data variables get the
    cube's chunks and codec and hold no chunk yet (all fill value).
    """
    from numcodecs import VLenUTF8, Zstd
    from xarray.conventions import encode_cf_variable

    c, data = _layout(plan, dates)
    group = {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
    docs: dict[str, dict[str, Any]] = {"": group}
    chunks: dict[str, bytes] = {}
    zstd = Zstd(level=0)  # zarr's default level, as xarray writes coordinates
    for name, (dim, values) in c.items():
        var = encode_cf_variable(xr.Variable(dim, values), name=name)
        arr = np.asarray(var.values)
        attrs_v = json_attrs({k: v for k, v in var.attrs.items() if k != "_FillValue"})
        docs[name] = array_doc(arr.shape, arr.shape, arr.dtype, [dim], attrs_v, _ZSTD0)
        if arr.dtype.kind in "OUT":
            empty, raw = bool((arr == "").all()), VLenUTF8().encode(arr)
        else:
            empty = bool(np.isnan(arr).all() if arr.dtype.kind == "f" else (arr == 0).all())
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        if not empty:  # zarr writes no chunk that holds only the fill value
            chunks[f"{name}/c/0"] = bytes(zstd.encode(raw))
    docs["spatial_ref"] = array_doc(
        (), (), np.dtype(np.int64), [], _crs_attrs(plan.info.epsg), _ZSTD0
    )
    link = {"grid_mapping": "spatial_ref"}
    if plan.with_s1:
        link = {"coordinates": "s1_orbit s1_time", **link}
    for name, (dims, shape, chunk, dtype) in data.items():
        docs[name] = array_doc(
            shape, chunk, np.dtype(dtype), dims, dict(link), compressor_doc(np.dtype(dtype))
        )
    store.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        folder = store / name if name else store
        folder.mkdir(exist_ok=True)
        (folder / "zarr.json").write_text(json.dumps(doc, allow_nan=False))
    for key, blob in chunks.items():
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(blob)


def write_chunks(
    array: Path,
    data: np.ndarray,
    origin: Sequence[int],
    chunks: Sequence[int],
    shape: Sequence[int],
) -> None:
    """Encode ``data`` (placed at ``origin`` of an array of ``shape``) into chunk files.

    The block of a unit covers whole chunks of its store (:func:`store_chunks`),
    so every chunk is encoded and written once, as zarr writes it for this
    store's metadata (:func:`array_doc`): C order, little endian, :data:`CODEC`
    (typesize: the itemsize), key ``c/i/j/...``, a chunk at the
    array's edge padded to the full chunk shape with the fill value (NaN,
    False). Tested byte for byte against ``zarr.Array.__setitem__``. Zarr's
    own write path is not used here: for each chunk it copies the block into a
    fill-value chunk, and it hands every chunk between its event-loop and
    worker threads; on a 1024 x 1024 px build that was about 0.22 CPU-s
    against about 0.09 CPU-s for the encoding itself (per-thread CPU times; see
    docs/design.md, "Chunk writes").
    A chunk torn by a kill is rewritten whole on resume (its unit has no
    marker yet).
    """
    if any(o % c for o, c in zip(origin, chunks, strict=True)):
        raise ValueError(f"internal error: block at {tuple(origin)} is not on the chunk grid")
    codec = _compressor()
    fill = np.nan if data.dtype.kind == "f" else 0
    dtype = data.dtype.newbyteorder("<")
    starts = [range(0, n, c) for n, c in zip(data.shape, chunks, strict=True)]
    for corner in itertools.product(*starts):
        sel = tuple(slice(a, a + c) for a, c in zip(corner, chunks, strict=True))
        block = data[sel]
        # the chunk's extent inside the array; beyond it, padding with the fill value
        inside = [
            min(c, n - o - a) for c, n, o, a in zip(chunks, shape, origin, corner, strict=True)
        ]
        if inside != list(block.shape):  # a block must end at a chunk boundary or the edge
            raise ValueError(f"internal error: block at {tuple(origin)} is not on the chunk grid")
        if inside != list(chunks):
            padded = np.full(chunks, fill, dtype)
            padded[tuple(slice(0, n) for n in inside)] = block
            block = padded
        key = [(o + a) // c for o, a, c in zip(origin, corner, chunks, strict=True)]
        path = array.joinpath("c", *map(str, key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(codec.encode(np.ascontiguousarray(block, dtype=dtype)))


def drop_dates(src: Path, dst: Path, keep: np.ndarray, attrs: dict[str, Any]) -> None:
    """Copy the store ``src`` to ``dst`` with only the dates ``keep`` (indices, ascending).

    Works on the stored values: every array with a ``time`` dimension is read
    as stored (packed integers, no CF decoding) from its chunk files, and its
    kept dates are encoded again with the same chunks and codec
    (:func:`write_chunks`);
    the other arrays are copied file by file. The root group gets ``attrs``.
    Memory: a few chunks of one array (:func:`_drop_chunks`). Unlike a copy
    through xarray (decode to floats, mask, re-pack, re-chunk) nothing is
    converted, so the result holds
    the same stored values and metadata as ``src.isel(time=keep)``;
    benchmarks/bench_cloudmask.py measures what it costs a build.
    """
    import zarr

    keep = np.asarray(keep, np.int64)
    root = json.loads((src / "zarr.json").read_text())
    dst.mkdir(parents=True)
    (dst / "zarr.json").write_text(json.dumps({**root, "attributes": attrs}, allow_nan=False))
    for meta in sorted(src.glob("*/zarr.json")):
        name = meta.parent.name
        doc = json.loads(meta.read_text())
        dims = doc.get("dimension_names") or []
        if "time" not in dims:
            shutil.copytree(src / name, dst / name)
            continue
        axis = dims.index("time")
        shape = list(doc["shape"])
        chunks = list(doc["chunk_grid"]["configuration"]["chunk_shape"])
        shape[axis] = len(keep)
        if len(dims) == 1:  # a coordinate: one chunk of the whole length
            chunks = [len(keep)]
        new = {**doc, "shape": shape}
        new["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": chunks}}
        (dst / name).mkdir()
        (dst / name / "zarr.json").write_text(json.dumps(new, allow_nan=False))
        if len(dims) == 1:
            values = zarr.open_array(src / name, mode="r").get_orthogonal_selection(keep)
            zarr.open_array(dst / name, mode="r+")[:] = values
            continue
        # data variables: chunk by chunk, time first (as every build writes them)
        dtype = np.dtype(doc["data_type"])
        if axis != 0 or doc["codecs"][-1] != compressor_doc(dtype):
            raise ValueError(f"internal error: {src / name} is not laid out as a build writes it")
        _drop_chunks(src / name, dst / name, keep, shape, chunks, dtype)


def _drop_chunks(
    src: Path, dst: Path, keep: np.ndarray, shape: list[int], chunks: list[int], dtype: Any
) -> None:
    """The dates ``keep`` of one data variable (time first), chunk file by chunk file.

    Reads the chunk files with the codec (no zarr indexing: on a 512 px cube
    zarr's reads cost 0.6x the whole copy); for each spatial chunk the source
    time chunks are decoded once and let go when no later kept date is in them
    (memory: a few chunks).
    """
    codec, ct = _compressor(), chunks[0]
    fill = np.nan if dtype.kind == "f" else 0
    other = [range(-(-n // c)) for n, c in zip(shape[1:], chunks[1:], strict=True)]
    for spatial in itertools.product(*other):
        decoded: dict[int, np.ndarray] = {}
        for t0 in range(0, len(keep), ct):
            want = keep[t0 : t0 + ct]
            for k in [k for k in decoded if k < want[0] // ct]:
                del decoded[k]
            for k in np.unique(want // ct):
                if int(k) not in decoded:
                    f = src.joinpath("c", str(k), *map(str, spatial))
                    decoded[int(k)] = (
                        np.frombuffer(
                            codec.decode(f.read_bytes()), dtype.newbyteorder("<")
                        ).reshape(chunks)
                        if f.exists()
                        else np.full(chunks, fill, dtype)
                    )
            block = np.stack([decoded[int(d) // ct][int(d) % ct] for d in want])
            edge = [
                min(c, n - i * c) for n, c, i in zip(shape[1:], chunks[1:], spatial, strict=True)
            ]
            block = block[(slice(None), *(slice(0, e) for e in edge))]
            corner = (t0, *(i * c for i, c in zip(spatial, chunks[1:], strict=True)))
            write_chunks(dst, block, corner, chunks, shape)


# --------------------------------------------------------------------------- staging


@dataclass
class Staging:
    """The work area of a build: the cube's store of every candidate date plus done markers.

    Each marker holds its unit's valid S2 pixel count per date, so the valid
    fractions are known at the end without reading the store again.
    """

    root: Path

    @property
    def store(self) -> Path:
        """The store of every candidate date, moved to the output when complete."""
        return self.root / "store.zarr"

    def marker(self, unit: tuple[int, int, int]) -> Path:
        """The done marker of a loading unit (time block, tile row, tile column)."""
        return self.root / "done" / "{}_{}_{}".format(*unit)

    def mark(self, unit: tuple[int, int, int], counts: Sequence[int]) -> None:
        """Mark ``unit`` done with its valid S2 pixel count per date (atomically)."""
        tmp = self.marker(unit).with_suffix(".tmp")
        tmp.write_text(json.dumps(list(counts)))
        os.replace(tmp, self.marker(unit))  # a marker is complete or absent

    def counts(self, unit: tuple[int, int, int]) -> list[int]:
        """The valid S2 pixel counts a finished ``unit`` recorded."""
        return [int(v) for v in json.loads(self.marker(unit).read_text())]

    def open(self, plan: Plan, mask: MaskFunction) -> tuple[np.ndarray, Any]:
        """Reuse a staging area of the same request, or start a new one.

        Returns the candidate dates and, for a new area, the function that
        creates its store (metadata, coordinates and the cube's attributes)
        and then records the request; None when the area is reused. The
        caller runs it before the first chunk write (in serial builds on the
        writer thread, while the first unit is read). Until it has run the
        area holds no ``request.json``, so a kill before it starts afresh.
        """
        request = self.root / "request.json"
        fp = plan.fingerprint()
        if request.exists():
            doc = json.loads(request.read_text())
            # chunks already written must be in the codec this version writes
            if doc.get("fingerprint") == fp and "candidates" in doc and doc.get("codec") == CODEC:
                return np.asarray(doc["candidates"], np.int64), None
        if self.root.exists():
            shutil.rmtree(self.root)
        counts = screen_s2(plan, mask)
        nt = len(plan.s2_times)
        if counts is None:
            candidates = np.arange(nt)
        else:
            npx = float(np.prod(plan.info.geobox.shape))
            frac = counts / npx
            candidates = np.flatnonzero((frac >= plan.spec.min_valid_fraction) & (counts > 0))
            if candidates.size == 0:
                raise all_cloudy_error(plan, frac)
        (self.root / "done").mkdir(parents=True)
        doc = {"fingerprint": fp, "candidates": [int(v) for v in candidates], "codec": CODEC}
        if counts is not None:
            doc["screen_counts"] = [int(v) for v in counts]

        def create() -> None:
            write_store(self.store, plan, candidates, final_attrs(plan, candidates))
            request.write_text(json.dumps(doc))

        return candidates, create

    def remove(self) -> None:
        """Delete the staging area."""
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- attributes


def cube_attrs(plan: Plan) -> dict[str, Any]:
    """Provenance of a built cube: catalog, items, mask, options, versions, attribution, grid."""
    import importlib.metadata as md

    def ver(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:  # pragma: no cover
            return "unknown"

    years = sorted({str(t)[:4] for t in plan.s2_times.astype("datetime64[Y]")})
    attrs = provenance(
        f"STAC catalog {plan.catalog} ({plan.catalog_url})",
        catalog=plan.catalog,
        catalog_url=plan.catalog_url,
        collections=json.dumps(plan.collections),
        s2_items=json.dumps([it.id for it in plan.s2_items]),
        s1_items=json.dumps([it.id for it in plan.s1_items]),
        mask_function=plan.mask_name,
        mask=json.dumps(plan.mask_info or {"name": plan.mask_name}),
        latentcube_config=plan.spec.model_dump_json(),
        latentcube_request=plan.fingerprint(),
        odc_stac_version=ver("odc-stac"),
        pystac_client_version=ver("pystac-client"),
        attribution=f"Contains modified Copernicus Sentinel data {years[0]}-{years[-1]}",
        history=(
            "S2: DN -> reflectance (baseline >= 04.00: DN - 1000), / 10000, clip [0, 1]; "
            "masked by the mask function; tiles of one solar day merged (clear pixel wins). "
            "S1 (linear gamma0 RTC): centred mean over "
            f"{plan.spec.s1_window} acquisitions of one orbit direction -> dB -> "
            "clip [-30, 5] -> (dB + 30) / 35; nearest acquisition within "
            f"{plan.spec.s1_max_gap_days:g} days, else masked."
        ),
    )
    attrs.update(plan.info.attrs())
    return attrs


def final_attrs(plan: Plan, kept: np.ndarray) -> dict[str, Any]:
    """The attributes of a cube of the S2 dates ``kept``: provenance, dropped dates, GeoZarr."""
    from latentcube.io import geozarr_attrs

    dropped = np.ones(len(plan.s2_times), bool)
    dropped[kept] = False
    attrs = cube_attrs(plan)
    attrs["dropped_dates"] = json.dumps(
        [np.datetime_as_string(t, "D") for t in plan.s2_times[dropped]]
    )
    coords = plan.info.geobox.coordinates
    grid = xr.Dataset(coords={"y": coords["y"].values, "x": coords["x"].values})
    grid = grid.rio.write_crs(f"EPSG:{plan.info.epsg}")
    geo = {k: v for k, v in geozarr_attrs(grid).items() if v is not None}
    return json_attrs({**attrs, **geo})


def store_encoding(ds: xr.Dataset, spec: CubeSpec) -> dict[str, dict[str, Any]]:
    """Zarr encoding of a cube copied into a new store: ``spec.chunks`` and :data:`CODEC`."""
    ct = min(spec.chunks.get("time", 16), ds.sizes["time"])
    cy = min(spec.chunks.get("y", 256), ds.sizes["y"])
    cx = min(spec.chunks.get("x", 256), ds.sizes["x"])
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        sizes = {"time": ct, "y": cy, "x": cx}
        enc[str(name)] = {
            "chunks": tuple(sizes.get(str(d), ds.sizes[d]) for d in var.dims),
            **_codecs(),
        }
    return enc


def json_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` as plain JSON values (arrays as lists, other objects as strings)."""

    def plain(o: Any) -> Any:
        return o.tolist() if hasattr(o, "tolist") else str(o)

    return dict(json.loads(json.dumps(attrs, default=plain)))
