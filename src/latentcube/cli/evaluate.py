"""``latentcube evaluate ...``: probes, GPP and reconstruction, each into a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from latentcube.cli._app import _Group, app, command_line

evaluate_app = typer.Typer(
    cls=_Group,
    help="Evaluate embeddings against baselines: GPP at flux towers, land cover, crop type, "
    "reconstruction. Each command writes a report folder (report.md, figures/, results.json).",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")

Out = Annotated[Path, typer.Option("--out", "-o", help="Report folder.")]
Model = Annotated[Path | None, typer.Option(help="Model bundle to embed the cubes with.")]
Embedding = Annotated[
    list[Path] | None, typer.Option(help="Embedding store per cube (instead of --model).")
]
Name = Annotated[str, typer.Option(help="Name of the embedding feature set.")]
Block = Annotated[int, typer.Option(help="Spatial CV block side in px (> 15).")]
Repeats = Annotated[
    int,
    typer.Option(
        help="Repeat the blocked CV with this many fold assignments (seed, seed+1, ...): "
        "mean ± sd per set and paired differences of the embedding to every set."
    ),
]
Labels = Annotated[
    list[Path] | None,
    typer.Option(
        help="Label raster per cube (integer class codes; 0 or nodata = no label), put on the "
        "cube's grid by nearest neighbour (any grid and CRS)."
    ),
]
LabelVariable = Annotated[
    str | None, typer.Option(help="The label variable when --labels are NetCDF files or Zarr.")
]
Seed = Annotated[int, typer.Option(help="Seed of sampling, folds and probes.")]
Device = Annotated[
    str,
    typer.Option(
        help="Where --model embeds the cubes: auto (a GPU when there is one), cpu, "
        "cuda, cuda:N or mps."
    ),
]


def _echo_scores(res: dict[str, Any], width: int) -> None:
    """One line per feature set: macro-F1 of both probes (± sd over CV repeats)."""
    from latentcube.evaluation.report import f1_cell

    for k, v in res["scores"].items():
        typer.echo(f"{k:<{width}} macro-F1 logreg {f1_cell(v['logreg'])}  knn {f1_cell(v['knn'])}")


@evaluate_app.command("landcover")
def evaluate_landcover(
    cubes: Annotated[
        list[Path],
        typer.Argument(help="GreenEarthNet minicubes or stores with 'landcover', or --labels."),
    ],
    out: Out,
    labels: Labels = None,
    label_variable: LabelVariable = None,
    model: Model = None,
    embedding: Embedding = None,
    name: Name = "embedding",
    block: Block = 16,
    max_samples: Annotated[int, typer.Option(help="Pixel-dates drawn per cube.")] = 20000,
    seed: Seed = 0,
    repeats: Repeats = 1,
    device: Device = "auto",
) -> None:
    """Land-cover probe (ESA WorldCover) of an embedding and every baseline feature set.

    The classes are each cube's 'landcover' variable, or with --labels a raster per
    cube, such as an ESA WorldCover tile (codes outside its legend are ignored).
    """
    from latentcube.evaluation.runs import evaluate_landcover as run

    res = run(
        cubes, out, labels=labels, label_variable=label_variable, model=model,
        embedding=embedding, name=name, block=block, max_samples=max_samples, seed=seed,
        repeats=repeats, device=device, command=command_line(),
    )  # fmt: skip
    _echo_scores(res, 28)
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("croptype")
def evaluate_croptype(
    patches: Annotated[
        list[Path],
        typer.Argument(help="WorldCereal patch folders (with labels), or any cubes with --labels."),
    ],
    out: Out,
    labels: Labels = None,
    label_variable: LabelVariable = None,
    season: Annotated[
        str | None,
        typer.Option(help="START,END of the labels' season (default: 1 Mar - 31 Oct, last year)."),
    ] = None,
    model: Model = None,
    embedding: Embedding = None,
    name: Name = "embedding",
    block: Block = 16,
    seed: Seed = 0,
    repeats: Repeats = 1,
    device: Device = "auto",
) -> None:
    """Crop-type probe: per-date series vs season mean, embedding vs every baseline.

    The classes are each WorldCereal patch's crop-type labels, or with --labels a
    raster per cube (e.g. rasterised parcels with crop codes).
    """
    from latentcube.evaluation.runs import evaluate_croptype as run

    res = run(
        patches, out, labels=labels, label_variable=label_variable, season=season, model=model,
        embedding=embedding, name=name, block=block, seed=seed, repeats=repeats,
        device=device, command=command_line(),
    )  # fmt: skip
    _echo_scores(res, 40)
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("gpp")
def evaluate_gpp(
    flux: Annotated[Path, typer.Option(help="FULLSET_DD file, or ICOS half-hourly file/folder.")],
    out: Out,
    site: Annotated[str | None, typer.Option(help="Site code (default from the file).")] = None,
    lat: Annotated[float | None, typer.Option(help="Site latitude (default: registry).")] = None,
    locations: Annotated[
        Path | None, typer.Option(help="location_fluxnet.csv with site coordinates.")
    ] = None,
    cube: Annotated[
        Path | None, typer.Option(help="S2 cube at the site (bands, indices, PCA-7 baselines).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Model bundle to embed --cube with.")] = None,
    embedding: Annotated[Path | None, typer.Option(help="Embedding store at the site.")] = None,
    name: Name = "embedding",
    test_years: Annotated[str, typer.Option(help="Comma-separated test years.")] = "",
    gap_fill: Annotated[Literal["linear", "ucm"], typer.Option(help="Gap filling.")] = "linear",
    footprint: Annotated[int | None, typer.Option(help="Central square side in px.")] = None,
    n_trials: Annotated[int, typer.Option(help="Random-search trials per set.")] = 4,
    time_budget: Annotated[
        float, typer.Option(help="Search budget per set in seconds; 0 = none (all trials).")
    ] = 60.0,
    max_epochs: Annotated[int, typer.Option(help="Epoch limit of each transformer trial.")] = 40,
    models: Annotated[
        str, typer.Option(help="Comma-separated regressors: 'transformer', 'gbr'.")
    ] = "transformer,gbr",
    carbonfluxbench: Annotated[
        Path | None, typer.Option(help="CarbonFluxBench results folder (reference).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of everything.")] = 0,
    device: Device = "auto",
) -> None:
    """GPP from 90-day windows of site features: embedding vs baselines, split by years."""
    from latentcube.evaluation.runs import evaluate_gpp as run

    years = [int(y) for y in test_years.split(",") if y.strip()]
    res = run(
        flux, out, site=site, lat=lat, locations=locations, cube=cube, model=model,
        embedding=embedding, name=name, test_years=years, gap_fill=gap_fill,
        footprint=footprint, carbonfluxbench=carbonfluxbench, seed=seed, n_trials=n_trials,
        time_budget=time_budget if time_budget > 0 else None, max_epochs=max_epochs,
        models=[m for m in models.split(",") if m], device=device, command=command_line(),
    )  # fmt: skip
    for k, v in res["scores"].items():
        for m, s in v.items():
            o = s["overall"]
            typer.echo(
                f"{k:<24} {m:<20} R2 {o['r2']:.3f}  RMSE {o['rmse']:.3f}  bias {o['bias']:+.3f}"
            )
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("reconstruction")
def evaluate_reconstruction(
    cube: Annotated[Path, typer.Argument(help="The cube to reconstruct.")],
    model: Annotated[
        Path, typer.Option(help="A checkpoint or bundle (file or folder) of 'latentcube train'.")
    ],
    out: Out,
    seed: Annotated[int, typer.Option(help="Seed of the window subset.")] = 0,
    sensor: Annotated[
        str | None,
        typer.Option(help="Sensor whose autoencoder a fused bundle is evaluated for (s2)."),
    ] = None,
) -> None:
    """Centre-pixel reconstruction MAE per band, beside context-mean and persistence."""
    from latentcube.evaluation.reconstruction import run_reconstruction

    res = run_reconstruction(model, cube, out, seed=seed, sensor=sensor, command=command_line())
    typer.echo(
        f"centre MAE model {res['model_mean']:.4f}, context mean "
        f"{res['context_mean_mean']:.4f}, persistence {res['persistence_mean']:.4f} "
        f"({res['n_windows']} windows)"
    )
    typer.echo(f"report: {out / 'report.md'}")
