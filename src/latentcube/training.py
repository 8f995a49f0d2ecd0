"""The stage-1 training loop: plain PyTorch, seeded, resumable, with validated checkpoints.

AdamW with a per-step linear warm-up, reduce-on-plateau and early stopping on
the validation centre-pixel MAE, gradient clipping, a progress bar with running
losses and one CSV row per epoch. ``last.pt`` (with the optimiser, schedule and
RNG state) and ``best.pt`` are written atomically after every epoch, so a run
killed at any moment restarts from its last finished epoch and ends with the
same metrics as an uninterrupted run of the same seed.

Gap filling (beyond the paper): with ``hide_centre_prob``/``hide_prob`` > 0 the
centre pixel-date (and random other valid entries) are hidden from the model's
input but kept as targets of the loss, so the model learns to reconstruct a
cloudy centre from its context. Both are 0 in every preset.

Data-parallel training on several processes (DDP, gloo): see
:mod:`latentcube.distributed`.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from latentcube.bundle import FORMAT, read_checkpoint, save_checkpoint
from latentcube.data.windows import Windows, hide_entries
from latentcube.distributed import (
    all_gather_objects,
    all_reduce_sums,
    init_from_env,
    rank_and_size,
    settle_group,
)
from latentcube.errors import ModelError
from latentcube.models.autoencoder import ContextAutoencoder, build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.losses import ContextLoss, centre_abs_error
from latentcube.models.whitening import fit_on_outputs
from latentcube.sensors import SENSORS

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit_whitening",
    "train",
    "train_config_preset",
]

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


class TrainConfig(BaseModel):
    """Optimisation settings; defaults are the paper's (spec section 3.5).

    Attributes
    ----------
    max_seconds, max_cpu_seconds
        Stop after this much wall time, or CPU time of the process (all threads;
        a fair budget on a shared machine). Neither is part of a run's identity.
    hide_centre_prob, hide_prob
        Gap-filling training (beyond the paper; 0 = off): probability of hiding
        a window's centre pixel-date, and any other valid pixel-date, from the
        input while keeping it in the loss.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = 1.5e-4
    warmup_steps: int = Field(default=30_000, ge=0)
    warmup_start_factor: float = 1e-3
    plateau_factor: float = 0.35
    plateau_patience: int = 5
    min_lr: float = 1.5e-6
    batch_size: int = Field(default=16, ge=1)
    val_batch_size: int = 256
    max_epochs: int = Field(default=500, ge=1)
    max_seconds: float | None = None
    max_cpu_seconds: float | None = None
    early_stopping_patience: int = 16
    early_stopping_min_delta: float = 0.0
    grad_clip: float = 1.0
    seed: int = 42
    num_threads: int | None = None
    hide_centre_prob: float = Field(default=0.0, ge=0, le=1)
    hide_prob: float = Field(default=0.0, ge=0, lt=1)


def train_config_preset(name: str) -> TrainConfig:
    """``"paper"`` (the authors' settings) or ``"quick"`` (minutes on a laptop CPU)."""
    if name == "paper":
        return TrainConfig()
    if name == "quick":
        return TrainConfig(
            lr=2e-3,
            warmup_steps=100,
            batch_size=32,
            plateau_patience=3,
            early_stopping_patience=8,
            max_epochs=200,
            min_lr=1e-5,
        )
    raise ValueError(f"unknown preset {name!r}; expected 'paper' or 'quick'")


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    best_val: float
    epochs: int
    steps: int
    seconds: float
    out_dir: Path
    checkpoint: Path
    last: Path
    metrics_csv: Path
    stopped: str


@torch.no_grad()
def evaluate(
    model: ContextAutoencoder, windows: Windows, loss_fn: ContextLoss, batch_size: int = 256
) -> dict[str, float]:
    """Validation loss and centre-pixel MAE of ``model`` on ``windows``.

    In a process group each process evaluates its share of the windows and the
    sums are all-reduced, so all processes return the same figures.
    """
    model.eval()
    rank, size = rank_and_size()
    mine = np.array_split(np.arange(len(windows)), size)[rank]
    tot_loss, n_loss, err, cnt = 0.0, 0, 0.0, 0
    for i in range(0, len(mine), batch_size):
        x, m, g = (torch.from_numpy(a) for a in windows.batch(mine[i : i + batch_size]))
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

    def latents(idx: np.ndarray) -> torch.Tensor:
        return model.encode(*(torch.from_numpy(a) for a in windows.batch(idx)))

    fit_on_outputs(
        model.whitening,
        len(windows),
        latents,
        max_windows=max_windows,
        seed=seed,
        batch_size=batch_size,
    )
    return model


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (third-party code may use the global RNG)
    torch.manual_seed(seed)


def train(
    model_config: AutoencoderConfig,
    train_windows: Windows,
    val_windows: Windows,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "model",
    *,
    loss_config: LossConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a stage-1 autoencoder.

    Parameters
    ----------
    model_config
        The model to build.
    train_windows, val_windows
        Context windows (split by cube or spatial block beforehand).
    config
        Optimisation settings (default: the paper's).
    out_dir
        Folder for ``last.pt``, ``best.pt`` (+ ``.json``) and ``metrics.csv``.
    loss_config
        Loss weights (default: the sensor's weights from the paper).
    resume
        Continue from ``out_dir/last.pt`` if it exists (it must belong to the
        same model and training configuration); otherwise start afresh.
    progress
        Show a progress bar with the running losses.
    provenance
        Metadata about the training data, stored in the checkpoints.

    Returns
    -------
    TrainResult
        Best validation centre MAE, epochs, steps, seconds and paths.
    """
    own_group = init_from_env()
    try:
        result = _train(
            model_config,
            train_windows,
            val_windows,
            config or TrainConfig(),
            Path(out_dir),
            loss_config=loss_config,
            resume=resume,
            progress=progress,
            provenance=provenance,
        )
        if own_group:
            settle_group()
        return result
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _train(
    model_config: AutoencoderConfig,
    train_windows: Windows,
    val_windows: Windows,
    cfg: TrainConfig,
    out: Path,
    *,
    loss_config: LossConfig | None,
    resume: bool,
    progress: bool,
    provenance: Mapping[str, Any] | None,
) -> TrainResult:
    from tqdm.auto import tqdm

    rank, world = rank_and_size()
    progress = progress and rank == 0
    _check_windows(train_windows, val_windows)
    last, best, metrics_csv = _run_paths(out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _seed_everything(cfg.seed)
    model = build_autoencoder(model_config)
    net: torch.nn.Module = model
    if world > 1:
        # same initial weights everywhere (DDP also broadcasts them); own dropout stream
        torch.manual_seed(cfg.seed * 1000 + rank)
        net = torch.nn.parallel.DistributedDataParallel(model)
    default_loss = LossConfig.for_sensor(model_config.sensor)
    loss_fn = ContextLoss(loss_config or default_loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {**_fresh_state(), "cpu_seconds": 0.0}
    identity = {
        "model_config": model_config.model_dump(mode="json"),
        "train_config": cfg.model_dump(
            mode="json", exclude={"max_seconds", "max_cpu_seconds", "num_threads"}
        ),
        "n_train": len(train_windows),
        "n_val": len(val_windows),
    }
    if loss_fn.config != default_loss:  # the sensor's default loss keeps older identities
        identity["loss_config"] = loss_fn.config.model_dump(mode="json")
    rows = _start_run(
        out, identity, model, opt, state, resume=resume, formats=(FORMAT,), rank=rank, world=world
    )
    if state["stopped"]:
        return _result(state, out, best, last, metrics_csv)

    n = len(train_windows)
    start_time = time.perf_counter() - state["seconds"]
    start_cpu = time.process_time() - state["cpu_seconds"]
    bar_total = math.ceil(n / cfg.batch_size)
    while state["epoch"] < cfg.max_epochs and not state["stopped"]:
        epoch = state["epoch"]
        net.train()
        perm = _epoch_order(cfg.seed, epoch, n)
        sums: dict[str, float] = {}
        seen = 0
        gap_filling = cfg.hide_centre_prob > 0 or cfg.hide_prob > 0
        bar = tqdm(total=bar_total, desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
        for i in range(0, n, cfg.batch_size):
            lr = _set_lr(opt, cfg, state)
            # the global batch; in a process group each process takes one contiguous shard
            batch = perm[i : i + cfg.batch_size]
            shards = np.array_split(np.arange(len(batch)), world)
            xa, ma, ga = train_windows.batch(batch[shards[rank]])
            x, m, g = (torch.from_numpy(a) for a in (xa, ma, ga))
            m_in = m
            if gap_filling:
                rng = np.random.default_rng([cfg.seed, epoch, i, 1])
                shape = (len(batch), *m.shape[1:])  # drawn for the global batch
                hidden = hide_entries(
                    np.ones(shape, bool), rng, cfg.hide_centre_prob, cfg.hide_prob
                )
                m_in = m & ~torch.from_numpy(hidden[shards[rank]])
            recon, z = net(x, m_in, g)
            loss, parts = loss_fn(recon, x, m, latent=z)
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over processes: weight each shard by its share
            (loss * (len(x) * world / len(batch))).backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            state["step"] += 1
            seen += len(x)
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
            bar.update(1)
            bar.set_postfix(
                loss=f"{sums['loss'] / seen:.4f}",
                centre=f"{sums['center'] / seen:.4f}",
                lr=f"{lr:.1e}",
            )
            if _over_budget(cfg, start_time, start_cpu, world):
                state["stopped"] = "time_budget"
                break
        bar.close()
        keys: tuple[str, ...] = ("loss", "mae", "sam", "ssim", "center")
        if loss_fn.config.lambda_decorrelation > 0:
            keys += ("decorrelation",)  # blank in metrics.csv when the term is off
        *tot, seen_all = all_reduce_sums([*(sums.get(k, 0.0) for k in keys), seen])
        sums, seen = dict(zip(keys, tot, strict=True)), int(seen_all)
        val = evaluate(model, val_windows, loss_fn, cfg.val_batch_size)
        state["epoch"] = epoch + 1
        score = val["val_centre_mae"]
        improved = _after_epoch(cfg, state, score)
        state["seconds"] = time.perf_counter() - start_time
        state["cpu_seconds"] = time.process_time() - start_cpu
        row = _epoch_row(state, lr, sums, seen, val)
        rows.append(row)
        rngs = all_gather_objects(torch.get_rng_state())
        if rank != 0:
            continue
        _write_rows(metrics_csv, METRIC_FIELDS, rows)
        if progress:
            _log_epoch(row, score, improved)
        extra = {
            "identity": identity,
            "provenance": dict(provenance or {}),
            "train_config": cfg.model_dump(mode="json"),
            "loss_config": loss_fn.config.model_dump(mode="json"),
            "processes": world,
            "metrics": {"epoch": state["epoch"], "best_val_centre_mae": state["best"], **val},
            "normalisation": {
                "sensor": model_config.sensor,
                "bands": list(model_config.bands),
                "values": SENSORS[model_config.sensor].units,
                "value_range": list(SENSORS[model_config.sensor].value_range),
                "masked_inputs": "filled by the model; the validity mask is an input",
            },
        }
        if improved:
            save_checkpoint(best, model, extra=extra)
        save_checkpoint(
            last,
            model,
            extra=extra,
            training_state={**_training_state(opt, state), "torch_rng_ranks": rngs},
        )
    return _result(state, out, best, last, metrics_csv)


# Pieces of "the loop" shared by stage 1 (:func:`train`) and stage 2
# (:func:`latentcube.fusion_training.train_fusion`).


def _check_windows(train_windows: Sized, val_windows: Sized) -> None:
    """Refuse empty training or validation sets."""
    if len(train_windows) == 0:
        raise ModelError("no training windows: the cubes have too few valid dates or pixels")
    if len(val_windows) == 0:
        raise ModelError("no validation windows: enlarge the validation split")


def _run_paths(out: Path) -> tuple[Path, Path, Path]:
    """Create ``out``; return its ``last.pt``, ``best.pt`` and ``metrics.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    return out / "last.pt", out / "best.pt", out / "metrics.csv"


def _fresh_state() -> dict[str, Any]:
    """Loop state of a new run (checkpointed in ``last.pt``)."""
    return {
        "epoch": 0,
        "step": 0,
        "lr_scale": 1.0,
        "best": math.inf,
        "bad_epochs": 0,
        "plateau_best": math.inf,
        "plateau_bad": 0,
        "seconds": 0.0,
        "stopped": "",
    }


def _start_run(
    out: Path,
    identity: Mapping[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    resume: bool,
    formats: Sequence[str],
    rank: int = 0,
    world: int = 1,
) -> list[dict[str, Any]]:
    """Resume from ``out/last.pt`` (in place) or clear ``out``; return the metric rows so far.

    With ``resume`` and an existing ``last.pt`` of the same ``identity``, the
    model, optimiser, loop ``state`` and torch RNG (this process's) are restored
    and the rows of ``metrics.csv`` up to the checkpointed epoch are returned;
    otherwise rank 0 deletes the run's files.
    """
    last, best, metrics_csv = out / "last.pt", out / "best.pt", out / "metrics.csv"
    if resume and last.exists():
        ck = read_checkpoint(last, formats)
        ts = ck.get("training_state")
        if ts is None or ck["meta"].get("identity") != identity:
            raise ModelError(
                f"{last} belongs to another model, training configuration or data; "
                "use another out_dir or resume=False"
            )
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ts["optimizer"])
        state.update({k: ts["state"][k] for k in state if k in ts["state"]})
        rngs = ts.get("torch_rng_ranks", [ts["torch_rng"]])
        torch.set_rng_state(rngs[rank] if len(rngs) == world else ts["torch_rng"])
        if metrics_csv.exists():
            with metrics_csv.open() as fh:
                return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= state["epoch"]]
    elif rank == 0:
        for p in (last, best, metrics_csv):
            if p.exists():
                p.unlink()
    return []


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The seeded order of the ``n`` training windows in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _lr(cfg: TrainConfig, state: Mapping[str, Any]) -> float:
    """Learning rate of the next step: plateau scale, floor, linear warm-up."""
    warm = min(
        1.0,
        cfg.warmup_start_factor
        + (1 - cfg.warmup_start_factor) * state["step"] / max(cfg.warmup_steps, 1),
    )
    return float(max(cfg.lr * state["lr_scale"], cfg.min_lr) * warm)


def _set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, state: Mapping[str, Any]) -> float:
    """Set (and return) the learning rate of the next step."""
    lr = _lr(cfg, state)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def _over_budget(
    cfg: TrainConfig, start_time: float, start_cpu: float | None, world: int = 1
) -> bool:
    """Whether the wall-time (or, given ``start_cpu``, the CPU-time) budget is spent.

    In a process group every process gets the same answer, so all stop at the same step.
    """
    use_cpu = start_cpu is not None and cfg.max_cpu_seconds is not None
    if cfg.max_seconds is None and not use_cpu:
        return False
    over = (cfg.max_seconds is not None and time.perf_counter() - start_time > cfg.max_seconds) or (
        use_cpu and time.process_time() - start_cpu > cfg.max_cpu_seconds  # type: ignore[operator]
    )
    if world > 1:
        over = all_reduce_sums([float(over)])[0] > 0
    return bool(over)


def _after_epoch(cfg: TrainConfig, state: dict[str, Any], score: float) -> bool:
    """Early-stopping and plateau bookkeeping after an epoch; True if ``score`` improved."""
    improved = score < state["best"] - cfg.early_stopping_min_delta
    if improved:
        state["best"], state["bad_epochs"] = score, 0
    else:
        state["bad_epochs"] += 1
        if state["bad_epochs"] >= cfg.early_stopping_patience:
            state["stopped"] = state["stopped"] or "early_stopping"
    if score < state["plateau_best"] - 1.5e-6:
        state["plateau_best"], state["plateau_bad"] = score, 0
    else:
        state["plateau_bad"] += 1
        if state["plateau_bad"] > cfg.plateau_patience:
            state["lr_scale"] *= cfg.plateau_factor
            state["plateau_bad"] = 0
    if state["epoch"] >= cfg.max_epochs:
        state["stopped"] = state["stopped"] or "max_epochs"
    return bool(improved)


def _epoch_row(
    state: Mapping[str, Any],
    lr: float,
    sums: Mapping[str, float],
    seen: int,
    val: Mapping[str, float],
) -> dict[str, Any]:
    """The metrics row of a finished epoch (training means of ``sums`` as ``train_<key>``)."""
    return {
        "epoch": state["epoch"],
        "step": state["step"],
        "lr": lr,
        **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
        **val,
        "seconds": round(state["seconds"], 3),
    }


def _log_epoch(row: Mapping[str, Any], score: float, improved: bool) -> None:
    """One progress line per epoch."""
    from tqdm.auto import tqdm

    tqdm.write(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
        f"val centre MAE {score:.4f}{' *' if improved else ''}"
    )


def _training_state(opt: torch.optim.Optimizer, state: Mapping[str, Any]) -> dict[str, Any]:
    """What ``last.pt`` needs beyond the weights to resume exactly."""
    return {
        "optimizer": opt.state_dict(),
        "state": dict(state),
        "torch_rng": torch.get_rng_state(),
    }


def _write_rows(path: Path, fields: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Write the metrics CSV atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    os.replace(tmp, path)


def _result(
    state: Mapping[str, Any], out: Path, best: Path, last: Path, csv_path: Path
) -> TrainResult:
    return TrainResult(
        best_val=float(state["best"]),
        epochs=int(state["epoch"]),
        steps=int(state["step"]),
        seconds=float(state["seconds"]),
        out_dir=out,
        checkpoint=best,
        last=last,
        metrics_csv=csv_path,
        stopped=str(state["stopped"]),
    )
