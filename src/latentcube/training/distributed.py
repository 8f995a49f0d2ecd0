"""Multi-process training with ``torch.distributed``: the process group and each process's device.

The loop (:func:`latentcube.training.loop.fit`) runs data-parallel whenever a
process group is initialised: every global batch is split into one contiguous
shard per process, each shard's loss is scaled by its share of the batch, and
DDP averages the gradients, so one step equals a single-process step on the whole
batch (up to float summation order). Validation is sharded the same way and its
sums are all-reduced, so every process takes the same early-stopping and
learning-rate decisions.

Two ways to start it, one code path:

* ``torchrun --nproc-per-node N -m latentcube train ...`` (any launcher that sets
  ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``):
  each process joins the group from those variables (:func:`init_from_env`,
  ``env://``);
* ``fit(..., nproc=N)`` (and ``latentcube train --nproc N``) spawns ``N``
  processes on this machine with :func:`torch.multiprocessing.spawn`
  (:func:`spawn`), which sets the same variables in every process (and a file
  rendezvous instead of a TCP port) and lets the function join the group
  through :func:`init_from_env` too.

The backend follows the device (:func:`process_device`): ``nccl`` when the
processes train on CUDA GPUs, each on ``cuda:LOCAL_RANK``, ``gloo`` otherwise.

This module knows nothing of the loop: :func:`spawn` runs whatever function it is
given in every process.
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from latentcube.devices import DeviceError, resolve_device
from latentcube.errors import LatentcubeError

__all__ = [
    "all_gather_objects",
    "all_reduce_sums",
    "backend_for",
    "init_from_env",
    "process_device",
    "rank_and_size",
    "settle_group",
    "spawn",
]


def rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: Environment variable through which :func:`spawn` hands its file rendezvous to
#: :func:`init_from_env` (launchers leave it unset: ``env://``).
RENDEZVOUS_ENV = "LATENTCUBE_DIST_INIT"


def _launched() -> bool:
    """Whether a launcher (or :func:`spawn`) described a group of several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and ("MASTER_ADDR" in os.environ or RENDEZVOUS_ENV in os.environ)


def process_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device of this process: ``spec`` resolved, one GPU per process in a group.

    Outside a group this is :func:`latentcube.devices.resolve_device`. In a group
    described by the environment (``torchrun``, :func:`spawn`), a CUDA device
    (``auto`` on a GPU machine, ``cuda`` or ``cuda:N``) becomes ``cuda:LOCAL_RANK``,
    as DDP with nccl needs one GPU per process.

    Raises
    ------
    DeviceError
        The device is not available, or there are fewer GPUs than processes on
        this machine.
    """
    device = resolve_device(spec)
    if device.type != "cuda" or not (_launched() or dist.is_initialized()):
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    n = torch.cuda.device_count()
    if local >= n:
        raise DeviceError(
            f"process with LOCAL_RANK {local} needs cuda:{local} but only {n} CUDA GPU(s) are "
            "visible: start at most one process per GPU, or train with --device cpu"
        )
    return torch.device("cuda", local)


def backend_for(device: torch.device) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` for every other device."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group described by ``torchrun``-style environment variables.

    Parameters
    ----------
    device
        This process's device (:func:`process_device`): nccl on CUDA (the
        process's GPU becomes the current one), gloo otherwise (default: CPU).

    Returns
    -------
    bool
        True when this call initialised the group (the caller destroys it).
    """
    if not dist.is_available() or dist.is_initialized() or not _launched():
        return False
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init = os.environ.get(RENDEZVOUS_ENV, "env://")
    if init == "env://":
        dist.init_process_group(backend_for(device), init_method=init)
    else:  # spawn's file rendezvous: rank and size given explicitly
        dist.init_process_group(
            backend_for(device),
            init_method=init,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    return True


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Sum ``values`` over all processes (float64); identity outside a process group."""
    if rank_and_size()[1] == 1:
        return [float(v) for v in values]
    # nccl reduces GPU tensors only: the current GPU of this process (init_from_env set it)
    on = torch.device("cuda", torch.cuda.current_device()) if _nccl() else None
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return t.tolist()


def _nccl() -> bool:
    return str(dist.get_backend()) == "nccl"


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order; ``[obj]`` outside a process group."""
    if rank_and_size()[1] == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def settle_group() -> None:
    """Make the process group safe to destroy, after a successful run.

    Frees what training left behind (DDP's reducer holds the group), then waits
    for every process, so that none tears the group down while another still
    uses it.
    """
    gc.collect()
    dist.barrier()


def _worker(rank: int, nproc: int, rendezvous: str, payload: bytes, queue: Any) -> None:
    # the variables a launcher sets; a file rendezvous: no TCP port to pick, so nothing
    # another process can take first. The target joins the group (init_from_env) with
    # the backend of its device, as under torchrun.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        **{RENDEZVOUS_ENV: f"file://{rendezvous}"},
    )
    target, args, kwargs = pickle.loads(payload)
    try:
        result: Any = ("ok", target(*args, **kwargs))
    except LatentcubeError as err:  # decided together: every process raises it
        result = ("error", err)
    if rank == 0:
        queue.put(result)
    # Leave without interpreter finalisation: a worker was once aborted at exit (SIGABRT,
    # "terminate called without an active exception", in 1 of about 70 runs of the
    # two-process test), the failure gloo's threads cause when they are still alive as
    # static destructors run. The result is already in the queue and every file is
    # closed, so nothing is lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(nproc: int, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``target(*args, **kwargs)`` in ``nproc`` local processes of one process group.

    Every process gets the environment of a ``torchrun`` launch (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``) and a file rendezvous;
    ``target`` joins the group itself with :func:`init_from_env` (and leaves it).

    Parameters
    ----------
    nproc
        Number of processes (>= 2).
    target
        A module-level function (it is pickled by name) that joins the group
        with :func:`init_from_env`; the arguments are pickled to every process,
        so each has its own copy (of a model's weights, say).

    Returns
    -------
    Any
        What ``target`` returned in process 0.

    Raises
    ------
    LatentcubeError
        The error ``target`` raised in every process (a refused output, ...),
        re-raised here; other failures end the processes and raise as
        :func:`torch.multiprocessing.spawn` does.
    """
    if nproc < 2:
        raise ValueError(f"spawn needs nproc >= 2, got {nproc}")
    import torch.multiprocessing as mp

    # Plain pickle, not torch's: torch.multiprocessing would hand every process the same
    # shared memory for each tensor (a model's weights), so all would update one copy.
    payload = pickle.dumps((target, args, kwargs))
    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="latentcube-ddp-") as tmp:
        rendezvous = os.path.join(tmp, "rendezvous")
        mp.spawn(_worker, args=(nproc, rendezvous, payload, queue), nprocs=nproc, join=True)
    status, value = queue.get()
    if status == "error":
        raise value
    return value
