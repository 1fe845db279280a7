"""What reaches the command line is one ``scip_gpu: ...`` line and the documented exit status,
never a traceback: configuration, input and output errors (2), a full disk (2), partitions the
cluster could not run (3), Ctrl-C (130); the last three say that ``resume=true`` finishes the run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scip_gpu import cli
from scip_gpu.errors import InputError, RunIncomplete, disk_full

from .conftest import ROOT
from .test_cli import read_parquet

DEMO = ["+dataset=demo", "dataset.n_objects=24", "dataset.min_size=40", "dataset.max_size=48", "partition_size=4",
        "features=intensity"]


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.config import register_configs

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", list(overrides))


def scip_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("scip_gpu:")]


@pytest.mark.parametrize("exc,status,words", [
    (InputError("dataset 'x': no objects found"), 2, ["scip_gpu: error: dataset 'x': no objects found"]),
    (RunIncomplete("2 of 5 partition(s) could not be run"), 3, ["scip_gpu: error: 2 of 5 partition(s)"]),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x"), 2, ["scip_gpu: error: no space left on device",
                                                                       "resume=true"]),
    (OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')"), 2,
     ["no space left on device"]),
    (PermissionError(errno.EACCES, "Permission denied", "/out/x"), 2, ["scip_gpu: error: [Errno 13] Permission denied"]),
    (KeyboardInterrupt(), 130, ["scip_gpu: interrupted"]),
])
def test_errors_reaching_the_command_line_are_one_line(monkeypatch, capsys, exc, status, words):
    from scip_gpu import pipeline

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(pipeline, "run", fail)
    assert cli.task(compose("+dataset=demo", "cluster=sync")) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(scip_lines(err)) == 1, err
    for w in words:
        assert w in err, err


def _raised_from(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` as raised ``from inner`` (its __cause__ set, as by ``raise outer from inner``)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_disk_full_detection():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(OSError("[errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"))
    assert disk_full(_raised_from(OSError(errno.ENOSPC, "No space left on device"), RuntimeError("writing failed")))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("No space left on device"))
    assert not disk_full(RuntimeError("HDF5: file write failed, errno = 13 (Permission denied)"))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "part")


def _hdf5_full(*args, **kwargs):  # what h5py raises when HDF5 cannot flush to a full disk
    raise RuntimeError("Disable slist on flush dest failure failed (file write failed: time = Fri Nov 27 2026\n, "
                       "filename = '/out/.features.h5ad.1.tmp', errno = 28, error message = 'No space left on device')")


@pytest.mark.parametrize("where", ["part", "error report", "anndata"])
def test_full_disk_is_one_line_exit_2_and_resume_finishes(tmp_path, monkeypatch, capsys, where):
    from scip_gpu import export

    # (the .h5ad's X is written by a background thread of the driver as partitions come back:
    # its failure surfaces when the file is completed, after the last partition)
    owner = export.AnnDataWriter if where == "anndata" else export
    name = {"part": "write_part", "error report": "write_errors", "anndata": "_write"}[where]
    real = getattr(owner, name)
    calls = {"n": 0}

    def write(*args, **kwargs):
        calls["n"] += 1
        if where == "part" and calls["n"] <= 2:
            return real(*args, **kwargs)
        _hdf5_full() if where == "anndata" else _enospc()

    monkeypatch.setattr(owner, name, write)
    out = tmp_path / "run"
    assert cli.task(compose(*DEMO, "cluster=sync", f"output={out}")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = scip_lines(err)
    assert line.startswith("scip_gpu: error: no space left on device"), line
    assert f"output={out} resume=true" in line
    assert "run stopped: no space left on device" in (out / "run.log").read_text()
    done = len(list((out / "checkpoints").glob("part-*.json")))
    if where == "part":  # two partitions in flight (sync: threads_per_worker=2): the other one written
        assert 1 <= done <= 2  # may not have been collected when the run stopped; resume redoes it
    else:
        assert done == 6

    monkeypatch.setattr(owner, name, real)
    assert not list(out.glob(".*.tmp"))  # the half-written .h5ad removed
    assert cli.task(compose(*DEMO, "cluster=sync", f"output={out}", "resume=true")) == 0
    assert len(read_parquet(out / "features.parquet")) == 24


def test_transient_io_detection():
    from scip_gpu.errors import StorageUnavailable, transient_io

    for code in (errno.ESTALE, errno.ETIMEDOUT, errno.ECONNRESET, errno.ENOTCONN, errno.EHOSTUNREACH, errno.EAGAIN):
        assert transient_io(OSError(code, os.strerror(code), "/nfs/a.tif")), code
    assert transient_io(TimeoutError("read timed out"))  # (fsspec, HTTP clients: no errno)
    assert transient_io(OSError("Unable to open file (file read failed: time = Fri Nov 27, filename = 'a.h5', "
                                "file descriptor = 3, errno = 116, error message = 'Stale file handle')"))
    assert transient_io(StorageUnavailable("x"))
    assert transient_io(_raised_from(OSError(errno.ESTALE, "Stale file handle"), ValueError("decoding failed")))
    # the input's problem, or ambiguous (a bad sector of one file): the object's error
    for code in (errno.EIO, errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOSPC):
        assert not transient_io(OSError(code, os.strerror(code), "/data/a.tif")), code
    assert not transient_io(ValueError("Connection timed out"))
    assert not transient_io(OSError("not a TIFF file"))


def test_a_transient_read_error_fails_the_partition_and_resume_profiles_the_object(tmp_path, monkeypatch, capsys):
    """An object whose read fails with ESTALE (its first two reads: the partition's and the
    object-by-object retry) is no error row: its partition is not marked done, the run exits 3
    with the resume advice, and resume profiles it."""
    from scip_gpu import pipeline
    from scip_gpu.demo import DemoSource

    reads = {"n": 0}

    class StaleSource(DemoSource):
        def load(self, rows):
            if 5 in set(rows["meta_id"]) and reads["n"] < 2:
                reads["n"] += 1
                raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), "/nfs/cell-5")
            return super().load(rows)

    monkeypatch.setattr(pipeline, "make_source", StaleSource)
    out = tmp_path / "run"
    assert cli.task(compose(*DEMO, "cluster=sync", f"output={out}")) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = scip_lines(err)
    assert "1 of 6 partition(s) (4 objects) could not be run" in line, line
    assert "demo cell 5: cannot be read now" in line and "Stale file handle" in line, line
    assert f"output={out} resume=true" in line, line
    assert reads["n"] == 2
    done = sorted(p.name for p in (out / "checkpoints").glob("part-*.json"))
    assert len(done) == 5 and "part-1.json" not in " ".join(done), done  # cell 5: partition 1 (cells 4-7)
    assert not (out / "errors.csv").exists() or "demo cell 5" not in (out / "errors.csv").read_text()

    assert cli.task(compose(*DEMO, "cluster=sync", f"output={out}", "resume=true")) == 0
    table = read_parquet(out / "features.parquet")
    assert len(table) == 24 and (table["meta_status"] == "ok").all()
    assert int(table.loc[table["meta_id"] == 5, "meta_id"].iloc[0]) == 5
    assert table.loc[table["meta_id"] == 5].filter(like="intensity").notna().all(axis=None)


def _faulty_env(plan):
    return {**os.environ, "PYTHONPATH": str(ROOT), "SCIP_GPU_FAULTS": json.dumps(plan)}


@pytest.mark.slow
def test_full_disk_on_a_worker_stops_the_run_with_one_line(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", "from tests.faults import main; main()", *DEMO, "cluster=local",
                          "cluster.n_workers=1", f"output={out}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=_faulty_env({"enospc_after": 2}))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = scip_lines(res.stderr)
    assert "no space left on device" in line and "resume=true" in line, line
    assert len(list((out / "checkpoints").glob("part-*.json"))) == 2  # the parts written are kept
    assert not list((out / "features.parquet").glob(".*.tmp"))


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_no_worker_traceback(tmp_path):
    """Ctrl-C in a terminal reaches the driver and the local workers (one process group)."""
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from tests.faults import main; main()", *DEMO, "cluster=local",
                             "cluster.n_workers=2", f"output={out}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_faulty_env({"sleep": 0.3}),
                            start_new_session=True)
    t0 = time.time()
    while len(list((out / "checkpoints").glob("part-*.json"))) < 1:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < 120
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    (line,) = scip_lines(stderr)
    assert line.startswith("scip_gpu: interrupted") and f"output={out} resume=true" in line, line
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not (out / "provenance.json").exists()
    assert "run stopped: interrupted" in (out / "run.log").read_text()
    for summary in (out / "checkpoints").glob("part-*.json"):  # what is marked done was profiled (resume: test_resume.py)
        assert json.loads(summary.read_text())["n_ok"] == 4
