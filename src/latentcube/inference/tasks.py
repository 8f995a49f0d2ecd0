"""What one embedding task does, on a Dask worker or in the calling process.

A task embeds one output chunk: it gets the model and the cube from per-process
caches (opened once per worker, keyed by the files' digests), reads the chunk's
block from the cube (only the store chunks it touches), runs the job, writes the
chunk's region of every layer into the store in place and then leaves a marker
in ``.<store>.progress/``. The driver side is :mod:`latentcube.inference.engine`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.cube.schema import select_bands
from latentcube.inference.job import Arrays, EmbedJob
from latentcube.io import hash_zarr_metadata
from latentcube.sensors import band_dim

__all__ = [
    "cube_fingerprint",
    "embed_chunk",
    "file_digest",
    "preload",
    "progress_dir",
    "sensor_arrays",
]


def sensor_arrays(cube: xr.Dataset, sensor: str) -> tuple[Any, Any]:
    """(time, band, y, x) values and (time, y, x) validity of one sensor, as they are."""
    data = cube[sensor].transpose("time", band_dim(sensor), "y", "x").data
    valid = cube[f"{sensor}_valid"].transpose("time", "y", "x").data
    return data, valid


def progress_dir(out: str | os.PathLike[str]) -> Path:
    """Folder of the per-chunk markers of a store being written (beside it)."""
    out = Path(out)
    return out.with_name(f".{out.name}.progress")


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
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
    if hash_zarr_metadata(root, h):
        return h.hexdigest()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for f in files:
        st = f.stat()
        name = f.relative_to(root) if root.is_dir() else f.name
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


_CACHE_SIZE = 4
_MODELS: dict[tuple[str, str, str], Any] = {}
_CUBES: dict[tuple[str, str, Any], xr.Dataset] = {}


def _put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Keep ``value`` under ``key``, forgetting the oldest entries beyond the cache size."""
    cache.pop(key, None)
    while len(cache) >= _CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _cached(cache: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    if key not in cache:
        _put(cache, key, make())
    return cache[key]


def preload(
    model: tuple[str, str, str, Any],
    cube: tuple[str, str, tuple[tuple[str, tuple[str, ...]], ...], Any],
) -> None:
    """Serve this process's tasks from a model and cube the caller has opened already.

    ``model``: (path, digest, device, model on that device); ``cube``: (path,
    fingerprint, reads, cube), keyed as :func:`_worker_model` and
    :func:`_worker_cube` key them.
    """
    path, digest, device, net = model
    _put(_MODELS, (path, digest, device), net)
    c_path, c_print, reads, opened = cube
    _put(_CUBES, (c_path, c_print, reads), select_bands(opened, dict(reads)))


def _worker_model(path: str, digest: str, device: str = "cpu") -> Any:
    """The model of a bundle, loaded once per worker process onto ``device``.

    The bundle is read onto the CPU (whatever device it was trained on) and then
    moved to ``device`` (``"cuda"`` in a GPU worker is the one GPU it sees).
    Keyed by the file's SHA-256 (``digest``, from the driver) as well as its path,
    so a worker of a long-lived cluster loads a bundle replaced at the same path
    afresh instead of reusing the old weights.
    """
    from latentcube.bundle import ModelBundle

    def make() -> Any:
        return ModelBundle.load(path).model.to(device).eval()

    return _cached(_MODELS, (path, digest, device), make)


def _worker_cube(
    path: str, fingerprint: str, bands: tuple[tuple[str, tuple[str, ...]], ...]
) -> xr.Dataset:
    """The cube with the bands a job reads, opened once per worker process.

    Opened by :func:`latentcube.cube.readers.open_cube`, the one function that
    opens a cube path (with the reader's casts: float32 data, bool masks, scale
    factors applied), lazily; a task reads only the block it needs. Keyed by
    :func:`cube_fingerprint` (from the driver) as well as the path, so a cube
    rebuilt at the same path is opened again, not read through stale metadata.
    The driver has validated the values already; workers check the layout only.
    """
    from latentcube.cube.readers import open_cube

    def make() -> xr.Dataset:
        present = {s: b for s, b in bands}
        return select_bands(open_cube(path, check_values=False), present)

    return _cached(_CUBES, (path, fingerprint, bands), make)


def _read_block(cube: xr.Dataset, job: EmbedJob, region: tuple[slice, slice, slice]) -> Arrays:
    """The block ``region`` of every sensor the job reads, in memory (float32, bool)."""
    import dask

    tb, yb, xb = region
    out = {}
    for s, _ in job.reads:
        # read by the task itself (no scheduler inside a task): only the chunks it touches
        data, valid = dask.compute(
            *sensor_arrays(cube.isel(time=tb, y=yb, x=xb), s), scheduler="synchronous"
        )
        out[s] = (
            np.ascontiguousarray(data, dtype=np.float32),
            np.ascontiguousarray(valid, dtype=bool),
        )
    return out


def embed_chunk(
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
    device: str = "cpu",
) -> int:
    """Embed one output chunk, write it into the store, then mark it done.

    The model runs on ``device`` (whole tiles per call on an accelerator); the
    layers come back to the host as float32 before they are written. Returns the
    number of pixel-dates of the chunk. The marker is written after the data, so
    a chunk interrupted half way is recomputed and rewritten by the next run; a
    chunk that already has a marker (a task rerun after a lost worker) is not
    computed again.
    """
    import zarr

    marker = progress_dir(out_path) / key
    if marker.exists():
        return int(marker.read_text())
    model = _worker_model(model_path, model_digest, device)
    cube = _worker_cube(cube_path, cube_print, job.reads)
    layers = job.compute(model, _read_block(cube, job, job.block(ts, ys, xs)), ts, ys, xs)
    for name, values in layers.items():
        arr_z = zarr.open_array(Path(out_path) / name, mode="r+", zarr_format=3)
        region = (slice(None),) * (values.ndim - 3) + (ts, ys, xs)
        arr_z[region] = values.astype(arr_z.dtype)
    n = int(layers["valid"].size)
    marker.write_text(str(n))
    return n
