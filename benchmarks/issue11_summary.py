"""Issue 11's targets, met or not, read off a GPU session's result files.

    python benchmarks/issue11_summary.py benchmarks/results/session     # a gpu_session.sh folder
    python benchmarks/issue11_summary.py FOLDER --out /tmp/summary      # when FOLDER is read-only

Reads every ``*.json`` under FOLDER (``bench_scaling.py`` results: ``experiment`` + ``points``;
``bench_gpu.py`` results: ``gpu`` + ``cpu`` + ``equality``) and prints a Markdown table, also
written as ``issue11-summary.md`` / ``.json`` to ``--out`` (default FOLDER):

- **dense, 10x the CPU**: the command line with ``device=cuda`` on the dense 12-channel zarr
  store (its largest N; the issue asks for 100,000) against ``device=cpu cluster=local`` with one
  worker per core on the same host (same store layout; ``gpu_session.sh``'s ``cpu_peer`` step):
  whole-run objects/s (start to exit), met when the ratio is >= 10; when the CPU ran fewer
  objects, a note gives the ratio against its run projected to the GPU's N (its fixed seconds plus
  N objects at its workers' summed rate);
- **dense, within 2x of the batch path**: the same GPU run against ``bench_gpu.py``'s objects/s
  (the kernels fed from host memory, default kernels, ``scip`` preset), met when >= 0.5; without
  a batch-path result in FOLDER, the committed ``results/gpu-*-65536.json`` is used and said so;
- **ragged, at least the host's decode rate**: the command line on SCIP's ragged zarr store
  (``--dataset ragged``) against the objects/s the host's cores decode that store at
  (``decode`` in the same point), met when >= 1; the GPU's busy share (``per_worker``
  ``device_busy``) says which side bounds a miss (>= 90 %: the GPU);
- the remaining results (``scaling`` objects / workers, ``kvikio`` true / false) are listed as
  measured, objects/s per point.

Only runs that exited 0 give a rate; a timed-out run is reported with its bound (N / timeout).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_N = 100_000     # objects of the dense run
BUSY_BOUND = 0.9       # device-busy share from which a miss is the GPU's

# -------------------------------------------------------------------------------------------------
# Loading and choosing


def load_results(folder: Path) -> list[dict]:
    """Every result JSON under ``folder`` (recursively), each with ``_file`` (its relative path)."""
    out = []
    for f in sorted(Path(folder).rglob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and (is_scaling(d) or is_batch(d)):
            d["_file"] = str(f.relative_to(folder))
            out.append(d)
    return out


def is_scaling(d: dict) -> bool:
    return "experiment" in d and isinstance(d.get("points"), list)


def is_batch(d: dict) -> bool:
    return isinstance(d.get("gpu"), dict) and "objects_per_s" in d["gpu"] and "equality" in d


def _default_cli(extra) -> bool:
    """Overrides that leave the command line as a user runs it (worker counts only)."""
    return all(str(e).startswith("cluster.") for e in (extra or []))


def pick_point(results: list[dict], *, device: str, dataset: str, cluster: str | None = None,
               channels: int = 12, one_worker_per_core: bool = False):
    """(result, point): among ``objects`` runs of the default command line on ``device`` /
    ``dataset``, the largest N that exited 0, else the largest N (failed), else (None, None)."""
    best = None
    for r in results:
        if not is_scaling(r) or r["experiment"] != "objects" or r.get("device") != device:
            continue
        if r.get("dataset") != dataset or r.get("channels") != channels or not _default_cli(r.get("extra")):
            continue
        if cluster is not None and r.get("cluster") != cluster:
            continue
        if one_worker_per_core and not per_core(r):
            continue
        for p in r["points"]:
            key = (p.get("rc") == 0, p["n_objects"])
            if best is None or key > best[0]:
                best = (key, r, p)
    return (None, None) if best is None else best[1:]


def per_core(r: dict) -> bool:
    """One worker process per usable core: ``cluster.n_workers`` equal to the cores, or unset
    (``cluster=local``'s default, ``os.cpu_count()``, where it equals the usable cores)."""
    cores = r.get("usable_cores") or (r.get("machine") or {}).get("usable_cores")
    set_ = [e for e in r.get("extra") or [] if str(e).startswith("cluster.n_workers=")]
    if set_:
        return cores is not None and int(set_[-1].split("=", 1)[1]) == int(cores)
    logical = (r.get("machine") or {}).get("logical_cores")
    return cores is None or logical is None or int(cores) == int(logical)


def pick_batch(results: list[dict]) -> dict | None:
    """The batch path's result: default kernels, ``scip`` preset, the largest N."""
    cands = [r for r in results if is_batch(r) and not r.get("defines")
             and (r.get("dataset") or {}).get("preset", "scip") == "scip"]
    return max(cands, key=lambda r: (r.get("dataset") or {}).get("objects", 0), default=None)


def committed_batch() -> dict | None:
    """The batch path's committed result (``results/gpu-*-65536.json``), newest first."""
    files = sorted((HERE / "results").glob("gpu-nvidia-*-65536.json"))
    for f in reversed(files):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if is_batch(d):
            d["_file"] = f"benchmarks/results/{f.name} (committed; not this session)"
            return d
    return None


# -------------------------------------------------------------------------------------------------
# Verdicts


def rate(p: dict | None) -> float | None:
    return None if p is None or p.get("rc") != 0 else p.get("objects_per_s")


def bound(p: dict | None) -> str:
    """What a failed point says: a timed-out run's N / wall is an upper bound of its rate."""
    if p is None:
        return "not measured"
    if p.get("rc") == "timeout":
        return f"timed out after {p['wall_s']:.0f} s (< {p['n_objects'] / p['wall_s']:,.1f} objects/s)"
    if p.get("rc") == "killed":
        return "stopped by the session step's timeout"
    return f"failed (exit {p.get('rc')})"


def verdict(numerator: float | None, denominator: float | None, threshold: float) -> tuple[float | None, str]:
    """(ratio, 'met' / 'not met' / 'not measured') of ``numerator / denominator >= threshold``."""
    if not numerator or not denominator:
        return None, "not measured"
    ratio = numerator / denominator
    return ratio, "met" if ratio >= threshold else "not met"


def busy_share(p: dict | None) -> float | None:
    """The largest device-busy share over the run's workers (``per_worker``), else None."""
    shares = [w.get("device_busy") for w in ((p or {}).get("per_worker") or {}).values()
              if isinstance(w, dict) and w.get("device_busy") is not None]
    return max(shares) if shares else None


def projected_rate(p: dict | None, n: int) -> tuple[float, float, float] | None:
    """(whole-run objects/s at ``n`` objects, summed per-worker objects/s, fixed seconds) of a CPU
    run measured at another N: its fixed cost (start-up, export: wall minus its objects over the
    workers' summed rate) plus ``n`` objects at that summed rate. None without per-worker rates."""
    if p is None or p.get("rc") != 0 or not p.get("per_worker"):
        return None
    summed = sum(w.get("objects_per_s") or 0 for w in p["per_worker"].values() if isinstance(w, dict))
    if summed <= 0:
        return None
    fixed = max(0.0, p["wall_s"] - p["n_objects"] / summed)
    return n / (fixed + n / summed), summed, fixed


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def summarise(results: list[dict], *, fallback_batch: bool = True) -> dict:
    """The targets' rows (each: target, measured, peer, ratio, needed, verdict, notes)."""
    rows = []
    gpu_r, gpu_p = pick_point(results, device="cuda", dataset="zarr")
    cpu_r, cpu_p = pick_point(results, device="cpu", dataset="zarr", cluster="local", one_worker_per_core=True)
    g, c = rate(gpu_p), rate(cpu_p)
    ratio, v = verdict(g, c, 10.0)
    notes = []
    if gpu_p is not None and gpu_p["n_objects"] != TARGET_N:
        notes.append(f"GPU run on {gpu_p['n_objects']:,} objects (the issue's: {TARGET_N:,})")
        larger = [p for p in gpu_r["points"] if p["n_objects"] > gpu_p["n_objects"]]
        notes += [f"{p['n_objects']:,} objects: {bound(p)}" for p in larger]
    if gpu_p is not None and cpu_p is not None and gpu_p["n_objects"] != cpu_p["n_objects"]:
        notes.append(f"CPU peer on {cpu_p['n_objects']:,} objects (start-up weighs more there: the ratio "
                     "leans towards the GPU)")
    proj = projected_rate(cpu_p, gpu_p["n_objects"]) if gpu_p is not None and c else None
    if proj is not None:
        notes.append(f"CPU workers' summed rate while profiling {proj[1]:,.1f} objects/s, start-up and export "
                     f"{proj[2]:.1f} s: at {gpu_p['n_objects']:,} objects the CPU run would give "
                     f"{proj[0]:,.1f} objects/s" + (f", ratio {g / proj[0]:.2f}" if g else ""))
    if busy_share(gpu_p) is not None:
        notes.append(f"GPU busy {100 * busy_share(gpu_p):.0f} %")
    rows.append({"target": "dense 12-channel zarr, device=cuda cluster=local_cuda, >= 10x device=cpu "
                           "(one worker per core)",
                 "measured": g, "measured_what": bound(gpu_p) if g is None else f"{gpu_p['n_objects']:,} objects",
                 "peer": c, "peer_what": bound(cpu_p) if c is None else
                 f"device=cpu, {cpu_r.get('usable_cores') or '?'} cores, {cpu_p['n_objects']:,} objects",
                 "ratio": ratio, "needed": ">= 10", "verdict": v, "notes": notes,
                 "files": [x["_file"] for x in (gpu_r, cpu_r) if x]})

    batch = pick_batch(results)
    if batch is None and fallback_batch:
        batch = committed_batch()
    b = batch["gpu"]["objects_per_s"] if batch else None
    ratio, v = verdict(g, b, 0.5)
    notes = []
    if batch is not None and gpu_r is not None:
        dev, machine_gpu = str(batch.get("device", "")), str((gpu_r.get("machine") or {}).get("gpu") or "")
        if dev and dev.split()[-1] not in machine_gpu:
            notes.append(f"different devices: batch path on {dev}, command line on {machine_gpu or '?'}")
    tl = (gpu_p or {}).get("timeline")
    if tl:  # where the fixed seconds went (provenance.json's timeline: s from the process's start)
        notes.append("timeline (s from the process's start): " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}"
                                                                           for k, v in tl.items()))
    rows.append({"target": "dense, the command line within 2x of the batch path's objects/s",
                 "measured": g, "measured_what": bound(gpu_p) if g is None else f"{gpu_p['n_objects']:,} objects",
                 "peer": b, "peer_what": "not measured" if batch is None else
                 f"bench_gpu.py, {batch.get('device')}, {(batch.get('dataset') or {}).get('objects', '?'):,} objects",
                 "ratio": ratio, "needed": ">= 0.5", "verdict": v, "notes": notes,
                 "files": [x["_file"] for x in (gpu_r, batch) if x]})

    rag_r, rag_p = pick_point(results, device="cuda", dataset="ragged")
    r_ = rate(rag_p)
    dec = (rag_p or {}).get("decode") or {}
    ratio, v = verdict(r_, dec.get("objects_per_s"), 1.0)
    busy = busy_share(rag_p)
    notes = []
    if busy is not None:
        notes.append(f"GPU busy {100 * busy:.0f} %")
        if v == "not met":
            notes.append("the GPU bounds it" if busy >= BUSY_BOUND else "the host bounds it (the GPU waits)")
    rows.append({"target": "SCIP's ragged zarr (host decoding), >= the host's decode rate, GPU never the bottleneck",
                 "measured": r_, "measured_what": bound(rag_p) if r_ is None else f"{rag_p['n_objects']:,} objects",
                 "peer": dec.get("objects_per_s"), "peer_what": "not measured" if not dec else
                 f"{dec['objects']:,} objects decoded by {dec['processes']} processes in {dec['seconds']:.2f} s",
                 "ratio": ratio, "needed": ">= 1", "verdict": v, "notes": notes,
                 "files": [rag_r["_file"]] if rag_r else []})

    others = []
    chosen = {id(x) for x in (gpu_r, cpu_r, rag_r) if x}
    for r in results:
        if is_scaling(r) and id(r) not in chosen:
            for p in r["points"]:
                others.append({"file": r["_file"], "experiment": r["experiment"], "device": r.get("device"),
                               "dataset": r.get("dataset"), "extra": " ".join(r.get("extra") or []),
                               "n_objects": p["n_objects"], "workers": p.get("workers"),
                               "objects_per_s": rate(p), "status": "ok" if rate(p) else bound(p),
                               "gpu_busy": busy_share(p)})
    return {"targets": rows, "other_points": others}


def markdown(summary: dict, folder: str) -> str:
    lines = [f"# Issue 11 targets: {folder}", "",
             "| target | measured objects/s | peer objects/s | ratio | needed | verdict |", "|---|---|---|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['measured'])} ({t['measured_what']}) | {_fmt(t['peer'])} "
                     f"({t['peer_what']}) | {'-' if t['ratio'] is None else format(t['ratio'], '.3g')} | {t['needed']} | **{t['verdict']}** |")
    lines.append("")
    for t in summary["targets"]:
        if t["notes"] or t["files"]:
            lines.append(f"- {t['target']}: " + "; ".join(t["notes"] + [f"from {', '.join(t['files'])}"]))
    if summary["other_points"]:
        lines += ["", "Other command-line runs:", "",
                  "| file | experiment | device | dataset | overrides | objects | workers | objects/s | device busy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for o in summary["other_points"]:
            busy = "-" if o["gpu_busy"] is None else f"{100 * o['gpu_busy']:.0f} %"
            lines.append(f"| {o['file']} | {o['experiment']} | {o['device']} | {o['dataset']} | {o['extra'] or '-'} "
                         f"| {o['n_objects']:,} | {o['workers'] if o['workers'] is not None else '-'} | "
                         f"{_fmt(o['objects_per_s']) if o['objects_per_s'] else o['status']} | {busy} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a session folder (gpu_session.sh's $OUT)")
    ap.add_argument("--out", type=Path, default=None, help="where to write issue11-summary.{md,json} (default: folder)")
    ap.add_argument("--no-fallback", action="store_true",
                    help="do not use the committed batch-path result when the folder has none")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"issue11_summary: {args.folder} is not a folder", file=sys.stderr)
        return 2
    summary = summarise(load_results(args.folder), fallback_batch=not args.no_fallback)
    text = markdown(summary, str(args.folder))
    print(text)
    out = args.out or args.folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "issue11-summary.md").write_text(text)
        (out / "issue11-summary.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {out / 'issue11-summary.md'} and .json")
    except OSError as exc:
        print(f"issue11_summary: could not write to {out} ({exc}); pass --out", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
