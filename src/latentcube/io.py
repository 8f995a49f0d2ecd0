"""Reading and writing latentcube stores: Zarr v3 with the CRS, written atomically.

Every store keeps the CRS twice: as rioxarray's CF ``spatial_ref`` grid-mapping
coordinate (read by GDAL, rioxarray and odc-geo) and as GeoZarr-style
``proj:code`` / ``spatial:*`` attributes. A path ending in ``.zip`` is written
as a single-file zipped Zarr store (used for the shipped demo cube).
"""

from __future__ import annotations

import os
import shutil
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
import zarr.storage

from latentcube.errors import OutputError

if TYPE_CHECKING:
    import hashlib

__all__ = [
    "check_disjoint",
    "check_output",
    "check_writable",
    "geozarr_attrs",
    "hash_zarr_metadata",
    "lock_path",
    "locked",
    "open_zarr",
    "replace_path",
    "replacing",
    "to_geotiff",
    "write_zarr",
]


def geozarr_attrs(ds: xr.Dataset | xr.DataArray) -> dict[str, Any]:
    """GeoZarr ``proj:`` and ``spatial:`` attributes of a georeferenced dataset.

    Returns an empty dict when ``ds`` has no CRS.
    """
    crs = ds.rio.crs
    if crs is None:
        return {}
    transform = ds.rio.transform(recalc=True)
    ny, nx = int(ds.sizes["y"]), int(ds.sizes["x"])
    left, bottom, right, top = ds.rio.bounds(recalc=True)
    epsg = crs.to_epsg()
    return {
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:wkt2": crs.to_wkt(),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in tuple(transform)[:6]],
        "spatial:shape": [ny, nx],
        "spatial:bbox": [float(left), float(bottom), float(right), float(top)],
    }


def _prepare(ds: xr.Dataset) -> xr.Dataset:
    """Make a dataset storable in Zarr v3 without unstable dtypes."""
    out = ds.copy()
    for name, coord in ds.coords.items():
        if coord.dtype.kind == "U":
            out = out.assign_coords({name: coord.astype(object)})
    out.attrs = {**ds.attrs, **{k: v for k, v in geozarr_attrs(ds).items() if v is not None}}
    return out


def write_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    compute: bool = True,
) -> Path:
    """Write ``ds`` as a Zarr v3 store, atomically.

    The store is first written next to ``path`` under a temporary name and then
    renamed, so an interrupted write never leaves a half-written store at
    ``path``.

    Parameters
    ----------
    ds
        Dataset with a CRS (``ds.rio.crs``).
    path
        Target directory store, or a ``.zip`` file for a single-file store.
    overwrite
        Replace an existing store at ``path``; otherwise raise ``FileExistsError``.
    encoding
        Per-variable Zarr encoding (chunks, dtype, scale_factor, ...).
    compute
        Write the data variables; ``False`` writes metadata and coordinates only
        (a template whose chunks are filled later, e.g. by region writes).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp_dir = tmp.with_suffix(".zarr") if path.suffix == ".zip" else tmp
    enc = {k: dict(v) for k, v in (encoding or {}).items()}
    for name, var in ds.data_vars.items():
        gm = var.encoding.get("grid_mapping") or var.attrs.get("grid_mapping")
        if gm and name in enc:  # an explicit encoding must not drop the CRS link
            enc[name].setdefault("grid_mapping", gm)
    try:
        _prepare(ds).to_zarr(  # type: ignore[call-overload]
            tmp_dir, mode="w", zarr_format=3, consolidated=False, encoding=enc, compute=compute
        )
        if path.suffix == ".zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                for f in sorted(tmp_dir.rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(tmp_dir).as_posix())
            shutil.rmtree(tmp_dir)
        replace_path(tmp, path)
    finally:
        for leftover in {tmp, tmp_dir}:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()
    return path


def open_zarr(path: str | os.PathLike[str], *, chunks: Any = "store") -> xr.Dataset:
    """Open a store written by :func:`write_zarr`, with its CRS restored.

    Parameters
    ----------
    path
        Directory store or ``.zip`` file.
    chunks
        ``"store"`` (default): dask arrays with the store's chunks, so reductions
        over a large store stream chunk by chunk; otherwise passed to
        :func:`xarray.open_zarr` (``None``: lazy arrays without dask).

    Returns
    -------
    xarray.Dataset
        Lazy dataset; ``ds.rio.crs`` is set.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Zarr store at {path}")
    store: Any = zarr.storage.ZipStore(path, mode="r") if path.suffix == ".zip" else path
    ds = xr.open_zarr(
        store, decode_coords="all", consolidated=False, chunks={} if chunks == "store" else chunks
    )
    for name, coord in ds.coords.items():
        if coord.ndim == 1 and (coord.dtype.kind in "OT" or "StringDType" in str(coord.dtype)):
            ds = ds.assign_coords({name: np.array([str(v) for v in coord.values.ravel()])})
    if "spatial_ref" in ds.coords and ds.rio.crs is not None:
        ds = ds.rio.write_crs(ds.rio.crs)
    return ds


def hash_zarr_metadata(path: str | os.PathLike[str], h: hashlib._Hash) -> bool:
    """Feed the metadata of a flat Zarr directory store to a hash, reading no chunk.

    Parameters
    ----------
    path
        The store.
    h
        A :mod:`hashlib` hash, updated with the relative path and the bytes of the
        group's ``zarr.json`` and of every array's (shapes, chunks, attributes).

    Returns
    -------
    bool
        False, leaving ``h`` untouched, when ``path`` is not a Zarr directory store
        (a ``.zip`` store, a file, a folder of other files).
    """
    root = Path(path)
    if not (root.is_dir() and (root / "zarr.json").exists()):
        return False
    # the metadata files only: a walk of the whole store would visit every chunk file
    for meta in [root / "zarr.json", *sorted(root.glob("*/zarr.json"))]:
        h.update(meta.relative_to(root).as_posix().encode())
        h.update(meta.read_bytes())
    return True


def to_geotiff(
    embedding: xr.DataArray | xr.Dataset,
    out_dir: str | os.PathLike[str],
    *,
    by: Literal["date", "feature"] = "date",
    prefix: str = "embedding",
    times: Sequence[Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> list[Path]:
    """Write an embedding as Cloud-Optimised GeoTIFFs, one per date or one per feature.

    Parameters
    ----------
    embedding
        (feature, time, y, x) with a CRS: the ``DataArray`` of
        :func:`latentcube.embed` or a dataset with an ``embedding`` variable (e.g.
        :func:`latentcube.open_embedding`). Lazy input is computed one file at a time.
    out_dir
        Folder for the files (created).
    by
        ``"date"``: ``{prefix}_{YYYY-MM-DD}.tif`` with one band per feature;
        ``"feature"``: ``{prefix}_{F01}.tif`` with one band per date.
    prefix
        File name prefix.
    times
        Dates to export (default all); anything ``xarray.DataArray.sel`` accepts on ``time``.
    dtype
        ``float32`` (default) or ``float64`` (GeoTIFF has no float16).
    overwrite
        Replace existing files; otherwise an existing file raises ``FileExistsError``.

    Returns
    -------
    list of pathlib.Path
        The files written, always north-up (rows from north to south, a negative
        pixel height, whatever the order of ``y`` in the input). Band descriptions
        name the features or dates; missing values are NaN (the GeoTIFF nodata value).
    """
    from latentcube.errors import EmbeddingError

    da = embedding["embedding"] if isinstance(embedding, xr.Dataset) else embedding
    if tuple(da.dims) != ("feature", "time", "y", "x"):
        raise EmbeddingError(f"expected dims (feature, time, y, x), got {tuple(da.dims)}")
    if by not in ("date", "feature"):
        raise EmbeddingError(f"by must be 'date' or 'feature', got {by!r}")
    if dtype not in ("float32", "float64"):
        raise EmbeddingError(f"dtype must be 'float32' or 'float64' for GeoTIFF, got {dtype!r}")
    crs = embedding.rio.crs
    if crs is None:
        raise EmbeddingError("the embedding has no CRS; a GeoTIFF needs one")
    if times is not None:
        da = da.sel(time=list(times))
    da = da.drop_vars([c for c in da.coords if c not in da.dims])
    if da.sizes["y"] > 1 and float(da["y"][0]) < float(da["y"][-1]):
        da = da.isel(y=slice(None, None, -1))  # rows north to south: a north-up GeoTIFF
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dates = np.datetime_as_string(da["time"].values, unit="D")
    features = [str(f) for f in da["feature"].values]
    if by == "date":
        items = [(f"{prefix}_{d}.tif", da.isel(time=i), features) for i, d in enumerate(dates)]
    else:
        items = [
            (f"{prefix}_{f}.tif", da.isel(feature=i).rename(time="band"), list(dates))
            for i, f in enumerate(features)
        ]
    written = []
    for name, part, bands in items:
        path = out / name
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        band_dim = "feature" if by == "date" else "band"
        arr = part.transpose(band_dim, "y", "x").astype(dtype).compute()
        arr = arr.rename({band_dim: "band"}).assign_coords(band=np.arange(1, len(bands) + 1))
        arr.attrs = {"long_name": tuple(bands), "_FillValue": np.nan}
        arr = arr.rio.write_crs(crs).rio.write_nodata(np.nan, encoded=False)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            arr.rio.to_raster(tmp, driver="COG", compress="DEFLATE")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(path)
    return written


# --------------------------------------------------------------------------------------
# Safe outputs: never over an input, never two runs at once, replaced only when complete.


def _resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with symlinks resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_disjoint(
    out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]
) -> None:
    """Refuse an output path that is, lies inside, or contains one of the inputs.

    Call it before anything is created, removed or written.

    Parameters
    ----------
    out
        The output file or folder.
    inputs
        The files and folders the command reads (``None`` entries are skipped).

    Raises
    ------
    OutputError
        Naming the output and the input it would overwrite.
    """
    o = _resolved(out)
    for item in inputs:
        if item is None:
            continue
        i = _resolved(item)
        if o == i or i in o.parents or o in i.parents:
            how = "is" if o == i else ("is inside" if i in o.parents else "contains")
            raise OutputError(f"output {out} {how} the input {item}; choose another output path")


def check_writable(out: str | os.PathLike[str]) -> None:
    """Refuse an output path whose folder cannot be created or written, before any work.

    Raises
    ------
    OutputError
        For a parent that is a file, a parent that is not writable, or an output
        that is a symbolic link.
    """
    path = Path(out)
    if path.is_symlink():
        raise OutputError(f"output {out} is a symbolic link; give the real path")
    parent = _resolved(path).parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output {out}: the folder {existing} is not writable")


def check_output(
    out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]
) -> None:
    """The checks every command makes before it writes ``out``, in one call.

    :func:`check_disjoint` (not over an input), then :func:`check_writable`.

    Raises
    ------
    OutputError
        As those two functions.
    """
    check_disjoint(out, inputs)
    check_writable(out)


def lock_path(out: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    path = _resolved(out)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def locked(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an OS file lock on an output (file or folder) for the duration of a run.

    The lock is ``.<name>.lock`` beside ``out`` (:func:`lock_path`), taken
    without waiting, so a second run into the same output stops at once. The
    operating system releases it when the process ends, killed or not.

    Raises
    ------
    OutputError
        When another run holds the lock.
    """
    from filelock import FileLock, Timeout

    lock_file = lock_path(out)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(
            f"output {out} is in use by another latentcube run (lock {lock_file})"
        ) from None
    try:
        yield lock_file
    finally:
        lock.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the complete ``new`` (file or folder) at ``target``, replacing what is there.

    An existing ``target`` is first moved aside under a hidden name, then ``new``
    is renamed into place, and only then is the old one removed; if the rename
    fails the old one is moved back. ``new`` and ``target`` must be on one file
    system (make ``new`` beside ``target``).
    """
    new, target = Path(new), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


@contextmanager
def replacing(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Write an output beside its target and swap it in only when complete.

    Yields a temporary path beside ``target`` (same folder, hidden name). When
    the block ends without an exception, whatever was written there replaces
    ``target`` (:func:`replace_path`); when it raises, the temporary path is
    removed and ``target`` is untouched.

    Parameters
    ----------
    target
        The output file or folder.
    overwrite
        Allow replacing an existing ``target``; otherwise an existing one raises
        before anything is written.

    Raises
    ------
    OutputError
        ``target`` exists and ``overwrite`` is false.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.new-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise OutputError(f"nothing was written for {target}")
        replace_path(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
