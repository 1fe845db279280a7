"""Running partitions: on a Dask distributed cluster, or in this process (``cluster.type=sync``).

Each partition is one fused task (load, mask, profile, write its Parquet file) that returns only
a small summary to the driver, so the driver's memory does not grow with the number of objects.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

log = logging.getLogger("scip_gpu")

# one BLAS/OpenMP thread per worker process: parallelism comes from the workers
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class SyncExecutor:
    """Runs tasks one after the other in this process."""

    description = "in-process (sync)"

    def map_unordered(self, fn: Callable, items: Iterable, names: Iterable[str], **shared) -> Iterator:
        for item in items:
            try:
                yield item, fn(item, **shared), None
            except Exception as exc:  # reported per partition by the caller
                yield item, None, exc


class DaskExecutor:
    """Submits one task per item to a distributed Client; yields results as they complete."""

    def __init__(self, client):
        self.client = client
        self.description = f"Dask cluster with {len(client.scheduler_info().get('workers', {}))} worker(s)"

    def map_unordered(self, fn: Callable, items: Iterable, names: Iterable[str], **shared) -> Iterator:
        from distributed import as_completed

        items = list(items)
        # ship the shared arguments once per worker, not once per task
        shared_f = {k: self.client.scatter(v, broadcast=True, hash=False) for k, v in shared.items()}
        futures = {}
        for item, name in zip(items, names):
            fut = self.client.submit(fn, item, key=name, pure=False, **shared_f)
            futures[fut] = item
        for fut in as_completed(list(futures)):
            item = futures.pop(fut)
            try:
                yield item, fut.result(), None
            except Exception as exc:
                yield item, None, exc
            fut.release()


@contextmanager
def executor(cluster_cfg):
    """Start the configured cluster (closed on exit) and yield an executor."""
    kind = getattr(cluster_cfg.type, "value", cluster_cfg.type)
    if kind == "sync":
        yield SyncExecutor()
        return
    from distributed import Client, LocalCluster

    n = cluster_cfg.n_workers or os.cpu_count() or 1
    log.info("starting a local Dask cluster: %d worker process(es) x %d thread(s)", n,
             cluster_cfg.threads_per_worker)
    with LocalCluster(
        n_workers=n,
        threads_per_worker=cluster_cfg.threads_per_worker,
        processes=True,
        memory_limit=cluster_cfg.memory_limit,
        dashboard_address=cluster_cfg.dashboard_address,
        silence_logs=logging.ERROR,
        env=_WORKER_ENV,
    ) as cluster, Client(cluster) as client:
        if cluster_cfg.dashboard_address:
            log.info("Dask dashboard: %s", client.dashboard_link)
        yield DaskExecutor(client)
