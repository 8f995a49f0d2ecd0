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

Devices and precision: the model and every batch live on ``device`` (CPU, a
CUDA GPU, MPS); the training forward runs under
:func:`latentcube.devices.autocast` (``"bf16"``, or ``"16-mixed"`` with the
gradient scaler of :func:`latentcube.devices.grad_scaler`); checkpoints are
written from CPU tensors and read with ``map_location="cpu"``, so a model trained
on a GPU resumes, embeds and evaluates on a CPU unchanged. Neither is part of a
run's identity: a run may resume on another device or in another precision.

Data: the epoch's batches are read by :mod:`latentcube.training.feed`, in this
process or in ``DataLoader`` workers (the same steps either way); the time the
loop is blocked on its data is measured per epoch (``data_seconds`` of the
``train_seconds`` of its steps, and their fraction ``data_wait``, in
``metrics.csv`` and the progress line).

Data-parallel training on several processes (DDP: nccl on GPUs, gloo
otherwise): see :mod:`latentcube.training.distributed`.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from latentcube.bundle import ModelBundle, read_checkpoint
from latentcube.data.windows import array_digest
from latentcube.devices import DeviceError, autocast, check_precision, grad_scaler, resolve_device
from latentcube.errors import ModelError, OutputError
from latentcube.io import check_writable, locked
from latentcube.training import feed
from latentcube.training.config import BUDGET_FIELDS, TrainConfig
from latentcube.training.distributed import (
    all_gather_objects,
    all_reduce_sums,
    init_from_env,
    process_device,
    rank_and_size,
    settle_group,
    spawn,
)
from latentcube.training.schedule import after_epoch, over_budget, set_lr

if TYPE_CHECKING:
    from latentcube.models.autoencoder import ContextAutoencoder
    from latentcube.models.fusion import FusionModel

__all__ = ["Task", "TrainResult", "fit"]

#: The files a run writes into its folder (besides ``.json`` sidecars of the models).
RUN_FILES = ("last.pt", "best.pt", "metrics.csv")
#: Columns the loop adds to every task's ``metrics.csv``: seconds of training steps in
#: the epoch (validation excluded), seconds blocked on the data loader among them, and
#: their fraction (means over the processes).
LOOP_FIELDS = ("train_seconds", "data_seconds", "data_wait")


class Samples(Protocol):
    """Samples of a task: a number of windows (over arrays in memory, or streamed)."""

    def __len__(self) -> int: ...


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

    #: The device the loop trains on (set by the loop before :meth:`setup`).
    device: torch.device = torch.device("cpu")

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
        """A content hash of every array the task reads (training and validation).

        Windows streamed from stores (no ``arrays``) are identified by their
        index: each store's fingerprint (metadata, sizes and times of the
        validity and time files) and every window's cube, dates and position.
        """
        return array_digest(
            [*feed.source_arrays(self.train_windows), *feed.source_arrays(self.val_windows)]
        )

    def batch_reader(self) -> Callable[[np.ndarray], Any]:
        """``read(indices)``: a training step's data of those windows, as CPU tensors.

        Called once per epoch after :meth:`prepare`; the result is sent to the
        loader workers, so it must be picklable and must not hold the model
        (default: ``train_windows.batch`` as tensors).
        """
        return feed.TensorBatches(self.train_windows)

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
        data: Any,
        batch: np.ndarray,
        shard: np.ndarray,
        *,
        config: TrainConfig,
        epoch: int,
        start: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of this process's shard of one global batch, and the terms to log.

        Runs under the loop's autocast; the loop does the backward pass.

        Parameters
        ----------
        net
            The model to call (wrapped by DDP in a process group), on :attr:`device`.
        data
            What :meth:`batch_reader` returned for ``batch[shard]``, on :attr:`device`.
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
    device: str = "cpu"
    precision: str = "32"
    data_wait: float = float("nan")


def fit(
    task: Task,
    config: TrainConfig | None = None,
    out: str | os.PathLike[str] = "model",
    *,
    nproc: int = 1,
    device: str | torch.device | None = "auto",
    precision: str = "32",
    workers: int = 0,
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
    device
        ``"auto"`` (a CUDA GPU, else MPS, else the CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"`` (:func:`latentcube.devices.resolve_device`); in
        a process group every process takes ``cuda:LOCAL_RANK`` and the group
        uses nccl (gloo off CUDA).
    precision
        ``"32"``, ``"bf16"`` (autocast) or ``"16-mixed"`` (fp16 autocast with a
        gradient scaler; CUDA only) for the training forward; validation runs
        in float32.
    workers
        ``DataLoader`` worker processes that read the batches ahead (0: read in
        this process). The steps are the same for any number.
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
    DeviceError
        The device or the precision is not available here (before anything
        is read or written).
    OutputError
        ``out`` in use by another run, not writable, or holding another run's
        files (without ``overwrite``).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    kwargs: dict[str, Any] = {
        "resume": resume,
        "overwrite": overwrite,
        "progress": progress,
        "provenance": provenance,
        "workers": workers,
        "precision": precision,
    }
    if nproc > 1:
        if rank_and_size()[1] > 1:
            raise ValueError("nproc > 1 inside a process group: the launcher sets the processes")
        first = resolve_device(device)  # a device or precision error before any process starts
        check_precision(precision, first)
        if first.type == "cuda" and torch.cuda.device_count() < nproc:
            raise DeviceError(
                f"{nproc} processes need {nproc} CUDA GPUs, {torch.cuda.device_count()} visible"
            )
        spec = str(device) if isinstance(device, torch.device) else device
        result: TrainResult = spawn(nproc, fit, task, config, out, device=spec, **kwargs)
        return result
    dev = process_device(device)
    check_precision(precision, dev)
    own_group = init_from_env(dev)
    try:
        result = _Run(task, config or TrainConfig(), Path(out), device=dev, **kwargs).run()
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
        device: torch.device,
        precision: str,
        workers: int,
    ) -> None:
        self.task, self.cfg, self.out = task, cfg, out
        self.device, self.precision, self.workers = device, precision, workers
        self.scaler = grad_scaler(device, precision)
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
            task.device = self.device
            task.setup(cfg, self.rank, self.world)  # built on the CPU: the same weights anywhere
            task.model.to(self.device)
            net: torch.nn.Module = task.model
            if self.world > 1:
                net = torch.nn.parallel.DistributedDataParallel(
                    task.model,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=task.find_unused_parameters,
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
        cuda_rngs = ts.get("cuda_rng_ranks") or []
        if self.device.type == "cuda" and len(cuda_rngs) == self.world:
            torch.cuda.set_rng_state(cuda_rngs[self.rank], self.device)
        if ts.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ts["scaler"])
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
            _write_rows(self.metrics_csv, self.fields, self.rows)

    def _epochs(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        from tqdm.auto import tqdm

        task, cfg, state = self.task, self.cfg, self.state
        n, world, rank = task.n_train, self.world, self.rank
        device, scaler = self.device, self.scaler
        start_time = time.perf_counter() - state["seconds"]
        start_cpu = time.process_time() - state["cpu_seconds"]
        bar_total = math.ceil(n / cfg.batch_size)
        params = task.parameters()
        clock = feed.DataClock()
        while state["epoch"] < cfg.max_epochs and not state["stopped"]:
            epoch = state["epoch"]
            net.train()
            stream = feed.StepStream(
                task.train_windows,
                task.batch_reader(),
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                epoch=epoch,
                rank=rank,
                world=world,
            )
            steps = feed.steps(stream, workers=self.workers, pin_memory=device.type == "cuda")
            sums: dict[str, float] = {}
            seen = 0
            lr = cfg.lr
            bar = tqdm(
                total=bar_total, desc=f"epoch {epoch + 1}", disable=not self.progress, leave=False
            )
            clock.start()
            while (step := clock.next(steps, device)) is not None:
                lr = set_lr(opt, cfg, state)
                # the global batch; in a process group each process has one contiguous shard
                batch, shard = step.batch, step.shard
                with autocast(device, self.precision):
                    loss, terms = task.training_step(
                        net, step.data, batch, shard, config=cfg, epoch=epoch, start=step.start
                    )
                opt.zero_grad(set_to_none=True)
                # DDP averages gradients over processes: weight each shard by its share
                scaler.scale(loss * (len(shard) * world / len(batch))).backward()
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                state["step"] += 1
                seen += len(shard)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(shard)
                bar.update(1)
                bar.set_postfix(
                    **task.postfix({k: v / seen for k, v in sums.items()}), lr=f"{lr:.1e}"
                )
                if over_budget(cfg, start_time, start_cpu, world):
                    state["stopped"] = "time_budget"
                    break
            steps.close()  # a loader's workers end here, also after a budget stop
            bar.close()
            keys = task.train_keys()
            *tot, seen_all, waited, busy = all_reduce_sums(
                [*(sums.get(k, 0.0) for k in keys), seen, clock.waited, clock.elapsed()]
            )
            sums, seen = dict(zip(keys, tot, strict=True)), int(seen_all)
            val = task.validate(cfg)
            state["epoch"] = epoch + 1
            score = val["val_centre_mae"]
            improved = after_epoch(cfg, state, score)
            state["seconds"] = time.perf_counter() - start_time
            state["cpu_seconds"] = time.process_time() - start_cpu
            row = _epoch_row(state, lr, sums, seen, val)
            # means over the processes: seconds blocked on data, and their share of the epoch
            row.update(
                train_seconds=round(busy / world, 3),
                data_seconds=round(waited / world, 3),
                data_wait=round(waited / max(busy, 1e-9), 4),
            )
            self.rows.append(row)
            rngs = all_gather_objects(torch.get_rng_state())
            cuda_rngs = all_gather_objects(
                torch.cuda.get_rng_state(device) if device.type == "cuda" else None
            )
            if rank != 0:
                continue
            if self.progress:
                _log_epoch(row, score, improved)
            self._commit(opt, val, improved, rngs, cuda_rngs)

    def _commit(
        self,
        opt: torch.optim.Optimizer,
        val: Mapping[str, float],
        improved: bool,
        rngs: Sequence[torch.Tensor],
        cuda_rngs: Sequence[torch.Tensor | None],
    ) -> None:
        """Write the epoch: ``last.pt`` (the commit point), ``best.pt``, ``metrics.csv``."""
        state = self.state
        extra = {
            "identity": self.identity,
            "provenance": self.provenance,
            "train_config": self.cfg.model_dump(mode="json"),
            **self.task.checkpoint_extra(),
            "processes": self.world,
            "backend": str(torch.distributed.get_backend()) if self.world > 1 else None,
            "device": str(self.device),
            "precision": self.precision,
            "data_loader": {
                "workers": self.workers,
                "source": type(self.task.train_windows).__name__,
            },
            "metrics": {"epoch": state["epoch"], "best_val_centre_mae": state["best"], **val},
            "data": {"sha256": self.digest},
            "run_id": self.run_id,
        }
        bundle = ModelBundle(self.task.model)
        bundle.save(
            self.last,
            extra=extra,
            training_state={
                # CPU tensors: the checkpoint resumes on any device
                "optimizer": feed.map_tensors(opt.state_dict(), lambda t: t.detach().cpu()),
                "state": dict(state),
                "torch_rng": torch.get_rng_state(),
                "torch_rng_ranks": list(rngs),
                "cuda_rng_ranks": [r for r in cuda_rngs if r is not None],
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rows": list(self.rows),
            },
        )
        if improved:
            bundle.save(self.best, extra=extra)
        elif self.foreign_best:  # the new run has no best model yet: drop the old one
            for p in (self.best, self.best.with_suffix(".json")):
                p.unlink(missing_ok=True)
        self.foreign_best = False
        _write_rows(self.metrics_csv, self.fields, self.rows)

    @property
    def fields(self) -> tuple[str, ...]:
        """Columns of ``metrics.csv``: the task's, then the loop's."""
        return (*self.task.metric_fields, *LOOP_FIELDS)

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
            device=str(self.device),
            precision=self.precision,
            data_wait=float(self.rows[-1].get("data_wait", "nan") or "nan")
            if self.rows
            else math.nan,
        )


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
        f"val centre MAE {score:.4f}{' *' if improved else ''}, "
        f"data wait {100 * row['data_wait']:.0f}% ({row['data_seconds']:.1f} s)"
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
