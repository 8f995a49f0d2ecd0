"""The embedding engine: the machinery every model kind shares.

A model is embedded by a *job* (:mod:`latentcube.inference.job`) picked from the
bundle's kind; the engine cuts the cube into output chunks of (time, y, x), gives
each chunk's job the cube block it asks for (the chunk plus its context halo),
and puts the layers it returns together:

* :func:`embed`: lazily, one Dask task per chunk, as an ``embedding`` DataArray
  whose quality layers ride along as coordinates (one stacked array holds every
  layer of a chunk, so computing them together runs the model once per chunk);
* :func:`embed_to_zarr`: into a Zarr store, chunk by chunk, resumable, on a local
  or remote Dask cluster or in this process, with the output locked for the run
  and an existing output replaced only once its replacement is complete.

Both paths run the same job code on the same blocks, so they give the same
values (tested on every reader's sample).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

from latentcube.bundle import ModelBundle
from latentcube.cube.schema import select_bands
from latentcube.embedding_store import (
    COMPLETE_ATTR,
    COMPRESSION_ATTR,
    DIMS,
    IDENTITY_ATTR,
    LAYER_DIMS,
    VARIABLE,
    check_compression,
    check_dtype,
    embedding_dataset,
    feature_names,
    store_encoding,
    store_status,
)
from latentcube.errors import EmbeddingError, LatentcubeError
from latentcube.inference.autoencoder import model_device
from latentcube.inference.chunks import check_edge, chunk_grid, chunk_sizes
from latentcube.inference.cluster import Placement, check_resources, local_cluster, placement
from latentcube.inference.job import Arrays, EmbedJob, Options, job_class
from latentcube.inference.tasks import (
    cube_fingerprint,
    embed_chunk,
    file_digest,
    preload,
    progress_dir,
    sensor_arrays,
)
from latentcube.store_metadata import model_attrs, stac_item_path, store_attrs, write_stac_item

__all__ = [
    "as_bundle",
    "cube_fingerprint",
    "embed",
    "embed_to_zarr",
    "plan",
    "progress_dir",
    "write_embedding",
]

EdgePolicy = Literal["nan", "pad"]


# --------------------------------------------------------------------------------------
# Bundles and jobs


#: What the engine embeds with: a bundle, the path of one, or a bare model.
BundleLike = ModelBundle | str | os.PathLike[str] | torch.nn.Module


def as_bundle(model: BundleLike) -> ModelBundle:
    """A :class:`~latentcube.bundle.ModelBundle` from a bundle, a model or a path to one."""
    if isinstance(model, ModelBundle):
        return model
    if isinstance(model, str | os.PathLike):
        return ModelBundle.load(model)
    return ModelBundle(model)  # type: ignore[arg-type]


def plan(bundle: BundleLike, cube: xr.Dataset, options: Options | None = None) -> EmbedJob:
    """The job embedding ``cube`` with ``bundle``, from the job registered for its kind."""
    options = options or Options()
    check_edge(options.edge)
    bundle = as_bundle(bundle)
    bundle.model.eval()
    return job_class(bundle.kind).plan(bundle, cube, options)


def on_device(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``model`` itself when it is on ``device`` already, else a copy of it moved there.

    The caller's model is never moved: a bundle loaded on the CPU stays usable there.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if model_device(model) == dev:
        return model
    return copy.deepcopy(model).to(dev).eval()


class _BlockProgress:
    """A tqdm bar fed by every chunk computed in this process: chunks and pixel-dates per second.

    Used as a context manager around a local (threaded or synchronous) Dask compute
    of a lazy embedding (:func:`write_embedding`); :func:`embed_to_zarr` feeds the
    same kind of bar from its own loop.
    """

    active: _BlockProgress | None = None

    def __init__(self, total: int, enabled: bool, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=initial, disable=not enabled, unit="chunk", desc="embedding"
        )
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


def _stacked_chunk(
    model: Any, job: EmbedJob, arrays: Arrays, ts: slice, ys: slice, xs: slice
) -> np.ndarray:
    """Every layer of one chunk stacked as float32: the embedding, then each quality layer."""
    layers = job.compute(model, arrays, ts, ys, xs)
    out = np.concatenate(
        [layers[VARIABLE]] + [np.asarray(layers[k], np.float32)[None] for k in job.layers]
    )
    bar = _BlockProgress.active
    if bar is not None:
        bar.update(int(np.prod(out.shape[1:])))
    return out


# --------------------------------------------------------------------------------------
# In memory (lazy)


def embed(
    cube: xr.Dataset,
    bundle: BundleLike,
    *,
    sensor: str | None = None,
    chunks: int | Mapping[str, int] | None = None,
    edge: EdgePolicy = "nan",
    batch_size: int | None = None,
    with_error: bool = True,
    hide: Sequence[str] = (),
    device: str | torch.device = "cpu",
) -> xr.DataArray:
    """Embed every pixel and date of a cube with any model, lazily.

    Parameters
    ----------
    cube
        A cube in the data model (numpy- or Dask-backed), holding the bands the
        model needs (layout checked here; :func:`latentcube.open_cube` checks values).
    bundle
        A :class:`~latentcube.bundle.ModelBundle`, the path of one, or a model
        (a stage-1 autoencoder or a fused model). The job that embeds it is picked
        from the bundle's kind: a stage-1 model embeds its sensor (dense path for
        ``fast``/``tiny``, window by window for ``paper``); a fused model embeds
        every sensor present per pixel-date.
    sensor
        Stage-1 models: the cube variable to embed (default: the model's sensor).
    chunks
        Output chunk sizes ``{"time": 64, "y": 256, "x": 256}`` (an int sets y
        and x). Each chunk is one Dask task reading its cube block plus the
        context halo, so memory is bounded by the chunk size; the output does
        not depend on the chunking.
    edge
        ``"nan"`` (default, the paper's crop) or ``"pad"`` (stage-1 models; see
        :mod:`latentcube.inference.autoencoder`).
    batch_size
        Pixels per model call (default on a CPU: 2048 dense, 256 window by window,
        8192 pixel-dates per fusion call; on an accelerator: every pixel of a
        chunk's date in one call).
    with_error
        Add the centre-pixel reconstruction error layer (``recon_mae_<sensor>``,
        or ``recon_mae`` for a fused model).
    hide
        Fused models: sensors to leave out on purpose (e.g. ``("s2",)``).
    device
        Where the model runs: ``"cpu"`` (default), ``"auto"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"`` (:func:`latentcube.devices.resolve_device`). The
        bundle's model is copied there once; blocks go to the device and the
        layers come back as numpy float32, equal to the CPU result within 1e-4
        in fp32.

    Returns
    -------
    xarray.DataArray
        ``embedding`` (feature, time, y, x) float32, features ``F01``, ``F02``,
        ..., on the cube's grid and time axis with its CRS, backed by Dask
        (nothing is computed until asked). The quality layers
        (:mod:`latentcube.embedding_store`) are coordinates: ``valid``, the
        reconstruction error, ``padded`` (``edge="pad"``), ``sensors`` (fused).
        Compute them together (``embedding_dataset(emb).compute()`` or
        :func:`write_embedding`) so that each chunk runs the model once.
    """
    import dask
    import dask.array as da

    from latentcube.devices import resolve_device

    dev = resolve_device(device)
    bundle = as_bundle(bundle)
    job = plan(bundle, cube, Options(sensor, edge, tuple(hide), batch_size, with_error))
    model = on_device(bundle.model, dev)
    n_t, ny, nx = job.shape
    size = chunk_sizes(chunks, {"time": n_t, "y": ny, "x": nx})
    cube = select_bands(cube, dict(job.reads))
    arrays = {s: tuple(da.asarray(a) for a in sensor_arrays(cube, s)) for s, _ in job.reads}
    token = uuid.uuid4().hex[:12]
    dmodel = dask.delayed(model, name=f"latentcube-model-{token}", traverse=False)
    djob = dask.delayed(job, name=f"latentcube-job-{token}", traverse=False)
    task = dask.delayed(_stacked_chunk, pure=False)
    n_out = job.n_features + len(job.layers)
    grid = chunk_grid(job.shape, size)
    counts = [len(range(0, n, size[d])) for d, n in zip(("time", "y", "x"), job.shape, strict=True)]
    blocks: list[Any] = np.empty(counts, dtype=object).tolist()
    for key, ts, ys, xs in grid:
        tb, yb, xb = job.block(ts, ys, xs)
        block = {s: (d[tb, :, yb, xb], v[tb, yb, xb]) for s, (d, v) in arrays.items()}
        out = task(dmodel, djob, block, ts, ys, xs, dask_key_name=f"latentcube-block-{token}-{key}")
        it, iy, ix = (int(k) for k in key.split("_"))
        shape = (n_out, ts.stop - ts.start, ys.stop - ys.start, xs.stop - xs.start)
        blocks[it][iy][ix] = da.from_delayed(out, shape, dtype=np.float32)
    stacked = da.block(blocks)
    coords: dict[str, Any] = {
        "feature": feature_names(job.n_features),
        "time": cube["time"].values,
        "y": cube["y"].values,
        "x": cube["x"].values,
    }
    for k, (name, dtype) in enumerate(job.layers.items()):
        layer = stacked[job.n_features + k]
        coords[name] = (LAYER_DIMS, layer.astype(dtype), job.layer_attrs[name])
    digest = file_digest(bundle.path) if bundle.path is not None else None
    about = model_attrs(bundle.path, digest, bundle.kind, bundle.format, bundle.bands, cube.attrs)
    attrs = {**job.attrs, **about}
    out_da = xr.DataArray(
        stacked[: job.n_features], dims=DIMS, coords=coords, name=VARIABLE, attrs=attrs
    )
    return out_da.rio.write_crs(cube.rio.crs)


def _n_blocks(ds: xr.Dataset) -> int:
    chunks = ds[VARIABLE].chunks
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
    compression: str = "zstd",
) -> Path:
    """Write an embedding as Zarr v3 (atomic), the quality layers beside it.

    Parameters
    ----------
    emb
        Output of :func:`embed` (lazy; computed here, chunk by chunk) or
        :func:`~latentcube.embedding_store.embedding_dataset`.
    path
        Target store.
    dtype
        ``float32`` or ``float16`` storage of the embedding and the error layer.
    overwrite
        Replace an existing store (only once the new one is complete).
    chunk_xy
        Spatial chunk side of the store for in-memory input; Dask-backed input
        keeps its spatial chunks. Store chunks are (feature, 1, y, x).
    progress
        Show a progress bar (chunks done, pixel-dates per second).
    compute
        ``False`` writes the metadata only (a template for region writes, marked
        unfinished until :func:`embed_to_zarr` marks it complete).
    attrs
        Extra attributes of the store.
    compression
        Codec of every array: ``"zstd"`` (default, faster) or ``"gzip"`` (readable
        by every GDAL build with Zarr v3 support: zlib is mandatory in GDAL,
        Zstandard optional); recorded in the ``latentcube:compression`` attribute.
    """
    from latentcube.io import write_zarr

    ds = embedding_dataset(emb)
    enc = store_encoding(ds, dtype, chunk_xy, compression)
    ds = ds.assign_attrs(
        {
            **store_attrs(ds, dtype),
            COMPRESSION_ATTR: compression,
            **dict(attrs or {}),
            COMPLETE_ATTR: bool(compute),
        }
    )
    if not compute or not ds[VARIABLE].chunks:
        written = write_zarr(ds, path, overwrite=overwrite, encoding=enc, compute=compute)
    else:
        with _BlockProgress(_n_blocks(ds), progress):
            written = write_zarr(ds, path, overwrite=overwrite, encoding=enc)
    if compute:
        write_stac_item(written)
    return written


# --------------------------------------------------------------------------------------
# Large areas: one task per output chunk, written in place, resumable.


#: (bundle file, its SHA-256, cube path, cube fingerprint, store path) of every chunk task
_ChunkArgs = tuple[str, str, str, str, str]


def _replacement(out: Path) -> Path:
    """Where a run that replaces an existing ``out`` writes until it is complete."""
    return out.with_name(f".{out.name}.replacement")


def _positive(name: str, value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
    ):
        raise EmbeddingError(f"{name} must be a positive integer, got {value!r}")


def _target(out: Path, identity: str, overwrite: bool) -> Path:
    """Where this run writes: ``out`` itself, or beside it when it replaces an existing ``out``.

    A store is complete when its :data:`~latentcube.embedding_store.COMPLETE_ATTR`
    says so (it is set after the last chunk); an unfinished store of the same run
    is resumed in place, one of another run is refused unless ``overwrite``.
    """
    status, ident = store_status(out)
    if status == "absent":
        if progress_dir(out).exists():  # markers of a store that was removed
            shutil.rmtree(progress_dir(out))
        return out
    if status in ("unfinished", "legacy") and ident == identity:
        return out
    if not overwrite:
        if status == "complete":
            raise FileExistsError(
                f"{out} exists and is a complete embedding store; pass overwrite=True "
                "(--overwrite) to replace it"
            )
        if status == "foreign":
            raise EmbeddingError(
                f"{out} exists and is not an embedding store; choose another output or pass "
                "overwrite=True (--overwrite) to replace it"
            )
        raise EmbeddingError(
            f"{out} holds an unfinished run of another model, cube, chunking, dtype, "
            "compression, edge policy or hidden sensors; remove it, choose another output or pass "
            "overwrite=True (--overwrite)"
        )
    staging = _replacement(out)
    status, ident = store_status(staging)
    if status in ("unfinished", "legacy") and ident == identity:
        return staging  # an interrupted replacement of the same run: resume it
    for old in (staging, progress_dir(staging)):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    return staging


def _mark_complete(store: Path) -> None:
    """Record in the store that every chunk is written (the last write of a run)."""
    import zarr

    zarr.open_group(store, mode="r+", zarr_format=3).attrs.update({COMPLETE_ATTR: True})


def embed_to_zarr(
    cube_path: str | os.PathLike[str],
    bundle: BundleLike,
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
    device: str | torch.device = "cpu",
    resources: Mapping[str, float] | None = None,
    compression: str = "zstd",
) -> Path:
    """Embed a cube of any size into a Zarr store, chunk by chunk, resumable.

    Each task reads one output chunk of the cube plus its context halo (the job's
    :meth:`~latentcube.inference.job.EmbedJob.block`), embeds it and writes it into
    the store in place (the store's chunk files are (feature, 1, chunk, chunk), so
    every file belongs to exactly one task; Zarr writes each file to a temporary
    name and renames it), then leaves a marker in ``.<out>.progress/``. A run that
    is killed is resumed by calling this function again: chunks with a marker are
    skipped, the others are (re)computed; the result does not depend on the
    chunking (tested) and the store equals that of an uninterrupted run byte for
    byte (tested). A worker that dies costs only the chunks it was computing.

    Safety: ``out`` may not be, contain or lie inside the cube or the model
    file; it is locked for the run (a second run into it stops at once); the store
    is marked complete only after its last chunk, and a complete store is replaced
    (``overwrite``) by a run written beside it and swapped in when complete, so a
    failed or killed replacement leaves the old store as it was (and resumes when
    run again).

    Parameters
    ----------
    cube_path
        A cube :func:`latentcube.open_cube` can open (a Zarr store for large areas).
    bundle
        A saved :class:`~latentcube.bundle.ModelBundle` or the path of one (file
        or folder), of any kind: a stage-1 store holds ``embedding``, ``valid``,
        ``recon_mae_<sensor>`` (and ``padded``), a fused one ``embedding``,
        ``valid``, ``sensors`` and ``recon_mae``.
    out
        The output store (directory).
    chunk, time_chunk
        Output chunk side in pixels and in dates; task memory is bounded by the
        chunk plus its halo, whatever the area and the number of dates.
    dtype
        ``float32`` or ``float16`` storage.
    edge
        Edge policy, ``"nan"`` (default) or ``"pad"`` (stage-1 models).
    scheduler
        Address of a running Dask scheduler.
    workers, threads_per_worker, processes
        A local Dask cluster of ``workers`` workers. By default (``workers``
        None, no ``scheduler``) a run of one chunk runs in this process with the
        model on every core, and a larger run on one single-threaded worker
        process per core (at most one per chunk).
    batch_size
        Pixels per model call.
    overwrite
        Replace an existing store (only once the new one is complete).
    progress
        Show a progress bar with chunks done and pixel-dates per second.
    hide
        Fused models: sensors to leave out on purpose (e.g. ``("s2",)``).
    device
        Where the model runs (:func:`latentcube.inference.cluster.placement`):
        ``"cpu"`` (default), ``"auto"``, ``"mps"``, ``"cuda"`` (every visible GPU)
        or ``"cuda:N"``. On CUDA the local cluster has one worker per GPU, each
        seeing only its GPU and declaring the Dask resource ``GPU=1``; every task
        asks for it and batches whole tiles on the GPU. A run of one chunk runs in
        this process on the GPU. With ``scheduler``, the cluster's workers must
        declare ``GPU=1`` (refused otherwise). Checked before anything is written.
    resources
        Dask resources every task asks for (default ``{"GPU": 1}`` on CUDA, none
        elsewhere).
    compression
        Codec of every array of the store: ``"zstd"`` (default, faster) or
        ``"gzip"`` (readable by every GDAL >= 3.11: zlib is mandatory in GDAL,
        Zstandard optional). Part of the run's identity: a run with another
        compression does not resume this one.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from latentcube.cube.readers import open_cube
    from latentcube.io import check_output, locked, replace_path

    check_edge(edge)
    check_dtype(dtype)
    check_compression(compression)
    _positive("workers", workers)
    _positive("threads_per_worker", threads_per_worker)
    _positive("chunk", chunk)
    _positive("time_chunk", time_chunk)
    place = placement(
        device, scheduler=scheduler, workers=workers, processes=processes, resources=resources
    )
    if scheduler is not None and place.resources:
        from dask.distributed import Client

        with Client(scheduler) as client:  # tasks no worker can run would wait for ever
            check_resources(client, place.resources, scheduler)
    out = Path(out)
    bundle = as_bundle(bundle)
    if bundle.path is None:
        raise EmbeddingError("embed_to_zarr needs a saved bundle: its workers read the file")
    check_output(out, [cube_path, bundle.path])
    if Path(out).suffix == ".zip":
        raise EmbeddingError(
            f"{out}: an embedding store is written chunk by chunk into a folder and cannot "
            "be a .zip file; write it to a .zarr folder (zip it afterwards if you need one file)"
        )
    cube = open_cube(cube_path)
    try:
        job = plan(bundle, cube, Options(None, edge, tuple(hide), batch_size, refuse_empty=True))
    except LatentcubeError as err:
        raise type(err)(f"cannot embed {cube_path} with {bundle.path}: {err}") from err
    sizes = chunk_sizes(
        {"time": time_chunk, "y": chunk, "x": chunk},
        dict(zip(("time", "y", "x"), job.shape, strict=True)),
    )
    model_digest, cube_print = file_digest(bundle.path), cube_fingerprint(cube_path)
    identity = json.dumps(
        {
            "model_sha256": model_digest,
            "cube": str(Path(cube_path).resolve()),
            "cube_fingerprint": cube_print,
            "chunk": chunk,
            "time_chunk": time_chunk,
            "dtype": dtype,
            # only when not the default: runs of earlier versions (zstd) keep their identity
            **({"compression": compression} if compression != "zstd" else {}),
            **job.identity(),
        },
        sort_keys=True,
    )
    with locked(out):
        target = _target(out, identity, overwrite)
        if store_status(target)[0] == "absent":
            template = embed(cube, bundle, chunks=sizes, edge=edge, hide=hide)
            write_embedding(
                template,
                target,
                dtype=dtype,
                compute=False,
                attrs={IDENTITY_ATTR: identity},
                compression=compression,
            )
        progress_dir(target).mkdir(exist_ok=True)
        done = {p.name for p in progress_dir(target).iterdir()}
        tasks = chunk_grid(job.shape, sizes)
        todo = [t for t in tasks if t[0] not in done]
        args: _ChunkArgs = (
            str(Path(bundle.path).resolve()),
            model_digest,
            str(Path(cube_path).resolve()),
            cube_print,
            str(target.resolve()),
        )
        if todo:
            _run(todo, done, args, job, cube, bundle, scheduler, workers, threads_per_worker,
                 processes, progress, str(cube_path), place)  # fmt: skip
        _mark_complete(target)
        shutil.rmtree(progress_dir(target))
        if target != out:
            # the old store's Item goes first: a kill before the new one is written
            # leaves no Item rather than one describing the replaced store
            stac_item_path(out).unlink(missing_ok=True)
            replace_path(target, out)
        write_stac_item(out)
    return out


Task = tuple[str, slice, slice, slice]


def _split_in_time(todo: list[Task], parts: int) -> list[Task]:
    """Each chunk's dates cut into ``parts`` tasks (keys ``<chunk>.<k>``), none empty.

    The store's chunk files hold one date each, so tasks of one chunk's dates write
    disjoint files; a task costs its dates plus the time halo.
    """
    if parts <= 1:
        return todo
    out = []
    for key, ts, ys, xs in todo:
        bounds = np.linspace(ts.start, ts.stop, min(parts, ts.stop - ts.start) + 1).round()
        for k, (t0, t1) in enumerate(itertools.pairwise(bounds)):
            out.append((f"{key}.{k}", slice(int(t0), int(t1)), ys, xs))
    return out


def _run(
    todo: list[Task],
    done: set[str],
    args: _ChunkArgs,
    job: EmbedJob,
    cube: xr.Dataset,
    bundle: ModelBundle,
    scheduler: str | None,
    workers: int | None,
    threads_per_worker: int,
    processes: bool,
    progress: bool,
    where: str,
    place: Placement | None = None,
) -> None:
    """Run the chunks ``todo`` where the options say, with a progress bar.

    By default (no scheduler, no worker count) a run that fits in one wave of one
    chunk per core runs in this process: a cluster could not do better and its
    start (worker processes importing torch, loading the bundle, opening the cube)
    would be pure overhead. Its chunks are cut in time until every core has one
    task, and each task runs the model on one thread (PyTorch's intra-op threads
    synchronise after every small operation, which costs more than it gains here,
    and much more on a loaded machine). Larger runs use a local cluster of one
    single-threaded worker process per core. On a GPU the same holds with one
    chunk per GPU: a run of one chunk runs here on the GPU, a larger one on one
    worker per GPU (:mod:`latentcube.inference.cluster`); on MPS every run
    without a scheduler runs here, one chunk after the other.
    """
    place = place or Placement()
    local = scheduler is None and workers is None
    if local and place.device == "cpu" and len(todo) <= _cores():
        tasks = [t for t in _split_in_time(todo, -(-_cores() // len(todo))) if t[0] not in done]
        _run_here(tasks, done, args, job, cube, bundle.model, "cpu", progress, where)
        return
    if local and place.device != "cpu" and (not place.on_gpu or len(todo) == 1):
        device = f"cuda:{place.gpus[0]}" if place.on_gpu and place.gpus else place.device
        model = on_device(bundle.model, device)
        _run_here(todo, done, args, job, cube, model, device, progress, where)
        return
    bar = _BlockProgress(len(done) + len(todo), progress, initial=len(done))
    try:
        _run_on_dask(todo, args, job, scheduler, workers, threads_per_worker, processes, bar,
                     where, place)  # fmt: skip
    finally:
        bar.bar.close()


def _run_here(
    tasks: list[Task],
    done: set[str],
    args: _ChunkArgs,
    job: EmbedJob,
    cube: xr.Dataset,
    model: torch.nn.Module,
    device: str,
    progress: bool,
    where: str,
) -> None:
    """Run ``tasks`` in this process, served by the driver's model and cube.

    On a CPU one single-threaded task per core, on an accelerator one task at a
    time on ``device``.
    """
    bar = _BlockProgress(len(done) + len(tasks), progress, initial=len(done))
    # the driver's model and cube serve the tasks (the same function, no second read)
    preload((args[0], args[1], device, model), (args[2], args[3], job.reads, cube))
    threads = torch.get_num_threads()
    n_pool = min(_cores(), len(tasks)) if device == "cpu" else 1
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(n_pool, 1)) as pool:
            futures = {
                pool.submit(embed_chunk, *args, job, ts, ys, xs, key, device): key
                for key, ts, ys, xs in tasks
            }
            for fut in as_completed(futures):
                bar.update(_guarded(futures[fut], where, fut.result))
    finally:
        torch.set_num_threads(threads)
        bar.bar.close()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _guarded(key: str, where: str, fn: Callable[[], int]) -> int:
    """``fn()``, its failure reported as an EmbeddingError naming the chunk and the cube."""
    try:
        return fn()
    except Exception as err:
        raise EmbeddingError(
            f"embedding chunk {key} of {where} failed: {type(err).__name__}: {err}"
        ) from err


def _run_on_dask(
    todo: list[Task],
    args: _ChunkArgs,
    job: EmbedJob,
    scheduler: str | None,
    workers: int | None,
    threads_per_worker: int,
    processes: bool,
    bar: _BlockProgress,
    where: str,
    place: Placement,
) -> None:
    """One Dask task per chunk, on ``scheduler`` or a new local cluster.

    The local cluster has one worker per GPU on CUDA; every task asks for
    ``place.resources``.
    """
    from dask.distributed import Client, as_completed

    cluster = None
    if scheduler is None:
        n = workers or min(_cores(), len(todo))
        cluster = local_cluster(n, threads_per_worker, processes, place.gpus)
    client = Client(scheduler or cluster)
    try:
        if scheduler is not None:
            check_resources(client, place.resources, scheduler)
        futures = {
            client.submit(
                embed_chunk, *args, job, ts, ys, xs, key, place.device,
                key=f"latentcube-embed-{key}", pure=False, resources=place.resources,
            ): key
            for key, ts, ys, xs in todo
        }  # fmt: skip
        for fut in as_completed(futures):
            n_done = _guarded(futures[fut], where, fut.result)
            fut.release()  # results are not kept on the workers
            bar.update(n_done)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
