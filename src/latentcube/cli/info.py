"""``latentcube info`` and ``latentcube models``: describe a cube or the model presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli._app import app


@app.command()
def info(
    path: Annotated[
        Path,
        typer.Argument(help="A cube (Zarr store, sample folder or file) or an embedding store."),
    ],
) -> None:
    """Describe a cube or an embedding store.

    A cube is checked against the data model (dates, bands, grid, validity); an
    embedding store shows its provenance (model and hash, sensors, bands, dates,
    version) and its STAC Item.
    """
    from latentcube.store_metadata import describe, is_embedding_store

    if is_embedding_store(path):
        lines = describe(path)  # an unfinished store is refused in one line
        typer.echo(f"{path}: latentcube embedding store")
        for line in lines:
            typer.echo(f"  {line}")
        return
    from latentcube.cube.readers import describe_cube, open_cube

    lines = describe_cube(open_cube(path))  # refused in one line before anything is printed
    typer.echo(f"{path}: valid latentcube cube")
    for line in lines:
        typer.echo(f"  {line}")


@app.command()
def models(
    sensor: Annotated[
        list[str] | None, typer.Option(help="Sensor(s) to describe (default: s2 and s1).")
    ] = None,
) -> None:
    """List the stage-1 model configurations: parameters, latent size, dense path.

    The paper's parameter count is compared with the estimate of the paper
    notes (about 3.7 M parameters per sensor autoencoder).
    """
    from latentcube.models.autoencoder import describe_presets

    for line in describe_presets(sensor or ["s2", "s1"]):
        typer.echo(line)
