"""Where embedding tasks run: the device, the local Dask cluster and its GPU workers.

On a CPU, the local cluster has one single-threaded worker process per core. On
CUDA it has one worker per GPU used: each worker process sees only its own GPU
(``CUDA_VISIBLE_DEVICES``, set by its nanny before the process starts, as
dask-cuda does), so ``"cuda"`` inside it is that GPU, and it declares one unit of
the Dask worker resource ``GPU``; every task asks for that unit, so a worker runs
one chunk at a time on its GPU, batching whole tiles. Workers of a cluster the
user started (``--scheduler``) must declare the resource themselves
(``dask worker ADDRESS --resources GPU=1``, one worker per GPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latentcube.devices import resolve_device
from latentcube.errors import EmbeddingError

__all__ = [
    "GPU_RESOURCE",
    "Placement",
    "check_resources",
    "gpu_worker_specs",
    "local_cluster",
    "placement",
]

#: The Dask worker resource a GPU worker declares and every CUDA task asks for.
GPU_RESOURCE = "GPU"


@dataclass(frozen=True)
class Placement:
    """Where the tasks of one embedding run.

    Attributes
    ----------
    device
        The torch device of the model inside a task: ``"cpu"``, ``"mps"``;
        ``"cuda"`` in a worker that sees one GPU, ``"cuda:N"`` in this process.
    gpus
        CUDA indices of the GPUs the local cluster gives one worker each (empty
        off CUDA and with a scheduler of the user's).
    resources
        Dask resources every task asks for (``{"GPU": 1}`` on CUDA).
    """

    device: str = "cpu"
    gpus: tuple[int, ...] = ()
    resources: Mapping[str, float] | None = field(default=None)

    @property
    def on_gpu(self) -> bool:
        """Whether the tasks run on CUDA GPUs."""
        return self.device.startswith("cuda")


def placement(
    device: str | torch.device | None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    resources: Mapping[str, float] | None = None,
) -> Placement:
    """Resolve ``device`` (:func:`latentcube.devices.resolve_device`) into a :class:`Placement`.

    ``"cuda"`` (and ``"auto"`` on a machine with GPUs) uses every visible GPU,
    ``"cuda:N"`` only GPU N. ``workers`` caps the number of GPUs used; with
    ``processes=False`` the workers are threads of this process, which see every
    GPU, so one GPU is used. With a ``scheduler``, ``"cuda"`` is not checked
    against this machine (a login node may have no GPU): the cluster's workers
    run the model, each on the GPU it sees, and :func:`check_resources` checks
    that one declares it. ``resources`` replaces the tasks' resources (default
    ``{"GPU": 1}`` on CUDA, none elsewhere).

    Raises
    ------
    latentcube.devices.DeviceError
        The device is unknown or not available here.
    EmbeddingError
        More local workers than GPUs were asked for.
    """
    name = "auto" if device is None else str(device).strip().lower()
    task_resources = {GPU_RESOURCE: 1} if resources is None else resources
    kind, _, index = name.partition(":")
    if scheduler is not None and kind == "cuda" and (not index or index.isdigit()):
        return Placement("cuda", (), task_resources)  # each worker uses the GPU it sees
    dev = resolve_device(device)
    if dev.type != "cuda":
        return Placement(str(dev), (), resources)
    if scheduler is not None:
        return Placement("cuda", (), task_resources)
    gpus = tuple(range(torch.cuda.device_count())) if ":" not in name else (int(dev.index or 0),)
    if workers is not None:
        if workers > len(gpus):
            raise EmbeddingError(
                f"--workers {workers} with device {name!r}: a GPU worker needs its own GPU and "
                f"{len(gpus)} GPU(s) are used; give --workers {len(gpus)} or fewer"
            )
        gpus = gpus[:workers]
    if not processes:
        return Placement(f"cuda:{gpus[0]}", gpus[:1], task_resources)
    return Placement("cuda", gpus, task_resources)


def gpu_worker_specs(
    base: Mapping[str, Any], gpus: Sequence[int], resource: str = GPU_RESOURCE
) -> dict[str, dict[str, Any]]:
    """Dask worker specs of one single-threaded worker per GPU, from a cluster's worker spec.

    Each worker declares one unit of ``resource``; a nanny-spawned worker process
    (``base["cls"]`` a :class:`distributed.Nanny`) also gets
    ``CUDA_VISIBLE_DEVICES`` set to its GPU, so its ``"cuda"`` is that GPU.
    Names are ``gpu-<index>``.
    """
    from distributed import Nanny

    out = {}
    for g in gpus:
        options = {**base.get("options", {}), "nthreads": 1, "resources": {resource: 1}}
        if isinstance(base["cls"], type) and issubclass(base["cls"], Nanny):
            options["env"] = {**options.get("env", {}), "CUDA_VISIBLE_DEVICES": str(g)}
        out[f"gpu-{g}"] = {"cls": base["cls"], "options": options}
    return out


def local_cluster(
    workers: int, threads_per_worker: int, processes: bool, gpus: Sequence[int] = ()
) -> Any:
    """A :class:`distributed.LocalCluster` for embedding tasks.

    ``workers`` worker processes (threads with ``processes=False``) of
    ``threads_per_worker`` threads each; with ``gpus``, one single-threaded
    worker per GPU instead (:func:`gpu_worker_specs`). Worker processes get
    Dask's usual environment (one OpenMP/BLAS thread each) except
    ``MALLOC_TRIM_THRESHOLD_``: setting it at all freezes glibc's mmap threshold
    at 128 KiB, so every tensor of the model's batches was mapped and unmapped
    afresh, page by page: about as much system time as model time.
    """
    import dask
    from dask.distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(
            n_workers=0 if gpus else workers,
            threads_per_worker=1 if gpus else threads_per_worker,
            processes=processes,
            dashboard_address=":0",  # any free port: never a clash with another cluster
        )
        if gpus:
            cluster.worker_spec.update(gpu_worker_specs(cluster.new_spec, gpus))
            cluster.scale(len(gpus))
    return cluster


def check_resources(client: Any, resources: Mapping[str, float] | None, where: str) -> None:
    """Refuse to submit tasks that no worker of the cluster can run (they would wait forever).

    Raises
    ------
    EmbeddingError
        No worker of ``client``'s cluster declares every resource in ``resources``.
    """
    if not resources:
        return
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    for w in workers:
        have = w.get("resources", {}) or {}
        if all(have.get(k, 0) >= v for k, v in resources.items()):
            return
    need = " ".join(f"{k}={v:g}" for k, v in resources.items())
    raise EmbeddingError(
        f"no worker of the Dask cluster at {where} declares the resources {need} the tasks "
        f"need; start one worker per GPU with 'dask worker {where} --nthreads 1 "
        f"--resources {need}' (each seeing its own GPU through CUDA_VISIBLE_DEVICES), or "
        "'dask cuda worker' with the same --resources"
    )
