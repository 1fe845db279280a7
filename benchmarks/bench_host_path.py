"""The command line's host side at the GPU's pace, measurable on any machine (no GPU needed).

Issue 11 asks the whole command (``device=cuda``) to run within 2x of the batch path's
objects/s. The device does its part at a measured rate (``bench_gpu.py``: 41.7 us of device
time per 12-channel 64x64 object on an H100, run 8); everything else is host work: reading and
validating the objects, assembling the batches, writing each partition's Parquet file, and
after the last partition the AnnData file and the QC report. This benchmark runs the real
pipeline (``scip_gpu.pipeline.run``, in this process, ``cluster=sync`` with
``cluster.threads_per_worker`` partitions in flight, as one GPU worker runs them) on a dense
zarr store, with the device replaced by a clock: each batch occupies a simulated device for
``--device-us`` microseconds per object (batches queue on it as kernels queue on a GPU, and
the host waits for a batch's event as it waits for the copy back), and its feature table is a
real one (the CPU path's features of 256 cells, tiled with a relative jitter of 1e-12 so that
Parquet compresses them as real values).

What it tells: the wall time from start to exit against the device's own time (N x device
time per object, the floor when the host keeps up), the time per phase (partitions; each
output written after them), the share of the run the device was busy, and the host CPU
seconds per object (what a GPU host's cores must supply at the GPU's rate). The stand-in
CuPy (tests/fake_cupy.py) keeps the device arrays in host memory, so the host does the
pixel copy to the "device" that a GPU's copy engine does: a slight overestimate of host work.

    python benchmarks/bench_host_path.py -n 16384 --in-flight 2 4 --device-us 41.7

Writes ``benchmarks/results/host-path-<host>.json`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, WORK, write_result  # noqa: E402

DEVICE_US = 41.7   # run 8 on an H100: device time per 12-channel 64x64 object (bench_gpu.py)
TEMPLATE_ROWS = 4096
TEMPLATE_CELLS = 256  # distinct cells profiled for the template
DATASETS = {"zarr": "zarr", "ragged": "scip_zarr"}  # --dataset: the store, its dataset configuration


class DeviceClock:
    """One simulated device: work queued on it ends at ``until`` (perf_counter seconds)."""

    def __init__(self, us_per_object: float):
        self.us = us_per_object
        self.until = 0.0
        self.busy = 0.0
        self.lock = threading.Lock()

    def queue(self, n: int) -> float:
        with self.lock:
            now = time.perf_counter()
            self.until = max(now, self.until) + n * self.us * 1e-6
            self.busy += n * self.us * 1e-6
            return self.until


def template_table(plan, channels: int, rows: int = TEMPLATE_ROWS, cells: int = TEMPLATE_CELLS):
    """(rows, F) feature table: the CPU path's features of TEMPLATE_CELLS IFC-like cells, tiled, every
    non-integer value jittered by a relative 1e-12 (distinct rows, as Parquet sees real data)."""
    import numpy as np

    from bench_scaling import STORES, base_cells
    from scip_gpu.batch import assemble
    from scip_gpu.profile import profile_batch

    base = base_cells(channels, STORES, cells)
    shape = tuple(int(v) + plan.margin for v in base.shape[2:])
    real = profile_batch(assemble(list(base), np.arange(len(base)), shape, np), plan)
    table = real[np.arange(rows) % len(real)]
    rng = np.random.default_rng(0)
    jitter = 1 + 1e-12 * rng.standard_normal(table.shape)
    fractional = np.isfinite(table) & (table != np.round(table))
    table[fractional] *= jitter[fractional]
    return table


def install_device(monkeypatch, clock: DeviceClock, table) -> None:
    """The stand-in CuPy, with ``profile_batch`` replaced by the clock and the template table."""
    import numpy as np

    import anndata  # noqa: F401  (before the fake: it probes for cupyx.scipy.sparse)
    from scip_gpu import pipeline
    from tests import fake_cupy

    cupy = fake_cupy.install(monkeypatch)

    def record(self, stream=None):
        self.t = time.perf_counter()
        self.until = clock.until

    def synchronize(self):
        wait = getattr(self, "until", 0.0) - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    monkeypatch.setattr(fake_cupy._Event, "record", record)
    monkeypatch.setattr(fake_cupy._Event, "synchronize", synchronize)
    # What a GPU's copy engine and CuPy's pinned memory pool do costs the host nothing there:
    # the copy to the "device" is skipped (profile_batch here reads no pixel) and a pinned
    # buffer no longer referenced is handed out again (CuPy's pinned pool reuses freed blocks)
    monkeypatch.setattr(fake_cupy.ndarray, "set", lambda self, arr, stream=None: None)
    pool: dict[int, list] = {}
    pool_lock = threading.Lock()

    def alloc_pinned_memory(size):
        with pool_lock:
            bufs = pool.setdefault(size, [])
            for buf in bufs:
                if sys.getrefcount(buf) <= 3:  # (the list, the loop variable, the call's argument)
                    return buf
            bufs.append(fake_cupy.PinnedBuffer(size))
            return bufs[-1]

    monkeypatch.setattr(cupy.cuda, "alloc_pinned_memory", alloc_pinned_memory)

    # the feature tables are on the "device" already: a batch's table is a slice of the template
    # (made once; a GPU's kernels write it without the host), its rows cycling through the template
    on_device = cupy.asarray(np.concatenate([table, table]))

    def profile_batch(batch, plan, timer=None, given=(), *, to_host=True):
        until = clock.queue(batch.n)
        if batch.n > len(table):
            raise ValueError(f"batch of {batch.n} objects: the template has {len(table)} rows (TEMPLATE_ROWS)")
        first = int(np.asarray(batch.index)[0]) % len(table)
        rows = on_device[first:first + batch.n]
        if to_host:  # (the synchronous path waits for its batch)
            wait = until - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            return rows.get()
        return rows

    monkeypatch.setattr(pipeline, "profile_batch", profile_batch)


def run_point(store: Path, n: int, in_flight: int, us: float, table, work: Path, extra: list[str],
              dataset: str = "zarr") -> dict:
    from _pytest.monkeypatch import MonkeyPatch

    from scip_gpu.api import compose
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    out = work / f"host-path-{n}-{in_flight}-{time.time_ns()}"
    clock = DeviceClock(us)
    mp = MonkeyPatch()
    try:
        install_device(mp, clock, table)
        # (io.kvikio=false: the stand-in's device arrays are host memory; a GPU host's kvikio reads
        # would move the reading off the host, which this benchmark does not simulate)
        cfg, _ = compose(None, (f"+dataset={DATASETS[dataset]}", f"dataset.path={store}", "device=cuda", "cluster=sync", "io.kvikio=false",
                                f"cluster.threads_per_worker={in_flight}", f"output={out}", "progress=false",
                                *extra))
        config, resolved = to_config(cfg)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        summary = run(config, resolved)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        mp.undo()
    prov = json.loads((out / "provenance.json").read_text())
    log_text = (out / "run.log").read_text()
    m = re.search(r"worker \S+: (\d+) objects in (\d+) partition\(s\), ([\d.]+) s", log_text)
    partitions_s = float(m.group(3)) if m else None
    size = re.search(r"partition\(s\) of up to (\d+) objects", log_text)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    point = {"dataset": dataset, "n_objects": n, "in_flight": in_flight, "device_us_per_object": us, "ok": summary.n_ok,
             "wall_s": round(wall, 3), "objects_per_s": round(n / wall, 1),
             "device_s": round(clock.busy, 3), "device_busy_share": round(clock.busy / wall, 3),
             "partitions_s": partitions_s, "partition_size": int(size.group(1)) if size else None,
             "output_seconds": prov.get("output_seconds"),
             "stages_s": {k: w.get("phases_s") for k, w in prov.get("workers", {}).items()},
             "host_cpu_s": round(cpu, 2), "host_cpu_us_per_object": round(1e6 * cpu / n, 1),
             "floor_objects_per_s": round(1e6 / us, 1)}
    shutil.rmtree(out, ignore_errors=True)
    return point


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, nargs="+", default=[16384], help="objects per point")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[2], help="cluster.threads_per_worker values")
    ap.add_argument("--device-us", type=float, default=DEVICE_US, help="device time per object (us)")
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="zarr",
                    help="zarr: a dense uncompressed store; ragged: SCIP's ragged zarr (blosc lz4), "
                         "with the host's decode rate beside each point")
    ap.add_argument("--decode-processes", type=int, default=None,
                    help="processes for the ragged store's decode rate (default: every core)")
    ap.add_argument("--template-cells", type=int, default=TEMPLATE_CELLS, help="distinct cells profiled for the table")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    ap.add_argument("extra", nargs="*", help="more overrides for every run (e.g. export.formats=[parquet])")
    args = ap.parse_args(argv)

    logger = logging.getLogger("scip_gpu")
    level = logger.level
    logger.setLevel(logging.INFO)  # (run.log: INFO, as the command line)
    try:
        return _main(args)
    finally:
        logger.setLevel(level)


def _main(args) -> int:
    from bench_scaling import STORES, decode_rate, dense_store, ragged_store
    from scip_gpu.api import compose
    from scip_gpu.cli import to_config
    from scip_gpu.profile import build_plan

    cfg, _ = compose(None, ("+dataset=zarr", "dataset.path=x", *args.extra))
    config, _ = to_config(cfg)
    plan = build_plan(config, [f"ch{i}" for i in range(args.channels)])
    table = template_table(plan, args.channels, cells=args.template_cells)
    work = WORK / "host-path"
    work.mkdir(parents=True, exist_ok=True)
    points = []
    for n in args.n:
        store = (ragged_store if args.dataset == "ragged" else dense_store)(n, args.channels, STORES)
        decode = decode_rate(store, args.decode_processes) if args.dataset == "ragged" else None
        for k in args.in_flight:
            point = run_point(store, n, k, args.device_us, table, work, args.extra, args.dataset)
            if decode is not None:
                point["decode"] = decode
                point["ratio_to_decode"] = round(point["objects_per_s"] / decode["objects_per_s"], 4)
            print(json.dumps(point), flush=True)
            points.append(point)
    write_result(args.out, "host-path", args.tag, args.extra, points)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
