"""``latentcube cube``: one analysis-ready cube from STAC, or one per site of a list."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from latentcube.cli._app import app, fail, positive

Out = Annotated[
    Path,
    typer.Option("--out", "-o", help="Zarr store to write; with --sites/--sample a folder."),
]
Start = Annotated[str | None, typer.Option(help="First day, e.g. 2023-04-01.")]
End = Annotated[str | None, typer.Option(help="Last day (inclusive), e.g. 2023-09-30.")]
Lat = Annotated[float | None, typer.Option(help="Latitude of the centre (degrees).")]
Lon = Annotated[float | None, typer.Option(help="Longitude of the centre (degrees).")]
SizeM = Annotated[float | None, typer.Option("--size-m", help="Edge of the square area in m.")]
Bbox = Annotated[
    tuple[float, float, float, float] | None,
    typer.Option(help="Area as W S E N in degrees (instead of --lat/--lon/--size-m)."),
]
Sites = Annotated[
    Path | None,
    typer.Option(help="CSV of sites (id, lat, lon, start, end[, size_m]): one cube per site."),
]
Sample = Annotated[
    int | None, typer.Option(help="Sample this many training sites on land (the paper: 250).")
]
Region = Annotated[
    str, typer.Option(help="--sample: region as W,S,E,N degrees (the paper's by default).")
]
Years = Annotated[str, typer.Option(help="--sample: comma-separated calendar years to draw.")]
FluxSites = Annotated[
    bool, typer.Option(help="One cube per flux site of the paper (needs --start/--end).")
]
Seed = Annotated[int, typer.Option(help="--sample: seed of the draw.")]
Catalog = Annotated[
    str,
    typer.Option(
        help="'planetary-computer', 'earth-search' (S2 only), a STAC API URL or a "
        "catalog.json path/URL."
    ),
]
SensorsOpt = Annotated[str, typer.Option(help="Comma-separated sensors: 's2,s1' or 's2'.")]
MinValid = Annotated[
    float, typer.Option(help="Drop dates with a smaller share of clear S2 pixels.")
]
Mask = Annotated[
    str,
    typer.Option(
        help="Cloud mask: 'scl' (Sen2Cor scene classes), 'csmask' (learned, ukis-csmask; "
        "pip install 'latentcube[cloudmask]') or 'scl+csmask' (clear where both agree)."
    ),
]
CsmaskBands = Annotated[
    int, typer.Option(help="Learned mask's model: 6 (B02-B04, B08, B11, B12) or 4 bands.")
]
Dilation = Annotated[int, typer.Option(help="Grow clouds and shadows by this many pixels.")]
MaxCloud = Annotated[
    float | None, typer.Option(help="Skip S2 scenes with eo:cloud_cover above this (%).")
]
S1Gap = Annotated[
    float, typer.Option(help="Largest S2-S1 distance in days; farther dates stay masked.")
]
Nbar = Annotated[bool, typer.Option(help="BRDF-correct S2 to nadir (NBAR) with sen2nbar.")]
Scheduler = Annotated[
    str | None,
    typer.Option(
        help="Dask: 'local' (a local cluster) or a scheduler address; default for one cube: "
        "in this process, one unit at a time; for many: a local cluster, a task per site."
    ),
]
Workers = Annotated[int | None, typer.Option(help="Worker processes of the local Dask cluster.")]
Overwrite = Annotated[
    bool, typer.Option(help="Replace an existing store built for another request.")
]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
TimeAxis = Annotated[
    str,
    typer.Option(
        help="'s2' (the S2 clear dates, the paper's) or 'union' (also every S1 "
        "acquisition day without S2, S2 masked there; needs s1)."
    ),
]


def _floats(text: str, n: int, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        fail(f"{option} takes {n} comma-separated numbers, got {text!r}")
    return values


def _many(
    out: Path, sites: Path | None, sample: int | None, flux: bool, opts: dict[str, Any]
) -> None:
    """``--sites``, ``--sample`` or ``--flux-sites``: one cube per site, on Dask."""
    from latentcube.cube.sampling import PAPER_REGION, sample_sites
    from latentcube.cube.sites import build_cubes, flux_sites

    region, years, seed = opts.pop("region"), opts.pop("years"), opts.pop("seed")
    table: Any = sites
    if sample is not None:
        box = _floats(region, 4, "--region") if region else list(PAPER_REGION)
        yrs = [int(y) for y in _floats(years, len(years.split(",")), "--years")]
        table = sample_sites(sample, box, yrs, seed=seed)
    elif flux:
        table = flux_sites(opts.pop("start"), opts.pop("end"))
    for key in ("start", "end", "lat", "lon", "bbox"):
        opts.pop(key, None)
    size = opts.pop("size_m")
    manifest = build_cubes(table, out, **({"size_m": size} if size else {}), **opts)
    counts = manifest["status"].value_counts().to_dict()
    typer.echo(f"{out}: {', '.join(f'{n} {k}' for k, n in counts.items())}; see manifest.csv")
    if counts.get("failed"):
        raise typer.Exit(code=1)


@app.command()
def cube(
    out: Out,
    start: Start = None,
    end: End = None,
    lat: Lat = None,
    lon: Lon = None,
    size_m: SizeM = None,
    bbox: Bbox = None,
    sites: Sites = None,
    sample: Sample = None,
    region: Region = "",
    years: Years = "2018,2019,2020,2021,2022,2023",
    flux_sites: FluxSites = False,
    seed: Seed = 42,
    catalog: Catalog = "planetary-computer",
    sensors: SensorsOpt = "s2,s1",
    min_valid_fraction: MinValid = 0.0,
    mask: Mask = "scl",
    csmask_bands: CsmaskBands = 6,
    mask_dilation: Dilation = 1,
    max_cloud_cover: MaxCloud = None,
    s1_max_gap_days: S1Gap = 6.0,
    nbar: Nbar = False,
    scheduler: Scheduler = None,
    workers: Workers = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
    time_axis: TimeAxis = "s2",
) -> None:
    """Build an analysis-ready Sentinel-2 (+ Sentinel-1) cube from a STAC catalog.

    The grid is the UTM zone of the centre at 10 m. S2 L2A: the ten model bands as
    reflectance in [0, 1], clouds, shadows and snow masked (SCL or the learned
    mask, --mask), tiles of one day merged. S1 RTC: VV and VH smoothed over three
    acquisitions, stored as (dB + 30) / 35, matched to the nearest S2 date within
    --s1-max-gap-days. With --sites, --sample or --flux-sites, OUT is a folder with
    one cube per site and manifest.csv; a failed site is recorded and the others go
    on. A stopped build resumes when started again with the same arguments.
    """
    from latentcube.cube.build import build_cube, describe_build

    positive(workers, "--workers")
    names = tuple(s.strip().lower() for s in sensors.split(",") if s.strip())
    opts: dict[str, Any] = dict(
        start=start, end=end, lat=lat, lon=lon, size_m=size_m, bbox=bbox, catalog=catalog,
        sensors=names, overwrite=overwrite, progress=progress, mask=mask, nbar=nbar,
        csmask_bands=csmask_bands, min_valid_fraction=min_valid_fraction, workers=workers,
        mask_dilation=mask_dilation, max_cloud_cover=max_cloud_cover, scheduler=scheduler,
        s1_max_gap_days=s1_max_gap_days, time_axis=time_axis,
    )  # fmt: skip
    if sites is not None or sample is not None or flux_sites:
        _many(
            out, sites, sample, flux_sites, {**opts, "region": region, "years": years, "seed": seed}
        )
        return
    if start is None or end is None:
        fail("--start and --end are required (or give --sites)")
    t0 = time.perf_counter()
    ds = _with_zone_warnings(build_cube, out=out, **opts)
    typer.echo(f"wrote {out}: {describe_build(ds)}, {time.perf_counter() - t0:.1f} s")


def _with_zone_warnings(fn: Any, **kwargs: Any) -> Any:
    """``fn(**kwargs)``, printing its warnings about UTM zones on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = fn(**kwargs)
    for w in caught:
        if "zone" in str(w.message):
            typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
    return result
