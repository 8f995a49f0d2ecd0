"""The schedule of a training run: learning rate, budgets, early stopping, plateaus.

Pure functions of the settings and the loop state (checkpointed in ``last.pt``),
so a resumed run takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from latentcube.training.config import TrainConfig
from latentcube.training.distributed import all_reduce_sums

__all__ = ["after_epoch", "lr_at", "over_budget", "set_lr"]


def lr_at(cfg: TrainConfig, state: Mapping[str, Any]) -> float:
    """Learning rate of the next step: plateau scale, floor, linear warm-up."""
    warm = min(
        1.0,
        cfg.warmup_start_factor
        + (1 - cfg.warmup_start_factor) * state["step"] / max(cfg.warmup_steps, 1),
    )
    return float(max(cfg.lr * state["lr_scale"], cfg.min_lr) * warm)


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, state: Mapping[str, Any]) -> float:
    """Set (and return) the learning rate of the next step."""
    lr = lr_at(cfg, state)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def over_budget(cfg: TrainConfig, start_time: float, start_cpu: float, world: int = 1) -> bool:
    """Whether the wall-time or the CPU-time budget is spent.

    In a process group every process gets the same answer, so all stop at the same step.
    """
    if cfg.max_seconds is None and cfg.max_cpu_seconds is None:
        return False
    over = (cfg.max_seconds is not None and time.perf_counter() - start_time > cfg.max_seconds) or (
        cfg.max_cpu_seconds is not None and time.process_time() - start_cpu > cfg.max_cpu_seconds
    )
    if world > 1:
        over = all_reduce_sums([float(over)])[0] > 0
    return bool(over)


def after_epoch(cfg: TrainConfig, state: dict[str, Any], score: float) -> bool:
    """Early-stopping and plateau bookkeeping after an epoch; True if ``score`` improved."""
    improved = score < state["best"] - cfg.early_stopping_min_delta
    if improved:
        state["best"], state["bad_epochs"], state["best_epoch"] = score, 0, state["epoch"]
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
