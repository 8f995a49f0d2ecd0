"""Stage 1: a sensor's context autoencoder, as a task of the loop, and its recipe.

:class:`AutoencoderTask` owns what is specific to stage 1: the model built from
its configuration, batches of context windows, the sensor's context loss and the
validation centre-pixel MAE. :func:`fit_autoencoder` is the whole recipe (preset
or YAML -> split of the cubes -> training) that ``latentcube train``, the demo
and the scripts call.

Gap filling (beyond the paper): with ``hide_centre_prob``/``hide_prob`` > 0 the
centre pixel-date (and random other valid entries) are hidden from the model's
input but kept as targets of the loss, so the model learns to reconstruct a
cloudy centre from its context. Both are 0 in every preset. The hidden set is
drawn per *global* batch from a generator seeded with ``(seed, epoch, batch)``,
so runs are reproducible, resumable and identical with one or several processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.bundle import FORMAT
from latentcube.data.source import WindowSource
from latentcube.data.windows import Windows, hide_entries
from latentcube.devices import check_precision
from latentcube.io import check_output
from latentcube.models.autoencoder import ContextAutoencoder, build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.losses import ContextLoss, centre_abs_error
from latentcube.models.whitening import fit_on_outputs
from latentcube.sensors import SENSORS
from latentcube.training.config import TrainConfig, read_recipe, train_config, train_config_preset
from latentcube.training.distributed import all_reduce_sums, process_device, rank_and_size
from latentcube.training.loop import Task, TrainResult, fit
from latentcube.training.sources import expand_cubes, stream_split, use_streaming

__all__ = ["AutoencoderTask", "evaluate", "fit_autoencoder", "fit_whitening"]

METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_mae",
    "train_sam",
    "train_ssim",
    "train_center",
    "train_decorrelation",
    "val_loss",
    "val_centre_mae",
    "seconds",
)

#: A cube given to :func:`fit_autoencoder`: opened, or a path :func:`open_cube` reads.
CubeLike = xr.Dataset | str | os.PathLike[str]


def _device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def evaluate(
    model: ContextAutoencoder, windows: WindowSource, loss_fn: ContextLoss, batch_size: int = 256
) -> dict[str, float]:
    """Validation loss and centre-pixel MAE of ``model`` on ``windows``.

    In a process group each process evaluates its share of the windows and the
    sums are all-reduced, so all processes return the same figures.
    """
    model.eval()
    device = _device_of(model)
    rank, size = rank_and_size()
    mine = np.array_split(np.arange(len(windows)), size)[rank]
    tot_loss, n_loss, err, cnt = 0.0, 0, 0.0, 0
    for i in range(0, len(mine), batch_size):
        x, m, g = (torch.from_numpy(a).to(device) for a in windows.batch(mine[i : i + batch_size]))
        recon, _ = model(x, m, g)
        loss, _ = loss_fn(recon, x, m)
        tot_loss += float(loss) * len(x)
        n_loss += len(x)
        s, n = centre_abs_error(recon, x, m)
        err += float(s)
        cnt += int(n)
    t_loss, t_n, t_err, t_cnt = all_reduce_sums([tot_loss, n_loss, err, cnt])
    return {
        "val_loss": t_loss / max(t_n, 1),
        "val_centre_mae": t_err / t_cnt if t_cnt else float("nan"),
    }


@torch.no_grad()
def fit_whitening(
    model: ContextAutoencoder,
    windows: Windows,
    *,
    max_windows: int = 20_000,
    seed: int = 0,
    batch_size: int = 512,
) -> ContextAutoencoder:
    """Fit the model's output whitening on the latents of ``windows`` (in place).

    The latents of at most ``max_windows`` windows (a seeded draw) are computed
    without whitening, then :meth:`~latentcube.models.whitening.Whitening.fit_`
    sets the transform: from then on the model's latents are decorrelated with
    unit variance (largest-variance axis first) and its decoder undoes the map,
    so reconstructions are unchanged up to float rounding. No labels are used;
    fit on the training windows.

    Returns
    -------
    ContextAutoencoder
        ``model``, in eval mode.
    """
    model.eval()

    device = _device_of(model)

    def latents(idx: np.ndarray) -> torch.Tensor:
        return model.encode(*(torch.from_numpy(a).to(device) for a in windows.batch(idx)))

    fit_on_outputs(
        model.whitening,
        len(windows),
        latents,
        max_windows=max_windows,
        seed=seed,
        batch_size=batch_size,
    )
    return model


class AutoencoderTask(Task):
    """Train a stage-1 context autoencoder on context windows of one sensor.

    Parameters
    ----------
    model_config
        The model to build (seeded by the loop).
    train_windows, val_windows
        Context windows (split by cube or spatial block beforehand): in memory
        (:class:`~latentcube.data.windows.Windows`) or streamed from stores
        (:class:`~latentcube.data.streaming.StreamingWindows`).
    loss_config
        Loss weights (default: the sensor's weights from the paper).
    """

    metric_fields = METRIC_FIELDS
    checkpoint_format = FORMAT
    train_windows: WindowSource
    val_windows: WindowSource

    def __init__(
        self,
        model_config: AutoencoderConfig,
        train_windows: WindowSource,
        val_windows: WindowSource,
        *,
        loss_config: LossConfig | None = None,
    ) -> None:
        self.model_config = model_config
        self.train_windows, self.val_windows = train_windows, val_windows
        self.default_loss = LossConfig.for_sensor(model_config.sensor)
        self.loss_config = loss_config or self.default_loss

    def identity(self) -> dict[str, Any]:
        """Model configuration, window counts and a non-default loss."""
        out: dict[str, Any] = {
            "model_config": self.model_config.model_dump(mode="json"),
            "n_train": self.n_train,
            "n_val": self.n_val,
        }
        if self.loss_config != self.default_loss:  # the default keeps older identities
            out["loss_config"] = self.loss_config.model_dump(mode="json")
        return out

    def setup(self, config: TrainConfig, rank: int, world: int) -> None:
        """Build the autoencoder and the sensor's context loss."""
        self.model: ContextAutoencoder = build_autoencoder(self.model_config)
        if world > 1:
            # same initial weights everywhere (DDP also broadcasts them); own dropout stream
            torch.manual_seed(config.seed * 1000 + rank)
        self.loss_fn = ContextLoss(self.loss_config)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter of the autoencoder."""
        return list(self.model.parameters())

    def optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """AdamW over the autoencoder."""
        return torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    def training_step(
        self,
        net: torch.nn.Module,
        data: Any,
        batch: np.ndarray,
        shard: np.ndarray,
        *,
        config: TrainConfig,
        epoch: int,
        start: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct the shard's windows (gap filling hides entries from the input)."""
        x, m, g = data
        m_in = m
        if config.hide_centre_prob > 0 or config.hide_prob > 0:
            rng = np.random.default_rng([config.seed, epoch, start, 1])
            shape = (len(batch), *m.shape[1:])  # drawn for the global batch
            hidden = hide_entries(
                np.ones(shape, bool), rng, config.hide_centre_prob, config.hide_prob
            )
            m_in = m & ~torch.from_numpy(hidden[shard]).to(m.device)
        recon, z = net(x, m_in, g)
        loss, parts = self.loss_fn(recon, x, m, latent=z)
        return loss, {"loss": loss, **parts}

    def train_keys(self) -> tuple[str, ...]:
        """Loss terms logged (``decorrelation`` only when its weight is on)."""
        keys: tuple[str, ...] = ("loss", "mae", "sam", "ssim", "center")
        if self.loss_config.lambda_decorrelation > 0:
            keys += ("decorrelation",)  # blank in metrics.csv when the term is off
        return keys

    def validate(self, config: TrainConfig) -> dict[str, float]:
        """Validation loss and centre-pixel MAE."""
        return evaluate(self.model, self.val_windows, self.loss_fn, config.val_batch_size)

    def checkpoint_extra(self) -> dict[str, Any]:
        """The loss and what the model's inputs are."""
        c = self.model_config
        return {
            "loss_config": self.loss_config.model_dump(mode="json"),
            "normalisation": {
                "sensor": c.sensor,
                "bands": list(c.bands),
                "values": SENSORS[c.sensor].units,
                "value_range": list(SENSORS[c.sensor].value_range),
                "masked_inputs": "filled by the model; the validity mask is an input",
            },
        }

    def postfix(self, means: Mapping[str, float]) -> dict[str, str]:
        """Running loss and centre term."""
        return {"loss": f"{means['loss']:.4f}", "centre": f"{means['center']:.4f}"}


def model_config(
    recipe: str | os.PathLike[str] | Mapping[str, Any] | None,
    sensor: str = "s2",
    *,
    variant: str | None = None,
    model: Mapping[str, Any] | None = None,
) -> tuple[AutoencoderConfig, dict[str, Any]]:
    """The autoencoder configuration of a recipe, and the recipe's sections.

    ``recipe`` as :func:`~latentcube.training.config.read_recipe`; ``variant``
    names the preset when the recipe does not (default ``"fast"``; a recipe naming
    another variant raises); ``model`` fields are applied last.
    """
    named, sections = read_recipe(recipe)
    if named is not None and variant is not None and named != variant:
        raise ValueError(f"config {named} and model {variant} disagree")
    over = dict(sections.get("model") or {})
    chosen = over.pop("variant", None) or named or variant or "fast"
    cfg = AutoencoderConfig.preset(chosen, sensor)
    data = {**cfg.model_dump(), **over, **dict(model or {})}
    return AutoencoderConfig.model_validate(data), sections


def _with_bands(
    cfg: AutoencoderConfig, bands: str | Sequence[str], cubes: Sequence[xr.Dataset], names: Any
) -> AutoencoderConfig:
    """``cfg`` with the bands chosen by ``bands`` (see :func:`fit_autoencoder`)."""
    from latentcube.sensors import band_dim

    dim = band_dim(cfg.sensor)
    have = [{str(b) for b in c[dim].values} if dim in c.coords else set() for c in cubes]
    common = set.intersection(*have) if have else set()
    if bands == "preset":
        chosen = list(cfg.bands)
    elif bands == "auto":
        chosen = [b for b in cfg.bands if b in common]
    else:
        chosen = [str(b) for b in bands]
    missing = [b for b in chosen if b not in common]
    if missing or not chosen:
        lacking = next(
            (str(n) for n, h in zip(names, have, strict=False) if set(chosen) - h), "a cube"
        )
        raise ValueError(
            f"{lacking} lacks the {cfg.sensor} bands {missing or list(cfg.bands)}; train on the "
            "bands every cube has with --bands auto, or name them with --bands B02,B03,..."
        )
    if tuple(chosen) == tuple(cfg.bands):
        return cfg
    return AutoencoderConfig.model_validate({**cfg.model_dump(), "bands": tuple(chosen)})


def fit_autoencoder(
    cubes: Sequence[CubeLike],
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] = "model",
    *,
    sensor: str = "s2",
    variant: str | None = None,
    preset: str = "quick",
    seed: int = 42,
    train: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    windows: tuple[WindowSource, WindowSource] | None = None,
    loss_config: LossConfig | None = None,
    nproc: int = 1,
    device: str | torch.device | None = "auto",
    precision: str = "32",
    data: str = "auto",
    workers: int | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
    log: Callable[[str], Any] | None = None,
    bands: str | Sequence[str] = "auto",
) -> TrainResult:
    """Train a stage-1 autoencoder from cubes and a recipe (``latentcube train``).

    Parameters
    ----------
    cubes
        Cubes to train on (opened, or paths :func:`~latentcube.cube.readers.open_cube`
        reads, or output folders of ``latentcube cube --sites`` / their
        ``manifest.csv``: the stores built). Split into training and validation
        windows by cube (two cubes or more) or by spatial blocks (one cube), with
        ``seed``.
    config
        The recipe: a model variant (``"paper"``, ``"fast"``, ``"tiny"``), a YAML
        file or a mapping with ``model:`` (with ``variant:``) and/or ``train:``
        sections overriding the presets.
    out
        Output folder (``best.pt`` is the model; see :func:`~latentcube.training.loop.fit`).
    sensor
        The sensor to model.
    variant
        The model variant when ``config`` names none (default ``"fast"``).
    preset
        Optimisation preset (``"quick"`` or ``"paper"``) under the recipe's ``train:``.
    seed
        Seed of the split, the initialisation and the data order.
    train, model
        :class:`TrainConfig` and :class:`~latentcube.models.config.AutoencoderConfig`
        fields applied last (e.g. budgets, ``latent_dim``).
    windows
        ``(train, validation)`` windows split by the caller, instead of the split
        of ``cubes`` (which may then be empty).
    loss_config
        Loss weights (default: the sensor's weights from the paper).
    nproc, device, precision, resume, overwrite, progress
        See :func:`~latentcube.training.loop.fit`.
    data
        ``"memory"``: load the cubes; ``"stream"``: read every batch from the
        Zarr stores (two or more; see :mod:`latentcube.training.sources`);
        ``"auto"`` (default): stream when a manifest is given.
    workers
        ``DataLoader`` workers reading batches ahead (default: 2 when streaming,
        0 in memory).
    provenance
        Metadata stored in the checkpoints (default: the cube paths and the seed).
    log
        Called with one line describing the windows and the model.
    bands
        ``"auto"`` (default): the preset's bands that every cube has, in the
        preset's order (e.g. the 4 bands of a GreenEarthNet cube); ``"preset"``:
        exactly the preset's bands (a cube lacking one is refused); or a list of
        band names. Bands set by the recipe's ``model:`` section win.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        An unknown variant or a bad recipe, before anything is read or written.
    OutputError
        ``out`` is, is inside or contains an input cube, or cannot be written,
        before anything is read.
    DeviceError
        ``device`` or ``precision`` is not available here, before anything is read.
    CubeError
        Streamed windows asked for from fewer than two stores or from inputs that
        are not Zarr stores; a manifest without a built site.
    """
    mcfg, sections = model_config(config, sensor, variant=variant, model=model)
    tcfg = train_config(train_config_preset(preset), sections, {"seed": seed, **dict(train or {})})
    check_precision(precision, process_device(device))  # before anything is read
    cubes, from_manifest = expand_cubes(cubes)
    paths = [c for c in cubes if not isinstance(c, xr.Dataset)]
    check_output(out, paths)
    stream = windows is None and use_streaming(data, from_manifest)
    if windows is None:
        from latentcube.cube.readers import open_cube

        # a band-mask model keeps all its bands: each cube needs min_bands of them
        own_bands = "bands" in (sections.get("model") or {}) or "bands" in (model or {})
        own_bands = own_bands or mcfg.band_mask
        min_bands = mcfg.min_bands if mcfg.band_mask else None
        if stream:
            if not own_bands:  # band names only: the stores stay unread
                opened = [c if isinstance(c, xr.Dataset) else open_cube(c) for c in cubes]
                mcfg = _with_bands(mcfg, bands, opened, paths or cubes)
            windows = stream_split(
                cubes, sensor, mcfg.bands, window=mcfg.window, seed=seed, progress=progress,
                min_bands=min_bands,
            )  # fmt: skip
        else:
            from latentcube.data.windows import split_windows

            loaded = [c if isinstance(c, xr.Dataset) else open_cube(c).load() for c in cubes]
            if not own_bands:
                mcfg = _with_bands(mcfg, bands, loaded, paths or cubes)
            windows = split_windows(
                loaded, sensor, mcfg.bands, seed=seed, window=mcfg.window, min_bands=min_bands
            )
    tr, va = windows
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if stream else 0
    if log is not None:
        how = (
            f"streamed from {len(cubes)} stores, {workers} loader workers"
            if stream
            else (f"from {len(cubes)} cube(s)")
        )
        log(
            f"{len(tr)} training and {len(va)} validation windows {how}, "
            f"{mcfg.variant} {sensor} model" + (f", {nproc} processes" if nproc > 1 else "")
        )
    if provenance is None:
        provenance = {"cubes": [str(p) for p in paths], "seed": seed}
        if stream:
            provenance["windows"] = "streamed"
    return fit(
        AutoencoderTask(mcfg, tr, va, loss_config=loss_config),
        tcfg,
        out,
        nproc=nproc,
        device=device,
        precision=precision,
        workers=workers,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        provenance=provenance,
    )
