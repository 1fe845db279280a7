"""Checkpoints: what a run has finished, so an interrupted run can be resumed.

A run folder holds ``run_state.json`` (written at start): fingerprints of the configuration (the
keys that change results) and of the input list, and the partitioning. Each finished partition
leaves two files: ``<filename>.parquet/part-NNNNN.parquet`` (written by the worker, atomically)
and then ``checkpoints/part-NNNNN.json``, its summary (written by the driver, atomically, after
the part). A partition is done when both exist; anything else (a part without summary, a
temporary ``.*.tmp`` file) is what an interrupted run left behind and is redone or removed.
The summaries live outside the Parquet folder so that every reader (pandas, pyarrow, polars,
DuckDB) reads that folder as one dataset; polars refuses a folder holding any other file.
Run folders of earlier versions kept them in the Parquet folder as ``_part-NNNNN.json``: a
resume moves them to ``checkpoints/``.

``resume=true`` on the same output folder checks both fingerprints (a different configuration or
input list is refused with a message naming what changed) and runs only the missing partitions;
the final outputs are then written as by an uninterrupted run. ``run_state.json`` also lists
every run on the folder (``runs``: the first and each resume, with its start time, host, process,
command and the execution settings it changed), which ``provenance.json`` repeats; the first
run's ``config.yaml`` is kept.

One process at a time: a run holds the lock ``.scip_gpu.lock`` in its output folder from before
it writes anything until it ends (normally, by an exception or by Ctrl-C). The lock is created
exclusively (hard link of a complete file, or ``O_EXCL``) and names the process (PID, its start
time, host, command). Another process is refused with a message naming the holder. A lock whose
process is no longer alive on this host (killed run) is taken over by ``resume=true`` (logged);
a lock of another host is never broken: its process cannot be checked from here, the message
says which file to delete once that run is known to be dead. Temporary files (``.*.tmp``, named
after the process that writes them) are removed only on resume, under the lock: they can then
only be leftovers of dead processes; and from the Parquet folder by the run itself once every
partition is done (a worker killed while writing a part leaves one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .errors import OutputError

STATE_FILE = "run_state.json"
STATE_VERSION = 1
LOCK_FILE = ".scip_gpu.lock"

log = logging.getLogger("scip_gpu")

# keys that do not change any result value: how and where the run executes and reports
_NEUTRAL_TOP = {"output", "output_root", "resume", "progress", "log_level", "strict", "profile_stages",
                "cluster", "device", "partition_size", "batch_size"}  # partitioning: checked via the partition
# count; batching never changes a value
# export keys of the files written from the parts at the end of every run (and resume)
_NEUTRAL_EXPORT = {"report", "analysis_ready", "max_nan_share"}


def config_fingerprint(cfg) -> tuple[str, dict]:
    """(hash, the configuration it hashes): every key that changes results."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    d = {k: v for k, v in d.items() if k not in _NEUTRAL_TOP}
    if isinstance(d.get("export"), dict):
        d["export"] = {k: v for k, v in d["export"].items() if k not in _NEUTRAL_EXPORT}
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), d


def inputs_fingerprint(table: pd.DataFrame) -> str:
    """Hash of the object (or field) table: every input and its metadata, in order."""
    cols = sorted(table.columns)
    h = hashlib.sha256()
    h.update(json.dumps(cols).encode())
    h.update(pd.util.hash_pandas_object(table[cols].astype(str), index=False).values.tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    from .export import write_text

    write_text(path, text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execution_settings(cfg) -> dict:
    """The keys that do not change results (where and how a run executes), as configured."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    return {k: d[k] for k in sorted(_NEUTRAL_TOP) if k in d and k not in ("resume", "output")}


def run_record(cfg, *, started: str | None = None, resume: bool = False, **extra) -> dict:
    """One entry of ``runs``: who ran on the folder, when, how."""
    return {"started": started or _now(), "host": socket.gethostname(), "pid": os.getpid(),
            "command": list(sys.argv), "resume": resume, **extra}


def write_state(out: Path, cfg, table, n_partitions: int, *, started: str | None = None) -> dict:
    cfg_hash, cfg_dict = config_fingerprint(cfg)
    state = {"version": STATE_VERSION, "config": cfg_hash, "inputs": inputs_fingerprint(table),
             "rows": len(table), "partitions": n_partitions, "partition_size": cfg.partition_size,
             "resolved": cfg_dict, "settings": execution_settings(cfg),
             "runs": [run_record(cfg, started=started)]}
    _atomic_write(out / STATE_FILE, json.dumps(state, indent=1, default=str))
    return state


def record_resume(out: Path, cfg, old: dict, *, partitions_done: int, started: str | None = None,
                  took_over: dict | None = None) -> dict:
    """Append this resume to the state's ``runs`` (the first run's configuration is kept);
    returns the updated state. ``changed``: the execution settings that differ from the first
    run's; ``took_over_lock_of``: the dead process whose lock this resume took over."""
    settings = execution_settings(cfg)
    before = old.get("settings", {})
    changed = _diff(before, settings) if before else []
    extra = {"took_over_lock_of": took_over} if took_over else {}
    state = dict(old)
    state["runs"] = list(old.get("runs", [])) + [run_record(cfg, started=started, resume=True,
                                                            partitions_done=partitions_done, changed=changed,
                                                            **extra)]
    _atomic_write(out / STATE_FILE, json.dumps(state, indent=1, default=str))
    return state


def check_resumable(out: Path, cfg, table, n_partitions: int) -> dict:
    """Refuse to resume when the configuration or the inputs differ from the first run."""
    path = out / STATE_FILE
    if not path.is_file():
        raise OutputError(f"resume=true: {out} holds no {STATE_FILE}; it is not a scip_gpu run folder "
                          "(or the run stopped before it started)")
    old = json.loads(path.read_text())
    cfg_hash, cfg_dict = config_fingerprint(cfg)
    if old.get("config") != cfg_hash:
        changed = _diff(old.get("resolved", {}), cfg_dict)
        raise OutputError(f"resume=true: the configuration differs from the run in {out} "
                          f"({'; '.join(changed[:6]) or 'unknown keys'}); resume with the same configuration, "
                          "or start a new run in another output folder")
    if old.get("inputs") != inputs_fingerprint(table) or old.get("rows") != len(table):
        raise OutputError(f"resume=true: the input list differs from the run in {out} ({old.get('rows')} "
                          f"inputs then, {len(table)} now, or different files/metadata); resume with the same "
                          "inputs, or start a new run in another output folder")
    if old.get("partitions") != n_partitions:
        raise OutputError(f"resume=true: the partitioning differs ({old.get('partitions')} partitions then, "
                          f"{n_partitions} now)")
    return old


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


CHECKPOINT_DIR = "checkpoints"


def summary_path(out: Path, part: int) -> Path:
    """Where the summary of partition ``part`` of the run folder ``out`` is written."""
    return Path(out) / CHECKPOINT_DIR / f"part-{part:05d}.json"


def write_summary(out: Path, result) -> None:
    """Mark a partition of the run folder ``out`` done (after its part file exists)."""
    path = summary_path(out, result.part)
    path.parent.mkdir(exist_ok=True)
    _atomic_write(path, json.dumps(asdict(result), default=str))


def _move_legacy_summaries(out: Path, parquet_folder: Path) -> None:
    """Move summaries that earlier versions wrote into the Parquet folder (``_part-NNNNN.json``)
    to ``checkpoints/`` (resume only, under the lock)."""
    if not parquet_folder.is_dir():
        return
    for p in parquet_folder.glob("_part-*.json"):
        try:
            part = int(p.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        dest = summary_path(out, part)
        dest.parent.mkdir(exist_ok=True)
        os.replace(p, dest)


def part_problem(path: Path, summary: dict, columns: list[str] | None = None) -> str | None:
    """Why the part file ``path`` is not the finished partition its summary describes (None
    if it is): unreadable (empty, truncated: no Parquet footer), another number of rows, or
    other columns. Parts are renamed into place complete, but a crash of the machine can leave
    a file that was renamed before its data reached the disk, and files get copied and damaged."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        rows, names = f.metadata.num_rows, f.schema_arrow.names
    except Exception as exc:  # (pyarrow raises ArrowInvalid, OSError...)
        return f"unreadable ({' '.join(str(exc).split())[:200]})"
    if rows != summary.get("n"):
        return f"{rows} row(s), its summary says {summary.get('n')}"
    if columns is not None and names != list(columns):
        return f"other columns ({len(names)}) than this run's ({len(columns)})"
    return None


def finished_partitions(out: Path, parquet_folder: Path, part_name, columns: list[str] | None = None
                        ) -> dict[int, dict]:
    """Summaries of the partitions whose part and summary files both exist and agree (a part
    that is damaged, see ``part_problem``, is logged and its partition run again; ``columns``:
    the names the parts must have)."""
    out, parquet_folder = Path(out), Path(parquet_folder)
    _move_legacy_summaries(out, parquet_folder)
    done = {}
    marks = out / CHECKPOINT_DIR
    if not marks.is_dir():
        return done
    for p in sorted(marks.glob("part-*.json")):
        try:
            part = int(p.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        path = parquet_folder / part_name(part)
        if path.is_file():
            try:
                summary = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # unreadable summary: redo the partition
            problem = part_problem(path, summary, columns)
            if problem is not None:
                log.warning("resume: %s is damaged (%s); its partition is run again and the file replaced",
                            path, problem)
                continue
            done[part] = summary
    return done


def remove_leftovers(out: Path) -> int:
    """Remove the temporary files (``.*.tmp``, anywhere in the run folder) that interrupted
    processes left; never a finished result. Call only while holding the folder's lock (then no
    live run of this folder writes any)."""
    import shutil

    n = 0
    if out.is_dir():
        for p in sorted(out.rglob(".*.tmp")):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
            elif p.is_dir():  # a zarr store being written (labels, features.zarr)
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The run lock


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (None where there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot; tells a reused PID apart)."""
    stat = _proc_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host is running (and is the one started at ``start``)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # os.kill(pid, 0) is no liveness probe there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    except OSError:
        return True  # cannot tell: assume alive
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):  # zombie: dead, not yet reaped
            return False
        if start is not None and len(stat) > 19 and stat[19] != start:
            return False  # the PID was reused by another process
    return True


def read_lock(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _holder(info: dict | None) -> str:
    if not info:
        return "an unknown process (unreadable lock)"
    cmd = " ".join(str(a) for a in info.get("command", [])[1:])
    return (f"process {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
            + (f", arguments: {cmd[:200]}" if cmd else ""))


def lock_is_stale(info: dict | None) -> bool:
    """A lock whose process is known to be dead: same host, PID no longer that process."""
    if not info or info.get("host") != socket.gethostname():
        return False
    try:
        pid = int(info.get("pid"))
    except (TypeError, ValueError):
        return False
    return not process_alive(pid, info.get("pid_start"))


def lock_problem(out: Path, path: Path, info: dict | None, *, resume: bool) -> str:
    """Why ``out`` cannot be used while ``path`` holds ``info``: the message for the user."""
    if info is not None and info.get("host") != socket.gethostname():
        return (f"output folder {out} is locked by {_holder(info)}. scip_gpu cannot check from host "
                f"{socket.gethostname()} whether that run is still going, so the lock is not broken: if it is "
                f"dead, delete {path} and run again (with resume=true to finish its work)")
    if lock_is_stale(info):
        return (f"output folder {out} holds the lock of a run that is no longer running ({_holder(info)}); "
                "finish that run with resume=true" + ("" if resume else ", or choose another output=..."))
    return (f"output folder {out} is in use by another scip_gpu run ({_holder(info)}); wait for it to end "
            "(or stop it) and resume with resume=true if it did not finish, or choose another output=... "
            f"(if no such process exists, delete {path})")


@dataclass
class RunLock:
    """The lock a process holds on its output folder (``release`` removes it if still ours)."""

    path: Path
    token: str
    released: bool = False
    #: the stale lock this one replaced (resume of a killed run), as it was
    taken_over: dict | None = None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        info = read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, complete, only if it does not exist (False if it does)."""
    from .export import temp_path

    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, path)  # atomic, never replaces: readers never see a partial lock
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _take_over(path: Path, stale: dict) -> bool:
    """Remove the stale lock ``stale`` from ``path``, unless another process replaced it since."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(path, aside)  # atomic: of two processes taking over, one gets it
    except FileNotFoundError:
        return False
    moved = read_lock(aside)
    if moved != stale:  # a live process took it over between our reading and renaming: put it back
        try:
            os.link(aside, path)
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    log.warning("taking over the lock of %s: that process is no longer running", _holder(stale))
    return True


def acquire_lock(out: Path, *, take_over_stale: bool) -> RunLock:
    """Lock ``out`` for this process, or raise OutputError naming the process that holds it.

    ``take_over_stale`` (resume): a lock whose process is dead on this host is taken over.
    """
    path = out / LOCK_FILE
    me = os.getpid()
    info = {"pid": me, "pid_start": process_start(me), "host": socket.gethostname(), "started": _now(),
            "command": list(sys.argv), "token": secrets.token_hex(8)}
    text = json.dumps(info, indent=1)
    taken_over = None
    for _ in range(20):
        try:
            if _create_exclusive(path, text):
                return RunLock(path, info["token"], taken_over=taken_over)
        except OSError as exc:
            raise OutputError(f"output folder {out} cannot be written: {exc}") from exc
        holder = read_lock(path)
        if holder is None and path.exists():  # written without hard links, this very moment
            time.sleep(0.05)
            holder = read_lock(path)
        if holder is None and not path.exists():
            continue  # released meanwhile: try again
        if take_over_stale and lock_is_stale(holder):
            if _take_over(path, holder):
                taken_over = {k: holder.get(k) for k in ("pid", "host", "started", "command")}
            continue
        raise OutputError(lock_problem(out, path, holder, resume=take_over_stale))
    raise OutputError(f"output folder {out}: could not take its lock {path} (other processes keep taking it)")
