"""Feeding the training loop: an epoch's batches, read ahead by loader workers, on the device.

The loop (:func:`latentcube.training.loop.fit`) cuts the epoch's order of the
training windows (:func:`latentcube.data.source.epoch_order`: a seeded
permutation for windows in memory, the chunk-local order of
:class:`~latentcube.data.streaming.StreamingWindows`) into global batches of
``batch_size`` windows; every process takes its contiguous shard of each
(:func:`~latentcube.data.source.shard`). :class:`StepStream` materialises those
shards with the task's reader (``Task.batch_reader``), in the loop's process or
in ``DataLoader`` workers: worker ``w`` of ``n`` reads global batches ``w, w + n,
...`` and the loader hands them back in order, so the steps, and the trained
model, are the same for any number of workers.

:func:`to_device` moves a step's tensors (tuples, dicts and dataclasses of
tensors, such as :class:`~latentcube.data.batch.SensorBatch`) to the training
device; :class:`DataClock` measures how long the loop waits for data.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentcube.data.source import epoch_order, shard

__all__ = [
    "DataClock",
    "Step",
    "StepStream",
    "TensorBatches",
    "map_tensors",
    "source_arrays",
    "steps",
    "to_device",
]


@dataclass
class Step:
    """One training step's data for this process.

    Attributes
    ----------
    start
        Position of the global batch's first window in the epoch's order.
    batch
        Window indices of the global batch (all processes together).
    shard
        Positions in ``batch`` of this process's windows.
    data
        What the task's reader returned for ``batch[shard]`` (CPU tensors).
    """

    start: int
    batch: np.ndarray
    shard: np.ndarray
    data: Any

    def pin_memory(self) -> Step:
        """The step with its tensors in page-locked memory (``DataLoader(pin_memory=True)``)."""
        return dataclasses.replace(self, data=map_tensors(self.data, lambda t: t.pin_memory()))


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (tuples, lists, dicts, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    return obj


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor on ``device`` (asynchronous copies from pinned memory)."""
    if device.type == "cpu":
        return obj
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


class StepStream(torch.utils.data.IterableDataset[Step]):
    """The steps of one epoch of one process, for ``DataLoader(..., batch_size=None)``.

    Parameters
    ----------
    source
        The training windows (anything :func:`~latentcube.data.source.epoch_order`
        accepts: a length, optionally its own ``epoch_order``).
    read
        ``read(indices)``: the step data of those windows (picklable: it is sent
        to the loader workers; a bound method of the windows, say).
    batch_size
        Windows per global batch.
    seed, epoch
        The order is a function of these only.
    rank, world
        This process and the number of processes. A last global batch of fewer
        windows than processes is left out (in every process alike: DDP needs
        a sample in each).
    """

    def __init__(
        self,
        source: Any,
        read: Callable[[np.ndarray], Any],
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.source, self.read = source, read
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), int(epoch)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return -(-len(self.source) // self.batch_size)

    def __iter__(self) -> Iterator[Step]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = epoch_order(self.source, self.seed, self.epoch)
        b = self.batch_size
        for k in range(worker, len(self), workers):
            batch = order[k * b : (k + 1) * b]
            if len(batch) < self.world:  # a last batch that cannot give every process a window
                continue
            positions = shard(np.arange(len(batch)), self.rank, self.world)
            yield Step(k * b, batch, positions, self.read(batch[positions]))


def _keep(step: Any) -> Any:
    """The loader's ``collate_fn``: a step as the worker made it (no conversion)."""
    return step


def steps(
    stream: StepStream, *, workers: int = 0, pin_memory: bool = False
) -> Generator[Step, None, None]:
    """Iterate ``stream``: in this process (``workers=0``) or through a ``DataLoader``.

    The loader gets its own seeded generator, so the global torch RNG (dropout,
    sensor dropout) draws the same numbers whatever the number of workers.
    """
    if workers <= 0:
        for step in stream:
            yield step.pin_memory() if pin_memory else step
        return
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(stream.seed),
        prefetch_factor=2,
    )
    yield from loader


class DataClock:
    """Time the loop spends blocked on its data, against the time of its steps.

    Every fetch goes through :meth:`next`; :attr:`waited` and :meth:`elapsed`
    are seconds since :meth:`start`.
    """

    def __init__(self) -> None:
        self.waited = 0.0
        self._t0 = time.perf_counter()

    def start(self) -> None:
        """Start an epoch."""
        self.waited, self._t0 = 0.0, time.perf_counter()

    def next(self, it: Iterator[Step], device: torch.device) -> Step | None:
        """The next step of ``it`` with its data on ``device`` (None at the end), timed."""
        t0 = time.perf_counter()
        try:
            step = next(it)
        except StopIteration:
            step = None
        if step is not None:
            step = dataclasses.replace(step, data=to_device(step.data, device))
        self.waited += time.perf_counter() - t0
        return step

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.perf_counter() - self._t0


class TensorBatches:
    """``read(idx)``: ``windows.batch(idx)`` as tensors (picklable, for loader workers)."""

    def __init__(self, windows: Any) -> None:
        self.windows = windows

    def __call__(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``(x, mask, gaps)`` of windows ``idx``."""
        return tuple(torch.from_numpy(a) for a in self.windows.batch(idx))


def source_arrays(windows: Any) -> list[np.ndarray]:
    """What identifies the data of ``windows``: its arrays, or a streamed source's index."""
    if hasattr(windows, "arrays"):
        return list(windows.arrays())
    prints = [np.frombuffer(i.fingerprint.encode(), np.uint8) for i in windows.indexes]
    days = [i.days for i in windows.indexes]
    index = [windows.cube_id, windows.t_idx, windows.iy, windows.ix, np.array([windows.window])]
    return [*prints, *days, *index]
