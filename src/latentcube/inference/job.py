"""What an embedding job is, and which job embeds which kind of model.

The engine (:mod:`latentcube.inference.engine`) owns everything that is the same
for every model: output chunks, Dask graphs and clusters, reading blocks, region
writes, resume markers, progress and the store. A *job* owns what differs: which
bands it reads, the block of the cube one output chunk needs, the layers it
computes from that block, the store's attributes and the options that make two
runs' stores differ. One job class per :attr:`latentcube.bundle.ModelBundle.kind`,
picked through :func:`job_class` as xarray picks a backend engine; a new kind of
model registers its job with :func:`register_job` and the engine, the CLI and the
store need no change.

A planned job is small and picklable: the cube-wide facts a chunk needs (day
numbers, the reference sensor's dates, day offsets) are computed once, on the
client, and shipped with it, so no task reduces over the whole cube.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from latentcube.cube.schema import validate_cube
from latentcube.errors import EmbeddingError

__all__ = [
    "DEFAULT_RESOLUTION_M",
    "EmbedJob",
    "Options",
    "job_class",
    "model_resolution",
    "register_job",
]

#: Pixel size every latentcube model is trained on unless its bundle says otherwise
#: (metadata ``resolution_m``): the 15 px context is 150 m on the ground.
DEFAULT_RESOLUTION_M = 10.0

#: kind -> job class, or ``"module:Class"`` imported on first use.
_JOBS: dict[str, str | type[EmbedJob]] = {
    "autoencoder": "latentcube.inference.autoencoder:AutoencoderJob",
    "fusion": "latentcube.inference.fusion:FusionJob",
}

#: (sensor, bands) pairs, the bands in model order.
Reads = tuple[tuple[str, tuple[str, ...]], ...]
#: Per sensor, (data (T, C, Y, X) float32, valid (T, Y, X) bool) of one block.
Arrays = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Options:
    """What a caller asks of an embedding, whatever the model's kind.

    Attributes
    ----------
    sensor
        Stage-1 models: the cube variable to embed (default: the model's sensor).
    edge
        Edge policy, ``"nan"`` or ``"pad"`` (stage-1 models).
    hide
        Fused models: sensors to leave out on purpose.
    batch_size
        Pixels (stage 1) or pixel-dates (fusion; also the pixels of its stage-1
        calls) per model call; None: the device's default (small batches on a CPU,
        the whole tile on an accelerator).
    with_error
        Compute the reconstruction-error layer.
    refuse_empty
        Refuse a cube smaller than the model's context (in space or time), on
        which nothing could be embedded (a store of NaN is never useful).
    """

    sensor: str | None = None
    edge: str = "nan"
    hide: tuple[str, ...] = ()
    batch_size: int | None = None
    with_error: bool = True
    refuse_empty: bool = False


def register_job(kind: str, job: str | type[EmbedJob]) -> None:
    """Make ``job`` (a class or ``"module:Class"``) the job of bundles of ``kind``."""
    _JOBS[kind] = job


def job_class(kind: str) -> type[EmbedJob]:
    """The job class that embeds bundles of ``kind``."""
    try:
        job = _JOBS[kind]
    except KeyError:
        raise EmbeddingError(
            f"no embedding job for models of kind {kind!r} (known: {sorted(_JOBS)})"
        ) from None
    if isinstance(job, str):
        module, _, name = job.partition(":")
        job = getattr(importlib.import_module(module), name)
        _JOBS[kind] = job
    return job


def model_resolution(meta: Mapping[str, Any]) -> float:
    """Pixel size in metres a bundle's model needs (:data:`DEFAULT_RESOLUTION_M` by default)."""
    return float(meta.get("resolution_m", DEFAULT_RESOLUTION_M))


class EmbedJob(ABC):
    """One planned embedding of one cube with one model; see the module docstring.

    Attributes set by :meth:`plan`: ``reads`` (the (sensor, bands) the tasks
    read), ``shape`` (time, y, x of the cube), ``n_features``, ``layers``
    (quality layer name -> dtype, in store order), ``layer_attrs`` and ``attrs``
    (the embedding's attributes: provenance, configuration, options).
    """

    kind: ClassVar[str]
    reads: Reads
    shape: tuple[int, int, int]
    n_features: int
    layers: dict[str, str]
    layer_attrs: dict[str, dict[str, Any]]
    attrs: dict[str, Any]

    @classmethod
    @abstractmethod
    def plan(cls, bundle: Any, cube: xr.Dataset, options: Options) -> EmbedJob:
        """The job of embedding ``cube`` with ``bundle``; refuses what cannot be embedded.

        Raises :class:`~latentcube.errors.EmbeddingError` (or
        :class:`~latentcube.errors.CubeError`) naming the problem: options the
        model does not support, bands, resolution, every sensor hidden and, with
        ``options.refuse_empty``, a cube smaller than the model's context.
        """

    @abstractmethod
    def block(self, ts: slice, ys: slice, xs: slice) -> tuple[slice, slice, slice]:
        """The (time, y, x) region of the cube that output chunk ``(ts, ys, xs)`` reads."""

    @abstractmethod
    def compute(
        self, model: Any, arrays: Arrays, ts: slice, ys: slice, xs: slice
    ) -> dict[str, np.ndarray]:
        """Every layer of output chunk ``(ts, ys, xs)`` from its block's ``arrays``.

        ``arrays`` holds each sensor of :attr:`reads` the cube has, over
        :meth:`block`. Returns ``embedding`` (n_features, t, y, x) float32, then
        each of :attr:`layers` (t, y, x).
        """

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Options that make two runs' stores differ (beyond model, cube, chunks, dtype)."""

    # -- checks shared by the jobs --------------------------------------------------

    @staticmethod
    def check_grid(cube: xr.Dataset, meta: Mapping[str, Any]) -> None:
        """Refuse a cube whose pixel size is not the model's."""
        validate_cube(cube, resolution=model_resolution(meta), check_values=False)

    @staticmethod
    def check_context(
        what: str, n_dates: int, size: tuple[int, int], window: int, need_dates: int
    ) -> None:
        """Refuse a cube smaller than the model's context (nothing would be embedded)."""
        ny, nx = size
        if ny < window or nx < window:
            raise EmbeddingError(
                f"the cube is {ny} x {nx} px, smaller than the {window} x {window} px context "
                f"of {what}: no pixel can be embedded"
            )
        if n_dates < need_dates:
            raise EmbeddingError(
                f"the cube has {n_dates} dates, fewer than the {need_dates}-date context of "
                f"{what}: no date can be embedded"
            )
