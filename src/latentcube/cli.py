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


_VARIANTS = ("paper", "fast", "tiny")


@app.command()
def train(
    cubes: Annotated[
        list[Path] | None,
        typer.Argument(help="Cubes to train on (Zarr stores, sample folders, files)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for checkpoints and metrics.csv.")
    ] = Path("model"),
    cubes_opt: Annotated[
        list[Path] | None,
        typer.Option("--cubes", help="A cube to train on (repeatable; adds to CUBES)."),
    ] = None,
    sensor: Annotated[str, typer.Option(help="Sensor to model: 's2' or 's1'.")] = "s2",
    config: Annotated[
        str | None,
        typer.Option(
            help="Model configuration 'paper', 'fast' or 'tiny', or a YAML file with "
            "'model:' (with 'variant:') and/or 'train:' sections overriding the presets."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model configuration: 'fast' (default), 'paper' or 'tiny'."),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(help="Optimisation preset: 'quick' (minutes on a laptop) or 'paper'."),
    ] = "quick",
    max_seconds: Annotated[
        float | None, typer.Option(help="Stop training after this many seconds.")
    ] = None,
    max_cpu_seconds: Annotated[
        float | None,
        typer.Option(help="Stop after this much CPU time of the process (a fair budget)."),
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Stop after this many epochs.")] = None,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel training processes on this machine (DDP, gloo).")
    ] = 1,
    hide_centre: Annotated[
        float,
        typer.Option(
            help="Gap filling: probability of hiding the centre pixel-date from the input "
            "(it stays in the loss). 0 = off, as in the paper."
        ),
    ] = 0.0,
    hide_other: Annotated[
        float,
        typer.Option(help="Gap filling: probability of hiding any other pixel-date."),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and training.")] = 42,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt when it exists.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a stage-1 context autoencoder on one or more cubes.

    Windows of 11 dates x 15 x 15 pixels are cut from the cubes and split into
    training and validation by cube (two cubes or more) or by spatial blocks (one
    cube). Checkpoints (best.pt, last.pt, each with a .json of its configuration)
    and metrics.csv go to OUT; a killed run continues where it stopped.
    Example: latentcube train --sensor s2 --config fast --cubes a.zarr --cubes b.zarr -o m
    """
    import yaml

    from latentcube.cube.readers import open_cube
    from latentcube.data.windows import split_windows
    from latentcube.distributed import train_distributed
    from latentcube.errors import LatentcubeError
    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import train_config_preset

    paths = [*(cubes or []), *(cubes_opt or [])]
    if not paths:
        _fail("no cubes given: pass them as arguments or with --cubes")
    try:
        overrides: dict = {}
        variant = model
        if config is not None and config in _VARIANTS and not Path(config).exists():
            if model is not None and model != config:
                _fail(f"--config {config} and --model {model} disagree")
            variant = config
        elif config is not None:
            cfg_path = Path(config)
            if not cfg_path.is_file():
                _fail(f"--config must be one of {', '.join(_VARIANTS)} or a YAML file: {config}")
            overrides = yaml.safe_load(cfg_path.read_text()) or {}
            if not isinstance(overrides, dict):
                _fail(f"{config}: expected a mapping with 'model:' and/or 'train:' sections")
        model_over = dict(overrides.get("model") or {})
        variant = model_over.pop("variant", None) or variant or "fast"
        mcfg = AutoencoderConfig.preset(variant, sensor)
        mcfg = AutoencoderConfig.model_validate({**mcfg.model_dump(), **model_over})
        tcfg = train_config_preset(preset)
        updates = {**(overrides.get("train") or {}), "seed": seed}
        for key, val in (
            ("max_seconds", max_seconds),
            ("max_cpu_seconds", max_cpu_seconds),
            ("max_epochs", max_epochs),
        ):
            if val is not None:
                updates[key] = val
        if hide_centre or hide_other:
            updates.update(hide_centre_prob=hide_centre, hide_prob=hide_other)
        tcfg = type(tcfg).model_validate({**tcfg.model_dump(), **updates})
        loaded = [open_cube(c).load() for c in paths]
        tr, va = split_windows(loaded, sensor, mcfg.bands, seed=seed, window=mcfg.window)
        typer.echo(
            f"{len(tr)} training and {len(va)} validation windows from {len(paths)} cube(s), "
            f"{mcfg.variant} {sensor} model" + (f", {nproc} processes" if nproc > 1 else "")
        )
        result = train_distributed(
            nproc,
            mcfg,
            tr,
            va,
            tcfg,
            out,
            resume=resume,
            progress=progress,
            provenance={"cubes": [str(c) for c in paths], "seed": seed},
        )
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(
        f"best validation centre-pixel MAE {result.best_val:.4f} after {result.epochs} epochs "
        f"({result.stopped}, {result.seconds:.0f} s); model: {result.checkpoint}"
    )


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
    from latentcube.models.autoencoder import build_autoencoder, count_parameters
    from latentcube.models.config import AutoencoderConfig

    spec_estimate = 3.7e6
    typer.echo(
        f"{'config':<7} {'sensor':<6} {'bands':>5} {'latent':>6} {'parameters':>11} "
        f"{'receptive field':>15}  dense"
    )
    for s in sensor or ["s2", "s1"]:
        for v in _VARIANTS:
            try:
                cfg = AutoencoderConfig.preset(v, s)
            except ValueError as err:
                _fail(str(err))
                return
            n = count_parameters(build_autoencoder(cfg))
            rf = f"{cfg.window} x {cfg.window}"  # fast/tiny: checked by the config
            dense = "no (window by window)" if v == "paper" else "yes (= window by window)"
            note = f"  spec ~3.7 M: {100 * (n - spec_estimate) / spec_estimate:+.1f}%"
            typer.echo(
                f"{v:<7} {s:<6} {cfg.n_bands:>5} {cfg.latent_dim:>6} {n:>11,} {rf:>15}  {dense}"
                + (note if v == "paper" else "")
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


if __name__ == "__main__":  # pragma: no cover
    app()
