"""A run's fixed costs: the command line's time that does not grow with the objects.

Issue 11 asks ``python -m scip_gpu ... device=cuda`` to run within 2x of the batch path's
objects/s, start to exit. At the batch path's 23,000 objects/s (run 8, H100), 100,000 objects
are 4.4 s of device work, so a few seconds of start-up and shut-down decide the target. This
benchmark runs the real command line (a subprocess, as a user runs it) on a few objects of a
dense 12-channel store, several times, and splits each run's wall clock (from the spawn to the
exit) into its phases, read from run.log's time stamps (which every version writes):

- ``start``: spawn to "run started" (interpreter, imports, Hydra composing the configuration);
- ``setup``: to "running N partition(s)" (the objects listed, the plan, the output folder,
  the column descriptions, the cluster started and its first worker connected);
- ``partitions``: to the last progress line (the few objects themselves);
- ``close``: to the first line after the partitions (the cluster shut down);
- ``outputs``: to the last output's line (the .h5ad, the report);
- ``exit``: to the process's end (writing the summary, the interpreter's shut-down).

``provenance.json``'s ``timeline`` (where the version writes one) is kept beside them.

    python benchmarks/bench_startup.py --runs 5 --cluster local sync
    python benchmarks/bench_startup.py --repo . /tmp/before   # against a worktree of an earlier commit
    python benchmarks/bench_startup.py --runs 3 --cluster local_cuda --device cuda   # a GPU host
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
WORK = HERE / ".work" / "startup"
RESULTS = HERE / "results"

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ scip_gpu: (.*)$")


def _stamps(log: Path) -> list[tuple[float, str]]:
    out = []
    for line in log.read_text().splitlines():
        m = STAMP.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, m.group(2)))
    return out


def phases(log: Path, spawned: float, ended: float) -> dict[str, float]:
    """The run's phases (s) from run.log's stamps: see the module's description."""
    stamps = _stamps(log)

    def first(pred, after: float = 0.0) -> float | None:
        return next((t for t, msg in stamps if t >= after and pred(msg)), None)

    started = first(lambda m: m.startswith("scip_gpu run started"))
    running = first(lambda m: m.startswith("running ") and "partition(s)" in m)
    progress = [t for t, m in stamps if m.startswith("progress:")]
    last_progress = progress[-1] if progress else running
    after = first(lambda m: not m.startswith("progress:"), after=last_progress + 1e-6) if last_progress else None
    written = [t for t, m in stamps if " written to " in m]
    marks = {"start": started, "setup": running, "partitions": last_progress, "close": after,
             "outputs": written[-1] if written else after}
    out, prev = {}, spawned
    for name, t in marks.items():
        if t is None:
            continue
        out[name] = round(max(t - prev, 0.0), 3)
        prev = t
    out["exit"] = round(max(ended - prev, 0.0), 3)
    return out


def run_once(store: Path, cluster: str, extra: list[str], repo: Path = HERE.parent, device: str = "cpu") -> dict:
    out_root = WORK / "runs"
    if out_root.exists():
        shutil.rmtree(out_root)
    cmd = [sys.executable, "-m", "scip_gpu", "+dataset=zarr", f"dataset.path={store}", f"output_root={out_root}",
           f"device={device}", f"cluster={cluster}", *(["cluster.n_workers=1"] if cluster == "local" else []), *extra]
    spawned = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)  # (-m: the repo's scip_gpu first)
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    folder = next(out_root.iterdir())
    prov = json.loads((folder / "provenance.json").read_text())
    return {"wall_s": round(ended - spawned, 3), "phases_s": phases(folder / "run.log", spawned, ended),
            "timeline_s": prov.get("timeline"), "run_seconds": prov.get("seconds")}


def _git(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip() + ("+" if _dirty(repo) else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _dirty(repo: Path) -> bool:
    return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per cluster (the median is reported)")
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--cluster", nargs="+", default=["local", "sync"], choices=["local", "sync", "local_cuda"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: a GPU host's fixed costs (with --cluster local_cuda: one dask-cuda worker per GPU)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    ap.add_argument("--repo", type=Path, nargs="+", default=[HERE.parent],
                    help="checkouts whose scip_gpu runs (e.g. an earlier commit's worktree), runs interleaved")
    ap.add_argument("extra", nargs="*", help="more overrides for every run")
    args = ap.parse_args(argv)

    from _common import write_result
    from bench_scaling import dense_store

    store = dense_store(args.objects, args.channels, WORK)
    for repo in args.repo:  # (untimed: numba's, CuPy's and Python's caches warm, as on a user's second run)
        run_once(store, "sync", args.extra, repo, args.device)
    points = []
    for cluster in args.cluster:
        runs: dict[Path, list] = {repo: [] for repo in args.repo}
        for _ in range(args.runs):
            for repo in args.repo:  # interleaved: the machine's drift falls on each alike
                runs[repo].append(run_once(store, cluster, args.extra, repo, args.device))
        for repo, done in runs.items():
            names = list(done[0]["phases_s"])
            point = {"cluster": cluster, "device": args.device, "repo": str(repo), "git": _git(repo),
                     "objects": args.objects,
                     "channels": args.channels, "runs": done,
                     "median_wall_s": round(statistics.median(r["wall_s"] for r in done), 3),
                     "median_phases_s": {k: round(statistics.median(r["phases_s"].get(k, 0.0) for r in done), 3)
                                         for k in names}}
            print(json.dumps({k: v for k, v in point.items() if k != "runs"}), flush=True)
            points.append(point)
    write_result(args.out, "startup", args.tag, args.extra, points)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
