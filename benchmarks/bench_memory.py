"""Peak memory against the number of objects: it must not grow with N.

Runs ``python -m scip_gpu`` on the demo dataset for several N (fixed partition size, 2 worker
processes) and samples, every 0.1 s, the resident memory of the driver process and the sum over
the driver and its workers. Writes ``benchmarks/results/memory-vs-objects.{json,md}``.

    python benchmarks/bench_memory.py                     # N = 500, 2000, 8000
    python benchmarks/bench_memory.py -n 1000 4000 16000 --features scip
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_description, machine_markdown  # noqa: E402


def measure(n: int, features: str, workers: int, partition: int) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(dir=HERE / ".work" if (HERE / ".work").is_dir() else None) as tmp:
        cmd = [sys.executable, "-m", "scip_gpu", "+dataset=demo", f"dataset.n_objects={n}", f"features={features}",
               "cluster=local", f"cluster.n_workers={workers}", f"partition_size={partition}",
               f"output={tmp}/out", "progress=false"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        driver = psutil.Process(proc.pid)
        peak_driver = peak_tree = 0
        while proc.poll() is None:
            try:
                procs = [driver] + driver.children(recursive=True)
                rss = [p.memory_info().rss for p in procs if p.is_running()]
                peak_driver = max(peak_driver, rss[0])
                peak_tree = max(peak_tree, sum(rss))
            except psutil.Error:
                pass
            time.sleep(0.1)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"N={n}: scip_gpu failed: {err[-2000:]}")
        return {"objects": n, "seconds": time.perf_counter() - t0, "peak_driver_mib": peak_driver / 2**20,
                "peak_tree_mib": peak_tree / 2**20, "summary": out.strip().splitlines()[-1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, nargs="+", default=[500, 2000, 8000])
    p.add_argument("--features", default="intensity")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partition-size", type=int, default=256)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    rows = []
    for n in args.n:
        r = measure(n, args.features, args.workers, args.partition_size)
        print(f"N={n:>7}: driver peak {r['peak_driver_mib']:.0f} MiB, all processes {r['peak_tree_mib']:.0f} MiB, "
              f"{r['seconds']:.1f} s", flush=True)
        rows.append(r)
    desc = machine_description()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-vs-objects.json").write_text(json.dumps({"machine": desc, "features": args.features,
                                                                "workers": args.workers,
                                                                "partition_size": args.partition_size,
                                                                "runs": rows}, indent=2))
    lines = ["# Peak memory against the number of objects", "",
             f"Demo cells (48..72 px, 3 channels), masks li + otsu, features `{args.features}`, "
             f"{args.workers} workers, partition size {args.partition_size}.", "",
             "| objects | driver peak RSS (MiB) | driver + workers (MiB) | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['objects']} | {r['peak_driver_mib']:.0f} | {r['peak_tree_mib']:.0f} | {r['seconds']:.1f} |"
              for r in rows]
    lines += ["", machine_markdown(desc)]
    (args.out / "memory-vs-objects.md").write_text("\n".join(lines) + "\n")
    print(f"-> {args.out / 'memory-vs-objects.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
