"""GPU benchmark of the batch path: objects/s from host memory, time per stage against the
floor, peak GPU memory, equality with the CPU path, and the CPU path on the same host.

Dataset: IFC-like 64x64 uint16 cells with 12 channels (``scip_gpu.demo.make_cell``), masks
li + otsu, the ``scip`` feature preset (5180 columns; 5154 in the H100 runs of gpu-h100-runs.md).
Generating cells is slow in Python, so ``--unique`` distinct cells are generated and tiled to ``-n`` objects.

    python benchmarks/bench_gpu.py -n 65536 --unique 2048 --out benchmarks/results
    python benchmarks/bench_gpu.py --first-batch     # one fresh-process batch (compilation included)
    python benchmarks/bench_gpu.py --fields-speed 16  # command line on 16 1024x1280 fields, cuda vs cpu

What is measured (each in the same process, on the same device):

- equality, GPU vs the CPU path (numba), column by column, on (a) the first 256 cells of the
  12-channel set, (b) ragged 3-channel cells batched by padded shape, and (``--fields-only``,
  a separate run) (c) a fields-of-view run (the BBBC021 replica of the tests: segmentation,
  then per-cell crops) through the whole command line with device=cuda and device=cpu;
  criterion: relative difference <= 1e-6, or absolute <= 1e-9 where the value is below 1e-6,
  and identical NaN patterns;
- throughput: batches assembled on the host (pinned memory) while the GPU profiles the previous
  batch, tables copied back asynchronously into pinned buffers; objects/s over ``-n`` objects
  after a warm-up batch; peak memory of CuPy's pool;
- time per stage (``profile_stages``: the device is synchronised at stage boundaries) over a
  few batches, next to the floor of each stage (bytes it must move at the copy bandwidth
  measured here);
- the CPU path with one process per core on ``--cpu-objects`` cells (objects/s, for the ratio);
- optionally (``--reference-objects``) the array-namespace path on the GPU (SCIP_GPU_KERNELS=0).

Writes ``gpu-<device>-<N>.json`` and ``.md`` into ``--out``. Needs CuPy and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


#: feature preset -> the overrides of its plan (``--preset``); the cellprofiler preset runs on li
#: masks only (its families on li and otsu would double the columns without new kernels)
PRESETS = {"scip": ("features=scip", "masks=scip"), "cellprofiler": ("features=cellprofiler", "masks=li")}
PRESET = "scip"


def make_plan(n_channels: int, batch_size: int, device: str, extra=()):
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs
    from scip_gpu.profile import build_plan

    register_configs()
    names = [f"ch{i}" for i in range(n_channels)]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["+dataset=demo", f"dataset.n_channels={n_channels}",
                                           f"batch_size={batch_size}", f"device={device}", *PRESETS[PRESET],
                                           *extra])
    config, _ = to_config(cfg)
    return build_plan(config, names)


def ifc_cell(i: int, n_channels: int, seed: int = 0) -> np.ndarray:
    """An IFC-like (C, 64, 64) uint16 cell: a demo cell of 60..68 px, cropped or reflect-padded."""
    from scip_gpu.demo import make_cell

    img, _ = make_cell(i, seed=seed, n_channels=n_channels, min_size=60, max_size=68)
    c, h, w = img.shape
    img = np.pad(img, ((0, 0), (0, max(0, 64 - h)), (0, max(0, 64 - w))), mode="reflect")[:, :64, :64]
    return np.ascontiguousarray(img)


def _cell_chunk(args):
    start, stop, n_channels, seed = args
    return [ifc_cell(i, n_channels, seed) for i in range(start, stop)]


def make_cells(n: int, n_channels: int, seed: int = 0, workers: int | None = None) -> list[np.ndarray]:
    """``n`` IFC-like cells, generated in parallel (one process per core)."""
    workers = max(1, min(workers or os.cpu_count() or 1, n // 16))
    if workers == 1:
        return _cell_chunk((0, n, n_channels, seed))
    step = -(-n // workers)
    with ProcessPoolExecutor(workers) as ex:
        parts = ex.map(_cell_chunk, [(s, min(s + step, n), n_channels, seed) for s in range(0, n, step)])
        return [c for part in parts for c in part]


# ---------------------------------------------------------------------------------------------
# Equality


def compare(gpu, cpu, plan) -> dict:
    """Per family: worst relative difference, number of values outside the criterion, NaN
    mismatches."""
    res = {}
    for fam in sorted({c.family for c in plan.columns}):
        cols = [i for i, c in enumerate(plan.columns) if c.family == fam]
        a, b = gpu[:, cols], cpu[:, cols]
        nan_mismatch = int((np.isnan(a) != np.isnan(b)).sum())
        both = ~np.isnan(a) & ~np.isnan(b)
        with np.errstate(all="ignore"):
            mag = np.maximum(np.abs(a), np.abs(b))
            diff = np.abs(a - b)
            rel = np.where(mag > 0, diff / mag, 0.0)
        bad = both & ~((rel <= 1e-6) | ((mag < 1e-6) & (diff <= 1e-9)))
        worst = float(np.max(np.where(both & (mag >= 1e-6), rel, 0.0), initial=0.0))
        worst_abs_small = float(np.max(np.where(both & (mag < 1e-6), diff, 0.0), initial=0.0))
        res[fam] = {"columns": len(cols), "worst_rel": worst, "worst_abs_below_1e-6": worst_abs_small,
                    "outside_criterion": int(bad.sum()), "nan_mismatch": nan_mismatch,
                    "identical_fraction": float(np.mean((a == b) | (np.isnan(a) & np.isnan(b))))}
    return res


def profile_groups(cells, plan, xp):
    """Profile cells as the pipeline batches them (exact-size or padded groups)."""
    from scip_gpu.batch import assemble, group_by_shape
    from scip_gpu.profile import profile_batch

    out = np.full((len(cells), plan.n_features), np.nan)
    groups = group_by_shape([c.shape[1:] for c in cells], margin=plan.margin, multiple=plan.cfg.pad_multiple,
                            batch_size=plan.cfg.batch_size)
    for shape, pos in groups:
        out[pos] = profile_batch(assemble([cells[i] for i in pos], pos, shape, xp), plan)
    return out


def check_fields(tmp: Path) -> dict:
    """The command line on the BBBC021 replica with device=cuda and device=cpu: same rows."""
    import pandas as pd

    from tests.fields_data import write_bbbc021_replica

    root = tmp / "bbbc021"
    write_bbbc021_replica(root)
    frames = {}
    # both runs at once (the CPU run's numba compilation and the GPU run's CuPy compilation on a
    # fresh machine each take tens of seconds; a GPU host has the cores for both)
    procs = {}
    for device in ("cpu", "cuda"):
        out = tmp / f"fields-{device}"
        cmd = [sys.executable, "-m", "scip_gpu", "+dataset=bbbc021", f"dataset.path={root}",
               "illumination.median_filter_size=5", "cluster=sync", f"device={device}", f"output={out}",
               "progress=false", "export.formats=[parquet]", PRESETS[PRESET][0]]  # (the compartments as masks)
        procs[device] = (out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                               cwd=REPO))
    errors = []
    for device, (out, proc) in procs.items():
        try:
            _, err = proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"{device}: exit {proc.returncode}: {(err or '')[-2000:]}")
            continue
        frames[device] = pd.read_parquet(out / "features.parquet").sort_values(
            ["meta_field", "meta_label"]).reset_index(drop=True)
    if errors:
        return {"error": "; ".join(errors)}
    a, b = frames["cuda"], frames["cpu"]
    feat = [c for c in a.columns if c.startswith("feat_")]
    x, y = a[feat].to_numpy(float), b[feat].to_numpy(float)
    with np.errstate(all="ignore"):
        mag = np.maximum(np.abs(x), np.abs(y))
        diff = np.abs(x - y)
        rel = np.where(mag > 0, diff / mag, 0.0)
    both = ~np.isnan(x) & ~np.isnan(y)
    bad = both & ~((rel <= 1e-6) | ((mag < 1e-6) & (diff <= 1e-9)))
    return {"rows": [len(a), len(b)], "columns": len(feat), "outside_criterion": int(bad.sum()),
            "nan_mismatch": int((np.isnan(x) != np.isnan(y)).sum()),
            "worst_rel": float(np.max(np.where(both & (mag >= 1e-6), rel, 0), initial=0))}



def write_fields(root: Path, n_fields: int, shape, n_cells: int, seed: int = 0) -> None:
    """BBBC021-named fields (3 channels, uint16, ``shape``) with ``n_cells`` cells each, as the
    tests' replica (tests/fields_data.make_field) but drawn per cell in a window around it, so
    that full-size fields (1024 x 1280, ~100 cells) take well under a second each."""
    import tifffile

    from tests.fields_data import PLATES

    rng = np.random.default_rng(seed)
    h, w = shape
    plate, (week, date) = next(iter(PLATES.items()))
    folder = root / plate
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(n_fields):
        img = np.stack([np.full(shape, 120.0), np.full(shape, 150.0), np.full(shape, 130.0)])
        centres = []
        while len(centres) < n_cells:  # well separated nuclei, away from the border
            c = rng.uniform([20, 20], [h - 20, w - 20])
            if all(np.hypot(*(c - d)) > 34 for d in centres):
                centres.append(c)
        for cy, cx in centres:
            rad = rng.uniform(6, 8)
            y0, y1, x0, x1 = int(max(cy - 40, 0)), int(min(cy + 40, h)), int(max(cx - 40, 0)), int(min(cx + 40, w))
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
            r = np.hypot(yy - cy, xx - cx)
            with np.errstate(over="ignore"):
                img[0, y0:y1, x0:x1] += 3000 / (1 + np.exp((r - rad) * 1.5))
                img[1, y0:y1, x0:x1] += 1200 / (1 + np.exp((r - rad * 2.0) * 0.8))
                img[2, y0:y1, x0:x1] += 900 / (1 + np.exp((r - rad * 2.2) * 0.8))
        img += rng.normal(0, 15, img.shape)
        img = np.clip(img, 0, 65535).astype(np.uint16)
        well, site = f"B{f // 9 + 2:02d}", f % 9 + 1
        for ch, plane in zip((1, 2, 4), img):
            tifffile.imwrite(folder / f"{week}_{date}_{well}_s{site}_w{ch}{f:08X}.tif", plane)


def fields_speed(tmp: Path, n_fields: int, shape, n_cells: int, cpu_workers: int) -> dict:
    """The command line on ``n_fields`` fields of view (bbbc021 settings: illumination,
    watershed nuclei, expanded cells, profiling in compartments), timed start to exit with
    ``profile_stages`` on: device=cuda (cluster=sync: one process, the GPU) and device=cpu
    (cluster=local, one worker per core), each after an untimed run on one other field (CuPy's,
    cuCIM's and numba's kernel caches filled). Objects/s of each (whole run: start-up, the
    illumination pass and writing included), their time per stage, the workers' busy share."""
    root, warm = tmp / "fields", tmp / "warm"
    t = time.perf_counter()
    write_fields(root, n_fields, shape, n_cells)
    write_fields(warm, 1, shape, n_cells, seed=1)  # a first run fills the kernel caches (untimed)
    out = {"fields": n_fields, "shape": list(shape), "cells_per_field": n_cells,
           "generate_s": round(time.perf_counter() - t, 2), "runs": {}}
    for name, extra in (("cuda", ["device=cuda", "cluster=sync"]),
                        ("cpu", ["device=cpu", "cluster=local", f"cluster.n_workers={cpu_workers}"])):
        dest = tmp / f"out-{name}"
        cmd = [sys.executable, "-m", "scip_gpu", "+dataset=bbbc021", "profile_stages=true", "progress=false",
               "export.formats=[parquet]", *extra]
        subprocess.run([*cmd, f"dataset.path={warm}", f"output={tmp / f'warm-{name}'}"], capture_output=True,
                       timeout=400, cwd=REPO)
        t = time.perf_counter()
        r = subprocess.run([*cmd, f"dataset.path={root}", f"output={dest}"], capture_output=True, text=True,
                           timeout=400, cwd=REPO)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            out["runs"][name] = {"error": f"exit {r.returncode}: {r.stderr[-1500:]}"}
            continue
        prov = json.loads((dest / "provenance.json").read_text())
        out["runs"][name] = {"wall_s": round(wall, 2), "objects": prov.get("objects"),
                             "objects_per_s": round(prov.get("objects", 0) / wall, 1),
                             "stage_seconds": prov.get("stage_seconds"), "workers": prov.get("workers")}
    return out

# ---------------------------------------------------------------------------------------------
# Throughput


def run_gpu(cells, plan, batch_size: int):
    """Profile ``cells`` in batches; host assembly of batch i+1 overlaps the GPU work of batch
    i, tables come back asynchronously into pinned buffers. Returns (seconds, peak used bytes,
    peak pool bytes, first rows of the result, device seconds): the device seconds are the sum
    over batches of the time from the compute stream reaching a batch (its pixels' copy waited
    for) to the end of its kernels (CUDA events), so device seconds / seconds is the share of
    the time the GPU computed. The copies run on streams of their own (as in the command line's
    batch loop)."""
    import cupy
    import cupyx

    from scip_gpu.batch import assemble
    from scip_gpu.pipeline import copy_back, copy_streams
    from scip_gpu.profile import profile_batch

    pool = cupy.get_default_memory_pool()
    shape = cells[0].shape[1:]
    starts = list(range(0, len(cells), batch_size))
    h2d, d2h = copy_streams(cupy)  # as the command line's batch loop (pipeline._run_batches_overlapped)
    ring = [cupyx.empty_pinned((batch_size, plan.n_features), dtype=np.float64) for _ in range(2)]
    peak_used = peak_total = 0
    first = None
    marks = []  # (start event, end event) per batch
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    nxt = assemble(cells[0:batch_size], np.arange(min(batch_size, len(cells))), shape, cupy, copy_stream=h2d)
    pending = None
    for k, s in enumerate(starts):
        b = nxt
        begin = cupy.cuda.Event()
        begin.record()
        table = profile_batch(b, plan, to_host=False)
        kernels_done = cupy.cuda.Event()
        kernels_done.record()
        marks.append((begin, kernels_done))
        host = ring[k % 2][: b.n]
        ev = copy_back(table, host, d2h)
        if k + 1 < len(starts):  # the host assembles the next batch while the GPU works
            e = starts[k + 1]
            nxt = assemble(cells[e:e + batch_size], np.arange(e, min(e + batch_size, len(cells))), shape, cupy,
                           copy_stream=h2d)
        peak_used = max(peak_used, pool.used_bytes())
        peak_total = max(peak_total, pool.total_bytes())
        if pending is not None:
            pending[0].synchronize()
            if first is None:
                first = pending[1][:256].copy()
        pending = (ev, host, b, table)
    pending[0].synchronize()
    secs = time.perf_counter() - t0
    if first is None:
        first = pending[1][:256].copy()
    device = sum(cupy.cuda.get_elapsed_time(a, z) for a, z in marks) / 1e3
    return secs, peak_used, peak_total, first, device


def stage_times(cells, plan, batch_size: int, batches: int):
    import cupy

    from scip_gpu.batch import assemble
    from scip_gpu.profile import StageTimer, profile_batch

    timer = StageTimer(enabled=True, xp=cupy)
    shape = cells[0].shape[1:]
    n = 0
    for k in range(batches):
        part = cells[k * batch_size:(k + 1) * batch_size]
        if not part:
            break
        profile_batch(assemble(part, np.arange(len(part)), shape, cupy), plan, timer)
        n += len(part)
    return {k: v / n for k, v in timer.seconds.items()}, n


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB buffer."""
    import cupy

    a = cupy.empty(2**27, dtype=cupy.float64)
    b = cupy.empty_like(a)
    b[...] = a
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(10):
        b[...] = a
    end.record()
    end.synchronize()
    return 10 * 2 * a.nbytes / (cupy.cuda.get_elapsed_time(start, end) / 1e3)


def h2d_bandwidth() -> float:
    import cupy
    import cupyx

    h = cupyx.empty_pinned((2**26,), dtype=np.float64)
    h[...] = 1.0
    d = cupy.empty(h.shape, dtype=h.dtype)
    d.set(h)
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(5):
        d.set(h)
    cupy.cuda.Device().synchronize()
    return 5 * h.nbytes / (time.perf_counter() - t)


def floor_per_object(plan, n_channels: int, bw_device: float, bw_h2d: float) -> dict:
    """Bytes each stage must move per object (each input read once, each output written once)
    and the time that takes at the measured bandwidths."""
    hw = 64 * 64
    px = n_channels * hw * 2
    mask = n_channels * hw
    table = plan.n_features * 8
    stages = {
        "h2d (pixels in)": (px, bw_h2d),
        "d2h (table out)": (table, bw_h2d),
        "mask:li": (px + mask, bw_device),
        "mask:otsu": (px + mask, bw_device),
        "combine (x2)": (2 * (px + 2 * mask + hw), bw_device),
        "shape (x2)": (2 * ((n_channels + 1) * hw + 59 * (n_channels + 1) * 8), bw_device),
        "intensity (x2)": (2 * (px + mask + hw + 88 * n_channels * 8), bw_device),
        "texture (x2)": (2 * (px + mask + hw + 56 * n_channels * 8), bw_device),
        "raw": (px + 11 * n_channels * 8, bw_device),
    }
    return {k: {"bytes": b, "seconds": b / bw} for k, (b, bw) in stages.items()}


def _cpu_chunk(args):
    cells, plan = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return profile_groups(cells, plan, np)


def run_cpu(cells, plan, workers: int):
    chunks = [cells[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_cpu_chunk, [(c, plan) for c in chunks if c]))
    return time.perf_counter() - t0


def compiled_kernels(cache_dir: str | None) -> dict:
    """What CuPy compiled into the kernel cache ``cache_dir`` (fresh for the ``first`` step):
    the number of binaries and, where ``CUPY_CACHE_SAVE_CUDA_SOURCE=1`` saved their sources
    beside them, the ``__global__`` functions they define, counted by name. A fresh machine's
    first batch pays one NVRTC compilation per binary (each about 0.1-0.3 s): these are the
    kernels to move into the prebuilt module, or to avoid."""
    import re
    from collections import Counter

    if not cache_dir or not os.path.isdir(cache_dir):
        return {}
    files = os.listdir(cache_dir)
    names: Counter = Counter()
    for f in files:
        if f.endswith(".cu"):
            with open(os.path.join(cache_dir, f), errors="replace") as fh:
                names.update(re.findall(r"__global__\s+void\s+(\w+)", fh.read()))
    return {"binaries": sum(not f.endswith(".cu") for f in files), "sources": sum(f.endswith(".cu") for f in files),
            "kernels": dict(names.most_common())}


def first_batch(n: int, channels: int) -> int:
    """One batch in this (fresh) process: import, compile, profile; prints the seconds and what
    CuPy compiled for it (``compiled_kernels``)."""
    t0 = time.perf_counter()
    import cupy

    from scip_gpu.batch import assemble
    from scip_gpu.profile import profile_batch

    cells = make_cells(min(n, 64), channels)
    cells = [cells[i % len(cells)] for i in range(n)]
    plan = make_plan(channels, n, "cuda")
    t1 = time.perf_counter()
    profile_batch(assemble(cells, np.arange(n), (64, 64), cupy), plan)
    t2 = time.perf_counter()
    print(json.dumps({"first_batch_seconds": t2 - t1, "setup_seconds": t1 - t0, "objects": n,
                      "cupy_cache_dir": os.environ.get("CUPY_CACHE_DIR"),
                      "nvrtc_pch": os.environ.get("CUPY_NVRTC_USE_PCH", "0"),
                      "compiled": compiled_kernels(os.environ.get("CUPY_CACHE_DIR"))}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=65536, help="objects profiled on the GPU (tiled)")
    p.add_argument("--unique", type=int, default=2048, help="distinct generated cells")
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--stage-batches", type=int, default=2)
    p.add_argument("--cpu-objects", type=int, default=1024)
    p.add_argument("--cpu-workers", type=int, default=os.cpu_count())
    p.add_argument("--equality-objects", type=int, default=256, help="12-channel cells compared with the CPU")
    p.add_argument("--ragged", type=int, default=300, help="ragged 3-channel cells compared with the CPU")
    p.add_argument("--reference-objects", type=int, default=0, help="objects through SCIP_GPU_KERNELS=0")
    p.add_argument("--first-batch", action="store_true", help="only time one batch in this process")
    p.add_argument("--preset", choices=sorted(PRESETS), default="scip",
                   help="feature preset (default scip: li + otsu masks; cellprofiler: li masks)")
    p.add_argument("--fields-only", action="store_true",
                   help="only the fields-of-view equality run (command line, device=cuda vs cpu)")
    p.add_argument("--fields-speed", type=int, default=0, metavar="N",
                   help="only time the command line on N full-size fields of view (device=cuda vs cpu)")
    p.add_argument("--field-shape", type=int, nargs=2, default=[1024, 1280])
    p.add_argument("--field-cells", type=int, default=100)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    global PRESET
    PRESET = args.preset
    if args.first_batch:
        return first_batch(256, args.channels)
    if args.fields_speed:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            res = fields_speed(Path(tmp), args.fields_speed, tuple(args.field_shape), args.field_cells,
                               args.cpu_workers)
        print(json.dumps(res))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-fields-speed.json").write_text(json.dumps(res, indent=2))
        return 0 if all("error" not in r for r in res["runs"].values()) else 1
    if args.fields_only:
        import tempfile

        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fields = check_fields(Path(tmp))
        fields["seconds"] = time.perf_counter() - t
        print(json.dumps(fields))
        args.out.mkdir(parents=True, exist_ok=True)
        fields["preset"] = PRESET
        name = "gpu-fields-equality.json" if PRESET == "scip" else f"gpu-fields-equality-{PRESET}.json"
        (args.out / name).write_text(json.dumps(fields, indent=2))
        ok = "error" not in fields and fields["outside_criterion"] == 0 and fields["nan_mismatch"] == 0
        return 0 if ok else 1

    from scip_gpu.backend import gpu_available

    ok, device_name = gpu_available()
    if not ok:
        print(f"bench_gpu: no usable GPU: {device_name}", file=sys.stderr)
        return 2
    import cupy

    t = time.perf_counter()
    unique = make_cells(args.unique, args.channels)
    cells = [unique[i % len(unique)] for i in range(args.n)]
    print(f"device: {device_name}; {args.unique} cells x {args.channels} channels generated in "
          f"{time.perf_counter() - t:.1f} s, tiled to {args.n}", flush=True)
    plan = make_plan(args.channels, args.batch_size, "cuda")
    cpu_plan = make_plan(args.channels, 256, "cpu")
    print(f"plan: {plan.n_features} columns", flush=True)

    # 1. equality
    t = time.perf_counter()
    m = min(args.equality_objects, len(unique))
    cpu12 = profile_groups(unique[:m], cpu_plan, np)
    eq12 = compare(profile_groups(unique[:m], plan, cupy), cpu12, plan)
    print(f"equality, 12-channel set ({m} cells, {time.perf_counter() - t:.1f} s):", json.dumps(eq12), flush=True)
    from scip_gpu.demo import make_cell

    ragged = [make_cell(i, n_channels=3, min_size=40, max_size=72)[0] for i in range(args.ragged)]
    plan3 = make_plan(3, 512, "cuda")
    cplan3 = make_plan(3, 256, "cpu")
    eq3 = compare(profile_groups(ragged, plan3, cupy), profile_groups(ragged, cplan3, np), plan3)
    print(f"equality, ragged 3-channel cells ({args.ragged}):", json.dumps(eq3), flush=True)

    # 2. throughput
    bw_dev, bw_h2d = copy_bandwidth(), h2d_bandwidth()
    # warm-up: three batches, as many as the loop holds at once, so that the pinned host buffers
    # are allocated (page-locked) before the timing, as in a long run
    run_gpu(cells[: 3 * args.batch_size], plan, args.batch_size)
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()  # (the device pool is measured from empty: its peak is the run's)
    secs, peak_used, peak_total, first_rows, dev_secs = run_gpu(cells, plan, args.batch_size)
    rate = args.n / secs
    # the timed loop's own rows (copies on their own streams, batches in flight) against the CPU
    k_pipe = min(len(first_rows), m)
    eq_pipe = compare(first_rows[:k_pipe], cpu12[:k_pipe], plan)
    print(f"equality, the timed loop's first {k_pipe} rows:", json.dumps(eq_pipe), flush=True)
    print(f"GPU: {rate:,.0f} objects/s ({secs:.2f} s for {args.n}; the GPU busy {dev_secs / secs:.0%} of it, "
          f"{dev_secs / args.n * 1e6:.2f} us per object), peak memory used {peak_used / 2**30:.2f} GiB "
          f"(pool {peak_total / 2**30:.2f} GiB)", flush=True)
    per_stage, n_stage = stage_times(cells, plan, args.batch_size, args.stage_batches)
    floor = floor_per_object(plan, args.channels, bw_dev, bw_h2d) if PRESET == "scip" else {}
    print("time per object by stage (us):", {k: round(v * 1e6, 2) for k, v in per_stage.items()}, flush=True)
    print(f"copy bandwidth: device {bw_dev / 1e12:.2f} TB/s, host->device {bw_h2d / 1e9:.1f} GB/s", flush=True)

    # 3. CPU on the same host
    k = min(args.cpu_objects, len(unique))
    cpu_s = run_cpu(unique[:k], cpu_plan, args.cpu_workers)
    cpu_rate = k / cpu_s
    print(f"CPU ({args.cpu_workers} processes): {cpu_rate:,.0f} objects/s ({cpu_s:.1f} s for {k})", flush=True)
    ref = None
    if args.reference_objects:
        os.environ["SCIP_GPU_KERNELS"] = "0"
        r = min(args.reference_objects, len(unique))
        rplan = make_plan(args.channels, r, "cuda")
        run_gpu(unique[:r], rplan, r)  # compile CuPy's kernels
        rs = run_gpu(unique[:r], rplan, r)[0]
        ref = {"objects": r, "objects_per_s": r / rs}
        os.environ.pop("SCIP_GPU_KERNELS")
        print(f"array-namespace path on the GPU (SCIP_GPU_KERNELS=0): {r / rs:,.1f} objects/s", flush=True)

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name,
        "device_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "host": {"name": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                 "cores": os.cpu_count(), "python": platform.python_version()},
        "versions": {"cupy": cupy.__version__, "numpy": np.__version__},
        "git_revision": ((REPO / "REVISION").read_text().strip() if (REPO / "REVISION").exists() else
                         subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=REPO).stdout.strip() or None),
        "defines": os.environ.get("SCIP_GPU_DEFINES", ""),  # kernel variant (empty: the default kernels)
        "dataset": {"objects": args.n, "unique_cells": args.unique, "channels": args.channels, "size": [64, 64],
                    "dtype": "uint16", "masks": ["li", "otsu"] if PRESET == "scip" else ["li"], "preset": PRESET,
                    "columns": plan.n_features},
        "gpu": {"objects_per_s": rate, "seconds": secs, "batch_size": args.batch_size,
                "device_seconds": dev_secs, "device_busy": dev_secs / secs,
                "peak_used_gib": peak_used / 2**30, "peak_pool_gib": peak_total / 2**30,
                "stage_seconds_per_object": per_stage, "stage_objects": n_stage},
        "bandwidth": {"device_copy_bytes_per_s": bw_dev, "host_to_device_bytes_per_s": bw_h2d},
        "floor_per_object": floor,
        "cpu": {"objects_per_s": cpu_rate, "objects": k, "workers": args.cpu_workers},
        "ratio_gpu_cpu": rate / cpu_rate,
        "reference_path": ref,
        "equality": {"12-channel": eq12, "ragged-3-channel": eq3, "timed-loop": eq_pipe},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "".join(ch if ch.isalnum() else "-" for ch in device_name).strip("-").lower()
    base = args.out / (f"gpu-{tag}-{args.n}" if PRESET == "scip" else f"gpu-{PRESET}-{tag}-{args.n}")
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# GPU benchmark on {device_name}", "",
             f"{result['date']}, host {result['host']['name']} ({result['host']['cores']} cores), "
             f"git {result['git_revision']}, CuPy {cupy.__version__}, kernel defines: "
             f"{result['defines'] or '(none: the default kernels)'}", "",
             f"- dataset: {args.n} IFC-like cells ({args.unique} distinct, tiled), {args.channels} channels, "
             f"64x64 uint16, {'li + otsu' if PRESET == 'scip' else 'li'}, {PRESET} preset ({plan.n_features} columns)",
             f"- GPU: **{rate:,.0f} objects/s** from host memory (batch {args.batch_size}; host assembly overlapped; "
             f"the GPU busy {dev_secs / secs:.0%} of the time), peak memory used {peak_used / 2**30:.2f} GiB (CuPy pool {peak_total / 2**30:.2f} GiB)",
             f"- CPU on the same host ({args.cpu_workers} processes, numba): {cpu_rate:,.0f} objects/s; "
             f"ratio GPU/CPU **{rate / cpu_rate:.1f}x**",
             f"- copy bandwidth measured: device {bw_dev / 1e12:.2f} TB/s (read + write), "
             f"host to device {bw_h2d / 1e9:.1f} GB/s"]
    if ref:
        lines.append(f"- array-namespace path on the same GPU (SCIP_GPU_KERNELS=0): {ref['objects_per_s']:,.1f} "
                     "objects/s")
    lines += ["", "| stage | measured us/object | floor us/object (bytes / bandwidth) |", "|---|---|---|"]
    for k_, v in per_stage.items():
        lines.append(f"| {k_} | {v * 1e6:.2f} | |")
    for k_, v in floor.items():
        lines.append(f"| floor: {k_} | | {v['seconds'] * 1e6:.3f} ({v['bytes']:,} B) |")
    lines += ["", "| check | family | worst relative difference | values outside criterion | NaN mismatches |",
              "|---|---|---|---|---|"]
    for name, eq in (("12-channel", eq12), ("ragged 3-channel", eq3), ("timed loop's rows", eq_pipe)):
        for fam, v in eq.items():
            lines.append(f"| {name} | {fam} | {v['worst_rel']:.2e} | {v['outside_criterion']} | {v['nan_mismatch']} |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {base}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
