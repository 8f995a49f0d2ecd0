"""What a training loop needs from its windows, whether held in memory or streamed.

:class:`WindowSource` is the interface shared by the in-memory
:class:`~latentcube.data.windows.Windows` (small runs: the cubes' arrays in memory)
and :class:`~latentcube.data.streaming.StreamingWindows` (many Zarr cubes read
slab by slab): a length, the window geometry and ``batch(idx)`` returning
``(x, mask, gaps)``. The helpers here are written against that interface only:

* :func:`epoch_order`: the seeded order of the windows in an epoch; a source may
  define its own (``StreamingWindows`` keeps windows that share store chunks
  close together), otherwise it is the permutation the training loop has always
  drawn, so in-memory runs are unchanged;
* :func:`shard`: the share of one process of a global batch (DDP), the
  contiguous split the loop uses;
* :class:`BatchStream`: a ``torch`` ``IterableDataset`` of ready batches for a
  ``DataLoader`` (``batch_size=None``), with worker and rank sharding that are
  deterministic from the seed and the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["BatchStream", "WindowSource", "epoch_order", "shard"]


@runtime_checkable
class WindowSource(Protocol):
    """Context windows addressed by index, materialised batch by batch.

    Attributes
    ----------
    window
        Window side W in pixels.
    """

    window: int

    @property
    def n_dates(self) -> int:
        """Dates per window T."""
        ...

    def __len__(self) -> int:
        """Number of windows."""
        ...

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Materialise windows ``idx``.

        Returns
        -------
        tuple
            ``x`` (n, T, C, W, W) float32 (NaN where invalid), ``mask``
            (n, T, W, W) bool, ``gaps`` (n, T-1) int64.
        """
        ...


def epoch_order(source: WindowSource, seed: int, epoch: int) -> np.ndarray:
    """The order of the windows of ``source`` in ``epoch``, the same in every process.

    Parameters
    ----------
    source
        The windows; a source with an ``epoch_order(seed, epoch)`` method
        decides its own order.
    seed, epoch
        The order is a function of these only.

    Returns
    -------
    numpy.ndarray
        (len(source),) int64, a permutation of the window indices.
    """
    own = getattr(source, "epoch_order", None)
    if callable(own):
        return np.asarray(own(seed, epoch), dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(len(source))


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The contiguous share of process ``rank`` of a global ``batch`` of window indices.

    The shares of ranks ``0 .. world-1`` are disjoint and together are the batch
    (``numpy.array_split``: sizes differ by at most one).
    """
    return np.array_split(np.asarray(batch), world)[rank]


def _dist_rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchStream(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
    """Ready batches of a :class:`WindowSource`, for ``DataLoader(stream, batch_size=None)``.

    Epoch ``e`` cuts :func:`epoch_order` ``(seed, e)`` into global batches of
    ``batch_size`` windows; this process (``rank`` of ``world``) takes its
    :func:`shard` of each. With ``DataLoader`` workers, worker ``w`` of ``n``
    materialises global batches ``w, w + n, ...``; the loader hands them back
    in order, so the stream is the same for any number of workers. Each
    worker opens the stores it reads itself (the source is copied into the
    worker without open files).

    Parameters
    ----------
    source
        The windows.
    batch_size
        Windows per global batch (all processes together).
    seed
        Seed of the order.
    rank, world
        This process and the number of processes; default from an initialised
        ``torch.distributed`` process group, else ``(0, 1)``.
    drop_last
        Leave out a last, incomplete global batch.

    Notes
    -----
    Call :meth:`set_epoch` before iterating an epoch (as with
    ``DistributedSampler``); with ``persistent_workers=True`` the workers keep
    the epoch they started with, so leave that option off.

    Each item is a dict of tensors: ``x``, ``mask``, ``gaps`` (this process's
    share), ``index`` (their window indices), ``step`` (the global batch
    number) and ``global_size`` (windows in the global batch, to weight a
    shard's loss as the training loop does).
    """

    def __init__(
        self,
        source: WindowSource,
        batch_size: int,
        *,
        seed: int = 42,
        rank: int | None = None,
        world: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        r, w = _dist_rank_world()
        self.source = source
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = r if rank is None else int(rank)
        self.world = w if world is None else int(world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world - 1}")
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self) -> list[np.ndarray]:
        """Window indices of this process in every global batch of the current epoch."""
        order = epoch_order(self.source, self.seed, self.epoch)
        b = self.batch_size
        return [shard(order[k * b : (k + 1) * b], self.rank, self.world) for k in range(len(self))]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = epoch_order(self.source, self.seed, self.epoch)
        for k in range(worker, len(self), workers):
            glob = order[k * self.batch_size : (k + 1) * self.batch_size]
            mine = shard(glob, self.rank, self.world)
            x, mask, gaps = self.source.batch(mine)
            yield {
                "x": torch.from_numpy(x),
                "mask": torch.from_numpy(mask),
                "gaps": torch.from_numpy(gaps),
                "index": torch.from_numpy(np.asarray(mine, dtype=np.int64)),
                "step": torch.tensor(k),
                "global_size": torch.tensor(len(glob)),
            }
