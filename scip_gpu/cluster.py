"""Running partitions: on a Dask distributed cluster, or in this process (``cluster.type=sync``).

Each partition is one fused task (load, mask, profile, write its Parquet file) that returns only
a small summary to the driver, so the driver's memory does not grow with the number of objects.

Faults of the cluster are not faults of the objects. A task whose worker dies is run again on
another worker (Dask: ``distributed.scheduler.allowed-failures``, ``cluster.allowed_failures``);
the arguments all tasks share are tasks themselves, so the scheduler computes them again for
workers that a nanny restarted, or that joined later. A task that every worker running it died
on comes back as ``WorkerKilled`` (saying whether the nanny stopped the worker for exceeding its
memory limit); a task that was lost (cancelled, its data gone, the connection to the scheduler
broken) is submitted again up to ``cluster.retries`` times, then comes back as
``ClusterFailure``, as does every task still waiting when no worker has been connected for
``cluster.worker_timeout`` seconds. What a task raised itself comes back as it is (after
``cluster.retries`` Dask retries).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterable, Iterator

log = logging.getLogger("scip_gpu")

# one BLAS/OpenMP thread per worker process: parallelism comes from the workers
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               # keep freed batch buffers in the process instead of returning them to the kernel
               # and faulting them in again for the next batch (glibc malloc)
               "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}

#: Seconds to wait for a worker when none is connected, by cluster type (``cluster.worker_timeout``
#: null): workers of a local cluster start with it (or are restarted by their nannies within
#: seconds); batch jobs wait in the queue, workers of an existing scheduler come when they come.
DEFAULT_WORKER_TIMEOUT = {"local": 120.0, "local_cuda": 120.0, "address": 86400.0, "slurm": 86400.0,
                          "pbs": 86400.0}


class WorkerKilled(Exception):
    """Every worker that ran the task died while running it (Dask's ``KilledWorker``)."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


class ClusterFailure(Exception):
    """The task could not be run for a reason outside its inputs: its future was cancelled or its
    data lost more than ``cluster.retries`` times, the connection to the scheduler broke, or no
    worker was connected for ``cluster.worker_timeout`` seconds."""


#: environment variable naming the device of the workers scip_gpu starts (``dask_setup``)
WORKER_DEVICE_ENV = "SCIP_GPU_WORKER_DEVICE"


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask preload hook, run in every worker process we start
    """Worker processes of a local cluster share the terminal's process group: Ctrl-C reaches
    them too. They ignore it; the driver stops them when it stops (no traceback per worker).

    They also import what a partition task runs (``scip_gpu.pipeline``; on a GPU worker CuPy,
    the CUDA context and the kernels' module; on a CPU worker numba's first-use set-up,
    ``cpu_kernels.warm_in_background``) as they start, which the cluster does while the
    driver prepares the run, rather than in the first task. What fails here is left for the
    task to report."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from . import cpu_kernels, pipeline  # noqa: F401

        if os.environ.get(WORKER_DEVICE_ENV) != "cuda":  # (a GPU worker may never call numba: kvikio reads)
            cpu_kernels.warm_in_background()  # numba's first-use set-up, while the driver prepares
        else:
            import cupy

            from . import gpu_kernels
            from .dispatch import kernels_enabled

            cupy.cuda.Device().synchronize()  # (the CUDA context: the worker's GPU is its device 0)
            if kernels_enabled():
                gpu_kernels.module().get_function(gpu_kernels.kernel_names()[0])  # (loaded on first use)
    except Exception:  # noqa: BLE001 - reported by the first task that needs it
        pass


class SyncExecutor:
    """Runs tasks in this process: one after the other, or ``threads`` at a time (then a task's
    host stages overlap another's device stage, see ``pipeline.device_lock``). At most
    ``threads`` tasks are in flight, so memory does not grow with the number of tasks; results
    come as tasks finish."""

    def __init__(self, threads: int = 1):
        self.threads = max(1, int(threads or 1))
        self.description = "in-process (sync)" + (f", {self.threads} partitions in flight" if self.threads > 1 else "")

    def map_unordered(self, fn: Callable, items: Iterable, names: Iterable[str], priority: int = 0,
                      **shared) -> Iterator:
        if self.threads == 1:
            for item in items:
                try:
                    yield item, fn(item, **shared), None
                except Exception as exc:  # reported per partition by the caller
                    yield item, None, exc
            return
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        todo = iter(items)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="scip_gpu-partition")
        running: dict = {}
        try:
            while True:
                for item in todo:  # top up to `threads` tasks in flight
                    running[pool.submit(fn, item, **shared)] = item
                    if len(running) >= self.threads:
                        break
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    item = running.pop(fut)
                    exc = fut.exception()
                    yield item, (fut.result() if exc is None else None), exc
        finally:  # an error or Ctrl-C in the caller: nothing new starts; the tasks running finish
            for fut in running:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


#: Resource that GPU workers declare and GPU tasks require (mixed CPU/GPU clusters).
GPU_RESOURCE = "GPU"


def _identity(value):
    return value


#: Scheduler event topic: a task announces on which worker it starts (``_tracked``).
STARTED_TOPIC = "scip_gpu-task-started"

#: Times a task that was only queued on dying workers (not running) is submitted again.
BYSTANDER_RESUBMITS = 10


def _tracked(fn, item, shared: dict):
    """Run ``fn(item, **shared)`` on a worker, first telling the scheduler (synchronously) that
    this task starts on this worker: when the worker dies, the driver knows which task was
    running and which were only queued there. (Dask's ``KilledWorker`` counts every task a dying
    worker held, so a queued good partition or object would be blamed for its neighbour.)"""
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
        sync(worker.loop, worker.scheduler.log_event, topic=STARTED_TOPIC,
             msg={"key": str(worker.get_current_task()), "worker": worker.address}, callback_timeout=30)
    except Exception:  # noqa: BLE001 - not on a worker, or the scheduler is slow: run anyway
        pass
    try:
        return fn(item, **shared)
    except Exception as exc:
        _announce_failure(exc)
        raise


#: Scheduler event topic: a task's try raised (``_tracked``): ``{"key", "error"}``, so the driver
#: can tell whether the tries of a task (Dask's ``retries``) all failed the same way.
FAILED_TOPIC = "scip_gpu-task-failed"


def _announce_failure(exc: BaseException) -> None:
    """Tell the scheduler (synchronously) that this try of the running task raised ``exc``."""
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
        sync(worker.loop, worker.scheduler.log_event, topic=FAILED_TOPIC,
             msg={"key": str(worker.get_current_task()), "error": f"{type(exc).__name__}: {exc}"[:2000]},
             callback_timeout=30)
    except Exception:  # noqa: BLE001 - not on a worker, or the scheduler is slow: the error is raised anyway
        pass


def failed_tries(exc: BaseException) -> list[str]:
    """The errors (``Type: message``) of each try of the task that raised ``exc``, as its workers
    announced them (``DaskExecutor``; empty in this process's executor or when unknown)."""
    return list(getattr(exc, "scip_gpu_tries", None) or ())


#: ``_outcome``: the task failed because workers it was queued on died running other tasks.
BYSTANDER = "bystander"


def _plain(value) -> bool:
    return value is None or isinstance(value, (str, bytes, int, float, bool))


class _WorkerWatch:
    """Counts the workers able to run the tasks (every few seconds); says when none has been
    connected for ``timeout`` seconds, logging that it waits."""

    def __init__(self, client, resources: dict | None, timeout: float | None, where: str,
                 gone: Callable[[], str | None] | None = None):
        self.client, self.resources, self.timeout, self.where = client, resources, timeout, where
        self.gone = gone  # why no worker can come any more (every process or job of our cluster ended)
        self.reason: str | None = None
        self.since: float | None = None
        self.checked = self.logged = 0.0
        self.n = None

    def count(self) -> int:
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 - the scheduler cannot be reached: no worker either
            return 0
        if not self.resources:
            return len(workers)
        return sum(all((w.get("resources") or {}).get(k, 0) >= v for k, v in self.resources.items())
                   for w in workers.values())

    def expired(self, every: float = 2.0) -> bool:
        """True when no worker has been connected for longer than the timeout."""
        now = time.monotonic()
        if now - self.checked < every:
            return False
        self.checked = now
        self.n = self.count()
        if self.n:
            if self.since is not None:
                log.info("%d Dask worker(s) connected; going on", self.n)
            self.since = None
            return False
        reason = self.gone() if self.gone is not None else None
        if reason is not None:
            self.reason = reason
            return True
        limit = "indefinitely" if self.timeout is None else f"up to {self.timeout:.0f} s"
        if self.since is None:
            self.since = self.logged = now
            need = f" declaring the resource {self.resources}" if self.resources else ""
            log.warning("no Dask worker%s is connected to %s: waiting for one (%s, cluster.worker_timeout)",
                        need, self.where, limit)
        elif now - self.logged >= 60:
            self.logged = now
            log.info("still no Dask worker after %.0f s: waiting (%s)", now - self.since, limit)
        return self.timeout is not None and now - self.since > self.timeout

    def message(self) -> str:
        if self.reason is not None:
            return self.reason
        return (f"no Dask worker was connected to {self.where} for {self.timeout:.0f} s "
                "(cluster.worker_timeout)")


class DaskExecutor:
    """Submits one task per item to a distributed Client; yields results as they complete.

    With ``resources`` (e.g. ``{"GPU": 1}`` for GPU partitions) every task carries that
    restriction to the scheduler, so on a mixed cluster it runs only on workers that declare the
    resource. Tasks are submitted one by one (``Client.submit``), never through a graph that an
    optimisation pass could fuse, so the restriction cannot be lost (dask issues 7036, 8485).

    Shared arguments are submitted once as tasks of their own (not scattered: scattered data is
    lost for good with the workers holding it, and a restarted worker never gets it); each
    worker fetches them once, and the scheduler computes them again when they are lost.
    """

    def __init__(self, client, resources: dict | None = None, *, retries: int = 2,
                 worker_timeout: float | None = None, where: str | None = None,
                 gone: Callable[[], str | None] | None = None):
        self.client = client
        self.resources = resources
        self.retries = max(0, int(retries))
        self.watch = _WorkerWatch(client, resources, worker_timeout, where or "the Dask scheduler", gone)
        self._shared: dict[int, tuple] = {}  # id(value) -> (value, future)
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        self.description = f"Dask cluster with {n} worker(s)"

    def _shared_future(self, value):
        hit = self._shared.get(id(value))
        if hit is not None and hit[0] is value and hit[1].status in ("pending", "finished"):
            return hit[1]
        fut = self.client.submit(_identity, value, key=f"scip_gpu-shared-{uuid.uuid4().hex}", pure=False)
        self._shared[id(value)] = (value, fut)
        return fut

    def _killed(self, exc) -> WorkerKilled:
        """WorkerKilled from Dask's KilledWorker, with the nanny's reason when it had one."""
        from dask.utils import format_bytes

        last = getattr(exc, "last_worker", None)
        address = getattr(last, "address", None)
        limit = getattr(last, "memory_limit", None)
        times = getattr(exc, "allowed_failures", 0) + 1
        memory = None
        deadline = time.monotonic() + 0.5  # the nanny sends its event before it stops the worker
        while True:
            try:
                events = self.client.get_events("worker-restart-memory")
            except Exception:  # noqa: BLE001
                events = ()
            memory = next((m for _, m in reversed(list(events)) if m.get("worker") == address), None)
            if memory is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        ran = f"{times} worker process(es) died running it" if times > 1 else "its worker process died running it"
        if memory is not None:
            import dask

            frac = dask.config.get("distributed.worker.memory.terminate", 0.95) or 0.95
            return WorkerKilled(
                f"out of memory: {ran}; its nanny stopped the last one at {format_bytes(memory.get('rss', 0))}, "
                f"beyond {frac:.0%} of its memory limit of {format_bytes(limit) if limit else '?'} (give the "
                "workers more memory: cluster.memory_limit, or cluster.memory for slurm/pbs)", out_of_memory=True)
        return WorkerKilled(
            f"worker killed: {ran} (out of memory? the worker memory limit is "
            f"{format_bytes(limit) if limit else 'not set'}; a crash or a kill signal are other causes)")

    def _was_running(self, key: str, exc) -> bool:
        """Whether the task was the one running on the worker whose death made it fail (not
        merely queued there, nor one of several tasks running on a multi-threaded worker)."""
        address = getattr(getattr(exc, "last_worker", None), "address", None)
        try:
            started = {m.get("key") for _, m in self.client.get_events(STARTED_TOPIC)
                       if isinstance(m, dict) and m.get("worker") == address}
            removed = [m for _, m in self.client.get_events(address)
                       if isinstance(m, dict) and m.get("action") == "remove-worker"]
        except Exception:  # noqa: BLE001 - no way to tell: blame it, as Dask does
            return True
        if key not in started:
            return False
        held = {str(k) for k in removed[-1].get("processing-tasks", ())} if removed else {key}
        return started & held == {key}

    def _tries(self, key: str) -> list[str]:
        """The errors each try of the task ``key`` raised (``FAILED_TOPIC`` events)."""
        try:
            return [m.get("error") for _, m in self.client.get_events(FAILED_TOPIC)
                    if isinstance(m, dict) and m.get("key") == key]
        except Exception:  # noqa: BLE001 - unknown
            return []

    def _outcome(self, fut):
        """(result, exc, lost): a result, what the task raised, or why the future was lost."""
        from distributed.scheduler import KilledWorker

        status = fut.status
        try:
            if status == "finished":
                return fut.result(), None, None
            if status == "error":
                exc = fut.exception()
                if isinstance(exc, KilledWorker):
                    if not self._was_running(str(fut.key), exc):
                        return None, None, BYSTANDER
                    return None, self._killed(exc), None
                try:  # the worker's traceback, for run.log
                    exc = exc.with_traceback(fut.traceback())
                except Exception:  # noqa: BLE001
                    pass
                try:  # how each try failed (Dask ran it cluster.retries times more)
                    exc.scip_gpu_tries = self._tries(str(fut.key))
                except Exception:  # noqa: BLE001 - an exception without attributes: unknown
                    pass
                return None, exc, None
            fut.result()  # cancelled or lost: raises the reason
            return None, None, f"future {status}"
        except Exception as exc:  # noqa: BLE001 - fetching the outcome failed: the cluster's fault
            return None, None, f"{type(exc).__name__}: {exc}"

    def map_unordered(self, fn: Callable, items: Iterable, names: Iterable[str], priority: int = 0,
                      **shared) -> Iterator:
        from distributed import as_completed

        client = self.client
        pending: dict = {}  # future -> (item, name, attempt)
        ac = as_completed()

        def submit(item, name, attempt):
            # (the shared arguments travel as one dict: their names may be submit's own, like key)
            args = {k: v if _plain(v) else self._shared_future(v) for k, v in shared.items()}
            fut = client.submit(_tracked, fn, item, args, key=name if not attempt else f"{name}-retry{attempt}",
                                pure=False, resources=self.resources, retries=self.retries, priority=priority)
            pending[fut] = (item, name, attempt)
            ac.add(fut)

        losses: dict[str, dict] = {}
        try:
            for item, name in zip(items, names):
                submit(item, name, 0)
            while pending:
                batch = ac.next_batch(block=False)
                if not batch:
                    reason = None
                    if client.status in ("closing", "closed"):
                        reason = "the connection to the Dask scheduler was closed"
                    elif self.watch.expired():
                        reason = self.watch.message()
                    if reason is not None:  # what is still waiting cannot run
                        stuck = [item for item, _, _ in pending.values()]
                        _cancel(client, pending)
                        for item in stuck:
                            yield item, None, ClusterFailure(reason)
                        return
                    cond = getattr(ac, "thread_condition", None)
                    if cond is not None:
                        with cond:
                            cond.wait(timeout=0.2)
                    else:  # pragma: no cover
                        time.sleep(0.05)
                    continue
                for fut in batch:
                    item, name, attempt = pending.pop(fut)
                    result, exc, lost = self._outcome(fut)
                    fut.release()
                    if lost is None:
                        yield item, result, exc
                        continue
                    # lost: again, under a new key, within the budget of its kind of loss
                    kind = "bystander" if lost is BYSTANDER else "lost"
                    counts = losses.setdefault(name, {"bystander": 0, "lost": 0})
                    counts[kind] += 1
                    budget = BYSTANDER_RESUBMITS if kind == "bystander" else self.retries
                    why = ("it was queued on workers that died running other tasks" if kind == "bystander"
                           else f"it was lost: {lost}")
                    if counts[kind] <= budget and client.status == "running":
                        log.log(logging.INFO if kind == "bystander" else logging.WARNING,
                                "%s: %s; submitting it again (%d of %d)", name, why, counts[kind], budget)
                        try:
                            submit(item, name, attempt + 1)
                            continue
                        except Exception as sub:  # noqa: BLE001 - the connection broke meanwhile
                            if client.status == "running":
                                raise
                            why = f"{why}; submitting it again failed: {type(sub).__name__}: {sub}"
                    yield item, None, ClusterFailure(f"{name}: {why} ({counts[kind]} time(s))")
        finally:  # the caller stopped early (an error, Ctrl-C): what is still queued is dropped
            _cancel(client, pending)


def _cancel(client, pending: dict) -> None:
    if pending:
        try:
            client.cancel(list(pending))
        except Exception:  # noqa: BLE001 - the cluster is gone already
            pass
        pending.clear()


def worker_timeout(cluster_cfg, kind: str) -> float | None:
    """Seconds to wait for a worker when none is connected (``cluster.worker_timeout``; null:
    the type's default; 0 or less: indefinitely)."""
    value = getattr(cluster_cfg, "worker_timeout", None)
    if value is None:
        return DEFAULT_WORKER_TIMEOUT.get(kind, 120.0)
    return None if value <= 0 else float(value)


class StartCancelled(Exception):
    """The driver no longer needs the cluster (its run stopped) while it waited for a worker."""


def wait_for_workers(watch: _WorkerWatch, cancelled=None) -> None:
    """Return once a worker is connected; raise RunIncomplete after ``watch.timeout`` seconds,
    StartCancelled as soon as ``cancelled`` (a ``threading.Event``) is set."""
    from .errors import RunIncomplete

    while True:
        if cancelled is not None and cancelled.is_set():
            raise StartCancelled("the run stopped before a worker connected")
        if watch.expired(every=0.0):
            raise RunIncomplete(f"{watch.message()}; nothing was profiled")
        if watch.n:
            return
        if cancelled is not None:
            cancelled.wait(1.0)
        else:
            time.sleep(1.0)


def _dask_settings(cluster_cfg, kind: str, device: str = "cpu") -> dict:
    """Dask configuration while scip_gpu's cluster runs (its scheduler and the workers it starts)."""
    import dask

    # distributed's nannies set MALLOC_TRIM_THRESHOLD_=65536 before starting a worker, so every
    # freed batch buffer goes back to the kernel and is faulted in again for the next batch
    # (about a third more time per batch here): keep them in the process instead
    spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **_WORKER_ENV,
                 WORKER_DEVICE_ENV: device}
    settings = {"distributed.nanny.pre-spawn-environ": spawn_env,
                # workers we start ignore Ctrl-C (see dask_setup); the driver stops them
                "distributed.worker.preload": [*dask.config.get("distributed.worker.preload", []),
                                               __name__]}
    if not getattr(cluster_cfg, "worker_profiler", False):  # nannies pass the setting on to workers
        settings["distributed.worker.profile.enabled"] = False
    if kind in ("local", "local_cuda"):
        # a local cluster's nannies restart their workers; distributed's cluster object closes a
        # nanny for good when its worker is missing at the moment it looks, 15 s after a death:
        # a worker killed again and again (out of memory) is then never restarted
        settings["distributed.deploy.lost-worker-timeout"] = 30 * 86400
    allowed = getattr(cluster_cfg, "allowed_failures", None)
    if allowed is not None:  # schedulers we start: worker deaths a task may cause before it fails
        settings["distributed.scheduler.allowed-failures"] = int(allowed)
    return settings


#: cluster types whose Dask scheduler (and so its dashboard) scip_gpu starts in this process
_OWN_SCHEDULER = ("local", "local_cuda", "slurm", "pbs")


def check_dashboard(cluster_cfg) -> None:
    """``cluster.dashboard_address`` asks for the Dask dashboard, which needs bokeh: without it,
    ``ConfigError`` before anything is written (distributed itself would only warn, and the run
    go on without the dashboard that was asked for)."""
    import importlib.util

    address = getattr(cluster_cfg, "dashboard_address", None)
    kind = getattr(cluster_cfg.type, "value", cluster_cfg.type)
    if not address:
        return
    if kind not in _OWN_SCHEDULER:
        log.warning("cluster.dashboard_address=%s is ignored with cluster=%s (%s)", address, kind,
                    "no Dask cluster runs" if kind == "sync" else "the scheduler at cluster.address serves its own")
        return
    if importlib.util.find_spec("bokeh") is None:
        from .errors import ConfigError

        raise ConfigError(f"cluster.dashboard_address={address}: the Dask dashboard needs bokeh, which is not installed: "
                          "pip install 'scip_gpu[dashboard]' (or leave cluster.dashboard_address unset)")


@contextmanager
def executor(cluster_cfg, device: str = "cpu", cancelled=None):
    """Start the configured cluster (closed on exit) and yield an executor, once a worker is
    connected (waiting up to ``cluster.worker_timeout`` seconds, logging that it waits; while
    ``cancelled``, a ``threading.Event``, is not set).

    ``device="cuda"`` makes every partition task require the ``GPU`` resource.
    """
    kind = getattr(cluster_cfg.type, "value", cluster_cfg.type)
    cluster_cfg = with_partitions_in_flight(cluster_cfg)
    if kind == "sync":
        yield SyncExecutor(getattr(cluster_cfg, "threads_per_worker", 1))
        return
    import dask
    from distributed import Client

    from .errors import RunIncomplete

    # every partition task holds one unit of GPU; a worker scip_gpu starts for device=cuda
    # declares one per thread, so its threads run that many partitions at once, of which one
    # holds the device at a time (pipeline.device_lock) while the others read and write
    resources = {GPU_RESOURCE: 1} if device == "cuda" else None
    settings = _dask_settings(cluster_cfg, kind, device)
    allowed = getattr(cluster_cfg, "allowed_failures", None)
    timeout = worker_timeout(cluster_cfg, kind)
    with dask.config.set(settings), \
            _start_cluster(kind, cluster_cfg, device) as cluster:
        target = cluster if cluster is not None else cluster_cfg.address
        try:
            client = Client(target)
        except OSError as exc:
            raise RunIncomplete(f"cannot connect to the Dask scheduler at {cluster_cfg.address}: {exc}") from exc
        with client:
            where = f"the Dask scheduler at {cluster_cfg.address}" if kind == "address" else "the Dask scheduler"
            if kind == "address":
                log.info("connected to the Dask scheduler at %s", cluster_cfg.address)
                if allowed is not None:
                    log.warning("cluster.allowed_failures applies to schedulers scip_gpu starts; the one at %s "
                                "uses its own distributed.scheduler.allowed-failures", cluster_cfg.address)
            # (a scheduler serves HTTP on the dashboard's port even without bokeh, whose /status
            # is then a 404: a scheduler of this process has a dashboard only with bokeh here)
            has = "dashboard" in client.scheduler_info().get("services", {})
            if kind != "address":
                import importlib.util

                has = has and importlib.util.find_spec("bokeh") is not None
            link = client.dashboard_link if has else None
            log.info("Dask dashboard: %s", link or "not running (set cluster.dashboard_address, needs bokeh)")
            gone = _ended(cluster, kind) if cluster is not None else None
            wait_for_workers(_WorkerWatch(client, resources, timeout, where, gone), cancelled)
            yield DaskExecutor(client, resources, retries=getattr(cluster_cfg, "retries", 2),
                               worker_timeout=timeout, where=where, gone=gone)


class ExecutorInBackground:
    """``executor(cluster_cfg, device)`` entered and left in a thread of its own, so that the
    cluster starts while the driver lists the objects and opens the run folder, and shuts down
    while the driver writes the outputs that follow the partitions (starting and closing a local
    Dask cluster takes about a second each; a dask-cuda worker more). The Dask client and cluster
    are entered and left in that one thread, as they expect.

    ``get()`` waits for the executor (raising why the cluster could not start); ``close()``
    asks the thread to shut the cluster down (a start still waiting for its first worker, a
    batch job in a queue, stops waiting), and ``wait_closed()`` waits for it (raising why it
    could not). ``started_at``, ``ready_at`` and ``closed_at``: ``time.time()`` when it began to
    start, was up and was down.
    """

    def __init__(self, cluster_cfg, device: str = "cpu"):
        import threading
        from concurrent.futures import Future

        self._ready: Future = Future()
        self._closed: Future = Future()
        self._close = threading.Event()
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.closed_at: float | None = None
        if getattr(cluster_cfg.type, "value", cluster_cfg.type) in ("slurm", "pbs"):
            import_jobqueue()  # (here, in the calling thread: see there)
        self._thread = threading.Thread(target=self._main, args=(cluster_cfg, device), name="scip_gpu-cluster",
                                        daemon=True)
        self._thread.start()

    def _main(self, cluster_cfg, device: str) -> None:
        try:
            with executor(cluster_cfg, device, cancelled=self._close) as ex:
                self.ready_at = time.time()
                self._ready.set_result(ex)
                self._close.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            if not self._ready.done():
                self._ready.set_exception(exc)
            self._closed.set_exception(exc)
            return
        finally:
            self.closed_at = time.time()
        self._closed.set_result(None)

    def get(self):
        """The executor, once the cluster is up and a worker connected."""
        return self._ready.result()

    def close(self) -> None:
        """Shut the cluster down (in the background: ``wait_closed`` waits for it)."""
        self._close.set()

    def wait_closed(self) -> None:
        """Shut the cluster down and wait until it is; raises what closing it (or, when it never
        started, starting it) raised."""
        self._close.set()
        self._closed.result()


def buffer_log():
    """A handler on the ``scip_gpu`` logger that keeps its records (up to 10,000) until the
    run's log file exists (then they are written there); the caller removes it."""
    import logging.handlers

    handler = logging.handlers.BufferingHandler(10_000)
    logging.getLogger("scip_gpu").addHandler(handler)
    return handler


class EarlyCluster:
    """A command-line run's cluster, started as soon as its configuration is known: before the
    pipeline is imported and the objects are listed (``cli.task``), so that its worker processes
    start (importing the pipeline; on a GPU, CuPy, the CUDA context and the kernels' module)
    while the driver does its own start-up, instead of after it.

    Only where the cluster's settings do not depend on the data or on probing the machine: the
    ``local`` and ``local_cuda`` clusters, whose worker processes take seconds to start (not
    batch jobs, which a mistyped dataset path would submit and cancel; not a scheduler's
    ``address``, quick to connect to, and slow to give up on when unreachable; not ``sync``,
    which has nothing to start), on ``device=cpu`` or ``device=cuda`` (``auto``: cuda with
    ``local_cuda``, cpu where CuPy is not installed), and not when the run would stop before
    using a cluster for a reason known without the data (the configuration's values, the
    dashboard, no GPU seen for ``cuda``, a dataset path that does not exist): the run's error
    then comes at once, alone, not after a cluster was started and shut down.
    ``pipeline.run`` still resolves the device and the cluster's settings as without it, in the
    same order (its checks and errors are unchanged), then takes this cluster when its settings
    are the same (``take``) or shuts it down (``discard``). Log records from the start on are
    kept for run.log (``log``)."""

    def __init__(self, cluster_cfg, device: str):
        self.cluster_cfg, self.device = cluster_cfg, device
        self.log = buffer_log()
        try:
            self.cluster = ExecutorInBackground(cluster_cfg, device)
        except BaseException:
            logging.getLogger("scip_gpu").removeHandler(self.log)
            raise

    @classmethod
    def start(cls, cfg) -> "EarlyCluster | None":
        """The early cluster of a run's configuration ``cfg`` (``config.Config``), or None."""
        import importlib.util

        try:
            kind = getattr(cfg.cluster.type, "value", cfg.cluster.type)
            setting = getattr(cfg.device, "value", cfg.device)
            device = {"cpu": "cpu", "cuda": "cuda"}.get(setting)
            if setting == "auto":  # (what select_device will say, where that needs no probe of a GPU)
                device = ("cuda" if kind == "local_cuda" else
                          "cpu" if importlib.util.find_spec("cupy") is None else None)
            if kind not in ("local", "local_cuda") or device is None:
                return None
            # what the run would refuse before using a cluster it says at once, without one:
            # the configuration's own values, the dashboard, a GPU asked for where none is seen
            from .config import validate

            validate(cfg)
            check_dashboard(cfg.cluster)
            if device == "cuda" and gpu_count() == 0:
                return None
            path = getattr(cfg.dataset, "path", None)
            if path and "://" not in str(path) and not os.path.exists(os.path.expanduser(str(path))):
                return None
            return cls(with_partitions_in_flight(cfg.cluster), device)
        except Exception:  # noqa: BLE001 - the run starts its cluster itself (and says why it cannot)
            return None

    def take(self, cluster_cfg, device: str):
        """The started ``ExecutorInBackground`` when it is the one the run needs, else None
        (then it is shut down). The log handler stays: the caller removes it (``log``)."""
        if cluster_cfg == self.cluster_cfg and device == self.device:
            return self.cluster
        self._close()
        return None

    def discard(self) -> None:
        """Shut the cluster down and wait for it (what that raises is only logged); drop the log
        handler. For a run that stops before it took the cluster."""
        logging.getLogger("scip_gpu").removeHandler(self.log)
        self._close()

    def _close(self) -> None:
        try:
            self.cluster.wait_closed()
        except Exception as exc:  # noqa: BLE001 - nothing of the run depends on it
            log.debug("the cluster started early: %s", exc)


def _ended(cluster, kind: str) -> Callable[[], str | None]:
    """Why no worker of the cluster scip_gpu started can come any more, or None: its worker
    processes (nannies) or batch jobs have all ended (a job at its walltime is dropped by
    distributed 15 s after its workers left: distributed.deploy.lost-worker-timeout)."""
    what = "batch job" if kind in ("slurm", "pbs") else "worker process"

    def check() -> str | None:
        try:
            workers = getattr(cluster, "workers", None)
            if workers is None or len(workers):  # (not a cluster object that says; or some left)
                return None
        except Exception:  # noqa: BLE001
            return None
        return (f"every {what} of the cluster has ended{' (walltime?)' if what == 'batch job' else ''}, "
                "and none is left to run the rest")

    return check


def visible_gpus(cluster_cfg) -> list[str]:
    """The GPUs a ``local_cuda`` cluster uses, one worker each: ``cluster.cuda_visible_devices``,
    else the environment's ``CUDA_VISIBLE_DEVICES``, else every GPU the driver counts (CUDA
    ordinals or UUIDs, as CUDA_VISIBLE_DEVICES spells them)."""
    given = getattr(cluster_cfg, "cuda_visible_devices", None) or os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None and str(given).strip() != "":
        return [d.strip() for d in str(given).split(",") if d.strip()]
    return [str(i) for i in range(gpu_count())]


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """GPUs the CUDA driver sees (0 without CUDA or without NVML). Asks the driver through
    NVML (pynvml: dask-cuda's dependency); never initialises CUDA in this process. Asked once
    per process (a ``local_cuda`` run's start asked up to three times, each an NVML
    initialisation and shutdown)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML: no GPU we could start workers on
        return 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: partitions in flight per GPU worker when ``cluster.threads_per_worker`` is null: at least
#: one on the device and one read or written, at most 8 (host memory: each holds its objects'
#: pixels and feature table, ``pipeline.GPU_PARTITION_HOST_BUDGET``)
GPU_IN_FLIGHT = (2, 8)


def partitions_in_flight(cluster_cfg) -> int:
    """``cluster.threads_per_worker``, or where it is null: on ``local_cuda`` half the cores
    per GPU worker (within ``GPU_IN_FLIGHT``): a partition's host work (reading, validating,
    staging, writing its Parquet part) takes several times its device time on an H100
    (``benchmarks/bench_host_path.py``), so several partitions are read and written while one
    holds the device; elsewhere 1."""
    n = getattr(cluster_cfg, "threads_per_worker", None)
    if n:
        return max(1, int(n))
    if getattr(cluster_cfg.type, "value", cluster_cfg.type) != "local_cuda":
        return 1
    per_worker = usable_cores() // max(1, n_local_workers(cluster_cfg))
    lo, hi = GPU_IN_FLIGHT
    return int(min(hi, max(lo, per_worker // 2)))


def with_partitions_in_flight(cluster_cfg):
    """``cluster_cfg`` with ``threads_per_worker`` resolved (null: ``partitions_in_flight``)."""
    if getattr(cluster_cfg, "threads_per_worker", 1):
        return cluster_cfg
    return replace(cluster_cfg, threads_per_worker=partitions_in_flight(cluster_cfg))


def n_local_workers(cluster_cfg) -> int:
    """Worker processes a cluster of this process's own runs: ``n_workers``, else one per
    visible GPU (``local_cuda``), one per core (``local``), one (``sync``)."""
    kind = getattr(cluster_cfg.type, "value", cluster_cfg.type)
    if kind == "sync":
        return 1
    if cluster_cfg.n_workers:
        return int(cluster_cfg.n_workers)
    if kind == "local_cuda":
        return max(1, len(visible_gpus(cluster_cfg)))
    if kind in ("slurm", "pbs"):
        return max(1, cluster_cfg.jobs * (cluster_cfg.processes or 1))
    return os.cpu_count() or 1


def import_jobqueue():
    """Import dask-jobqueue (None when it is not installed) with the SIGINT handler left as it
    was. Its ``runner`` module sets a SIGINT handler when imported (dask-jobqueue 0.9), which
    only the main thread may do: imported first in the cluster's thread it raised ValueError, so
    ``cluster=slurm``/``pbs`` never started; and the handler it sets (``sys.exit``) would
    replace the run's own handling of Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        try:
            import dask_jobqueue  # (imported by the main thread already, or fails here)
        except ImportError:
            return None
        except ValueError as exc:  # (its signal handler, outside the main thread)
            from .errors import ConfigError

            raise ConfigError("cluster=slurm and cluster=pbs start from the main thread only (dask-jobqueue "
                              f"sets a signal handler when imported: {exc})") from exc
        return dask_jobqueue
    before = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    except ImportError:
        return None
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
    return dask_jobqueue


def make_jobqueue_cluster(kind: str, cfg):
    """A dask-jobqueue SLURMCluster or PBSCluster from the cluster configuration (no job is
    submitted until it is scaled)."""
    dask_jobqueue = import_jobqueue()
    if dask_jobqueue is None:
        from .errors import ConfigError

        raise ConfigError(f"cluster={kind} needs dask-jobqueue: pip install 'scip_gpu[cluster]'")
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    worker_extra = []
    if cfg.gpus_per_job:
        worker_extra = ["--resources", f"{GPU_RESOURCE}={cfg.gpus_per_job}"]
    prologue = list(cfg.job_prologue) + [f"export {k}={v}" for k, v in _WORKER_ENV.items()]
    optional = {"processes": cfg.processes, "queue": cfg.queue, "account": cfg.account,
                "local_directory": cfg.local_directory, "log_directory": cfg.log_directory}
    return cls(
        cores=cfg.cores,
        memory=cfg.memory,
        walltime=cfg.walltime,
        job_extra_directives=list(cfg.job_extra),
        job_script_prologue=prologue,
        worker_extra_args=worker_extra,
        dashboard_address=cfg.dashboard_address,
        silence_logs="error",
        **{k: v for k, v in optional.items() if v is not None},
    )


@contextmanager
def _scaled(cluster, jobs: int):
    with cluster:
        cluster.scale(jobs=jobs)
        log.info("submitted %d batch job(s); the first job script:\n%s", jobs, cluster.job_script())
        yield cluster


@contextmanager
def _no_cluster():
    yield None


#: Dask's own logging in local clusters: task failures and worker deaths are reported by scip_gpu
#: (one line each, the cause, the object; tracebacks in run.log), not once more by Dask.
_SILENCE = logging.CRITICAL


def _start_cluster(kind: str, cfg, device: str):
    cfg = with_partitions_in_flight(cfg)
    if kind in ("slurm", "pbs"):
        submit = {"slurm": "sbatch", "pbs": "qsub"}[kind]
        if shutil.which(submit) is None:  # (else every submission fails and the run waits for workers)
            from .errors import ConfigError

            raise ConfigError(f"cluster={kind} submits its workers with {submit}, which is not on PATH here: "
                              f"run on a {kind.upper()} login node, or choose cluster=local")
        return _scaled(make_jobqueue_cluster(kind, cfg), cfg.jobs)
    if kind == "address":
        if not cfg.address:
            from .errors import ConfigError

            raise ConfigError("cluster=address needs cluster.address (e.g. tcp://host:8786)")
        return _no_cluster()
    if kind == "local_cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            from .errors import ConfigError

            raise ConfigError("cluster=local_cuda needs dask-cuda: pip install 'scip_gpu[gpu]'") from exc
        visible = visible_gpus(cfg)
        log.info("starting a dask-cuda LocalCUDACluster: %s worker(s), one per visible GPU (%s), %d partitions in "
                 "flight each", cfg.n_workers or len(visible) or "?", ",".join(visible) or "CUDA_VISIBLE_DEVICES unset",
                 cfg.threads_per_worker)
        # LocalCUDACluster declares no resources by itself: declare the GPU resource explicitly,
        # one unit per thread (partitions in flight; one holds the device at a time)
        return LocalCUDACluster(
            n_workers=cfg.n_workers,
            CUDA_VISIBLE_DEVICES=cfg.cuda_visible_devices,  # (null: dask-cuda reads the environment's)
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_limit,
            rmm_pool_size=cfg.rmm_pool_size,
            dashboard_address=cfg.dashboard_address,
            silence_logs=_SILENCE,
            resources={GPU_RESOURCE: max(1, cfg.threads_per_worker)},
        )
    from distributed import LocalCluster

    n = cfg.n_workers or os.cpu_count() or 1
    log.info("starting a local Dask cluster: %d worker process(es) x %d thread(s)", n, cfg.threads_per_worker)
    extra = {}
    if device == "cuda":  # GPU work on a plain local cluster: each worker may use the GPU
        extra["resources"] = {GPU_RESOURCE: max(1, cfg.threads_per_worker)}
    return LocalCluster(
        n_workers=n,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        memory_limit=cfg.memory_limit,
        dashboard_address=cfg.dashboard_address,
        silence_logs=_SILENCE,
        env=_WORKER_ENV,
        **extra,
    )
