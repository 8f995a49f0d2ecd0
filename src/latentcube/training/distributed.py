"""Multi-process training on CPU with ``torch.distributed`` (gloo): the process group.

The loop (:func:`latentcube.training.loop.fit`) runs data-parallel whenever a
process group is initialised: every global batch is split into one contiguous
shard per process, each shard's loss is scaled by its share of the batch, and
DDP averages the gradients, so one step equals a single-process step on the whole
batch (up to float summation order). Validation is sharded the same way and its
sums are all-reduced, so every process takes the same early-stopping and
learning-rate decisions.

Two ways to start it:

* ``fit(..., nproc=N)`` (and ``latentcube train --nproc N``) spawns ``N``
  processes on this machine with :func:`torch.multiprocessing.spawn`
  (:func:`spawn`);
* ``torchrun --nproc-per-node N -m latentcube train ...`` (any launcher that sets
  ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``): each process
  joins the group from those variables (:func:`init_from_env`).

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

from latentcube.errors import LatentcubeError

__all__ = [
    "all_gather_objects",
    "all_reduce_sums",
    "init_from_env",
    "rank_and_size",
    "settle_group",
    "spawn",
]


def rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join a gloo process group described by ``torchrun``-style environment variables.

    Returns
    -------
    bool
        True when this call initialised the group (the caller destroys it).
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    dist.init_process_group("gloo")
    return True


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Sum ``values`` over all processes (float64); identity outside a process group."""
    if rank_and_size()[1] == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


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
    target, args, kwargs = pickle.loads(payload)
    # a file rendezvous: no TCP port to pick, so nothing another process can take first
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=nproc)
    try:
        try:
            result: Any = ("ok", target(*args, **kwargs))
        except LatentcubeError as err:  # decided together: every process raises it
            result = ("error", err)
        if rank == 0:
            queue.put(result)
        if result[0] == "ok":
            settle_group()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: a worker was once aborted at exit (SIGABRT,
    # "terminate called without an active exception", in 1 of about 70 runs of the
    # two-process test), the failure gloo's threads cause when they are still alive as
    # static destructors run. The result is already in the queue and every file is
    # closed, so nothing is lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(nproc: int, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``target(*args, **kwargs)`` in ``nproc`` local processes of one gloo group.

    Parameters
    ----------
    nproc
        Number of processes (>= 2).
    target
        A module-level function (it is pickled by name); the arguments are
        pickled to every process, so each has its own copy (of a model's
        weights, say).

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
