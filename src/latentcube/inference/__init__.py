"""Embedding cubes with any model: one engine, one job per model kind.

* :func:`embed` (lazy, in memory) and :func:`embed_to_zarr` (chunk by chunk into a
  Zarr store, resumable, on Dask) take a :class:`~latentcube.bundle.ModelBundle`
  (or its path) of any kind; the job that embeds it is picked from
  :attr:`~latentcube.bundle.ModelBundle.kind` (:mod:`latentcube.inference.job`).
* :mod:`~latentcube.inference.engine`: chunks, halos, Dask, region writes, resume,
  progress, locking and replacing outputs.
* :mod:`~latentcube.inference.cluster`: where the tasks run (``device=``: the CPU,
  or one Dask worker per GPU declaring the ``GPU`` resource).
* :mod:`~latentcube.inference.autoencoder`: the stage-1 job (dense or window by
  window); :mod:`~latentcube.inference.fusion`: the fused job.
* The store's layout and its checks: :mod:`latentcube.embedding_store`.
"""

from __future__ import annotations

from latentcube.embedding_store import describe_store, embedding_dataset, open_embedding
from latentcube.inference.autoencoder import embed_block, embed_windows
from latentcube.inference.chunks import EDGE_POLICIES, extended_days
from latentcube.inference.engine import embed, embed_to_zarr, write_embedding
from latentcube.inference.fusion import embed_fused_block, reference_dates
from latentcube.inference.job import EmbedJob, Options, job_class, register_job
from latentcube.inference.tasks import cube_fingerprint, progress_dir

__all__ = [
    "EDGE_POLICIES",
    "EmbedJob",
    "Options",
    "cube_fingerprint",
    "describe_store",
    "embed",
    "embed_block",
    "embed_fused_block",
    "embed_to_zarr",
    "embed_windows",
    "embedding_dataset",
    "extended_days",
    "job_class",
    "open_embedding",
    "progress_dir",
    "reference_dates",
    "register_job",
    "write_embedding",
]
