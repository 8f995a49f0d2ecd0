"""``latentcube train`` (stage 1 or fusion) and ``latentcube whiten``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from latentcube.cli._app import app, fail, positive

# Options, one line each in the commands below.
Cubes = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Cubes to train on (Zarr stores, sample folders, files), or output folders of "
        "'latentcube cube --sites' (their manifest's stores)."
    ),
]
CubesOpt = Annotated[
    list[Path] | None,
    typer.Option("--cubes", help="A cube to train on (repeatable; adds to CUBES)."),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for checkpoints and metrics.csv.")]
Sensor = Annotated[str, typer.Option(help="Sensor to model: 's2' or 's1'.")]
ModelSpec = Annotated[
    str | None,
    typer.Option(
        help="The model: 'fast' (default), 'paper' or 'tiny', or a YAML file with 'model:' "
        "(with 'variant:') and/or 'train:' (and for fusion 'fusion:') sections."
    ),
]
ConfigAlias = Annotated[
    str | None, typer.Option(hidden=True, help="Old name of --model (same meaning).")
]
Preset = Annotated[
    str, typer.Option(help="Optimisation preset: 'quick' (minutes on a laptop) or 'paper'.")
]
MaxSeconds = Annotated[float | None, typer.Option(help="Stop training after this many seconds.")]
MaxCpu = Annotated[
    float | None, typer.Option(help="Stop after this much CPU time of the process (fair budget).")
]
MaxEpochs = Annotated[int | None, typer.Option(help="Stop after this many epochs.")]
Nproc = Annotated[
    int, typer.Option(help="Data-parallel training processes (DDP: nccl on GPUs, gloo on CPU).")
]
Device = Annotated[
    str,
    typer.Option(
        help="Device: 'auto' (a CUDA GPU, else MPS, else the CPU), 'cpu', 'cuda', 'cuda:N' or "
        "'mps'. Under torchrun or --nproc every process uses cuda:LOCAL_RANK."
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        help="Training precision: '32', 'bf16' (autocast; CPU and recent GPUs) or '16-mixed' "
        "(fp16 autocast with loss scaling; CUDA only)."
    ),
]
DataMode = Annotated[
    str,
    typer.Option(
        help="Windows: 'memory' (load the cubes), 'stream' (read each batch from the Zarr "
        "stores; two or more) or 'auto' (stream when a 'cube --sites' folder is given)."
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(help="DataLoader workers reading batches ahead (default: 2 streaming, else 0)."),
]
HideCentre = Annotated[
    float,
    typer.Option(help="Gap filling: probability of hiding the centre pixel-date from the input."),
]
HideOther = Annotated[
    float, typer.Option(help="Gap filling: probability of hiding any other pixel-date.")
]
Seed = Annotated[int, typer.Option(help="Seed of the split, sampling and training.")]
Resume = Annotated[bool, typer.Option(help="Continue from OUT/last.pt when it exists.")]
Overwrite = Annotated[
    bool, typer.Option(help="Replace another run's model files in OUT (once replaced).")
]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
Stage = Annotated[
    Literal["1", "fusion"],
    typer.Option(help="'1': a sensor's autoencoder; 'fusion': the fusion model."),
]
Autoencoder = Annotated[
    list[str] | None,
    typer.Option(help="Stage fusion: SENSOR=CHECKPOINT of a stage-1 model (repeat; S2 first)."),
]
Base = Annotated[
    Path | None,
    typer.Option(help="Stage fusion: a fused bundle to extend with the --autoencoder sensors."),
]
FusionMode = Annotated[
    Literal["frozen", "finetune"],
    typer.Option(help="Stage fusion: 'frozen' autoencoders or 'finetune' them jointly."),
]
SensorDropout = Annotated[
    float, typer.Option(help="Stage fusion: probability of hiding each sensor per sample.")
]
Objective = Annotated[
    Literal["context", "centre"],
    typer.Option(help="Stage fusion: 'context' (the paper's loss) or 'centre' (centre only)."),
]
Bands = Annotated[
    str,
    typer.Option(
        help="Stage 1: 'auto' (the preset's bands every cube has), 'preset' (all of them, "
        "or refuse), or a comma-separated list such as B02,B03,B04,B8A."
    ),
]
SensorConfig = Annotated[
    list[Path] | None,
    typer.Option(help="YAML declaration of a further sensor to register (repeatable)."),
]


def _model_spec(model: str | None, config: str | None) -> tuple[str | None, str | None]:
    """(recipe, variant): ``--model`` and its old name ``--config``, each a preset or a YAML.

    One of each (a preset name and a YAML recipe) combine, as before: the YAML's
    sections apply to that preset.
    """
    from latentcube.training.config import VARIANTS

    given = [v for v in (model, config) if v is not None]
    names = [v for v in given if v in VARIANTS and not Path(v).exists()]
    recipes = [v for v in given if v not in names]
    if len(set(names)) > 1 or len(recipes) > 1:
        fail(f"--model and --config (its old name) disagree: {config!r}, {model!r}")
    return (recipes[0] if recipes else None), (names[0] if names else None)


def _autoencoders(items: list[str]) -> dict[str, Path]:
    pairs: dict[str, Path] = {}
    for item in items:
        sensor, sep, path = item.partition("=")
        if not sep or not sensor or not path:
            fail(f"--autoencoder takes SENSOR=CHECKPOINT, got {item!r}")
        pairs[sensor] = Path(path)
    if not pairs:
        fail("--stage fusion needs --autoencoder SENSOR=CHECKPOINT (at least one)")
    return pairs


@app.command()
def train(
    cubes: Cubes = None,
    out: Out = Path("model"),
    cubes_opt: CubesOpt = None,
    sensor: Sensor = "s2",
    model: ModelSpec = None,
    config: ConfigAlias = None,
    preset: Preset = "quick",
    max_seconds: MaxSeconds = None,
    max_cpu_seconds: MaxCpu = None,
    max_epochs: MaxEpochs = None,
    nproc: Nproc = 1,
    device: Device = "auto",
    precision: Precision = "32",
    data: DataMode = "auto",
    workers: Workers = None,
    hide_centre: HideCentre = 0.0,
    hide_other: HideOther = 0.0,
    seed: Seed = 42,
    resume: Resume = True,
    overwrite: Overwrite = False,
    progress: Progress = True,
    stage: Stage = "1",
    autoencoder: Autoencoder = None,
    base: Base = None,
    fusion_mode: FusionMode = "frozen",
    sensor_dropout: SensorDropout = 0.0,
    fusion_objective: Objective = "context",
    sensor_config: SensorConfig = None,
    bands: Bands = "auto",
) -> None:
    """Train a stage-1 context autoencoder, or the fusion model, on one or more cubes.

    best.pt, last.pt and metrics.csv go to OUT; a killed run resumes; a 'cube --sites'
    folder is streamed; 'torchrun --nproc-per-node N -m latentcube train ...' trains on
    N GPUs or CPU processes. Example: latentcube train a.zarr b.zarr --model fast -o m
    """
    from latentcube.sensors import load_sensor_config
    from latentcube.training import fit_autoencoder, fit_fusion, train_overrides

    positive(nproc, "--nproc")
    positive(workers, "--workers", low=0)
    for sc in sensor_config or []:
        load_sensor_config(sc)
    paths, (spec, variant) = _cubes(cubes, cubes_opt), _model_spec(model, config)
    hide = (hide_centre, hide_other) if stage == "1" else (0.0, 0.0)  # stage 1 only
    over = train_overrides(max_seconds, max_cpu_seconds, max_epochs, *hide)
    common: dict[str, Any] = dict(nproc=nproc, resume=resume, overwrite=overwrite, seed=seed,
                                  device=device, precision=precision, data=data, preset=preset,
                                  train=over, progress=progress)  # fmt: skip
    if stage == "fusion":
        result = fit_fusion(
            paths, _autoencoders(autoencoder or []), out, config=spec or variant, base=base,
            mode=fusion_mode, sensor_dropout=sensor_dropout, objective=fusion_objective,
            workers=workers or 0, **common,
        )  # fmt: skip
        return _report(result, "(mean over sensors) ", "model bundle")
    chosen = bands if bands in ("auto", "preset") else [b.strip() for b in bands.split(",")]
    result = fit_autoencoder(
        paths, spec, out, sensor=sensor, variant=variant, bands=chosen, log=typer.echo,
        workers=workers, **common,
    )  # fmt: skip
    _report(result, "", "model")


def _cubes(cubes: list[Path] | None, more: list[Path] | None) -> list[Path]:
    paths = [*(cubes or []), *(more or [])]
    if not paths:
        fail("no cubes given: pass them as arguments or with --cubes")
    return paths


def _report(result: Any, what: str, label: str) -> None:
    typer.echo(
        f"best validation centre-pixel MAE {what}{result.best_val:.4f} after {result.epochs} "
        f"epochs ({result.stopped}, {result.seconds:.0f} s, {result.device}, precision "
        f"{result.precision}, data wait {100 * result.data_wait:.0f}%); {label}: "
        f"{result.checkpoint}"
    )


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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT file.")] = False,
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
    from latentcube.training import whiten as whiten_model

    bundle = whiten_model(
        model, cubes, out, seed=seed, max_windows=max_windows, overwrite=overwrite
    )
    info = bundle.meta["whitening"]
    typer.echo(
        f"whitened on {info['windows']} training windows; variance of the axes before "
        f"scaling {', '.join(f'{v:.4g}' for v in info['axis_variances'])}; model: {out}"
    )
