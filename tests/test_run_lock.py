"""One process per output folder, and resumes that keep the first run's configuration
(issue 12, items 4 and 11).

- A run holds ``.scip_gpu.lock`` (PID, start time, host; created exclusively) from before it
  writes anything until it ends, however it ends. A second process on the folder, resume or not,
  is refused with a message naming the holder and exits non-zero, touching nothing; the first
  completes with readable outputs.
- The lock of a dead process of this host is taken over by ``resume=true`` (logged); a lock of
  another host is never broken. Temporary files have per-process names and are removed only on
  resume, under the lock.
- ``resume=true`` keeps the first run's ``config.yaml``; every run on the folder is recorded in
  ``run_state.json`` and ``provenance.json`` (``runs``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import anndata as ad
import pytest

from scip_gpu import export, pipeline, state
from scip_gpu.cli import to_config
from scip_gpu.errors import OutputError, ScipGpuError

from .test_cli import read_parquet, run_cli, start_cli
from .test_config import _compose

DEMO = ["+dataset=demo", "dataset.n_objects=40", "dataset.min_size=40", "dataset.max_size=48", "partition_size=4",
        "cluster=sync"]
SMALL = ["+dataset=demo", "dataset.n_objects=8", "dataset.min_size=40", "dataset.max_size=44",
         "features=intensity", "partition_size=4", "cluster=sync"]


def _wait_for(predicate, proc, what, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def _stop(proc, timeout=30):
    """SIGSTOP ``proc`` and return once every one of its threads is stopped: the signal is
    delivered asynchronously, so a thread on another core can still rename a file just after
    ``kill`` returns."""
    proc.send_signal(signal.SIGSTOP)
    tasks = f"/proc/{proc.pid}/task"
    t0 = time.time()
    while time.time() - t0 < timeout:
        states = []
        for tid in os.listdir(tasks):
            with contextlib.suppress(OSError):
                with open(f"{tasks}/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        if states and all(s in "tT" for s in states):
            return
        time.sleep(0.005)
    pytest.fail(f"process {proc.pid} did not stop")


def _dead_pid() -> int:
    """The PID of a process of this host that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _run(args, tmp_path):
    cfg, yaml = to_config(_compose(list(args)))
    return pipeline.run(cfg, yaml)


def test_a_second_process_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    parts = out / "features.parquet"
    first = start_cli(*DEMO, f"output={out}", cwd=tmp_path)
    try:
        _wait_for(lambda: len(list((out / "checkpoints").glob("part-*.json"))) >= 1, first, "its first partition")
        lock = state.read_lock(out / state.LOCK_FILE)
        assert lock["pid"] == first.pid and lock["host"]
        # a temporary file being written by the live run must survive the refused processes
        live_tmp = parts / f".part-00009.parquet.{first.pid}.0000beef.tmp"
        live_tmp.write_bytes(b"being written")
        # freeze the first run mid-way, so that it is certainly still going while the others try
        _stop(first)
        try:
            before = sorted(p.name for p in out.rglob("*"))
            resumed = run_cli(*DEMO, f"output={out}", "resume=true", cwd=tmp_path)
            again = run_cli(*DEMO, f"output={out}", cwd=tmp_path)
            after = sorted(p.name for p in out.rglob("*"))  # (before the first run goes on)
        finally:
            first.send_signal(signal.SIGCONT)
        for res in (resumed, again):
            assert res.returncode == 2, res.stderr
            assert "is in use by another scip_gpu run" in res.stderr, res.stderr
            assert f"process {first.pid} on host" in res.stderr
        assert "resuming" not in resumed.stderr
        assert live_tmp.exists()
        assert after == before  # nothing touched
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert "profiled 40 objects (40 ok, 0 with errors)" in stdout
    assert not (out / state.LOCK_FILE).exists()
    df = read_parquet(parts)
    assert len(df) == 40 and (df["meta_status"] == "ok").all()
    a = ad.read_h5ad(out / "features.h5ad")
    assert a.n_obs == 40
    assert json.loads((out / "provenance.json").read_text())["objects_ok"] == 40
    assert not list(out.glob(".*.tmp"))  # its own temporary files were renamed into place


def test_ctrl_c_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    proc = start_cli(*DEMO, f"output={out}", cwd=tmp_path)
    try:
        _wait_for(lambda: len(list((out / "checkpoints").glob("part-*.json"))) >= 1, proc, "a partition")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not (out / state.LOCK_FILE).exists()


def test_lock_released_on_errors_and_interrupts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise (RuntimeError("disk full") if len(calls) == 1 else KeyboardInterrupt())

    monkeypatch.setattr(export.AnnDataWriter, "finish", broken)  # (the .h5ad completed after the partitions)
    with pytest.raises(RuntimeError, match="disk full"):
        _run([*SMALL, f"output={out}"], tmp_path)
    assert not (out / state.LOCK_FILE).exists()
    with pytest.raises((KeyboardInterrupt, ScipGpuError)):  # Ctrl-C (reported as an interrupted run)
        _run([*SMALL, f"output={out}", "resume=true"], tmp_path)
    assert not (out / state.LOCK_FILE).exists()
    assert not list(out.rglob(".*.tmp"))
    monkeypatch.undo()
    summary = _run([*SMALL, f"output={out}", "resume=true"], tmp_path)
    assert summary.n_ok == 8
    assert not (out / state.LOCK_FILE).exists()


@contextlib.contextmanager
def _log_records():
    """Messages logged by scip_gpu meanwhile (whatever its propagation setting)."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("scip_gpu")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _plant_lock(out, **info):
    (out / state.LOCK_FILE).write_text(json.dumps({"started": "2026-01-01T00:00:00+00:00", "command": ["x"],
                                                   "token": "t", **info}))


def test_stale_lock_is_taken_over_on_resume_only(tmp_path):
    out = tmp_path / "run"
    _run([*SMALL, f"output={out}"], tmp_path)
    dead = _dead_pid()
    _plant_lock(out, pid=dead, host=state.socket.gethostname())
    leftover = out / "features.parquet" / f".part-00001.parquet.{dead}.12345678.tmp"
    leftover.write_bytes(b"half a file")
    top = out / f".features.h5ad.{dead}.9abcdef0.tmp"
    top.write_bytes(b"half a file")
    # a new run is refused (the folder is not empty and names the dead run)
    with pytest.raises(OutputError, match="no longer running.*resume=true"):
        _run([*SMALL, f"output={out}"], tmp_path)
    assert leftover.exists() and (out / state.LOCK_FILE).exists()
    with _log_records() as records:
        summary = _run([*SMALL, f"output={out}", "resume=true"], tmp_path)
    assert summary.n_ok == 8
    text = "\n".join(records)
    assert f"taking over the lock of process {dead}" in text and "no longer running" in text
    assert "2 temporary file(s) of the interrupted run removed" in text
    runs = json.loads((out / "provenance.json").read_text())["runs"]
    assert runs[-1]["took_over_lock_of"]["pid"] == dead
    assert not leftover.exists() and not top.exists()
    assert not (out / state.LOCK_FILE).exists()


def test_reused_pid_is_a_stale_lock():
    me = os.getpid()
    assert state.process_alive(me, state.process_start(me))
    assert not state.process_alive(_dead_pid())
    if state.process_start(me) is not None:  # /proc: a PID now running another process
        assert not state.process_alive(me, "1")
        assert state.lock_is_stale({"pid": me, "pid_start": "1", "host": state.socket.gethostname()})
    assert not state.lock_is_stale({"pid": me, "pid_start": state.process_start(me),
                                    "host": state.socket.gethostname()})


def test_lock_of_another_host_is_never_broken(tmp_path):
    out = tmp_path / "run"
    _run([*SMALL, f"output={out}"], tmp_path)
    _plant_lock(out, pid=_dead_pid(), host="another-host.example")
    res = run_cli(*SMALL, f"output={out}", "resume=true", cwd=tmp_path)
    assert res.returncode == 2
    assert "locked by process" in res.stderr and "another-host.example" in res.stderr
    assert "lock is not broken" in res.stderr and str(out / state.LOCK_FILE) in res.stderr
    assert (out / state.LOCK_FILE).exists()


def test_lock_is_exclusive_within_a_host(tmp_path):
    lock = state.acquire_lock(tmp_path, take_over_stale=True)
    with pytest.raises(OutputError, match="in use by another scip_gpu run"):
        state.acquire_lock(tmp_path, take_over_stale=True)  # this very process is alive
    lock.release()
    assert not (tmp_path / state.LOCK_FILE).exists()
    with state.acquire_lock(tmp_path, take_over_stale=False):
        assert (tmp_path / state.LOCK_FILE).exists()
    assert not (tmp_path / state.LOCK_FILE).exists()
    # a lock that is not ours is left alone by release
    lock = state.acquire_lock(tmp_path, take_over_stale=False)
    (tmp_path / state.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "h", "token": "other"}))
    lock.release()
    assert (tmp_path / state.LOCK_FILE).exists()


def test_temporary_names_are_per_process_and_call(tmp_path):
    a, b = export.temp_path(tmp_path / "features.h5ad"), export.temp_path(tmp_path / "features.h5ad")
    assert a != b and a.name.startswith(f".features.h5ad.{os.getpid()}.") and a.name.endswith(".tmp")


@pytest.mark.slow
def test_resume_keeps_the_first_configuration_and_records_each_resume(tmp_path):
    out = tmp_path / "run"
    first = run_cli(*SMALL, f"output={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    original = (out / "config.yaml").read_text()
    # a resume with other execution settings (what may differ): config.yaml stays the first run's
    res = run_cli(*SMALL, "batch_size=3", "progress=false", f"output={out}", "resume=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run_cli(*SMALL, f"output={out}", "resume=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (out / "config.yaml").read_text() == original
    assert "resume: false" in original and "type: sync" in original
    prov = json.loads((out / "provenance.json").read_text())
    runs = prov["runs"]
    assert prov["resumes"] == 2 and [r["resume"] for r in runs] == [False, True, True]
    assert all(r["pid"] and r["host"] and r["started"] for r in runs)
    assert "resume=true" in runs[1]["command"] and "batch_size=3" in runs[1]["command"]
    assert sorted(runs[1]["changed"]) == ["batch_size: None -> 3", "progress: True -> False"]
    assert runs[2]["changed"] == [] and runs[1]["partitions_done"] == 2
    assert json.loads((out / "run_state.json").read_text())["runs"] == runs
