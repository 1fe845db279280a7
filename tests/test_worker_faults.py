"""Faults of the cluster are not faults of the objects: real worker deaths on real Dask clusters.

Workers are killed with SIGKILL from inside a task (as the kernel's out-of-memory killer or a
batch system's walltime would), or stopped by their nanny for exceeding a memory limit on a
large object; clusters lose every worker for good, or have none yet. Nothing may lose a good
object, mark a partition done that was not profiled, or exit 0 with objects missing; what could
not run is named, and ``resume=true`` finishes the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from .conftest import ROOT
from .test_cli import read_parquet, reference_run, run_cli

DEMO = ["+dataset=demo", "dataset.n_objects=24", "dataset.min_size=40", "dataset.max_size=48", "partition_size=4",
        "features=intensity"]
N = 24


def run_faulty(*args, cwd, plan: dict, timeout=300):
    """``python -m scip_gpu ARGS`` with the fault plan (tests/faults.py) on its workers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "SCIP_GPU_FAULTS": json.dumps(plan)}
    return subprocess.run([sys.executable, "-c", "from tests.faults import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory, DEMO)


def assert_complete(out, reference):
    df = read_parquet(out / "features.parquet")
    assert len(df) == N and (df["meta_status"] == "ok").all(), df[df["meta_status"] != "ok"]
    pd.testing.assert_frame_equal(df, reference)
    assert pd.read_csv(out / "errors.csv").empty
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["objects"] == N and prov["objects_ok"] == N


@pytest.mark.slow
def test_the_only_worker_killed_loses_nothing(tmp_path, reference):
    """One worker, killed once: the shared task arguments reach the restarted worker."""
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "run"
    res = run_faulty(*DEMO, "cluster=local", "cluster.n_workers=1", f"output={out}", cwd=tmp_path,
                     plan={"dir": str(marks), "first_deaths": 1})
    assert len(list(marks.iterdir())) == 1  # the worker did die
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert_complete(out, reference)


@pytest.mark.slow
def test_every_starting_worker_killed_in_turn_loses_nothing(tmp_path, reference):
    """Two workers, both killed (all the starting workers died once), then one of their
    replacements too: every partition is still profiled, none is marked done empty."""
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "run"
    res = run_faulty(*DEMO, "cluster=local", "cluster.n_workers=2", f"output={out}", cwd=tmp_path,
                     plan={"dir": str(marks), "first_deaths": 3})
    assert len(list(marks.iterdir())) == 3
    assert res.returncode == 0, res.stderr
    assert_complete(out, reference)


@pytest.mark.slow
def test_an_object_that_kills_every_worker_is_named_and_the_rest_profiled(tmp_path, reference):
    """Cell 5 kills its worker each time: it is found (its partition is run one object per task),
    reported in errors.csv with the cause, and its neighbours - queued on the same worker when
    it died - are profiled, not blamed."""
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "run"
    res = run_faulty(*DEMO, "cluster=local", "cluster.n_workers=1", "cluster.allowed_failures=0",
                     f"output={out}", cwd=tmp_path, plan={"dir": str(marks), "kill_ids": [5]})
    assert res.returncode == 0, res.stderr  # one bad object: a result with an error report, as for bad inputs
    assert "1 object(s) could not be profiled" in res.stderr
    errors = pd.read_csv(out / "errors.csv")
    assert errors["meta_index"].tolist() == [5], errors
    assert errors["stage"].tolist() == ["worker"]
    assert "demo cell 5" in errors["error"].iloc[0] and "worker" in errors["error"].iloc[0]
    assert "its worker process died running it" in errors["error"].iloc[0]
    df = read_parquet(out / "features.parquet")
    assert len(df) == N
    good = df["meta_index"] != 5
    flags = {c: reference[c].dtype for c in reference.columns if "_empty_" in c}  # (null in the error row)
    pd.testing.assert_frame_equal(df[good].astype(flags), reference[good])
    assert df.loc[~good, "meta_status"].tolist() == ["error"]
    assert df.loc[~good, [c for c in df if c.startswith("feat_")]].isna().all(axis=None)


@pytest.mark.slow
def test_object_over_the_memory_limit_is_named_and_its_neighbours_profiled(tmp_path):
    """A memory-limited worker is stopped by its nanny on a large object (running its partition,
    then running the object alone): the object is named with the cause (out of memory, the
    limit), the good objects queued beside it on that worker are profiled."""
    import tifffile

    from scip_gpu.demo import make_cell

    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        img, _ = make_cell(i, min_size=40, max_size=48)
        tifffile.imwrite(data / f"cell{i}.tif", img, photometric="minisblack")
    block = (np.random.default_rng(0).random((3, 500, 500)) * 1000).astype(np.uint16)
    # 216 MB of pixels, 864 MB as float64 in a batch: beyond the 800 MB limit at once
    tifffile.imwrite(data / "huge.tif", np.tile(block, (1, 12, 12)), photometric="minisblack")
    args = ["+dataset=multipage_tiff", f"dataset.path={data}", "dataset.glob=*.tif", "dataset.channels=[0,1,2]",
            "features=intensity", "partition_size=6"]
    out = tmp_path / "run"
    res = run_cli(*args, "cluster=local", "cluster.n_workers=1", "cluster.memory_limit=800MB",
                  "cluster.allowed_failures=0", f"output={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 1, errors
    msg = errors["error"].iloc[0]
    assert errors["object"].iloc[0].endswith("huge.tif") and "huge.tif" in msg
    assert "out of memory" in msg and "memory limit of 762.94 MiB" in msg, msg
    assert "its worker process died running it" in msg, msg
    df = read_parquet(out / "features.parquet")
    ok = df[~df["meta_path"].str.endswith("huge.tif")]
    assert len(ok) == 5 and (ok["meta_status"] == "ok").all()
    assert np.isfinite(ok[[c for c in df if c.startswith("feat_")]].to_numpy()).any(axis=1).all()


# ---------------------------------------------------------------------------------------------
# Clusters whose workers come late, or go for good (cluster=address; as slurm/pbs jobs would)


def _dask(*args):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def scheduler(tmp_path):
    """A Dask scheduler of its own process without workers; yields (address, start_worker)."""
    file = tmp_path / "scheduler.json"
    procs = [_dask("distributed.cli.dask_scheduler", "--scheduler-file", str(file), "--port", "0",
                   "--no-dashboard")]
    t0 = time.time()
    while not file.exists() or not file.read_text().strip():
        assert time.time() - t0 < 60, "the scheduler did not start"
        time.sleep(0.1)
    address = json.loads(file.read_text())["address"]

    def start_worker():  # no nanny: once killed, it is gone for good (a batch job at its walltime)
        p = _dask("distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard")
        procs.append(p)
        return p

    yield address, start_worker
    for p in reversed(procs):
        p.kill()
        p.wait()


def _wait_for(pred, timeout=120, proc=None):
    t0 = time.time()
    while not pred():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stderr.read()[-3000:]}")
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_address_cluster_waits_for_its_first_worker(tmp_path, scheduler, reference):
    address, start_worker = scheduler
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "scip_gpu", *DEMO, "cluster=address",
                             f"cluster.address={address}", f"output={out}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "run.log"
    _wait_for(lambda: log.exists() and "waiting for one" in log.read_text(), proc=proc)
    time.sleep(1.0)  # no worker for a while: still waiting, not failing
    assert proc.poll() is None
    start_worker()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "no Dask worker is connected" in stderr and "up to 86400 s" in stderr
    assert_complete(out, reference)


def test_address_cluster_without_workers_stops_after_the_timeout(tmp_path, scheduler):
    address, _ = scheduler
    out = tmp_path / "run"
    res = run_cli(*DEMO, "cluster=address", f"cluster.address={address}", "cluster.worker_timeout=2",
                  f"output={out}", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("scip_gpu:")]
    assert len(lines) == 1 and lines[0].startswith("scip_gpu: error: no Dask worker was connected"), res.stderr
    assert "for 2 s (cluster.worker_timeout)" in lines[0] and f"output={out} resume=true" in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_workers_gone_for_good_stop_the_run_nonzero_and_resume_finishes_it(tmp_path, scheduler, reference):
    """Every worker dies for good mid-run (batch jobs at their walltime): the run stops after
    cluster.worker_timeout with exit status 3 naming the partitions not run, marks none of them
    done, writes no final outputs; resume=true with new workers gives the full output."""
    address, start_worker = scheduler
    out = tmp_path / "run"
    worker = start_worker()
    plan = {"sleep": 0.3}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCIP_GPU_FAULTS": json.dumps(plan)}
    proc = subprocess.Popen([sys.executable, "-c", "from tests.faults import main; main()", *DEMO,
                             "cluster=address", f"cluster.address={address}", "cluster.worker_timeout=3",
                             f"output={out}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    _wait_for(lambda: len(list((out / "checkpoints").glob("part-*.json"))) >= 1, proc=proc)
    worker.kill()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    done = len(list((out / "checkpoints").glob("part-*.json")))
    assert 1 <= done < 6
    line = [ln for ln in stderr.splitlines() if ln.startswith("scip_gpu:")]
    assert len(line) == 1, stderr
    assert f"{6 - done} of 6 partition(s)" in line[0] and "could not be run" in line[0], line
    assert "no Dask worker was connected" in line[0] and "resume=true" in line[0]
    assert "Traceback" not in stderr
    assert not (out / "provenance.json").exists() and not (out / "features.h5ad").exists()
    for summary in (out / "checkpoints").glob("part-*.json"):  # what is marked done was profiled
        assert json.loads(summary.read_text())["n_ok"] == 4

    start_worker()
    res = run_faulty(*DEMO, "cluster=address", f"cluster.address={address}", f"output={out}", "resume=true",
                     cwd=tmp_path, plan={})
    assert res.returncode == 0, res.stderr
    assert f"{done} of 6 partition(s) already done" in res.stderr
    assert_complete(out, reference)


@pytest.mark.slow
def test_fields_killed_workers_lose_no_field_and_the_killer_field_is_named(tmp_path):
    """Fields of view: a field that kills its worker each time (its partition is run one field
    per task) is a field error with the cause; every other field's objects are profiled as in an
    undisturbed run, its partition neighbour's included."""
    from .fields_data import write_bbbc021_replica

    root = tmp_path / "bbbc021"
    write_bbbc021_replica(root)
    args = ["+dataset=bbbc021", f"dataset.path={root}", "dataset.glob=Week1_22123/*.tif", "illumination.method=null",
            "segmentation.export_labels=false", "features.families=[intensity]", "segmentation.fields_per_partition=2"]
    ref = run_cli(*args, "cluster=sync", f"output={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "run"
    res = run_faulty(*args, "cluster=local", "cluster.n_workers=1", "cluster.allowed_failures=0", f"output={out}",
                     cwd=tmp_path, plan={"dir": str(marks), "kill_ids": [2]})
    assert res.returncode == 0, res.stderr
    errors = pd.read_csv(out / "errors.csv")
    assert errors["meta_index"].tolist() == [2] and errors["stage"].tolist() == ["field"], errors
    assert "worker" in errors["error"].iloc[0]
    keys = ["meta_field", "meta_label"]
    want = read_parquet_by(tmp_path / "ref" / "features.parquet", keys)
    got = read_parquet_by(out / "features.parquet", keys)
    lost = want["meta_field_index"] == 2
    assert lost.sum() > 0 and set(got["meta_field"]) == set(want.loc[~lost, "meta_field"])
    pd.testing.assert_frame_equal(got, want[~lost].reset_index(drop=True))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["fields_with_errors"] == 1


def read_parquet_by(folder, keys):
    return pd.read_parquet(folder).sort_values(keys).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The watch on the workers (no cluster needed)


class _FakeClient:
    def __init__(self, workers):
        self.workers = workers

    def scheduler_info(self, n_workers=-1):
        return {"workers": self.workers}


def test_watch_waits_for_a_worker_then_gives_up_after_the_timeout(caplog):
    from scip_gpu.cluster import _WorkerWatch

    client = _FakeClient({})
    watch = _WorkerWatch(client, None, 0.3, "the Dask scheduler at tcp://x:1")
    with caplog.at_level("INFO", logger="scip_gpu"):
        assert not watch.expired(every=0)
        assert "waiting for one (up to 0 s" in caplog.text or "waiting for one" in caplog.text
        client.workers = {"tcp://w:1": {"resources": {}}}
        time.sleep(0.35)
        assert not watch.expired(every=0) and watch.since is None  # a worker came: the clock restarts
        client.workers = {}
        assert not watch.expired(every=0)
        time.sleep(0.35)
        assert watch.expired(every=0)
    assert watch.message() == "no Dask worker was connected to the Dask scheduler at tcp://x:1 for 0 s " \
        "(cluster.worker_timeout)"


def test_watch_counts_only_workers_with_the_resource():
    from scip_gpu.cluster import GPU_RESOURCE, _WorkerWatch

    client = _FakeClient({"tcp://cpu:1": {"resources": {}}, "tcp://gpu:1": {"resources": {GPU_RESOURCE: 1}}})
    assert _WorkerWatch(client, {GPU_RESOURCE: 1}, None, "x").count() == 1
    client.workers.pop("tcp://gpu:1")
    assert _WorkerWatch(client, {GPU_RESOURCE: 1}, None, "x").count() == 0
    assert _WorkerWatch(client, None, None, "x").count() == 1


def test_watch_gives_up_at_once_when_every_process_or_job_of_our_cluster_ended():
    from scip_gpu.cluster import _ended, _WorkerWatch

    class Cluster:
        workers = {"SLURMCluster-0": object()}

    cluster = Cluster()
    gone = _ended(cluster, "slurm")
    watch = _WorkerWatch(_FakeClient({}), None, 86400, "x", gone)
    assert not watch.expired(every=0)  # a job is still queued: wait
    cluster.workers = {}  # its worker left at the walltime, distributed dropped the job
    assert watch.expired(every=0)
    assert "every batch job of the cluster has ended (walltime?)" in watch.message()
    assert _ended(object(), "local")() is None  # no way to tell: wait


def test_local_nannies_are_never_closed_while_their_worker_restarts():
    """distributed closes a nanny whose worker is missing 15 s after a death (lost-worker-timeout);
    a worker killed again and again (out of memory) would never come back: local clusters wait
    far longer. Batch jobs keep the default: a job that ended is dropped, and so noticed."""
    from scip_gpu.cluster import _dask_settings
    from scip_gpu.config import ClusterConfig, ClusterType

    local = _dask_settings(ClusterConfig(type=ClusterType.local), "local")
    assert local["distributed.deploy.lost-worker-timeout"] >= 86400
    assert "scip_gpu.cluster" in local["distributed.worker.preload"]  # workers ignore Ctrl-C
    assert "distributed.scheduler.allowed-failures" not in local  # Dask's own unless configured
    slurm = _dask_settings(ClusterConfig(type=ClusterType.slurm, allowed_failures=1), "slurm")
    assert "distributed.deploy.lost-worker-timeout" not in slurm
    assert slurm["distributed.scheduler.allowed-failures"] == 1


@pytest.mark.slow
def test_a_cancelled_task_is_submitted_again_within_the_retries(tmp_path):
    """A task whose future the scheduler cancels (forgets) is submitted again under a new key;
    with no retries left it comes back as a ClusterFailure (never as a result)."""
    from distributed import Client, LocalCluster

    from scip_gpu.cluster import ClusterFailure, DaskExecutor

    from . import faults

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        again = {item: (res, exc) for item, res, exc in DaskExecutor(client, retries=1).map_unordered(
            faults.cancel_once, [1, 2], ["t-1", "t-2"], marks=str(tmp_path))}
        given_up = {item: (res, exc) for item, res, exc in DaskExecutor(client, retries=0).map_unordered(
            faults.cancel_once, [3, 4], ["t-3", "t-4"], marks=str(tmp_path))}
    assert again == {1: (10, None), 2: (20, None)}
    assert sorted(given_up) == [3, 4]
    for res, exc in given_up.values():
        assert res is None and isinstance(exc, ClusterFailure), exc
        assert "it was lost" in str(exc) and "cancel" in str(exc).lower()


def test_a_partition_failing_the_same_way_on_every_try_says_so(monkeypatch):
    """Each try of a task that raises is announced to the scheduler (``_tracked``); the driver
    reads the announcements of the task's key (``DaskExecutor._outcome``) and, when every try
    raised the same error, the partition's cause says that resume=true will likely fail the same
    way (no LocalCluster: the worker and the client are stand-ins)."""
    import distributed
    import distributed.utils

    from scip_gpu import cluster
    from scip_gpu.pipeline import failure_cause, raise_unfinished, unrecoverable
    from scip_gpu.errors import RunIncomplete

    events: list[tuple[float, dict]] = []

    class Scheduler:
        def log_event(self, topic, msg):
            events.append((time.time(), {"topic": topic, **msg}))

    class Worker:
        address, loop, scheduler = "tcp://w:1", None, Scheduler()

        def get_current_task(self):
            return "scip_gpu-partition-1-run"

    monkeypatch.setattr(distributed, "get_worker", lambda: Worker())
    monkeypatch.setattr(distributed.utils, "sync", lambda loop, fn, *a, callback_timeout=None, **kw: fn(*a, **kw))

    def bug(item):
        raise ValueError(f"no column {item!r}")

    for _ in range(3):  # the task and Dask's two retries
        with pytest.raises(ValueError):
            cluster._tracked(bug, "x", {})
    failed = [m for _, m in events if m["topic"] == cluster.FAILED_TOPIC]
    assert failed == [{"topic": cluster.FAILED_TOPIC, "key": "scip_gpu-partition-1-run",
                       "error": "ValueError: no column 'x'"}] * 3

    class Client:
        def get_events(self, topic):
            return [(t, m) for t, m in events if m["topic"] == topic]

    class Future:
        status, key = "error", "scip_gpu-partition-1-run"

        def exception(self):
            return ValueError("no column 'x'")

        def traceback(self):
            return None

    ex = cluster.DaskExecutor.__new__(cluster.DaskExecutor)
    ex.client = Client()
    res, exc, lost = ex._outcome(Future())
    assert res is None and lost is None and cluster.failed_tries(exc) == ["ValueError: no column 'x'"] * 3
    cause = unrecoverable(1, exc, 4, "object")
    assert cause == ("failed 3 times with the same error: ValueError: no column 'x'; resume=true will run it "
                     "again, but the same error is likely: please report it")
    with pytest.raises(RunIncomplete, match="partition 1: failed 3 times with the same error"):
        raise_unfinished({1: cause}, 6, 4, "objects")

    # tries that failed differently, one try (cluster=sync), a transient I/O error: no such words
    differ = ValueError("a")
    differ.scip_gpu_tries = ["ValueError: a", "OSError: b", "ValueError: a"]
    assert failure_cause(differ) == "ValueError: a"
    assert failure_cause(ValueError("a")) == "ValueError: a"
    stale = OSError(116, "Stale file handle")
    stale.scip_gpu_tries = ["OSError: [Errno 116] Stale file handle"] * 3
    assert "storage or the network" in failure_cause(stale) and "report" not in failure_cause(stale)
