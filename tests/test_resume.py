"""Never lose work: resumable runs, a killed driver, a killed worker, determinism."""

from __future__ import annotations

import json
import signal
import time

import pandas as pd
import pytest

from .test_cli import read_parquet, reference_run, run_cli, start_cli

DEMO = ["+dataset=demo", "dataset.n_objects=80", "dataset.min_size=40", "dataset.max_size=48",
        "partition_size=4"]


def _wait_for_summaries(folder, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(list(folder.glob("part-*.json"))) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    pytest.fail("no partition finished in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory, DEMO)


@pytest.mark.slow
def test_killed_driver_then_resume_gives_the_same_output(tmp_path, reference):
    out = tmp_path / "run"
    parts = out / "features.parquet"
    proc = start_cli(*DEMO, "cluster=sync", f"output={out}", cwd=tmp_path)
    marks = out / "checkpoints"
    _wait_for_summaries(marks, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(marks.glob("part-*.json")))
    assert 2 <= done < 20, "the run was not interrupted mid-way"
    assert not (out / "features.h5ad").exists() and not (out / "provenance.json").exists()
    # what a killed run may leave: a temporary file, a part whose summary was never written
    (parts / ".part-00019.parquet.999.tmp").write_bytes(b"half a file")
    first, second = sorted(marks.glob("part-*.json"))[:2]
    first.unlink()
    # a summary where versions before 0.2 kept it (in the Parquet folder): still counts, moved
    second.rename(parts / f"_{second.name}")

    res = run_cli(*DEMO, "cluster=sync", f"output={out}", "resume=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "already done" in res.stderr
    assert not list(parts.glob(".*.tmp"))
    assert sorted(p.name for p in parts.iterdir()) == [f"part-{i:05d}.parquet" for i in range(20)]
    assert (marks / second.name).is_file() and len(list(marks.glob("part-*.json"))) == 20
    df = read_parquet(parts)
    pd.testing.assert_frame_equal(df, reference)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["objects"] == 80 and prov["objects_ok"] == 80
    assert len(list(parts.glob("part-*.parquet"))) == 20
    # the .h5ad's X, written as partitions came back (the earlier run's parts first), in row order;
    # the killed run's half-written temporary file is gone
    import anndata as ad
    import numpy as np

    assert not list(out.rglob(".*.tmp"))
    a = ad.read_h5ad(out / "features.h5ad")
    feat = [c for c in df.columns if c.startswith("feat_")]
    assert a.obs["meta_index"].tolist() == df["meta_index"].tolist()
    np.testing.assert_array_equal(a.X, df[feat].to_numpy(np.float32))


def test_resume_refuses_other_configuration_or_inputs(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*DEMO, "dataset.n_objects=8", "features=intensity", "cluster=sync", f"output={out}",
                   cwd=tmp_path).returncode == 0
    other = run_cli(*DEMO, "dataset.n_objects=8", "features=scip", "cluster=sync", f"output={out}", "resume=true",
                    cwd=tmp_path)
    assert other.returncode == 2 and "configuration differs" in other.stderr and "features" in other.stderr
    more = run_cli(*DEMO, "dataset.n_objects=12", "features=intensity", "cluster=sync", f"output={out}",
                   "resume=true", cwd=tmp_path)
    assert more.returncode == 2 and "configuration differs" in more.stderr and "n_objects: 8 -> 12" in more.stderr
    same = run_cli(*DEMO, "dataset.n_objects=8", "features=intensity", "cluster=local", "cluster.n_workers=1",
                   f"output={out}", "resume=true", cwd=tmp_path)
    assert same.returncode == 0, same.stderr  # where it runs does not matter
    assert "2 of 2 partition(s) already done" in same.stderr


def test_resume_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("x")
    res = run_cli(*DEMO, "cluster=sync", f"output={tmp_path / 'mine'}", "resume=true", cwd=tmp_path)
    assert res.returncode == 2 and "not a scip_gpu run folder" in res.stderr


def test_resume_of_a_folder_that_does_not_exist_says_so(tmp_path):
    """resume=true on a missing folder (a run-or-resume loop's first call, or a typo) runs the
    whole command there, with a warning that there was nothing to resume."""
    out = tmp_path / "typo"
    res = run_cli("+dataset=demo", "dataset.n_objects=3", "cluster=sync", "features=intensity",
                  f"output={out}", "resume=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resume=true: {out} does not exist: nothing to resume, a new run starts there" in res.stderr
    assert len(read_parquet(out / "features.parquet")) == 3


@pytest.mark.slow
def test_killed_worker_loses_no_row(tmp_path, reference):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    proc = start_cli(*DEMO, "cluster=local", "cluster.n_workers=2", f"output={out}", cwd=tmp_path)
    _wait_for_summaries(out / "checkpoints", 1, proc)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "multiprocessing" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) >= 2, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
    workers[0].kill()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    df = read_parquet(out / "features.parquet")
    assert len(df) == 80 and (df["meta_status"] == "ok").all()
    pd.testing.assert_frame_equal(df, reference)


def test_two_runs_give_identical_values(tmp_path):
    args = ["+dataset=demo", "dataset.n_objects=12", "cluster=sync"]
    for name in ("a", "b"):
        assert run_cli(*args, f"output={tmp_path / name}", cwd=tmp_path).returncode == 0
    a = read_parquet(tmp_path / "a" / "features.parquet")
    b = read_parquet(tmp_path / "b" / "features.parquet")
    pd.testing.assert_frame_equal(a, b)
