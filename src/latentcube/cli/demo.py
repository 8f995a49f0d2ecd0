"""``latentcube demo``: the whole pipeline once on the bundled sample, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli._app import app, fail


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
    pretrained: Annotated[
        bool,
        typer.Option(help="Skip training: embed with the shipped fused S1+S2 model."),
    ] = False,
) -> None:
    """Run the whole pipeline once on a bundled real sample, offline.

    Reads a real Sentinel-1 + Sentinel-2 cube over fields in Flanders (Belgium),
    trains a small Sentinel-2 context autoencoder for a few minutes, embeds
    every pixel and date densely, writes the embedding cube (Zarr v3 with its
    CRS) and a PNG comparing true colour with the embedding's first three
    principal components, then prints a summary.
    """
    from latentcube.demo import run_demo

    if model not in ("fast", "tiny"):
        fail(f"--model must be 'fast' or 'tiny', got {model!r}")
    t0 = time.perf_counter()
    result = run_demo(
        out,
        cube_path=cube,
        variant=model,  # type: ignore[arg-type]
        train_seconds=train_seconds,
        seed=seed,
        progress=progress,
        log=typer.echo,
        pretrained=pretrained,
    )
    typer.echo("")
    typer.echo(result.summary())
    typer.echo(f"total            {time.perf_counter() - t0:.1f} s")
