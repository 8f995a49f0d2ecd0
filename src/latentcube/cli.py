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
    cube: Annotated[Path, typer.Argument(help="The cube to embed (a Zarr store for large areas).")],
    model: Annotated[Path, typer.Option(help="A checkpoint written by 'latentcube train'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output Zarr store.")],
    dtype: Annotated[
        str, typer.Option(help="Storage type of the embedding: 'float32' or 'float16'.")
    ] = "float32",
    chunk: Annotated[
        int, typer.Option(help="Output chunk side in pixels (bounds worker memory).")
    ] = 256,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes of the local Dask cluster.")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Address of a running Dask scheduler (e.g. tcp://host:8786)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing complete store.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Embed every pixel and cloud-free date of a cube into a Zarr store.

    The output holds 'embedding' (feature, time, y, x) on the cube's grid and CRS,
    'valid' and the centre-pixel reconstruction error 'recon_mae'; pixels and dates
    without a full 15 x 15 x 11 context are NaN. Dense models (fast, tiny) run on
    Dask, one task per output chunk, and a run that was stopped resumes where it
    ended when started again with the same arguments; the paper model runs window by
    window in memory.
    """
    from latentcube.bundle import load_checkpoint
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.inference import embed as run_embed
    from latentcube.inference import embed_to_zarr, open_embedding, write_embedding

    t0 = time.perf_counter()
    try:
        net, _meta = load_checkpoint(model)
        if net.supports_dense:
            path = embed_to_zarr(
                cube,
                model,
                out,
                chunk=chunk,
                dtype=dtype,
                scheduler=scheduler,
                workers=workers,
                overwrite=overwrite,
                progress=progress,
            )
            ds = open_embedding(path)
        else:
            ds = run_embed(open_cube(cube), net, tile=chunk, progress=progress)
            path = write_embedding(ds, out, dtype=dtype, overwrite=overwrite)
    except (LatentcubeError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
        return
    n = int(ds["valid"].sum())
    typer.echo(
        f"wrote {path}: {dict(ds['embedding'].sizes)}, {n} valid pixel-dates, "
        f"{time.perf_counter() - t0:.1f} s"
    )


# --------------------------------------------------------------------------------------
# latentcube evaluate ...

evaluate_app = typer.Typer(
    help="Evaluate embeddings against baselines: GPP at flux towers, land cover, crop type, "
    "reconstruction. Each command writes a report folder (report.md, figures/, results.json).",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")


def _embeddings(cubes: list, model: Path | None, embedding: list[Path] | None, name: str) -> dict:
    """Feature cubes per cube: embed with a checkpoint, or open embedding stores."""
    from latentcube.evaluation.features import as_feature_cube

    if model is not None and embedding:
        raise ValueError("give either --model or --embedding, not both")
    if model is not None:
        from latentcube.bundle import load_checkpoint
        from latentcube.inference import embed as run_embed

        net, _ = load_checkpoint(model)
        return {name: [run_embed(c, net)["embedding"] for c in cubes]}
    if embedding:
        if len(embedding) != len(cubes):
            raise ValueError(f"{len(embedding)} --embedding stores for {len(cubes)} cubes")
        return {name: [as_feature_cube(e) for e in embedding]}
    return {}


def _command() -> str:
    import sys

    return " ".join(["latentcube", *sys.argv[1:]])


@evaluate_app.command("landcover")
def evaluate_landcover(
    cubes: Annotated[list[Path], typer.Argument(help="GreenEarthNet minicubes (.nc) or stores "
                                                     "with a 'landcover' variable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    model: Annotated[Path | None, typer.Option(help="Checkpoint to embed the cubes with.")] = None,
    embedding: Annotated[
        list[Path] | None, typer.Option(help="Embedding store per cube (instead of --model).")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the embedding feature set.")] = "embedding",
    block: Annotated[int, typer.Option(help="Spatial CV block side in px (> 15).")] = 16,
    max_samples: Annotated[int, typer.Option(help="Pixel-dates drawn per cube.")] = 20000,
    seed: Annotated[int, typer.Option(help="Seed of sampling, folds and probes.")] = 0,
) -> None:
    """Land-cover probe (ESA WorldCover) of an embedding and every baseline feature set."""
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.landcover import run_landcover

    try:
        loaded = [open_cube(c).load() for c in cubes]
        res = run_landcover(loaded, _embeddings(loaded, model, embedding, name), out,
                            block=block, max_samples=max_samples, seed=seed, command=_command())
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    for k, v in res["scores"].items():
        typer.echo(f"{k:<28} macro-F1 logreg {v['logreg']['macro_f1']:.3f}  "
                   f"knn {v['knn']['macro_f1']:.3f}")
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("croptype")
def evaluate_croptype(
    patches: Annotated[list[Path], typer.Argument(help="WorldCereal patch folders (with labels).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    model: Annotated[Path | None, typer.Option(help="Checkpoint to embed the cubes with.")] = None,
    embedding: Annotated[
        list[Path] | None, typer.Option(help="Embedding store per patch (instead of --model).")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the embedding feature set.")] = "embedding",
    block: Annotated[int, typer.Option(help="Spatial CV block side in px (> 15).")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of folds and probes.")] = 0,
) -> None:
    """Crop-type probe: per-date series vs season mean, embedding vs every baseline."""
    from latentcube.cube.readers import open_cube, read_worldcereal_labels
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.croptype import run_croptype

    try:
        loaded = [open_cube(p, with_s1=False).load() for p in patches]
        labels = [read_worldcereal_labels(p)["CT"].values for p in patches]
        res = run_croptype(loaded, labels, _embeddings(loaded, model, embedding, name), out,
                           block=block, seed=seed, command=_command())
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    for k, v in res["scores"].items():
        typer.echo(f"{k:<40} macro-F1 logreg {v['logreg']['macro_f1']:.3f}  "
                   f"knn {v['knn']['macro_f1']:.3f}")
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("gpp")
def evaluate_gpp(
    flux: Annotated[Path, typer.Option(help="FULLSET_DD file, or ICOS half-hourly file/folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    site: Annotated[str | None, typer.Option(help="Site code (default from the file).")] = None,
    lat: Annotated[float | None, typer.Option(help="Site latitude (default: registry).")] = None,
    locations: Annotated[
        Path | None, typer.Option(help="location_fluxnet.csv with site coordinates.")
    ] = None,
    cube: Annotated[Path | None, typer.Option(help="S2 cube at the site: its bands, indices "
                                                   "and PCA-7 are added as baselines.")] = None,
    model: Annotated[Path | None, typer.Option(help="Checkpoint to embed --cube with.")] = None,
    embedding: Annotated[Path | None, typer.Option(help="Embedding store at the site.")] = None,
    name: Annotated[str, typer.Option(help="Name of the embedding feature set.")] = "embedding",
    test_years: Annotated[str, typer.Option(help="Comma-separated test years.")] = "",
    gap_fill: Annotated[str, typer.Option(help="'linear' or 'ucm'.")] = "linear",
    footprint: Annotated[int | None, typer.Option(help="Central square side in px.")] = None,
    n_trials: Annotated[int, typer.Option(help="Random-search trials per set.")] = 4,
    time_budget: Annotated[
        float,
        typer.Option(help="Search budget per set in seconds; 0 = none (run all --n-trials, "
                     "so the result does not depend on machine speed)."),
    ] = 60.0,
    max_epochs: Annotated[int, typer.Option(help="Epoch limit of each transformer trial.")] = 40,
    models: Annotated[
        str, typer.Option(help="Comma-separated regressors: 'transformer', 'gbr'.")
    ] = "transformer,gbr",
    carbonfluxbench: Annotated[
        Path | None, typer.Option(help="CarbonFluxBench results folder (reference).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of everything.")] = 0,
) -> None:
    """GPP from 90-day windows of site features: embedding vs baselines, split by years."""
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.baselines import carbonfluxbench_reference, feature_sets
    from latentcube.evaluation.features import site_features
    from latentcube.evaluation.flux import read_flux, site_registry
    from latentcube.evaluation.gpp import run_gpp, site_table

    try:
        table = read_flux(flux)
        code = site or str(table.attrs.get("site"))
        if lat is None:
            reg = site_registry(locations)
            if code not in reg:
                raise ValueError(f"site {code!r} not in the registry; pass --lat or --locations")
            lat = reg[code].lat
        cubes: dict = {}
        if cube is not None:
            from latentcube.cube.readers import open_cube

            c = open_cube(cube).load()
            emb = _embeddings([c], model, [embedding] if embedding else None, name)
            cubes = feature_sets([c], emb, seed=seed)[0]
        elif embedding is not None:
            from latentcube.evaluation.features import as_feature_cube

            cubes = {name: as_feature_cube(embedding)}
        feats = site_features(cubes, lat=lat, start=table.index.min(), end=table.index.max(),
                              method=gap_fill, footprint=footprint)  # type: ignore[arg-type]
        sets = {"potential radiation": ["rad:Rso"]}
        for k in cubes:
            sets[k] = [c for c in feats.columns if c.startswith(f"{k}:")]
        years = [int(y) for y in test_years.split(",") if y.strip()] or [
            int(table.index.year.max())
        ]
        ref = carbonfluxbench_reference(carbonfluxbench, [code]) if carbonfluxbench else None
        res = run_gpp({code: site_table(table, feats)}, sets, out, test_years=years,
                      n_trials=n_trials, time_budget=time_budget if time_budget > 0 else None,
                      max_epochs=max_epochs, models=[m for m in models.split(",") if m],
                      seed=seed, reference=ref,
                      command=_command(), title=f"GPP evaluation at {code}")
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    for k, v in res["scores"].items():
        for m, s in v.items():
            o = s["overall"]
            typer.echo(f"{k:<24} {m:<20} R2 {o['r2']:.3f}  RMSE {o['rmse']:.3f}  "
                       f"bias {o['bias']:+.3f}")
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("reconstruction")
def evaluate_reconstruction(
    cube: Annotated[Path, typer.Argument(help="The cube to reconstruct.")],
    model: Annotated[Path, typer.Option(help="A checkpoint written by 'latentcube train'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the window subset.")] = 0,
) -> None:
    """Centre-pixel reconstruction MAE per band, beside context-mean and persistence."""
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.reconstruction import run_reconstruction

    try:
        res = run_reconstruction(model, open_cube(cube).load(), out, seed=seed,
                                 command=_command())
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(f"centre MAE model {res['model_mean']:.4f}, context mean "
               f"{res['context_mean_mean']:.4f}, persistence {res['persistence_mean']:.4f} "
               f"({res['n_windows']} windows)")
    typer.echo(f"report: {out / 'report.md'}")


if __name__ == "__main__":  # pragma: no cover
    app()
