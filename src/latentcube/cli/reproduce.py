"""``latentcube reproduce``: the paper recipe from nothing to the report, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli._app import app


@app.command()
def reproduce(
    config: Annotated[
        Path | None,
        typer.Argument(help="Recipe YAML (default: the paper's configuration, or --toy's)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("reproduce"),
    dry_run: Annotated[
        bool, typer.Option(help="Print the plan and its estimated cost; write nothing.")
    ] = False,
    toy: Annotated[bool, typer.Option(help="Start from the toy-scale configuration.")] = False,
    catalog: Annotated[
        str | None, typer.Option(help="STAC API, catalogue name or static catalog.json.")
    ] = None,
    flux_dir: Annotated[
        Path | None, typer.Option(help="Folder of flux files, one per site (id in the name).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Training device (auto, cpu, cuda[:N], mps).")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="Training precision (32, bf16, 16-mixed).")
    ] = None,
    rates: Annotated[
        Path | None, typer.Option(help="Rates file for --dry-run (default: the shipped one).")
    ] = None,
    step: Annotated[list[str] | None, typer.Option(help="Run only this step (repeatable).")] = None,
) -> None:
    """Sample sites, build cubes, train, embed the flux sites, run GPP, write one report.

    Every step is skipped when it is done with the same settings, so the same
    command resumes a run that was killed.
    """
    from latentcube.recipe.reproduce import reproduce as run

    typer.echo(
        run(
            config,
            out,
            dry_run=dry_run,
            toy=toy,
            catalog=catalog,
            flux_dir=flux_dir,
            device=device,
            precision=precision,
            rates=rates,
            steps=step,
            log=lambda msg: typer.echo(msg, err=True),
        )
    )
