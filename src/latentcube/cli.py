"""The ``latentcube`` command line: thin wrappers around one public function each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

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


if __name__ == "__main__":  # pragma: no cover
    app()
