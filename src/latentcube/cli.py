"""The ``latentcube`` command line: thin wrappers around one public function each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="latentcube",
    help=(
        "Turn Sentinel-1 and Sentinel-2 time series into embedding cubes: one small vector "
        "per 10 m pixel per cloud-free date."
    ),
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
    ] = False,
) -> None:
    if version:
        from latentcube import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the model, embedding and figure.")
    ] = Path("latentcube-demo"),
    cube: Annotated[
        Path | None,
        typer.Option(help="Use this cube instead of the bundled Flanders S1+S2 sample."),
    ] = None,
    train_seconds: Annotated[
        float, typer.Option(help="Time budget for training the S2 autoencoder, in seconds.")
    ] = 120.0,
    model: Annotated[
        str, typer.Option(help="Model configuration: 'fast' (default) or 'tiny' (seconds).")
    ] = "fast",
    seed: Annotated[int, typer.Option(help="Random seed of split, sampling and training.")] = 42,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the whole pipeline once on a bundled real sample, offline.

    Reads a real Sentinel-1 + Sentinel-2 cube over fields in Flanders (Belgium),
    trains a small Sentinel-2 context autoencoder for a few minutes, embeds
    every pixel and date densely, writes the embedding cube (Zarr v3 with its
    CRS) and a PNG comparing true colour with the embedding's first three
    principal components, then prints a summary.
    """
    from latentcube.demo import run_demo
    from latentcube.errors import LatentcubeError

    if model not in ("fast", "tiny"):
        _fail(f"--model must be 'fast' or 'tiny', got {model!r}")
    t0 = time.perf_counter()
    try:
        result = run_demo(
            out,
            cube_path=cube,
            variant=model,  # type: ignore[arg-type]
            train_seconds=train_seconds,
            seed=seed,
            progress=progress,
            log=typer.echo,
        )
    except (LatentcubeError, FileNotFoundError) as err:
        _fail(str(err))
        return
    typer.echo("")
    typer.echo(result.summary())
    typer.echo(f"total            {time.perf_counter() - t0:.1f} s")


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A cube: Zarr store, sample folder or file.")],
) -> None:
    """Check a cube against the data model and describe it (dates, bands, grid, validity)."""
    import numpy as np

    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError

    try:
        cube = open_cube(path)
    except (LatentcubeError, FileNotFoundError) as err:
        _fail(str(err))
        return
    t = cube["time"].values
    frac = cube["s2_valid"].mean(dim=("y", "x")).values
    typer.echo(f"{path}: valid latentcube cube")
    typer.echo(
        f"  grid    {cube.sizes['y']} x {cube.sizes['x']} px, CRS {cube.rio.crs}, "
        f"resolution {abs(float(cube.x[1] - cube.x[0])):g} m"
    )
    typer.echo(
        f"  time    {len(t)} dates, {np.datetime_as_string(t[0], 'D')} .. "
        f"{np.datetime_as_string(t[-1], 'D')}, mean valid fraction {frac.mean():.2f}"
    )
    typer.echo(f"  s2      bands {', '.join(map(str, cube['band'].values))}")
    if "s1" in cube:
        matched = int((~np.isnat(cube["s1_time"].values)).sum())
        typer.echo(
            f"  s1      bands {', '.join(map(str, cube['s1_band'].values))}, "
            f"{matched}/{len(t)} dates matched"
        )
    for k in ("source", "attribution"):
        if k in cube.attrs:
            typer.echo(f"  {k:<7} {cube.attrs[k]}")


@app.command()
def train(
    cubes: Annotated[
        list[Path], typer.Argument(help="Cubes to train on (Zarr stores, sample folders, files).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for checkpoints and metrics.csv.")
    ],
    sensor: Annotated[str, typer.Option(help="Sensor to model: 's2' or 's1'.")] = "s2",
    model: Annotated[
        str, typer.Option(help="Model configuration: 'fast', 'paper' or 'tiny'.")
    ] = "fast",
    preset: Annotated[
        str,
        typer.Option(help="Optimisation preset: 'quick' (minutes on a laptop) or 'paper'."),
    ] = "quick",
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML file with 'model:' and/or 'train:' sections overriding the presets."
        ),
    ] = None,
    max_seconds: Annotated[
        float | None, typer.Option(help="Stop training after this many seconds.")
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Stop after this many epochs.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and training.")] = 42,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt when it exists.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a stage-1 context autoencoder on one or more cubes.

    Windows of 11 dates x 15 x 15 pixels are cut from the cubes and split into
    training and validation by cube (two cubes or more) or by spatial blocks (one
    cube). Checkpoints (best.pt, last.pt, each with a .json of its configuration)
    and metrics.csv go to OUT; a killed run continues where it stopped.
    """
    import yaml

    from latentcube.cube.readers import open_cube
    from latentcube.data.windows import split_windows
    from latentcube.errors import LatentcubeError
    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import train as run_training
    from latentcube.training import train_config_preset

    try:
        overrides = yaml.safe_load(config.read_text()) if config else {}
        mcfg = AutoencoderConfig.preset(model, sensor)
        mcfg = AutoencoderConfig.model_validate({**mcfg.model_dump(), **overrides.get("model", {})})
        tcfg = train_config_preset(preset)
        updates = {**overrides.get("train", {}), "seed": seed}
        if max_seconds is not None:
            updates["max_seconds"] = max_seconds
        if max_epochs is not None:
            updates["max_epochs"] = max_epochs
        tcfg = type(tcfg).model_validate({**tcfg.model_dump(), **updates})
        loaded = [open_cube(c).load() for c in cubes]
        tr, va = split_windows(loaded, sensor, mcfg.bands, seed=seed, window=mcfg.window)
        typer.echo(f"{len(tr)} training and {len(va)} validation windows from {len(cubes)} cube(s)")
        result = run_training(
            mcfg,
            tr,
            va,
            tcfg,
            out,
            resume=resume,
            progress=progress,
            provenance={"cubes": [str(c) for c in cubes]},
        )
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(
        f"best validation centre-pixel MAE {result.best_val:.4f} after {result.epochs} epochs "
        f"({result.stopped}, {result.seconds:.0f} s); model: {result.checkpoint}"
    )


@app.command()
def embed(
    cube: Annotated[
        Path | None,
        typer.Argument(
            help="The cube to embed (a Zarr store for large areas); or use --lat/--lon."
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="A checkpoint written by 'latentcube train'.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output Zarr store.")] = None,
    dtype: Annotated[
        str, typer.Option(help="Storage type of the embedding: 'float32' or 'float16'.")
    ] = "float32",
    chunk: Annotated[
        int, typer.Option(help="Output chunk side in pixels (bounds worker memory).")
    ] = 256,
    time_chunk: Annotated[
        int, typer.Option(help="Output chunk length in dates (bounds worker memory).")
    ] = 64,
    edge: Annotated[
        str,
        typer.Option(
            help="Pixels and dates without a full context: 'nan' (the paper's crop) or "
            "'pad' (embedded from a padded context and flagged in 'padded')."
        ),
    ] = "nan",
    workers: Annotated[
        int | None, typer.Option(help="Worker processes of the local Dask cluster.")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Address of a running Dask scheduler (e.g. tcp://host:8786)."),
    ] = None,
    lat: Annotated[
        float | None, typer.Option(help="Build the cube first: latitude of its centre.")
    ] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude of the cube's centre.")] = None,
    size_m: Annotated[float, typer.Option(help="Side of the cube to build, in metres.")] = 2560.0,
    start: Annotated[str | None, typer.Option(help="First date of the cube to build.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date of the cube to build.")] = None,
    catalog: Annotated[
        str | None, typer.Option(help="STAC catalogue to build the cube from (default: its own).")
    ] = None,
    cube_out: Annotated[
        Path | None,
        typer.Option(help="Where to write the built cube (default: OUT with suffix _cube.zarr)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing complete store.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Embed every pixel and cloud-free date of a cube into a Zarr store.

    The output holds 'embedding' (feature, time, y, x) on the cube's grid and CRS
    and the quality layers 'valid', 'recon_mae_<sensor>' (centre-pixel
    reconstruction error) and, with --edge pad, 'padded'. Dense models (fast, tiny)
    run on Dask, one task per output chunk, and a run that was stopped resumes
    where it ended when started again with the same arguments; the paper model
    runs window by window. With --lat/--lon/--start/--end instead of CUBE, the
    cube is built first (and reused if it exists at --cube-out).
    """
    from latentcube.bundle import load_checkpoint
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.inference import embed as run_embed
    from latentcube.inference import embed_to_zarr, open_embedding, write_embedding

    if model is None or out is None:
        _fail("--model and --out are required")
        return
    if (cube is None) == (lat is None and lon is None):
        _fail("give either a CUBE path or --lat/--lon/--start/--end to build one")
        return
    t0 = time.perf_counter()
    try:
        net, _meta = load_checkpoint(model)
        if cube is None:
            cube = _build_cube_for_embed(
                lat,
                lon,
                size_m,
                start,
                end,
                catalog,
                net.config.sensor,
                cube_out or out.with_name(f"{out.stem}_cube.zarr"),
            )
        if net.supports_dense:
            path = embed_to_zarr(
                cube,
                model,
                out,
                chunk=chunk,
                time_chunk=time_chunk,
                dtype=dtype,
                edge=edge,  # type: ignore[arg-type]
                scheduler=scheduler,
                workers=workers,
                overwrite=overwrite,
                progress=progress,
            )
        else:
            lazy = run_embed(
                open_cube(cube),
                net,
                chunks={"time": time_chunk, "y": chunk, "x": chunk},
                edge=edge,  # type: ignore[arg-type]
            )
            path = write_embedding(lazy, out, dtype=dtype, overwrite=overwrite, progress=progress)
        ds = open_embedding(path)
    except (LatentcubeError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
        return
    n = int(ds["valid"].sum())
    typer.echo(
        f"wrote {path}: {dict(ds['embedding'].sizes)}, {n} valid pixel-dates, "
        f"{time.perf_counter() - t0:.1f} s"
    )


def _build_cube_for_embed(
    lat: float | None,
    lon: float | None,
    size_m: float,
    start: str | None,
    end: str | None,
    catalog: str | None,
    sensor: str,
    cube_out: Path,
) -> Path:
    """Build the cube of ``latentcube embed --lat --lon ...`` (or reuse the one at ``cube_out``)."""
    from latentcube.errors import LatentcubeError

    missing = [
        n
        for n, v in (("--lat", lat), ("--lon", lon), ("--start", start), ("--end", end))
        if v is None
    ]
    if missing:
        raise LatentcubeError(f"building a cube needs {', '.join(missing)} as well")
    if cube_out.exists():
        typer.echo(f"using the cube built before at {cube_out}")
        return cube_out
    try:
        from latentcube.cube.build import build_cube
    except ImportError as err:
        raise LatentcubeError(
            "building cubes from --lat/--lon needs latentcube.cube.build, which this "
            f"installation lacks ({err}); build the cube separately and pass its path"
        ) from err
    typer.echo(f"building the cube at {cube_out}")
    kwargs: dict[str, Any] = {"catalog": catalog} if catalog else {}
    build_cube(
        lat=lat,
        lon=lon,
        size_m=size_m,
        start=start,
        end=end,
        out=cube_out,
        sensors=("s2",) if sensor == "s2" else ("s2", sensor),  # S2 dates are the time axis
        **kwargs,
    )
    return cube_out


if __name__ == "__main__":  # pragma: no cover
    app()
