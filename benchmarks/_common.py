"""Shared helpers of the benchmark scripts: locating SCIP's venv, writing its config, running both
tools as subprocesses (wall clock and peak memory of the whole process tree), reading their
outputs, classifying columns into feature families, and describing the machine.

Standard library + numpy/pandas/pyarrow/psutil only. SCIP (GPL-3.0) is never imported here: it
runs in its own venv (see scip_env.sh) as a subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"

# Families in report order. regions and bbox are SCIP "meta" columns, the others "feat" columns.
FAMILIES = ("regions", "bbox", "shape", "intensity", "texture", "raw")

INTENSITY_STATS = ("mean", "median", "max", "min", "std", "mad", "lower_quartile", "upper_quartile",
                   "sum", "skewness", "kurtosis")
SHAPE_PROPS = ("area", "convex_area", "eccentricity", "equivalent_diameter", "euler_number",
               "feret_diameter_max", "filled_area", "major_axis_length", "minor_axis_length",
               "orientation", "perimeter", "perimeter_crofton", "solidity", "extent",
               "inertia_tensor", "inertia_tensor_eigvals", "moments", "moments_central",
               "moments_hu")
# meta columns that identify an object (used to align rows), not measurements
ID_META = ("meta_index", "meta_path", "meta_zarr_idx", "meta_object_number", "meta_status")

# one BLAS/OpenMP thread per process for both tools, so that -j N means N busy cores
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class BenchError(RuntimeError):
    """A setup problem reported to the user without a traceback."""


# ---------------------------------------------------------------------------------------------
# SCIP's venv


def _scip_ok(python: Path) -> tuple[bool, str]:
    code = ("import importlib.metadata as m, scip.main, zarr; "
            "print(m.version('scip'), zarr.__version__)")
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if r.returncode != 0:
        return False, (r.stderr.strip().splitlines() or ["import failed"])[-1]
    return True, r.stdout.strip()


def find_scip_python(explicit: str | None = None, setup: bool = False) -> Path:
    """The python of a venv with SCIP 0.1.12.

    Order: ``explicit`` (--scip-python), ``$SCIP_VENV/bin/python``, ``benchmarks/.work/scip-venv``.
    With ``setup`` the venv is created by scip_env.sh when none is found.
    """
    # the first one given is the only one tried: an explicit choice never falls back silently
    if explicit:
        candidates = [Path(explicit)]
    elif os.environ.get("SCIP_VENV"):
        candidates = [Path(os.environ["SCIP_VENV"]) / "bin" / "python"]
    else:
        candidates = [WORK / "scip-venv" / "bin" / "python"]
    problems = []
    for c in candidates:
        if not c.exists():
            problems.append(f"{c}: does not exist")
            continue
        ok, msg = _scip_ok(c)
        if ok:
            return c
        problems.append(f"{c}: {msg}")
    if setup and not explicit:
        r = subprocess.run(["bash", str(BENCH / "scip_env.sh")], stdout=subprocess.PIPE, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return Path(r.stdout.strip().splitlines()[-1])
        raise BenchError(f"benchmarks/scip_env.sh failed (exit {r.returncode}); see its messages above")
    raise BenchError(
        "no SCIP 0.1.12 venv found:\n  " + "\n  ".join(problems) +
        "\nCreate one with `benchmarks/scip_env.sh` (or point SCIP_VENV at an existing venv, e.g. "
        "SCIP_VENV=/tmp/scipenv), or pass --scip-python PATH; scip_parity.py and bench_cpu_vs_scip.py also take --setup-scip to create it now.")


def scip_version(python: Path) -> dict:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            "for p in ['scip', 'numpy', 'scipy', 'scikit-image', 'pandas', 'dask', 'distributed',\n"
            "          'numba', 'zarr', 'numcodecs', 'pyarrow', 'anndata']:\n"
            "    try: out[p] = m.version(p)\n"
            "    except Exception: out[p] = None\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-500:]}


# ---------------------------------------------------------------------------------------------
# Configurations


def _yaml_list(xs) -> str:
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


def scip_config_yaml(channel_names: list[str], *, smooth: float = 1.0,
                     families=("shape", "intensity", "texture", "bbox", "regions"),
                     regex: str = r"^.*/(?P<group>[^/]+)[.]zarr$", export_format: str = "parquet") -> str:
    """A complete SCIP 0.1.12 config (all nine top-level keys) for a ragged zarr input with the
    li and otsu masks on every channel, main channel 0, all channels combined, no filters."""
    n = len(channel_names)
    fam = _yaml_list(list(families))
    return f"""# generated by scip_gpu/benchmarks for SCIP 0.1.12
load:
  format: zarr
  channels: {_yaml_list(list(range(n)))}
  channel_names: {_yaml_list(list(channel_names))}
  kwargs:
    regex: {json.dumps(regex)}
project:
illumination_correction:
segment:
mask:
  combined_indices:
  main_channel_index: 0
  filters:
  methods:
    - method: li
      name: li
      export: false
      kwargs:
        smooth: {_yaml_list([float(smooth)] * n)}
    - method: otsu
      name: otsu
      export: false
      kwargs:
filter:
normalization:
feature_extraction:
  li: {fam}
  otsu: {fam}
export:
  format: {export_format}
  filename: features
"""


def scip_gpu_overrides(zarr_path: Path, channel_names: list[str], output: Path, *, smooth: float = 1.0,
                       regex: str = r"^.*/(?P<group>[^/]+)[.]zarr$", cluster: str = "sync",
                       n_workers: int | None = None, partition_size: int | None = None,
                       device: str = "cpu") -> list[str]:
    """Hydra overrides for ``python -m scip_gpu`` matching scip_config_yaml."""
    ov = [
        "+dataset=scip_zarr",
        f"dataset.path={zarr_path}",
        "dataset.channel_names=[" + ",".join(channel_names) + "]",
        f"dataset.regex='{regex}'",
        "masks=scip",
        f"masks.methods.0.kwargs.smooth={float(smooth)}",
        "features=scip",
        f"cluster={cluster}",
        f"output={output}",
        f"device={device}",
        "progress=false",
    ]
    if cluster == "local" and n_workers:
        ov += [f"cluster.n_workers={n_workers}", "cluster.threads_per_worker=1"]
    if partition_size:
        ov.append(f"partition_size={partition_size}")
    return ov


# ---------------------------------------------------------------------------------------------
# Running a subprocess with wall clock and process-tree memory


class TreeMemory:
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.peak_procs = 0
        self.samples = 0
        self.cpu: dict = {}  # (pid, create time) -> last seen user+system seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except self.psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[(p.pid, p.create_time())] = t.user + t.system
            except self.psutil.Error:
                pass
        self.samples += 1
        self.peak_rss = max(self.peak_rss, total)
        self.peak_procs = max(self.peak_procs, len(procs))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], *, cwd: Path, log: Path, env: dict | None = None,
                 timeout: float | None = None, interval: float = 0.2) -> dict:
    """Run ``cmd``; return rc, wall seconds, peak summed RSS of its process tree."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise BenchError("psutil is needed to measure memory: /tmp/venv/bin/pip install psutil") from None
    full_env = {**os.environ, **(env or {})}
    cwd.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with TreeMemory(proc.pid, interval) as mem:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the session this run started, and only it
                proc.wait()
                rc = "timeout"
            except BaseException:  # Ctrl-C: do not leave the tool's workers behind
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
                proc.wait()
                raise
        wall = time.perf_counter() - t0
    # CPU time (user + system) of every process of the tree as last sampled: it misses at most the
    # last sampling interval of each process
    cpu = sum(mem.cpu.values())
    return {"rc": rc, "wall_s": wall, "cpu_s": cpu, "loadavg_1min_before": load_before, "cpu_processes": len(mem.cpu), "peak_rss_bytes": mem.peak_rss,
            "peak_processes": mem.peak_procs, "memory_samples": mem.samples, "log": str(log)}


def tail(path: Path | str, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_scip(scip_python: Path, zarr_path: Path, config_text: str, workdir: Path, *, n_workers: int,
             partitions: int, timeout: float | None = None) -> dict:
    """Run SCIP's CLI (its venv's ``scip`` script) in ``workdir`` with ``-j N -t 1 --headless``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "scip-config.yaml"
    cfg.write_text(config_text)
    out = workdir / "scip-out"  # SCIP wipes an existing output folder: always a fresh one
    if out.exists():
        shutil.rmtree(out)
    timing = workdir / "scip-timing.json"
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    exe = Path(scip_python).parent / "scip"  # the venv's console script, else the module
    entry = [str(exe)] if exe.exists() else [str(scip_python), "-m", "scip.main"]
    cmd = [*entry, "-j", str(n_workers), "-t", "1", "--headless",
           "-s", str(partitions), "--timing", str(timing), str(out), str(cfg), str(zarr_path)]
    res = run_measured(cmd, cwd=workdir, log=workdir / "scip.log", timeout=timeout,
                       env={**THREAD_ENV, "TMPDIR": str(tmp)})
    res["cmd"] = cmd
    res["output"] = str(out)
    if timing.exists():
        res["own_runtime_s"] = json.loads(timing.read_text()).get("runtime")
    return res


def run_scip_gpu(overrides: list[str], workdir: Path, *, timeout: float | None = None,
                 python: str | None = None) -> dict:
    """Run ``python -m scip_gpu`` (this project, the current interpreter by default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    cmd = [python or sys.executable, "-m", "scip_gpu", *overrides]
    res = run_measured(cmd, cwd=workdir, log=workdir / "scip_gpu.log", timeout=timeout,
                       env={**THREAD_ENV, "TMPDIR": str(tmp)})
    res["cmd"] = cmd
    out = next((o.split("=", 1)[1] for o in overrides if o.startswith("output=")), None)
    res["output"] = out
    prov = Path(out) / "provenance.json" if out else None
    if prov is not None and prov.exists():
        p = json.loads(prov.read_text())
        res["own_runtime_s"] = p.get("seconds")
        res["objects_with_errors"] = p.get("objects_with_errors")
    return res


# ---------------------------------------------------------------------------------------------
# Outputs


def read_scip_output(folder: Path):
    import pandas as pd

    files = sorted(Path(folder).glob("features*.parquet"))
    if not files:
        raise BenchError(f"SCIP wrote no features*.parquet in {folder}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_scip_gpu_output(folder: Path):
    import pandas as pd

    pq = Path(folder) / "features.parquet"
    if not pq.exists():
        raise BenchError(f"scip_gpu wrote no features.parquet in {folder}")
    return pd.read_parquet(pq).reset_index(drop=True)


def classify(column: str, masks: list[str], channels: list[str]) -> str:
    """Feature family of a SCIP-style column name (``meta_id`` for identification/loader meta,
    ``other`` when the name fits no SCIP pattern)."""
    if column in ID_META or not column.startswith(("meta_", "feat_")):
        return "meta_id"
    kind, rest = column.split("_", 1)
    if kind == "feat" and rest.startswith("raw_"):
        return "raw"
    mask = next((m for m in masks if rest.startswith(m + "_")), None)
    if mask is None:
        return "meta_id" if kind == "meta" else "other"
    rest = rest[len(mask) + 1:]
    if kind == "meta":
        if rest.startswith("regions_"):
            return "regions"
        if rest.startswith("bbox_"):
            return "bbox"
        return "other"
    suffix = next((c for c in sorted([*channels, "combined"], key=len, reverse=True)
                   if rest.endswith("_" + c)), None)
    if suffix is None:
        return "other"
    core = rest[: -len(suffix) - 1]
    if core.startswith("combined_"):
        core = core[len("combined_"):]
    if core.startswith(("glcm_", "sobel_")):
        return "texture"
    for pre in ("bgcorr_", "edge_"):
        if core.startswith(pre):
            core = core[len(pre):]
    if core in INTENSITY_STATS:
        return "intensity"
    if core.split("-", 1)[0] in SHAPE_PROPS:
        return "shape"
    return "other"


# ---------------------------------------------------------------------------------------------
# Machine description


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def _git_revision() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return None


def project_versions() -> dict:
    import importlib.metadata as m

    out = {"python": sys.version.split()[0], "executable": sys.executable}
    for p in ["scip_gpu", "numpy", "scipy", "scikit-image", "pandas", "dask", "distributed", "pyarrow",
              "numcodecs", "anndata", "hydra-core", "numba", "cupy-cuda12x", "psutil"]:
        try:
            out[p] = m.version(p)
        except m.PackageNotFoundError:
            pass
    return out


def machine_description(scip_python: Path | None = None) -> dict:
    import psutil

    desc = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "gpu": _gpu(),
        "scip_gpu_git": _git_revision(),
        "scip_gpu_env": project_versions(),
    }
    if scip_python is not None:
        desc["scip_env"] = {"executable": str(scip_python), **scip_version(scip_python)}
    return desc


def machine_markdown(desc: dict) -> str:
    lines = [
        f"- CPU: {desc['cpu_model']} ({desc['logical_cores']} logical / {desc['physical_cores']} physical "
        f"cores, {desc['usable_cores']} usable)",
        f"- RAM: {desc['ram_gib']} GiB; OS: {desc['os']} (kernel {desc['kernel']}); GPU: {desc['gpu'] or 'none'}",
        f"- scip_gpu {desc['scip_gpu_env'].get('scip_gpu')} (git {desc['scip_gpu_git']}): "
        + ", ".join(f"{k} {v}" for k, v in desc["scip_gpu_env"].items() if k not in ("scip_gpu", "executable")),
    ]
    if "scip_env" in desc:
        lines.append(f"- SCIP {desc['scip_env'].get('scip')}: "
                     + ", ".join(f"{k} {v}" for k, v in desc["scip_env"].items()
                                 if k not in ("scip", "executable", "error")))
    return "\n".join(lines)


def fresh_workdir(name: str) -> Path:
    """A new folder under benchmarks/.work (removed by the caller unless --keep)."""
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = WORK / f"{name}-{stamp}-{os.getpid()}"
    d.mkdir(parents=True)
    return d


def human_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def write_result(out: Path, benchmark: str, tag: str, extra: list, points: list) -> Path:
    """Write a benchmark's points with this machine's description as
    ``{out}/{benchmark}-{host}[-{tag}].json``; prints and returns the path."""
    import socket

    result = {"benchmark": benchmark, "machine": machine_description(), "cores": os.cpu_count(),
              "overrides": extra, "points": points}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{benchmark}-{socket.gethostname()}{'-' + tag if tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
