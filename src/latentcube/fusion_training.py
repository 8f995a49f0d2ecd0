"""Stage-2 training: the fusion model over pretrained per-sensor autoencoders.

Same guarantees as stage 1 (:mod:`latentcube.training`): AdamW with a per-step
warm-up, reduce-on-plateau and early stopping on the validation centre-pixel MAE
(mean over sensors, as in the authors' code), gradient clipping, a progress bar,
one CSV row per epoch, ``last.pt``/``best.pt`` bundles written atomically after
every epoch, a seeded data order and checkpointed RNG state, so a run killed at
any moment resumes from its last epoch and ends as an uninterrupted run would.

Frozen autoencoders give the same latent for a window in every epoch, so their
latents are computed once per run and reused (``cache_latents``); a training step
then runs only the fusion layers and, for the loss, the (frozen) decoders: of the
whole windows (objective ``"context"``) or of the centre pixel and date alone
(``"centre"``, see :class:`~latentcube.models.fusion.FusionLoss`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.bundle import FUSION_FORMAT, save_fusion_checkpoint
from latentcube.data.multisensor import FusionWindows
from latentcube.errors import ModelError
from latentcube.models.autoencoder import ContextAutoencoder
from latentcube.models.config import LossConfig
from latentcube.models.fusion import (
    FusionConfig,
    FusionLoss,
    FusionModel,
    SensorBatch,
    centre_errors,
    drop_sensors,
)
from latentcube.models.whitening import fit_on_outputs
from latentcube.training import (
    TrainConfig,
    TrainResult,
    _after_epoch,
    _check_windows,
    _epoch_order,
    _epoch_row,
    _fresh_state,
    _log_epoch,
    _over_budget,
    _result,
    _run_paths,
    _seed_everything,
    _set_lr,
    _start_run,
    _training_state,
    _write_rows,
)

__all__ = [
    "evaluate_fusion",
    "extend_fusion",
    "fit_fusion",
    "fit_fusion_whitening",
    "fusion_centre_batches",
    "fusion_latents",
    "fusion_train_config",
    "train_fusion",
]


@torch.no_grad()
def fusion_latents(
    model: FusionModel, windows: FusionWindows, sensors: tuple[str, ...], batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Stage-1 latents (N, latent_dim) of ``sensors`` for every window (eval mode)."""
    was = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sensors}
    for i in range(0, len(windows), batch_size):
        b = windows.tensors(np.arange(i, min(i + batch_size, len(windows))))
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

    As :func:`latentcube.training.fit_whitening`, for the fused embedding: every
    sensor visible, windows without any present sensor left out. The stage-1
    autoencoders are not changed.

    Returns
    -------
    FusionModel
        ``model``, in eval mode.
    """
    model.eval()

    def embeddings(idx: np.ndarray) -> torch.Tensor:
        e = model(windows.tensors(idx), decode=False).embedding
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
    sensors = model.sensors
    tot, n_tot = 0.0, 0
    err = {s: [0.0, 0] for s in sensors}
    for i in range(0, len(windows), batch_size):
        idx = np.arange(i, min(i + batch_size, len(windows)))
        b = windows.tensors(idx)
        vis = None
        if visible is not None:
            vis = torch.tensor([visible.get(s, True) for s in sensors]).expand(len(idx), -1)
        lat = {s: v[idx] for s, v in latents.items()} if latents else None
        out = model(b, visible=vis, latents=lat)
        loss, _ = loss_fn(out, b)
        tot += float(loss) * len(idx)
        n_tot += len(idx)
        for s, (e, n) in centre_errors(out, b, sensors).items():
            err[s][0] += e
            err[s][1] += n
    res = {"val_loss": tot / max(n_tot, 1)}
    for s in sensors:
        res[f"val_centre_mae_{s}"] = err[s][0] / err[s][1] if err[s][1] else float("nan")
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


def train_fusion(
    model: FusionModel,
    train_windows: FusionWindows,
    val_windows: FusionWindows,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "fusion",
    *,
    loss_configs: Mapping[str, LossConfig] | None = None,
    cache_latents: bool = True,
    resume: bool = True,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train the fusion layers (and, in ``finetune`` mode, the autoencoders).

    Parameters
    ----------
    model
        A :class:`FusionModel` built over pretrained autoencoders (its mode
        decides what is trained); it is trained in place.
    train_windows, val_windows
        Windows of every sensor (:func:`~latentcube.data.multisensor.split_fusion_windows`).
    config
        Optimisation settings; the paper's fusion settings differ from stage 1 in
        the plateau schedule (factor 0.3, patience 9, min lr 3.5e-7).
    out_dir
        Folder for ``last.pt``, ``best.pt`` (+ ``.json``) and ``metrics.csv``;
        ``best.pt`` is a complete model bundle.
    loss_configs
        Per-sensor loss weights (default: the sensors' stage-1 weights).
    cache_latents
        Compute the frozen autoencoders' latents once instead of every step.
    resume
        Continue from ``out_dir/last.pt`` if it exists and belongs to the same
        model, configuration and data.
    progress
        Show a progress bar.
    provenance
        Metadata about the training data, stored in the bundles.

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    fcfg = model.config
    _check_windows(train_windows, val_windows)
    for w in (train_windows, val_windows):
        if set(w.sensors) != set(fcfg.sensors):
            raise ModelError(
                f"windows hold sensors {list(w.sensors)}, the model {list(fcfg.sensors)}"
            )
    out = Path(out_dir)
    last, best, metrics_csv = _run_paths(out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    _seed_everything(cfg.seed)
    model.apply_mode()
    loss_cfgs = {s: (loss_configs or {}).get(s) or LossConfig.for_sensor(s) for s in fcfg.sensors}
    loss_fn = FusionLoss(fcfg, loss_cfgs)
    params = model.trainable_parameters()
    # the fused (single-kernel) AdamW: a fusion step is small, so per-tensor
    # optimiser overhead is a visible share of it (benchmarks/bench_fusion.py)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    state = _fresh_state()
    fields = [
        "epoch",
        "step",
        "lr",
        "train_loss",
        *(f"train_loss_{s}" for s in fcfg.sensors),
        "val_loss",
        "val_centre_mae",
        *(f"val_centre_mae_{s}" for s in fcfg.sensors),
        "seconds",
    ]
    identity = {
        "fusion_config": fcfg.model_dump(mode="json"),
        "autoencoders": {
            s: model.autoencoder(s).config.model_dump(mode="json") for s in fcfg.sensors
        },
        "train_config": cfg.model_dump(mode="json", exclude={"max_seconds", "num_threads"}),
        "loss_configs": {s: c.model_dump(mode="json") for s, c in loss_cfgs.items()},
        "n_train": len(train_windows),
        "n_val": len(val_windows),
    }
    rows = _start_run(out, identity, model, opt, state, resume=resume, formats=(FUSION_FORMAT,))
    if state["stopped"]:
        return _result(state, out, best, last, metrics_csv)

    frozen = tuple(s for s in fcfg.sensors if fcfg.is_frozen(s))
    cached_tr: dict[str, torch.Tensor] = {}
    cached_va: dict[str, torch.Tensor] = {}
    if cache_latents and frozen:
        cached_tr = fusion_latents(model, train_windows, frozen)
        cached_va = fusion_latents(model, val_windows, frozen)
    centre_tr: dict[str, SensorBatch] = {}
    if fcfg.objective == "centre" and len(cached_tr) == len(fcfg.sensors):
        # nothing is encoded or decoded beyond the centre: load only the centres
        centre_tr = fusion_centre_batches(train_windows)
    n = len(train_windows)
    start_time = time.perf_counter() - state["seconds"]
    bar_total = math.ceil(n / cfg.batch_size)
    while state["epoch"] < cfg.max_epochs and not state["stopped"]:
        epoch = state["epoch"]
        model.train()
        perm = _epoch_order(cfg.seed, epoch, n)
        sums: dict[str, float] = {}
        seen = 0
        lr = cfg.lr
        bar = tqdm(total=bar_total, desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
        for i in range(0, n, cfg.batch_size):
            lr = _set_lr(opt, cfg, state)
            idx = perm[i : i + cfg.batch_size]
            if centre_tr:
                b = {s: v.take(idx) for s, v in centre_tr.items()}
            else:
                b = train_windows.tensors(idx)
            present = torch.stack([b[s].centre_valid() for s in fcfg.sensors], dim=1)
            visible = drop_sensors(present, fcfg.sensor_dropout)
            lat = {s: v[idx] for s, v in cached_tr.items()} or None
            out_b = model(b, visible=visible, latents=lat)
            loss, parts = loss_fn(out_b, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            state["step"] += 1
            seen += len(idx)
            terms = {"loss": loss, **{f"loss_{s}": parts[f"loss_{s}"] for s in fcfg.sensors}}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", lr=f"{lr:.1e}")
            if _over_budget(cfg, start_time, None):
                state["stopped"] = "time_budget"
                break
        bar.close()
        val = evaluate_fusion(
            model, val_windows, loss_fn, cfg.val_batch_size, latents=cached_va or None
        )
        state["epoch"] = epoch + 1
        score = val["val_centre_mae"]
        improved = _after_epoch(cfg, state, score)
        state["seconds"] = time.perf_counter() - start_time
        row = _epoch_row(state, lr, sums, seen, val)
        rows.append(row)
        _write_rows(metrics_csv, fields, rows)
        if progress:
            _log_epoch(row, score, improved)
        extra = {
            "identity": identity,
            "provenance": dict(provenance or {}),
            "loss_configs": identity["loss_configs"],
            "metrics": {"epoch": state["epoch"], "best_val_centre_mae": state["best"], **val},
        }
        if improved:
            save_fusion_checkpoint(best, model, extra=extra)
        save_fusion_checkpoint(
            last,
            model,
            extra=extra,
            training_state=_training_state(opt, state),
        )
    return _result(state, out, best, last, metrics_csv)


def fusion_train_config(name: str = "quick") -> TrainConfig:
    """``"paper"``: the authors' fusion settings; ``"quick"``: minutes on a laptop CPU."""
    from latentcube.training import train_config_preset

    base = train_config_preset(name)
    if name == "paper":
        return base.model_copy(
            update={"plateau_factor": 0.3, "plateau_patience": 9, "min_lr": 3.5e-7}
        )
    return base


def fit_fusion(
    cubes: Sequence[xr.Dataset],
    autoencoders: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    mode: str = "frozen",
    sensor_dropout: float = 0.0,
    objective: str = "context",
    loss_weights: Mapping[str, float] | None = None,
    config: TrainConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a fused model from stage-1 checkpoints and cubes (``train --stage fusion``).

    Parameters
    ----------
    cubes
        Cubes holding every sensor; split into training and validation as in
        stage 1 (by cube, or by spatial blocks of a single cube).
    autoencoders
        Stage-1 checkpoints per sensor, reference (S2) first. With ``base``,
        only the sensors to add.
    out_dir
        Output folder (``best.pt`` is the model bundle).
    base
        An existing fused bundle to extend with the sensors of ``autoencoders``:
        its autoencoders stay frozen, the new ones and the fusion layers train.
    mode
        ``"frozen"`` or ``"finetune"`` (see :class:`FusionConfig`).
    sensor_dropout, objective, loss_weights
        See :class:`FusionConfig`.
    config
        Optimisation settings (default: ``fusion_train_config("quick")``).
    resume, progress, provenance
        See :func:`train_fusion`.
    """
    from latentcube.bundle import load_checkpoint, load_fusion_checkpoint
    from latentcube.data.multisensor import split_fusion_windows

    cfg = config or fusion_train_config("quick")
    aes: dict[str, ContextAutoencoder] = {}
    for s, path in autoencoders.items():
        aes[s] = load_checkpoint(path, sensor=s)[0]
    extra = {
        "sensor_dropout": sensor_dropout,
        "objective": objective,
        "loss_weights": dict(loss_weights or {}),
    }
    torch.manual_seed(cfg.seed)
    if base is not None:
        base_model, _ = load_fusion_checkpoint(base)
        model = extend_fusion(base_model, aes, mode=mode, seed=cfg.seed, **extra)
    else:
        if not aes:
            raise ModelError("no stage-1 autoencoders given")
        model = FusionModel(FusionConfig.for_autoencoders(aes, mode=mode, **extra), aes)
    ref = model.autoencoder(model.config.reference).config
    bands = {s: model.autoencoder(s).config.bands for s in model.sensors}
    tr, va = split_fusion_windows(cubes, model.sensors, bands, window=ref.window, seed=cfg.seed)
    return train_fusion(
        model,
        tr,
        va,
        cfg,
        out_dir,
        resume=resume,
        progress=progress,
        provenance={
            **dict(provenance or {}),
            "autoencoders": {s: str(p) for s, p in autoencoders.items()},
            "base": str(base) if base else "",
        },
    )
