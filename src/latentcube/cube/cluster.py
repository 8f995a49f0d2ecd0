"""The Dask client of a cube build: a running scheduler's, or a local cluster's.

``latentcube cube`` runs its loading units (one cube) or its sites (many cubes) as
Dask tasks, on the scheduler given or on a local cluster started for the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["dask_client"]


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client of ``scheduler``, or of a local cluster started for the block.

    Parameters
    ----------
    scheduler
        A running scheduler's address; None or ``"local"``: a ``LocalCluster`` of
        single-threaded worker processes without a dashboard.
    workers
        Worker processes of the local cluster (default: one per CPU).

    Yields
    ------
    distributed.Client
        Closed when the block ends, and the local cluster with it.
    """
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler in (None, "local"):
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
    client = Client(cluster or scheduler)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
