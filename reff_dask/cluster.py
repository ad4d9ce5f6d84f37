"""The one place that creates or joins a Dask cluster."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from distributed import Client, LocalCluster


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                threads_per_worker: int = 1, memory_limit: str | None = None) -> Iterator[Client]:
    """Join the cluster at ``scheduler`` (address or scheduler-file path), or start an
    embedded local one with ``workers`` processes (default: one per core, at most 8).

    The client is the default for all Dask computations inside the ``with`` block.
    """
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler:
        if os.path.isfile(scheduler):
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or min(os.cpu_count() or 1, 8)
    with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=None, memory_limit=memory_limit or "auto",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
