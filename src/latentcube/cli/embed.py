"""``latentcube embed``: a cube (or a place) into an embedding store, on Dask."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from latentcube.cli._app import app, fail, positive

CubeArg = Annotated[
    Path | None,
    typer.Argument(help="The cube to embed (a Zarr store for large areas); or use --lat/--lon."),
]
Model = Annotated[
    Path | None,
    typer.Option(
        help="A checkpoint or fused bundle (file or folder) written by 'latentcube train'; "
        "default: the S1+S2 model shipped with latentcube."
    ),
]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Output Zarr store.")]
Dtype = Annotated[
    Literal["float32", "float16"], typer.Option(help="Storage type of the embedding.")
]
Compression = Annotated[
    Literal["zstd", "gzip"],
    typer.Option(
        help="Codec of every array of the store: 'zstd' (faster) or 'gzip' (opens in every "
        "GDAL >= 3.11 with the Zarr driver: zlib is mandatory in GDAL, zstd is optional and "
        "missing from some builds, e.g. pyogrio's wheels)."
    ),
]
Chunk = Annotated[int, typer.Option(help="Output chunk side in pixels (bounds worker memory).")]
TimeChunk = Annotated[
    int, typer.Option(help="Output chunk length in dates (bounds worker memory).")
]
Edge = Annotated[
    Literal["nan", "pad"],
    typer.Option(
        help="Pixels and dates without a full context: 'nan' (the paper's crop) or "
        "'pad' (embedded from a padded context and flagged in 'padded')."
    ),
]
Workers = Annotated[
    int | None, typer.Option(help="Workers of the local Dask cluster (default: one per core).")
]
Processes = Annotated[
    bool,
    typer.Option(
        help="Workers of the local Dask cluster: processes (the default), or threads of "
        "this process with --no-processes (no worker start-up: quicker for small runs)."
    ),
]
Scheduler = Annotated[
    str | None, typer.Option(help="Address of a running Dask scheduler (e.g. tcp://host:8786).")
]
Device = Annotated[
    str,
    typer.Option(
        help="Where the model runs: auto (a GPU when there is one), cpu, cuda (one Dask worker "
        "per visible GPU), cuda:N or mps."
    ),
]
Lat = Annotated[float | None, typer.Option(help="Build the cube first: latitude of its centre.")]
Lon = Annotated[float | None, typer.Option(help="Longitude of the cube's centre.")]
SizeM = Annotated[float, typer.Option(help="Side of the cube to build, in metres.")]
Start = Annotated[str | None, typer.Option(help="First date of the cube to build.")]
End = Annotated[str | None, typer.Option(help="Last date of the cube to build.")]
Catalog = Annotated[
    str | None, typer.Option(help="STAC catalogue to build the cube from (default: its own).")
]
CubeOut = Annotated[
    Path | None,
    typer.Option(help="Where to write the built cube (default: OUT with suffix _cube.zarr)."),
]
Overwrite = Annotated[
    bool, typer.Option(help="Replace an existing store (swapped in only once complete).")
]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
Hide = Annotated[
    list[str] | None,
    typer.Option(help="Fused models: leave this sensor out (repeatable), e.g. --hide s2."),
]
TimeAxis = Annotated[
    str,
    typer.Option(
        help="With --lat/--lon: time axis of the cube to build, 's2' (S2 clear dates) or "
        "'union' (also S1 days without S2; fused models)."
    ),
]


@app.command()
def embed(
    cube: CubeArg = None,
    model: Model = None,
    out: Out = None,
    dtype: Dtype = "float32",
    compression: Compression = "zstd",
    chunk: Chunk = 256,
    time_chunk: TimeChunk = 64,
    edge: Edge = "nan",
    workers: Workers = None,
    processes: Processes = True,
    scheduler: Scheduler = None,
    device: Device = "auto",
    lat: Lat = None,
    lon: Lon = None,
    size_m: SizeM = 2560.0,
    start: Start = None,
    end: End = None,
    catalog: Catalog = None,
    cube_out: CubeOut = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
    hide: Hide = None,
    time_axis: TimeAxis = "s2",
) -> None:
    """Embed every pixel and cloud-free date of a cube into a Zarr store.

    The output holds 'embedding' (feature, time, y, x) on the cube's grid and CRS
    and quality layers: 'valid', the centre-pixel reconstruction error and, for a
    fused bundle (the default), 'sensors' (bit mask of the contributing sensors).
    The work runs on Dask, one task per output chunk; a stopped run resumes where
    it ended when started again with the same arguments, and OUT is locked while a
    run writes it. With --lat/--lon/--start/--end instead of CUBE, the cube is built
    first (reused if it exists at --cube-out). --device cuda: one worker per GPU.
    --compression gzip: a store GDAL builds without zstd can read.
    """
    from latentcube.bundle import ModelBundle, default_model_path
    from latentcube.cube.sites import build_or_reuse
    from latentcube.inference import describe_store, embed_to_zarr
    from latentcube.inference.cluster import placement

    if out is None:
        fail("--out is required")
    if (cube is None) == (lat is None and lon is None):
        fail("give either a CUBE path or --lat/--lon/--start/--end to build one")
    for value, option in ((workers, "--workers"), (chunk, "--chunk"), (time_chunk, "--time-chunk")):
        positive(value, option)
    # a device this machine lacks is refused before anything is written
    placement(device, scheduler=scheduler, workers=workers)
    t0 = time.perf_counter()
    bundle = ModelBundle.load(model if model is not None else default_model_path())
    if model is None:
        typer.echo(f"model: {bundle.path} (shipped default, sensors {'+'.join(bundle.sensors)})")
    if cube is None:
        cube = build_or_reuse(
            cube_out, embedding=out, lat=lat, lon=lon, start=start, end=end, size_m=size_m,
            catalog=catalog, sensors=bundle.sensors, time_axis=time_axis, log=typer.echo,
        )  # fmt: skip
    path = embed_to_zarr(
        cube, bundle, out, chunk=chunk, time_chunk=time_chunk, dtype=dtype, edge=edge,
        scheduler=scheduler, workers=workers, processes=processes, overwrite=overwrite,
        progress=progress, hide=hide or (), device=device, compression=compression,
    )  # fmt: skip
    typer.echo(f"wrote {path}: {describe_store(path)}, {time.perf_counter() - t0:.1f} s")
