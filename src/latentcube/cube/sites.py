"""Many cubes in one call: a table of sites in, one Zarr cube per site out.

:func:`build_cubes` runs :func:`latentcube.cube.build.build_cube` once per site, each
site an independent task on Dask distributed (a ``LocalCluster`` by default, or an
existing scheduler), and keeps ``out_dir/manifest.csv`` up to date as sites finish:

* a site that fails (no items, every date cloudy, a transient HTTP error after the
  build's own retries, any :class:`~latentcube.errors.LatentcubeError` or
  :class:`OSError`, a worker lost while building it) is recorded with its error and
  the other sites go on;
* a rerun builds only the sites that are missing or failed; a site whose store is
  complete (``build_cube`` moves a store into place only when it is) and recorded in
  the manifest as built for the same request is not touched, not even searched for
  again (without its manifest row, ``build_cube`` finds the store built for the same
  request and returns it as it is);
* the manifest is written atomically (a temporary file renamed over it) after every
  site, so a killed run leaves a manifest that says what was done.

:func:`read_sites` validates a sites table (CSV or ``DataFrame``) with one-line errors
naming the file and the row; :func:`flux_sites` is the registry of the 47
eddy-covariance sites of the paper's GPP evaluation, shipped as a sites table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module, resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcube.errors import CubeError, LatentcubeError
from latentcube.io import check_disjoint

__all__ = [
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "build_cubes",
    "build_or_reuse",
    "flux_sites",
    "manifest_stores",
    "read_manifest",
    "read_sites",
]

#: Name of the manifest in the output folder.
MANIFEST = "manifest.csv"
#: Columns of the manifest, in order.
MANIFEST_COLUMNS = (
    "id",
    "status",
    "path",
    "dates",
    "valid_fraction",
    "error",
    "lat",
    "lon",
    "start",
    "end",
    "size_m",
    "seconds",
    "finished",
    "request",
)
REQUIRED = ("id", "lat", "lon", "start", "end")
#: Default edge of a site's cube when the table has no ``size_m``: the paper's 90 x 90 px.
DEFAULT_SIZE_M = 900.0
#: Errors that fail one site and let the others go on.
SITE_ERRORS: tuple[type[BaseException], ...] = (LatentcubeError, OSError)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: build_cube arguments that come from the sites table or from build_cubes itself.
_RESERVED = (
    "lat",
    "lon",
    "size_m",
    "bbox",
    "start",
    "end",
    "out",
    "progress",
    "scheduler",
    "workers",
)


# ------------------------------------------------------------------------- sites table


def _row_error(source: str, row: Any, msg: str) -> CubeError:
    return CubeError(f"{source}: row {row}: {msg}")


def read_sites(sites: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    """Read and validate a sites table.

    Parameters
    ----------
    sites
        A CSV file or a ``DataFrame`` with the columns ``id``, ``lat``, ``lon``
        (degrees, WGS 84), ``start``, ``end`` (first and last day, ISO dates)
        and optionally ``size_m`` (edge of the square cube in metres; empty
        cells take the default). Other columns are kept.

    Returns
    -------
    pandas.DataFrame
        One row per site: ``id`` (str), ``lat``, ``lon`` (float), ``start``,
        ``end`` (``Timestamp``), ``size_m`` (float, NaN where not given).

    Raises
    ------
    CubeError
        One line naming the file (or ``DataFrame``) and the row (the line of
        the CSV file, the header being line 1; the index of a ``DataFrame``):
        a missing column, an empty or unusable id (ids name the cube stores:
        letters, digits, ``.``, ``_``, ``-``), a duplicate id, a coordinate that
        is not a number or out of range, a bad date, an end before the start, a
        size that is not positive.
    """
    if isinstance(sites, pd.DataFrame):
        source, df = "sites table", sites.copy()
        rows = [str(i) for i in df.index]
    else:
        source = str(sites)
        path = Path(sites)
        if not path.is_file():
            raise CubeError(f"{source}: no such sites file")
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise CubeError(
                f"{source}: not a readable CSV table ({err})".replace("\n", " ")
            ) from None
        rows = [str(i + 2) for i in range(len(df))]  # line numbers, the header being line 1
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CubeError(
            f"{source}: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(map(str, df.columns)) or 'none'}; needs {', '.join(REQUIRED)})"
        )
    if df.empty:
        raise CubeError(f"{source}: no sites")
    out = pd.DataFrame(index=range(len(df)))
    ids, lats, lons, starts, ends, sizes = [], [], [], [], [], []
    first: dict[str, str] = {}
    has_size = "size_m" in df.columns
    for i, row in enumerate(df.to_dict("records")):
        r = rows[i]
        sid = "" if _blank(row["id"]) else str(row["id"]).strip()
        if not sid:
            raise _row_error(source, r, "empty id")
        if not _ID.match(sid):
            raise _row_error(
                source, r, f"id {sid!r} cannot name a store (use letters, digits, '.', '_', '-')"
            )
        if sid in first:
            raise _row_error(source, r, f"duplicate id {sid!r} (first in row {first[sid]})")
        first[sid] = r
        lat = _number(source, r, "lat", row["lat"])
        lon = _number(source, r, "lon", row["lon"])
        if not -90.0 <= lat <= 90.0:
            raise _row_error(source, r, f"lat {lat:g} out of range [-90, 90]")
        if not -180.0 <= lon <= 180.0:
            raise _row_error(source, r, f"lon {lon:g} out of range [-180, 180]")
        t0 = _date(source, r, "start", row["start"])
        t1 = _date(source, r, "end", row["end"])
        if t1 < t0:
            raise _row_error(source, r, f"end {t1.date()} is before start {t0.date()}")
        size = math.nan
        if has_size and not _blank(row["size_m"]):
            size = _number(source, r, "size_m", row["size_m"])
            if not size > 0:
                raise _row_error(source, r, f"size_m {size:g} is not positive")
        ids.append(sid)
        lats.append(lat)
        lons.append(lon)
        starts.append(t0)
        ends.append(t1)
        sizes.append(size)
    out["id"], out["lat"], out["lon"] = ids, lats, lons
    out["start"], out["end"], out["size_m"] = starts, ends, sizes
    for c in df.columns:
        if c not in out.columns:
            out[c] = df[c].to_numpy()
    return out


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""


def _number(source: str, row: str, name: str, value: Any) -> float:
    try:
        v = float(str(value).strip())
    except ValueError:
        raise _row_error(source, row, f"{name} {value!r} is not a number") from None
    if not math.isfinite(v):
        raise _row_error(source, row, f"{name} {value!r} is not a finite number")
    return v


def _date(source: str, row: str, name: str, value: Any) -> pd.Timestamp:
    if isinstance(value, (pd.Timestamp, dt.date)):
        return pd.Timestamp(value).normalize()
    text = "" if _blank(value) else str(value).strip()
    try:
        t = pd.Timestamp(dt.date.fromisoformat(text[:10])) if text else None
    except ValueError:
        t = None
    if t is None or (len(text) > 10 and text[10] not in "T "):
        raise _row_error(source, row, f"bad {name} date {value!r} (expected YYYY-MM-DD)")
    return t


def flux_sites(start: Any = None, end: Any = None, size_m: float | None = None) -> pd.DataFrame:
    """The 47 eddy-covariance sites of the paper's GPP evaluation (spec section 6).

    Coordinates of the towers (WGS 84) and IGBP land-cover class, each with where
    it came from (columns ``source`` and ``igbp_source``); ``cube_id`` is the
    site's ScienceCube number in the authors' code. Shipped as
    ``latentcube/samples/flux_sites.csv``.

    Parameters
    ----------
    start, end
        When given, added as the ``start`` and ``end`` of every site, so the
        table can go straight to :func:`build_cubes`.
    size_m
        When given, the ``size_m`` of every site (the paper's ScienceCubes are
        10 km: 10000).

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``name``, ``lat``, ``lon``, ``igbp``, ``source``,
        ``igbp_source``, ``cube_id`` (and ``start``, ``end``, ``size_m`` as asked).
    """
    ref = resources.files("latentcube").joinpath("samples/flux_sites.csv")
    with ref.open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype={"cube_id": str})
    if start is not None:
        df["start"] = str(pd.Timestamp(start).date())
    if end is not None:
        df["end"] = str(pd.Timestamp(end).date())
    if size_m is not None:
        df["size_m"] = float(size_m)
    return df


# ---------------------------------------------------------------------------- manifest


def read_manifest(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The manifest of an output folder of :func:`build_cubes` (empty if there is none)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    df = pd.read_csv(path, dtype={"id": str, "error": str, "request": str}, keep_default_na=False)
    for c in MANIFEST_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    return df


def manifest_stores(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The stores of the sites built successfully, in manifest order (for training)."""
    df = read_manifest(out_dir)
    ok = df[df["status"] == "ok"]
    return [Path(out_dir) / str(p) for p in ok["path"]]


def _write_manifest(out: Path, rows: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the manifest atomically: a temporary file beside it, renamed over it."""
    df = pd.DataFrame([{c: r.get(c, "") for c in MANIFEST_COLUMNS} for r in rows.values()])
    df = df.reindex(columns=list(MANIFEST_COLUMNS))
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, out / MANIFEST)


def _request(site: Mapping[str, Any], size_m: float, kwargs: Mapping[str, Any]) -> str:
    """Digest of what a site's cube is built from (place, dates, size, build options)."""
    what = {
        "lat": site["lat"],
        "lon": site["lon"],
        "start": str(pd.Timestamp(site["start"]).date()),
        "end": str(pd.Timestamp(site["end"]).date()),
        "size_m": size_m,
        "options": {k: repr(v) for k, v in sorted(kwargs.items())},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _complete(store: Path) -> bool:
    """A store is complete when it is there: ``build_cube`` moves it into place only then."""
    return (store / "zarr.json").is_file()


def _summary(store: Path) -> tuple[int, float]:
    """(dates, mean share of valid S2 pixels) of a built store, read chunk by chunk."""
    from latentcube.io import open_zarr

    cube = open_zarr(store)
    valid = cube["s2_valid"]
    frac = float(valid.mean().compute()) if valid.size else 0.0
    return int(cube.sizes["time"]), round(frac, 6)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _row(
    site: Mapping[str, Any], size_m: float, kwargs: Mapping[str, Any], **values: Any
) -> dict[str, Any]:
    """A manifest row of ``site``: what it is built from, updated with ``values``."""
    row: dict[str, Any] = {
        "id": str(site["id"]),
        "status": "",
        "path": f"{site['id']}.zarr",
        "dates": "",
        "valid_fraction": "",
        "error": "",
        "lat": site["lat"],
        "lon": site["lon"],
        "start": str(pd.Timestamp(site["start"]).date()),
        "end": str(pd.Timestamp(site["end"]).date()),
        "size_m": size_m,
        "seconds": "",
        "finished": "",
        "request": _request(site, size_m, kwargs),
    }
    row.update(values)
    return row


def build_site(
    site: Mapping[str, Any], out_dir: str, size_m: float, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Build the cube of one site; failures of the kinds in ``SITE_ERRORS`` are returned.

    The task :func:`build_cubes` runs for each site (on a Dask worker or in the
    calling process).

    Returns
    -------
    dict
        The site's manifest row.
    """
    from latentcube.cube.build import build_cube

    row = _row(site, size_m, kwargs)
    store = Path(out_dir) / row["path"]
    t0 = time.perf_counter()
    try:
        build_cube(
            lat=float(site["lat"]),
            lon=float(site["lon"]),
            size_m=size_m,
            start=row["start"],
            end=row["end"],
            out=store,
            progress=False,
            **kwargs,
        )
        dates, frac = _summary(store)
        row.update(status="ok", dates=dates, valid_fraction=frac)
    except SITE_ERRORS as err:
        row.update(status="failed", dates=0, error=_one_line(err))
    row.update(seconds=round(time.perf_counter() - t0, 3), finished=_now())
    return row


# ------------------------------------------------------------------------ build_cubes


def build_cubes(
    sites: str | os.PathLike[str] | pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    size_m: float = DEFAULT_SIZE_M,
    **build_kwargs: Any,
) -> pd.DataFrame:
    """Build one cube per site, ``out_dir/<id>.zarr``, as independent Dask tasks.

    Parameters
    ----------
    sites
        Sites table (CSV path or ``DataFrame``; see :func:`read_sites`).
    out_dir
        Output folder: the stores and ``manifest.csv``. Locked while the run
        writes it.
    scheduler
        ``None`` or ``"local"`` (default): a ``distributed.LocalCluster`` of
        ``workers`` single-threaded processes (scripts need an
        ``if __name__ == "__main__":`` guard); the address of a running Dask
        scheduler (``out_dir`` must then be on a file system the workers
        share); or ``"synchronous"``: one site after the other in this process.
    workers
        Worker processes of the local cluster (default: one per core).
    progress
        One progress bar over the sites.
    size_m
        Edge of the cubes of sites without a ``size_m`` (default 900 m, the
        paper's 90 x 90 px training cubes).
    **build_kwargs
        Passed to every :func:`~latentcube.cube.build.build_cube` call
        (``catalog``, ``sensors``, ``spec``, ``overwrite``, fields of ``CubeSpec``).

    Returns
    -------
    pandas.DataFrame
        The manifest (also written to ``out_dir/manifest.csv``): one row per
        site, with ``id``, ``status`` (``ok`` or ``failed``), ``path`` (relative
        to ``out_dir``), ``dates``, ``valid_fraction`` (mean share of valid S2
        pixels), ``error`` (one line), the site, the build time and a digest of
        the request. Sites of an earlier run that are not in ``sites`` keep their rows.

    Raises
    ------
    CubeError
        An invalid sites table (before anything is written).
    ValueError
        ``build_kwargs`` holding an argument that the sites table or
        ``build_cubes`` sets (``lat``, ``start``, ``out``, ...).
    latentcube.errors.OutputError
        ``out_dir`` not writable, or in use by another run.

    Notes
    -----
    A site's failure is recorded and the run goes on; an error of another kind
    (a bug) stops the run after the manifest has been written. A site that failed,
    or was never built, is built again by the next run with the same ``out_dir``;
    a complete store built for the same request is left alone. A site whose
    request changed (other dates, size or options) is given to ``build_cube``
    again, which refuses to replace a store built for another request unless
    ``overwrite=True`` is passed (recorded as that site's error).

    Examples
    --------
    >>> build_cubes("sites.csv", "cubes/", catalog="planetary-computer")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from latentcube.io import check_writable, locked

    reserved = sorted(set(build_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"build_cubes sets {', '.join(reserved)} itself (from the sites table or its "
            "own arguments); remove them from the build options"
        )
    if not size_m > 0:
        raise ValueError(f"size_m must be positive, got {size_m}")
    table = read_sites(sites)
    out = Path(out_dir)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        rows: dict[str, dict[str, Any]] = {
            str(r["id"]): dict(r) for r in read_manifest(out).to_dict("records")
        }
        todo: list[dict[str, Any]] = []
        done = 0
        for site in table.to_dict("records"):
            sid = str(site["id"])
            size = float(site["size_m"]) if np.isfinite(site["size_m"]) else float(size_m)
            site["size_m"] = size
            request = _request(site, size, build_kwargs)
            old = rows.get(sid)
            store = out / f"{sid}.zarr"
            # done: a complete store, recorded as built for this very request; anything
            # else goes to build_cube, which returns a store built for the same request
            # as it is (a lost manifest costs a catalog search per site, no rebuild)
            recorded = (
                old is not None and old.get("status") == "ok" and old.get("request") == request
            )
            if recorded and _complete(store):
                done += 1
                continue
            rows[sid] = _row(site, size, build_kwargs, status="pending")
            todo.append(site)
        _write_manifest(out, rows)
        bar = tqdm(total=len(table), initial=done, desc="cubes", unit="site", disable=not progress)
        try:
            if todo:
                runner = _run_synchronous if scheduler == "synchronous" else _run_distributed
                runner(todo, out, build_kwargs, rows, bar, scheduler, workers)
        finally:
            bar.close()
            _write_manifest(out, rows)
    return read_manifest(out)


def _finish(out: Path, rows: dict[str, dict[str, Any]], row: dict[str, Any], bar: Any) -> None:
    rows[row["id"]] = row
    _write_manifest(out, rows)
    failed = sum(r.get("status") == "failed" for r in rows.values())
    bar.update(1)
    bar.set_postfix(failed=failed)


def _run_synchronous(
    todo: list[dict[str, Any]],
    out: Path,
    kwargs: Mapping[str, Any],
    rows: dict[str, dict[str, Any]],
    bar: Any,
    scheduler: str | None,
    workers: int | None,
) -> None:
    for site in todo:
        _finish(out, rows, build_site(site, str(out), site["size_m"], kwargs), bar)


def _run_distributed(
    todo: list[dict[str, Any]],
    out: Path,
    kwargs: Mapping[str, Any],
    rows: dict[str, dict[str, Any]],
    bar: Any,
    scheduler: str | None,
    workers: int | None,
) -> None:
    """Each site one task; rows are written as the tasks end, in any order."""
    import uuid

    from dask.distributed import as_completed
    from distributed.scheduler import KilledWorker

    from latentcube.cube.cluster import dask_client

    run = uuid.uuid4().hex[:8]
    with dask_client(scheduler, workers) as client:
        futures = {
            client.submit(
                build_site,
                site,
                str(out.resolve()),
                site["size_m"],
                dict(kwargs),
                key=f"latentcube-site-{site['id']}-{run}",
                pure=False,
            ): site
            for site in todo
        }
        try:
            for fut in as_completed(futures):
                site = futures[fut]
                try:
                    row = fut.result()
                except KilledWorker as err:  # the site's worker died (memory?) twice
                    why = f"KilledWorker: the worker building this site died ({err})"
                    row = _row(
                        site,
                        site["size_m"],
                        kwargs,
                        status="failed",
                        dates=0,
                        error=" ".join(why.split()),
                        finished=_now(),
                    )
                _finish(out, rows, row, bar)
        except BaseException:
            client.cancel(list(futures))
            raise


def build_or_reuse(
    out: str | os.PathLike[str] | None,
    *,
    embedding: str | os.PathLike[str] | None = None,
    lat: float | None,
    lon: float | None,
    start: str | None,
    end: str | None,
    size_m: float = 2560.0,
    catalog: str | None = None,
    sensors: Sequence[str] = ("s2", "s1"),
    time_axis: str = "s2",
    log: Callable[[str], Any] | None = None,
) -> Path:
    """The cube of a place for embedding: the one already at ``out``, or built there.

    ``latentcube embed --lat --lon --start --end`` calls it. S2 dates are the time
    axis; S1 is added when ``sensors`` has it (other sensors stay absent).

    Parameters
    ----------
    out
        Where the cube is (or is built); None: ``<embedding stem>_cube.zarr`` beside
        ``embedding``.
    embedding
        The embedding store the cube is for: refused, before anything is built, when
        it is, contains or lies inside ``out``.
    lat, lon, start, end, size_m, catalog, sensors, time_axis
        The cube to build (:func:`latentcube.cube.build.build_cube`).
    log
        Called with a line saying whether the cube is reused or built.

    Returns
    -------
    pathlib.Path
        The cube's path.

    Raises
    ------
    CubeError
        When a coordinate or date is missing, or ``out`` and ``embedding`` are both None.
    latentcube.errors.OutputError
        When ``embedding`` overlaps ``out``.
    """
    given = (("--lat", lat), ("--lon", lon), ("--start", start), ("--end", end))
    missing = [n for n, v in given if v is None]
    if missing:
        raise CubeError(f"building a cube needs {', '.join(missing)} as well")
    if out is None:
        if embedding is None:
            raise CubeError("build_or_reuse needs the cube's path or the embedding store's")
        out = Path(embedding).with_name(f"{Path(embedding).stem}_cube.zarr")
    out = Path(out)
    if embedding is not None:
        check_disjoint(embedding, [out])
    say = log or (lambda _msg: None)
    if out.exists():
        say(f"using the cube built before at {out}")
        return out
    say(f"building the cube at {out}")
    kwargs: dict[str, Any] = {"catalog": catalog} if catalog else {}
    try:  # looked up at call time, so a stub or a missing module is seen
        build = import_module("latentcube.cube.build")
    except ImportError as err:
        raise CubeError(
            "building cubes from --lat/--lon needs latentcube.cube.build, which this "
            f"installation lacks ({err}); build the cube separately and pass its path"
        ) from err
    build.build_cube(
        lat=lat,
        lon=lon,
        size_m=size_m,
        start=start,
        end=end,
        out=out,
        sensors=("s2", *(s for s in sensors if s == "s1")),
        time_axis=time_axis,
        **kwargs,
    )
    return out
