"""Checkpoints: what a run has finished, so an interrupted run can be resumed.

A run folder holds ``run_state.json`` (written at start): fingerprints of the configuration (the
keys that change results) and of the input list, and the partitioning. Each finished partition
leaves two files in ``<filename>.parquet/``: ``part-NNNNN.parquet`` (written by the worker,
atomically) and then ``_part-NNNNN.json``, its summary (written by the driver, atomically, after
the part). A partition is done when both exist; anything else (a part without summary, a
temporary ``.*.tmp`` file) is what an interrupted run left behind and is redone or removed.
Readers of the Parquet dataset ignore files starting with ``_`` or ``.``.

``resume=true`` on the same output folder checks both fingerprints (a different configuration or
input list is refused with a message naming what changed) and runs only the missing partitions;
the final outputs are then written as by an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .errors import OutputError

STATE_FILE = "run_state.json"
STATE_VERSION = 1

# keys that do not change any result value: how and where the run executes and reports
_NEUTRAL_TOP = {"output", "output_root", "resume", "progress", "log_level", "strict", "profile_stages",
                "cluster", "device", "partition_size", "batch_size"}  # partitioning: checked via the partition
# count; batching never changes a value


def config_fingerprint(cfg) -> tuple[str, dict]:
    """(hash, the configuration it hashes): every key that changes results."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    d = {k: v for k, v in d.items() if k not in _NEUTRAL_TOP}
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_state(out: Path, cfg, table, n_partitions: int) -> dict:
    cfg_hash, cfg_dict = config_fingerprint(cfg)
    state = {"version": STATE_VERSION, "config": cfg_hash, "inputs": inputs_fingerprint(table),
             "rows": len(table), "partitions": n_partitions, "partition_size": cfg.partition_size,
             "resolved": cfg_dict}
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


def summary_path(folder: Path, part: int) -> Path:
    return folder / f"_part-{part:05d}.json"


def write_summary(folder: Path, result) -> None:
    """Mark a partition done (after its part file exists)."""
    _atomic_write(summary_path(folder, result.part), json.dumps(asdict(result), default=str))


def finished_partitions(folder: Path, part_name) -> dict[int, dict]:
    """Summaries of the partitions whose part and summary files both exist."""
    done = {}
    if not folder.is_dir():
        return done
    for p in folder.glob("_part-*.json"):
        part = int(p.stem.split("-")[1])
        if (folder / part_name(part)).is_file():
            try:
                done[part] = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # unreadable summary: redo the partition
    return done


def remove_leftovers(folder: Path) -> int:
    """Remove temporary files an interrupted run left (never a finished result)."""
    n = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n
