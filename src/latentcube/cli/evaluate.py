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


# the options of ``evaluate gpp`` (one site, or many through a manifest)
Flux = Annotated[
    Path | None, typer.Option(help="FULLSET_DD file, or ICOS half-hourly file/folder.")
]
Manifest = Annotated[
    Path | None,
    typer.Option(help="Many sites: manifest.csv of 'cube --flux-sites' (with --flux-dir)."),
]
FluxDir = Annotated[
    Path | None,
    typer.Option(
        help="Many sites: folder of flux records (SITE/, FLX_SITE_*FULLSET_DD*.csv or SITE_*.csv)."
    ),
]
Split = Annotated[
    Literal["years", "loso", "both"] | None,
    typer.Option(help="Many sites: split by years, leave-one-site-out, or both (default)."),
]
Sites = Annotated[
    Path | None,
    typer.Option(help="Many sites: CSV with id,igbp adding to the flux-site registry."),
]
Site = Annotated[str | None, typer.Option(help="Site code (default from the file).")]
Lat = Annotated[float | None, typer.Option(help="Site latitude (default: registry).")]
Locations = Annotated[Path | None, typer.Option(help="location_fluxnet.csv with site coordinates.")]
SiteCube = Annotated[
    Path | None, typer.Option(help="S2 cube at the site (bands, indices, PCA-7 baselines).")
]
GppModel = Annotated[
    Path | None, typer.Option(help="Model bundle to embed --cube (or every cube) with.")
]
SiteEmbedding = Annotated[Path | None, typer.Option(help="Embedding store at the site.")]
TestYears = Annotated[str, typer.Option(help="Comma-separated test years.")]
GapFill = Annotated[Literal["linear", "ucm"], typer.Option(help="Gap filling.")]
Footprint = Annotated[int | None, typer.Option(help="Central square side in px.")]
Trials = Annotated[int, typer.Option(help="Random-search trials per set.")]
Budget = Annotated[
    float, typer.Option(help="Search budget per set in seconds; 0 = none (all trials).")
]
MaxEpochs = Annotated[int, typer.Option(help="Epoch limit of each transformer trial.")]
Regressors = Annotated[str, typer.Option(help="Comma-separated regressors: 'transformer', 'gbr'.")]
SeqLen = Annotated[int, typer.Option(help="Window length in days.")]
Stride = Annotated[int, typer.Option(help="Days between window ends.")]
Reference = Annotated[
    Path | None,
    typer.Option(
        help="CarbonFluxBench results folder (reference); with --manifest also a CSV of "
        "site,R2,RMSE."
    ),
]
GppSeed = Annotated[int, typer.Option(help="Seed of everything.")]


@evaluate_app.command("gpp")
def evaluate_gpp(
    out: Out,
    flux: Flux = None,
    manifest: Manifest = None,
    flux_dir: FluxDir = None,
    split: Split = None,
    sites: Sites = None,
    site: Site = None,
    lat: Lat = None,
    locations: Locations = None,
    cube: SiteCube = None,
    model: GppModel = None,
    embedding: SiteEmbedding = None,
    name: Name = "embedding",
    test_years: TestYears = "",
    gap_fill: GapFill = "linear",
    footprint: Footprint = None,
    n_trials: Trials = 4,
    time_budget: Budget = 60.0,
    max_epochs: MaxEpochs = 40,
    models: Regressors = "transformer,gbr",
    seq_len: SeqLen = 90,
    stride: Stride = 10,
    carbonfluxbench: Reference = None,
    seed: GppSeed = 0,
    device: Device = "auto",
) -> None:
    """GPP from 90-day windows of site features: embedding vs baselines.

    One site (--flux), split by years; or every site of a cube manifest (--manifest
    with --flux-dir), split by years and leave-one-site-out, with per-site, pooled
    and per-IGBP-class scores.
    """
    years = [int(y) for y in test_years.split(",") if y.strip()]
    fit: dict[str, Any] = dict(
        n_trials=n_trials, time_budget=time_budget if time_budget > 0 else None,
        max_epochs=max_epochs, models=[m for m in models.split(",") if m], seq_len=seq_len,
        stride=stride, command=command_line(),
    )  # fmt: skip
    one_site = {"--flux": flux, "--site": site, "--lat": lat, "--locations": locations,
                "--cube": cube, "--embedding": embedding}  # fmt: skip
    _check_gpp_mode(
        manifest, one_site, {"--flux-dir": flux_dir, "--sites": sites, "--split": split}
    )
    if manifest is not None and flux_dir is not None:
        fit["device"] = device
        _gpp_sites(manifest, flux_dir, out, split or "both", sites, model, name, years,
                   gap_fill, footprint, carbonfluxbench, seed, fit)  # fmt: skip
        return
    assert flux is not None  # _check_gpp_mode
    from latentcube.evaluation.runs import evaluate_gpp as run

    res = run(
        flux, out, site=site, lat=lat, locations=locations, cube=cube, model=model,
        embedding=embedding, name=name, test_years=years, gap_fill=gap_fill,
        footprint=footprint, carbonfluxbench=carbonfluxbench, seed=seed, device=device, **fit,
    )  # fmt: skip
    _echo_gpp_scores(res)
    typer.echo(f"report: {out / 'report.md'}")


def _echo_gpp_scores(res: dict[str, Any]) -> None:
    """One line per feature set and regressor: R2, RMSE and bias over the test years."""
    for k, v in res["scores"].items():
        for m, s in v.items():
            o = s["overall"]
            typer.echo(
                f"{k:<24} {m:<20} R2 {o['r2']:.3f}  RMSE {o['rmse']:.3f}  bias {o['bias']:+.3f}"
            )


def _check_gpp_mode(manifest: Path | None, one_site: dict[str, Any], many: dict[str, Any]) -> None:
    """One site (--flux and its options) or many (--manifest with --flux-dir), not a mix."""
    from latentcube.errors import EvaluationError

    if manifest is not None:
        given = [k for k, v in one_site.items() if v is not None]
        if many["--flux-dir"] is None or given:
            raise EvaluationError(
                "--manifest needs --flux-dir"
                + (f" and takes no {', '.join(given)} (one-site options)" if given else "")
            )
        return
    if given := [k for k, v in many.items() if v is not None]:
        raise EvaluationError(f"{', '.join(given)} need --manifest (many sites)")
    if one_site["--flux"] is None:
        raise EvaluationError("give --flux (one site) or --manifest with --flux-dir (many sites)")


def _gpp_sites(
    manifest: Path,
    flux_dir: Path,
    out: Path,
    split: str,
    sites: Path | None,
    model: Path | None,
    name: str,
    years: list[int],
    gap_fill: str,
    footprint: int | None,
    carbonfluxbench: Path | None,
    seed: int,
    fit: dict[str, Any],
) -> None:
    """``evaluate gpp --manifest``: run every site, print skipped sites and pooled scores."""
    import warnings

    from latentcube.evaluation.gpp_sites import SiteSkipped, evaluate_gpp_sites

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SiteSkipped)  # printed below, one line each
        res = evaluate_gpp_sites(
            manifest, flux_dir, out, split=split, model=model, name=name, sites=sites,
            test_years=years, gap_fill=gap_fill, footprint=footprint,
            carbonfluxbench=carbonfluxbench, seed=seed, **fit,
        )  # fmt: skip
    for s in res["skipped"]:
        typer.secho(f"warning: skipped {s['site']}: {s['reason']}", fg="yellow", err=True)
    for r in res["tables"]["pooled"].itertuples(index=False):
        typer.echo(
            f"{r.split:<6} {r.features:<24} {r.model:<20} R2 {r.r2:.3f}  RMSE {r.rmse:.3f}  "
            f"bias {r.bias:+.3f}"
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
