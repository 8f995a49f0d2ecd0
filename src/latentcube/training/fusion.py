"""Stage 2: the fusion model over pretrained per-sensor autoencoders, as a task of the loop.

:class:`FusionTask` owns what is specific to fusion: batches of every sensor's
windows, sensor dropout, the fusion loss and the validation centre-pixel MAE
(mean over sensors, as in the authors' code). The loop
(:func:`~latentcube.training.loop.fit`) gives it everything stage 1 has:
checkpoints, exact resume after a kill, budgets (epochs, wall time, CPU time),
early stopping, reduce-on-plateau and data-parallel processes.
:func:`fit_fusion` is the whole recipe from stage-1 checkpoints and cubes.

Frozen autoencoders give the same latent for a window in every epoch, so their
latents are computed once per run and reused (``cache_latents``); a training step
then runs only the fusion layers and, for the loss, the (frozen) decoders: of the
whole windows (objective ``"context"``) or of the centre pixel and date alone
(``"centre"``, see :class:`~latentcube.models.fusion.FusionLoss`).

In a process group the sensor dropout of a step is drawn for the whole global
batch in every process and each takes its shard's rows, so (with the fuser's
dropout off) several processes train as one does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import xarray as xr

from latentcube.bundle import FUSION_FORMAT, ModelBundle
from latentcube.data.batch import SensorBatch
from latentcube.data.multisensor import FusionWindows
from latentcube.devices import check_precision
from latentcube.errors import ModelError
from latentcube.io import check_output
from latentcube.models.autoencoder import ContextAutoencoder
from latentcube.models.config import LossConfig
from latentcube.models.fusion import (
    FusionConfig,
    FusionLoss,
    FusionModel,
    centre_errors,
    drop_sensors,
)
from latentcube.models.whitening import fit_on_outputs
from latentcube.training.config import (
    TrainConfig,
    fusion_train_config,
    read_recipe,
    train_config,
)
from latentcube.training.distributed import all_reduce_sums, process_device, rank_and_size
from latentcube.training.feed import to_device
from latentcube.training.loop import Task, TrainResult, fit
from latentcube.training.sources import expand_cubes, use_streaming

__all__ = [
    "FusionTask",
    "evaluate_fusion",
    "extend_fusion",
    "fit_fusion",
    "fit_fusion_whitening",
    "fusion_centre_batches",
    "fusion_latents",
]


def _device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _on(idx: np.ndarray, values: torch.Tensor) -> torch.Tensor:
    """Window indices as a tensor on the device of ``values`` (to index it)."""
    return torch.as_tensor(np.asarray(idx), device=values.device)


class _Centres:
    """``read(idx)``: the cached centre batches of windows ``idx`` (for loader workers)."""

    def __init__(self, centres: Mapping[str, SensorBatch]) -> None:
        self.centres = dict(centres)

    def __call__(self, idx: np.ndarray) -> dict[str, SensorBatch]:
        """Every sensor's centre batch of windows ``idx``."""
        return {s: v.take(idx) for s, v in self.centres.items()}


@torch.no_grad()
def fusion_latents(
    model: FusionModel, windows: FusionWindows, sensors: tuple[str, ...], batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Stage-1 latents (N, latent_dim) of ``sensors`` for every window (eval mode)."""
    was = model.training
    model.eval()
    device = _device_of(model)
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sensors}
    for i in range(0, len(windows), batch_size):
        b = to_device(windows.tensors(np.arange(i, min(i + batch_size, len(windows)))), device)
        for s in sensors:
            out[s].append(model.encode_sensor(s, b[s]))
    model.train(was)
    return {s: torch.cat(v) if v else torch.zeros(0) for s, v in out.items()}


def fusion_centre_batches(windows: FusionWindows, batch_size: int = 512) -> dict[str, SensorBatch]:
    """Every window's centre pixel and date, gaps and offsets, per sensor.

    With every autoencoder frozen, its latents cached and the ``"centre"``
    objective, these are all a training step needs (see
    :meth:`SensorBatch.centre_only`).
    """
    parts: dict[str, list[SensorBatch]] = {s: [] for s in windows.sensors}
    for i in range(0, len(windows), batch_size):
        b = windows.tensors(np.arange(i, min(i + batch_size, len(windows))))
        for s in windows.sensors:
            parts[s].append(b[s].centre_only())
    return {
        s: SensorBatch(*(torch.cat([getattr(p, k) for p in v]) for k in SensorBatch.FIELDS))
        for s, v in parts.items()
    }


@torch.no_grad()
def fit_fusion_whitening(
    model: FusionModel,
    windows: FusionWindows,
    *,
    max_windows: int = 20_000,
    seed: int = 0,
    batch_size: int = 512,
) -> FusionModel:
    """Fit the fused model's output whitening on the embeddings of ``windows`` (in place).

    As :func:`latentcube.training.stage1.fit_whitening`, for the fused embedding: every
    sensor visible, windows without any present sensor left out. The stage-1
    autoencoders are not changed.

    Returns
    -------
    FusionModel
        ``model``, in eval mode.
    """
    model.eval()

    def embeddings(idx: np.ndarray) -> torch.Tensor:
        e = model(to_device(windows.tensors(idx), _device_of(model)), decode=False).embedding
        return e[torch.isfinite(e).all(dim=1)]

    fit_on_outputs(
        model.whitening,
        len(windows),
        embeddings,
        max_windows=max_windows,
        seed=seed,
        batch_size=batch_size,
        what="window with a present sensor",
    )
    return model


@torch.no_grad()
def evaluate_fusion(
    model: FusionModel,
    windows: FusionWindows,
    loss_fn: FusionLoss,
    batch_size: int = 256,
    *,
    visible: Mapping[str, bool] | None = None,
    latents: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Validation loss and centre-pixel MAE per sensor (and their mean).

    In a process group each process evaluates its share of the windows and the
    sums are all-reduced, so all processes return the same figures.

    Parameters
    ----------
    model, windows, loss_fn
        The model, the windows and the loss.
    batch_size
        Windows per call.
    visible
        Optionally hide sensors (``{"s2": False}``) to measure single-sensor embeddings.
    latents
        Precomputed latents of some sensors (see :func:`fusion_latents`).

    Returns
    -------
    dict
        ``val_loss``, ``val_centre_mae`` (mean over sensors) and
        ``val_centre_mae_<sensor>``.
    """
    model.eval()
    device = _device_of(model)
    sensors = model.sensors
    rank, size = rank_and_size()
    mine = np.array_split(np.arange(len(windows)), size)[rank]
    tot, n_tot = 0.0, 0
    err = {s: [0.0, 0] for s in sensors}
    for i in range(0, len(mine), batch_size):
        idx = mine[i : i + batch_size]
        b = to_device(windows.tensors(idx), device)
        vis = None
        if visible is not None:
            vis = torch.tensor([visible.get(s, True) for s in sensors], device=device)
            vis = vis.expand(len(idx), -1)
        lat = {s: v[_on(idx, v)] for s, v in latents.items()} if latents else None
        out = model(b, visible=vis, latents=lat)
        loss, _ = loss_fn(out, b)
        tot += float(loss) * len(idx)
        n_tot += len(idx)
        for s, (e, n) in centre_errors(out, b, sensors).items():
            err[s][0] += e
            err[s][1] += n
    sums = all_reduce_sums([tot, n_tot, *(v for s in sensors for v in err[s])])
    res = {"val_loss": sums[0] / max(sums[1], 1)}
    for k, s in enumerate(sensors):
        e_sum, count = sums[2 + 2 * k], sums[3 + 2 * k]
        res[f"val_centre_mae_{s}"] = e_sum / count if count else float("nan")
    res["val_centre_mae"] = float(np.mean([res[f"val_centre_mae_{s}"] for s in sensors]))
    return res


def extend_fusion(
    base: FusionModel,
    autoencoders: Mapping[str, ContextAutoencoder],
    *,
    mode: str = "finetune",
    seed: int = 42,
    **overrides: Any,
) -> FusionModel:
    """A fusion model with the sensors of ``base`` plus new ones.

    The sensors of ``base`` keep their autoencoders, frozen (``frozen_sensors``);
    the new sensors' autoencoders are trained with the fusion layers
    (``mode="finetune"``) or frozen too (``mode="frozen"``). The fusion layers
    start from those of ``base`` (the new sensors' projection, type embedding and
    head are new). ``base`` itself is not modified.

    Parameters
    ----------
    base
        The existing fused model.
    autoencoders
        Stage-1 autoencoders of the new sensors.
    mode
        Mode of the new model.
    seed
        Seed of the new layers' initialisation.
    **overrides
        Further :class:`FusionConfig` fields (e.g. ``loss_weights``, ``sensor_dropout``).
    """
    import copy

    new = [s for s in autoencoders if s not in base.sensors]
    if not new:
        raise ModelError(f"no new sensor: the model already has {list(base.sensors)}")
    old_cfg = base.config
    data = old_cfg.model_dump()
    data.update(
        sensors=(*old_cfg.sensors, *new),
        latent_dims={
            **old_cfg.latent_dims,
            **{s: autoencoders[s].config.latent_dim for s in new},
        },
        mode=mode,
        frozen_sensors=tuple(dict.fromkeys((*old_cfg.frozen_sensors, *old_cfg.sensors))),
        loss_weights={},
    )
    data.update(overrides)
    cfg = FusionConfig.model_validate(data)
    torch.manual_seed(seed)
    aes = {s: copy.deepcopy(base.autoencoder(s)) for s in old_cfg.sensors}
    aes.update({s: copy.deepcopy(autoencoders[s]) for s in new})
    model = FusionModel(cfg, aes)
    own = model.state_dict()
    # the fusion layers are retrained, so the base model's output whitening no longer fits
    inherited = {
        k: v for k, v in base.state_dict().items() if k in own and not k.startswith("whitening.")
    }
    model.load_state_dict({**own, **inherited})
    return model


class FusionTask(Task):
    """Train the fusion layers (and, in ``finetune`` mode, the autoencoders) of a model.

    Parameters
    ----------
    model
        A :class:`FusionModel` built over pretrained autoencoders (its mode
        decides what is trained); trained in place (in one process).
    train_windows, val_windows
        Windows of every sensor (:func:`~latentcube.data.multisensor.split_fusion_windows`).
    loss_configs
        Per-sensor loss weights (default: the sensors' stage-1 weights).
    cache_latents
        Compute the frozen autoencoders' latents once instead of every step.
    """

    checkpoint_format = FUSION_FORMAT
    train_windows: FusionWindows
    val_windows: FusionWindows

    def __init__(
        self,
        model: FusionModel,
        train_windows: FusionWindows,
        val_windows: FusionWindows,
        *,
        loss_configs: Mapping[str, LossConfig] | None = None,
        cache_latents: bool = True,
    ) -> None:
        fcfg = model.config
        for w in (train_windows, val_windows):
            if len(w) and set(w.sensors) != set(fcfg.sensors):
                raise ModelError(
                    f"windows hold sensors {list(w.sensors)}, the model {list(fcfg.sensors)}"
                )
        self.model: FusionModel = model
        self.train_windows, self.val_windows = train_windows, val_windows
        given = dict(loss_configs or {})
        self.loss_configs = {s: given.get(s) or LossConfig.for_sensor(s) for s in fcfg.sensors}
        self.cache_latents = cache_latents
        # decoding the centre alone leaves layers of a trained decoder without a gradient
        self.find_unused_parameters = fcfg.objective == "centre" and any(
            not fcfg.is_frozen(s) for s in fcfg.sensors
        )
        self.metric_fields = (
            "epoch",
            "step",
            "lr",
            "train_loss",
            *(f"train_loss_{s}" for s in fcfg.sensors),
            "val_loss",
            "val_centre_mae",
            *(f"val_centre_mae_{s}" for s in fcfg.sensors),
            "seconds",
        )

    def identity(self) -> dict[str, Any]:
        """Fusion and autoencoder configurations, losses and window counts."""
        fcfg = self.model.config
        return {
            "fusion_config": fcfg.model_dump(mode="json"),
            "autoencoders": {
                s: self.model.autoencoder(s).config.model_dump(mode="json") for s in fcfg.sensors
            },
            "loss_configs": {s: c.model_dump(mode="json") for s, c in self.loss_configs.items()},
            "n_train": self.n_train,
            "n_val": self.n_val,
        }

    def setup(self, config: TrainConfig, rank: int, world: int) -> None:
        """Freeze what the mode freezes; the fusion loss."""
        self.model.apply_mode()
        self.loss_fn = FusionLoss(self.model.config, self.loss_configs)
        self._params = self.model.trainable_parameters()

    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the mode trains."""
        return self._params

    def optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """The fused (single-kernel) AdamW.

        A fusion step is small, so per-tensor optimiser overhead is a visible share
        of it (``benchmarks/bench_fusion.py``).
        """
        return torch.optim.AdamW(
            self._params, lr=config.lr, weight_decay=config.weight_decay, fused=True
        )

    def prepare(self) -> None:
        """Cache the frozen sensors' latents (and, if that is all a step needs, the centres)."""
        fcfg = self.model.config
        frozen = tuple(s for s in fcfg.sensors if fcfg.is_frozen(s))
        self._cached_tr: dict[str, torch.Tensor] = {}
        self._cached_va: dict[str, torch.Tensor] = {}
        if self.cache_latents and frozen:
            self._cached_tr = fusion_latents(self.model, self.train_windows, frozen)
            self._cached_va = fusion_latents(self.model, self.val_windows, frozen)
        self._centre_tr: dict[str, SensorBatch] = {}
        if fcfg.objective == "centre" and len(self._cached_tr) == len(fcfg.sensors):
            # nothing is encoded or decoded beyond the centre: load only the centres
            self._centre_tr = fusion_centre_batches(self.train_windows)
        self._present = torch.from_numpy(self.train_windows.centre_valid(fcfg.sensors))

    def batch_reader(self) -> Callable[[np.ndarray], Any]:
        """Every sensor's windows, or only their centres when a step needs no more."""
        if self._centre_tr:
            return _Centres(self._centre_tr)
        return self.train_windows.tensors

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
        """Embed and reconstruct the shard's windows under sensor dropout."""
        idx = batch[shard]
        b: dict[str, SensorBatch] = data
        # drawn for the global batch (on the CPU), so every process draws the same
        visible = drop_sensors(self._present[batch], self.model.config.sensor_dropout)
        visible = visible[torch.from_numpy(shard)].to(self.device)
        lat = {s: v[_on(idx, v)] for s, v in self._cached_tr.items()} or None
        out = net(b, visible=visible, latents=lat)
        loss, parts = self.loss_fn(out, b)
        return loss, {"loss": loss, **{k: parts[k] for k in self.train_keys()[1:]}}

    def train_keys(self) -> tuple[str, ...]:
        """The total loss and each sensor's."""
        return ("loss", *(f"loss_{s}" for s in self.model.config.sensors))

    def validate(self, config: TrainConfig) -> dict[str, float]:
        """Validation loss and centre MAE per sensor and their mean."""
        return evaluate_fusion(
            self.model,
            self.val_windows,
            self.loss_fn,
            config.val_batch_size,
            latents=self._cached_va or None,
        )

    def checkpoint_extra(self) -> dict[str, Any]:
        """The per-sensor losses."""
        return {
            "loss_configs": {s: c.model_dump(mode="json") for s, c in self.loss_configs.items()}
        }


def fit_fusion(
    cubes: Sequence[xr.Dataset | str | os.PathLike[str]],
    autoencoders: Mapping[str, str | os.PathLike[str]],
    out: str | os.PathLike[str] = "fusion",
    *,
    config: TrainConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    preset: str = "quick",
    seed: int | None = None,
    train: Mapping[str, Any] | None = None,
    base: str | os.PathLike[str] | None = None,
    mode: str = "frozen",
    sensor_dropout: float = 0.0,
    objective: str = "context",
    loss_weights: Mapping[str, float] | None = None,
    nproc: int = 1,
    device: str | torch.device | None = "auto",
    precision: str = "32",
    data: str = "auto",
    workers: int = 0,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a fused model from stage-1 checkpoints and cubes (``train --stage fusion``).

    Parameters
    ----------
    cubes
        Cubes holding every sensor (opened, or paths); split into training and
        validation as in stage 1 (by cube, or by spatial blocks of a single cube).
    autoencoders
        Stage-1 checkpoints per sensor, reference (S2) first. With ``base``,
        only the sensors to add.
    out
        Output folder (``best.pt`` is the model bundle).
    config
        Optimisation settings, or a recipe (a YAML file or mapping) whose
        ``train:`` section overrides the preset and whose ``fusion:`` section may
        give ``loss_weights``.
    preset
        Optimisation preset under the recipe (:func:`fusion_train_config`).
    seed
        Seed of the split, the new layers' initialisation and the data order
        (default: the configuration's).
    train
        :class:`TrainConfig` fields applied last (e.g. budgets).
    base
        An existing fused bundle to extend with the sensors of ``autoencoders``:
        its autoencoders stay frozen, the new ones and the fusion layers train.
    mode
        ``"frozen"`` or ``"finetune"`` (see :class:`FusionConfig`).
    sensor_dropout, objective, loss_weights
        See :class:`FusionConfig`.
    nproc, device, precision, workers, resume, overwrite, progress
        See :func:`~latentcube.training.loop.fit`.
    data
        ``"memory"`` or ``"auto"``: fusion reads its windows from the cubes
        loaded in memory (a manifest's stores too); ``"stream"`` is refused, as
        the streamed windows hold one sensor.
    provenance
        Metadata stored in the bundles (the cube paths, autoencoders and base are added).

    Raises
    ------
    OutputError
        ``out`` is, is inside or contains an input (cube, checkpoint, base
        bundle), or cannot be written, before anything is read.
    DeviceError
        ``device`` or ``precision`` is not available here, before anything is read.
    ModelError
        ``data="stream"`` (fusion trains in memory).
    """
    sections: dict[str, Any] = {}
    if isinstance(config, TrainConfig):
        base_cfg = config
    else:
        named, sections = read_recipe(config)
        if named is not None:
            raise ValueError(f"a fusion recipe is a YAML file or mapping, not {named!r}")
        base_cfg = fusion_train_config(preset)
    updates = {**({"seed": seed} if seed is not None else {}), **dict(train or {})}
    cfg = train_config(base_cfg, sections, updates)
    check_precision(precision, process_device(device))  # before anything is read
    cubes, _ = expand_cubes(cubes)
    if use_streaming(data, False):
        raise ModelError(
            "fusion trains from cubes in memory (streamed windows hold one sensor); "
            "use --data memory or auto"
        )
    paths = [c for c in cubes if not isinstance(c, xr.Dataset)]
    check_output(out, [*paths, *autoencoders.values(), base])
    from latentcube.cube.readers import open_cube
    from latentcube.data.multisensor import split_fusion_windows

    aes = {s: ModelBundle.load(p, sensor=s).autoencoder(s) for s, p in autoencoders.items()}
    if loss_weights is None:
        loss_weights = (sections.get("fusion") or {}).get("loss_weights")
    extra = {
        "sensor_dropout": sensor_dropout,
        "objective": objective,
        "loss_weights": dict(loss_weights or {}),
    }
    torch.manual_seed(cfg.seed)
    if base is not None:
        base_model = cast(FusionModel, ModelBundle.load(base, kind="fusion").model)
        model = extend_fusion(base_model, aes, mode=mode, seed=cfg.seed, **extra)
    else:
        if not aes:
            raise ModelError("no stage-1 autoencoders given")
        model = FusionModel(FusionConfig.for_autoencoders(aes, mode=mode, **extra), aes)
    loaded = [c if isinstance(c, xr.Dataset) else open_cube(c).load() for c in cubes]
    ref = model.autoencoder(model.config.reference).config
    bands = {s: model.autoencoder(s).config.bands for s in model.sensors}
    tr, va = split_fusion_windows(loaded, model.sensors, bands, window=ref.window, seed=cfg.seed)
    prov = dict(provenance) if provenance is not None else {"cubes": [str(p) for p in paths]}
    return fit(
        FusionTask(model, tr, va),
        cfg,
        out,
        nproc=nproc,
        device=device,
        precision=precision,
        workers=workers,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        provenance={
            **prov,
            "autoencoders": {s: str(p) for s, p in autoencoders.items()},
            "base": str(base) if base else "",
        },
    )
