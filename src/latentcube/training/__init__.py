"""Training: one loop for every model, a task per stage, the recipes and whitening.

* :mod:`~latentcube.training.loop`: :func:`fit` (epochs, checkpoints, exact resume
  after a kill, budgets, early stopping, reduce-on-plateau, DDP, metrics) and the
  :class:`Task` interface;
* :mod:`~latentcube.training.stage1`: :class:`AutoencoderTask` and
  :func:`fit_autoencoder` (preset or YAML -> split -> training);
* :mod:`~latentcube.training.fusion`: :class:`FusionTask`, :func:`fit_fusion` and
  :func:`extend_fusion`;
* :mod:`~latentcube.training.whitening`: :func:`whiten`;
* :mod:`~latentcube.training.config`: :class:`TrainConfig` and its presets;
* :mod:`~latentcube.training.distributed`: the process group (DDP on gloo).
"""

from latentcube.training.config import (
    TrainConfig,
    fusion_train_config,
    train_config_preset,
    train_overrides,
)
from latentcube.training.fusion import FusionTask, extend_fusion, fit_fusion
from latentcube.training.loop import Task, TrainResult, fit
from latentcube.training.stage1 import AutoencoderTask, fit_autoencoder
from latentcube.training.whitening import whiten

__all__ = [
    "AutoencoderTask",
    "FusionTask",
    "Task",
    "TrainConfig",
    "TrainResult",
    "extend_fusion",
    "fit",
    "fit_autoencoder",
    "fit_fusion",
    "fusion_train_config",
    "train_config_preset",
    "train_overrides",
    "whiten",
]
