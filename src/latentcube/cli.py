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
        from latentcube._version import __version__

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
            pretrained=pretrained,
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
    stage: Annotated[
        str, typer.Option(help="'1': a sensor's autoencoder; 'fusion': the fusion model.")
    ] = "1",
    autoencoder: Annotated[
        list[str] | None,
        typer.Option(help="Stage fusion: SENSOR=CHECKPOINT of a stage-1 model (repeat; S2 first)."),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(help="Stage fusion: a fused bundle to extend with the --autoencoder sensors."),
    ] = None,
    fusion_mode: Annotated[
        str,
        typer.Option(help="Stage fusion: 'frozen' autoencoders or 'finetune' them jointly."),
    ] = "frozen",
    sensor_dropout: Annotated[
        float,
        typer.Option(help="Stage fusion: probability of hiding each sensor per sample."),
    ] = 0.0,
    fusion_objective: Annotated[
        str,
        typer.Option(
            help="Stage fusion: 'context' (the paper's loss of whole windows) or 'centre' "
            "(centre pixel and date only; far cheaper, for frozen mode)."
        ),
    ] = "context",
    sensor_config: Annotated[
        list[Path] | None,
        typer.Option(help="YAML declaration of a further sensor to register (repeatable)."),
    ] = None,
) -> None:
    """Train a stage-1 context autoencoder, or the fusion model, on one or more cubes.

    Windows of 11 dates x 15 x 15 pixels are cut from the cubes and split into
    training and validation by cube (two cubes or more) or by spatial blocks (one
    cube). Checkpoints (best.pt, last.pt, each with a .json of its configuration)
    and metrics.csv go to OUT; a killed run continues where it stopped. With
    --stage fusion, best.pt is a bundle of every sensor's model and the fusion
    layers that 'latentcube embed' reads.
    Example: latentcube train --sensor s2 --config fast --cubes a.zarr --cubes b.zarr -o m
    """
    import yaml

    from latentcube.sensors import load_sensor_config

    try:
        for sc in sensor_config or []:
            load_sensor_config(sc)
    except (OSError, ValueError) as err:
        _fail(f"sensor configuration: {err}")
        return
    paths = [*(cubes or []), *(cubes_opt or [])]
    if stage == "fusion":
        _train_fusion(
            paths,
            out,
            autoencoder or [],
            base=base,
            mode=fusion_mode,
            sensor_dropout=sensor_dropout,
            objective=fusion_objective,
            preset=preset,
            config=Path(config) if config else None,
            max_seconds=max_seconds,
            max_epochs=max_epochs,
            seed=seed,
            resume=resume,
            progress=progress,
        )
        return
    if stage != "1":
        _fail(f"--stage must be '1' or 'fusion', got {stage!r}")

    from latentcube.cube.readers import open_cube
    from latentcube.data.windows import split_windows
    from latentcube.distributed import train_distributed
    from latentcube.errors import LatentcubeError
    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import train_config_preset

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
        gap_fill = (
            {"hide_centre_prob": hide_centre, "hide_prob": hide_other}
            if hide_centre or hide_other
            else {}
        )
        tcfg = _with_overrides(
            train_config_preset(preset),
            overrides,
            seed,
            max_seconds,
            max_epochs,
            max_cpu_seconds=max_cpu_seconds,
            extra=gap_fill,
        )
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


def _with_overrides(
    tcfg: Any,
    overrides: dict[str, Any],
    seed: int,
    max_seconds: float | None,
    max_epochs: int | None,
    *,
    max_cpu_seconds: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """A training configuration with the YAML ``train:`` section and the CLI options applied.

    Options left at ``None`` keep the YAML's or the preset's value; ``extra`` is applied last.
    """
    updates = {**(overrides.get("train") or {}), "seed": seed}
    for key, val in (
        ("max_seconds", max_seconds),
        ("max_cpu_seconds", max_cpu_seconds),
        ("max_epochs", max_epochs),
    ):
        if val is not None:
            updates[key] = val
    updates.update(extra or {})
    return type(tcfg).model_validate({**tcfg.model_dump(), **updates})


def _train_fusion(
    cubes: list[Path],
    out: Path,
    autoencoders: list[str],
    *,
    base: Path | None,
    mode: str,
    sensor_dropout: float,
    objective: str,
    preset: str,
    config: Path | None,
    max_seconds: float | None,
    max_epochs: int | None,
    seed: int,
    resume: bool,
    progress: bool,
) -> None:
    """``latentcube train --stage fusion``."""
    import yaml

    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.fusion_training import fit_fusion, fusion_train_config

    pairs: dict[str, Path] = {}
    for item in autoencoders:
        sensor, sep, path = item.partition("=")
        if not sep or not sensor or not path:
            _fail(f"--autoencoder takes SENSOR=CHECKPOINT, got {item!r}")
        pairs[sensor] = Path(path)
    if not pairs:
        _fail("--stage fusion needs --autoencoder SENSOR=CHECKPOINT (at least one)")
    if mode not in ("frozen", "finetune"):
        _fail(f"--fusion-mode must be 'frozen' or 'finetune', got {mode!r}")
    if objective not in ("context", "centre"):
        _fail(f"--fusion-objective must be 'context' or 'centre', got {objective!r}")
    try:
        overrides = yaml.safe_load(config.read_text()) if config else {}
        tcfg = _with_overrides(
            fusion_train_config(preset), overrides, seed, max_seconds, max_epochs
        )
        loaded = [open_cube(c).load() for c in cubes]
        result = fit_fusion(
            loaded,
            pairs,
            out,
            base=base,
            mode=mode,
            sensor_dropout=sensor_dropout,
            objective=objective,
            loss_weights=overrides.get("fusion", {}).get("loss_weights"),
            config=tcfg,
            resume=resume,
            progress=progress,
            provenance={"cubes": [str(c) for c in cubes]},
        )
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(
        f"best validation centre-pixel MAE (mean over sensors) {result.best_val:.4f} after "
        f"{result.epochs} epochs ({result.stopped}, {result.seconds:.0f} s); "
        f"model bundle: {result.checkpoint}"
    )


#: Metadata that :func:`latentcube.bundle.save_checkpoint` and ``save_fusion_checkpoint``
#: write themselves; everything else in a checkpoint's metadata is carried over.
_OWN_META = {
    "format",
    "format_version",
    "latentcube_version",
    "environment",
    "model_config",
    "sensor",
    "bands",
    "fusion_config",
    "mode",
    "sensors",
    "autoencoder_configs",
    "sensor_specs",
}


@app.command()
def whiten(
    model: Annotated[Path, typer.Argument(help="Stage-1 checkpoint or fused bundle.")],
    cubes: Annotated[
        list[Path], typer.Argument(help="The cubes the model was trained on (windows to fit on).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The whitened model file (.pt).")],
    seed: Annotated[
        int, typer.Option(help="Seed of the training split (as in training) and the draw.")
    ] = 42,
    max_windows: Annotated[int, typer.Option(help="Windows drawn to fit on.")] = 20_000,
) -> None:
    """Write a copy of a model whose embedding axes are decorrelated with unit variance.

    The model's output (a stage-1 latent or the fused embedding) is whitened by a
    fixed affine map fitted without labels on the training windows of CUBES
    (the split of training with --seed): principal axes, largest variance first,
    each scaled to unit variance. The decoders undo the map, so reconstructions
    stay the same; Euclidean distances between embeddings (k-NN, clustering,
    similarity search) stop counting correlated axes several times over.
    Example: latentcube whiten runs/s2/best.pt a.zarr b.zarr -o runs/s2/whitened.pt
    """
    from latentcube.bundle import (
        load_any,
        resolve_bundle,
        save_checkpoint,
        save_fusion_checkpoint,
    )
    from latentcube.cube.readers import open_cube
    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.data.windows import split_windows
    from latentcube.errors import LatentcubeError
    from latentcube.fusion_training import fit_fusion_whitening
    from latentcube.models.fusion import FusionModel
    from latentcube.training import fit_whitening

    if out.suffix != ".pt":
        _fail(f"--out must be a .pt file, got {out}")
    try:
        if out.resolve() == resolve_bundle(model).resolve():
            _fail(f"--out {out} is the input model: write the whitened copy elsewhere")
        net, meta = load_any(model)
        loaded = [open_cube(c).load() for c in cubes]
        if isinstance(net, FusionModel):
            ftr, _ = split_fusion_windows(loaded, net.sensors, seed=seed)
            fit_fusion_whitening(net, ftr, max_windows=max_windows, seed=seed)
            n_windows = len(ftr)
        else:
            c = net.config
            tr, _ = split_windows(loaded, c.sensor, c.bands, seed=seed, window=c.window)
            fit_whitening(net, tr, max_windows=max_windows, seed=seed)
            n_windows = len(tr)
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    var = [round(float(v), 6) for v in net.whitening.variance.tolist()]
    extra = {k: v for k, v in meta.items() if k not in _OWN_META}
    extra["whitening"] = {
        "source_model": str(model),
        "cubes": [str(c) for c in cubes],
        "seed": seed,
        "windows": min(n_windows, max_windows),
        "axis_variances": var,
    }
    if isinstance(net, FusionModel):
        save_fusion_checkpoint(out, net, extra=extra)
    else:
        save_checkpoint(out, net, extra=extra)
    typer.echo(
        f"whitened on {extra['whitening']['windows']} training windows; variance of the "
        f"axes before scaling {', '.join(f'{v:.4g}' for v in var)}; model: {out}"
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
    cube: Annotated[
        Path | None,
        typer.Argument(
            help="The cube to embed (a Zarr store for large areas); or use --lat/--lon."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="A checkpoint or fused bundle (file or folder) written by 'latentcube train'; "
            "default: the S1+S2 model shipped with latentcube."
        ),
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
    hide: Annotated[
        list[str] | None,
        typer.Option(help="Fused models: leave this sensor out (repeatable), e.g. --hide s2."),
    ] = None,
    time_axis: Annotated[
        str,
        typer.Option(
            help="With --lat/--lon: time axis of the cube to build, 's2' (S2 clear dates) or "
            "'union' (also S1 days without S2; fused models)."
        ),
    ] = "s2",
) -> None:
    """Embed every pixel and cloud-free date of a cube into a Zarr store.

    The output holds 'embedding' (feature, time, y, x) on the cube's grid and CRS
    and the quality layers 'valid', 'recon_mae_<sensor>' (centre-pixel
    reconstruction error) and, with --edge pad, 'padded'; a fused bundle (the
    default) writes 'valid', 'sensors' (bit mask of the contributing sensors) and
    'recon_mae'. Dense models (fast, tiny) and fused bundles run on Dask, one task
    per output chunk, and a run that was stopped resumes where it ended when
    started again with the same arguments; the paper model runs window by window.
    With --lat/--lon/--start/--end instead of CUBE, the cube is built first (and
    reused if it exists at --cube-out).
    """
    from latentcube.bundle import ModelBundle, default_model_path
    from latentcube.errors import LatentcubeError
    from latentcube.inference import embed_to_zarr, open_embedding
    from latentcube.io import check_disjoint

    if out is None:
        _fail("--out is required")
        return
    if (cube is None) == (lat is None and lon is None):
        _fail("give either a CUBE path or --lat/--lon/--start/--end to build one")
        return
    t0 = time.perf_counter()
    try:
        model_path = model if model is not None else default_model_path()
        bundle = ModelBundle.load(model_path)  # the only read of the bundle here
        sensors = bundle.sensors
        if model is None:
            typer.echo(f"model: {model_path} (shipped default, sensors {'+'.join(sensors)})")
        if cube is None:
            cube_path = cube_out or out.with_name(f"{out.stem}_cube.zarr")
            check_disjoint(out, [cube_path])
            cube = _build_cube_for_embed(
                lat,
                lon,
                size_m,
                start,
                end,
                catalog,
                sensors,
                cube_path,
                time_axis,
            )
        path = embed_to_zarr(
            cube,
            bundle,
            out,
            chunk=chunk,
            time_chunk=time_chunk,
            dtype=dtype,
            edge=edge,  # type: ignore[arg-type]
            scheduler=scheduler,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
            hide=hide or (),
        )
        ds = open_embedding(path)
    except (LatentcubeError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
        return
    n = int(ds["valid"].sum())
    extra = ""
    if "sensors" in ds:  # fused: how many pixel-dates had no reference sensor
        only = int(((ds["sensors"] & 1) == 0).where(ds["valid"], False).sum())
        extra = f" ({only} without {sensors[0]})"
    typer.echo(
        f"wrote {path}: {dict(ds['embedding'].sizes)}, {n} valid pixel-dates{extra}, "
        f"{time.perf_counter() - t0:.1f} s"
    )


@app.command()
def cube(
    out: Annotated[Path, typer.Option("--out", "-o", help="Zarr store to write (cube.zarr).")],
    start: Annotated[str, typer.Option(help="First day, e.g. 2023-04-01.")],
    end: Annotated[str, typer.Option(help="Last day (inclusive), e.g. 2023-09-30.")],
    lat: Annotated[float | None, typer.Option(help="Latitude of the centre (degrees).")] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude of the centre (degrees).")] = None,
    size_m: Annotated[
        float | None, typer.Option("--size-m", help="Edge of the square area in metres.")
    ] = None,
    bbox: Annotated[
        tuple[float, float, float, float] | None,
        typer.Option(help="Area as W S E N in degrees (instead of --lat/--lon/--size-m)."),
    ] = None,
    catalog: Annotated[
        str,
        typer.Option(
            help="'planetary-computer', 'earth-search' (S2 only), a STAC API URL or a "
            "catalog.json path/URL."
        ),
    ] = "planetary-computer",
    sensors: Annotated[str, typer.Option(help="Comma-separated sensors: 's2,s1' or 's2'.")] = (
        "s2,s1"
    ),
    min_valid_fraction: Annotated[
        float, typer.Option(help="Drop dates with a smaller share of clear S2 pixels.")
    ] = 0.0,
    mask_dilation: Annotated[
        int, typer.Option(help="Grow SCL clouds and shadows by this many pixels.")
    ] = 1,
    max_cloud_cover: Annotated[
        float | None, typer.Option(help="Skip S2 scenes with eo:cloud_cover above this (%).")
    ] = None,
    s1_max_gap_days: Annotated[
        float, typer.Option(help="Largest S2-S1 distance in days; farther dates stay masked.")
    ] = 6.0,
    nbar: Annotated[
        bool, typer.Option(help="BRDF-correct S2 to nadir (NBAR) with sen2nbar.")
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Load on Dask: 'local' (a local cluster) or a scheduler address; default "
            "in this process, one unit at a time."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes of the local Dask cluster.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing store built for another request.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    time_axis: Annotated[
        str,
        typer.Option(
            help="'s2' (the S2 clear dates, the paper's) or 'union' (also every S1 "
            "acquisition day without S2, S2 masked there; needs s1)."
        ),
    ] = "s2",
) -> None:
    """Build an analysis-ready Sentinel-2 (+ Sentinel-1) cube from a STAC catalog.

    The grid is the UTM zone of the centre at 10 m, pixel-aligned the same way for
    every run over the same place. S2 L2A: the ten model bands as reflectance in
    [0, 1] (baseline-04.00 offset removed), clouds, shadows and snow masked from
    SCL, tiles of one day merged. S1 RTC: VV and VH smoothed over three
    acquisitions and stored as (dB + 30) / 35, each S2 date matched to the nearest
    S1 acquisition within --s1-max-gap-days (else masked). A stopped build resumes
    where it ended when started again with the same arguments.
    """
    import warnings

    import numpy as np

    from latentcube.cube.build import build_cube
    from latentcube.errors import LatentcubeError

    names = tuple(s.strip().lower() for s in sensors.split(",") if s.strip())
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            ds = build_cube(
                lat=lat,
                lon=lon,
                size_m=size_m,
                bbox=bbox,
                start=start,
                end=end,
                out=out,
                catalog=catalog,
                sensors=names,
                overwrite=overwrite,
                progress=progress,
                min_valid_fraction=min_valid_fraction,
                mask_dilation=mask_dilation,
                max_cloud_cover=max_cloud_cover,
                s1_max_gap_days=s1_max_gap_days,
                nbar=nbar,
                scheduler=scheduler,
                workers=workers,
                time_axis=time_axis,
            )
        for w in caught:
            if "zone" in str(w.message):
                typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
    except (LatentcubeError, FileExistsError, ValueError) as err:
        _fail(str(err))
        return
    frac = float(ds["s2_valid"].mean())
    line = (
        f"wrote {out}: {ds.sizes['time']} dates x {ds.sizes['y']} x {ds.sizes['x']} px, "
        f"{ds.rio.crs}, mean clear fraction {frac:.2f}"
    )
    if "s1" in ds:
        line += f", S1 matched on {int((~np.isnat(ds['s1_time'].values)).sum())} dates"
    if "s2_observed" in ds.coords:
        line += f" ({int((~ds['s2_observed'].values).sum())} of them S1-only)"
    typer.echo(f"{line}, {time.perf_counter() - t0:.1f} s")


def _build_cube_for_embed(
    lat: float | None,
    lon: float | None,
    size_m: float,
    start: str | None,
    end: str | None,
    catalog: str | None,
    sensors: tuple[str, ...],
    cube_out: Path,
    time_axis: str = "s2",
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
        # S2 dates are the time axis; build_cube makes S2 and S1 (others stay absent)
        sensors=("s2", *(s for s in sensors if s == "s1")),
        time_axis=time_axis,
        **kwargs,
    )
    return cube_out


# --------------------------------------------------------------------------------------
# latentcube evaluate ...

evaluate_app = typer.Typer(
    help="Evaluate embeddings against baselines: GPP at flux towers, land cover, crop type, "
    "reconstruction. Each command writes a report folder (report.md, figures/, results.json).",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")


def _embeddings(
    cubes: list,
    model: Path | None,
    embedding: list[Path] | None,
    name: str,
    cache: Path | None = None,
) -> dict:
    """Feature cubes per cube: embed with a checkpoint, or open embedding stores.

    With ``cache`` (a folder), each embedding made with ``model`` is kept there,
    keyed by the model's weights and configuration and the cube's content, so a
    rerun after a kill reads it instead of embedding again.
    """
    from latentcube._version import __version__
    from latentcube.evaluation.cache import StepCache, cached_array
    from latentcube.evaluation.features import as_feature_cube

    if model is not None and embedding:
        raise ValueError("give either --model or --embedding, not both")
    if model is not None:
        from functools import partial

        from latentcube.bundle import ModelBundle
        from latentcube.inference import embed as run_embed

        bundle = ModelBundle.load(model)  # one read, whichever kind of model it is
        net = bundle.model
        store = None
        if cache is not None:  # keyed by the weights and settings, not by the files' layout
            weights = [part for k, v in net.state_dict().items() for part in (k, v.numpy())]
            store = StepCache(cache, __version__, net.config.model_dump(mode="json"), *weights)

        def one(c: Any) -> Any:
            return run_embed(c, bundle).compute()

        return {name: [cached_array(store, [c], partial(one, c)) for c in cubes]}
    if embedding:
        if len(embedding) != len(cubes):
            raise ValueError(f"{len(embedding)} --embedding stores for {len(cubes)} cubes")
        return {name: [as_feature_cube(e) for e in embedding]}
    return {}


def _command() -> str:
    import sys

    return " ".join(["latentcube", *sys.argv[1:]])


def _echo_scores(res: dict, width: int) -> None:
    """One line per feature set: macro-F1 of both probes (± sd over CV repeats)."""
    from latentcube.evaluation.report import f1_cell

    for k, v in res["scores"].items():
        typer.echo(f"{k:<{width}} macro-F1 logreg {f1_cell(v['logreg'])}  knn {f1_cell(v['knn'])}")


#: Options shared by the probe commands (land cover, crop type).
BlockOption = Annotated[int, typer.Option(help="Spatial CV block side in px (> 15).")]
RepeatsOption = Annotated[
    int,
    typer.Option(
        help="Repeat the blocked CV with this many fold assignments (seed, seed+1, ...): "
        "mean ± sd per set and paired differences of the embedding to every set."
    ),
]
LabelsOption = Annotated[
    list[Path] | None,
    typer.Option(
        help="Label raster per cube (integer class codes; 0 or nodata = no label), put on the "
        "cube's grid by nearest neighbour (any grid and CRS)."
    ),
]
LabelVariableOption = Annotated[
    str | None, typer.Option(help="The label variable when --labels are NetCDF files or Zarr.")
]


def _label_maps(labels: list[Path], cubes: list, variable: str | None) -> list:
    """One (y, x) label array per cube from ``--labels`` (see ``read_labels``)."""
    from latentcube.cube.readers import read_labels

    if len(labels) != len(cubes):
        raise ValueError(f"{len(labels)} --labels for {len(cubes)} cubes: give one per cube")
    return [read_labels(f, c, variable=variable) for f, c in zip(labels, cubes, strict=True)]


@evaluate_app.command("landcover")
def evaluate_landcover(
    cubes: Annotated[
        list[Path],
        typer.Argument(
            help="GreenEarthNet minicubes (.nc) or stores with a 'landcover' variable, "
            "or any cubes with --labels."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    labels: LabelsOption = None,
    label_variable: LabelVariableOption = None,
    model: Annotated[Path | None, typer.Option(help="Checkpoint to embed the cubes with.")] = None,
    embedding: Annotated[
        list[Path] | None, typer.Option(help="Embedding store per cube (instead of --model).")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the embedding feature set.")] = "embedding",
    block: BlockOption = 16,
    max_samples: Annotated[int, typer.Option(help="Pixel-dates drawn per cube.")] = 20000,
    seed: Annotated[int, typer.Option(help="Seed of sampling, folds and probes.")] = 0,
    repeats: RepeatsOption = 1,
) -> None:
    """Land-cover probe (ESA WorldCover) of an embedding and every baseline feature set.

    The classes are each cube's 'landcover' variable, or with --labels a raster per
    cube, such as an ESA WorldCover tile (codes outside its legend are ignored).
    """
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.cache import run_cache
    from latentcube.evaluation.landcover import run_landcover

    try:
        loaded = [open_cube(c).load() for c in cubes]
        if labels:
            maps = _label_maps(labels, loaded, label_variable)
            loaded = [
                c.assign(landcover=(("y", "x"), m.values))
                for c, m in zip(loaded, maps, strict=True)
            ]
        with run_cache(out, ".embed-cache", model is not None) as cache:
            res = run_landcover(
                loaded,
                _embeddings(loaded, model, embedding, name, cache),
                out,
                block=block,
                max_samples=max_samples,
                seed=seed,
                command=_command(),
                repeats=repeats,
                progress=True,
                resume=True,
            )
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    _echo_scores(res, 28)
    typer.echo(f"report: {out / 'report.md'}")


@evaluate_app.command("croptype")
def evaluate_croptype(
    patches: Annotated[
        list[Path],
        typer.Argument(help="WorldCereal patch folders (with labels), or any cubes with --labels."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    labels: LabelsOption = None,
    label_variable: LabelVariableOption = None,
    season: Annotated[
        str | None,
        typer.Option(
            help="START,END dates of the labels' season for every cube "
            "(default: 1 March - 31 October of each cube's last year)."
        ),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Checkpoint to embed the cubes with.")] = None,
    embedding: Annotated[
        list[Path] | None, typer.Option(help="Embedding store per patch (instead of --model).")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the embedding feature set.")] = "embedding",
    block: BlockOption = 16,
    seed: Annotated[int, typer.Option(help="Seed of folds and probes.")] = 0,
    repeats: RepeatsOption = 1,
) -> None:
    """Crop-type probe: per-date series vs season mean, embedding vs every baseline.

    The classes are each WorldCereal patch's crop-type labels, or with --labels a
    raster per cube (e.g. rasterised parcels with crop codes).
    """
    from latentcube.cube.readers import open_cube, read_worldcereal_labels
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.cache import run_cache
    from latentcube.evaluation.croptype import run_croptype

    try:
        seasons = [_season(season)] * len(patches) if season is not None else None
        loaded = [open_cube(p).load() for p in patches]  # S1 too: fused models and S1 baselines
        if labels:
            maps = [m.values for m in _label_maps(labels, loaded, label_variable)]
        else:
            maps = [read_worldcereal_labels(p)["CT"].values for p in patches]
        with run_cache(out, ".embed-cache", model is not None) as cache:
            res = run_croptype(
                loaded,
                maps,
                _embeddings(loaded, model, embedding, name, cache),
                out,
                seasons=seasons,
                block=block,
                seed=seed,
                command=_command(),
                repeats=repeats,
                progress=True,
                resume=True,
            )
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    _echo_scores(res, 40)
    typer.echo(f"report: {out / 'report.md'}")


def _season(text: str) -> tuple[str, str]:
    """``START,END`` (ISO dates, START before END) -> the two dates as ISO strings."""
    import pandas as pd

    parts = [p.strip() for p in text.split(",")]
    bad = f"--season must be START,END dates, e.g. 2019-03-01,2019-10-31; got {text!r}"
    try:
        start, end = (pd.Timestamp(p) for p in parts)
    except ValueError:
        raise ValueError(bad) from None
    if pd.isna(start) or pd.isna(end):
        raise ValueError(bad)
    if start >= end:
        raise ValueError(f"--season: {parts[0]} is not before {parts[1]}")
    return start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")


@evaluate_app.command("gpp")
def evaluate_gpp(
    flux: Annotated[Path, typer.Option(help="FULLSET_DD file, or ICOS half-hourly file/folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    site: Annotated[str | None, typer.Option(help="Site code (default from the file).")] = None,
    lat: Annotated[float | None, typer.Option(help="Site latitude (default: registry).")] = None,
    locations: Annotated[
        Path | None, typer.Option(help="location_fluxnet.csv with site coordinates.")
    ] = None,
    cube: Annotated[
        Path | None,
        typer.Option(
            help="S2 cube at the site: its bands, indices and PCA-7 are added as baselines."
        ),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Checkpoint to embed --cube with.")] = None,
    embedding: Annotated[Path | None, typer.Option(help="Embedding store at the site.")] = None,
    name: Annotated[str, typer.Option(help="Name of the embedding feature set.")] = "embedding",
    test_years: Annotated[str, typer.Option(help="Comma-separated test years.")] = "",
    gap_fill: Annotated[str, typer.Option(help="'linear' or 'ucm'.")] = "linear",
    footprint: Annotated[int | None, typer.Option(help="Central square side in px.")] = None,
    n_trials: Annotated[int, typer.Option(help="Random-search trials per set.")] = 4,
    time_budget: Annotated[
        float,
        typer.Option(
            help="Search budget per set in seconds; 0 = none (run all --n-trials, "
            "so the result does not depend on machine speed)."
        ),
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
    from latentcube.evaluation.cache import run_cache
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
        with run_cache(out, ".embed-cache", model is not None) as cache:
            cubes: dict = {}
            if cube is not None:
                from latentcube.cube.readers import open_cube

                c = open_cube(cube).load()
                emb = _embeddings([c], model, [embedding] if embedding else None, name, cache)
                cubes = feature_sets([c], emb, seed=seed)[0]
            elif embedding is not None:
                from latentcube.evaluation.features import as_feature_cube

                cubes = {name: as_feature_cube(embedding)}
            feats = site_features(
                cubes,
                lat=lat,
                start=table.index.min(),
                end=table.index.max(),
                method=gap_fill,  # type: ignore[arg-type]
                footprint=footprint,
            )
            sets = {"potential radiation": ["rad:Rso"]}
            for k in cubes:
                sets[k] = [c for c in feats.columns if c.startswith(f"{k}:")]
            years = [int(y) for y in test_years.split(",") if y.strip()] or [
                int(table.index.year.max())
            ]
            ref = carbonfluxbench_reference(carbonfluxbench, [code]) if carbonfluxbench else None
            res = run_gpp(
                {code: site_table(table, feats)},
                sets,
                out,
                test_years=years,
                n_trials=n_trials,
                time_budget=time_budget if time_budget > 0 else None,
                max_epochs=max_epochs,
                models=[m for m in models.split(",") if m],
                seed=seed,
                reference=ref,
                command=_command(),
                progress=True,
                resume=True,
                title=f"GPP evaluation at {code}",
            )
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
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
    model: Annotated[Path, typer.Option(help="A checkpoint written by 'latentcube train'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the window subset.")] = 0,
) -> None:
    """Centre-pixel reconstruction MAE per band, beside context-mean and persistence."""
    from latentcube.cube.readers import open_cube
    from latentcube.errors import LatentcubeError
    from latentcube.evaluation.reconstruction import run_reconstruction

    try:
        res = run_reconstruction(model, open_cube(cube).load(), out, seed=seed, command=_command())
    except (LatentcubeError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(
        f"centre MAE model {res['model_mean']:.4f}, context mean "
        f"{res['context_mean_mean']:.4f}, persistence {res['persistence_mean']:.4f} "
        f"({res['n_windows']} windows)"
    )
    typer.echo(f"report: {out / 'report.md'}")


if __name__ == "__main__":  # pragma: no cover
    app()
