"""Build an analysis-ready Sentinel-2 + Sentinel-1 cube for a place and a time span.

The pipeline (see ``docs/design.md``, section "Cubes from STAC"):

1. **Grid**: the UTM zone of the centre, 10 m, cubo's centre-pixel convention
   (:mod:`latentcube.grid`).
2. **Search** (pystac-client): S2 L2A items in ``[start, end]``; S1 RTC items in
   the same span widened by the matching gap and a margin for the rolling mean.
   Every problem that can be seen in the metadata (no items, a missing asset,
   a catalog without the collection, dates in the wrong order) is raised here,
   before any pixel is read or any file is written.
3. **Plan**: S2 items are grouped by solar day (tile overlaps of one pass
   become one date), S1 items by solar day and orbit direction; every S2 date
   gets the nearest S1 acquisition within ``s1_max_gap_days``.
4. **Screen**: with the default mask, only SCL is read first to count each
   date's pixels the mask can leave clear (an upper bound of its valid
   pixels); dates below ``min_valid_fraction`` are dropped before their bands
   are read, so the time axis is known up front.
5. **Load** unit by unit (a block of S2 dates x a spatial tile): assets on the
   cube's pixel lattice are read at their native resolution and repeated to
   10 m (:func:`latentcube.cube.stac.read_aligned`, equal to a nearest warp),
   others with odc-stac; explicit dtype, nodata and resampling, URLs re-signed
   at every call, each unit retried with backoff on transient errors. Per S2
   item: DN -> reflectance honouring the baseline-04.00 offset, mask (SCL with
   dilation by default, or any mask function), then the items of one day are
   merged (a clear pixel wins); with the default mask this runs one output
   plane at a time, the bands read without the mask's halo. S1 (read on a
   helper thread while S2 is read): linear gamma0 -> centred mean over 3
   acquisitions of the same orbit direction -> dB -> clip [-30, 5] ->
   (dB + 30) / 35, in float32.
6. The cube's store (metadata, coordinates and attributes, written directly
   in xarray's layout) is created in a staging folder next to the output on
   the writer thread while the first unit is read. Each unit is checked and
   writes its own chunks, compressed, straight into it on that thread while
   the next unit is read and merged, and is marked done (with its valid pixel
   counts), so an interrupted build resumes without reading those units again.
7. **Finish**: the store is renamed to the output. Only when a date ends
   below ``min_valid_fraction`` after the full mask (custom mask functions
   are not screened) are the kept dates' stored values copied into a new
   store, chunk by chunk and without decoding them
   (:func:`latentcube.cube.write.drop_dates`).

Where each step lives: the options and the plan (steps 1-3) in
:mod:`latentcube.cube.plan`, search in :mod:`latentcube.cube.stac` and reads in
:mod:`latentcube.cube._reading`, masks in :mod:`latentcube.cube.masks`, screening
and S2 loading in :mod:`latentcube.cube.sentinel2`, S1 loading in
:mod:`latentcube.cube.sentinel1`, the store in :mod:`latentcube.cube.write`, the
union time axis in :mod:`latentcube.cube.union`. This module runs the units
(serially or on Dask) and finishes the cube.
"""

from __future__ import annotations

import contextvars
import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube.csmask import CSMask
from latentcube.cube.masks import (
    MASK_NAMES,
    SCL_INVALID,
    AllMasks,
    MaskFunction,
    SCLMask,
    describe_mask,
    mask_provenance,
)
from latentcube.cube.plan import (
    CubeSpec,
    Plan,
    all_cloudy_error,
    check_dates,
    make_plan,
    place_grid,
)
from latentcube.cube.schema import validate_cube
from latentcube.cube.sentinel1 import load_s1 as _load_s1  # looked up here: tests replace it
from latentcube.cube.sentinel2 import load_s2
from latentcube.cube.stac import StacError, configure_http, reuse_datasets
from latentcube.cube.union import add_s1_dates, check_time_axis
from latentcube.cube.write import (
    Staging,
    drop_dates,
    final_attrs,
    store_chunks,
    store_encoding,
)
from latentcube.cube.write import write_chunks as _write_chunks  # as _load_s1
from latentcube.errors import CubeError

__all__ = [
    "AllMasks",
    "CSMask",
    "CubeSpec",
    "MaskFunction",
    "SCLMask",
    "build_cube",
    "describe_build",
    "make_mask",
]


# --------------------------------------------------------------------------- units


def _units(plan: Plan, nt: int) -> list[tuple[int, int, int]]:
    """(time block, tile row, tile column) of ``nt`` candidate dates."""
    ny, nx = plan.info.geobox.shape
    ct, tile = plan.spec.time_chunk, plan.spec.tile
    return [
        (k, i, j)
        for k in range(-(-nt // ct))
        for i in range(-(-ny // tile))
        for j in range(-(-nx // tile))
    ]


def _check_unit(sensor: str, data: np.ndarray, valid: np.ndarray) -> None:
    """The data model's value rules on one unit, while it is in memory.

    Valid pixels are finite and in [0, 1], invalid ones NaN; checked here so
    that the finished store needs no second full read to be validated. One
    NaN-ignoring min/max pass over the data (an infinity falls outside
    [0, 1]) and one NaN test per (date, band) plane against the valid mask,
    without full-size temporaries.
    """
    if data.size == 0:
        return
    lo, hi = np.fmin.reduce(data, axis=None), np.fmax.reduce(data, axis=None)
    if bool(lo < 0.0) or bool(hi > 1.0):  # NaN (no valid pixel at all) compares False
        raise StacError(f"internal error: {sensor} values outside [0, 1]")
    nan = np.empty(data.shape[2:], bool)
    for t in range(data.shape[0]):
        for b in range(data.shape[1]):
            np.isnan(data[t, b], out=nan)
            np.equal(nan, valid[t], out=nan)  # NaN at a valid pixel, or a value at an invalid one
            if nan.any():
                raise StacError(f"internal error: {sensor} values and {sensor}_valid disagree")


def _run_unit(
    plan: Plan,
    unit: tuple[int, int, int],
    store: Path,
    mask: MaskFunction,
    candidates: np.ndarray,
) -> list[int]:
    """Load, check and write one unit; returns its valid S2 pixel count per date."""
    return _process_unit(plan, unit, store, mask, candidates, None)[0]


def _process_unit(
    plan: Plan,
    unit: tuple[int, int, int],
    store: Path,
    mask: MaskFunction,
    candidates: np.ndarray,
    submit: Any,
    last: bool = False,
) -> tuple[list[int], list[Any]]:
    """Load one unit, then check and write it, or hand the check and write to ``submit``.

    With ``submit`` (the writer thread's ``submit``) S1 is loaded on a helper
    thread while S2 is read and merged here, and the checks and compressed
    writes run on the writer thread while the next unit is read; the caller
    waits for the returned futures (which raise what the checks raise) before
    it marks the unit done. The ``last`` unit has no next unit to overlap, so
    this thread writes half of its S2 chunk rows and its S1 while the writer
    thread writes the other half (measured: 0.85-0.91x the wall time of a 512 px
    build, a single unit). Returns the valid S2 pixel count per date and the
    futures.
    """
    k, i, j = unit
    spec = plan.spec
    configure_http(spec.max_retries, max(spec.backoff, 0.01))  # also in Dask workers
    ny, nx = plan.info.geobox.shape
    ts = slice(k * spec.time_chunk, min((k + 1) * spec.time_chunk, len(candidates)))
    dates = [int(d) for d in candidates[ts]]
    ys = slice(i * spec.tile, min((i + 1) * spec.tile, ny))
    xs = slice(j * spec.tile, min((j + 1) * spec.tile, nx))

    ct, cy, cx = store_chunks(plan, len(candidates))

    def write(
        sensor: str, data: np.ndarray, valid: np.ndarray, rows: slice = slice(0, None),
        check: bool = True,
    ) -> None:  # fmt: skip
        """Check the unit (``check``) and write its chunk ``rows`` (from a chunk boundary)."""
        if check:
            _check_unit(sensor, data, valid)
        nt, nb, y0 = len(candidates), data.shape[1], ys.start + rows.start
        # straight to the chunk files (see _write_chunks), every chunk of the unit
        # also when it holds fill values only (rare in a cube, a few bytes each)
        _write_chunks(store / sensor, data[..., rows, :], (ts.start, 0, y0, xs.start),
                      (ct, nb, cy, cx), (nt, nb, ny, nx))  # fmt: skip
        _write_chunks(store / f"{sensor}_valid", valid[:, rows, :], (ts.start, y0, xs.start),
                      (ct, cy, cx), (nt, ny, nx))  # fmt: skip

    s1 = None
    if plan.with_s1 and submit is not None:
        # in a copy of this context: the helper reads through the same open datasets
        s1 = _helper().submit(contextvars.copy_context().run, _load_s1, plan, dates, ys, xs)
    futures: list[Any] = []
    try:
        s2, s2v = load_s2(plan, dates, ys, xs, mask)
        counts = [int(v) for v in s2v.sum(axis=(1, 2))]
        half = cy * (-(-s2.shape[-2] // cy) // 2)  # the first half of the unit's chunk rows
        if submit is None:
            write("s2", s2, s2v)
        elif last and half:  # no next unit to read: this thread writes half of the rows
            _check_unit("s2", s2, s2v)
            futures.append(submit(write, "s2", s2, s2v, slice(0, half), False))
            write("s2", s2, s2v, slice(half, None), False)
        else:  # checked and written on the writer thread while this one reads the next unit
            futures.append(submit(write, "s2", s2, s2v))
    except BaseException:
        if s1 is not None:  # no load left running behind a failed unit
            s1.cancel() or s1.exception()
        raise
    del s2, s2v
    if plan.with_s1:
        s1a, s1v = _load_s1(plan, dates, ys, xs) if s1 is None else s1.result()
        if submit is None or last:
            write("s1", s1a, s1v)
        else:
            futures.append(submit(write, "s1", s1a, s1v))
    return counts, futures


@functools.cache
def _helper() -> Any:
    """One thread that loads a unit's S1 while its S2 is loaded (kept for the process)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentcube-s1")


def _run_serial(
    plan: Plan,
    todo: Sequence[tuple[int, int, int]],
    staging: Staging,
    mask: MaskFunction,
    candidates: np.ndarray,
    bar: Any,
    create: Any = None,
) -> None:
    """Units one after the other in this process; checks and writes overlap the next reads.

    One writer thread first creates the store (``create``, from
    :meth:`~latentcube.cube.write.Staging.open`) while the first unit is read, then checks,
    compresses and writes each unit's chunks while this thread reads and
    merges the next unit (the last unit's writes are shared by both threads);
    a unit is marked done only when all its writes have finished, and at most
    one unit is being written while the next is loaded (memory: two units).
    """
    from concurrent.futures import ThreadPoolExecutor

    pending: tuple[tuple[int, int, int], list[int], list[Any]] | None = None

    def finish() -> None:
        nonlocal pending
        if pending is not None:
            unit, counts, futures = pending
            pending = None
            for fut in futures:
                fut.result()
            staging.mark(unit, counts)
            bar.update(1)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentcube-write") as writer:
        made = writer.submit(create) if create is not None else None
        try:
            for n, unit in enumerate(todo):
                counts, futures = _process_unit(
                    plan, unit, staging.store, mask, candidates, writer.submit,
                    last=n == len(todo) - 1,
                )  # fmt: skip
                if made is not None:  # the store exists before any unit is marked
                    futures.insert(0, made)
                    made = None
                finish()  # the previous unit, written while this one was read
                pending = (unit, counts, futures)
            if made is not None:  # no unit to run: the store is still made
                made.result()
        finally:
            if made is not None:
                made.exception()  # wait for it, without hiding the error in flight
            finish()


def _one_line(err: ValueError) -> str:
    """A pydantic validation error on one line: ``field: message (got value)``."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return " ".join(str(err).split())
    return "; ".join(
        f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')} (got {e.get('input')!r})"
        for e in errors()
    )


# --------------------------------------------------------------------------- masks


def make_mask(
    name: str,
    *,
    scl_invalid: Sequence[int] = SCL_INVALID,
    dilation: int = 1,
    csmask_bands: int = 6,
) -> MaskFunction:
    """The mask function of a name in :data:`MASK_NAMES`.

    Parameters
    ----------
    name
        ``"scl"``, ``"csmask"`` or ``"scl+csmask"``.
    scl_invalid
        SCL classes masked by ``scl``.
    dilation
        Pixels by which clouds and shadows are grown, in every mask.
    csmask_bands
        6 or 4: the learned mask's model.

    Returns
    -------
    MaskFunction
        :class:`SCLMask`, :class:`CSMask` or :class:`AllMasks`.
    """
    if name not in MASK_NAMES:
        raise CubeError(f"unknown mask {name!r}; expected one of {', '.join(MASK_NAMES)}")
    scl = SCLMask(tuple(int(c) for c in scl_invalid), int(dilation))
    if name == "scl":
        return scl
    learned = CSMask(bands=int(csmask_bands), dilation=int(dilation))
    return learned if name == "csmask" else AllMasks((scl, learned))


# --------------------------------------------------------------------------- API


def build_cube(
    *,
    lat: float | None = None,
    lon: float | None = None,
    size_m: float | None = None,
    bbox: Sequence[float] | None = None,
    start: Any,
    end: Any,
    out: str | os.PathLike[str] | None = None,
    catalog: str = "planetary-computer",
    sensors: Sequence[str] = ("s2", "s1"),
    spec: CubeSpec | None = None,
    mask: MaskFunction | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    time_axis: str = "s2",
    **options: Any,
) -> xr.Dataset:
    """Build a Sentinel-2 (+ Sentinel-1) cube in the latentcube data model from STAC.

    Parameters
    ----------
    lat, lon, size_m
        Centre (degrees) and edge length (metres) of a square area; or
    bbox
        ``(west, south, east, north)`` in degrees.
    start, end
        First and last day (inclusive), e.g. ``"2023-04-01"``.
    out
        Zarr store to write; ``None`` builds in a temporary folder and returns
        the cube in memory.
    catalog
        ``"planetary-computer"``, ``"earth-search"`` (S2 only), a STAC API URL
        or the path/URL of a static ``catalog.json``.
    sensors
        ``("s2", "s1")`` or ``("s2",)``.
    spec
        All further options (:class:`CubeSpec`); keyword ``options`` override
        single fields, e.g. ``min_valid_fraction=0.2``.
    mask
        Cloud mask: a name, ``"scl"``, ``"csmask"`` or ``"scl+csmask"`` (the
        same as ``spec.mask``; the learned mask needs ``pip install
        'latentcube[cloudmask]'``), or any mask function (:class:`MaskFunction`).
        Default: ``spec.mask`` (``"scl"``: ``SCLMask(spec.scl_invalid,
        spec.mask_dilation)``). What made the cube is in its attributes
        ``mask`` (JSON: name, options; for the learned mask the package
        version and the model file's SHA-256) and ``mask_function``.
    overwrite
        Replace an existing store built for a different request. A store
        built for the same request is returned as it is (idempotent).
    progress
        Show a progress bar over loading units.
    scheduler
        ``None`` (default): load the units one after the other in this process
        (memory: one unit). ``"local"``: a ``distributed.LocalCluster`` with
        ``workers`` single-threaded processes (scripts need an
        ``if __name__ == "__main__":`` guard); or the address of a running Dask
        scheduler. Each unit is one task that writes its own chunks.
    workers
        Worker processes of the local cluster (default: one per core).
    time_axis
        ``"s2"`` (default, the paper's): the S2 dates with a clear pixel, S1
        matched to them. ``"union"``: those dates plus every S1 acquisition day
        without one, S2 masked there (:mod:`latentcube.cube.union`; needs S1;
        cube attribute ``time_axis``).
    **options
        Fields of :class:`CubeSpec`.

    Returns
    -------
    xarray.Dataset
        The validated cube (lazy, opened from ``out``, when ``out`` is given).

    Raises
    ------
    StacError
        No items, a missing asset, a catalog without the collection, dates in
        the wrong order, every date cloudy, or a load that keeps failing.
        Nothing is written at ``out`` in these cases.
    latentcube.errors.CubeError
        The mask cannot run: the learned mask without its extra
        (``pip install 'latentcube[cloudmask]'``), or without a band its model
        reads. Raised before the catalog is searched.
    latentcube.grid.GridError
        A place outside the UTM range or an empty size.

    Warns
    -----
    latentcube.grid.UTMZoneWarning
        The area spans several UTM zones; the centre's zone is used (named in
        the warning and in the cube's ``grid_note`` attribute).

    Examples
    --------
    >>> cube = build_cube(lat=50.746, lon=4.063, size_m=640,
    ...                   start="2023-04-01", end="2023-06-30", out="cube.zarr")  # doctest: +SKIP
    """
    base = (spec or CubeSpec()).model_dump()
    if isinstance(mask, str):  # a mask by name is the spec's mask
        options = {**options, "mask": mask}
    try:
        spec = CubeSpec.model_validate({**base, **options, "sensors": tuple(sensors)})
    except ValueError as err:
        raise StacError(f"invalid cube options: {_one_line(err)}") from None
    if "s2" not in spec.sensors:
        raise StacError(
            f"sensors must include 's2' (the S2 dates are the time axis), got {sensors}"
        )
    check_time_axis(time_axis, spec.sensors)
    t0, t1 = check_dates(start, end)
    info = place_grid(lat, lon, size_m, bbox, spec.resolution)
    fn = (
        make_mask(
            spec.mask, scl_invalid=spec.scl_invalid, dilation=spec.mask_dilation,
            csmask_bands=spec.csmask_bands,
        )
        if mask is None or isinstance(mask, str)
        else mask
    )  # fmt: skip
    check = getattr(fn, "check", None)
    if check is not None:  # a missing extra or band, before anything is searched or read
        check(spec.s2_bands)
    configure_http(max_retries=spec.max_retries, retry_delay=max(spec.backoff, 0.01))
    plan = make_plan(info, t0, t1, catalog, spec, describe_mask(fn), mask_provenance(fn))
    union = time_axis == "union"
    request = plan.fingerprint() + (":union" if union else "")

    path = Path(out) if out is not None else None
    if path is not None and path.exists():
        from latentcube.io import open_zarr

        try:
            done = open_zarr(path).attrs.get("latentcube_request")
        except Exception:
            done = None
        if done == request:
            return validate_cube(open_zarr(path), check_values=False)
        if not overwrite:
            raise FileExistsError(
                f"{path} exists and was not built for this request; pass overwrite=True "
                "(--overwrite) to replace it"
            )
    tmp_root = None
    # the union axis is the S2-axis cube (built first, beside the target) plus S1 dates
    target = path.with_name(f".{path.name}.s2.zarr") if union and path is not None else path
    if target is not None:
        staging = Staging(target.parent / f".{target.name}.partial")
    else:
        tmp_root = Path(tempfile.mkdtemp(prefix="latentcube-cube-"))
        staging = Staging(tmp_root / "partial")
    try:
        if not union:
            return _execute(plan, staging, target, fn, progress, scheduler, workers)
        return _finish_union(
            plan, staging, target, path, fn, progress, scheduler, workers, (t0, t1)
        )
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _finish_union(
    plan: Plan,
    staging: Staging,
    target: Path | None,
    path: Path | None,
    mask: MaskFunction,
    progress: bool,
    scheduler: str | None,
    workers: int | None,
    dates: tuple[pd.Timestamp, pd.Timestamp],
) -> xr.Dataset:
    """Build (or reuse) the S2-axis cube at ``target``, then write it with the S1 dates."""
    from latentcube.io import open_zarr, write_zarr

    s2_cube = None
    if target is not None and target.exists():
        try:
            done = open_zarr(target)
            if done.attrs.get("latentcube_request") == plan.fingerprint():
                s2_cube = validate_cube(done, check_values=False)
        except Exception:
            s2_cube = None
    if s2_cube is None:
        s2_cube = _execute(plan, staging, target, mask, progress, scheduler, workers)
    cube = add_s1_dates(plan, s2_cube, *dates)
    cube.attrs["latentcube_request"] = plan.fingerprint() + ":union"
    if path is None:
        cube = cube.load()
        return validate_cube(cube.rio.write_crs(s2_cube.rio.crs))
    enc = store_encoding(cube, plan.spec)
    cube = cube.chunk({d: enc["s2"]["chunks"][i] for i, d in enumerate(cube["s2"].dims)})
    cube = cube.assign_coords({k: c.compute() for k, c in cube.coords.items() if c.chunks})
    write_zarr(cube, path, overwrite=True, encoding=enc)
    if target is not None and target != path:
        shutil.rmtree(target, ignore_errors=True)
    return validate_cube(open_zarr(path), check_values=False)


def _run_on_dask(
    plan: Plan,
    todo: Sequence[tuple[int, int, int]],
    staging: Staging,
    mask: MaskFunction,
    candidates: np.ndarray,
    scheduler: str,
    workers: int | None,
    bar: Any,
) -> None:
    """Run loading units as Dask tasks (each writes its own chunks), marking them as they end."""
    from dask.distributed import as_completed

    from latentcube.cube.cluster import dask_client

    with dask_client(scheduler, workers) as client:
        futures = {
            client.submit(
                _run_unit,
                plan,
                unit,
                staging.store,
                mask,
                candidates,
                key="latentcube-cube-{}-{}-{}".format(*unit),
                pure=False,
            ): unit
            for unit in todo
        }
        for fut in as_completed(futures):
            staging.mark(futures[fut], fut.result())
            bar.update(1)


def _execute(
    plan: Plan,
    staging: Staging,
    path: Path | None,
    mask: MaskFunction,
    progress: bool,
    scheduler: str | None = None,
    workers: int | None = None,
) -> xr.Dataset:
    import zarr
    from tqdm.auto import tqdm

    from latentcube.io import open_zarr

    # files stay open between the build's reads (screening and every tile), within the
    # pool's bounds, in this process; Dask workers open theirs per read
    with reuse_datasets():
        candidates, create = staging.open(plan, mask)
        units = _units(plan, len(candidates))
        todo = [u for u in units if not staging.marker(u).exists()]
        bar = tqdm(
            total=len(units),
            initial=len(units) - len(todo),
            desc="cube",
            unit="unit",
            disable=not progress or not todo,
        )
        if scheduler is None or not todo:
            _run_serial(plan, todo, staging, mask, candidates, bar, create)
        else:
            if create is not None:
                create()
            _run_on_dask(plan, todo, staging, mask, candidates, scheduler, workers, bar)
        bar.close()
    counts = np.zeros(len(candidates), np.int64)
    tc = plan.spec.time_chunk
    for unit in units:
        counts[unit[0] * tc : unit[0] * tc + tc] += staging.counts(unit)
    frac = counts / float(np.prod(plan.info.geobox.shape))
    keep = (frac >= plan.spec.min_valid_fraction) & (frac > 0)
    if not keep.any():
        staging.remove()
        raise all_cloudy_error(plan, frac)
    if keep.all() and path is not None:
        # the staging store already is the cube, with its attributes: move it in place
        group: Any = zarr.open_group(staging.store, mode="r+")
        if group.attrs.get("latentcube_request") != plan.fingerprint():
            group.attrs.update(final_attrs(plan, candidates))  # an area of an older version
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging.store, path)
        staging.remove()
        # values were checked unit by unit (_check_unit); the layout is checked here
        return validate_cube(open_zarr(path), check_values=False)
    kept = np.flatnonzero(keep)
    if path is None:
        # some candidate date turned out below the threshold (a mask function other
        # than the default, or pixels without data in some band): the kept dates
        st = xr.open_zarr(staging.store, decode_coords="all", consolidated=False, chunks={})
        cube = st.isel(time=kept).load()
        cube.attrs = final_attrs(plan, candidates[kept])
        for v in cube.variables.values():
            v.encoding = {}
        cube = cube.rio.write_crs(cube.rio.crs)
        staging.remove()
        return validate_cube(cube)
    # the same on disk: the kept dates' stored values into a new store (no decoding)
    kept_store = staging.root / "kept.zarr"
    if kept_store.exists():  # from a build killed while copying
        shutil.rmtree(kept_store)
    drop_dates(staging.store, kept_store, kept, final_attrs(plan, candidates[kept]))
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(kept_store, path)
    staging.remove()
    # values were checked unit by unit (_check_unit) and dates without a valid
    # pixel dropped above; the layout is checked on the store as written
    return validate_cube(open_zarr(path), check_values=False)


def describe_build(ds: xr.Dataset) -> str:
    """One line describing a built cube: dates, size, CRS, clear fraction, S1 matching."""
    line = (
        f"{ds.sizes['time']} dates x {ds.sizes['y']} x {ds.sizes['x']} px, {ds.rio.crs}, "
        f"mean clear fraction {float(ds['s2_valid'].mean()):.2f}"
    )
    if "s1" in ds:
        line += f", S1 matched on {int((~np.isnat(ds['s1_time'].values)).sum())} dates"
    if "s2_observed" in ds.coords:
        line += f" ({int((~ds['s2_observed'].values).sum())} of them S1-only)"
    return line
