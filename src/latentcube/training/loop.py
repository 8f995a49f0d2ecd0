"""The training loop, one for every model: epochs, checkpoints, resume, budgets, DDP, metrics.

As in torchgeo's split of ``BaseTask`` and the trainer, a :class:`Task` says what
is trained (the model, its batches, its loss, its validation) and :func:`fit`
says how: AdamW-style optimisation with a per-step linear warm-up,
reduce-on-plateau and early stopping on the validation centre-pixel MAE,
gradient clipping, budgets (epochs, wall time, CPU time of the process), a
progress bar with running losses and one CSV row per epoch.

Checkpoints: after every epoch ``last.pt`` (the model, the optimiser, the loop
state, every process's RNG state and the metric rows) is written atomically
first, then ``best.pt`` when the epoch improved, then ``metrics.csv``;
``last.pt`` is the commit point and the other two are repaired from it when a
kill fell between the writes. The data order of epoch ``e`` is drawn from a
generator seeded with ``(seed, e)``, so a run killed at any moment (SIGKILL
included) resumes from its last finished epoch and ends with the same metrics
as an uninterrupted run.

Safe outputs: the output folder is locked for the run
(:func:`latentcube.io.locked`); a run's identity is its model, training and loss
configuration and a content hash of the arrays it reads, and a resume of
another identity, or a folder holding another run's model files, is refused
unless ``overwrite``. Nothing is deleted when a run starts: the new run's files
replace the old ones only once the first epoch is complete, each file
atomically.

Data-parallel training on several processes (DDP, gloo): see
:mod:`latentcube.training.distributed`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from latentcube.bundle import ModelBundle, read_checkpoint
from latentcube.data.windows import array_digest
from latentcube.errors import ModelError, OutputError
from latentcube.io import check_writable, locked
from latentcube.training.config import BUDGET_FIELDS, TrainConfig
from latentcube.training.distributed import (
    all_gather_objects,
    all_reduce_sums,
    init_from_env,
    rank_and_size,
    settle_group,
    spawn,
)

if TYPE_CHECKING:
    from latentcube.models.autoencoder import ContextAutoencoder
    from latentcube.models.fusion import FusionModel

__all__ = ["Task", "TrainResult", "fit"]

#: The files a run writes into its folder (besides ``.json`` sidecars of the models).
RUN_FILES = ("last.pt", "best.pt", "metrics.csv")


class Samples(Protocol):
    """Samples of a task: a number of windows over arrays."""

    def __len__(self) -> int: ...

    def arrays(self) -> list[np.ndarray]:
        """Every array the samples read."""
        ...


class Task(ABC):
    """What the loop trains: the model, its batches, its loss and its validation.

    A task holds its ``train_windows`` and ``val_windows``. :func:`fit` calls, in
    order: :meth:`identity` and :meth:`data_digest` (to decide whether an earlier
    run resumes), :meth:`setup` (after seeding),
    :meth:`optimizer`, then, after a resume, :meth:`prepare`; per step
    :meth:`training_step`, per epoch :meth:`validate`.
    """

    #: The model saved in checkpoints (set in ``__init__`` or :meth:`setup`).
    model: ContextAutoencoder | FusionModel
    #: The checkpoint format of :attr:`model` (``latentcube.bundle.FORMAT``, ...).
    checkpoint_format: str
    #: Columns of ``metrics.csv``.
    metric_fields: tuple[str, ...]
    #: DDP setting for models with parameters a step may leave unused.
    find_unused_parameters: bool = False

    #: Training and validation samples (``Windows``, ``FusionWindows``).
    train_windows: Samples
    val_windows: Samples

    @property
    def n_train(self) -> int:
        """Number of training samples (windows)."""
        return len(self.train_windows)

    @property
    def n_val(self) -> int:
        """Number of validation samples."""
        return len(self.val_windows)

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes two runs different besides the optimisation settings (JSON types)."""

    def data_digest(self) -> str:
        """A content hash of every array the task reads (training and validation)."""
        return array_digest([*self.train_windows.arrays(), *self.val_windows.arrays()])

    @abstractmethod
    def setup(self, config: TrainConfig, rank: int, world: int) -> None:
        """Build the model and the loss (the loop has seeded the RNGs)."""

    @abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (and the gradient clipping sees)."""

    @abstractmethod
    def optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """The optimiser over :meth:`parameters`."""

    def prepare(self) -> None:  # noqa: B027  (optional hook)
        """Work done once per run after a resume, before the first step (caches)."""

    @abstractmethod
    def training_step(
        self,
        net: torch.nn.Module,
        batch: np.ndarray,
        shard: np.ndarray,
        *,
        config: TrainConfig,
        epoch: int,
        start: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of this process's shard of one global batch, and the terms to log.

        Parameters
        ----------
        net
            The model to call (wrapped by DDP in a process group).
        batch
            Indices of the global batch's samples.
        shard
            Positions in ``batch`` of this process's samples.
        config, epoch, start
            Settings, epoch and the batch's first position in the epoch's order
            (to seed per-batch draws).

        Returns
        -------
        tuple
            The shard's mean loss and ``{"loss": ..., term: ...}``, each a mean
            over the shard's samples.
        """

    @abstractmethod
    def train_keys(self) -> tuple[str, ...]:
        """Terms of :meth:`training_step` summed into the ``train_<key>`` columns."""

    @abstractmethod
    def validate(self, config: TrainConfig) -> dict[str, float]:
        """Validation metrics (``val_loss``, ``val_centre_mae``, ...), the same in every process."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Task-specific metadata of the checkpoints."""
        return {}

    def postfix(self, means: Mapping[str, float]) -> dict[str, str]:
        """Running means shown on the progress bar."""
        return {"loss": f"{means['loss']:.4f}"}


@dataclass
class TrainResult:
    """Outcome of :func:`fit`."""

    best_val: float
    epochs: int
    steps: int
    seconds: float
    out_dir: Path
    checkpoint: Path
    last: Path
    metrics_csv: Path
    stopped: str
    n_train: int = 0
    n_val: int = 0


def fit(
    task: Task,
    config: TrainConfig | None = None,
    out: str | os.PathLike[str] = "model",
    *,
    nproc: int = 1,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``task`` into the folder ``out``.

    Parameters
    ----------
    task
        What to train (:class:`~latentcube.training.stage1.AutoencoderTask`,
        :class:`~latentcube.training.fusion.FusionTask`).
    config
        Optimisation settings (default: the paper's).
    out
        Folder for ``last.pt``, ``best.pt`` (+ ``.json``) and ``metrics.csv``;
        ``best.pt`` is the trained model (:class:`~latentcube.bundle.ModelBundle`).
    nproc
        Data-parallel processes on this machine (DDP on gloo); each uses
        ``cores // nproc`` threads unless the configuration sets ``num_threads``.
        With ``nproc > 1`` the task is pickled to every process and the model
        in memory is not trained: read it from the result's checkpoint. A
        process group set up by a launcher (``torchrun``) is joined instead.
    resume
        Continue from ``out/last.pt`` when it belongs to the same model,
        configuration and data; otherwise start afresh.
    overwrite
        Start afresh even when ``out`` holds another run's model files (they
        are replaced, each once its replacement is complete). Without it such
        a folder is refused, naming the file.
    progress
        Show a progress bar with the running losses.
    provenance
        Metadata about the training data, stored in the checkpoints.

    Returns
    -------
    TrainResult
        Best validation centre MAE, epochs, steps, seconds and paths.

    Raises
    ------
    ModelError
        Empty training or validation windows; ``last.pt`` of another model,
        configuration or data, or unreadable (without ``overwrite``).
    OutputError
        ``out`` in use by another run, not writable, or holding another run's
        files (without ``overwrite``).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    kwargs = {
        "resume": resume,
        "overwrite": overwrite,
        "progress": progress,
        "provenance": provenance,
    }
    if nproc > 1:
        if rank_and_size()[1] > 1:
            raise ValueError("nproc > 1 inside a process group: the launcher sets the processes")
        result: TrainResult = spawn(nproc, fit, task, config, out, **kwargs)
        return result
    own_group = init_from_env()
    try:
        result = _Run(task, config or TrainConfig(), Path(out), **kwargs).run()  # type: ignore[arg-type]
        if own_group:
            settle_group()
        return result
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (third-party code may use the global RNG)
    torch.manual_seed(seed)


def _fresh_state() -> dict[str, Any]:
    """Loop state of a new run (checkpointed in ``last.pt``)."""
    return {
        "epoch": 0,
        "step": 0,
        "lr_scale": 1.0,
        "best": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "plateau_best": math.inf,
        "plateau_bad": 0,
        "seconds": 0.0,
        "cpu_seconds": 0.0,
        "stopped": "",
    }


def _same_identity(a: Any, b: Mapping[str, Any]) -> bool:
    """Whether two run identities agree (budget settings of older identities ignored)."""
    if not isinstance(a, Mapping):
        return False

    def norm(d: Mapping[str, Any]) -> dict[str, Any]:
        tc = {k: v for k, v in dict(d.get("train_config") or {}).items() if k not in BUDGET_FIELDS}
        return {**d, "train_config": tc}

    return norm(a) == norm(b)


class _Run:
    """One call of :func:`fit` in one process."""

    def __init__(
        self,
        task: Task,
        cfg: TrainConfig,
        out: Path,
        *,
        resume: bool,
        overwrite: bool,
        progress: bool,
        provenance: Mapping[str, Any] | None,
    ) -> None:
        self.task, self.cfg, self.out = task, cfg, out
        self.resume, self.overwrite = resume, overwrite
        self.provenance = dict(provenance or {})
        self.rank, self.world = rank_and_size()
        self.progress = progress and self.rank == 0
        self.last, self.best, self.metrics_csv = (out / name for name in RUN_FILES)
        self.state = _fresh_state()
        self.rows: list[dict[str, Any]] = []
        self.run_id = uuid.uuid4().hex
        self.digest = ""
        self.foreign_best = False  # a fresh run over another run's best.pt

    # -- the run -----------------------------------------------------------------------

    def run(self) -> TrainResult:
        task, cfg = self.task, self.cfg
        if task.n_train == 0:
            raise ModelError("no training windows: the cubes have too few valid dates or pixels")
        if task.n_val == 0:
            raise ModelError("no validation windows: enlarge the validation split")
        self.identity = {**task.identity(), "train_config": cfg.identity()}
        with contextlib.ExitStack() as stack:
            plan = self._decide(stack)  # the same decision in every process
            if cfg.num_threads:
                torch.set_num_threads(cfg.num_threads)
            elif self.world > 1:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))
            _seed_everything(cfg.seed)
            task.setup(cfg, self.rank, self.world)
            net: torch.nn.Module = task.model
            if self.world > 1:
                net = torch.nn.parallel.DistributedDataParallel(
                    task.model, find_unused_parameters=task.find_unused_parameters
                )
            opt = task.optimizer(cfg)
            if plan == "resume":
                self._restore(opt)
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
            if not self.state["stopped"]:
                task.prepare()
                self._epochs(net, opt)
        return self._result()

    def _decide(self, stack: contextlib.ExitStack) -> str:
        """``"resume"`` or ``"fresh"``, decided by process 0 and shared; or raise.

        Process 0 checks and locks the folder for as long as ``stack`` is open.
        """
        decision: tuple[str, Exception | None] = ("fresh", None)
        if self.rank == 0:
            try:
                if self.out.exists() and not self.out.is_dir():
                    raise OutputError(f"output {self.out} is a file, not a folder")
                check_writable(self.out)
                stack.enter_context(locked(self.out))
                decision = (self._plan(), None)
            except (ModelError, OutputError) as err:
                decision = ("error", err)
        decision = all_gather_objects(decision)[0]
        if decision[1] is not None:
            raise decision[1]
        return decision[0]

    def _plan(self) -> str:
        """Process 0: whether ``last.pt`` resumes, the folder may be written, or neither."""
        self.digest = self.task.data_digest()
        tail = "train into another folder or pass --overwrite to replace it"
        problem = self._last_problem() if self.last.exists() else None
        if problem == "" and self.resume:
            return "resume"
        if problem and not self.overwrite:
            raise ModelError(f"{problem}; {tail}")
        if problem is None and not self.overwrite and self.out.is_dir():
            others = sorted(p for p in self.out.glob("*.pt") if p.name not in RUN_FILES)
            found = [p for p in (self.best, self.metrics_csv, *others) if p.exists()]
            if found:
                raise OutputError(
                    f"{found[0]} belongs to another run (no last.pt of this run to resume "
                    f"beside it); {tail}"
                )
        # a fresh run: the old files stay until the new ones replace them after epoch 1
        self.foreign_best = self.best.exists()
        return "fresh"

    def _last_problem(self) -> str:
        """Why ``last.pt`` cannot be resumed by this run (``""``: it can)."""
        try:
            ck = read_checkpoint(self.last, (self.task.checkpoint_format,))
        except ModelError as err:
            return str(err)
        meta = ck["meta"]
        if ck.get("training_state") is None or not _same_identity(
            meta.get("identity"), self.identity
        ):
            return f"{self.last} belongs to another model, training configuration or data"
        stored = meta.get("data", {}).get("sha256")
        if stored is not None and stored != self.digest:
            return (
                f"{self.last} was trained on other data (the arrays it read hash to "
                f"{stored[:12]}, these to {self.digest[:12]}): a cube's contents changed "
                "or another cube was given"
            )
        return ""

    def _restore(self, opt: torch.optim.Optimizer) -> None:
        """Continue from ``last.pt``: model, optimiser, loop state, RNG, metric rows."""
        ck = read_checkpoint(self.last, (self.task.checkpoint_format,))
        ts = ck["training_state"]
        self.task.model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ts["optimizer"])
        self.state.update({k: ts["state"][k] for k in self.state if k in ts["state"]})
        rngs = ts.get("torch_rng_ranks", [ts["torch_rng"]])
        torch.set_rng_state(rngs[self.rank] if len(rngs) == self.world else ts["torch_rng"])
        self.run_id = ck["meta"].get("run_id") or self.run_id
        if "rows" in ts:
            self.rows = list(ts["rows"])
        elif self.metrics_csv.exists():  # a run started by an earlier version
            with self.metrics_csv.open() as fh:
                self.rows = [
                    r for r in csv.DictReader(fh) if int(r["epoch"]) <= self.state["epoch"]
                ]
        if self.rank == 0 and "rows" in ts:
            self._repair(ck)

    def _repair(self, ck: Mapping[str, Any]) -> None:
        """Redo the writes after ``last.pt`` that a kill cut short (process 0)."""
        epoch = self.state["epoch"]
        if self.state["best_epoch"] == epoch > 0:
            try:
                meta = read_checkpoint(self.best, (ck["meta"]["format"],))["meta"]
            except ModelError:  # missing or cut short
                meta = {}
            if (meta.get("run_id"), meta.get("metrics", {}).get("epoch")) != (self.run_id, epoch):
                ModelBundle(self.task.model).save(self.best, extra=ck["meta"])
        if not self.metrics_csv.exists() or len(_read_rows(self.metrics_csv)) != len(self.rows):
            _write_rows(self.metrics_csv, self.task.metric_fields, self.rows)

    def _epochs(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        from tqdm.auto import tqdm

        task, cfg, state = self.task, self.cfg, self.state
        n, world, rank = task.n_train, self.world, self.rank
        start_time = time.perf_counter() - state["seconds"]
        start_cpu = time.process_time() - state["cpu_seconds"]
        bar_total = math.ceil(n / cfg.batch_size)
        params = task.parameters()
        while state["epoch"] < cfg.max_epochs and not state["stopped"]:
            epoch = state["epoch"]
            net.train()
            perm = _epoch_order(cfg.seed, epoch, n)
            sums: dict[str, float] = {}
            seen = 0
            lr = cfg.lr
            bar = tqdm(
                total=bar_total, desc=f"epoch {epoch + 1}", disable=not self.progress, leave=False
            )
            for i in range(0, n, cfg.batch_size):
                lr = _set_lr(opt, cfg, state)
                # the global batch; in a process group each process takes one contiguous shard
                batch = perm[i : i + cfg.batch_size]
                shard = np.array_split(np.arange(len(batch)), world)[rank]
                loss, terms = task.training_step(
                    net, batch, shard, config=cfg, epoch=epoch, start=i
                )
                opt.zero_grad(set_to_none=True)
                # DDP averages gradients over processes: weight each shard by its share
                (loss * (len(shard) * world / len(batch))).backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                state["step"] += 1
                seen += len(shard)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(shard)
                bar.update(1)
                bar.set_postfix(
                    **task.postfix({k: v / seen for k, v in sums.items()}), lr=f"{lr:.1e}"
                )
                if _over_budget(cfg, start_time, start_cpu, world):
                    state["stopped"] = "time_budget"
                    break
            bar.close()
            keys = task.train_keys()
            *tot, seen_all = all_reduce_sums([*(sums.get(k, 0.0) for k in keys), seen])
            sums, seen = dict(zip(keys, tot, strict=True)), int(seen_all)
            val = task.validate(cfg)
            state["epoch"] = epoch + 1
            score = val["val_centre_mae"]
            improved = _after_epoch(cfg, state, score)
            state["seconds"] = time.perf_counter() - start_time
            state["cpu_seconds"] = time.process_time() - start_cpu
            row = _epoch_row(state, lr, sums, seen, val)
            self.rows.append(row)
            rngs = all_gather_objects(torch.get_rng_state())
            if rank != 0:
                continue
            if self.progress:
                _log_epoch(row, score, improved)
            self._commit(opt, val, improved, rngs)

    def _commit(
        self,
        opt: torch.optim.Optimizer,
        val: Mapping[str, float],
        improved: bool,
        rngs: Sequence[torch.Tensor],
    ) -> None:
        """Write the epoch: ``last.pt`` (the commit point), ``best.pt``, ``metrics.csv``."""
        state = self.state
        extra = {
            "identity": self.identity,
            "provenance": self.provenance,
            "train_config": self.cfg.model_dump(mode="json"),
            **self.task.checkpoint_extra(),
            "processes": self.world,
            "metrics": {"epoch": state["epoch"], "best_val_centre_mae": state["best"], **val},
            "data": {"sha256": self.digest},
            "run_id": self.run_id,
        }
        bundle = ModelBundle(self.task.model)
        bundle.save(
            self.last,
            extra=extra,
            training_state={
                "optimizer": opt.state_dict(),
                "state": dict(state),
                "torch_rng": torch.get_rng_state(),
                "torch_rng_ranks": list(rngs),
                "rows": list(self.rows),
            },
        )
        if improved:
            bundle.save(self.best, extra=extra)
        elif self.foreign_best:  # the new run has no best model yet: drop the old one
            for p in (self.best, self.best.with_suffix(".json")):
                p.unlink(missing_ok=True)
        self.foreign_best = False
        _write_rows(self.metrics_csv, self.task.metric_fields, self.rows)

    def _result(self) -> TrainResult:
        state = self.state
        return TrainResult(
            best_val=float(state["best"]),
            epochs=int(state["epoch"]),
            steps=int(state["step"]),
            seconds=float(state["seconds"]),
            out_dir=self.out,
            checkpoint=self.best,
            last=self.last,
            metrics_csv=self.metrics_csv,
            stopped=str(state["stopped"]),
            n_train=self.task.n_train,
            n_val=self.task.n_val,
        )


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


def _over_budget(cfg: TrainConfig, start_time: float, start_cpu: float, world: int = 1) -> bool:
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


def _after_epoch(cfg: TrainConfig, state: dict[str, Any], score: float) -> bool:
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


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, fields: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Write the metrics CSV atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    os.replace(tmp, path)
