"""GPU benchmark: objects/s of the GPU path with the data in host memory, per stage, peak GPU
memory, and the CPU path on the same host for the ratio.

Dataset: IFC-like 64x64 uint16 cells with 12 channels (``scip_gpu.demo.make_cell``, generated
once into host memory), masks li + otsu, the ``scip`` feature preset (5122 feature columns).

    python benchmarks/bench_gpu.py                    # N = 100000 on the GPU, 2000 on the CPU
    python benchmarks/bench_gpu.py -n 20000 --batch-size 4096 --cpu-objects 500

What is timed:

- GPU: ``profile_batch`` over batches assembled from host memory (pinned host buffer, one
  host-to-device copy, every stage on the device, one copy of the feature table back), after a
  warm-up batch (kernel compilation); the device is synchronised at the end. A second pass with
  ``profile_stages`` gives the time per stage (it synchronises at stage boundaries).
- CPU: the same batches through the NumPy path in one process per core
  (``concurrent.futures.ProcessPoolExecutor``), objects/s over all cores.
- Equality: the GPU and CPU feature values of the first objects, worst relative difference per
  family (target 1e-5).

Writes ``benchmarks/results/gpu-<device>-<N>.{json,md}`` with the device name and the host.
Needs CuPy and a GPU; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_plan(n_channels: int, batch_size: int, device: str):
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs
    from scip_gpu.profile import build_plan

    register_configs()
    names = [f"ch{i}" for i in range(n_channels)]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["+dataset=demo", f"dataset.n_channels={n_channels}",
                                           f"batch_size={batch_size}", f"device={device}", "features=scip",
                                           "masks=scip"])
    config, _ = to_config(cfg)
    return build_plan(config, names)


def make_cells(n: int, n_channels: int, seed: int = 0) -> list[np.ndarray]:
    from scip_gpu.demo import make_cell

    out = []
    for i in range(n):
        img, _ = make_cell(i, seed=seed, n_channels=n_channels, min_size=60, max_size=68)
        c, h, w = img.shape
        img = np.pad(img, ((0, 0), (0, max(0, 64 - h)), (0, max(0, 64 - w))), mode="reflect")[:, :64, :64]
        out.append(np.ascontiguousarray(img))
    return out


def batches(cells, plan, batch_size):
    from scip_gpu.batch import padded_shape

    shape = padded_shape(64, 64, margin=plan.margin, multiple=plan.cfg.pad_multiple)
    for s in range(0, len(cells), batch_size):
        yield np.arange(s, min(s + batch_size, len(cells))), shape


def run_gpu(cells, plan, batch_size, stages: bool):
    import cupy

    from scip_gpu.batch import assemble
    from scip_gpu.profile import StageTimer, profile_batch

    pool = cupy.get_default_memory_pool()
    timer = StageTimer(enabled=stages, xp=cupy)
    peak = 0
    out = []
    t0 = time.perf_counter()
    for idx, shape in batches(cells, plan, batch_size):
        b = assemble([cells[i] for i in idx], idx, shape, cupy)
        out.append(profile_batch(b, plan, timer))
        peak = max(peak, pool.total_bytes())
        del b
    cupy.cuda.Device().synchronize()
    seconds = time.perf_counter() - t0
    return np.concatenate(out), seconds, peak, timer.seconds


def _cpu_chunk(args):
    cells, plan, batch_size = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from scip_gpu.batch import assemble
    from scip_gpu.profile import profile_batch

    out = []
    for idx, shape in batches(cells, plan, batch_size):
        out.append(profile_batch(assemble([cells[i] for i in idx], idx, shape, np), plan))
    return np.concatenate(out)


def run_cpu(cells, plan, workers: int, batch_size: int):
    chunks = [cells[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_cpu_chunk, [(c, plan, batch_size) for c in chunks]))
    seconds = time.perf_counter() - t0
    # undo the round-robin split
    out = np.empty((len(cells), parts[0].shape[1]))
    for i, p in enumerate(parts):
        out[i::workers] = p
    return out, seconds


def worst_difference(gpu, cpu, plan):
    res = {}
    for fam in sorted({c.family for c in plan.columns}):
        cols = [i for i, c in enumerate(plan.columns) if c.family == fam]
        a, b = gpu[:, cols], cpu[:, cols]
        both = ~np.isnan(a) & ~np.isnan(b)
        nan_mismatch = int((np.isnan(a) != np.isnan(b)).sum())
        with np.errstate(all="ignore"):
            rel = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-6)
        res[fam] = {"worst_rel": float(np.max(rel[both], initial=0.0)), "nan_mismatch": nan_mismatch}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=100_000, help="objects on the GPU")
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--cpu-objects", type=int, default=2000)
    p.add_argument("--cpu-workers", type=int, default=os.cpu_count())
    p.add_argument("--cpu-batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)

    from scip_gpu.backend import gpu_available

    ok, device_name = gpu_available()
    if not ok:
        print(f"bench_gpu: no usable GPU: {device_name}", file=sys.stderr)
        return 2
    import cupy

    print(f"device: {device_name}; generating {args.n} cells x {args.channels} channels ...", flush=True)
    t = time.perf_counter()
    cells = make_cells(args.n, args.channels)
    print(f"  {time.perf_counter() - t:.1f} s (host memory: {sum(c.nbytes for c in cells) / 2**30:.2f} GiB)")
    plan = make_plan(args.channels, args.batch_size, "cuda")
    print(f"plan: {plan.n_features} columns, margin {plan.margin}")

    run_gpu(cells[: min(len(cells), args.batch_size)], plan, args.batch_size, False)  # warm-up, compile
    gpu_vals, gpu_s, peak, _ = run_gpu(cells, plan, args.batch_size, False)
    print(f"GPU: {args.n / gpu_s:,.0f} objects/s ({gpu_s:.2f} s), peak pool {peak / 2**30:.2f} GiB")
    n_stage = min(args.n, 8 * args.batch_size)
    _, stage_s, _, stages = run_gpu(cells[:n_stage], plan, args.batch_size, True)
    per_stage = {k: n_stage / v for k, v in stages.items() if v > 0}
    print("GPU per stage (objects/s):", {k: round(v) for k, v in sorted(per_stage.items(), key=lambda kv: kv[1])})

    m = min(args.cpu_objects, args.n)
    cpu_plan = make_plan(args.channels, args.cpu_batch_size, "cpu")
    cpu_vals, cpu_s = run_cpu(cells[:m], cpu_plan, args.cpu_workers, args.cpu_batch_size)
    cpu_rate = m / cpu_s
    print(f"CPU ({args.cpu_workers} processes): {cpu_rate:,.0f} objects/s ({cpu_s:.1f} s for {m})")
    diff = worst_difference(gpu_vals[:m], cpu_vals, plan)
    print("GPU vs CPU worst relative difference per family:", diff)

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name,
        "device_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "host": {"name": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                 "cores": os.cpu_count(), "python": platform.python_version()},
        "dataset": {"objects": args.n, "channels": args.channels, "size": [64, 64], "dtype": "uint16",
                    "masks": ["li", "otsu"], "preset": "scip", "columns": plan.n_features},
        "gpu": {"objects_per_s": args.n / gpu_s, "seconds": gpu_s, "batch_size": args.batch_size,
                "peak_pool_gib": peak / 2**30, "stage_objects_per_s": per_stage},
        "cpu": {"objects_per_s": cpu_rate, "objects": m, "workers": args.cpu_workers},
        "ratio_gpu_cpu": (args.n / gpu_s) / cpu_rate,
        "gpu_vs_cpu_worst_relative_difference": diff,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "".join(ch if ch.isalnum() else "-" for ch in device_name).strip("-").lower()
    base = args.out / f"gpu-{tag}-{args.n}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# GPU benchmark on {device_name}", "", f"{result['date']}, host {result['host']}", "",
             f"- dataset: {args.n} IFC-like cells, {args.channels} channels, 64x64 uint16, li + otsu, scip preset "
             f"({plan.n_features} columns)",
             f"- GPU: **{args.n / gpu_s:,.0f} objects/s** end to end from host memory (batch {args.batch_size}), "
             f"peak memory pool {peak / 2**30:.2f} GiB",
             f"- CPU on the same host ({args.cpu_workers} processes): {cpu_rate:,.0f} objects/s",
             f"- ratio GPU/CPU: **{result['ratio_gpu_cpu']:.1f}x**", "", "| stage | objects/s |", "|---|---|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in sorted(per_stage.items(), key=lambda kv: kv[1])]
    lines += ["", "| family | worst relative difference GPU vs CPU | NaN mismatches |", "|---|---|---|"]
    lines += [f"| {k} | {v['worst_rel']:.2e} | {v['nan_mismatch']} |" for k, v in diff.items()]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {base}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
