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

``--dataset ragged`` writes the same cells in SCIP's ragged zarr layout (``+dataset=scip_zarr``:
a 1-D object array, vlen-array filter, blosc lz4 clevel 5 with shuffle as SCIP's stores, chunks
of 256; ``ragged-<C>ch-<N>.zarr``, kept) and measures beside each point the peer of issue 11's
ragged target: the objects/s at which the host's cores read and decode that store with scip_gpu's
own reader (``RaggedZarrSource.load``) in one process per usable core, nothing else
(``decode_rate``; clock started once every process has built its reader). Each point then holds
``decode`` and ``ratio_to_decode`` (command-line objects/s over decode objects/s: >= 1 meets the
target); ``--no-decode`` skips it::

    python benchmarks/bench_scaling.py objects -n 50000 --device cuda --cluster local_cuda \\
        --dataset ragged --channels 12 --tag ragged

``--warmup N`` first runs the command once, untimed, on N objects with cluster=sync (numba's and
CuPy's on-disk caches filled); ``--tag T`` names the results ``scaling-<experiment>-<device>-T``.
``benchmarks/issue11_summary.py`` reads a folder of these results (and ``bench_gpu.py``'s) and
writes issue 11's targets as a table with met / not met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import WORK, machine_description, run_measured  # noqa: E402

BASE_CELLS = 1024   # distinct cells in a store (repeated to N)
RAGGED_CHUNK = 256  # objects per chunk of the ragged stores (SCIP's writer's default)
STORES = WORK / "scaling-stores"  # stores and base cells, kept for the next run
WRITTEN: dict[str, float] = {}    # store name -> seconds its writing took in this run (base cells included)
_IN_FLIGHT: dict = {}             # the point being measured (its decode rate survives a SIGTERM)


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


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cell_range(args):
    from datasets import ifc_like_cells

    start, stop, channels = args
    return list(ifc_like_cells(stop - start, channels, start=start))


def base_cells(channels: int, work: Path, count: int = BASE_CELLS):
    """``count`` distinct IFC-like (channels, 64, 64) uint16 cells (``datasets.ifc_like_cells``),
    generated in parallel (one process per core) and cached as ``base-<C>ch-<count>.npy``."""
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"base-{channels}ch-{count}.npy"
    full = work / f"base-{channels}ch-{BASE_CELLS}.npy"
    if path.is_file() or (count < BASE_CELLS and full.is_file()):  # (cells are the same per index)
        return np.load(path if path.is_file() else full)[:count]
    procs = max(1, min(usable_cores(), count // 16))
    step = -(-count // procs)
    spans = [(lo, min(lo + step, count), channels) for lo in range(0, count, step)]
    if procs == 1:
        parts = [_cell_range(spans[0])]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(procs) as ex:
            parts = list(ex.map(_cell_range, spans))
    base = np.stack([c for part in parts for c in part])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
    np.save(tmp, base)
    os.replace(tmp, path)  # complete or absent: an interrupted run leaves no half file behind
    return base


def _fresh(path: Path) -> Path:
    """A temporary sibling of ``path`` to write a store into before renaming it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def dense_store(n: int, channels: int, work: Path) -> Path:
    """An uncompressed dense (n, channels, 64, 64) uint16 zarr array of IFC-like cells (1024
    distinct cells, repeated), written once per size."""
    import numpy as np
    import zarr

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"dense-{channels}ch-{n}.zarr"
    if (path / "zarr.json").is_file() or (path / ".zarray").is_file():
        return path
    t0 = time.perf_counter()
    base = base_cells(channels, work, min(n, BASE_CELLS))
    tmp = _fresh(path)
    arr = zarr.create_array(str(tmp), shape=(n, channels, 64, 64), chunks=(256, channels, 64, 64),
                            dtype="uint16", compressors=None, zarr_format=2)
    for lo in range(0, n, 8192):
        hi = min(n, lo + 8192)
        arr[lo:hi] = base[np.arange(lo, hi) % len(base)]
    os.replace(tmp, path)  # a store is complete or absent (an interrupted write is not reused)
    WRITTEN[path.name] = round(time.perf_counter() - t0, 2)
    return path


def ragged_store(n: int, channels: int, work: Path) -> Path:
    """SCIP's ragged zarr layout (``datasets.write_ragged_zarr``: a 1-D object array, one flattened
    (C, 64, 64) uint16 cell per element, vlen-array filter, blosc lz4 clevel 5 with shuffle, as
    SCIP's stores are compressed; chunks of 256; object numbers 1000 + index) of the same 1024
    IFC-like cells repeated, written once per size."""
    from datasets import write_ragged_zarr

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"ragged-{channels}ch-{n}.zarr"
    if (path / ".zarray").is_file():
        return path
    t0 = time.perf_counter()
    base = base_cells(channels, work, min(n, BASE_CELLS))
    tmp = _fresh(path)
    write_ragged_zarr(tmp, (base[i % len(base)] for i in range(n)),
                      object_numbers=range(1000, 1000 + n), chunk_size=RAGGED_CHUNK)
    os.replace(tmp, path)
    WRITTEN[path.name] = round(time.perf_counter() - t0, 2)
    return path


# -- the host's decode rate (the ragged target's peer) ---------------------------------------------

_DECODER: dict = {}


def _decode_init(path: str, ready) -> None:
    """Per process: scip_gpu's ragged zarr reader and its object table (built before timing)."""
    from scip_gpu.config import DatasetConfig, DatasetFormat
    from scip_gpu.io.zarr_ragged import RaggedZarrSource

    src = RaggedZarrSource(DatasetConfig(format=DatasetFormat.zarr_ragged, path=path))
    _DECODER.update(source=src, rows=src.objects())
    (Path(ready) / str(os.getpid())).touch()  # (a file per process: no semaphore to clean up)


def _decode_span(span: tuple[int, int]) -> tuple[int, int, int]:
    """Read and decode objects ``lo..hi-1`` with the reader the pipeline uses (``Source.load``):
    (decoded objects, their pixel bytes, objects that failed)."""
    lo, hi = span
    imgs = _DECODER["source"].load(_DECODER["rows"].iloc[lo:hi])
    ok = [im for im in imgs if not isinstance(im, Exception)]
    return len(ok), sum(int(im.nbytes) for im in ok), len(imgs) - len(ok)


def decode_rate(path: Path, processes: int | None = None, chunks_per_span: int = 4,
                start_method: str = "spawn") -> dict:
    """Objects/s the host's cores read and decode a ragged zarr store at, with scip_gpu's own
    reader (``RaggedZarrSource.load``: chunk file read, blosc, vlen-array, reshape), nothing else.

    ``processes`` (default: one per usable core) each build the reader and the object table first;
    the clock runs from handing out the first span of ``chunks_per_span`` whole chunks (each chunk
    decoded once, as a partition of the pipeline does) to the last one decoded, so process start-up
    is not counted (a rate the cores can sustain)."""
    import multiprocessing as mp

    processes = processes or usable_cores()
    ctx = mp.get_context(start_method)  # spawn: no fork of this process's threads (the memory samplers)
    meta = json.loads((Path(path) / ".zarray").read_text())
    n, span = meta["shape"][0], chunks_per_span * meta["chunks"][0]
    spans = [(lo, min(lo + span, n)) for lo in range(0, n, span)]
    with tempfile.TemporaryDirectory() as ready, \
            ctx.Pool(processes, initializer=_decode_init, initargs=(str(path), ready)) as pool:
        t_wait = time.perf_counter()
        while (started := len(os.listdir(ready))) < processes:
            if time.perf_counter() - t_wait > 300:
                raise RuntimeError(f"decode_rate: only {started} of {processes} processes started in 300 s")
            time.sleep(0.01)
        start_s = time.perf_counter() - t_wait
        t0 = time.perf_counter()
        parts = list(pool.imap_unordered(_decode_span, spans))
        secs = time.perf_counter() - t0
        pool.close()  # (an orderly end: terminate() would leave the pool's semaphores to the tracker)
        pool.join()
    objects = sum(p[0] for p in parts)
    return {"objects": objects, "failed": sum(p[2] for p in parts), "pixel_bytes": sum(p[1] for p in parts),
            "processes": processes, "seconds": round(secs, 4), "objects_per_s": round(objects / secs, 2),
            "startup_s": round(start_s, 3), "span": span}


def data_overrides(dataset: str, n: int, channels: int) -> list[str]:
    """The ``+dataset=...`` overrides of a run on ``n`` objects of ``dataset``."""
    if dataset == "demo":
        return ["+dataset=demo", f"dataset.n_objects={n}", f"dataset.n_channels={channels}"]
    if dataset == "ragged":
        return ["+dataset=scip_zarr", f"dataset.path={ragged_store(n, channels, STORES)}"]
    return ["+dataset=zarr", f"dataset.path={dense_store(n, channels, STORES)}"]


def command(args, n: int, workers: int | None, out: Path, cluster: str | None = None) -> list[str]:
    cluster = cluster or args.cluster
    cmd = [sys.executable, "-m", "scip_gpu", *data_overrides(args.dataset, n, args.channels),
           f"features={args.features}", f"device={args.device}", f"cluster={cluster}", f"output={out}",
           "progress=false", *args.extra]
    if workers is not None:
        knob = "threads_per_worker" if cluster == "sync" else args.knob
        cmd.append(f"cluster.{knob}={workers}")
    return cmd


def warmup(args, work: Path) -> dict:
    """One untimed run on ``--warmup`` objects in this process's cluster=sync (numba's and CuPy's
    on-disk caches filled, the store's files in the page cache), so that no point pays compilation."""
    n = args.warmup
    out = work / f"warmup-{time.time_ns()}"
    extra = [e for e in args.extra if not e.startswith("cluster.")]
    cmd = command(argparse.Namespace(**{**vars(args), "extra": extra}), n, None, out, cluster="sync")
    res = run_measured(cmd, cwd=work, log=work / "warmup.log", timeout=args.timeout)
    shutil.rmtree(out, ignore_errors=True)
    info = {"n_objects": n, "rc": res["rc"], "wall_s": round(res["wall_s"], 3)}
    print(json.dumps({"warmup": info}), flush=True)
    return info


def run_point(args, n: int, workers: int | None, work: Path) -> dict:
    out = work / f"out-{n}-{workers}-{time.time_ns()}"
    cmd = command(args, n, workers, out)  # (writes the store first when it is missing)
    decode = None
    if args.dataset == "ragged" and not args.no_decode:
        decode = decode_rate(ragged_store(n, args.channels, STORES), args.decode_processes)
        _IN_FLIGHT["decode"] = decode
        print(json.dumps({"decode": decode}), flush=True)
    with GpuMemory() as gpu:
        res = run_measured(cmd, cwd=work, log=work / f"run-{n}-{workers}.log", timeout=args.timeout)
    point = {"n_objects": n, "workers": workers, "rc": res["rc"], "wall_s": round(res["wall_s"], 3),
             "objects_per_s": round(n / res["wall_s"], 2) if res["rc"] == 0 else None,
             "peak_host_bytes": res["peak_rss_bytes"], "peak_gpu_bytes": gpu.result,
             "cpu_s": round(res["cpu_s"], 2), "loadavg_1min_before": res["loadavg_1min_before"], "cmd": cmd}
    if decode is not None:
        point["decode"] = decode
        point["ratio_to_decode"] = (round(point["objects_per_s"] / decode["objects_per_s"], 4)
                                    if point["objects_per_s"] else None)
    prov = out / "provenance.json"
    if prov.is_file():
        p = json.loads(prov.read_text())
        point.update(run_seconds=p.get("seconds"), partitions=p.get("partitions"), per_worker=p.get("workers"),
                     timeline=p.get("timeline"), output_seconds=p.get("output_seconds"))
    else:
        point["log_tail"] = Path(res["log"]).read_text(errors="replace")[-2000:]
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({k: v for k, v in point.items() if k not in ("cmd", "per_worker", "log_tail", "decode")}),
          flush=True)
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
    dec = [(p[key], p["decode"]["objects_per_s"]) for p in result["points"] if p.get("decode")]
    if dec:
        a.plot(*zip(*dec), "^:", label=f"host decode alone ({result['points'][0]['decode']['processes']} processes)")
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
    ap.add_argument("--dataset", default="demo", choices=["demo", "zarr", "ragged"],
                    help="demo: generated in the workers; zarr: uncompressed dense store; ragged: SCIP's "
                         "ragged zarr (blosc lz4), with the host's decode rate measured beside each point")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--features", default="scip")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run")
    ap.add_argument("--warmup", type=int, default=0, metavar="N",
                    help="first an untimed cluster=sync run on N objects (compilation caches filled)")
    ap.add_argument("--no-decode", action="store_true", help="--dataset ragged: skip the decode-rate peer")
    ap.add_argument("--decode-processes", type=int, default=None,
                    help="processes of the decode-rate peer (default: one per usable core)")
    ap.add_argument("--tag", default="", help="added to the result files' names (scaling-<experiment>-<device>-<tag>)")
    ap.add_argument("--note", default="", help="said about the machine in the JSON (e.g. 'contended')")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("extra", nargs="*", help="further overrides for every run (e.g. partition_size=512)")
    # intermixed: overrides may follow the options (gpu_session.sh's `... --out DIR io.kvikio=true`)
    args = ap.parse_intermixed_args(argv)
    work = WORK / f"scaling-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    knob = "threads_per_worker" if args.cluster == "sync" else args.knob
    result = {"experiment": args.experiment, "knob": knob if args.experiment == "workers" else None,
              "device": args.device, "cluster": args.cluster, "dataset": args.dataset,
              "channels": args.channels, "features": args.features, "extra": args.extra, "note": args.note,
              "tag": args.tag, "warmup": None, "usable_cores": usable_cores(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_description(), "points": []}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"scaling-{args.experiment}-{args.device}" + (f"-{args.tag}" if args.tag else "")

    def save():  # after every point: a run stopped from outside keeps the points it finished
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))

    # a step timeout (SIGTERM) ends the run in flight (run_measured kills its process group) and
    # records it as "killed" instead of losing the file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    todo = ([(n, None) for n in args.objects] if args.experiment == "objects"
            else [(args.objects[-1], w) for w in args.workers])
    try:
        if args.warmup:
            result["warmup"] = warmup(args, work)
        for n, w in todo:
            _IN_FLIGHT.clear()
            try:
                result["points"].append(run_point(args, n, w, work))
            except SystemExit:
                result["points"].append({"n_objects": n, "workers": w, "rc": "killed", "wall_s": None,
                                         "objects_per_s": None, **_IN_FLIGHT})
                raise
            finally:
                result["stores_written_s"] = dict(WRITTEN)
                save()
    finally:
        save()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    try:
        plot(result, args.out / f"{stem}.png")
        print(f"wrote {args.out / stem}.json and .png")
    except ImportError as exc:  # a GPU host without matplotlib: the JSON is what counts
        print(f"wrote {args.out / stem}.json (no plot: {exc})")
    return 0 if all(p["rc"] == 0 for p in result["points"]) else 1

if __name__ == "__main__":
    sys.exit(main())
