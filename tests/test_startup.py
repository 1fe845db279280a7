"""A run's fixed costs (issue 11): the cluster started and shut down in the background, the run's
timeline, the quick exit of ``python -m scip_gpu``, workers importing the pipeline as they start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kw)


def test_exit_quickly_runs_the_exit_handlers_flushes_and_keeps_the_status():
    proc = _python("""
        import atexit
        from scip_gpu.__main__ import exit_quickly
        atexit.register(lambda: print("handler ran", flush=False))
        print("buffered", end=" ")
        exit_quickly(3)
        print("never")
    """)
    assert proc.returncode == 3
    assert proc.stdout == "buffered handler ran\n"


def test_exit_quickly_with_a_message_prints_it_with_status_1():
    proc = _python("from scip_gpu.__main__ import exit_quickly; exit_quickly('no way')")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "no way"


def test_exit_quickly_waits_for_a_working_thread(tmp_path):
    """A thread that is not a daemon is still working: the exit is the ordinary one, which waits."""
    done = tmp_path / "done"
    proc = _python(f"""
        import threading, time
        from pathlib import Path
        from scip_gpu.__main__ import exit_quickly
        def work():
            time.sleep(0.5)
            Path({str(done)!r}).write_text("yes")
        threading.Thread(target=work).start()
        exit_quickly(0)
    """)
    assert proc.returncode == 0, proc.stderr
    assert done.read_text() == "yes"


def test_the_command_line_exits_with_its_status():
    ok = subprocess.run([sys.executable, "-m", "scip_gpu", "--version"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("scip_gpu ")
    bad = subprocess.run([sys.executable, "-m", "scip_gpu", "no_such_key=1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown configuration key 'no_such_key'" in bad.stderr


def test_executor_in_background_sync():
    from scip_gpu.cluster import ExecutorInBackground, SyncExecutor
    from scip_gpu.config import ClusterConfig, ClusterType

    t0 = time.time()
    cluster = ExecutorInBackground(ClusterConfig(type=ClusterType.sync, threads_per_worker=2))
    ex = cluster.get()
    assert isinstance(ex, SyncExecutor) and ex.threads == 2
    assert t0 <= cluster.ready_at
    cluster.close()
    cluster.wait_closed()
    assert cluster.ready_at <= cluster.closed_at
    cluster.wait_closed()  # (again: nothing more to do)


def test_executor_in_background_reports_why_the_cluster_could_not_start(monkeypatch):
    """The error of the start (here: no dask-cuda for cluster=local_cuda) is raised by ``get``,
    in the driver's thread, as ``executor`` raised it when it was entered there."""
    from scip_gpu.cluster import ExecutorInBackground
    from scip_gpu.config import ClusterConfig, ClusterType
    from scip_gpu.errors import ConfigError

    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # (import fails)
    cluster = ExecutorInBackground(ClusterConfig(type=ClusterType.local_cuda), "cuda")
    with pytest.raises(ConfigError, match="dask-cuda"):
        cluster.get()
    with pytest.raises(ConfigError):
        cluster.wait_closed()


def test_executor_in_background_local_cluster_runs_tasks_then_closes():
    from scip_gpu.cluster import ExecutorInBackground
    from scip_gpu.config import ClusterConfig, ClusterType

    cluster = ExecutorInBackground(ClusterConfig(type=ClusterType.local, n_workers=1, threads_per_worker=1))
    try:
        ex = cluster.get()
        got = sorted(r for _, r, err in ex.map_unordered(_square, [(i, i) for i in range(3)],
                                                         [f"t{i}" for i in range(3)]) if err is None)
        assert got == [0, 1, 4]
    finally:
        cluster.close()
        cluster.wait_closed()
    assert cluster.ready_at < cluster.closed_at
    assert not cluster._thread.is_alive()


def _square(task):
    return task[1] ** 2


def test_workers_import_the_pipeline_as_they_start():
    """``dask_setup`` (the preload of the workers scip_gpu starts) imports the partition task's
    module and, on a CPU worker, sets numba up in the background (the validation's kernel loaded
    from numba's cache, as the first partition would); the device reaches the workers through
    the nannies' environment."""
    pytest.importorskip("numba")
    proc = _python("""
        import sys, threading
        from scip_gpu.cluster import dask_setup
        assert "scip_gpu.pipeline" not in sys.modules and "numba" not in sys.modules
        dask_setup(None)
        warm = [t for t in threading.enumerate() if t.name == "scip_gpu-numba-warm"]
        for t in warm:
            t.join(120)
        from scip_gpu import _numba_kernels
        print("scip_gpu.pipeline" in sys.modules, "cupy" in sys.modules, len(warm),
              len(_numba_kernels.image_stats.signatures))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "1", "1"]
    from scip_gpu.cluster import WORKER_DEVICE_ENV, _dask_settings
    from scip_gpu.config import ClusterConfig, ClusterType

    env = _dask_settings(ClusterConfig(type=ClusterType.local_cuda), "local_cuda", "cuda")[
        "distributed.nanny.pre-spawn-environ"]
    assert env[WORKER_DEVICE_ENV] == "cuda"


def test_a_run_records_its_timeline(tmp_path, caplog):
    """provenance.json's ``timeline``: seconds from the process's start to each step of the run,
    in the order they happen; run.log says it too."""
    from scip_gpu.api import compose
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    cfg, _ = compose(None, ("+dataset=demo", "dataset.n_objects=24", "partition_size=8", "cluster=sync",
                            f"output={tmp_path / 'run'}", "export.report=false"))
    config, resolved = to_config(cfg)
    caplog.set_level("INFO", logger="scip_gpu")  # (as the command line logs)
    t_before = time.time()
    summary = run(config, resolved)
    prov = json.loads((summary.output / "provenance.json").read_text())
    tl = prov["timeline"]
    order = ["run_started", "cluster_ready", "first_partition", "partitions_done", "outputs_written"]
    assert [k for k in tl if k in order] == order and "cluster_closed" in tl
    values = [tl[k] for k in order]
    assert values == sorted(values)
    assert tl["run_started"] <= tl["cluster_started"] <= tl["cluster_ready"]  # (no early start: cluster=sync)
    assert tl["cluster_closed"] >= tl["partitions_done"]
    from scip_gpu.pipeline import process_started

    assert 0 < tl["run_started"] <= t_before - process_started() + 1.0
    assert "timeline (s from the process's start): run started" in (summary.output / "run.log").read_text()


def test_bench_startup_splits_a_run_log_into_phases(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_startup import phases
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    log = tmp_path / "run.log"
    log.write_text(
        "2026-11-28 04:00:02,000 INFO scip_gpu: scip_gpu run started at 2026-11-28T04:00:02+00:00; output x\n"
        "2026-11-28 04:00:03,500 INFO scip_gpu: running 1 partition(s) of up to 8 objects on Dask\n"
        "2026-11-28 04:00:05,000 INFO scip_gpu: progress: 4/8 objects (50%)\n"
        "2026-11-28 04:00:06,000 INFO scip_gpu: progress: 8/8 objects (100%)\n"
        "2026-11-28 04:00:06,250 INFO scip_gpu: worker x: 8 objects\n"
        "2026-11-28 04:00:07,000 INFO scip_gpu: features.h5ad written to x (0.7 s)\n"
        "2026-11-28 04:00:07,500 INFO scip_gpu: report.html written to x (0.5 s)\n")
    from datetime import datetime

    t = datetime(2026, 11, 28, 4, 0, 0).timestamp()
    assert phases(log, t, t + 8.0) == {"start": 2.0, "setup": 1.5, "partitions": 2.5, "close": 0.25,
                                      "outputs": 1.25, "exit": 0.5}


def test_exit_is_the_ordinary_one_under_a_profiler_or_when_asked(tmp_path):
    """cProfile writes its file after the program: the quick exit would lose it."""
    script = tmp_path / "prog.py"
    script.write_text("from scip_gpu.__main__ import exit_quickly\nexit_quickly(0)\n")
    out = tmp_path / "prog.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    proc = _python("""
        import atexit, sys
        from scip_gpu.__main__ import exit_quickly
        sys.exit = lambda code: print("ordinary", code) or exit(code)
        exit_quickly(4)
    """, env={**__import__("os").environ, "SCIP_GPU_QUICK_EXIT": "0"})
    assert proc.returncode == 4 and proc.stdout.strip() == "ordinary 4"


def test_gpu_workers_create_their_context_and_load_the_kernels_as_they_start(monkeypatch):
    """On a GPU worker ``dask_setup`` also synchronises the device (creating the CUDA context)
    and loads the kernels' module (the stand-in CuPy and module here)."""
    import signal

    from scip_gpu import cluster, gpu_kernels
    from tests import fake_cupy

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # (this process keeps its Ctrl-C)
    cupy = fake_cupy.install(monkeypatch)
    calls = []
    monkeypatch.setattr(cupy.cuda.Device, "synchronize", lambda self: calls.append("synchronize"), raising=False)

    class Module:
        def get_function(self, name):
            calls.append(("get_function", name))

    monkeypatch.setattr(gpu_kernels, "module", lambda: Module())
    monkeypatch.setenv(cluster.WORKER_DEVICE_ENV, "cuda")
    cluster.dask_setup(None)
    assert calls == ["synchronize", ("get_function", gpu_kernels.kernel_names()[0])]
    calls.clear()
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    cluster.dask_setup(None)
    assert calls == ["synchronize"]


def test_waiting_for_a_worker_stops_when_the_run_no_longer_needs_the_cluster():
    """A run that stops during its set-up (a bad output folder, Ctrl-C) closes the cluster it
    started in the background at once, even while that cluster still waits for its first worker
    (a batch job in a queue waits up to a day)."""
    import threading

    from scip_gpu.cluster import StartCancelled, wait_for_workers

    class NoWorkerYet:
        n = 0

        def expired(self, every=0.0):
            return False

    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    t0 = time.monotonic()
    with pytest.raises(StartCancelled):
        wait_for_workers(NoWorkerYet(), cancelled)
    assert time.monotonic() - t0 < 1.0


def test_a_run_that_fails_its_set_up_closes_the_cluster_it_started(tmp_path):
    """The cluster starts in the background before the run folder is opened: when opening it
    fails (here: the folder exists), the error is the folder's, and no worker process is left."""
    from scip_gpu.api import compose
    from scip_gpu.cli import to_config
    from scip_gpu.errors import OutputError
    from scip_gpu.pipeline import run

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.csv").write_text("someone's\n")
    cfg, _ = compose(None, ("+dataset=demo", "dataset.n_objects=8", "cluster=local", "cluster.n_workers=1",
                            f"output={taken}"))
    config, resolved = to_config(cfg)
    before = _workers_left(set(), wait=0)
    with pytest.raises(OutputError, match="already exists"):
        run(config, resolved)
    assert (taken / "results.csv").read_text() == "someone's\n" and len(list(taken.iterdir())) == 1
    assert not _workers_left(before)


def _workers_left(before: set, wait: float = 10.0) -> set:
    """Worker processes of this process started since ``before`` that are still there after
    up to ``wait`` seconds (multiprocessing's resource tracker stays for the process's life)."""
    import psutil

    def workers():
        out = set()
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                    out.add(p.pid)
            except psutil.Error:  # (ended meanwhile)
                pass
        return out

    deadline = time.monotonic() + wait
    while True:
        left = workers() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _config(*overrides):
    from scip_gpu.api import compose
    from scip_gpu.cli import to_config

    cfg, _ = compose(None, overrides)
    return to_config(cfg)


def test_auto_device_starts_no_cluster_early_where_cupy_could_find_a_gpu(monkeypatch):
    """``device=auto`` with a local cluster needs the GPU probe of ``select_device`` where CuPy
    is installed: no early start there."""
    import importlib.util

    from scip_gpu import cluster as cluster_mod

    monkeypatch.setattr(cluster_mod, "ExecutorInBackground", lambda cfg, dev: "started")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # (as if CuPy were installed)
                        lambda name, *a: object() if name == "cupy" else find_spec(name, *a))
    config, _ = _config("+dataset=demo", "cluster=local", "device=auto")
    assert cluster_mod.EarlyCluster.start(config) is None


def test_no_early_cluster_where_the_run_stops_before_using_one(monkeypatch, capsys):
    """A value the configuration refuses, or device=cuda where no GPU is seen: the run's error
    at once and alone, no cluster started first."""
    from scip_gpu import cluster as cluster_mod

    monkeypatch.setattr(cluster_mod, "ExecutorInBackground", lambda cfg, dev: "started")
    monkeypatch.setattr(cluster_mod, "gpu_count", lambda: 0)
    for overrides in (("+dataset=demo", "cluster=local", "device=cpu", "dataset.n_channels=0"),
                      ("+dataset=demo", "cluster=local", "device=cuda"),
                      ("+dataset=demo", "cluster=local_cuda", "device=auto")):
        config, _ = _config(*overrides)
        assert cluster_mod.EarlyCluster.start(config) is None, overrides
    monkeypatch.setattr(cluster_mod, "gpu_count", lambda: 1)
    config, _ = _config("+dataset=demo", "cluster=local_cuda", "device=cuda")
    early = cluster_mod.EarlyCluster.start(config)
    assert early is not None and early.cluster == "started"
    import logging

    logging.getLogger("scip_gpu").removeHandler(early.log)


def test_early_cluster_never_fails_the_command_line(monkeypatch):
    """Whatever goes wrong while deciding or starting it (here: a ``cupy`` module without a
    spec, as a stand-in's, on which ``find_spec`` raises; a cluster that cannot be created), the
    run goes on without an early cluster."""
    import sys
    import types

    from scip_gpu import cluster as cluster_mod

    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    config, _ = _config("+dataset=demo", "cluster=local", "device=auto")
    assert cluster_mod.EarlyCluster.start(config) is None

    def refuse(cfg, dev):
        raise RuntimeError("no threads left")

    monkeypatch.setattr(cluster_mod, "ExecutorInBackground", refuse)
    import logging

    handlers = list(logging.getLogger("scip_gpu").handlers)
    config, _ = _config("+dataset=demo", "cluster=local", "device=cpu")
    assert cluster_mod.EarlyCluster.start(config) is None
    assert logging.getLogger("scip_gpu").handlers == handlers  # (its log buffer removed again)


@pytest.mark.parametrize("cluster, device, started", [
    ("sync", "cpu", None), ("local", "cpu", "cpu"), ("local", "cuda", "cuda"), ("local", "auto", "cpu"),
    ("local_cuda", "auto", "cuda"), ("local_cuda", "cuda", "cuda"), ("slurm", "cpu", None), ("pbs", "cuda", None),
    ("address", "cpu", None),
])
def test_the_command_line_starts_its_cluster_early_where_its_settings_are_known(monkeypatch, cluster, device,
                                                                                started):
    """Only a cluster whose settings need neither the data nor a probe of the machine starts
    before the pipeline is imported; with the cluster settings ``run`` itself would use."""
    import logging

    from scip_gpu import cluster as cluster_mod

    import importlib.util

    seen = []
    monkeypatch.setattr(cluster_mod, "ExecutorInBackground", lambda cfg, dev: seen.append((cfg, dev)) or "started")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else find_spec(name, *a))
    monkeypatch.setattr(cluster_mod, "gpu_count", lambda: 1)  # (one GPU seen: cuda clusters start early)
    config, _ = _config("+dataset=demo", f"cluster={cluster}", f"device={device}",
                        *(["cluster.address=tcp://127.0.0.1:1"] if cluster == "address" else []))
    early = cluster_mod.EarlyCluster.start(config)
    try:
        if started is None:
            assert early is None and not seen
            return
        assert early.cluster == "started" and seen == [(cluster_mod.with_partitions_in_flight(config.cluster), started)]
        assert early.log in logging.getLogger("scip_gpu").handlers
    finally:
        if early is not None:
            logging.getLogger("scip_gpu").removeHandler(early.log)


def test_a_run_takes_the_cluster_started_early(tmp_path, caplog):
    """The run uses the cluster the command line started (before the run began), keeps what was
    logged meanwhile in run.log, and shuts it down at the end."""
    import logging

    caplog.set_level("INFO", logger="scip_gpu")  # (as the command line logs)
    from scip_gpu.cluster import EarlyCluster
    from scip_gpu.pipeline import run

    config, resolved = _config("+dataset=demo", "dataset.n_objects=8", "cluster=local", "cluster.n_workers=1",
                               "device=cpu", f"output={tmp_path / 'run'}", "export.report=false")
    before = _workers_left(set(), wait=0)
    early = EarlyCluster.start(config)
    summary = run(config, resolved, early=early)
    assert summary.n_ok == 8
    tl = json.loads((summary.output / "provenance.json").read_text())["timeline"]
    assert tl["cluster_started"] <= tl["run_started"] < tl["first_partition"]  # (ms: may be the same here)
    from scip_gpu.pipeline import process_started

    assert abs(tl["cluster_ready"] - (early.cluster.ready_at - process_started())) < 0.002  # (this cluster)
    assert early.cluster.closed_at is not None and not early.cluster._thread.is_alive()
    assert early.log not in logging.getLogger("scip_gpu").handlers
    log_text = (summary.output / "run.log").read_text()  # (the cluster's own lines, whenever they came)
    assert "starting a local Dask cluster" in log_text and log_text.count("scip_gpu run started") == 1
    assert not _workers_left(before)


def test_no_early_cluster_for_a_dataset_path_that_does_not_exist(tmp_path, monkeypatch):
    """A mistyped path: no cluster is started (and shut down) before the run says so."""
    from scip_gpu import cluster as cluster_mod

    monkeypatch.setattr(cluster_mod, "ExecutorInBackground", lambda cfg, dev: "started")
    (tmp_path / "here.zarr").mkdir()
    for path, started in [(tmp_path / "missing.zarr", False), (tmp_path / "here.zarr", True),
                          ("s3://bucket/cells.zarr", True)]:
        config, _ = _config("+dataset=zarr", f"dataset.path={path}", "cluster=local", "device=cpu")
        early = cluster_mod.EarlyCluster.start(config)
        assert (early is not None) == started, path
        if early is not None:
            import logging

            logging.getLogger("scip_gpu").removeHandler(early.log)


def test_a_run_that_stops_before_taking_the_early_cluster_shuts_it_down(tmp_path):
    """A dataset that cannot be read (here: a folder that is no zarr store): the run's own
    error, as without an early start, and no worker process of the early cluster left."""
    import logging

    from scip_gpu.cluster import EarlyCluster
    from scip_gpu.errors import ScipGpuError
    from scip_gpu.pipeline import run

    (tmp_path / "empty.zarr").mkdir()
    config, resolved = _config("+dataset=zarr", f"dataset.path={tmp_path / 'empty.zarr'}", "cluster=local",
                               "cluster.n_workers=1", "device=cpu", f"output={tmp_path / 'run'}")
    before = _workers_left(set(), wait=0)
    early = EarlyCluster.start(config)
    assert early is not None
    with pytest.raises(ScipGpuError, match="empty.zarr"):
        run(config, resolved, early=early)
    assert early.cluster.closed_at is not None
    assert early.log not in logging.getLogger("scip_gpu").handlers
    assert not (tmp_path / "run").exists()
    assert not _workers_left(before)


def test_a_run_whose_cluster_settings_differ_starts_its_own(tmp_path):
    """An early cluster that is not the one the run needs (here: two workers where the run asks
    for one) is shut down and the run's own cluster started."""
    from scip_gpu.cluster import EarlyCluster, with_partitions_in_flight
    from scip_gpu.pipeline import run

    config, resolved = _config("+dataset=demo", "dataset.n_objects=8", "cluster=local", "cluster.n_workers=1",
                               "device=cpu", f"output={tmp_path / 'run'}", "export.report=false")
    from dataclasses import replace

    early = EarlyCluster(with_partitions_in_flight(replace(config.cluster, n_workers=2)), "cpu")
    summary = run(config, resolved, early=early)
    assert summary.n_ok == 8
    assert early.cluster.closed_at is not None
    prov = json.loads((summary.output / "provenance.json").read_text())
    assert "1 worker" in prov["cluster"] and early.cluster.closed_at <= time.time()
