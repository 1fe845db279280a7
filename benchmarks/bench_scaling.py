"""Scaling of the command line: objects/s and peak host/GPU memory against the number of objects,
and against the number of workers (the SCIP paper's scaling figure).

Each point is one ``python -m scip_gpu`` run in a fresh process (start-up included, as a user
sees it), timed from start to exit; the summed resident memory of the run's process tree and,
on a GPU machine, the used device memory (NVML or nvidia-smi, above what was used before the
run) are sampled every 0.2 s. The run's own per-worker rates and device-busy shares
(``provenance.json``'s ``workers``) are kept with each point. Writes
``scaling-<experiment>-<device>.json`` and ``.png`` (matplotlib) to ``--out``.

    python benchmarks/bench_scaling.py objects -n 200 500 1000               # CPU, the demo, sync
    python benchmarks/bench_scaling.py workers -w 1 2 -n 1000 --cluster local
    # on a GPU machine: 12-channel 64x64 cells from a dense zarr store, one worker per GPU;
    # on one GPU, 'workers' varies the partitions in flight per GPU (--knob threads_per_worker)
    python benchmarks/bench_scaling.py objects -n 1000 10000 100000 --device cuda --cluster local_cuda \\
        --dataset zarr --channels 12
    python benchmarks/bench_scaling.py workers -w 1 2 -n 20000 --device cuda --cluster local_cuda \\
        --dataset zarr --channels 12 --knob threads_per_worker

``--dataset zarr`` writes an uncompressed dense (N, C, 64, 64) uint16 store per N under
``benchmarks/.work/scaling-stores`` (1024 IFC-like cells, repeated; kept for the next run: 98 kB
per 12-channel cell), so the loader is not the demo's Python generator; ``--dataset demo``
generates cells in the workers (the CPU demo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import WORK, machine_description, run_measured  # noqa: E402


class GpuMemory:
    """Peak used device memory (bytes, summed over GPUs) while it runs, above the level before."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.base = interval, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._read = self._reader()

    @staticmethod
    def _reader():
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            return lambda: sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)
        except Exception:  # noqa: BLE001 - no NVML: nvidia-smi, or no GPU at all
            if shutil.which("nvidia-smi") is None:
                return None

            def smi():
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                return sum(int(v) for v in out.split()) * 2**20
            return smi

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._read() - self.base)
            except Exception:  # noqa: BLE001 - a failed sample
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        if self._read is not None:
            self.base = self._read()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def result(self):
        return None if self._read is None else self.peak


def dense_store(n: int, channels: int, work: Path) -> Path:
    """An uncompressed dense (n, channels, 64, 64) uint16 zarr array of IFC-like cells (1024
    distinct cells, repeated), written once per size."""
    import numpy as np
    import zarr

    from datasets import ifc_like_cells

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"dense-{channels}ch-{n}.zarr"
    if (path / "zarr.json").is_file() or (path / ".zarray").is_file():
        return path
    base = np.stack(list(ifc_like_cells(min(n, 1024), channels)))
    arr = zarr.create_array(str(path), shape=(n, channels, 64, 64), chunks=(256, channels, 64, 64),
                            dtype="uint16", compressors=None, zarr_format=2)
    for lo in range(0, n, 8192):
        hi = min(n, lo + 8192)
        arr[lo:hi] = base[np.arange(lo, hi) % len(base)]
    return path


def run_point(args, n: int, workers: int | None, work: Path) -> dict:
    out = work / f"out-{n}-{workers}-{time.time_ns()}"
    if args.dataset == "demo":
        data = ["+dataset=demo", f"dataset.n_objects={n}", f"dataset.n_channels={args.channels}"]
    else:
        data = ["+dataset=zarr", f"dataset.path={dense_store(n, args.channels, WORK / 'scaling-stores')}"]
    cmd = [sys.executable, "-m", "scip_gpu", *data, f"features={args.features}", f"device={args.device}",
           f"cluster={args.cluster}", f"output={out}", "progress=false", *args.extra]
    if workers is not None:
        knob = "threads_per_worker" if args.cluster == "sync" else args.knob
        cmd.append(f"cluster.{knob}={workers}")
    with GpuMemory() as gpu:
        res = run_measured(cmd, cwd=work, log=work / f"run-{n}-{workers}.log", timeout=args.timeout)
    point = {"n_objects": n, "workers": workers, "rc": res["rc"], "wall_s": round(res["wall_s"], 3),
             "objects_per_s": round(n / res["wall_s"], 2) if res["rc"] == 0 else None,
             "peak_host_bytes": res["peak_rss_bytes"], "peak_gpu_bytes": gpu.result,
             "cpu_s": round(res["cpu_s"], 2), "loadavg_1min_before": res["loadavg_1min_before"], "cmd": cmd}
    prov = out / "provenance.json"
    if prov.is_file():
        p = json.loads(prov.read_text())
        point.update(run_seconds=p.get("seconds"), partitions=p.get("partitions"), per_worker=p.get("workers"))
    else:
        point["log_tail"] = Path(res["log"]).read_text(errors="replace")[-2000:]
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({k: v for k, v in point.items() if k not in ("cmd", "per_worker", "log_tail")}), flush=True)
    return point


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "n_objects" if result["experiment"] == "objects" else "workers"
    label = "objects" if key == "n_objects" else ("partitions in flight per worker"
                                                   if result.get("knob") == "threads_per_worker" else "workers")
    pts = [p for p in result["points"] if p["rc"] == 0]
    xs = [p[key] for p in pts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(xs, [p["objects_per_s"] for p in pts], "o-", label="whole run (start to exit)")
    busy = [(p[key], sum(w["objects_per_s"] for w in p["per_worker"].values())) for p in pts if p.get("per_worker")]
    if busy:
        a.plot(*zip(*busy), "s--", label="summed over workers (while profiling)")
    a.set_ylabel("objects/s")
    b.plot(xs, [p["peak_host_bytes"] / 2**30 for p in pts], "o-", label="host (process tree RSS)")
    if any(p["peak_gpu_bytes"] is not None for p in pts):
        b.plot(xs, [(p["peak_gpu_bytes"] or 0) / 2**30 for p in pts], "s-", label="GPU (used above idle)")
    b.set_ylabel("peak memory (GiB)")
    for ax in (a, b):
        ax.set_xlabel(label)
        if key == "n_objects":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"scip_gpu {result['experiment']} scaling: device={result['device']}, cluster={result['cluster']}, "
                 f"{result['features']}, {result['channels']} channels\n{m.get('cpu_model')} "
                 f"({m.get('usable_cores')} cores), GPU: {m.get('gpu') or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["objects", "workers"])
    ap.add_argument("-n", "--objects", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument("-w", "--workers", type=int, nargs="+", default=[1, 2],
                    help="workers (cluster=sync: partitions in flight) for the 'workers' experiment")
    ap.add_argument("--knob", default="n_workers", choices=["n_workers", "threads_per_worker"],
                    help="what 'workers' varies: worker processes (GPUs), or partitions in flight per worker "
                         "(cluster=sync: always partitions in flight)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cluster", default="sync", choices=["sync", "local", "local_cuda"])
    ap.add_argument("--dataset", default="demo", choices=["demo", "zarr"])
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--features", default="scip")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run")
    ap.add_argument("--note", default="", help="said about the machine in the JSON (e.g. 'contended')")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("extra", nargs="*", help="further overrides for every run (e.g. partition_size=512)")
    args = ap.parse_args(argv)
    work = WORK / f"scaling-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    points = []
    try:
        if args.experiment == "objects":
            for n in args.objects:
                points.append(run_point(args, n, None, work))
        else:
            for w in args.workers:
                points.append(run_point(args, args.objects[-1], w, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    knob = "threads_per_worker" if args.cluster == "sync" else args.knob
    result = {"experiment": args.experiment, "knob": knob if args.experiment == "workers" else None,
              "device": args.device, "cluster": args.cluster, "dataset": args.dataset,
              "channels": args.channels, "features": args.features, "extra": args.extra, "note": args.note,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_description(), "points": points}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"scaling-{args.experiment}-{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    plot(result, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0 if all(p["rc"] == 0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
