"""Host and device work overlapped: partitions in flight in one process, threads reading a
partition, device-aware partition sizes, one worker per visible GPU, per-worker rates."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from scip_gpu import cluster, pipeline
from scip_gpu.cli import to_config
from scip_gpu.cluster import SyncExecutor, n_local_workers, visible_gpus
from scip_gpu.config import ClusterConfig, ClusterType
from scip_gpu.errors import ObjectError
from scip_gpu.io import make_source
from scip_gpu.profile import NO_TIMER, batch_bytes_per_object, build_plan

from .test_config import _compose

SMALL = ["+dataset=demo", "dataset.min_size=40", "dataset.max_size=44", "features=intensity"]


class _Spans:
    """Intervals during which something ran, and the most that ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = self.most = 0
        self.spans: list[tuple[float, float]] = []

    def __call__(self, seconds: float):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        t0 = time.perf_counter()
        time.sleep(seconds)
        with self.lock:
            self.active -= 1
            self.spans.append((t0, time.perf_counter()))


def test_sync_executor_keeps_at_most_threads_in_flight_and_reports_each_error():
    spans = _Spans()

    def task(i):
        spans(0.02)
        if i == 3:
            raise ValueError("three")
        return i * 10

    got = {item: (res, exc) for item, res, exc in SyncExecutor(2).map_unordered(task, range(7), [""] * 7)}
    assert sorted(got) == list(range(7))
    assert all(got[i][0] == i * 10 for i in range(7) if i != 3)
    assert got[3][0] is None and str(got[3][1]) == "three"
    assert spans.most == 2  # overlapped, and bounded: never more than 2 tasks held in memory


def test_sync_executor_stops_starting_tasks_when_the_caller_stops():
    started = []

    def task(i):
        started.append(i)
        time.sleep(0.01)
        return i

    gen = SyncExecutor(2).map_unordered(task, range(100), [""] * 100)
    next(gen)
    gen.close()  # (an error or Ctrl-C in the driver): the running tasks finish, no new one starts
    assert len(started) <= 4


def _setup(n=24, extra=()):
    cfg, _ = to_config(_compose([*SMALL, f"dataset.n_objects={n}", *extra]))
    src = make_source(cfg.dataset)
    objs = src.objects()
    objs.insert(0, "meta_index", np.arange(len(objs)))
    plan = build_plan(cfg, src.channel_names(objs))
    return cfg, src, objs, plan


class _Broken:
    """The demo source with object 5 unreadable and object 9 blank (fails validation)."""

    def __init__(self, src):
        self.src = src

    def load(self, rows):
        out = self.src.load(rows)
        for k, m in enumerate(rows["meta_id"]):
            if m == 5:
                out[k] = ObjectError("demo cell 5: unreadable", "load")
            if m == 9:
                out[k] = np.zeros_like(out[k])
        return out

    def describe(self, row):
        return self.src.describe(row)


def test_threads_read_a_partition_as_one_call_does():
    _, src, objs, plan = _setup()
    src = _Broken(src)
    one = pipeline.load_partition(src, objs, 3, plan.min_side, threads=1)
    three = pipeline.load_partition(src, objs, 3, plan.min_side, threads=3)
    assert len(three) == len(one) == 24
    for a, b in zip(one, three):
        if isinstance(a, tuple):  # (error, stage)
            assert type(a[0]) is type(b[0]) and str(a[0]) == str(b[0]) and a[1] == b[1]
        else:
            np.testing.assert_array_equal(a, b)
    assert [k for k, a in enumerate(three) if isinstance(a, tuple)] == [5, 9]
    assert three[5][1] == "load" and three[9][1] == "validate"


def test_partitions_in_flight_overlap_reading_with_the_device_stage_one_at_a_time(tmp_path, monkeypatch):
    """Two partitions in one process: one reads while the other holds the device; the device
    stage never runs twice at once; the parts are those of partitions run one after the other."""
    cfg, src, objs, plan = _setup(8, ["masks=none"])
    from scip_gpu.export import arrow_schema

    schema = arrow_schema(objs[[c for c in objs.columns if c.startswith("meta_")]], plan.columns)
    tasks = pipeline.partition_tasks(objs, 2)
    ref = tmp_path / "ref"
    ref.mkdir()
    for t in tasks:
        pipeline.process_partition(t, source=src, plan=plan, folder=str(ref), schema=schema, device="cpu")

    device, reading = _Spans(), _Spans()
    real_profile, real_load = pipeline.profile_batch, type(src).load

    def slow_profile(batch, plan, timer=NO_TIMER):
        device(0.05)
        return real_profile(batch, plan, timer)

    def slow_load(self, rows):
        reading(0.05)
        return real_load(self, rows)

    monkeypatch.setattr(pipeline, "profile_batch", slow_profile)
    monkeypatch.setattr(type(src), "load", slow_load)
    out = tmp_path / "out"
    out.mkdir()
    results = [res for _, res, exc in SyncExecutor(2).map_unordered(
        pipeline.process_partition, tasks, [""] * 4, source=src, plan=plan, folder=str(out), schema=schema,
        device="cpu")]
    assert len(results) == 4 and all(r.n_ok == 2 for r in results)
    assert device.most == 1  # one partition on the device at a time
    assert reading.most == 2 or any(r0 < d1 and d0 < r1 for r0, r1 in reading.spans for d0, d1 in device.spans)
    assert all(r.device_seconds >= 0.05 and r.worker for r in results)
    for i in range(4):
        name = f"part-{i:05d}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(ref / name))


def test_partition_size_on_a_gpu_from_free_memory_and_object_size():
    cfg, src, objs, _ = _setup(4, ["device=cuda", "cluster=local_cuda", "cluster.n_workers=1",
                                   "cluster.threads_per_worker=2"])
    sample = src.load(objs.iloc[:1])[0]  # (3, h, w) uint16
    plan = build_plan(cfg, ["a", "b", "c"])
    shape = tuple(int(v) + plan.margin for v in sample.shape[1:])
    per = batch_bytes_per_object(3, shape, plan.n_features, 2)
    free = 1000 * per * 4  # a quarter of it holds 1000 objects
    # batch 1000: ~4 partitions per GPU, between one batch and 4 batches
    assert pipeline.auto_partition_size(cfg, 100_000, sample, free) == 4000
    assert pipeline.auto_partition_size(cfg, 8_000, sample, free) == 2000
    assert pipeline.auto_partition_size(cfg, 100, sample, free) == 1000  # one batch (a single partition)
    # a smaller device: smaller batches and partitions
    assert pipeline.auto_partition_size(cfg, 100_000, sample, free // 10) == 400
    # without the device's free memory: the largest batch
    assert pipeline.auto_partition_size(cfg, 100_000, sample, None) == 4 * pipeline.GPU_BATCH_MAX
    # host memory: 2 partitions in flight of big objects stay within the budget
    big = np.zeros((12, 512, 512), np.uint16)
    size = pipeline.auto_partition_size(cfg, 100_000, big, 2**40)
    assert size * 2 * (big.nbytes + 8 * build_plan(cfg, list("abcdefghijkl")).n_features) \
        <= pipeline.GPU_PARTITION_HOST_BUDGET
    # two GPUs: about four partitions each
    two = replace(cfg, cluster=replace(cfg.cluster, n_workers=2))
    assert pipeline.auto_partition_size(two, 8_000, sample, free) == 1000
    assert pipeline.auto_partition_size(replace(cfg, partition_size=77), 8_000, sample, free) == 77


def test_local_cuda_has_one_worker_per_visible_gpu(monkeypatch):
    c = ClusterConfig(type=ClusterType.local_cuda)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus(c) == ["2", "3"] and n_local_workers(c) == 2
    assert visible_gpus(replace(c, cuda_visible_devices="1")) == ["1"]
    assert n_local_workers(replace(c, cuda_visible_devices="1")) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f6a,GPU-11c2,GPU-77d0")
    assert n_local_workers(c) == 3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(cluster, "gpu_count", lambda: 4)  # every GPU the driver counts
    assert visible_gpus(c) == ["0", "1", "2", "3"] and n_local_workers(c) == 4
    assert n_local_workers(replace(c, n_workers=2)) == 2
    assert n_local_workers(ClusterConfig(type=ClusterType.sync, threads_per_worker=2)) == 1


def test_worker_stats_rates_and_busy_share():
    R = pipeline.PartitionResult
    results = [R(0, 100, 100, seconds=2.0, worker="a", started=1000.0, device_seconds=1.5,
                 phases={"read": 0.25, "device": 1.5}),
               R(1, 100, 99, seconds=2.0, worker="a", started=1002.0, device_seconds=1.5,
                 phases={"read": 0.5, "device": 1.5, "write": 0.125}),
               R(2, 50, 50, seconds=1.0, worker="b", started=1000.5, device_seconds=0.25),
               R(3, 70, 70, seconds=1.0, worker="b", started=10.0, device_seconds=0.5),  # an earlier run's
               R(4, 1, 1, seconds=1.0)]  # recovered on the driver: no worker
    stats = pipeline.worker_stats(results, since=999.0)
    assert stats == {"a": {"partitions": 2, "objects": 200, "seconds": 4.0, "objects_per_s": 50.0,
                           "device_seconds": 3.0, "device_busy": 0.75,
                           "phases_s": {"read": 0.75, "device": 3.0, "write": 0.125}},
                     "b": {"partitions": 1, "objects": 50, "seconds": 1.0, "objects_per_s": 50.0,
                           "device_seconds": 0.25, "device_busy": 0.25, "phases_s": {}}}


def test_progress_line_shows_each_workers_rate_and_busy_share(caplog, monkeypatch):
    R = pipeline.PartitionResult
    progress = pipeline.Progress(400, True, "objects", "cuda")
    progress.tty = False
    progress.since = 999.0
    caplog.set_level("INFO", logger="scip_gpu")
    progress.update(100, R(0, 100, 100, seconds=2.0, worker="tcp://10.0.0.1:4000", started=1000.0,
                           device_seconds=1.5))
    assert "10.0.0.1:4000 50.0 objects/s, GPU busy 75%" in caplog.text  # the first line: logged at once
    progress.update(300, R(1, 300, 300, seconds=3.0, worker="tcp://10.0.0.2:4000", started=1000.0,
                           device_seconds=0.3))
    line = caplog.records[-1].getMessage()  # the last: logged however soon
    assert line.startswith("progress: 400/400 objects (100%)")
    assert line.endswith("| 10.0.0.1:4000 50.0 objects/s, GPU busy 75%; 10.0.0.2:4000 100.0 objects/s, GPU busy 10%")
    cpu = pipeline.Progress(10, True, "objects", "cpu")
    cpu.since = 0.0
    cpu.update(1, R(0, 1, 1, seconds=4.0, worker="w", started=1.0, device_seconds=1.0))
    assert cpu.workers_text() == "w 0.2 objects/s, profiling 25%"


@pytest.mark.parametrize("threads", [1, 2])
def test_progress_and_provenance_report_the_workers_busy_share(tmp_path, caplog, threads):
    """cluster=sync, one partition at a time and two in flight (the threads path): the progress
    lines and provenance.json report each worker's objects/s and the share of its time in the
    device stage, measured as the wall time inside it over the worker's time."""
    import json

    from scip_gpu.pipeline import run

    caplog.set_level("INFO", logger="scip_gpu")
    cfg, _ = to_config(_compose([*SMALL, "masks=none", "dataset.n_objects=12", "partition_size=3", "cluster=sync",
                                 f"cluster.threads_per_worker={threads}", "device=cpu", "progress=true",
                                 "export.formats=[parquet]", "export.report=false", f"output={tmp_path / 'out'}"]))
    run(cfg)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    (name, w), = prov["workers"].items()
    assert w["partitions"] == 4 and w["objects"] == 12
    assert 0 < w["device_seconds"] <= w["seconds"]
    d, t = w["device_seconds"], w["seconds"]  # (rounded to ms)
    assert (d - 5e-4) / (t + 5e-4) - 1e-4 <= w["device_busy"] <= (d + 5e-4) / (t - 5e-4) + 1e-4
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines[-1].startswith("progress: 12/12 objects") and f"| {name} " in lines[-1]
    share = float(lines[-1].rsplit("profiling ", 1)[1].rstrip("%"))
    assert abs(share - 100 * w["device_busy"]) <= 0.5  # the last line: the whole run's numbers
    assert f"worker {name}: 12 objects in 4 partition(s)" in caplog.text  # and the end of the run's log
    # where the partitions' time went: each stage's wall time, summed; the device stage's is the
    # device time above, and together they are each partition's time
    ph = w["phases_s"]
    assert set(ph) == {"read", "stage", "wait", "device", "write"} and abs(ph["device"] - d) <= 2e-3
    assert f"worker {name}: partition stages summed (s): read" in caplog.text


@pytest.mark.slow
def test_two_workers_write_the_rows_of_one(tmp_path):
    """A local cluster of 2 worker processes (the stand-in for 2 GPUs: device=cpu) spreads the
    partitions over both and writes exactly the rows of an in-process run."""
    from scip_gpu.pipeline import run

    args = [*SMALL, "masks=none", "dataset.n_objects=40", "partition_size=5", "progress=false"]
    one, _ = to_config(_compose([*args, "cluster=sync", "cluster.threads_per_worker=1", f"output={tmp_path / 'one'}"]))
    two, _ = to_config(_compose([*args, "cluster=local", "cluster.n_workers=2", "device=cpu",
                                 f"output={tmp_path / 'two'}"]))
    run(one)
    run(two)
    a = pd.read_parquet(tmp_path / "one" / "features.parquet").sort_values("meta_index").reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "two" / "features.parquet").sort_values("meta_index").reset_index(drop=True)
    assert len(a) == 40
    pd.testing.assert_frame_equal(a, b)
    import json

    workers = json.loads((tmp_path / "two" / "provenance.json").read_text())["workers"]
    assert len(workers) == 2 and sum(w["partitions"] for w in workers.values()) == 8
    assert all(w["partitions"] >= 1 and w["objects_per_s"] > 0 for w in workers.values())


def test_batches_on_a_gpu_overlap_and_failed_ones_run_again(tmp_path, monkeypatch):
    """device=cuda (the NumPy-backed stand-in for CuPy): batches queued behind each other with
    asynchronous copies back give the CPU path's values; a batch failing when it is set up (a bad
    object) or when its copy completes runs again, split, one error per object."""
    import anndata  # noqa: F401  (before the fake: it probes for cupyx.scipy.sparse)

    from . import fake_cupy

    cfg, src, objs, plan = _setup(10, ["masks=none", "batch_size=3"])
    from scip_gpu.export import arrow_schema

    schema = arrow_schema(objs[[c for c in objs.columns if c.startswith("meta_")]], plan.columns)
    _, ref = pipeline.process_partition((0, objs), source=src, plan=plan, folder=None, schema=schema, device="cpu")
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    real_profile = pipeline.profile_batch
    calls = {"batches": 0, "synced": 0}

    def poisoned(batch, plan, timer=NO_TIMER, **kw):
        calls["batches"] += 1
        if 5 in np.asarray(batch.index).tolist():
            raise ValueError("object 5 breaks the maths")
        return real_profile(batch, plan, timer, **kw)

    class FlakyEvent(type(cupy.cuda.Event())):
        def synchronize(self):
            calls["synced"] += 1
            if calls["synced"] == 2:  # the second batch's copy fails once
                raise RuntimeError("simulated failure of a queued batch")
            return super().synchronize()

    monkeypatch.setattr(pipeline, "profile_batch", poisoned)
    monkeypatch.setattr(cupy.cuda, "Event", FlakyEvent)
    res, values = pipeline.process_partition((0, objs), source=src, plan=plan, folder=None, schema=schema,
                                             device="cuda")
    assert [e["meta_index"] for e in res.errors] == [5] and "object 5 breaks the maths" in res.errors[0]["error"]
    assert np.isnan(values[5]).all()
    keep = [i for i in range(10) if i != 5]
    np.testing.assert_allclose(values[keep], ref[keep], rtol=1e-9, atol=1e-9)
    assert calls["synced"] >= 3 and calls["batches"] > 4  # overlapped, and re-run after both failures


def test_first_batch_is_staged_on_the_host_before_the_partition_takes_the_device(tmp_path, monkeypatch):
    """device=cuda: a partition assembles its first batch in pinned host memory before it waits
    for the device (another partition's batch runs meanwhile), and that staging is the one
    copied (not assembled twice); the later batches are staged inside the loop. Same values."""
    import anndata  # noqa: F401  (before the fake: it probes for cupyx.scipy.sparse)

    from scip_gpu import batch as batch_mod

    from . import fake_cupy

    cfg, src, objs, plan = _setup(7, ["masks=none", "batch_size=3"])
    from scip_gpu.export import arrow_schema

    schema = arrow_schema(objs[[c for c in objs.columns if c.startswith("meta_")]], plan.columns)
    _, ref = pipeline.process_partition((0, objs), source=src, plan=plan, folder=None, schema=schema, device="cpu")
    fake_cupy.install(monkeypatch)
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    staged = []
    real_stage = batch_mod.stage

    def watched(images, shape, xp=np):
        staged.append((len(images), pipeline.device_lock("cuda").locked()))
        return real_stage(images, shape, xp)

    monkeypatch.setattr(batch_mod, "stage", watched)
    monkeypatch.setattr(pipeline, "stage", watched)
    res, values = pipeline.process_partition((0, objs), source=src, plan=plan, folder=None, schema=schema,
                                             device="cuda")
    assert res.n_ok == 7 and sum(n for n, _ in staged) == 7 and len(staged) > 2  # each object staged once
    assert staged[0][1] is False and all(held for _, held in staged[1:])
    np.testing.assert_allclose(values, ref, rtol=1e-9, atol=1e-9)


def test_local_cuda_workers_declare_one_gpu_unit_per_partition_in_flight(monkeypatch):
    """dask-cuda (a stand-in module here): one worker per visible GPU, threads_per_worker
    partitions in flight, each task holding one unit of the GPU resource."""
    import sys
    import types

    made = {}

    class LocalCUDACluster:
        def __init__(self, **kwargs):
            made.update(kwargs)

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=LocalCUDACluster))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(cluster, "usable_cores", lambda: 16)  # (a 16-core host)
    cfg, _ = to_config(_compose(["+dataset=demo", "cluster=local_cuda"]))
    assert cfg.cluster.threads_per_worker is None and cfg.cluster.loader_threads is None  # from the cores
    cluster._start_cluster("local_cuda", cfg.cluster, "cuda")
    # two GPUs on 16 cores: 8 cores per worker, 4 partitions in flight, 2 loader threads each
    assert made["resources"] == {cluster.GPU_RESOURCE: 4} and made["threads_per_worker"] == 4
    assert made["n_workers"] is None and made["CUDA_VISIBLE_DEVICES"] is None  # dask-cuda: one per visible GPU
    assert n_local_workers(cfg.cluster) == 2
    in_flight = replace(cfg.cluster, threads_per_worker=cluster.partitions_in_flight(cfg.cluster))
    assert pipeline.loader_threads(in_flight, "cuda") == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert cluster.partitions_in_flight(cfg.cluster) == 8  # one GPU: capped at 8
    monkeypatch.setattr(cluster, "usable_cores", lambda: 2)
    assert cluster.partitions_in_flight(cfg.cluster) == 2  # at least one on the device, one read or written
    assert cluster.partitions_in_flight(replace(cfg.cluster, threads_per_worker=3)) == 3  # as set
    assert pipeline.loader_threads(cfg.cluster, "cpu") == 1
    assert pipeline.loader_threads(replace(cfg.cluster, loader_threads=3), "cpu") == 3
